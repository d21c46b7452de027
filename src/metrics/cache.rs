//! Per-thread caches of labelled metric handles, for the request path: `with_label_values`
//! hashes with SipHash and takes a lock on every call, while the same few label sets repeat
//! request after request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

thread_local! {
    static COUNTERS: RefCell<HandleCache<IntCounter>> = RefCell::new(HandleCache::default());
    static HISTOGRAMS: RefCell<HandleCache<Histogram>> = RefCell::new(HandleCache::default());
}

/// Bumped when a new config generation starts serving: its rule texts and host names live at
/// new addresses, so every thread's entries for the old ones are dropped at its next update
/// instead of piling up until [`CACHE_LIMIT`].
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Retires every thread's cached handles (lazily, at each thread's next update).
pub(super) fn new_generation() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// `vec.with_label_values(labels).inc()` through this thread's cache. `seed` tells apart the
/// vectors (and registries) sharing the cache; it must differ between them.
pub(super) fn inc(seed: u64, vec: &IntCounterVec, labels: &[&str]) {
    COUNTERS.with(|c| {
        c.borrow_mut().with(
            seed,
            labels,
            || vec.with_label_values(labels),
            IntCounter::inc,
        )
    });
}

/// `vec.with_label_values(labels).observe(value)` through this thread's cache.
pub(super) fn observe(seed: u64, vec: &HistogramVec, labels: &[&str], value: f64) {
    HISTOGRAMS.with(|c| {
        c.borrow_mut().with(
            seed,
            labels,
            || vec.with_label_values(labels),
            |h| h.observe(value),
        )
    });
}

/// Metric handles by a fast hash of their label values (checked against the values, so a hash
/// collision can never count into the wrong series).
struct HandleCache<M> {
    map: HashMap<u64, Vec<Labelled<M>>, BuildHasherDefault<PassThrough>>,
    /// The [`GENERATION`] the entries were made in.
    generation: u64,
}

/// A handle and the label values it was made for.
type Labelled<M> = (Box<[Box<str>]>, M);

impl<M> Default for HandleCache<M> {
    fn default() -> Self {
        HandleCache {
            map: HashMap::default(),
            generation: 0,
        }
    }
}

/// Label sets a thread keeps before starting over, within one generation.
const CACHE_LIMIT: usize = 1024;

impl<M> HandleCache<M> {
    fn with(
        &mut self,
        seed: u64,
        labels: &[&str],
        make: impl FnOnce() -> M,
        use_it: impl FnOnce(&M),
    ) {
        let generation = GENERATION.load(Ordering::Relaxed);
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        let key = label_hash(seed, labels);
        if let Some(bucket) = self.map.get(&key) {
            if let Some((_, m)) = bucket.iter().find(|(l, _)| {
                l.len() == labels.len() && l.iter().zip(labels).all(|(a, b)| **a == **b)
            }) {
                return use_it(m);
            }
        }
        if self.map.len() >= CACHE_LIMIT {
            self.map.clear();
        }
        let m = make();
        use_it(&m);
        let owned: Box<[Box<str>]> = labels.iter().map(|l| Box::from(*l)).collect();
        self.map.entry(key).or_default().push((owned, m));
    }
}

/// A hash of where the label values live and how long they are, not of their bytes: on the
/// hot path they are the same strings every time (static labels, the rule texts and host
/// names of the serving snapshot), so this is a few multiplications instead of a pass over
/// ~100 bytes. Lookups still compare the text, so memory reused for other text after a reload
/// can never count into the wrong series; the same text at a new address just gets its own
/// cache entry for the same series.
fn label_hash(seed: u64, labels: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for label in labels {
        h = (h ^ label.as_ptr() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ label.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h ^ (h >> 29)
}

/// The keys are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
