//! OAuth2 end to end: the real binary, with the TLS stand-in playing both Twilio's API and its
//! token endpoint (oauth.twilio.com, reached through the same `connect_to`). The token
//! endpoint can be told to succeed, be slow, fail with 500, answer garbage, or say `bearer`
//! in lower case, and counts its calls.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use twilio_sidecar::dev::stand_in::{echo, Recorded, Reply};

const CLIENT_ID: &str = "OQ0123456789abcdef0123456789abcdef";
const CLIENT_SECRET: &str = "oauth-client-secret-for-tests-9d2f";

#[derive(Debug, Clone)]
enum Mode {
    Ok {
        expires_in: u64,
        token_type: &'static str,
    },
    Slow(Duration),
    Fail,
    Malformed,
}

/// The token endpoint and API behaviour behind the stand-in.
struct Twilio {
    mode: Mutex<Mode>,
    calls: AtomicU64,
    issued: AtomicU64,
    /// Tokens the API rejects with 401.
    revoked: Mutex<Vec<String>>,
    /// Bearer tokens the API saw, in order.
    seen: Mutex<Vec<String>>,
    /// Client secrets the token endpoint accepts.
    secrets: Mutex<Vec<String>>,
}

impl Twilio {
    fn new(mode: Mode) -> Arc<Twilio> {
        Arc::new(Twilio {
            mode: Mutex::new(mode),
            calls: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            revoked: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            secrets: Mutex::new(vec![CLIENT_SECRET.to_string()]),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, r: &Recorded) -> Reply {
        if r.host.as_deref() == Some("oauth.twilio.com") {
            return self.token_endpoint(r);
        }
        let auth = r.header_values("authorization");
        let token = auth
            .first()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        self.seen.lock().unwrap().push(token.clone());
        if token.is_empty() || self.revoked.lock().unwrap().contains(&token) {
            return reply(
                401,
                r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#,
                Duration::ZERO,
            );
        }
        echo(r)
    }

    fn token_endpoint(&self, r: &Recorded) -> Reply {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let form = String::from_utf8_lossy(&r.body);
        let accepted = self.secrets.lock().unwrap().iter().any(|secret| {
            form == format!(
                "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={secret}"
            )
        });
        if r.method != "POST"
            || r.target != "/v2/token"
            || !accepted
            || r.header_values("content-type") != vec!["application/x-www-form-urlencoded"]
        {
            return reply(400, r#"{"error":"invalid_request"}"#, Duration::ZERO);
        }
        let mode = self.mode.lock().unwrap().clone();
        let token = |n: u64| format!("tok{n}");
        match mode {
            Mode::Ok {
                expires_in,
                token_type,
            } => {
                let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!(
                    r#"{{"access_token":"{}","token_type":"{token_type}","expires_in":{expires_in}}}"#,
                    token(n)
                );
                reply(200, &body, Duration::ZERO)
            }
            Mode::Slow(delay) => {
                let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!(
                    r#"{{"access_token":"{}","token_type":"Bearer","expires_in":3600}}"#,
                    token(n)
                );
                reply(200, &body, delay)
            }
            Mode::Fail => reply(500, r#"{"error":"server_error"}"#, Duration::ZERO),
            Mode::Malformed => reply(200, r#"{"access_token": "#, Duration::ZERO),
        }
    }
}

fn reply(status: u16, body: &str, delay: Duration) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_string()),
        delay,
    }
}

fn oauth_config(ctx: &Ctx, oauth: &str) -> String {
    write(&ctx.dir, "client_secret", &format!("{CLIENT_SECRET}\n"));
    format!(
        r#"
{head}
[[accounts]]
sid = "{SID}"
credential = {{ type = "oauth2", client_id = "{CLIENT_ID}", client_secret = {{ file = "client_secret" }} }}
[oauth]
{oauth}
[policy]
allow = ["/2010-04-01/Accounts/{{AccountSid}}/*"]
"#,
        head = listeners_and_upstream(ctx)
    )
}

async fn start(twilio: &Arc<Twilio>, oauth: &str) -> Harness {
    let t = twilio.clone();
    let stand_in = stand_in().await;
    stand_in.set_responder(move |r| t.answer(r));
    Harness::start_against(stand_in, |ctx| oauth_config(ctx, oauth)).await
}

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_500_concurrent_requests_fetches_one_token() {
    let twilio = Twilio::new(Mode::Slow(Duration::from_millis(700)));
    let h = Arc::new(start(&twilio, r#"wait_for_token = "5s""#).await);
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                h.send(
                    "POST",
                    &messages(),
                    &[("Authorization", "Basic YXBwOmFwcA==")],
                    b"Body=x",
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(twilio.calls(), 1, "one token fetch for 500 requests");
    let seen = twilio.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 500);
    assert!(seen.iter().all(|t| t == "tok1"));
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_token_fetches_total{{account="{SID}",result="success"}} 1"#
        )),
        "{m}"
    );
    assert!(
        m.contains("twilio_sidecar_oauth_token_expiry_timestamp_seconds"),
        "{m}"
    );
    // About an hour left (3599.x s).
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_token_seconds_until_expiry{{account="{SID}"}} 359"#
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_the_token_is_good_fails_no_request_and_one_past_expiry_recovers() {
    // 6 s tokens with a 1 s margin: refreshed after about 4.5-5 s, usable until 5 s.
    let twilio = Twilio::new(Mode::Ok {
        expires_in: 6,
        token_type: "Bearer",
    });
    let h = start(&twilio, "expiry_margin = \"1s\"\nwait_for_token = \"500ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"400ms\"").await;
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    let t0 = Instant::now();
    twilio.set(Mode::Fail);

    // Zero failures while the token is good, even though refreshes are failing meanwhile.
    let mut served = 0;
    while t0.elapsed() < Duration::from_millis(4300) {
        let resp = h.send("GET", &messages(), &[], b"").await;
        assert_eq!(
            resp.status,
            200,
            "failed while the token was good: {}",
            resp.text()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 20);

    // Past the usable window: clean 503s in Twilio's shape, and not ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        twilio.calls() > 2,
        "the refresher retried during the outage"
    );
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.twilio_error(503), 79503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    let msg = resp.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("token endpoint is failing") && msg.contains("HTTP 500"),
        "{msg}"
    );
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["accounts"][0]["usable"], false);
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_token_fetches_total{{account="{SID}",result="http_error"}}"#
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_no_credential_total{{account="{SID}"}}"#
        )),
        "{m}"
    );

    // The endpoint comes back: the sidecar recovers by itself.
    twilio.set(Mode::Ok {
        expires_in: 3600,
        token_type: "bearer",
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = h.send("GET", &messages(), &[], b"").await;
        if resp.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.admin_get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_triggers_exactly_one_refetch_and_one_replay() {
    let twilio = Twilio::new(Mode::Ok {
        expires_in: 3600,
        token_type: "Bearer",
    });
    // Three revocations back to back: no rate limit on re-fetches here (see the next test).
    let h = start(&twilio, r#"min_refetch_interval = "1ms""#).await;
    assert_eq!(
        h.send("POST", &messages(), &[], b"Body=first").await.status,
        200
    );
    assert_eq!(twilio.calls(), 1);

    // Twilio revokes tok1: the next request is rejected, the token dropped, a new one fetched
    // once, and the request replayed once with its body intact.
    twilio.revoked.lock().unwrap().push("tok1".into());
    h.stand_in.clear();
    let resp = h.send("POST", &messages(), &[], b"Body=replay-me").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(twilio.calls(), 2);
    let api: Vec<_> = h
        .stand_in
        .requests()
        .into_iter()
        .filter(|r| r.host.as_deref() == Some("api.twilio.com"))
        .collect();
    assert_eq!(api.len(), 2);
    assert_eq!(api[0].header_values("authorization"), vec!["Bearer tok1"]);
    assert_eq!(api[1].header_values("authorization"), vec!["Bearer tok2"]);
    assert_eq!(api[1].body, Bytes::from_static(b"Body=replay-me"));
    assert_eq!(api[1].method, "POST");
    assert_eq!(api[1].target, messages());

    // A body over the replay limit is not buffered: the 401 passes through. (Each revocation
    // waits out the 1 ms re-fetch interval: a fetch and a replay on loopback can take less.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    twilio.revoked.lock().unwrap().push("tok2".into());
    let big = vec![b'x'; 70 * 1024];
    let resp = h.send("POST", &messages(), &[], &big).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.json()["code"],
        20003,
        "Twilio's own error passes through"
    );
    // The rejected token was still dropped: the next request waits for its replacement.
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    assert_eq!(twilio.calls(), 3);
    assert_eq!(twilio.seen.lock().unwrap().last().unwrap(), "tok3");

    // A request without a body is replayed as well.
    tokio::time::sleep(Duration::from_millis(5)).await;
    twilio.revoked.lock().unwrap().push("tok3".into());
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(twilio.calls(), 4);

    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_replays_total{{account="{SID}",result="replayed"}} 2"#
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_replays_total{{account="{SID}",result="not_replayable"}} 1"#
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_twilio_always_answers_401_cannot_drive_token_fetches() {
    let twilio = Twilio::new(Mode::Ok {
        expires_in: 3600,
        token_type: "Bearer",
    });
    let h = start(&twilio, "").await;
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    assert_eq!(twilio.calls(), 1);
    // Every token Twilio sees from here on is rejected (one bad path, or a revoked grant).
    for n in 1..=50 {
        twilio.revoked.lock().unwrap().push(format!("tok{n}"));
    }
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(h.send("POST", &messages(), &[], b"Body=x").await.status);
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // The first 401 dropped tok1 and fetched tok2 (its replay got 401 too); every later one
    // kept tok2 for oauth.min_refetch_interval: two fetches in all, not forty.
    assert_eq!(twilio.calls(), 2);
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    let m = h.metrics().await;
    for (result, n) in [("dropped", 1), ("rate_limited", 20)] {
        assert!(
            m.contains(&format!(
                r#"twilio_sidecar_oauth_401_invalidations_total{{account="{SID}",result="{result}"}} {n}"#
            )),
            "{result}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_failures_and_lower_case_bearer_is_fine() {
    let twilio = Twilio::new(Mode::Malformed);
    let h = start(
        &twilio,
        "wait_for_token = \"300ms\"\nbackoff_base = \"100ms\"\nbackoff_max = \"200ms\"",
    )
    .await;
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.twilio_error(503), 79503);
    assert!(
        resp.text().contains("not a usable token"),
        "{}",
        resp.text()
    );
    twilio.set(Mode::Ok {
        expires_in: 3600,
        token_type: "bearer",
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.send("GET", &messages(), &[], b"").await.status != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_oauth_token_fetches_total{{account="{SID}",result="malformed"}}"#
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_token_unless_the_client_credentials_change_and_nothing_leaks() {
    let twilio = Twilio::new(Mode::Ok {
        expires_in: 3600,
        token_type: "Bearer",
    });
    let h = start(&twilio, "").await;
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    assert_eq!(twilio.calls(), 1);
    let config_path = h.dir.path().join("sidecar.toml");

    // A policy-only change: same token, no fetch.
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("allow = [", "allow = [\"GET /v2/Nope\", "),
    )
    .unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    assert_eq!(twilio.calls(), 1);
    assert_eq!(twilio.seen.lock().unwrap().last().unwrap(), "tok1");

    // A new client secret: a new cache and a new token, fetched with the new secret (the old
    // one is no longer accepted).
    *twilio.secrets.lock().unwrap() = vec!["rotated-client-secret".into()];
    std::fs::write(
        h.dir.path().join("client_secret"),
        "rotated-client-secret\n",
    )
    .unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    assert_eq!(twilio.calls(), 2);
    assert_eq!(twilio.seen.lock().unwrap().last().unwrap(), "tok2");
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_credential_generation{{account="{SID}"}} 2"#
        )),
        "{m}"
    );

    let config = h.admin_get("/config").await.text();
    assert!(
        config.contains(CLIENT_ID) && config.contains("oauth.twilio.com/v2/token"),
        "{config}"
    );
    let logs = h.logs().join("\n");
    for needle in [
        CLIENT_SECRET,
        "rotated-client-secret",
        "Bearer tok1",
        "tok1\"",
    ] {
        assert!(!logs.contains(needle), "logs leak {needle}");
        assert!(!m.contains(needle), "metrics leak {needle}");
        assert!(!config.contains(needle), "config leaks {needle}");
    }
}
