//! The webhook listener's metrics: webhooks by account and result, and how long the app took
//! to answer the verified ones.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::LATENCY_BUCKETS;

/// Metrics the webhook listener updates.
pub struct WebhookMetrics {
    /// Webhooks by account (`-` before one is known) and result: `forwarded`, or why not.
    pub requests: IntCounterVec,
    /// The app's response time for forwarded webhooks, by account.
    pub app_duration: HistogramVec,
    /// Webhooks being verified or forwarded now.
    pub in_flight: IntGauge,
}

impl std::fmt::Debug for WebhookMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookMetrics")
    }
}

impl WebhookMetrics {
    pub fn new() -> Result<WebhookMetrics, prometheus::Error> {
        Ok(WebhookMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "webhooks_total",
                    "Inbound webhooks by account and result (forwarded, missing_signature, invalid_signature, body_hash_mismatch, unverifiable_body, unsupported_algorithm, no_token, malformed, too_large, overloaded, app_unreachable, app_timeout).",
                ),
                &["account", "result"],
            )?,
            app_duration: HistogramVec::new(
                HistogramOpts::new(
                    "webhook_app_duration_seconds",
                    "How long the app took to answer a verified webhook.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["account"],
            )?,
            in_flight: IntGauge::new(
                "webhooks_in_flight",
                "Webhooks being verified or forwarded now.",
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.app_duration.clone()))?;
        registry.register(Box::new(self.in_flight.clone()))?;
        Ok(())
    }

    /// One webhook for `account` ended with `result`.
    pub fn webhook(&self, account: &str, result: &str) {
        self.requests.with_label_values(&[account, result]).inc();
    }
}
