//! PKCV through the real binary: every request for an account with `pkcv` reaches the Twilio
//! stand-in with a `Twilio-Client-Validation` JWT that verifies with the registered public
//! key and whose `rqh` is the hash of the request exactly as the stand-in received it
//! (computed here independently, from the recorded bytes); other accounts' requests carry
//! none; the key rotates by reload, a bad key is refused naming the file, and the key never
//! appears in logs, `/config` or metrics. (tests/sdk_interop.rs has twilio-python compute the
//! same `rqh` and verify the token.)

mod common;

use std::path::Path;

use base64::Engine;
use common::*;
use twilio_sidecar::dev::stand_in::Recorded;

const CR_A: &str = "CR0000000000000000000000000000000a";
const CR_B: &str = "CR0000000000000000000000000000000b";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pkcv")
            .join(name),
    )
    .unwrap()
}

/// The RSA public key (PKCS#1 DER) of a private key fixture.
fn public_key(name: &str) -> Vec<u8> {
    let pem = fixture(name);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = if pem.contains("BEGIN RSA PRIVATE KEY") {
        ring::signature::RsaKeyPair::from_der(&der)
    } else {
        ring::signature::RsaKeyPair::from_pkcs8(&der)
    }
    .unwrap();
    use ring::signature::KeyPair;
    pair.public_key().as_ref().to_vec()
}

fn config(ctx: &Ctx, extra_limits: &str) -> String {
    std::fs::write(ctx.dir.join("pkcv.pem"), fixture("key-a.pk8.pem")).unwrap();
    format!(
        r#"
{head}

[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "key_sid" }}, secret = {{ file = "secret" }} }}
pkcv = {{ credential_sid = "{CR_A}", private_key = {{ file = "pkcv.pem" }} }}

[[accounts]]
sid = "{SID2}"
credential = {{ type = "auth_token", token = {{ env = "{TOKEN2_ENV}" }} }}

[policy]
allow = ["* /2010-04-01/Accounts/{{AccountSid}}/*", "GET lookups.twilio.com /v2/PhoneNumbers/*"]

[limits]
{extra_limits}
"#,
        head = listeners_and_upstream(ctx)
    )
}

/// The JWT's header and claims, after checking its RS256 signature with `public`.
fn verified(token: &str, public: &[u8]) -> (serde_json::Value, serde_json::Value) {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(input.as_bytes(), &b64.decode(signature).unwrap())
        .expect("the validation token verifies with the registered public key");
    let (header, claims) = input.split_once('.').unwrap();
    (
        serde_json::from_slice(&b64.decode(header).unwrap()).unwrap(),
        serde_json::from_slice(&b64.decode(claims).unwrap()).unwrap(),
    )
}

fn hex_sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `rqh` for what the stand-in received, written out from Twilio's description of the
/// canonical request (independently of the sidecar's code).
fn expected_rqh(r: &Recorded) -> String {
    let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
    let mut query: Vec<&str> = query.split('&').collect();
    query.sort();
    let authorization = r.header_values("authorization").join(",");
    let host = r.host.clone().unwrap();
    let body_hash = if r.body.is_empty() {
        String::new()
    } else {
        hex_sha256(&r.body)
    };
    let canonical = [
        r.method.clone(),
        path.to_string(),
        query.join("&"),
        format!("authorization:{authorization}\nhost:{host}"),
        String::new(),
        "authorization;host".to_string(),
        body_hash,
    ]
    .join("\n");
    hex_sha256(canonical.as_bytes())
}

fn check_signed(r: &Recorded, public: &[u8], kid: &str) {
    let tokens = r.header_values("twilio-client-validation");
    assert_eq!(tokens.len(), 1, "{} {}: {tokens:?}", r.method, r.target);
    let (header, claims) = verified(&tokens[0], public);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["cty"], "twilio-pkrv;v=1");
    assert_eq!(header["kid"], kid);
    assert_eq!(claims["iss"], KEY_SID);
    assert_eq!(claims["sub"], SID);
    assert_eq!(claims["hrh"], "authorization;host");
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - nbf, 300);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(nbf <= now && now - nbf < 60, "nbf {nbf}, now {now}");
    assert_eq!(claims["rqh"], expected_rqh(r), "{} {}", r.method, r.target);
}

#[tokio::test]
async fn every_request_for_the_account_is_signed_over_what_twilio_receives() {
    let h = Harness::start_with(|ctx| config(ctx, "")).await;
    let public = public_key("key-a.pk8.pem");
    let base = format!("/2010-04-01/Accounts/{SID}");
    let form = "To=%2B15558675310&From=%2B15017122661&Body=Hi+there%21";
    let cases: Vec<RequestCase> = vec![
        (
            "GET",
            format!("{base}/Messages.json?PageSize=5&To=%2B1555&DateSent%3E=2024-01-01"),
            vec![],
            b"",
        ),
        (
            "POST",
            format!("{base}/Messages.json"),
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        ),
        (
            "POST",
            format!("{base}/Calls/CA00000000000000000000000000000001.json"),
            vec![("Content-Type", "application/json")],
            br#"{"Status":"completed"}"#,
        ),
        (
            "DELETE",
            format!("{base}/Messages/SM00000000000000000000000000000001.json"),
            vec![],
            b"",
        ),
        (
            "GET",
            "/lookups.twilio.com/v2/PhoneNumbers/+15558675310?Fields=line_type_intelligence"
                .to_string(),
            vec![],
            b"",
        ),
    ];
    for (method, target, headers, body) in &cases {
        let resp = h.send(method, target, headers, body).await;
        assert_eq!(resp.status, 200, "{method} {target}: {}", resp.text());
        let got = h.stand_in.requests();
        let r = got.last().unwrap();
        assert_eq!(r.body.as_ref(), *body, "the body is forwarded as received");
        check_signed(r, &public, CR_A);
    }

    // The other account is not PKCV: no token.
    let resp = h
        .send(
            "GET",
            &format!("/2010-04-01/Accounts/{SID2}/Messages.json"),
            &[],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(h
        .stand_in
        .requests()
        .last()
        .unwrap()
        .header_values("twilio-client-validation")
        .is_empty());

    // An app's own token is replaced, never forwarded beside the sidecar's.
    let resp = h
        .send(
            "GET",
            &format!("{base}/Messages.json"),
            &[("Twilio-Client-Validation", "forged.jwt.value")],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200);
    check_signed(h.stand_in.requests().last().unwrap(), &public, CR_A);

    let metrics = h.metrics().await;
    assert!(
        metrics.contains(&format!(
            "twilio_sidecar_pkcv_signatures_total{{account=\"{SID}\",result=\"signed\"}} 6"
        )),
        "{metrics}"
    );
    // The key appears nowhere.
    let key_line = fixture("key-a.pk8.pem").lines().nth(1).unwrap().to_string();
    let config_view = h.admin_get("/config").await.text();
    assert!(
        config_view.contains("pkcv.pem") && config_view.contains(CR_A),
        "{config_view}"
    );
    for text in [config_view, metrics, h.logs().join("\n")] {
        assert!(!text.contains(&key_line[..40]));
    }
}

#[tokio::test]
async fn the_key_rotates_by_reload_and_a_bad_key_is_refused_naming_it() {
    let h = Harness::start_with(|ctx| config(ctx, "")).await;
    let target = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    assert_eq!(h.send("GET", &target, &[], b"").await.status, 200);
    check_signed(
        h.stand_in.requests().last().unwrap(),
        &public_key("key-a.pk8.pem"),
        CR_A,
    );

    // A new key pair (PKCS#1 this time) registered as a new credential.
    let dir = h.dir.path();
    std::fs::write(dir.join("pkcv.pem"), fixture("key-b.pkcs1.pem")).unwrap();
    let config_path = dir.join("sidecar.toml");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(CR_A, CR_B);
    std::fs::write(&config_path, &text).unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    assert_eq!(h.send("GET", &target, &[], b"").await.status, 200);
    check_signed(
        h.stand_in.requests().last().unwrap(),
        &public_key("key-b.pkcs1.pem"),
        CR_B,
    );

    // A key Twilio would not accept: the reload is refused, naming the file, and the
    // current key keeps signing.
    std::fs::write(dir.join("pkcv.pem"), fixture("small-1024.pem")).unwrap();
    let resp = post_reload(h.admin).await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert!(
        resp.text().contains("pkcv.pem") && resp.text().contains("RSA 2048"),
        "{}",
        resp.text()
    );
    assert_eq!(h.send("GET", &target, &[], b"").await.status, 200);
    check_signed(
        h.stand_in.requests().last().unwrap(),
        &public_key("key-b.pkcs1.pem"),
        CR_B,
    );
    std::fs::write(dir.join("pkcv.pem"), fixture("ec-p256.pem")).unwrap();
    let resp = post_reload(h.admin).await;
    assert_eq!(resp.status, 422);
    assert!(resp.text().contains("not an RSA key"), "{}", resp.text());
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_before_signing() {
    let h = Harness::start_with(|ctx| config(ctx, "max_request_body = 1024")).await;
    let target = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let chunk = "a".repeat(800);
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        h.proxy,
        chunk.len(),
        chunk.len()
    );
    let resp = h.raw(&request).await;
    assert_eq!(resp.twilio_error(413), 79413);
    assert!(h.stand_in.requests().is_empty());
}

#[tokio::test]
async fn a_429_retry_is_signed_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let h = Harness::start_with(|ctx| config(ctx, "")).await;
    let seen = AtomicUsize::new(0);
    h.stand_in.set_responder(move |r: &Recorded| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            twilio_sidecar::dev::stand_in::Reply {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                headers: vec![("retry-after".into(), "1".into())],
                body: bytes::Bytes::from_static(b"{\"code\": 20429}"),
                delay: std::time::Duration::ZERO,
            }
        } else {
            twilio_sidecar::dev::stand_in::echo(r)
        }
    });
    let body = b"To=%2B15558675310&Body=again";
    let resp = h
        .send(
            "POST",
            &format!("/2010-04-01/Accounts/{SID}/Messages.json"),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = h.stand_in.requests();
    assert_eq!(got.len(), 2);
    let public = public_key("key-a.pk8.pem");
    for r in &got {
        check_signed(r, &public, CR_A);
    }
    // A new token for the retry, a second later: not the first one sent again.
    let tokens: Vec<String> = got
        .iter()
        .map(|r| r.header_values("twilio-client-validation")[0].clone())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
}
