//! Client authentication per request: the Basic credential decoded, its secret hashed
//! (SHA-256) and compared in constant time against every client's keys — here 20 clients with
//! two hashes each, the worst case being any — beside the request with no clients configured.
//!
//! Run: `cargo bench --bench clients`. The goal: at most 1 µs per request.

use std::hint::black_box;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use twilio_sidecar::config::{ClientConfig, ClientSecret};
use twilio_sidecar::gate::clients::{secret_hash, ClientKeys};

fn bench(c: &mut Criterion) {
    let clients: Vec<ClientConfig> = (0..20)
        .map(|i| ClientConfig {
            id: format!("app-{i:02}"),
            secret: ClientSecret::Hashes(vec![
                secret_hash(format!("old-secret-of-app-{i:02}-0123456789abcdef").as_bytes()),
                secret_hash(format!("new-secret-of-app-{i:02}-0123456789abcdef").as_bytes()),
            ]),
            accounts: None,
            mode: None,
            allow: vec!["/x".into()],
            deny: vec![],
            files: vec![],
            access_tokens: None,
        })
        .collect();
    let keys = ClientKeys::load(&clients).unwrap();
    let header = |user: &str, secret: &str| {
        let mut h = HeaderMap::new();
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {b}")).unwrap(),
        );
        h
    };
    // A 43-character secret, as `client-key` makes.
    let valid = header("app-17", "new-secret-of-app-17-0123456789abcdef");
    let wrong = header("app-17", "new-secret-of-app-17-0123456789abcdeX");
    c.bench_function("client auth: 20 clients, valid key", |b| {
        b.iter(|| black_box(keys.authenticate(black_box(&valid)).is_ok()))
    });
    c.bench_function("client auth: 20 clients, wrong secret", |b| {
        b.iter(|| black_box(keys.authenticate(black_box(&wrong)).is_ok()))
    });
    let none = ClientKeys::load(&[]).unwrap();
    c.bench_function("client auth: no clients configured", |b| {
        b.iter(|| black_box(none.any()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
