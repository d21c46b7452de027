//! The upstream's metrics: latency and failures of calls to Twilio, connections ready for
//! reuse, and HTTP/2 streams sent again after Twilio refused them. The connection pools are
//! handed these at construction and count into them directly.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::{cache, next_id, LATENCY_BUCKETS};

/// Metrics about the connections to Twilio.
pub struct UpstreamMetrics {
    id: u64,
    /// Upstream latency (request sent to response head), by host.
    pub duration: HistogramVec,
    /// Upstream failures by host and kind (connect, tls, timeout, protocol).
    pub errors: IntCounterVec,
    /// Upstream connections ready for reuse (idle HTTP/1.1 plus open HTTP/2 with a free
    /// stream), set at scrape.
    pub reusable: IntGauge,
    /// HTTP/2 requests sent again after Twilio refused the stream unprocessed.
    pub streams_resent: IntCounter,
    /// Connections opened (TLS handshakes made), by host and why one was needed.
    pub connections_opened: IntCounterVec,
    /// Completed TLS handshakes to Twilio by host and kind (full, resumed).
    pub tls_handshakes: IntCounterVec,
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamMetrics")
    }
}

impl UpstreamMetrics {
    pub fn new() -> Result<UpstreamMetrics, prometheus::Error> {
        Ok(UpstreamMetrics {
            id: next_id(),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "upstream_duration_seconds",
                    "Time from request sent to Twilio to its response head.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["host"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "upstream_errors_total",
                    "Failed upstream calls by Twilio host and kind (connect, tls, timeout, protocol).",
                ),
                &["host", "kind"],
            )?,
            reusable: IntGauge::new(
                "upstream_reusable_connections",
                "Connections to Twilio ready for reuse without a handshake (idle HTTP/1.1 plus open \
                 HTTP/2 with a free stream), set at scrape time.",
            )?,
            connections_opened: IntCounterVec::new(
                Opts::new(
                    "upstream_connections_opened_total",
                    "Connections opened to Twilio (each a TCP connect and TLS handshake) by host and reason: no_idle (HTTP/1.1, none idle to reuse), h2_streams_busy (HTTP/2, every connection at http2_max_streams or none open), resend (a request sent again on a fresh connection). A steady no_idle rate under steady load is churn.",
                ),
                &["host", "reason"],
            )?,
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "upstream_tls_handshakes_total",
                    "Completed TLS handshakes to Twilio by host and kind: full, or resumed (a session from an earlier connection, no certificate exchange).",
                ),
                &["host", "kind"],
            )?,
            streams_resent: IntCounter::new(
                "upstream_streams_resent_total",
                "HTTP/2 requests sent again on a new connection because Twilio refused the stream \
                 unprocessed (REFUSED_STREAM, or after a graceful GOAWAY retiring the connection).",
            )?,
        })
    }

    /// Counters that belong to no registry: for an upstream built outside a running sidecar
    /// (`validate`, tests).
    pub fn detached() -> UpstreamMetrics {
        // Constant names and help texts: construction cannot fail.
        UpstreamMetrics::new().unwrap_or_else(|e| unreachable!("static metric definitions: {e}"))
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.reusable.clone()))?;
        registry.register(Box::new(self.streams_resent.clone()))?;
        registry.register(Box::new(self.connections_opened.clone()))?;
        registry.register(Box::new(self.tls_handshakes.clone()))?;
        Ok(())
    }

    /// One exchange with `host` took `seconds` to its response head (or its failure).
    pub fn exchange(&self, host: &str, seconds: f64) {
        cache::observe(self.id << 8 | 0x81, &self.duration, &[host], seconds);
    }

    /// An upstream call to `host` failed with `kind`.
    pub fn error(&self, host: &str, kind: &str) {
        self.errors.with_label_values(&[host, kind]).inc();
    }
}
