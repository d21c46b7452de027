//! Inbound webhooks through the real binary's `[webhooks]` listener, to a real app on
//! loopback: verified ones arrive byte for byte with `X-Twilio-Sidecar-Verified`, and the
//! app's TwiML goes back unchanged; tampered, replayed, unsigned, wrongly-signed, oversized
//! and malformed ones are refused in Twilio's shape, never forwarded, counted and logged
//! without body or signature. Tokens rotate by reload. The signatures here are computed with
//! `ring` following Twilio's published algorithm (and checked against its published vector in
//! the unit tests); tests/sdk_interop.rs sends signatures computed by the official SDKs.

mod common;

use base64::Engine;
use common::webhook_app::*;
use common::*;

/// `X-Twilio-Signature` for `url` and form `params` (sorted, de-duplicated), as Twilio signs.
fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, data.as_bytes()))
}

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn start(app: &WebhookApp, extra: &str) -> Harness {
    let app = app.addr;
    let extra = extra.to_string();
    let h = Harness::start_with(move |ctx| webhook_config(ctx, app, &extra)).await;
    assert!(h.webhooks.is_some(), "no webhook listener: {:?}", h.logs());
    h
}

fn sms(account: &str) -> Vec<(&str, &str)> {
    vec![
        ("AccountSid", account),
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("Body", "Hello & welcome, naïve café +1"),
        ("NumMedia", "0"),
    ]
}

#[tokio::test]
async fn a_verified_webhook_reaches_the_app_byte_for_byte_and_twiml_comes_back() {
    let app = WebhookApp::start().await;
    let h = start(&app, "").await;
    let params = sms(SID);
    let body = form(&params);
    let target = "/twilio/sms?tenant=a%20b&x=1";
    let signature = sign(TOKEN_A, &format!("{PUBLIC}{target}"), &params);
    let resp = deliver(
        &h,
        "POST",
        target,
        &[
            ("Content-Type", FORM),
            ("X-Twilio-Signature", &signature),
            ("I-Twilio-Idempotency-Token", "abc"),
            // A forged "already verified" header must not survive.
            ("X-Twilio-Sidecar-Verified", "ACforged"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "drop me"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), TWIML);
    assert_eq!(resp.header("content-type"), Some("text/xml"));
    assert_eq!(resp.header("x-app"), Some("yes"));

    let got = app.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.line(), format!("POST {target} HTTP/1.1"));
    assert_eq!(
        r.body,
        body.as_bytes(),
        "the app must see exactly Twilio's bytes"
    );
    assert_eq!(r.header_values("x-twilio-sidecar-verified"), [SID]);
    assert_eq!(r.header_values("x-twilio-signature"), [signature.as_str()]);
    assert_eq!(r.header_values("i-twilio-idempotency-token"), ["abc"]);
    assert_eq!(r.header_values("host"), ["hooks.example.com"]);
    assert!(r.header_values("x-hop").is_empty(), "{}", r.head);

    let metrics = h.metrics().await;
    assert!(
        metrics.contains(&format!(
            "twilio_sidecar_webhooks_total{{account=\"{SID}\",result=\"forwarded\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn get_json_with_body_hash_the_port_spelling_and_subaccounts_verify() {
    let app = WebhookApp::start().await;
    let h = start(&app, "").await;

    // GET: the URL alone is signed (parameters are in it).
    let target = format!("/voice/status?AccountSid={SID2}&CallStatus=completed");
    let sig = sign(TOKEN_B, &format!("{PUBLIC}{target}"), &[]);
    let resp = deliver(&h, "GET", &target, &[("X-Twilio-Signature", &sig)], b"").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The subaccount named by AccountSid was verified with its own token.
    assert_eq!(
        app.requests()
            .last()
            .unwrap()
            .header_values("x-twilio-sidecar-verified"),
        [SID2]
    );

    // Signed with the default port spelled out: accepted too, as the SDKs accept it.
    let target = "/voice/answer";
    let params = sms(SID);
    let sig = sign(
        TOKEN_A,
        &format!("https://hooks.example.com:443{target}"),
        &params,
    );
    let resp = deliver_form(&h, target, &sig, &form(&params)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // JSON: bodySHA256 in the signed URL ties the body to the signature.
    let json = br#"{"AccountSid":"AC00000000000000000000000000000001","event":"delivered"}"#;
    let hash: String = ring::digest::digest(&ring::digest::SHA256, json)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let target = format!("/events?bodySHA256={hash}");
    let sig = sign(TOKEN_A, &format!("{PUBLIC}{target}"), &[]);
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Twilio-Signature", sig.as_str()),
    ];
    let resp = deliver(&h, "POST", &target, &headers, json).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(app.requests().last().unwrap().body, json);
    let tampered = br#"{"AccountSid":"AC00000000000000000000000000000001","event":"failed!!!"}"#;
    let resp = deliver(&h, "POST", &target, &headers, tampered).await;
    assert_eq!(resp.twilio_error(403), 79600);
    assert!(resp.text().contains("bodySHA256"), "{}", resp.text());
    assert_eq!(app.requests().len(), 3);
}

#[tokio::test]
async fn forgeries_are_refused_never_forwarded_counted_and_logged_without_secrets() {
    let app = WebhookApp::start().await;
    let h = start(&app, "").await;
    let params = sms(SID);
    let body = form(&params);
    let target = "/twilio/sms?x=1";
    let good = sign(TOKEN_A, &format!("{PUBLIC}{target}"), &params);
    let form_headers = |sig: &str| {
        vec![
            ("Content-Type", FORM.to_string()),
            ("X-Twilio-Signature", sig.to_string()),
        ]
    };
    let send = |target: &'static str, headers: Vec<(&'static str, String)>, body: String| {
        let h = &h;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            deliver(h, "POST", target, &headers, body.as_bytes()).await
        }
    };

    let cases: Vec<(&str, RawResponse, u64)> = vec![
        (
            "tampered parameter",
            send(
                target,
                form_headers(&good),
                body.replace("NumMedia=0", "NumMedia=1"),
            )
            .await,
            79600,
        ),
        (
            "added parameter",
            send(
                target,
                form_headers(&good),
                format!("{body}&To=%2B19005550000"),
            )
            .await,
            79600,
        ),
        (
            "tampered query",
            send("/twilio/sms?x=2", form_headers(&good), body.clone()).await,
            79600,
        ),
        (
            "replayed on another URL",
            send("/twilio/voice?x=1", form_headers(&good), body.clone()).await,
            79600,
        ),
        (
            "missing signature",
            send(
                target,
                vec![("Content-Type", FORM.to_string())],
                body.clone(),
            )
            .await,
            79600,
        ),
        (
            // Signed with account two's token while naming account one.
            "wrong account",
            send(
                target,
                form_headers(&sign(TOKEN_B, &format!("{PUBLIC}{target}"), &params)),
                body.clone(),
            )
            .await,
            79600,
        ),
        (
            "a body the signature does not cover",
            send(
                target,
                vec![
                    ("Content-Type", "text/plain".to_string()),
                    (
                        "X-Twilio-Signature",
                        sign(TOKEN_A, &format!("{PUBLIC}{target}"), &[]),
                    ),
                ],
                "anything at all".to_string(),
            )
            .await,
            79602,
        ),
    ];
    for (what, resp, code) in &cases {
        assert_eq!(resp.twilio_error(403), *code, "{what}: {}", resp.text());
    }
    let resp = send(target, form_headers(&good), "Body=%zz".to_string()).await;
    assert_eq!(resp.twilio_error(400), 79610);
    assert!(
        app.requests().is_empty(),
        "a refused webhook reached the app"
    );

    // Still serving, and the genuine one goes through.
    let resp = send(target, form_headers(&good), body.clone()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let metrics = h.metrics().await;
    for (reason, n) in [
        ("invalid_signature", 5),
        ("missing_signature", 1),
        ("unverifiable_body", 1),
        ("malformed", 1),
    ] {
        let count = metrics
            .lines()
            .filter(|l| {
                l.starts_with("twilio_sidecar_webhooks_total{")
                    && l.contains(&format!("result=\"{reason}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
        assert_eq!(count, n, "{reason}: {metrics}");
    }
    let logs = h.logs_after("webhook refused").await.join("\n");
    assert!(logs.contains("webhook refused"), "{logs}");
    for secret in [good.as_str(), "welcome", TOKEN_A, TOKEN_B, "x=1"] {
        assert!(!logs.contains(secret), "the log holds {secret:?}:\n{logs}");
    }
    assert!(!metrics.contains(TOKEN_A) && !metrics.contains(&good));
    let config = h.admin_get("/config").await.text();
    assert!(
        !config.contains(TOKEN_A) && !config.contains(TOKEN_B),
        "{config}"
    );
    assert!(config.contains("token-a"), "{config}");
}

#[tokio::test]
async fn tokens_rotate_by_reload_with_both_accepted_in_between() {
    let app = WebhookApp::start().await;
    let h = start(&app, "").await;
    let params = sms(SID);
    let body = form(&params);
    let target = "/sms";
    let signed_by = |token: &str| sign(token, &format!("{PUBLIC}{target}"), &params);
    let send = |sig: String| {
        let (h, body) = (&h, body.clone());
        async move { deliver_form(h, target, &sig, &body).await }
    };
    assert_eq!(send(signed_by(TOKEN_A)).await.status, 200);
    assert_eq!(send(signed_by(TOKEN_A_NEXT)).await.twilio_error(403), 79600);

    // Rotation: both tokens listed.
    std::fs::write(h.dir.path().join("token-a-next"), TOKEN_A_NEXT).unwrap();
    let config_path = h.dir.path().join("sidecar.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let both = text.replace(
        r#"webhook_token = { file = "token-a" }"#,
        r#"webhook_token = [{ file = "token-a" }, { file = "token-a-next" }]"#,
    );
    std::fs::write(&config_path, &both).unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    assert_eq!(send(signed_by(TOKEN_A)).await.status, 200);
    assert_eq!(send(signed_by(TOKEN_A_NEXT)).await.status, 200);

    // The old token retired.
    let next_only = text.replace(
        r#"webhook_token = { file = "token-a" }"#,
        r#"webhook_token = { file = "token-a-next" }"#,
    );
    std::fs::write(&config_path, next_only).unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    assert_eq!(send(signed_by(TOKEN_A)).await.twilio_error(403), 79600);
    assert_eq!(send(signed_by(TOKEN_A_NEXT)).await.status, 200);
}

#[tokio::test]
async fn bounded_too_large_app_down_slow_and_overloaded() {
    let app = WebhookApp::start().await;
    let h = start(
        &app,
        "max_body = \"1KiB\"\ntimeout = \"1s\"\nmax_concurrent = 1",
    )
    .await;
    let long = "x".repeat(2000);
    let big: Vec<(&str, &str)> = vec![("Body", &long)];
    let sig = sign(TOKEN_A, &format!("{PUBLIC}/sms"), &big);
    let resp = deliver_form(&h, "/sms", &sig, &form(&big)).await;
    assert_eq!(resp.twilio_error(413), 79613);

    // Slow app: 504 after webhooks.timeout; meanwhile a second webhook is shed (max 1).
    let params = sms(SID);
    let slow_sig = sign(TOKEN_A, &format!("{PUBLIC}/slow"), &params);
    let body = form(&params);
    let slow_headers = [
        ("Content-Type", FORM),
        ("X-Twilio-Signature", slow_sig.as_str()),
    ];
    let slow = deliver(&h, "POST", "/slow", &slow_headers, body.as_bytes());
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let sig = sign(TOKEN_A, &format!("{PUBLIC}/sms"), &params);
        deliver_form(&h, "/sms", &sig, &body).await
    };
    let (slow, second) = tokio::join!(slow, second);
    assert_eq!(slow.twilio_error(504), 79654);
    assert_eq!(second.twilio_error(503), 79629);
    assert_eq!(second.header("retry-after"), Some("1"));

    // App down: 502 to Twilio, and the sidecar stays ready (its own job is unaffected).
    let app_addr = app.addr;
    drop(app);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let sig = sign(TOKEN_A, &format!("{PUBLIC}/sms"), &params);
    let resp = deliver_form(&h, "/sms", &sig, &body).await;
    assert_eq!(resp.twilio_error(502), 79650);
    assert_eq!(h.admin_get("/readyz").await.status, 200);

    // Back up on the same address: delivered again.
    let app = WebhookApp::start_on(app_addr).await;
    let resp = deliver_form(&h, "/sms", &sig, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(app.requests().len(), 1);
}
