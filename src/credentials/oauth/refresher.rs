//! The refresher: one background task per account, the only caller of the token endpoint, so
//! fetches are single-flight by construction. It fetches at start, then at each token's
//! refresh time; on failure it keeps the current token while it is still good and retries
//! after a backoff that wake-ups cannot cut short.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::UNIX_EPOCH;

use http::HeaderValue;
use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::fetcher::FetchError;
use super::timing::{backoff_delay, refresh_delay};
use super::token::{parse_token_response, Token};
use super::TokenCache;
use crate::metrics::OAuthMetrics;

impl TokenCache {
    /// One fetch: the refresher's only call into the endpoint.
    async fn fetch_once(&self, metrics: Option<&OAuthMetrics>) -> Result<Arc<Token>, FetchError> {
        let started = self.clock.now();
        let body =
            match tokio::time::timeout(self.settings.token_timeout, self.fetcher.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout(self.settings.token_timeout)),
            };
        let result = body.and_then(|b| {
            parse_token_response(&b, self.clock.wall(), self.settings.fallback_lifetime)
        });
        if let Some(m) = metrics {
            let label = result
                .as_ref()
                .map_or_else(FetchError::label, |_| "success");
            m.fetch(
                &self.account,
                label,
                (self.clock.now() - started).as_secs_f64(),
            );
        }
        let parsed = result?;
        let now = self.clock.now();
        let mut header =
            HeaderValue::try_from(format!("Bearer {}", parsed.access_token.expose_secret()))
                .map_err(|_| {
                    FetchError::Malformed("access_token cannot be sent in a header".into())
                })?;
        header.set_sensitive(true);
        let refresh = refresh_delay(
            parsed.lifetime,
            self.settings.expiry_margin,
            (self.jitter)(),
        );
        let expires_unix = self
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            + parsed.lifetime.as_secs_f64();
        let token = Arc::new(Token {
            header,
            expires_at: now + parsed.lifetime,
            expires_unix,
            refresh_at: now + refresh,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        });
        if let Some(m) = metrics {
            m.token_expiry
                .with_label_values(&[&self.account])
                .set(expires_unix);
        }
        Ok(token)
    }
}

/// The background task: the only caller of the token endpoint for one account.
pub(super) async fn refresher(
    cache: Weak<TokenCache>,
    wake: Arc<Notify>,
    metrics: Option<Arc<OAuthMetrics>>,
) {
    let mut failures: u32 = 0;
    loop {
        // Hold the cache only while working, so dropping it (a reload that replaced it) ends
        // this task at its next wake-up.
        let next = {
            let Some(cache) = cache.upgrade() else { return };
            let now = cache.clock.now();
            match cache.token.load_full() {
                Some(t) if now < t.refresh_at => Some(t.refresh_at),
                _ => None,
            }
        };
        if let Some(at) = next {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = wake.notified() => {}
            }
            continue;
        }

        let retry_in = {
            let Some(cache) = cache.upgrade() else { return };
            let outcome = cache.fetch_once(metrics.as_deref()).await;
            let error = match outcome {
                Ok(token) => {
                    if failures > 0 {
                        info!(account = %cache.account, "OAuth token endpoint recovered");
                    }
                    failures = 0;
                    cache.token.store(Some(token));
                    None
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let still_good = cache.usable_token().is_some();
                    warn!(account = %cache.account, error = %e, failures, still_good, "OAuth token fetch failed");
                    Some(Arc::<str>::from(e.to_string()))
                }
            };
            cache.status.send_modify(|s| {
                s.attempts += 1;
                s.last_error = error.clone();
            });
            error.map(|_| {
                backoff_delay(
                    failures,
                    cache.settings.backoff_base,
                    cache.settings.backoff_max,
                    (cache.jitter)(),
                )
            })
        };
        if let Some(delay) = retry_in {
            // Backoff is not cut short by wake-ups: an outage plus a stream of 401s must not
            // turn into a stream of token requests.
            tokio::time::sleep(delay).await;
        }
    }
}
