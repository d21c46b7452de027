//! The OAuth token caches' metrics: fetches by result and latency, and each account's token
//! expiry.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::LATENCY_BUCKETS;

/// Metrics the token refreshers update.
pub struct OAuthMetrics {
    /// OAuth token fetches by account and result.
    pub fetches: IntCounterVec,
    /// OAuth token fetch latency by account.
    pub fetch_duration: HistogramVec,
    /// Unix time the current OAuth token expires, by account.
    pub token_expiry: GaugeVec,
    /// Seconds until the current OAuth token expires (set at scrape time), by account.
    pub seconds_until_expiry: GaugeVec,
    /// What Twilio 401s did to the tokens they answered, by account and result.
    pub invalidations: IntCounterVec,
}

impl std::fmt::Debug for OAuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthMetrics")
    }
}

impl OAuthMetrics {
    pub fn new() -> Result<OAuthMetrics, prometheus::Error> {
        Ok(OAuthMetrics {
            fetches: IntCounterVec::new(
                Opts::new(
                    "oauth_token_fetches_total",
                    "OAuth token fetches by account and result (success, http_error, timeout, connect_error, malformed).",
                ),
                &["account", "result"],
            )?,
            fetch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "oauth_token_fetch_duration_seconds",
                    "OAuth token fetch latency.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["account"],
            )?,
            token_expiry: GaugeVec::new(
                Opts::new(
                    "oauth_token_expiry_timestamp_seconds",
                    "Unix time the current OAuth token expires.",
                ),
                &["account"],
            )?,
            invalidations: IntCounterVec::new(
                Opts::new(
                    "oauth_401_invalidations_total",
                    "Twilio 401s to a bearer token, by what they did: dropped (the token, and a new one fetched), stale (it had already been replaced), rate_limited (kept: a 401 dropped one less than oauth.min_refetch_interval ago).",
                ),
                &["account", "result"],
            )?,
            seconds_until_expiry: GaugeVec::new(
                Opts::new(
                    "oauth_token_seconds_until_expiry",
                    "Seconds until the current OAuth token expires (negative once expired).",
                ),
                &["account"],
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.fetches.clone()))?;
        registry.register(Box::new(self.fetch_duration.clone()))?;
        registry.register(Box::new(self.token_expiry.clone()))?;
        registry.register(Box::new(self.seconds_until_expiry.clone()))?;
        registry.register(Box::new(self.invalidations.clone()))?;
        Ok(())
    }

    /// One fetch for `account` ended with `result` after `seconds`.
    pub fn fetch(&self, account: &str, result: &str, seconds: f64) {
        self.fetch_duration
            .with_label_values(&[account])
            .observe(seconds);
        self.fetches.with_label_values(&[account, result]).inc();
    }
}
