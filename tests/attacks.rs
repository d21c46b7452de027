//! Adversarial requests, sent as raw bytes over TCP (a client library would normalise them) to
//! the real sidecar in front of the real TLS stand-in. Every attack must be refused or denied
//! and must never reach the upstream; every legitimate request must arrive byte for byte.

mod common;

use common::*;

const ALLOWED_HOSTS: &str = r#"allowed_hosts = ["api.twilio.com", "verify.twilio.com", "lookups.twilio.com", "sync.twilio.com", "conversations.twilio.com", "messaging.twilio.com", "api.dublin.ie1.twilio.com"]"#;

/// A messaging-only policy with a deny carved out of an allowed prefix.
const ATTACK_POLICY: &str = r#"
[policy]
allow = [
  "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
  "GET /2010-04-01/Accounts/{AccountSid}/Messages*",
  "POST verify.twilio.com /v2/Services/*/Verifications",
  "POST verify.twilio.com /v2/Services/*/VerificationCheck",
  "GET lookups.twilio.com /v2/PhoneNumbers/*",
  "GET sync.twilio.com /v1/Services/*/Documents/*",
  "GET conversations.twilio.com /v1/Conversations*",
  "GET messaging.twilio.com /v1/Services",
]
deny = ["* /2010-04-01/Accounts/{AccountSid}/Messages/*/Media*"]
"#;

fn req(method: &str, target: &str, host: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

/// Every attack, each with a label saying what it tries.
fn attacks() -> Vec<(String, String)> {
    let a = format!("/2010-04-01/Accounts/{SID}");
    let local = "127.0.0.1:8080";
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |label: String, raw: String| out.push((label, raw));

    // Dot segments in every spelling, from an allowed prefix (GET …/Messages*) to denied
    // targets. A proxy that matched the raw path would allow these; a server that normalises
    // would then execute the target.
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        "%2e%2E",
        ".%2e",
        ".%2E",
        "%2e.",
        "%2E.",
        "..;",
        "%2e%2e;",
        "..%3b",
        "..%3B",
        "%c0%ae%c0%ae",
        "%e0%80%ae%e0%80%ae",
        "%uff0e%uff0e",
    ];
    let targets = ["Keys.json", "Calls.json", "Messages/SM1/Media/ME1.json"];
    for dot in dots {
        for target in targets {
            add(
                format!("dot segment {dot} to {target}"),
                req("GET", &format!("{a}/Messages/{dot}/{target}"), local, ""),
            );
        }
    }
    // Single dots, encoded or not.
    for dot in [".", "%2e", "%2E"] {
        add(
            format!("single dot {dot}"),
            req(
                "GET",
                &format!("{a}/Messages/SM1/{dot}/Media/ME1.json"),
                local,
                "",
            ),
        );
    }
    // Encoded and raw separators.
    for sep in ["%2F", "%2f", "%5C", "%5c", "\\"] {
        add(
            format!("separator {sep} to Keys"),
            req(
                "GET",
                &format!("{a}/Messages.json{sep}..{sep}Keys.json"),
                local,
                "",
            ),
        );
        add(
            format!("separator {sep} inside deny"),
            req(
                "GET",
                &format!("{a}/Messages/SM1{sep}Media/ME1.json"),
                local,
                "",
            ),
        );
    }
    // Merged and leading double slashes around the deny rule.
    for path in [
        format!("{a}/Messages/SM1//Media/ME1.json"),
        format!("/{a}/Messages/SM1/Media/ME1.json"),
        format!("{a}//Keys.json"),
        format!("{a}/Messages//SM1/Media"),
        format!("{a}/Messages/SM1/Media//ME1.json"),
        format!("{a}/Messages/SM1/Media/"),
    ] {
        add(
            format!("empty segment in {path}"),
            req("GET", &path, local, ""),
        );
    }
    // Path parameters.
    for path in [
        format!("{a}/Messages/SM1/Media;x=1/ME1.json"),
        format!("{a}/Messages/SM1;/Media/ME1.json"),
        format!("{a}/Keys.json;/Messages.json"),
        format!("{a}/Messages/SM1/Media%3Bx/ME1.json"),
    ] {
        add(
            format!("path parameter in {path}"),
            req("GET", &path, local, ""),
        );
    }
    // Fragments and query markers.
    for path in [
        format!("{a}/Keys.json#/../Messages.json"),
        format!("{a}/Messages.json%23/../Keys.json"),
        format!("{a}/Messages%3F/../Keys.json"),
        format!("{a}/Keys.json?/Messages.json"),
        format!("{a}/Messages/SM1/Media/ME1.json?x=/Messages.json"),
    ] {
        add(
            format!("fragment/query trick {path}"),
            req("GET", &path, local, ""),
        );
    }
    // Double encoding stays literal, so it can neither reach an exact allow rule nor escape a
    // deny rule's match.
    for path in [
        format!("{a}/%254dessages.json"),
        format!("{a}/Messages%252ejson"),
    ] {
        add(
            format!("double encoding {path}"),
            req("POST", &path, local, ""),
        );
    }
    // Overlong UTF-8 and invalid encodings.
    for enc in [
        "%c0%af",
        "%e0%80%af",
        "%f0%80%80%af",
        "%ff",
        "%c0",
        "%zz",
        "%2",
        "%",
    ] {
        add(
            format!("bad encoding {enc}"),
            req(
                "GET",
                &format!("{a}/Messages/SM1{enc}Media/ME1.json"),
                local,
                "",
            ),
        );
    }
    // NUL and control characters, encoded (raw ones never get past the HTTP parser).
    for c in ["%00", "%0a", "%0d", "%09", "%0d%0aX-Injected:%201", "%7f"] {
        add(
            format!("control {c}"),
            req(
                "GET",
                &format!("{a}/Messages/SM1/Media{c}/ME1.json"),
                local,
                "",
            ),
        );
    }
    add(
        "raw NUL".into(),
        format!("GET {a}/Keys.json\0 HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n"),
    );
    add(
        "raw tab".into(),
        format!("GET {a}/Keys\t.json HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n"),
    );
    // Characters that must be encoded.
    for c in ["\"", "{", "}", "|", "^", "`", "<", ">", "[", "]", "\u{e9}"] {
        add(
            format!("raw {c:?}"),
            req(
                "GET",
                &format!("{a}/Messages/SM1/Media{c}/ME1.json"),
                local,
                "",
            ),
        );
    }
    // Absolute-form against Host, userinfo, ports, foreign hosts.
    let keys = format!("{a}/Keys.json");
    let msgs = format!("{a}/Messages.json");
    add(
        "absolute vs Host".into(),
        req(
            "POST",
            &format!("http://verify.twilio.com{msgs}"),
            "api.twilio.com",
            "",
        ),
    );
    add(
        "absolute vs Host 2".into(),
        req(
            "POST",
            &format!("http://api.twilio.com{msgs}"),
            "verify.twilio.com",
            "",
        ),
    );
    add(
        "userinfo".into(),
        req(
            "POST",
            &format!("http://api.twilio.com@evil.example{msgs}"),
            "evil.example",
            "",
        ),
    );
    add(
        "userinfo 2".into(),
        req(
            "POST",
            &format!("http://user:pass@api.twilio.com{msgs}"),
            "api.twilio.com",
            "",
        ),
    );
    add(
        "userinfo 3".into(),
        req(
            "POST",
            &format!("http://api.twilio.com%40evil.example{msgs}"),
            "api.twilio.com",
            "",
        ),
    );
    add(
        "odd port".into(),
        req(
            "POST",
            &format!("http://api.twilio.com:8443{msgs}"),
            "api.twilio.com:8443",
            "",
        ),
    );
    add(
        "foreign absolute".into(),
        req(
            "POST",
            &format!("http://evil.example{msgs}"),
            "evil.example",
            "",
        ),
    );
    add(
        "unlisted twilio host".into(),
        req(
            "POST",
            &format!("http://chat.twilio.com{msgs}"),
            "chat.twilio.com",
            "",
        ),
    );
    add(
        "scheme".into(),
        req(
            "POST",
            &format!("ftp://api.twilio.com{msgs}"),
            "api.twilio.com",
            "",
        ),
    );
    add(
        "absolute denied".into(),
        req(
            "GET",
            &format!("http://api.twilio.com{keys}"),
            "api.twilio.com",
            "",
        ),
    );
    add(
        "absolute trailing dot".into(),
        req(
            "POST",
            &format!("http://api.twilio.com.{msgs}"),
            "api.twilio.com.",
            "",
        ),
    );
    // Methods.
    for m in [
        "get", "Get", "post", "PROPFIND", "TRACE", "TRACK", "PURGE", "MOVE", "CONNECT", "DELETE",
        "PUT", "PATCH",
    ] {
        add(
            format!("method {m}"),
            req(m, &format!("{a}/Messages/SM1.json"), local, ""),
        );
    }
    // Host header games.
    let verify = "/v2/Services/VA1/Verifications";
    add("duplicate Host".into(), format!("POST {verify} HTTP/1.1\r\nHost: verify.twilio.com\r\nHost: api.twilio.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    add("duplicate same Host".into(), format!("POST {verify} HTTP/1.1\r\nHost: verify.twilio.com\r\nHost: verify.twilio.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    add(
        "lookalike Host".into(),
        req("POST", verify, "verify.twilio.com.evil.example", ""),
    );
    add(
        "Host trailing dot".into(),
        req("POST", verify, "verify.twilio.com.", ""),
    );
    add(
        "Host wrong product".into(),
        req("POST", verify, "LOOKUPS.Twilio.COM", ""),
    );
    add(
        "Host unlisted".into(),
        req("POST", verify, "chat.twilio.com", ""),
    );
    add(
        "Host userinfo".into(),
        req("POST", verify, "x@verify.twilio.com", ""),
    );
    add(
        "Host bad port".into(),
        req("POST", verify, "verify.twilio.com:99999", ""),
    );
    add("empty Host".into(), req("GET", &keys, "", ""));
    // Host-prefix games.
    add(
        "prefix trailing dot".into(),
        req("POST", &format!("/verify.twilio.com.{verify}"), local, ""),
    );
    add(
        "prefix unlisted".into(),
        req("POST", &format!("/chat.twilio.com{verify}"), local, ""),
    );
    add(
        "prefix encoded dot".into(),
        req("POST", &format!("/verify%2etwilio.com{verify}"), local, ""),
    );
    add(
        "prefix then dots".into(),
        req(
            "POST",
            &format!("/verify.twilio.com/../api.twilio.com{keys}"),
            local,
            "",
        ),
    );
    add(
        "prefix denied".into(),
        req("GET", &format!("/api.twilio.com{keys}"), local, ""),
    );
    add(
        "prefix wrong product".into(),
        req("POST", &format!("/lookups.twilio.com{verify}"), local, ""),
    );
    // Method and URL override headers on denied requests: the request line decides.
    let sm1 = format!("{a}/Messages/SM1.json");
    for h in [
        "X-HTTP-Method-Override: GET",
        "X-HTTP-Method: GET",
        "X-Method-Override: GET",
    ] {
        add(
            format!("override {h}"),
            req("POST", &sm1, local, &format!("{h}\r\n")),
        );
    }
    for h in ["X-Original-URL", "X-Rewrite-URL"] {
        add(
            h.to_string(),
            req("GET", &keys, local, &format!("{h}: {msgs}\r\n")),
        );
    }
    // Accounts.
    add(
        "unknown account".into(),
        req(
            "POST",
            "/2010-04-01/Accounts/AC99999999999999999999999999999999/Messages.json",
            local,
            "",
        ),
    );
    add(
        "lower-case SID".into(),
        req(
            "POST",
            &format!("/2010-04-01/Accounts/{}/Messages.json", SID.to_lowercase()),
            local,
            "",
        ),
    );
    add(
        "SID with suffix".into(),
        req(
            "POST",
            &format!("/2010-04-01/Accounts/{SID}x/Messages.json"),
            local,
            "",
        ),
    );
    // Shape and size.
    add("asterisk-form".into(), req("OPTIONS", "*", local, ""));
    add(
        "relative path".into(),
        format!("GET 2010-04-01/Accounts HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n"),
    );
    add(
        "too deep".into(),
        req(
            "GET",
            &format!("{a}/Messages{}", "/x".repeat(40)),
            local,
            "",
        ),
    );
    add(
        "too long".into(),
        req(
            "GET",
            &format!("{a}/Messages/{}", "x".repeat(5000)),
            local,
            "",
        ),
    );
    add(
        "trailing slash".into(),
        req("POST", &format!("{msgs}/"), local, ""),
    );
    add("denied plain".into(), req("GET", &keys, local, ""));
    add(
        "denied by deny rule".into(),
        req(
            "GET",
            &format!("{a}/Messages/SM1/Media/ME1.json"),
            local,
            "",
        ),
    );
    add(
        "deny rule, upper case".into(),
        req("GET", &format!("{a}/MESSAGES/sm1/MEDIA"), local, ""),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_never_reach_twilio() {
    let h = Harness::start_with(|ctx| standard_config(ctx, ALLOWED_HOSTS, ATTACK_POLICY)).await;
    let attacks = attacks();
    assert!(attacks.len() >= 100, "only {} attacks", attacks.len());
    let mut failures = Vec::new();
    for (label, raw) in &attacks {
        let resp = h.raw(raw).await;
        let refused = matches!(resp.status, 400 | 403 | 405 | 414 | 431);
        let reached = h.stand_in.requests().len();
        if !refused || reached != 0 {
            failures.push(format!(
                "{label}: status {} reached upstream: {}",
                resp.status,
                reached != 0
            ));
            h.stand_in.clear();
        }
        // Our own refusals are Twilio-shaped; only the HTTP parser's rejections (raw NUL, tab)
        // are plain, header-less 400s.
        let parser_400 = resp.status == 400 && resp.header("content-type").is_none();
        if !parser_400 && resp.header("content-type") != Some("application/json") {
            failures.push(format!("{label}: not a JSON error: {}", resp.text()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} attacks misbehaved:\n{}",
        failures.len(),
        attacks.len(),
        failures.join("\n")
    );
    // And the sidecar is still serving.
    let resp = h
        .send(
            "POST",
            &format!("/2010-04-01/Accounts/{SID}/Messages.json"),
            &[],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200);
}

/// Attacks that do reach Twilio, but only as exactly the request the policy judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_intent_is_neutralised() {
    let h = Harness::start_with(|ctx| standard_config(ctx, ALLOWED_HOSTS, ATTACK_POLICY)).await;
    let sm1 = format!("/2010-04-01/Accounts/{SID}/Messages/SM1.json");
    let cases = [
        req("GET", &sm1, "127.0.0.1:8080", "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nX-Original-Method: DELETE\r\n"),
        req("GET", &sm1, "127.0.0.1:8080", &format!("X-Original-URL: /2010-04-01/Accounts/{SID}/Keys.json\r\nX-Rewrite-URL: /2010-04-01/Accounts/{SID}/Keys.json\r\nX-Forwarded-Host: evil.example\r\nForwarded: host=evil.example\r\n")),
        // The HTTP parser drops the fragment; what was checked is what is forwarded.
        req("GET", &format!("{sm1}#/../../Keys.json"), "127.0.0.1:8080", ""),
    ];
    for raw in &cases {
        assert_eq!(h.raw(raw).await.status, 200, "{raw}");
    }
    // A Host that only resembles Twilio's is a name the sidecar does not answer to, as a
    // DNS-rebinding page would send: refused before anything else.
    let resp = h
        .raw(&req("GET", &sm1, "api.twilio.com.evil.example", ""))
        .await;
    assert_eq!(resp.twilio_error(403), 79407);
    let got = h.stand_in.requests();
    assert_eq!(got.len(), cases.len());
    for r in &got {
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("GET", sm1.as_str())
        );
        assert_eq!(r.host.as_deref(), Some("api.twilio.com"));
        for header in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-method",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert!(r.header_values(header).is_empty(), "{header} was forwarded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_requests_pass_byte_for_byte() {
    let h = Harness::start_with(|ctx| standard_config(ctx, ALLOWED_HOSTS, ATTACK_POLICY)).await;
    let a = format!("/2010-04-01/Accounts/{SID}");
    let local = "127.0.0.1:8080";
    // (method, request target, Host header, expected upstream host, expected upstream target)
    let mut cases: Vec<(String, String, String, &str, String)> = Vec::new();
    let mut add =
        |m: &str, target: String, host: &str, up_host: &'static str, up_target: String| {
            cases.push((m.to_string(), target, host.to_string(), up_host, up_target));
        };
    let api = "api.twilio.com";
    for q in [
        "",
        "?To=%2B15005550006",
        "?PageSize=50&Page=2&PageToken=PASMabc",
        "?DateSent%3E=2024-01-01",
        "?x=..%2F..%2FKeys.json",
        "?a=%23b&c=;d",
        "?Body=%F0%9F%98%80",
    ] {
        add(
            "GET",
            format!("{a}/Messages.json{q}"),
            local,
            api,
            format!("{a}/Messages.json{q}"),
        );
    }
    add(
        "POST",
        format!("{a}/Messages.json"),
        local,
        api,
        format!("{a}/Messages.json"),
    );
    add(
        "POST",
        format!("{a}/Messages.json"),
        "API.TWILIO.COM",
        api,
        format!("{a}/Messages.json"),
    );
    add(
        "GET",
        format!("{a}/Messages/SM0123456789abcdef0123456789abcdef.json"),
        local,
        api,
        format!("{a}/Messages/SM0123456789abcdef0123456789abcdef.json"),
    );
    add(
        "GET",
        format!("{a}/Messages/SM1/Feedback.json"),
        local,
        api,
        format!("{a}/Messages/SM1/Feedback.json"),
    );
    add(
        "GET",
        format!("http://api.twilio.com{a}/Messages.json"),
        api,
        api,
        format!("{a}/Messages.json"),
    );
    add(
        "GET",
        format!("/api.twilio.com{a}/Messages.json"),
        local,
        api,
        format!("{a}/Messages.json"),
    );
    add(
        "GET",
        format!("{a}/Messages.json"),
        "api.dublin.ie1.twilio.com",
        "api.dublin.ie1.twilio.com",
        format!("{a}/Messages.json"),
    );
    add(
        "GET",
        format!("{a}/messages.json"),
        local,
        api,
        format!("{a}/messages.json"),
    );
    // Verify, by each routing form.
    let verify = "/v2/Services/VA0123456789abcdef0123456789abcdef/Verifications";
    let v = "verify.twilio.com";
    add("POST", verify.to_string(), v, v, verify.to_string());
    add(
        "POST",
        verify.to_string(),
        "Verify.Twilio.Com:443",
        v,
        verify.to_string(),
    );
    add(
        "POST",
        format!("/verify.twilio.com{verify}"),
        local,
        v,
        verify.to_string(),
    );
    add(
        "POST",
        format!("/VERIFY.twilio.com{verify}"),
        local,
        v,
        verify.to_string(),
    );
    add(
        "POST",
        format!("http://verify.twilio.com{verify}"),
        v,
        v,
        verify.to_string(),
    );
    add(
        "POST",
        "/v2/Services/VA1/VerificationCheck".into(),
        v,
        v,
        "/v2/Services/VA1/VerificationCheck".into(),
    );
    // Lookups with encoded numbers and fields.
    let l = "lookups.twilio.com";
    for n in [
        "%2B15108675310",
        "+15108675310",
        "%2B4915123456789",
        "5108675310",
        "%2B1%20510%20867%205310",
    ] {
        add(
            "GET",
            format!("/v2/PhoneNumbers/{n}"),
            l,
            l,
            format!("/v2/PhoneNumbers/{n}"),
        );
    }
    add(
        "GET",
        "/v2/PhoneNumbers/%2B15108675310?Fields=line_type_intelligence,caller_name".into(),
        l,
        l,
        "/v2/PhoneNumbers/%2B15108675310?Fields=line_type_intelligence,caller_name".into(),
    );
    add(
        "GET",
        "/lookups.twilio.com/v2/PhoneNumbers/%2B15108675310?CountryCode=US".into(),
        local,
        l,
        "/v2/PhoneNumbers/%2B15108675310?CountryCode=US".into(),
    );
    // Sync unique names with encoded spaces and other characters.
    let s = "sync.twilio.com";
    for name in [
        "my%20document",
        "caf%C3%A9",
        "a%2Bb",
        "100%25",
        "with%27quote",
        "MyDoc",
        "dots.in.name",
        "tilde~name",
        "x%252Fy",
    ] {
        add(
            "GET",
            format!("/v1/Services/IS1/Documents/{name}"),
            s,
            s,
            format!("/v1/Services/IS1/Documents/{name}"),
        );
    }
    // Conversations and Messaging.
    let c = "conversations.twilio.com";
    add(
        "GET",
        "/v1/Conversations?PageSize=2".into(),
        c,
        c,
        "/v1/Conversations?PageSize=2".into(),
    );
    add(
        "GET",
        "/v1/Conversations/CH1/Messages?Order=desc".into(),
        c,
        c,
        "/v1/Conversations/CH1/Messages?Order=desc".into(),
    );
    add(
        "GET",
        "/conversations.twilio.com/v1/Conversations/CH1/Participants".into(),
        local,
        c,
        "/v1/Conversations/CH1/Participants".into(),
    );
    let m = "messaging.twilio.com";
    add("GET", "/v1/Services".into(), m, m, "/v1/Services".into());

    assert!(
        cases.len() >= 30,
        "only {} legitimate requests",
        cases.len()
    );
    for (method, target, host, up_host, up_target) in &cases {
        h.stand_in.clear();
        let resp = h.raw(&req(method, target, host, "")).await;
        assert_eq!(
            resp.status,
            200,
            "{method} {target} (Host {host}): {}",
            resp.text()
        );
        let got = h.stand_in.requests();
        assert_eq!(got.len(), 1, "{method} {target}");
        assert_eq!(got[0].method, *method);
        assert_eq!(got[0].target, *up_target, "{method} {target}");
        assert_eq!(got[0].host.as_deref(), Some(*up_host), "{method} {target}");
        assert_eq!(got[0].sni.as_deref(), Some(*up_host), "{method} {target}");
        assert_eq!(
            got[0].header_values("authorization"),
            vec![expected_authorization()]
        );
    }
}
