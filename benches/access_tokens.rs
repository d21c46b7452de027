//! Minting one Access Token with voice, video and chat grants: the policy checks, the claims'
//! JSON, HMAC-SHA256 and base64url. The goal: at most 20 µs.
//!
//! Run: `cargo bench --bench access_tokens`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use secrecy::SecretString;
use twilio_sidecar::config::{AccessTokenPolicy, VoiceTokenPolicy};
use twilio_sidecar::credentials::access_token::{mint, Signer, TokenRequest};

fn bench(c: &mut Criterion) {
    let policy = AccessTokenPolicy {
        account: None,
        max_ttl: Duration::from_secs(3600),
        identities: vec!["user-*".into(), "agent-*".into()],
        voice: Some(VoiceTokenPolicy {
            outgoing_application_sids: vec!["AP00000000000000000000000000000001".into()],
            incoming: true,
        }),
        video: Some(vec!["room-*".into()]),
        chat: Some(vec!["IS00000000000000000000000000000001".into()]),
        sync: None,
    };
    let signer = Signer {
        key_sid: "SK00000000000000000000000000000001".into(),
        account_sid: "AC00000000000000000000000000000001".into(),
        secret: SecretString::from("an-api-key-secret-of-32-characters".to_string()),
    };
    let request: TokenRequest = serde_json::from_str(
        r#"{"identity": "user-12345", "ttl": 3600, "grants": {"voice": {"outgoing_application_sid": "AP00000000000000000000000000000001", "incoming_allow": true}, "video": {"room": "room-42"}, "chat": {"service_sid": "IS00000000000000000000000000000001"}}}"#,
    )
    .unwrap();
    let now = SystemTime::now();
    c.bench_function("mint an Access Token (voice, video, chat)", |b| {
        b.iter(|| black_box(mint(&policy, black_box(&request), &signer, now).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
