//! PKCV's cost per request: the canonical request hash for a form POST with a 1 KiB body, and
//! the RS256 signature over the validation JWT (RSA 2048, the part that runs on the blocking
//! pool).
//!
//! Run: `cargo bench --bench pkcv`.

use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use twilio_sidecar::config::{PkcvConfig, SecretSource};
use twilio_sidecar::credentials::pkcv::{request_hash, PkcvSigner};

fn bench(c: &mut Criterion) {
    let signer = PkcvSigner::load(
        &PkcvConfig {
            credential_sid: "CR00000000000000000000000000000001".into(),
            private_key: SecretSource::File(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pkcv/key-a.pk8.pem"),
            ),
        },
        "AC00000000000000000000000000000001",
        "SK00000000000000000000000000000001",
    )
    .unwrap();
    let body = format!(
        "To=%2B15558675310&From=%2B15017122661&Body={}",
        "x".repeat(980)
    );
    let authorization = b"Basic U0swMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMTpzZWNyZXQ=";
    c.bench_function("PKCV canonical request hash (1 KiB form body)", |b| {
        b.iter(|| {
            black_box(request_hash(
                "POST",
                black_box("/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json"),
                "",
                authorization,
                "api.twilio.com",
                black_box(body.as_bytes()),
            ))
        })
    });
    let rqh = request_hash(
        "POST",
        "/x",
        "",
        authorization,
        "api.twilio.com",
        body.as_bytes(),
    );
    let now = SystemTime::now();
    c.bench_function("PKCV RS256 signature (RSA 2048)", |b| {
        b.iter(|| black_box(signer.sign(black_box(&rqh), now).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
