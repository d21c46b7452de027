//! The token cache against a scripted fetcher on paused time.

use super::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use std::sync::Mutex;
use tokio::time::Instant;

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
    assert_eq!(c.invalidate(t1.id), Invalidation::Dropped);
    for _ in 0..50 {
        assert_eq!(c.invalidate(t1.id), Invalidation::Stale);
    }
    let t2 = c.token().await.unwrap();
    assert_eq!(bearer(&t2), "Bearer t2");
    settle().await;
    assert_eq!(f.calls(), 2);
    // A stale id does not drop the newer token.
    assert_eq!(c.invalidate(t1.id), Invalidation::Stale);
    assert_eq!(bearer(&c.usable_token().unwrap()), "Bearer t2");
}

#[tokio::test(start_paused = true)]
async fn a_path_that_always_gets_401_cannot_drive_token_fetches() {
    let tokens: Vec<_> = (1..=10).map(|i| ok(&format!("t{i}"), 3600)).collect();
    let f = ScriptedFetcher::new(tokens);
    let c = cache(f.clone(), 0.5);
    // Twilio answers 401 to every request on one path, whatever the token: each request
    // that comes back 401 reports the token it carried.
    let mut results = Vec::new();
    for _ in 0..20 {
        let t = c.token().await.unwrap();
        results.push(c.invalidate(t.id));
        tokio::time::sleep(Duration::from_millis(90)).await;
    }
    settle().await;
    // One drop; the new token is kept for oauth.min_refetch_interval (10 s).
    assert_eq!(results[0], Invalidation::Dropped);
    assert!(
        results[1..].iter().all(|r| *r == Invalidation::RateLimited),
        "{results:?}"
    );
    assert_eq!(f.calls(), 2);
    assert!(c.usable_token().is_some(), "readiness flipped");
    // Once the interval has passed, a 401 may drop the current token again: once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t = c.token().await.unwrap();
    assert_eq!(c.invalidate(t.id), Invalidation::Dropped);
    assert_eq!(c.invalidate(t.id), Invalidation::Stale);
    c.token().await.unwrap();
    settle().await;
    assert_eq!(f.calls(), 3);
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
