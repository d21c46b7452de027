//! The proxy's metrics: requests by decision and rule, their latency, rule hits, what is in
//! flight, what was shed, and the answers made for want of a credential.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::{cache, next_id, LATENCY_BUCKETS};

/// The labels of `requests_total`, in exposition order.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels<'a> {
    /// allow, deny, audit_deny, refused or shed.
    pub decision: &'a str,
    /// The rule text that decided, or `-`.
    pub rule: &'a str,
    /// An allowed Twilio host, or `-`.
    pub host: &'a str,
    /// A forwarded method's name, or `OTHER`.
    pub method: &'a str,
    pub status: &'a str,
    /// A configured client's id, `anonymous`, or `-` when authentication failed (an id that
    /// is not configured is never a label value).
    pub client: &'a str,
}

impl<'a> RequestLabels<'a> {
    fn values(&self) -> [&'a str; 6] {
        [
            self.decision,
            self.rule,
            self.host,
            self.method,
            self.status,
            self.client,
        ]
    }
}

/// Metrics the proxy's request path updates.
pub struct ProxyMetrics {
    /// Tells this instance's entries apart in the per-thread handle caches.
    id: u64,
    /// Bumped when rule series are retired, so no thread keeps counting into one.
    rule_epoch: AtomicU64,
    /// Requests by decision, rule, host, method and status.
    pub requests: IntCounterVec,
    /// Whole-request latency as the app sees it (to response head), by host and decision.
    pub request_duration: HistogramVec,
    /// Times each rule decided a request, by effect and rule text; every rule of the current
    /// policy is present, at zero until it first decides, so unused rules stand out.
    pub rule_hits: IntCounterVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// Requests shed (503) at `limits.max_concurrent_requests`.
    pub load_shed: IntCounter,
    /// Requests answered 503 because no usable credential was available, by account.
    pub no_credential: IntCounterVec,
    /// Requests replayed after Twilio rejected a bearer token with 401, by account and result.
    pub oauth_replays: IntCounterVec,
    /// Requests refused (401) because client authentication failed, by reason.
    pub client_auth_failures: IntCounterVec,
    /// CONNECT tunnels by result (opened, refused_target, refused_auth, refused_disabled,
    /// app_tls_failed, failed).
    pub tunnels: IntCounterVec,
    /// Leaf certificates issued for tunnels.
    pub leaf_certificates_issued: IntCounter,
    /// Access Tokens minted or refused, by result and reason.
    pub access_tokens: IntCounterVec,
    /// Grants in the Access Tokens minted, by grant.
    pub access_token_grants: IntCounterVec,
    /// PKCV validation tokens, by account and result (signed, failed).
    pub pkcv_signatures: IntCounterVec,
    /// Time to sign one PKCV validation token (RSA 2048), off the serving thread.
    pub pkcv_sign_duration: prometheus::Histogram,
    /// 429 answers from Twilio, by account (each attempt's).
    pub twilio_429s: IntCounterVec,
    /// What became of requests Twilio answered 429, by account and outcome.
    pub retries_429: IntCounterVec,
    /// Time waiting for a slot under `max_concurrent`, by account.
    pub queue_wait: HistogramVec,
    /// Requests refused a slot, by account and reason (full, timeout).
    pub queue_refusals: IntCounterVec,
    /// Requests waiting for a slot now, by account (set at scrape time).
    pub queued: prometheus::IntGaugeVec,
    /// App request headers not forwarded to Twilio (beyond credentials and hop-by-hop ones).
    pub headers_dropped: IntCounter,
    /// Requests refused as a web browser's (`Origin`, `Sec-Fetch-*`, a foreign `Host`).
    pub browser_refusals: IntCounter,
    /// Bytes of list pages held for paging-link rewriting now.
    pub rewrite_buffer_bytes: prometheus::IntGauge,
    /// Pages answered 503 (79431) because holding them would pass `max_rewrite_buffer`.
    pub rewrite_buffer_full: IntCounter,
}

impl ProxyMetrics {
    pub fn new() -> Result<ProxyMetrics, prometheus::Error> {
        Ok(ProxyMetrics {
            id: next_id(),
            rule_epoch: AtomicU64::new(0),
            requests: IntCounterVec::new(
                Opts::new(
                    "requests_total",
                    "Requests by policy decision, rule, Twilio host, method, response status and client.",
                ),
                &["decision", "rule", "host", "method", "status", "client"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from request received to response head sent.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["host", "decision"],
            )?,
            rule_hits: IntCounterVec::new(
                Opts::new(
                    "policy_rule_hits_total",
                    "Requests each policy rule decided (allowed, or denied, in either mode).",
                ),
                &["effect", "rule"],
            )?,
            in_flight: IntGauge::new("in_flight_requests", "Requests being handled now.")?,
            load_shed: IntCounter::new(
                "load_shed_total",
                "Requests shed with 503 because limits.max_concurrent_requests were in flight.",
            )?,
            no_credential: IntCounterVec::new(
                Opts::new(
                    "no_credential_total",
                    "Requests answered 503 because the account had no usable credential.",
                ),
                &["account"],
            )?,
            oauth_replays: IntCounterVec::new(
                Opts::new(
                    "oauth_replays_total",
                    "Requests replayed with a new token after Twilio answered 401, by result (replayed; not_replayable: the body was not buffered; rate_limited: the token was kept, see oauth.min_refetch_interval).",
                ),
                &["account", "result"],
            )?,
            client_auth_failures: IntCounterVec::new(
                Opts::new(
                    "client_auth_failures_total",
                    "Requests refused with 401 because client authentication failed, by reason (missing, malformed, unknown_client, wrong_secret).",
                ),
                &["reason"],
            )?,
            tunnels: IntCounterVec::new(
                Opts::new(
                    "tunnels_total",
                    "CONNECT tunnels (transparent mode) by result: opened, refused_target, refused_auth, refused_disabled, app_tls_failed (usually an app that does not trust the CA), failed.",
                ),
                &["result"],
            )?,
            access_tokens: IntCounterVec::new(
                Opts::new(
                    "access_tokens_total",
                    "Access Tokens minted (result=issued) or refused, by reason (ttl, identity, voice, video, chat, sync, bad_request, method, not_configured).",
                ),
                &["result", "reason"],
            )?,
            access_token_grants: IntCounterVec::new(
                Opts::new(
                    "access_token_grants_total",
                    "Grants in the Access Tokens minted, by grant (voice, video, chat, sync).",
                ),
                &["grant"],
            )?,
            pkcv_signatures: IntCounterVec::new(
                Opts::new(
                    "pkcv_signatures_total",
                    "Twilio-Client-Validation tokens for PKCV accounts, by account and result (signed, failed).",
                ),
                &["account", "result"],
            )?,
            pkcv_sign_duration: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "pkcv_sign_duration_seconds",
                    "Time to sign one PKCV validation token (RSA 2048).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            twilio_429s: IntCounterVec::new(
                Opts::new(
                    "twilio_429_total",
                    "429 answers from Twilio (a concurrency or rate limit; the request was not processed), by account.",
                ),
                &["account"],
            )?,
            retries_429: IntCounterVec::new(
                Opts::new(
                    "retries_429_total",
                    "Requests Twilio answered 429, by account and outcome: retried (each retry sent), succeeded, exhausted (the last 429 passed on), deadline (no time left before limits.request_timeout), not_retryable (a streamed body).",
                ),
                &["account", "outcome"],
            )?,
            queue_wait: HistogramVec::new(
                HistogramOpts::new(
                    "account_queue_wait_seconds",
                    "Time requests waited for a slot under their account's max_concurrent.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["account"],
            )?,
            queue_refusals: IntCounterVec::new(
                Opts::new(
                    "account_queue_refusals_total",
                    "Requests refused (503) a slot under their account's max_concurrent, by reason (full: upstream.max_queued waiting; timeout: upstream.queue_timeout).",
                ),
                &["account", "reason"],
            )?,
            queued: prometheus::IntGaugeVec::new(
                Opts::new(
                    "account_queued",
                    "Requests waiting for a slot under their account's max_concurrent (at scrape time).",
                ),
                &["account"],
            )?,
            rewrite_buffer_bytes: prometheus::IntGauge::new(
                "paging_rewrite_buffer_bytes",
                "Bytes of list pages held for paging-link rewriting now, until the apps have read them (at most limits.max_rewrite_buffer).",
            )?,
            rewrite_buffer_full: IntCounter::new(
                "paging_rewrite_buffer_full_total",
                "List pages answered 503 (79431) because holding them would pass limits.max_rewrite_buffer.",
            )?,
            browser_refusals: IntCounter::new(
                "browser_refusals_total",
                "Requests refused (403, 79407) as a web browser's: Origin or Sec-Fetch-* headers, or a Host the sidecar does not answer to (DNS rebinding).",
            )?,
            headers_dropped: IntCounter::new(
                "request_headers_dropped_total",
                "App request headers not forwarded to Twilio because its APIs do not use them (credentials and hop-by-hop headers not counted); upstream.forward_headers adds names.",
            )?,
            leaf_certificates_issued: IntCounter::new(
                "tunnel_leaf_certificates_issued_total",
                "Leaf certificates issued by the local CA for tunnels (one per host, renewed at half its life).",
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.request_duration.clone()))?;
        registry.register(Box::new(self.rule_hits.clone()))?;
        registry.register(Box::new(self.in_flight.clone()))?;
        registry.register(Box::new(self.load_shed.clone()))?;
        registry.register(Box::new(self.no_credential.clone()))?;
        registry.register(Box::new(self.oauth_replays.clone()))?;
        registry.register(Box::new(self.client_auth_failures.clone()))?;
        registry.register(Box::new(self.tunnels.clone()))?;
        registry.register(Box::new(self.leaf_certificates_issued.clone()))?;
        registry.register(Box::new(self.access_tokens.clone()))?;
        registry.register(Box::new(self.access_token_grants.clone()))?;
        registry.register(Box::new(self.pkcv_signatures.clone()))?;
        registry.register(Box::new(self.pkcv_sign_duration.clone()))?;
        registry.register(Box::new(self.twilio_429s.clone()))?;
        registry.register(Box::new(self.retries_429.clone()))?;
        registry.register(Box::new(self.queue_wait.clone()))?;
        registry.register(Box::new(self.queue_refusals.clone()))?;
        registry.register(Box::new(self.queued.clone()))?;
        registry.register(Box::new(self.headers_dropped.clone()))?;
        registry.register(Box::new(self.browser_refusals.clone()))?;
        registry.register(Box::new(self.rewrite_buffer_bytes.clone()))?;
        registry.register(Box::new(self.rewrite_buffer_full.clone()))?;
        Ok(())
    }

    /// One finished request: counted by its labels, its latency observed by host and decision.
    pub fn request(&self, labels: &RequestLabels<'_>, seconds: f64) {
        cache::inc(self.id << 8, &self.requests, &labels.values());
        cache::observe(
            self.id << 8 | 0x80,
            &self.request_duration,
            &[labels.host, labels.decision],
            seconds,
        );
    }

    /// A tunnel was opened or refused.
    pub fn tunnel(&self, result: &str) {
        self.tunnels.with_label_values(&[result]).inc();
    }

    /// A rule decided a request.
    pub fn rule_hit(&self, effect: &str, rule: &str) {
        let seed = (self.id << 8 | 1) ^ (self.rule_epoch.load(Ordering::Relaxed) << 32);
        cache::inc(seed, &self.rule_hits, &[effect, rule]);
    }

    /// Makes a rule's series exist (at zero until it first decides).
    pub fn declare_rule(&self, effect: &str, rule: &str) {
        self.rule_hits.with_label_values(&[effect, rule]);
    }

    /// Drops the series of a rule a reload removed.
    pub fn retire_rule(&self, effect: &str, rule: &str) {
        let _ = self.rule_hits.remove_label_values(&[effect, rule]);
        self.rule_epoch.fetch_add(1, Ordering::Relaxed);
    }
}
