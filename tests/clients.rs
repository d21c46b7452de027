//! Clients: per-app local keys and policies through the real binary — authentication, each
//! client's own rules and accounts, the credential that reaches Twilio, refusals that look the
//! same whatever was wrong, rotation and revocation under load, metrics, /config, check.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const BILLING_SECRET: &str = "billing-local-secret-0123456789abcdefghij";
const BILLING_NEXT: &str = "billing-local-secret-rotated-ZYXWVUTSRQP";
const NOTIFY_SECRET: &str = "notifications-local-secret-0123456789abcd";

fn sha256_hex(s: &str) -> String {
    twilio_sidecar::gate::clients::secret_hash(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two clients: billing-api may send messages on the first account only; notifications may
/// send messages on either and start Verify verifications. [policy] (for anonymous requests,
/// when allowed) reads messages; its deny rule guards everyone.
fn clients_config(ctx: &Ctx, billing_hashes: &[&str], anonymous: bool) -> String {
    let hashes = billing_hashes
        .iter()
        .map(|s| format!("{:?}", sha256_hex(s)))
        .collect::<Vec<_>>()
        .join(", ");
    write(&ctx.dir, "notify-secret", &format!("{NOTIFY_SECRET}\n"));
    standard_config(
        ctx,
        "",
        &format!(
            r#"
[policy]
anonymous = {anonymous}
allow = ["GET /2010-04-01/Accounts/{{AccountSid}}/Messages*"]
deny = ["* /2010-04-01/Accounts/{{AccountSid}}/Keys*"]

[[clients]]
id = "billing-api"
secret_sha256 = [{hashes}]
accounts = ["{SID}"]
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json", "* /2010-04-01/Accounts/{{AccountSid}}/Keys*"]

[[clients]]
id = "notifications"
secret = {{ file = "notify-secret" }}
allow = [
  "POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json",
  "POST verify.twilio.com /v2/Services/*/Verifications",
]
"#
        ),
    )
}

fn messages(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{sid}/Messages.json")
}

#[tokio::test]
async fn each_client_gets_its_own_policy_and_twilio_gets_only_the_real_key() {
    let h = Harness::start_with(|ctx| clients_config(ctx, &[BILLING_SECRET], false)).await;
    let billing = basic("billing-api", BILLING_SECRET);
    let notify = basic("notifications", NOTIFY_SECRET);

    // A client sends a message: Twilio sees the account's API key, never the local one.
    let resp = h
        .send(
            "POST",
            &messages(SID),
            &[("Authorization", &billing)],
            b"Body=hi",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h.last_authorization(), vec![expected_authorization()]);
    let seen = h.stand_in.requests();
    let last = seen.last().unwrap();
    assert!(last.header_values("proxy-authorization").is_empty());
    assert!(!format!("{:?}", last.headers).contains(BILLING_SECRET));

    // The same key as Proxy-Authorization, beside the dummy credentials an SDK sends.
    let resp = h
        .send(
            "POST",
            &messages(SID),
            &[
                ("Proxy-Authorization", &billing),
                ("Authorization", &basic(SID, "sdk-dummy")),
            ],
            b"Body=hi",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Another client's operation: denied with Twilio's permission code.
    let resp = h
        .send(
            "POST",
            "/verify.twilio.com/v2/Services/VA1/Verifications",
            &[("Authorization", &billing)],
            b"To=%2B15005550006&Channel=sms",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 70051);
    // ...which the other client may do.
    let resp = h
        .send(
            "POST",
            "/verify.twilio.com/v2/Services/VA1/Verifications",
            &[("Authorization", &notify)],
            b"To=%2B15005550006&Channel=sms",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // billing-api may not use the second account, even for an operation it may do.
    let resp = h
        .send(
            "POST",
            &messages(SID2),
            &[("Authorization", &billing)],
            b"Body=hi",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("may not use account"));
    let resp = h
        .send(
            "POST",
            &messages(SID2),
            &[("Authorization", &notify)],
            b"Body=hi",
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(h.last_authorization(), vec![basic(SID2, TOKEN2)]);

    // [policy].deny guards every client, whatever its own rules allow.
    let resp = h
        .send(
            "GET",
            &format!("/2010-04-01/Accounts/{SID}/Keys.json"),
            &[("Authorization", &billing)],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("deny rule"));

    // Metrics name the clients; /config lists them and never a hash.
    let m = h.metrics().await;
    assert!(
        m.contains(r#"client="billing-api",decision="allow""#)
            && m.contains(r#"client="notifications",decision="allow""#),
        "{m}"
    );
    let config = h.admin_get("/config").await.text();
    assert!(config.contains("billing-api") && config.contains("notifications"));
    assert!(!config.contains(&sha256_hex(BILLING_SECRET)), "{config}");
    assert!(!config.contains(NOTIFY_SECRET), "{config}");
    for line in h.logs() {
        assert!(
            !line.contains(BILLING_SECRET) && !line.contains(NOTIFY_SECRET),
            "{line}"
        );
    }
}

#[tokio::test]
async fn failed_authentication_looks_the_same_whatever_was_wrong() {
    let h = Harness::start_with(|ctx| clients_config(ctx, &[BILLING_SECRET], false)).await;
    let attempts = [
        ("unknown_client", Some(basic("nobody", BILLING_SECRET))),
        ("wrong_secret", Some(basic("billing-api", NOTIFY_SECRET))),
        ("wrong_secret", Some(basic("billing-api", ""))),
        ("malformed", Some("Basic !!!not-base64".to_string())),
        ("malformed", Some("Bearer abc".to_string())),
        // What an SDK sends with Twilio credentials: anonymous, and anonymous is not served.
        ("missing", Some(basic(SID, "dummy"))),
        ("missing", None),
    ];
    let mut bodies = Vec::new();
    for (reason, auth) in &attempts {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let resp = h.send("POST", &messages(SID), &headers, b"Body=hi").await;
        assert_eq!(resp.twilio_error(401), 20003, "{reason}");
        assert_eq!(
            resp.header("www-authenticate"),
            Some(r#"Basic realm="twilio-sidecar""#),
            "{reason}"
        );
        bodies.push((
            *reason,
            resp.json()["message"].as_str().unwrap().to_string(),
        ));
    }
    // An unknown id and a wrong secret get the very same answer.
    assert_eq!(bodies[0].1, bodies[1].1);
    assert!(
        h.stand_in.requests().is_empty(),
        "a refused request reached Twilio"
    );
    let m = h.metrics().await;
    for (reason, n) in [
        ("unknown_client", 1),
        ("wrong_secret", 2),
        ("malformed", 2),
        ("missing", 2),
    ] {
        assert!(
            m.contains(&format!(
                "twilio_sidecar_client_auth_failures_total{{reason=\"{reason}\"}} {n}"
            )),
            "{reason}: {m}"
        );
    }
    // The id presented is never a label value.
    assert!(!m.contains("nobody"), "{m}");
}

#[tokio::test]
async fn anonymous_requests_are_served_under_the_policy_when_allowed() {
    let h = Harness::start_with(|ctx| clients_config(ctx, &[BILLING_SECRET], true)).await;
    // The SDK's own (Twilio-shaped) credentials, or none: [policy] decides.
    for headers in [vec![("Authorization", basic(SID, "dummy"))], vec![]] {
        let h_ref: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = h.send("GET", &messages(SID), &h_ref, b"").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = h.send("POST", &messages(SID), &h_ref, b"Body=x").await;
        assert_eq!(resp.twilio_error(403), 70051);
    }
    // A client's wrong secret is still refused, not taken for anonymous.
    let resp = h
        .send(
            "GET",
            &messages(SID),
            &[("Authorization", &basic("billing-api", "wrong"))],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(401), 20003);
}

/// A rotation (two hashes for a while) and a revocation under load: the other clients lose
/// nothing, the revoked one's next request is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_revocation_under_load_lose_nothing_for_the_others() {
    let h =
        Arc::new(Harness::start_with(|ctx| clients_config(ctx, &[BILLING_SECRET], false)).await);
    let config = h.dir.path().join("sidecar.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let notify = basic("notifications", NOTIFY_SECRET);
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (h, stop, failures, sent, notify) = (
                h.clone(),
                stop.clone(),
                failures.clone(),
                sent.clone(),
                notify.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let resp = h
                        .send(
                            "POST",
                            &messages(SID),
                            &[("Authorization", &notify)],
                            b"Body=x",
                        )
                        .await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    if resp.status != 200 {
                        failures.lock().unwrap().push(resp.text());
                    }
                }
            })
        })
        .collect();
    let reload_to = |text: String| {
        let (h, config) = (h.clone(), config.clone());
        async move {
            std::fs::write(&config, text).unwrap();
            let resp = post_reload(h.admin).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    };
    let billing = |secret: &str| basic("billing-api", secret);
    let ok = |resp: RawResponse| resp.status == 200;

    // Overlap: both secrets work.
    let both = original.replace(
        &format!("secret_sha256 = [{:?}]", sha256_hex(BILLING_SECRET)),
        &format!(
            "secret_sha256 = [{:?}, {:?}]",
            sha256_hex(BILLING_SECRET),
            sha256_hex(BILLING_NEXT)
        ),
    );
    assert_ne!(both, original);
    reload_to(both).await;
    for secret in [BILLING_SECRET, BILLING_NEXT] {
        assert!(ok(h
            .send(
                "POST",
                &messages(SID),
                &[("Authorization", &billing(secret))],
                b""
            )
            .await));
    }
    // The old one retired.
    let next_only = original.replace(
        &format!("secret_sha256 = [{:?}]", sha256_hex(BILLING_SECRET)),
        &format!("secret_sha256 = [{:?}]", sha256_hex(BILLING_NEXT)),
    );
    reload_to(next_only.clone()).await;
    let resp = h
        .send(
            "POST",
            &messages(SID),
            &[("Authorization", &billing(BILLING_SECRET))],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(401), 20003);
    assert!(ok(h
        .send(
            "POST",
            &messages(SID),
            &[("Authorization", &billing(BILLING_NEXT))],
            b""
        )
        .await));
    // Revoked: the table removed.
    let start = next_only.find("[[clients]]\nid = \"billing-api\"").unwrap();
    let end = next_only[start + 1..].find("[[clients]]").unwrap() + start + 1;
    let revoked = format!("{}{}", &next_only[..start], &next_only[end..]);
    reload_to(revoked).await;
    let resp = h
        .send(
            "POST",
            &messages(SID),
            &[("Authorization", &billing(BILLING_NEXT))],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(401), 20003);

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(sent.load(Ordering::SeqCst) > 50, "too little load");
}

/// An unknown id and a wrong secret take the same time: 1,000 interleaved tries each through
/// the real binary, medians within 10 % of each other.
#[tokio::test]
async fn unknown_id_and_wrong_secret_take_the_same_time() {
    let h = Harness::start_with(|ctx| clients_config(ctx, &[BILLING_SECRET, BILLING_NEXT], false))
        .await;
    let unknown = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 0\r\n\r\n",
        messages(SID),
        h.proxy,
        basic("billing-apx", BILLING_SECRET)
    );
    let wrong = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 0\r\n\r\n",
        messages(SID),
        h.proxy,
        basic("billing-api", "billing-local-secret-0123456789abcdefghik")
    );
    // One kept-alive connection, so only the request's own handling differs.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut time_one = async |req: &str| -> Duration {
        let started = Instant::now();
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
            if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if got.len() >= head_end + 4 + len {
                    assert!(head.starts_with("http/1.1 401"), "{head}");
                    return started.elapsed();
                }
            }
        }
    };
    // Warm-up, then interleave so drift on a shared machine hits both alike.
    for _ in 0..100 {
        time_one(&unknown).await;
        time_one(&wrong).await;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        a.push(time_one(&unknown).await);
        b.push(time_one(&wrong).await);
    }
    a.sort();
    b.sort();
    let (ma, mb) = (a[500].as_secs_f64(), b[500].as_secs_f64());
    eprintln!("median: unknown id {:?}, wrong secret {:?}", a[500], b[500]);
    assert!(
        (ma / mb - 1.0).abs() < 0.10,
        "medians differ by more than 10 %: unknown id {:?}, wrong secret {:?}",
        a[500],
        b[500]
    );
}

#[test]
fn check_explains_a_clients_request() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Ctx {
        dir: dir.path().to_path_buf(),
        stand_in: "127.0.0.1:9".parse().unwrap(),
    };
    std::fs::write(dir.path().join("key_sid"), KEY_SID).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let text = clients_config(&ctx, &[BILLING_SECRET], false).replace("ca_file = \"ca.pem\"\n", "");
    let config = write(dir.path(), "sidecar.toml", &text);
    let url = format!("https://api.twilio.com{}", messages(SID));
    let check = |args: &[&str]| {
        let out = sidecar_command()
            .args(["check", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(&["--client", "billing-api", "POST", &url]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("client:   billing-api") && out.contains("clients[0].allow[0]"),
        "{out}"
    );
    let (code, out) = check(&["--client", "billing-api", "POST", &url.replace(SID, SID2)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("may not use account"), "{out}");
    // Without --client: anonymous requests are not served here.
    let (code, out) = check(&["POST", &url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401 Unauthorized (code 20003)"), "{out}");
    let (code, out) = check(&["--client", "nobody", "POST", &url]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("billing-api"), "{out}");
}

#[test]
fn client_config_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[accounts]]
sid = "{SID}"
credential = {{ type = "auth_token", token = "x" }}
[policy]
anonymous = true
[[clients]]
id = "a"
secret_sha256 = ["nothex"]
allow = ["/x"]
[[clients]]
id = "a"
secret_sha256 = []
accounts = ["{SID2}"]
allow = []
[[clients]]
id = "AC0123456789abcdef0123456789abcdef"
secret_sha256 = ["{}"]
allow = ["/x"]
"#,
        sha256_hex("x")
    );
    let config = write(dir.path(), "sidecar.toml", &text);
    let out = sidecar_command()
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for needle in [
        "policy.anonymous: anonymous = true serves",
        "clients[0].secret_sha256[0]: not a SHA-256 hash",
        "clients[1].id: client \"a\" is configured twice",
        "clients[1].secret_sha256: give 1 to 4 hashes",
        "clients[1].allow: a client needs allow rules",
        &format!("clients[1].accounts[0]: account {SID2} is not configured"),
        "clients[2].id: \"AC0123456789abcdef0123456789abcdef\" is not a client id",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn client_key_prints_a_secret_and_its_hash_line() {
    let out = sidecar_command()
        .args(["client-key", "--id", "billing-api"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let secret = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    assert_eq!(secret.len(), 43, "{text}");
    assert!(
        text.contains(&format!("secret_sha256 = [\"{}\"]", sha256_hex(secret))),
        "{text}"
    );
    assert!(text.contains("id = \"billing-api\""));
}

mod no_header_sequence_authenticates_without_the_secret {
    use super::*;
    use base64::Engine;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use twilio_sidecar::config::{ClientConfig, ClientSecret};
    use twilio_sidecar::gate::clients::{secret_hash, Caller, ClientKeys};

    /// Credential-ish values made of the right id, near misses and junk — never the secret
    /// under the right id.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        let user = prop::sample::select(vec![
            "billing-api",
            "Billing-Api",
            "billing-api ",
            "",
            "billing",
            "AC0123456789abcdef0123456789abcdef",
            "notifications",
        ]);
        let secret = prop::sample::select(vec![
            "",
            "wrong",
            "billing-local-secret-0123456789abcdefghi",
            "billing-local-secret-0123456789abcdefghij ",
            " billing-local-secret-0123456789abcdefghij",
            "BILLING-LOCAL-SECRET-0123456789ABCDEFGHIJ",
        ]);
        let scheme =
            prop::sample::select(vec!["Basic ", "basic ", "BASIC  ", "Basic", "Bearer ", ""]);
        let mangle = prop::sample::select(vec![0u8, 1, 2, 3]);
        (scheme, user, secret, mangle).prop_map(|(scheme, user, secret, mangle)| {
            let mut encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            match mangle {
                1 => encoded = encoded.trim_end_matches('=').to_string(),
                2 => encoded.push('!'),
                3 => {
                    encoded =
                        base64::engine::general_purpose::URL_SAFE.encode(format!("{user}{secret}"))
                }
                _ => {}
            }
            format!("{scheme}{encoded}").into_bytes()
        })
    }

    fn header_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "authorization",
            "proxy-authorization",
            "Authorization",
            "x-authorization",
        ])
    }

    proptest! {
        #[test]
        fn never_a_client_without_its_secret(headers in prop::collection::vec((header_name(), value()), 0..4)) {
            let keys = ClientKeys::load(&[ClientConfig {
                id: "billing-api".into(),
                secret: ClientSecret::Hashes(vec![secret_hash(BILLING_SECRET.as_bytes())]),
                accounts: None,
                mode: None,
                allow: vec!["/x".into()],
                deny: vec![],
                files: vec![],
                access_tokens: None,
            }])
            .unwrap();
            let mut map = HeaderMap::new();
            for (name, v) in &headers {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
                }
            }
            let got = keys.authenticate(&map);
            prop_assert!(!matches!(got, Ok(Caller::Client(_))), "{headers:?} -> {got:?}");
        }
    }
}
