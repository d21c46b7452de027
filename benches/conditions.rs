//! Parameter conditions: reading a 1 KiB form body's parameters (strict decoding) and deciding
//! a rule with conditions on them — the work a conditional rule adds to a request. The goal:
//! at most 2 µs. Unconditioned rules never read parameters (`cargo bench --bench policy`).
//!
//! Run: `cargo bench --bench conditions`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderMap, HeaderValue, Method};
use twilio_sidecar::config::RuleSpec;
use twilio_sidecar::gate::params::{BodyView, Params};
use twilio_sidecar::gate::policy::{Mode, Policy, Verdict};
use twilio_sidecar::gate::request_path::CanonicalPath;
use twilio_sidecar::gate::route::Hosts;

const SID: &str = "AC00000000000000000000000000000001";

fn bench(c: &mut Criterion) {
    let hosts = Hosts::new(["api.twilio.com"].into_iter()).unwrap();
    let spec = |rule: &str, params: &[(&str, &[&str])]| RuleSpec {
        rule: rule.into(),
        params: params
            .iter()
            .map(|(n, g)| (n.to_string(), g.iter().map(|s| s.to_string()).collect()))
            .collect(),
    };
    let msgs = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json";
    let policy = Policy::compile_specs(
        Mode::Enforce,
        &[spec(
            msgs,
            &[
                ("To", &["+1*", "+44*", "+33*", "+49*"]),
                ("MessagingServiceSid", &["MG*"]),
                ("From", &[""]),
                (
                    "StatusCallback",
                    &["", "https://hooks.example.com/twilio/*"],
                ),
            ],
        )],
        &[spec(msgs, &[("To", &["+1900*", "+1976*", "+44870*"])])],
        &hosts,
        [SID],
    )
    .unwrap();
    // A typical SDK message body, padded to 1 KiB with the message text.
    let head = "To=%2B15558675310&MessagingServiceSid=MG00000000000000000000000000000001&StatusCallback=https%3A%2F%2Fhooks.example.com%2Ftwilio%2Fstatus&Body=";
    let body = format!(
        "{head}{}",
        "Hello+there%2C+your+code+is+123456.+".repeat(26)
    )[..1024]
        .to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let canonical = CanonicalPath::parse(&path).unwrap();
    let segments = canonical.segment_array();
    let api = hosts.lookup("api.twilio.com").unwrap();
    let decide = || {
        let params = Params::read(
            None,
            black_box(&headers),
            BodyView::Bytes(black_box(body.as_bytes())),
        )
        .unwrap();
        policy.decide_with(&Method::POST, api, segments.as_slice(), &params)
    };
    assert_eq!(decide().verdict, Verdict::Allow { rule: 0 });
    c.bench_function("conditions: read a 1 KiB form body and decide", |b| {
        b.iter(|| black_box(decide()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
