//! Verifying one inbound webhook: decoding a typical 20-parameter SMS webhook's form body,
//! sorting its parameters and checking X-Twilio-Signature (HMAC-SHA1, base64, constant-time
//! compare): the worst case, where the signature matches only the second URL spelling with
//! the second of two rotation tokens, so all four HMACs run, and the usual case (one token, one
//! HMAC). The goal: at most 10 µs.
//!
//! Run: `cargo bench --bench webhooks`.

use std::hint::black_box;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use twilio_sidecar::config::PublicUrl;
use twilio_sidecar::credentials::WebhookKeys;
use twilio_sidecar::webhooks::signature::{SignedWebhook, X_TWILIO_SIGNATURE};

/// The parameters of an inbound SMS webhook as Twilio sends them.
const SMS: [(&str, &str); 20] = [
    ("ToCountry", "US"),
    ("ToState", "CA"),
    ("SmsMessageSid", "SM00000000000000000000000000000001"),
    ("NumMedia", "0"),
    ("ToCity", "SAN FRANCISCO"),
    ("FromZip", "94105"),
    ("SmsSid", "SM00000000000000000000000000000001"),
    ("FromState", "CA"),
    ("SmsStatus", "received"),
    ("FromCity", "SAN FRANCISCO"),
    ("Body", "Hello there, is my order 12345 on its way? Thanks!"),
    ("FromCountry", "US"),
    ("To", "+14155550199"),
    ("MessagingServiceSid", "MG00000000000000000000000000000001"),
    ("ToZip", "94105"),
    ("NumSegments", "1"),
    ("MessageSid", "SM00000000000000000000000000000001"),
    ("AccountSid", "AC00000000000000000000000000000001"),
    ("From", "+14155550100"),
    ("ApiVersion", "2010-04-01"),
];

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let public = PublicUrl::parse("https://hooks.example.com").unwrap();
    let target = "/twilio/sms?tenant=acme";
    let body: String = SMS
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    // Signed with the port spelled out and the newer of two tokens: every HMAC runs.
    let signed = sorted_concat(&format!("https://hooks.example.com:443{target}"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"token-new");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(
        &X_TWILIO_SIGNATURE,
        HeaderValue::from_str(&signature).unwrap(),
    );
    let keys = WebhookKeys::from_tokens(["token-old", "token-new"]);
    let method = Method::POST;

    // The benchmark is only worth running if the webhook verifies.
    SignedWebhook::read(&method, target, &headers, body.as_bytes())
        .unwrap()
        .verify(&public, &keys, "AC1")
        .unwrap();

    c.bench_function("verify a 20-parameter webhook (worst case: 4 HMACs)", |b| {
        b.iter(|| {
            let webhook = SignedWebhook::read(
                &method,
                black_box(target),
                black_box(&headers),
                black_box(body.as_bytes()),
            )
            .unwrap();
            webhook.verify(&public, &keys, "AC1").unwrap();
        })
    });

    // The usual case: one token, Twilio's usual spelling (no port): one HMAC.
    let plain = sorted_concat(&format!("https://hooks.example.com{target}"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"token");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, plain.as_bytes()));
    headers.insert(
        &X_TWILIO_SIGNATURE,
        HeaderValue::from_str(&signature).unwrap(),
    );
    let keys = WebhookKeys::from_tokens(["token"]);
    c.bench_function("verify a 20-parameter webhook (usual case: 1 HMAC)", |b| {
        b.iter(|| {
            let webhook = SignedWebhook::read(
                &method,
                black_box(target),
                black_box(&headers),
                black_box(body.as_bytes()),
            )
            .unwrap();
            webhook.verify(&public, &keys, "AC1").unwrap();
        })
    });
}

/// The URL followed by the sorted parameters, as Twilio signs a form post.
fn sorted_concat(url: &str) -> String {
    let mut params = SMS.to_vec();
    params.sort_unstable();
    let mut out = url.to_string();
    for (k, v) in params {
        out.push_str(k);
        out.push_str(v);
    }
    out
}

criterion_group!(benches, bench);
criterion_main!(benches);
