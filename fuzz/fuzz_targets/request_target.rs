//! Fuzzes the request-target parser and the admission decision (route, canonical path,
//! policy, account) with arbitrary targets, Host headers and methods.
//!
//! Input: `METHOD\nTARGET\nHOST` (any part may be missing or garbage).
//! Run: `cargo +nightly fuzz run request_target` from the repository root.

#![no_main]

use std::sync::OnceLock;

use http::{header, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use twilio_sidecar::config::Config;
use twilio_sidecar::dev::DEMO_POLICY;
use twilio_sidecar::gate::{Gate, Trace};
use twilio_sidecar::gate::request_path::CanonicalPath;

const SID: &str = "AC00000000000000000000000000000001";

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let text = format!(
            r#"
[upstream]
allowed_hosts = ["api.twilio.com", "verify.twilio.com", "lookups.twilio.com"]
[[accounts]]
sid = "{SID}"
credential = {{ type = "auth_token", token = {{ env = "UNUSED" }} }}
{DEMO_POLICY}"#
        );
        let (config, _) = Config::parse(&text, std::path::Path::new("."), "fuzz").expect("config");
        Gate::build(&config).expect("gate")
    })
}

/// What must hold of any path the parser accepts.
fn check_canonical(raw: &str) {
    if let Ok(path) = CanonicalPath::parse(raw) {
        let decoded = path.decoded();
        assert_eq!(decoded.split('/').count(), raw.split('/').count(), "{raw:?}");
        for seg in path.segments() {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw:?}");
            assert!(!seg.contains(['\\', ';', '\0', '?', '#']), "{raw:?}");
        }
        assert_eq!(path.raw(), raw);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let method = lines.next().unwrap_or("");
    let target = lines.next().unwrap_or("");
    let host = lines.next();

    check_canonical(target);

    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return };
    let mut builder = Request::builder().method(method).uri(target);
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        builder = builder.header(header::HOST, h);
    }
    let Ok(request) = builder.body(()) else { return };
    let (parts, ()) = request.into_parts();
    let mut trace = Trace::default();
    if let Ok(admission) = gate().admit(&parts, &mut trace) {
        // Admitted: the forwarded path is canonical, a suffix of what was received, allowed by
        // the policy, and its account is configured.
        let path = CanonicalPath::parse(admission.route.path).expect("admitted path is canonical");
        check_canonical(admission.route.path);
        assert!(parts.uri.path().ends_with(admission.route.path));
        assert!(admission.decision.forward);
        assert_eq!(gate().account_sid(admission.account), SID);
        assert!(!path.decoded().contains("//"));
    }
});
