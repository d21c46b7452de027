//! One policy decision against a 100-rule policy, beside a naive baseline (a `regex::RegexSet`
//! built from the same rules, matched against `"METHOD HOST /decoded/path"`), and the whole
//! admission (route, canonical path, policy, account) for one request.
//!
//! Run: `cargo bench --bench policy`. Both sides include the canonical path parse.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use regex::RegexSet;
use twilio_sidecar::config::hosts::TWILIO_PRODUCT_HOSTS;
use twilio_sidecar::config::Config;
use twilio_sidecar::gate::policy::{Mode, Policy};
use twilio_sidecar::gate::request_path::CanonicalPath;
use twilio_sidecar::gate::route::Hosts;
use twilio_sidecar::gate::{Gate, Trace};

const SID: &str = "AC0123456789abcdef0123456789abcdef";

/// 100 rules shaped like real restricted-key permissions across several products.
fn hundred_rules() -> (Vec<String>, Vec<String>) {
    let resources = [
        "Messages",
        "Calls",
        "Recordings",
        "Conferences",
        "IncomingPhoneNumbers",
        "Queues",
        "Usage",
        "Notifications",
        "Transcriptions",
        "Applications",
        "AvailablePhoneNumbers",
        "OutgoingCallerIds",
        "Addresses",
        "Sip",
        "ShortCodes",
        "SigningKeys",
        "Tokens",
        "ConnectApps",
        "AuthorizedConnectApps",
        "Balance",
    ];
    let mut allow = Vec::new();
    for r in resources {
        allow.push(format!("GET /2010-04-01/Accounts/{{AccountSid}}/{r}.json"));
        allow.push(format!("POST /2010-04-01/Accounts/{{AccountSid}}/{r}.json"));
        allow.push(format!("GET /2010-04-01/Accounts/{{AccountSid}}/{r}/*"));
    }
    let products = [
        ("verify.twilio.com", "/v2/Services/*/Verifications*"),
        ("verify.twilio.com", "/v2/Services/*/VerificationCheck"),
        ("lookups.twilio.com", "/v2/PhoneNumbers/*"),
        ("conversations.twilio.com", "/v1/Conversations*"),
        ("messaging.twilio.com", "/v1/Services/*"),
        ("sync.twilio.com", "/v1/Services/*/Documents/*"),
        ("studio.twilio.com", "/v2/Flows/*/Executions*"),
        ("taskrouter.twilio.com", "/v1/Workspaces/*/Tasks*"),
        ("video.twilio.com", "/v1/Rooms*"),
        ("chat.twilio.com", "/v2/Services/*/Channels*"),
    ];
    for (host, path) in products {
        for m in ["GET", "POST", "DELETE"] {
            allow.push(format!("{m} {host}{path}"));
        }
    }
    let deny: Vec<String> = (0..100 - allow.len())
        .map(|i| format!("* /2010-04-01/Accounts/{{AccountSid}}/Keys{i}*"))
        .collect();
    (allow, deny)
}

/// The naive way: one anchored regex per rule over `"METHOD HOST /path"`.
fn rule_regex(rule: &str) -> String {
    let mut words: Vec<&str> = rule.split_whitespace().collect();
    let pattern = words.pop().unwrap();
    let (host, pattern) = match pattern.find('/') {
        Some(0) => (words.iter().find(|w| w.contains('.')).copied(), pattern),
        Some(i) => (Some(&pattern[..i]), &pattern[i..]),
        None => unreachable!(),
    };
    let methods = words
        .iter()
        .find(|w| !w.contains('.'))
        .filter(|m| **m != "*")
        .map_or("[A-Z]+".to_string(), |m| {
            format!("(?:{})", m.replace(',', "|"))
        });
    let host = host.map_or("[^ ]+".to_string(), regex::escape);
    let mut path = String::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{AccountSid}") {
            path.push_str(&format!("(?-i:{SID})"));
            rest = r;
        } else if rest.starts_with('{') {
            let end = rest.find('}').unwrap();
            path.push_str("[^/]+");
            rest = &rest[end + 1..];
        } else if rest == "*" {
            path.push_str(".*");
            rest = "";
        } else if let Some(r) = rest.strip_prefix('*') {
            path.push_str("[^/]*");
            rest = r;
        } else {
            let c = rest.chars().next().unwrap();
            path.push_str(&regex::escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    format!("^{methods} {host} (?i:{path})$")
}

fn bench(c: &mut Criterion) {
    let hosts = Hosts::new(TWILIO_PRODUCT_HOSTS.iter().copied()).unwrap();
    let (allow, deny) = hundred_rules();
    assert_eq!(allow.len() + deny.len(), 100);
    let policy = Policy::compile(
        Mode::Enforce,
        allow.iter().map(String::as_str),
        deny.iter().map(String::as_str),
        &hosts,
        [SID],
    )
    .unwrap();
    let api = hosts.lookup("api.twilio.com").unwrap();
    let verify = hosts.lookup("verify.twilio.com").unwrap();

    let allowed =
        format!("/2010-04-01/Accounts/{SID}/Messages/SM0123456789abcdef0123456789abcdef.json");
    let denied = format!("/2010-04-01/Accounts/{SID}/Keys/SK0123456789abcdef0123456789abcdef.json");
    let cases = [
        (
            "allowed 2010 message fetch",
            api,
            allowed.as_str(),
            http::Method::GET,
        ),
        (
            "denied 2010 key fetch",
            api,
            denied.as_str(),
            http::Method::GET,
        ),
        (
            "allowed verify create",
            verify,
            "/v2/Services/VA0123456789abcdef0123456789abcdef/Verifications",
            http::Method::POST,
        ),
        (
            "encoded lookups path, wrong host",
            api,
            "/v2/PhoneNumbers/%2B15108675310",
            http::Method::GET,
        ),
    ];
    let allow_set = RegexSet::new(allow.iter().map(|r| rule_regex(r))).unwrap();
    let deny_set = RegexSet::new(deny.iter().map(|r| rule_regex(r))).unwrap();
    let mut group = c.benchmark_group("policy decision (100 rules)");
    for (name, host, path, method) in &cases {
        let p = CanonicalPath::parse(path).unwrap();
        let trie = policy
            .decide(method, *host, p.segment_array().as_slice())
            .forward;
        let subject = format!("{method} {} {}", hosts.name(*host), p.decoded());
        let naive = allow_set.is_match(&subject) && !deny_set.is_match(&subject);
        assert_eq!(trie, naive, "baseline disagrees on {name}");

        group.bench_function(format!("trie: {name}"), |b| {
            b.iter(|| {
                let p = CanonicalPath::parse(black_box(path)).unwrap();
                black_box(policy.decide(method, *host, p.segment_array().as_slice()))
            })
        });
        group.bench_function(format!("RegexSet baseline: {name}"), |b| {
            b.iter(|| {
                let p = CanonicalPath::parse(black_box(path)).unwrap();
                let subject = format!("{method} {} {}", hosts.name(*host), p.decoded());
                black_box(allow_set.is_match(&subject) && !deny_set.is_match(&subject))
            })
        });
    }
    group.finish();

    // The whole admission as the proxy runs it, from a parsed request head.
    let mut rules = String::new();
    for r in &allow {
        rules.push_str(&format!("  {r:?},\n"));
    }
    let mut denies = String::new();
    for r in &deny {
        denies.push_str(&format!("  {r:?},\n"));
    }
    let text = format!(
        "[[accounts]]\nsid = \"{SID}\"\ncredential = {{ type = \"auth_token\", token = {{ env = \"UNUSED\" }} }}\n[policy]\nallow = [\n{rules}]\ndeny = [\n{denies}]\n"
    );
    let (config, _) = Config::parse(&text, std::path::Path::new("."), "bench").unwrap();
    let gate = Gate::build(&config).unwrap();
    let parts = Request::builder()
        .method("GET")
        .uri(&allowed)
        .header("host", "127.0.0.1:8080")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    c.bench_function(
        "admission: route + canonical path + policy + account",
        |b| {
            b.iter(|| {
                let mut trace = Trace::default();
                black_box(gate.admit(black_box(&parts), &mut trace).is_ok())
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
