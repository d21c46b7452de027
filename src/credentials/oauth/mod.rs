//! OAuth2 client_credentials: a per-account token cache that never makes a request wait while
//! its token is good and never attaches a token that is expired or about to be.
//!
//! One background task per account (the refresher) is the only thing that ever calls the token
//! endpoint, so fetches are single-flight by construction. It fetches at start, then again at a
//! jittered 75–85% of each token's lifetime; on failure it keeps the current token while it is
//! still good and retries with exponential backoff and full jitter. Requests read the current
//! token lock-free; with no usable one they wait (bounded) for the fetch in flight, and fail as
//! soon as that fetch fails. A Twilio 401 drops the token it was sent with (only if it is still
//! the current one, so each token at most once) and wakes the refresher — at most once per
//! `oauth.min_refetch_interval`, so a path Twilio always answers 401 cannot turn requests into
//! token fetches or flip readiness.
//!
//! The fetcher, clock and jitter are injected, so tests control time instead of sleeping.
//! Here: the cache itself; [`token`] (what the endpoint's answer means), [`timing`] (clock,
//! jitter, refresh and backoff delays), [`fetcher`] (the HTTPS call) and `refresher` (the
//! background task).

pub mod fetcher;
mod refresher;
#[cfg(test)]
mod tests;
pub mod timing;
pub mod token;

pub use fetcher::{FetchError, TokenFetcher};
pub use timing::{backoff_delay, default_jitter, refresh_delay, Clock, Jitter, SystemClock};
pub use token::{parse_token_response, ParsedToken, Token, MAX_PLAUSIBLE_LIFETIME};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::config::OAuthSettings;
use crate::metrics::OAuthMetrics;

/// Fetch progress that waiting requests watch.
#[derive(Debug, Clone, Default)]
struct FetchStatus {
    /// Bumped after every fetch attempt.
    attempts: u64,
    /// The last attempt's error, if it failed.
    last_error: Option<Arc<str>>,
}

/// What a Twilio 401 did to the token it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// It was dropped here; the refresher is fetching a new one.
    Dropped,
    /// It had already been replaced (or dropped by another request's 401).
    Stale,
    /// It is still the current one, and kept: a 401 dropped a token less than
    /// `oauth.min_refetch_interval` ago.
    RateLimited,
}

impl Invalidation {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalidation::Dropped => "dropped",
            Invalidation::Stale => "stale",
            Invalidation::RateLimited => "rate_limited",
        }
    }
}

/// Why a request got no token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NoToken(pub String);

/// One account's token cache.
pub struct TokenCache {
    account: Box<str>,
    client_id: Box<str>,
    /// Client secret and token URL, kept to tell whether a reload changed the credentials.
    client_secret: SecretString,
    token_url: String,
    settings: OAuthSettings,
    fetcher: Arc<dyn TokenFetcher>,
    clock: Arc<dyn Clock>,
    jitter: Jitter,
    token: ArcSwapOption<Token>,
    status: watch::Sender<FetchStatus>,
    wake: Arc<Notify>,
    started: AtomicBool,
    next_id: AtomicU64,
    /// When a 401 last dropped a token (only ever touched on a 401, never on the hot path).
    last_invalidation: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("account", &self.account)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

/// What identifies an account's client credentials.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
    pub token_url: String,
}

impl TokenCache {
    pub fn new(
        account: &str,
        credentials: ClientCredentials,
        settings: OAuthSettings,
        fetcher: Arc<dyn TokenFetcher>,
        clock: Arc<dyn Clock>,
        jitter: Jitter,
    ) -> Arc<TokenCache> {
        Arc::new(TokenCache {
            account: account.into(),
            client_id: credentials.client_id.into(),
            client_secret: credentials.client_secret,
            token_url: credentials.token_url,
            settings,
            fetcher,
            clock,
            jitter,
            token: ArcSwapOption::empty(),
            status: watch::Sender::new(FetchStatus::default()),
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            last_invalidation: std::sync::Mutex::new(None),
        })
    }

    /// True when `other` holds the same client credentials and settings, so a reload may keep
    /// this cache (and its token).
    pub fn same_client(&self, other: &ClientCredentials, settings: &OAuthSettings) -> bool {
        *self.client_id == *other.client_id
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
            && self.token_url == other.token_url
            && self.settings == *settings
    }

    /// The OAuth client id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// Starts the refresher once; later calls do nothing. It stops when the cache is dropped.
    pub fn start(self: &Arc<Self>, metrics: Option<Arc<OAuthMetrics>>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(refresher::refresher(
            Arc::downgrade(self),
            self.wake.clone(),
            metrics,
        ));
    }

    /// The current token if it is usable now: not within the margin of its expiry.
    pub fn usable_token(&self) -> Option<Arc<Token>> {
        let token = self.token.load_full()?;
        (self.clock.now() + self.settings.expiry_margin < token.expires_at).then_some(token)
    }

    /// A usable token, waiting up to `wait_for_token` for the fetch in flight when there is
    /// none. Fails as soon as that fetch fails.
    pub async fn token(&self) -> Result<Arc<Token>, NoToken> {
        if let Some(t) = self.usable_token() {
            return Ok(t);
        }
        let mut status = self.status.subscribe();
        let started_at = status.borrow_and_update().attempts;
        let deadline = self.clock.now() + self.settings.wait_for_token;
        self.wake.notify_one();
        loop {
            if let Some(t) = self.usable_token() {
                return Ok(t);
            }
            {
                let s = status.borrow_and_update();
                if s.attempts > started_at {
                    if let Some(e) = &s.last_error {
                        return Err(self.no_token(Some(e)));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    let last = self.status.borrow().last_error.clone();
                    return match self.usable_token() {
                        Some(t) => Ok(t),
                        None => Err(self.no_token(last.as_ref())),
                    };
                }
            }
        }
    }

    fn no_token(&self, last_error: Option<&Arc<str>>) -> NoToken {
        NoToken(match last_error {
            Some(e) => format!(
                "no usable OAuth token for account {}: the token endpoint is failing ({e})",
                self.account
            ),
            None => format!(
                "no usable OAuth token for account {} yet: the token endpoint has not answered within {:?}",
                self.account, self.settings.wait_for_token
            ),
        })
    }

    /// Twilio rejected token `id` (401): drops it if it is still the current one, and wakes
    /// the refresher — unless a 401 dropped a token less than `min_refetch_interval` ago.
    pub fn invalidate(&self, id: u64) -> Invalidation {
        let current = self.token.load();
        if current.as_ref().is_none_or(|t| t.id != id) {
            return Invalidation::Stale;
        }
        {
            // Not held across an await; contended only by requests that all got 401.
            let mut last = self
                .last_invalidation
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = self.clock.now();
            if last.is_some_and(|at| {
                at.checked_add(self.settings.min_refetch_interval)
                    .is_none_or(|until| now < until)
            }) {
                return Invalidation::RateLimited;
            }
            let prev = self.token.compare_and_swap(&*current, None);
            if prev.as_ref().is_none_or(|p| p.id != id) {
                return Invalidation::Stale;
            }
            *last = Some(now);
        }
        warn!(account = %self.account, "Twilio rejected the OAuth token (401); fetching a new one");
        self.wake.notify_one();
        Invalidation::Dropped
    }

    /// Seconds until the current token expires (negative once expired), if there is one.
    pub fn seconds_until_expiry(&self) -> Option<f64> {
        let t = self.token.load_full()?;
        let now = self.clock.now();
        Some(if t.expires_at >= now {
            (t.expires_at - now).as_secs_f64()
        } else {
            -(now - t.expires_at).as_secs_f64()
        })
    }
}
