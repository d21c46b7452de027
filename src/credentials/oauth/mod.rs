//! OAuth2 client_credentials: a per-account token cache that never makes a request wait while
//! its token is good and never attaches a token that is expired or about to be.
//!
//! One background task per account (the refresher) is the only thing that ever calls the token
//! endpoint, so fetches are single-flight by construction. It fetches at start, then again at a
//! jittered 75–85% of each token's lifetime; on failure it keeps the current token while it is
//! still good and retries with exponential backoff and full jitter. Requests read the current
//! token lock-free; with no usable one they wait (bounded) for the fetch in flight, and fail as
//! soon as that fetch fails. A Twilio 401 drops the token it was sent with (only if it is still
//! the current one) and wakes the refresher.
//!
//! The fetcher, clock and jitter are injected, so tests control time instead of sleeping.

pub mod fetcher;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::OAuthSettings;
use crate::metrics::OAuthMetrics;

/// The longest lifetime believed: Twilio's tokens live an hour, and nothing it issues lives
/// beyond a day. Longer claims (the spec's own example says `1438315200000`) are ignored.
pub const MAX_PLAUSIBLE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

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

/// Why a token fetch failed. Messages name the endpoint's fault, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the token endpoint ({0})")]
    Connect(String),
    #[error("the token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the token endpoint's answer is not a usable token: {0}")]
    Malformed(String),
}

impl FetchError {
    /// `result` label of the fetch metric.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Connect(_) => "connect_error",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status(_) => "http_error",
            FetchError::Malformed(_) => "malformed",
        }
    }
}

/// Fetches one token response body from the token endpoint. Non-2xx answers are errors.
pub trait TokenFetcher: Send + Sync + 'static {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, FetchError>> + Send + '_>>;
}

/// A token ready to attach.
pub struct Token {
    /// `Bearer …`, marked sensitive.
    pub header: HeaderValue,
    pub expires_at: Instant,
    /// Wall-clock expiry, seconds since the epoch (for the metric).
    pub expires_unix: f64,
    /// When the refresher fetches the next one.
    pub refresh_at: Instant,
    /// Identifies this token for 401 invalidation.
    pub id: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

/// A parsed token response.
#[derive(Debug)]
pub struct ParsedToken {
    pub access_token: SecretString,
    pub lifetime: Duration,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Parses a token endpoint answer. The lifetime is the earlier of a plausible `expires_in` and
/// a plausible JWT `exp`, else `fallback`.
pub fn parse_token_response(
    body: &[u8],
    wall_now: SystemTime,
    fallback: Duration,
) -> Result<ParsedToken, FetchError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FetchError::Malformed("empty body".into()));
    }
    let response: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        FetchError::Malformed(format!("not a JSON token response ({})", e.classify_name()))
    })?;
    let token = response
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| FetchError::Malformed("no access_token".into()))?;
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(FetchError::Malformed(
            "access_token has characters a header cannot carry".into(),
        ));
    }
    if let Some(kind) = &response.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(FetchError::Malformed(format!(
                "token_type {kind:?} is not Bearer"
            )));
        }
    }
    let from_expires_in = response
        .expires_in
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|s| *s > 0.0 && *s <= MAX_PLAUSIBLE_LIFETIME.as_secs_f64())
        .map(Duration::from_secs_f64);
    let from_jwt = jwt_exp(&token).and_then(|exp| {
        let exp = UNIX_EPOCH.checked_add(Duration::from_secs_f64(exp))?;
        exp.duration_since(wall_now)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_PLAUSIBLE_LIFETIME)
    });
    let lifetime = match (from_expires_in, from_jwt) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => fallback,
    };
    Ok(ParsedToken {
        access_token: SecretString::from(token),
        lifetime,
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong field types",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), if `token` is one.
fn jwt_exp(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    claims.get("exp")?.as_f64()
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

/// Fetch progress that waiting requests watch.
#[derive(Debug, Clone, Default)]
struct FetchStatus {
    /// Bumped after every fetch attempt.
    attempts: u64,
    /// The last attempt's error, if it failed.
    last_error: Option<Arc<str>>,
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
        tokio::spawn(refresher(Arc::downgrade(self), self.wake.clone(), metrics));
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

    /// Drops token `id` after Twilio rejected it (401), if it is still the current one, and
    /// wakes the refresher. Returns true when it was dropped here.
    pub fn invalidate(&self, id: u64) -> bool {
        let current = self.token.load();
        let dropped = match current.as_ref() {
            Some(t) if t.id == id => {
                let prev = self.token.compare_and_swap(&*current, None);
                prev.as_ref().is_some_and(|p| p.id == id)
            }
            _ => false,
        };
        if dropped {
            warn!(account = %self.account, "Twilio rejected the OAuth token (401); fetching a new one");
            self.wake.notify_one();
        }
        dropped
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
async fn refresher(cache: Weak<TokenCache>, wake: Arc<Notify>, metrics: Option<Arc<OAuthMetrics>>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock on tokio's (paused) time, with the wall clock derived from it.
    struct TestClock {
        base_instant: Instant,
        base_wall: SystemTime,
    }

    impl TestClock {
        fn new() -> Arc<Self> {
            Arc::new(TestClock {
                base_instant: Instant::now(),
                base_wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            })
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> Instant {
            Instant::now()
        }
        fn wall(&self) -> SystemTime {
            self.base_wall + (Instant::now() - self.base_instant)
        }
    }

    /// A scripted fetcher: each call pops the next answer (the last one repeats), optionally
    /// after a delay, and counts calls.
    struct ScriptedFetcher {
        answers: Mutex<Vec<(Duration, Result<Bytes, FetchError>)>>,
        calls: AtomicU64,
        at: Mutex<Vec<Instant>>,
    }

    impl ScriptedFetcher {
        fn new(answers: Vec<(Duration, Result<Bytes, FetchError>)>) -> Arc<Self> {
            Arc::new(ScriptedFetcher {
                answers: Mutex::new(answers),
                calls: AtomicU64::new(0),
                at: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
        fn set(&self, answers: Vec<(Duration, Result<Bytes, FetchError>)>) {
            *self.answers.lock().unwrap() = answers;
        }
    }

    impl TokenFetcher for ScriptedFetcher {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, FetchError>> + Send + '_>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.at.lock().unwrap().push(Instant::now());
            let (delay, answer) = {
                let mut a = self.answers.lock().unwrap();
                if a.len() > 1 {
                    a.remove(0)
                } else {
                    a[0].clone()
                }
            };
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }

    fn ok(token: &str, expires_in: u64) -> (Duration, Result<Bytes, FetchError>) {
        (
            Duration::ZERO,
            Ok(Bytes::from(format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#
            ))),
        )
    }

    fn fail() -> (Duration, Result<Bytes, FetchError>) {
        (Duration::ZERO, Err(FetchError::Status(500)))
    }

    fn cache(fetcher: Arc<ScriptedFetcher>, u: f64) -> Arc<TokenCache> {
        let c = TokenCache::new(
            "AC1",
            ClientCredentials {
                client_id: "OQ1".into(),
                client_secret: SecretString::from("s".to_string()),
                token_url: "https://oauth.twilio.com/v2/token".into(),
            },
            OAuthSettings::default(),
            fetcher,
            TestClock::new(),
            Arc::new(move || u),
        );
        c.start(None);
        c
    }

    fn bearer(t: &Token) -> String {
        String::from_utf8(t.header.as_bytes().to_vec()).unwrap()
    }

    /// Lets spawned tasks run without moving time.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn refresh_timing_and_jitter_bounds() {
        let hour = Duration::from_secs(3600);
        let margin = Duration::from_secs(30);
        assert_eq!(refresh_delay(hour, margin, 0.0), Duration::from_secs(2700));
        assert_eq!(refresh_delay(hour, margin, 0.999_999).as_secs(), 3059);
        for i in 0..100 {
            let d = refresh_delay(hour, margin, f64::from(i) / 100.0);
            assert!(d >= hour.mul_f64(0.75) && d < hour.mul_f64(0.85), "{d:?}");
        }
        // Short lifetimes: refreshed while still usable, never in a hot loop.
        assert_eq!(
            refresh_delay(Duration::from_secs(60), margin, 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(10), margin, 0.5),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn backoff_grows_and_caps_with_full_jitter() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let ceilings: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(n, base, max, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff_delay(40, base, max, 1.0), max);
        assert_eq!(backoff_delay(3, base, max, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(3, base, max, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn expiry_parsing() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let fallback = Duration::from_secs(300);
        let p = |body: &str| parse_token_response(body.as_bytes(), now, fallback);
        assert_eq!(
            p(r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#)
                .unwrap()
                .lifetime,
            Duration::from_secs(3600)
        );
        assert_eq!(
            p(r#"{"access_token":"t","token_type":"bearer","expires_in":"3600"}"#)
                .unwrap()
                .lifetime,
            Duration::from_secs(3600)
        );
        // The spec's absurd example is ignored in favour of the fallback.
        assert_eq!(
            p(r#"{"access_token":"t","token_type":"Bearer","expires_in":1438315200000}"#)
                .unwrap()
                .lifetime,
            fallback
        );
        // A JWT's exp, and the earlier of the two.
        let jwt = |exp: u64| {
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.sig",
                b.encode(r#"{"alg":"HS256"}"#),
                b.encode(format!(r#"{{"exp":{exp}}}"#))
            )
        };
        let in_30m = jwt(1_800_000_000 + 1800);
        assert_eq!(
            p(&format!(
                r#"{{"access_token":"{in_30m}","token_type":"Bearer"}}"#
            ))
            .unwrap()
            .lifetime,
            Duration::from_secs(1800)
        );
        assert_eq!(
            p(&format!(
                r#"{{"access_token":"{in_30m}","expires_in":3600}}"#
            ))
            .unwrap()
            .lifetime,
            Duration::from_secs(1800)
        );
        assert_eq!(
            p(&format!(
                r#"{{"access_token":"{in_30m}","expires_in":600}}"#
            ))
            .unwrap()
            .lifetime,
            Duration::from_secs(600)
        );
        // An expired or absurd exp is ignored.
        let past = jwt(1_800_000_000 - 10);
        assert_eq!(
            p(&format!(r#"{{"access_token":"{past}","expires_in":3600}}"#))
                .unwrap()
                .lifetime,
            Duration::from_secs(3600)
        );
        let ms = jwt(1_800_000_000_000);
        assert_eq!(
            p(&format!(r#"{{"access_token":"{ms}"}}"#))
                .unwrap()
                .lifetime,
            fallback
        );
        // Neither: the fallback.
        assert_eq!(
            p(r#"{"access_token":"opaque"}"#).unwrap().lifetime,
            fallback
        );
        // Failures.
        for bad in [
            "",
            "  ",
            "{",
            "[]",
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"t","token_type":"mac"}"#,
            r#"{"access_token":"a b"}"#,
        ] {
            assert!(matches!(p(bad), Err(FetchError::Malformed(_))), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cold_start_is_single_flight() {
        let f = ScriptedFetcher::new(vec![(Duration::from_millis(300), ok("t1", 3600).1)]);
        let c = cache(f.clone(), 0.5);
        let waiters: Vec<_> = (0..500)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.token().await.map(|t| bearer(&t)) })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), "Bearer t1");
        }
        assert_eq!(f.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry_without_making_requests_wait() {
        let f = ScriptedFetcher::new(vec![ok("t1", 3600), ok("t2", 3600)]);
        let c = cache(f.clone(), 0.5); // refresh at 80% = 2880 s
        assert_eq!(bearer(&c.token().await.unwrap()), "Bearer t1");
        tokio::time::sleep(Duration::from_secs(2879)).await;
        settle().await;
        assert_eq!(f.calls(), 1);
        assert_eq!(bearer(&c.usable_token().unwrap()), "Bearer t1");
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(f.calls(), 2);
        // The new token was in place before anyone asked.
        assert_eq!(bearer(&c.usable_token().unwrap()), "Bearer t2");
    }

    #[tokio::test(start_paused = true)]
    async fn never_attaches_a_token_within_the_margin() {
        // The endpoint fails after the first token: the token stays usable until 30 s before
        // expiry, then requests fail cleanly instead of sending it.
        let f = ScriptedFetcher::new(vec![ok("t1", 3600), fail()]);
        let c = cache(f.clone(), 0.5);
        assert!(c.token().await.is_ok());
        tokio::time::sleep(Duration::from_secs(3569)).await;
        settle().await;
        assert!(
            c.usable_token().is_some(),
            "still usable 31 s before expiry"
        );
        assert!(f.calls() > 1, "retried while the token was good");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            c.usable_token().is_none(),
            "not usable within 30 s of expiry"
        );
        let err = c.token().await.unwrap_err();
        assert!(
            err.0.contains("token endpoint is failing") && err.0.contains("HTTP 500"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_recover() {
        let f = ScriptedFetcher::new(vec![fail()]);
        let c = cache(f.clone(), 1.0); // jitter at its ceiling: 0.5, 1, 2, 4, 8 s …
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(40)).await;
        let at: Vec<u64> =
            f.at.lock()
                .unwrap()
                .iter()
                .map(|t| (*t - start).as_millis() as u64)
                .collect();
        // Fetch times: 0, then after 0.5, 1, 2, 4, 8, 16, 30 (capped) s.
        assert_eq!(at, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert!(c.token().await.is_err());
        f.set(vec![ok("t9", 3600)]);
        tokio::time::sleep(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!(bearer(&c.token().await.unwrap()), "Bearer t9");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_fails_as_soon_as_the_fetch_in_flight_fails() {
        let f = ScriptedFetcher::new(vec![(
            Duration::from_millis(200),
            Err(FetchError::Connect("refused".into())),
        )]);
        let c = cache(f.clone(), 0.5);
        let started = Instant::now();
        let err = c.token().await.unwrap_err();
        assert_eq!(Instant::now() - started, Duration::from_millis(200));
        assert!(err.0.contains("refused"), "{err}");
        // A slow endpoint: the request gives up after wait_for_token (2 s).
        let f = ScriptedFetcher::new(vec![(Duration::from_secs(5), ok("late", 3600).1)]);
        let c = cache(f, 0.5);
        let started = Instant::now();
        let err = c.token().await.unwrap_err();
        assert_eq!(Instant::now() - started, Duration::from_secs(2));
        assert!(err.0.contains("has not answered"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_drops_only_the_current_token_and_refetches_once() {
        let f = ScriptedFetcher::new(vec![ok("t1", 3600), ok("t2", 3600), ok("t3", 3600)]);
        let c = cache(f.clone(), 0.5);
        let t1 = c.token().await.unwrap();
        // Many requests saw the same 401: one invalidation, one fetch.
        assert!(c.invalidate(t1.id));
        for _ in 0..50 {
            assert!(!c.invalidate(t1.id));
        }
        let t2 = c.token().await.unwrap();
        assert_eq!(bearer(&t2), "Bearer t2");
        settle().await;
        assert_eq!(f.calls(), 2);
        // A stale id does not drop the newer token.
        assert!(!c.invalidate(t1.id));
        assert_eq!(bearer(&c.usable_token().unwrap()), "Bearer t2");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_cache_stops_its_refresher() {
        let f = ScriptedFetcher::new(vec![ok("t1", 60)]);
        let c = cache(f.clone(), 0.5);
        c.token().await.unwrap();
        drop(c);
        tokio::time::sleep(Duration::from_secs(600)).await;
        settle().await;
        assert_eq!(f.calls(), 1);
    }
}
