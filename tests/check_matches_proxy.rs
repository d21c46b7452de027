//! `twilio-sidecar check` says what the proxy does: for random policies and random requests
//! (methods, hosts, request-target forms, tricky path segments), the decision and code `check`
//! reports equal what the running binary answers for the same request.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;

/// Rule pieces the generated policies are made of.
const PATTERNS: &[&str] = &[
    "/2010-04-01/Accounts/{AccountSid}/Messages.json",
    "/2010-04-01/Accounts/{AccountSid}/Messages*",
    "/2010-04-01/Accounts/*/Recordings.json",
    "/2010-04-01/Accounts/{AccountSid}/*",
    "/2010-04-01/Accounts/{AccountSid}/Keys*",
    "verify.twilio.com /v2/Services/*/Verifications",
    "/v2/Services/{ServiceSid}/*",
    "lookups.twilio.com /v2/PhoneNumbers/*",
];
const METHODS: &[&str] = &["*", "GET", "POST", "GET,POST", "DELETE"];

/// Path segments the generated requests are made of, awkward ones included.
const SEGMENTS: &[&str] = &[
    "2010-04-01",
    "Accounts",
    SID,
    SID2,
    "AC99999999999999999999999999999999",
    "Messages.json",
    "Messages",
    "SM1",
    "Keys.json",
    "Recordings.json",
    "v2",
    "Services",
    "VA1",
    "Verifications",
    "PhoneNumbers",
    "%2B15005550006",
    "..",
    ".",
    "a%2Fb",
    "a;b",
    "%41ccounts",
    "",
];

#[derive(Debug, Clone)]
enum Form {
    /// `GET /path` with the sidecar's own `Host`.
    Origin,
    /// `GET http://host/path`, as an HTTP proxy client sends it.
    Absolute(&'static str),
    /// `GET /verify.twilio.com/path` with the sidecar's own `Host`.
    Prefix(&'static str),
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    form: Form,
    path: String,
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "POST", "DELETE", "PUT", "get"]);
    let host = prop::sample::select(vec![
        "api.twilio.com",
        "verify.twilio.com",
        "lookups.twilio.com",
        "evil.example.com",
        "api.twilio.com.evil.example",
    ]);
    let form = prop_oneof![
        Just(Form::Origin),
        host.clone().prop_map(Form::Absolute),
        host.prop_map(Form::Prefix),
    ];
    let path = prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 1..6)
        .prop_map(|segments| format!("/{}", segments.join("/")));
    (method, form, path).prop_map(|(method, form, path)| Req { method, form, path })
}

fn policy() -> impl Strategy<Value = String> {
    let rule = (
        prop::sample::select(METHODS.to_vec()),
        prop::sample::select(PATTERNS.to_vec()),
    )
        .prop_map(|(m, p)| format!("{m} {p}"));
    (
        prop::bool::ANY,
        prop::collection::vec(rule.clone(), 1..5),
        prop::collection::vec(rule, 0..2),
    )
        .prop_map(|(audit, allow, deny)| {
            let list = |rules: Vec<String>| {
                rules
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "[policy]\nmode = \"{}\"\nallow = [{}]\ndeny = [{}]\n",
                if audit { "audit" } else { "enforce" },
                list(allow),
                list(deny)
            )
        })
}

/// What `check` says: forwarded, or refused with a status and code.
fn check_says(config: &Path, req: &Req, proxy: std::net::SocketAddr) -> Result<(), (u16, u64)> {
    let url = match &req.form {
        Form::Origin => format!("http://{proxy}{}", req.path),
        Form::Absolute(host) => format!("http://{host}{}", req.path),
        Form::Prefix(host) => format!("http://{proxy}/{host}{}", req.path),
    };
    let (text, code) = twilio_sidecar::commands::check(config, req.method, &url);
    match code {
        0 => Ok(()),
        // Audit mode forwards what it would deny.
        1 if text.contains("decision: audit_deny") => Ok(()),
        1 => {
            let line = text
                .lines()
                .find(|l| l.starts_with("decision: "))
                .unwrap_or_else(|| panic!("no decision line: {text}"));
            let status = line
                .split(": ")
                .nth(2)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status: {text}"));
            let code = line
                .split("(code ")
                .nth(1)
                .and_then(|s| s.split(')').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no code: {text}"));
            Err((status, code))
        }
        other => panic!("check exited {other}: {text}"),
    }
}

/// What the proxy did with the same request.
async fn proxy_does(h: &Harness, req: &Req) -> Result<(), (u16, u64)> {
    let (target, host) = match &req.form {
        Form::Origin => (req.path.clone(), h.proxy.to_string()),
        Form::Absolute(host) => (format!("http://{host}{}", req.path), host.to_string()),
        Form::Prefix(host) => (format!("/{host}{}", req.path), h.proxy.to_string()),
    };
    let raw = format!(
        "{} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        req.method
    );
    let resp = h.raw(&raw).await;
    // The stand-in answers every forwarded request 200.
    if resp.status == 200 {
        return Ok(());
    }
    let v = resp.json();
    Err((
        resp.status,
        v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}", resp.text())),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn check_and_the_proxy_agree(policy in policy(), requests in prop::collection::vec(request(), 40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let h = Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await;
            let config = h.dir.path().join("sidecar.toml");
            for req in &requests {
                let said = check_says(&config, req, h.proxy);
                let done = proxy_does(&h, req).await;
                assert_eq!(said, done, "{req:?} under\n{policy}");
            }
        });
    }
}
