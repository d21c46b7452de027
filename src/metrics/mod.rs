//! Prometheus metrics, all named `twilio_sidecar_*`, on a registry of our own.
//!
//! Labels are bounded by the config: rule text, allowed host, method, status code, decision,
//! account SID, result. Never a raw path, a query string or anything secret.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: sub-millisecond sidecar work up to slow Twilio calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the sidecar exports.
pub struct Metrics {
    /// Tells this instance's entries apart in the per-thread handle caches.
    id: u64,
    /// Bumped when rule series are retired, so no thread keeps counting into one.
    rule_epoch: AtomicU64,
    registry: Registry,
    /// Requests by decision, rule, host, method and status.
    pub requests: IntCounterVec,
    /// Whole-request latency as the app sees it (to response head), by host and decision.
    pub request_duration: HistogramVec,
    /// Upstream latency (request sent to response head), by host.
    pub upstream_duration: HistogramVec,
    /// Times each rule decided a request, by effect and rule text; every rule of the current
    /// policy is present, at zero until it first decides, so unused rules stand out.
    pub rule_hits: IntCounterVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// Upstream connections ready for reuse (idle HTTP/1.1 plus open HTTP/2 with a free
    /// stream), set at scrape.
    pub upstream_reusable: IntGauge,
    /// HTTP/2 requests sent again after Twilio refused the stream unprocessed.
    pub upstream_streams_resent: IntCounter,
    /// Upstream failures by host and kind (connect, tls, timeout, protocol).
    pub upstream_errors: IntCounterVec,
    /// Per-account credential generation, bumped when a reload changes the credential.
    pub credential_generation: IntGaugeVec,
    /// The config/state generation serving requests.
    pub state_generation: IntGauge,
    /// Config reloads by trigger and result.
    pub reloads: IntCounterVec,
    /// Unix time of the last successful config load.
    pub last_reload_success: Gauge,
    /// OAuth token fetches by account and result.
    pub oauth_fetches: IntCounterVec,
    /// OAuth token fetch latency by account.
    pub oauth_fetch_duration: HistogramVec,
    /// Unix time the current OAuth token expires, by account.
    pub oauth_token_expiry: GaugeVec,
    /// Seconds until the current OAuth token expires (set at scrape time), by account.
    pub oauth_seconds_until_expiry: GaugeVec,
    /// Requests replayed after Twilio rejected a bearer token with 401, by account and result.
    pub oauth_replays: IntCounterVec,
    /// Requests answered 503 because no usable credential was available, by account.
    pub no_credential: IntCounterVec,
    /// Requests shed (503) at `limits.max_concurrent_requests`.
    pub load_shed: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric, plus build info and process metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("twilio_sidecar".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests by policy decision, rule, Twilio host, method and response status.",
            ),
            &["decision", "rule", "host", "method", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request received to response head sent.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["host", "decision"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time from request sent to Twilio to its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["host"],
        )?;
        let rule_hits = IntCounterVec::new(
            Opts::new(
                "policy_rule_hits_total",
                "Requests each policy rule decided (allowed, or denied, in either mode).",
            ),
            &["effect", "rule"],
        )?;
        let in_flight = IntGauge::new("in_flight_requests", "Requests being handled now.")?;
        let upstream_reusable = IntGauge::new(
            "upstream_reusable_connections",
            "Connections to Twilio ready for reuse without a handshake (idle HTTP/1.1 plus open \
             HTTP/2 with a free stream), set at scrape time.",
        )?;
        let upstream_streams_resent = IntCounter::new(
            "upstream_streams_resent_total",
            "HTTP/2 requests sent again on a new connection because Twilio refused the stream \
             unprocessed (REFUSED_STREAM, or after a graceful GOAWAY retiring the connection).",
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed upstream calls by Twilio host and kind (connect, tls, timeout, protocol).",
            ),
            &["host", "kind"],
        )?;
        let credential_generation = IntGaugeVec::new(
            Opts::new(
                "credential_generation",
                "Generation of each account's credential; changes when a reload changes it.",
            ),
            &["account"],
        )?;
        let state_generation = IntGauge::new(
            "state_generation",
            "Generation of the config state serving requests.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Config loads by trigger and result.",
            ),
            &["trigger", "result"],
        )?;
        let last_reload_success = Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )?;
        let oauth_fetches = IntCounterVec::new(
            Opts::new("oauth_token_fetches_total", "OAuth token fetches by account and result (success, http_error, timeout, connect_error, malformed)."),
            &["account", "result"],
        )?;
        let oauth_fetch_duration = HistogramVec::new(
            HistogramOpts::new(
                "oauth_token_fetch_duration_seconds",
                "OAuth token fetch latency.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["account"],
        )?;
        let oauth_token_expiry = GaugeVec::new(
            Opts::new(
                "oauth_token_expiry_timestamp_seconds",
                "Unix time the current OAuth token expires.",
            ),
            &["account"],
        )?;
        let oauth_seconds_until_expiry = GaugeVec::new(
            Opts::new(
                "oauth_token_seconds_until_expiry",
                "Seconds until the current OAuth token expires (negative once expired).",
            ),
            &["account"],
        )?;
        let oauth_replays = IntCounterVec::new(
            Opts::new("oauth_replays_total", "Requests replayed with a new token after Twilio answered 401, by result (replayed, not_replayable)."),
            &["account", "result"],
        )?;
        let no_credential = IntCounterVec::new(
            Opts::new(
                "no_credential_total",
                "Requests answered 503 because the account had no usable credential.",
            ),
            &["account"],
        )?;
        let load_shed = IntCounter::new(
            "load_shed_total",
            "Requests shed with 503 because limits.max_concurrent_requests were in flight.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; labels carry the version."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(rule_hits.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(upstream_reusable.clone()))?;
        registry.register(Box::new(upstream_streams_resent.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(credential_generation.clone()))?;
        registry.register(Box::new(state_generation.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_success.clone()))?;
        registry.register(Box::new(oauth_fetches.clone()))?;
        registry.register(Box::new(oauth_fetch_duration.clone()))?;
        registry.register(Box::new(oauth_token_expiry.clone()))?;
        registry.register(Box::new(oauth_seconds_until_expiry.clone()))?;
        registry.register(Box::new(oauth_replays.clone()))?;
        registry.register(Box::new(no_credential.clone()))?;
        registry.register(Box::new(load_shed.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rule_epoch: AtomicU64::new(0),
            registry,
            requests,
            request_duration,
            upstream_duration,
            rule_hits,
            in_flight,
            upstream_reusable,
            upstream_streams_resent,
            upstream_errors,
            credential_generation,
            state_generation,
            reloads,
            last_reload_success,
            oauth_fetches,
            oauth_fetch_duration,
            oauth_token_expiry,
            oauth_seconds_until_expiry,
            oauth_replays,
            no_credential,
            load_shed,
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metrics; an empty page is the fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// Which labelled metric a request-path update goes to.
#[derive(Debug, Clone, Copy)]
pub enum Series {
    Requests,
    RuleHits,
}

/// Which labelled histogram a request-path observation goes to.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    Request,
    Upstream,
}

impl Metrics {
    /// `vec.with_label_values(labels).inc()` for the request path, through a per-thread cache:
    /// `with_label_values` hashes with SipHash and takes a lock on every call, while the same
    /// few label sets repeat request after request.
    pub fn inc(&self, series: Series, labels: &[&str]) {
        let vec = match series {
            Series::Requests => &self.requests,
            Series::RuleHits => &self.rule_hits,
        };
        let seed = match series {
            Series::Requests => self.id << 8,
            Series::RuleHits => {
                (self.id << 8 | 1) ^ (self.rule_epoch.load(Ordering::Relaxed) << 32)
            }
        };
        COUNTERS.with(|c| {
            c.borrow_mut().with(
                seed,
                labels,
                || vec.with_label_values(labels),
                IntCounter::inc,
            )
        });
    }

    /// Drops the series of a rule a reload removed.
    pub fn retire_rule(&self, effect: &str, rule: &str) {
        let _ = self.rule_hits.remove_label_values(&[effect, rule]);
        self.rule_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// `vec.with_label_values(labels).observe(value)`, through the same kind of cache.
    pub fn observe(&self, timing: Timing, labels: &[&str], value: f64) {
        let vec = match timing {
            Timing::Request => &self.request_duration,
            Timing::Upstream => &self.upstream_duration,
        };
        let seed = self.id << 8 | 0x80 | timing as u64;
        HISTOGRAMS.with(|c| {
            c.borrow_mut().with(
                seed,
                labels,
                || vec.with_label_values(labels),
                |h| h.observe(value),
            )
        });
    }
}

thread_local! {
    static COUNTERS: RefCell<HandleCache<IntCounter>> = RefCell::new(HandleCache::default());
    static HISTOGRAMS: RefCell<HandleCache<Histogram>> = RefCell::new(HandleCache::default());
}

/// Metric handles by a fast hash of their label values (checked against the values, so a hash
/// collision can never count into the wrong series).
struct HandleCache<M> {
    map: HashMap<u64, Vec<Labelled<M>>, BuildHasherDefault<PassThrough>>,
}

/// A handle and the label values it was made for.
type Labelled<M> = (Box<[Box<str>]>, M);

impl<M> Default for HandleCache<M> {
    fn default() -> Self {
        HandleCache {
            map: HashMap::default(),
        }
    }
}

/// Label sets a thread keeps before starting over (reloads retire old rule texts).
const CACHE_LIMIT: usize = 4096;

impl<M> HandleCache<M> {
    fn with(
        &mut self,
        seed: u64,
        labels: &[&str],
        make: impl FnOnce() -> M,
        use_it: impl FnOnce(&M),
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_updates_land_in_the_right_series() {
        let m = Metrics::new().unwrap();
        for _ in 0..3 {
            m.inc(
                Series::Requests,
                &["allow", "r1", "api.twilio.com", "GET", "200"],
            );
        }
        m.inc(
            Series::Requests,
            &["allow", "r1", "api.twilio.com", "GET", "404"],
        );
        m.inc(Series::RuleHits, &["allow", "r1"]);
        m.observe(Timing::Upstream, &["api.twilio.com"], 0.002);
        assert_eq!(
            m.requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200"])
                .get(),
            3
        );
        assert_eq!(
            m.requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "404"])
                .get(),
            1
        );
        assert_eq!(m.rule_hits.with_label_values(&["allow", "r1"]).get(), 1);
        assert_eq!(
            m.upstream_duration
                .with_label_values(&["api.twilio.com"])
                .get_sample_count(),
            1
        );
        // The cache is keyed by where labels live, but the text decides: new text in the same
        // memory (as after a reload reuses an allocation) is a different series, and the same
        // text at another address is the same series.
        let mut rule = String::from("r2");
        m.inc(Series::RuleHits, &["allow", &rule]);
        rule.replace_range(.., "r3");
        m.inc(Series::RuleHits, &["allow", &rule]);
        m.inc(Series::RuleHits, &["allow", &String::from("r2")]);
        assert_eq!(m.rule_hits.with_label_values(&["allow", "r2"]).get(), 2);
        assert_eq!(m.rule_hits.with_label_values(&["allow", "r3"]).get(), 1);
        // A second registry does not share the first one's handles.
        let other = Metrics::new().unwrap();
        other.inc(
            Series::Requests,
            &["allow", "r1", "api.twilio.com", "GET", "200"],
        );
        assert_eq!(
            m.requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200"])
                .get(),
            3
        );
        assert_eq!(
            other
                .requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200"])
                .get(),
            1
        );
    }
}
