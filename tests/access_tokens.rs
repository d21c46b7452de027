//! Access Tokens minted by the real binary at `POST /_sidecar/access-tokens`: signed with the
//! account's current API key secret, refused outside the policy with a reason, a client's own
//! table in place of the global one, never forwarded, never logged. (The comparison with the
//! official SDKs' own AccessToken is in tests/sdk_interop.rs.)

mod common;

use base64::Engine;
use common::*;

const APP: &str = "AP00000000000000000000000000000001";
const CHAT: &str = "IS00000000000000000000000000000001";

fn config(ctx: &Ctx) -> String {
    let hash: String = twilio_sidecar::gate::clients::secret_hash(b"kiosk-local-secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    standard_config(
        ctx,
        "",
        &format!(
            r#"
[policy]
anonymous = true
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json"]

[access_tokens]
max_ttl = "1h"
identities = ["user-*"]
voice = {{ outgoing_application_sids = ["{APP}"], incoming = true }}
video = {{ rooms = ["room-*"] }}
chat = {{ service_sids = ["{CHAT}"] }}

[[clients]]
id = "kiosk"
secret_sha256 = ["{hash}"]
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json"]
access_tokens = {{ max_ttl = "5m", identities = ["kiosk-*"], video = {{ rooms = ["lobby"] }} }}
"#
        ),
    )
}

fn decode(token: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    (
        serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap(),
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap(),
        b64.decode(parts[2]).unwrap(),
    )
}

fn verifies_with(token: &str, secret: &str) -> bool {
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    ring::hmac::verify(&key, signing_input.as_bytes(), &sig).is_ok()
}

async fn ask(h: &Harness, auth: Option<&str>, body: &str) -> RawResponse {
    let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
    h.send("POST", "/_sidecar/access-tokens", &headers, body.as_bytes())
        .await
}

#[tokio::test]
async fn tokens_are_minted_signed_and_shaped_like_the_sdks() {
    let h = Harness::start_with(config).await;
    let resp = ask(
        &h,
        None,
        &format!(
            r#"{{"identity": "user-123", "ttl": 600, "grants": {{"voice": {{"outgoing_application_sid": "{APP}", "incoming_allow": true}}, "video": {{"room": "room-1"}}, "chat": {{"service_sid": "{CHAT}"}}}}}}"#
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let v = resp.json();
    assert_eq!(v["identity"], "user-123");
    let token = v["token"].as_str().unwrap();
    assert!(
        verifies_with(token, SECRET),
        "not signed with the API key secret"
    );
    let (header, claims, _) = decode(token);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["cty"], "twilio-fpa;v=1");
    assert_eq!(claims["iss"], KEY_SID);
    assert_eq!(claims["sub"], SID);
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64(), Some(iat));
    assert_eq!(claims["exp"].as_u64(), Some(iat + 600));
    assert_eq!(claims["jti"], format!("{KEY_SID}-{iat}"));
    assert_eq!(
        claims["grants"],
        serde_json::json!({
            "identity": "user-123",
            "voice": {"incoming": {"allow": true}, "outgoing": {"application_sid": APP}},
            "video": {"room": "room-1"},
            "chat": {"service_sid": CHAT},
        })
    );
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // Minted here: Twilio never saw it.
    assert!(h.stand_in.requests().is_empty());
    // Never in the logs or the metrics; the identity is in the access log (written just
    // after the response, so waited for).
    let logs = h.logs_after("\"identity\":\"user-123\"").await;
    for line in &logs {
        assert!(!line.contains(token), "{line}");
    }
    assert!(logs.iter().any(|l| l.contains("\"identity\":\"user-123\"")));
    let m = h.metrics().await;
    assert!(!m.contains(token));
    assert!(
        m.contains(r#"twilio_sidecar_access_tokens_total{reason="-",result="issued"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"twilio_sidecar_access_token_grants_total{grant="voice"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn requests_outside_the_policy_are_refused_naming_what() {
    let h = Harness::start_with(config).await;
    for (body, needle) in [
        (r#"{"identity": "user-1", "ttl": 7200}"#.to_string(), "ttl"),
        (r#"{"identity": "admin"}"#.to_string(), "identity"),
        (
            r#"{"identity": "user-1", "grants": {"voice": {"outgoing_application_sid": "AP99999999999999999999999999999999"}}}"#.to_string(),
            "outgoing application",
        ),
        (r#"{"identity": "user-1", "grants": {"video": {"room": "boardroom"}}}"#.to_string(), "room"),
        (r#"{"identity": "user-1", "grants": {"chat": {"service_sid": "IS99999999999999999999999999999999"}}}"#.to_string(), "service"),
        (format!(r#"{{"identity": "user-1", "grants": {{"sync": {{"service_sid": "{CHAT}"}}}}}}"#), "no sync grant"),
    ] {
        let resp = ask(&h, None, &body).await;
        assert_eq!(resp.twilio_error(403), 70051, "{body}");
        let message = resp.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let resp = ask(&h, None, "not json").await;
    assert_eq!(resp.twilio_error(400), 79420);
    let resp = ask(&h, None, r#"{"identity": "user-1", "grantz": {}}"#).await;
    assert_eq!(resp.twilio_error(400), 79420);
    let resp = h.send("GET", "/_sidecar/access-tokens", &[], b"").await;
    assert_eq!(resp.twilio_error(405), 79405);
    // The reserved prefix is never routed to Twilio, whatever follows it.
    let resp = h.send("GET", "/_sidecar/anything", &[], b"").await;
    assert_eq!(resp.twilio_error(404), 79406);
    assert!(h.stand_in.requests().is_empty());
    let m = h.metrics().await;
    for reason in [
        "ttl",
        "identity",
        "voice",
        "video",
        "chat",
        "sync",
        "bad_request",
        "method",
    ] {
        assert!(
            m.contains(&format!(
                r#"access_tokens_total{{reason="{reason}",result="refused"}}"#
            )),
            "{reason}: {m}"
        );
    }
}

#[tokio::test]
async fn a_clients_own_table_replaces_the_global_one() {
    let h = Harness::start_with(config).await;
    let kiosk = basic("kiosk", "kiosk-local-secret");
    let resp = ask(
        &h,
        Some(&kiosk),
        r#"{"identity": "kiosk-3", "grants": {"video": {"room": "lobby"}}}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (_, claims, _) = decode(resp.json()["token"].as_str().unwrap());
    // Its max_ttl (5 min) is the default lifetime.
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    // The global identities and grants do not apply to it.
    let resp = ask(&h, Some(&kiosk), r#"{"identity": "user-1"}"#).await;
    assert_eq!(resp.twilio_error(403), 70051);
    let resp = ask(
        &h,
        Some(&kiosk),
        r#"{"identity": "kiosk-3", "grants": {"video": {"room": "room-1"}}}"#,
    )
    .await;
    assert_eq!(resp.twilio_error(403), 70051);
}

#[tokio::test]
async fn without_a_table_the_endpoint_is_not_there() {
    let h = Harness::start().await;
    let resp = ask(&h, None, r#"{"identity": "user-1"}"#).await;
    assert_eq!(resp.twilio_error(404), 79406);
    assert!(h.stand_in.requests().is_empty());
}

/// After the API key pair rotates, new tokens are signed with the new secret.
#[tokio::test]
async fn new_tokens_use_the_rotated_key() {
    let h = Harness::start_with(config).await;
    let token = |resp: RawResponse| resp.json()["token"].as_str().unwrap().to_string();
    let first = token(ask(&h, None, r#"{"identity": "user-1"}"#).await);
    assert!(verifies_with(&first, SECRET));
    let new_sid = "SKffffffffffffffffffffffffffffffff";
    std::fs::write(h.dir.path().join("key_sid"), new_sid).unwrap();
    std::fs::write(h.dir.path().join("secret"), "rotated-secret").unwrap();
    assert_eq!(post_reload(h.admin).await.status, 200);
    let second = token(ask(&h, None, r#"{"identity": "user-1"}"#).await);
    assert!(verifies_with(&second, "rotated-secret"));
    assert!(!verifies_with(&second, SECRET));
    assert_eq!(decode(&second).1["iss"], new_sid);
}
