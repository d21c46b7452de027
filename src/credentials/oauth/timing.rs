//! Time for the token cache, injected so tests control it instead of sleeping: the clock, the
//! jitter source, when to refresh (a jittered 75–85% of a token's lifetime) and how long to
//! back off after a failure (exponential, full jitter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Time, injected.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time (tokio's, so tests can pause and advance it).
    fn now(&self) -> Instant;
    /// Wall-clock time, for JWT `exp` claims and the expiry timestamp metric.
    fn wall(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A source of uniform random numbers in [0, 1), injected for jitter.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// splitmix64 over a shared counter: good enough for jitter, no dependency.
pub fn default_jitter() -> Jitter {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
    let _ = STATE.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    Arc::new(|| {
        let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// When to fetch the next token: a jittered 75–85% of the lifetime (`u` in [0, 1)), but early
/// enough that the current token is still usable then, and never sooner than a second.
pub fn refresh_delay(lifetime: Duration, margin: Duration, u: f64) -> Duration {
    let fraction = 0.75 + 0.10 * u.clamp(0.0, 1.0);
    let jittered = lifetime.mul_f64(fraction);
    let usable_for = lifetime.saturating_sub(margin);
    jittered.min(usable_for).max(Duration::from_secs(1))
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base × 2^(failures-1))].
pub fn backoff_delay(failures: u32, base: Duration, max: Duration, u: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    ceiling.mul_f64(u.clamp(0.0, 1.0))
}
