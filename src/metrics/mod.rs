//! Prometheus metrics, all named `twilio_sidecar_*`, on a registry of our own: one small struct
//! per component ([`ProxyMetrics`], [`UpstreamMetrics`], [`OAuthMetrics`], [`ReloadMetrics`],
//! [`WebhookMetrics`], [`ConnectionMetrics`]), registered together under the prefix.
//!
//! A leaf module, like `config`: the connection pool and the token refreshers are handed their
//! component's struct without importing the control plane that builds them.
//!
//! Labels are bounded by the config: rule text, allowed host, method, status code, decision,
//! account SID, result. Never a raw path, a query string or anything secret.

mod cache;
mod connections;
mod oauth;
mod proxy;
mod reload;
mod upstream;
mod webhooks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use connections::{ConnectionMetrics, ListenerMetrics};
pub use oauth::OAuthMetrics;
pub use proxy::{ProxyMetrics, RequestLabels};
pub use reload::ReloadMetrics;
pub use upstream::UpstreamMetrics;
pub use webhooks::WebhookMetrics;

/// Latency buckets in seconds: sub-millisecond sidecar work up to slow Twilio calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A new config generation is serving: the per-thread metric handle caches drop the entries
/// made for the old one's labels (their rule texts and host names are freed with it).
pub fn new_generation() {
    cache::new_generation();
}

/// Log lines the log writer dropped because stderr was not read as fast as they were logged.
/// A process has one log, so one count, shared by every registry.
static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Counts a log line dropped by the log writer.
pub fn log_line_dropped() {
    LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Log lines dropped since the process started.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.load(Ordering::Relaxed)
}

/// A distinct id per component instance, so the per-thread handle caches never confuse two.
fn next_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub proxy: ProxyMetrics,
    pub upstream: Arc<UpstreamMetrics>,
    pub oauth: Arc<OAuthMetrics>,
    pub reload: ReloadMetrics,
    pub webhooks: WebhookMetrics,
    pub connections: ConnectionMetrics,
    /// Admin requests refused (`reason`: host, browser, reload_body): a web page probing the
    /// admin port shows up here.
    pub admin_refusals: IntCounterVec,
    /// Brought up to [`log_lines_dropped`] at each scrape.
    log_lines_dropped: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every component's metrics, plus build info and process metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("twilio_sidecar".into()), None)?;
        let metrics = Metrics {
            proxy: ProxyMetrics::new()?,
            upstream: Arc::new(UpstreamMetrics::new()?),
            oauth: Arc::new(OAuthMetrics::new()?),
            reload: ReloadMetrics::new()?,
            webhooks: WebhookMetrics::new()?,
            connections: ConnectionMetrics::new()?,
            admin_refusals: IntCounterVec::new(
                Opts::new(
                    "admin_refusals_total",
                    "Admin requests refused (79409, 79411): a foreign Host, a POST from a web page, or POST /reload with a body.",
                ),
                &["reason"],
            )?,
            log_lines_dropped: IntCounter::new(
                "log_lines_dropped_total",
                "Log lines dropped because stderr was not read as fast as they were logged (at most 4 MiB wait); whatever reads the sidecar's stderr is falling behind.",
            )?,
            registry,
        };
        metrics.proxy.register(&metrics.registry)?;
        metrics.upstream.register(&metrics.registry)?;
        metrics.oauth.register(&metrics.registry)?;
        metrics.reload.register(&metrics.registry)?;
        metrics.webhooks.register(&metrics.registry)?;
        metrics.connections.register(&metrics.registry)?;
        metrics
            .registry
            .register(Box::new(metrics.admin_refusals.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.log_lines_dropped.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; labels carry the version."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        {
            // Two scrapes at once must not both add the same difference.
            static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = SYNC
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dropped = log_lines_dropped();
            let shown = self.log_lines_dropped.get();
            if dropped > shown {
                self.log_lines_dropped.inc_by(dropped - shown);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(status: &'a str) -> RequestLabels<'a> {
        RequestLabels {
            decision: "allow",
            rule: "r1",
            host: "api.twilio.com",
            method: "GET",
            status,
            client: "anonymous",
        }
    }

    #[test]
    fn cached_updates_land_in_the_right_series() {
        let m = Metrics::new().unwrap();
        for _ in 0..3 {
            m.proxy.request(&labels("200"), 0.001);
        }
        m.proxy.request(&labels("404"), 0.001);
        m.proxy.rule_hit("allow", "r1");
        m.upstream.exchange("api.twilio.com", 0.002);
        let requests = &m.proxy.requests;
        assert_eq!(
            requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200", "anonymous"])
                .get(),
            3
        );
        assert_eq!(
            requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "404", "anonymous"])
                .get(),
            1
        );
        assert_eq!(
            m.proxy
                .request_duration
                .with_label_values(&["api.twilio.com", "allow"])
                .get_sample_count(),
            4
        );
        assert_eq!(
            m.proxy.rule_hits.with_label_values(&["allow", "r1"]).get(),
            1
        );
        assert_eq!(
            m.upstream
                .duration
                .with_label_values(&["api.twilio.com"])
                .get_sample_count(),
            1
        );
        // The cache is keyed by where labels live, but the text decides: new text in the same
        // memory (as after a reload reuses an allocation) is a different series, and the same
        // text at another address is the same series.
        let mut rule = String::from("r2");
        m.proxy.rule_hit("allow", &rule);
        rule.replace_range(.., "r3");
        m.proxy.rule_hit("allow", &rule);
        m.proxy.rule_hit("allow", &String::from("r2"));
        assert_eq!(
            m.proxy.rule_hits.with_label_values(&["allow", "r2"]).get(),
            2
        );
        assert_eq!(
            m.proxy.rule_hits.with_label_values(&["allow", "r3"]).get(),
            1
        );
        // A second registry does not share the first one's handles.
        let other = Metrics::new().unwrap();
        other.proxy.request(&labels("200"), 0.001);
        assert_eq!(
            requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200", "anonymous"])
                .get(),
            3
        );
        assert_eq!(
            other
                .proxy
                .requests
                .with_label_values(&["allow", "r1", "api.twilio.com", "GET", "200", "anonymous"])
                .get(),
            1
        );
    }

    #[test]
    fn a_retired_rule_starts_again_from_zero() {
        let m = Metrics::new().unwrap();
        m.proxy.rule_hit("allow", "r1");
        m.proxy.retire_rule("allow", "r1");
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains(r#"rule="r1""#), "{text}");
        m.proxy.rule_hit("allow", "r1");
        assert_eq!(
            m.proxy.rule_hits.with_label_values(&["allow", "r1"]).get(),
            1
        );
    }
}
