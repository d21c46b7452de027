//! Parameter conditions under attack, against the real binary: every spelling, encoding,
//! repetition, placement (query, form, JSON), lying or missing `Content-Type`, oversized,
//! chunked and slow body an attacker might use to get a destination or callback past a rule
//! — each case checked against what the Twilio stand-in received (nothing, for a refusal;
//! exactly the bytes sent, for an allowed request).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn config(ctx: &Ctx) -> String {
    standard_config(
        ctx,
        "",
        r#"
[policy]
max_inspected_body = 1024
allow = [
  { rule = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json", params = { To = ["+1*", "+44*"], StatusCallback = ["", "https://hooks.example.com/*"] } },
  { rule = "GET /2010-04-01/Accounts/{AccountSid}/Messages.json", params = { To = ["+1*"] } },
  "GET /2010-04-01/Accounts/{AccountSid}/Calls.json",
]
deny = [
  { rule = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json", params = { To = ["+1900*"] } },
]

[limits]
max_request_body = 4096
"#,
    )
}

/// What a case must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Forwarded, body byte for byte.
    Forwarded,
    /// Refused by the policy (403, 70051), nothing forwarded.
    Denied,
    /// Refused as malformed (400, 79410), nothing forwarded.
    Malformed,
    /// Refused as too large (413, 79413).
    TooLarge,
}

struct Case {
    what: &'static str,
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    expect: Expect,
}

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

fn post(what: &'static str, content_type: &'static str, body: &str, expect: Expect) -> Case {
    Case {
        what,
        method: "POST",
        target: messages(),
        headers: if content_type.is_empty() {
            vec![]
        } else {
            vec![("Content-Type", content_type)]
        },
        body: body.to_string(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let big_allowed = format!("To=%2B15551234567&Body={}", "x".repeat(1100));
    let mut cases = vec![
        post(
            "plain allowed",
            FORM,
            "To=%2B15551234567&Body=hi",
            Forwarded,
        ),
        post("UK allowed", FORM, "To=%2B447700900123&Body=hi", Forwarded),
        post(
            "lower-case name, allowed value",
            FORM,
            "to=%2B15551234567",
            Forwarded,
        ),
        post(
            "callback on our host",
            FORM,
            "To=%2B15551234567&StatusCallback=https%3A%2F%2Fhooks.example.com%2Fs",
            Forwarded,
        ),
        post(
            "charset utf-8",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "To=%2B15551234567",
            Forwarded,
        ),
        post(
            "content type in capitals",
            "Application/X-WWW-Form-Urlencoded",
            "To=%2B15551234567",
            Forwarded,
        ),
        post(
            "repeated, all allowed",
            FORM,
            "To=%2B15551234567&To=%2B447700900123",
            Forwarded,
        ),
        post(
            "JSON allowed",
            JSON,
            r#"{"To":"+15551234567","Body":"hi"}"#,
            Forwarded,
        ),
        post(
            "empty callback is absent",
            FORM,
            "To=%2B15551234567&StatusCallback=",
            Forwarded,
        ),
        post("international", FORM, "To=%2B8821234567", Denied),
        post("'+' is a space", FORM, "To=+15551234567", Denied),
        post("double-encoded +", FORM, "To=%252B15551234567", Denied),
        post("name in capitals", FORM, "TO=%2B8821234567", Denied),
        post("name in mixed case", FORM, "tO=%2B8821234567", Denied),
        post(
            "second occurrence",
            FORM,
            "To=%2B15551234567&To=%2B8821234567",
            Denied,
        ),
        post("percent-encoded name", FORM, "T%6F=%2B8821234567", Denied),
        post(
            "encoded name, second",
            FORM,
            "To=%2B15551234567&%54o=%2B8821234567",
            Denied,
        ),
        post(
            "callback elsewhere",
            FORM,
            "To=%2B15551234567&StatusCallback=https%3A%2F%2Fevil.example%2F",
            Denied,
        ),
        post(
            "callback on a look-alike host",
            FORM,
            "To=%2B15551234567&StatusCallback=https%3A%2F%2Fhooks.example.com.evil.example%2F",
            Denied,
        ),
        post(
            "callback in capitals",
            FORM,
            "To=%2B15551234567&statuscallback=https%3A%2F%2Fevil.example%2F",
            Denied,
        ),
        post("destination absent", FORM, "Body=hi", Denied),
        post("destination empty", FORM, "To=&Body=hi", Denied),
        post(
            "premium number inside an allowed country",
            FORM,
            "To=%2B19005550000",
            Denied,
        ),
        post(
            "premium number as a second To",
            FORM,
            "To=%2B15551234567&To=%2B19005550000",
            Denied,
        ),
        post("text/plain form", "text/plain", "To=%2B8821234567", Denied),
        post("no content type", "", "To=%2B8821234567", Denied),
        post(
            "another charset",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "To=%2B15551234567",
            Denied,
        ),
        post(
            "multipart",
            "multipart/form-data; boundary=x",
            "--x\r\nContent-Disposition: form-data; name=\"To\"\r\n\r\n+8821234567\r\n--x--\r\n",
            Denied,
        ),
        post(
            "JSON array value",
            JSON,
            r#"{"To":["+15551234567","+8821234567"]}"#,
            Denied,
        ),
        post("JSON number value", JSON, r#"{"To":8821234567}"#, Denied),
        post(
            "JSON repeated key",
            JSON,
            r#"{"To":"+15551234567","To":"+8821234567"}"#,
            Denied,
        ),
        post(
            "JSON name in capitals",
            JSON,
            r#"{"TO":"+8821234567","To":"+15551234567"}"#,
            Denied,
        ),
        post("invalid JSON", JSON, r#"{"To":"+15551234567""#, Denied),
        post("JSON not an object", JSON, r#"["+15551234567"]"#, Denied),
        post("form declared as JSON", JSON, "To=%2B15551234567", Denied),
        post(
            "JSON declared as form",
            FORM,
            r#"{"To":"+15551234567"}"#,
            Denied,
        ),
        post("body over max_inspected_body", FORM, &big_allowed, Denied),
        post(
            "raw semicolon separator",
            FORM,
            "To=%2B15551234567;To=%2B8821234567",
            Malformed,
        ),
        post("invalid percent-encoding", FORM, "To=%zz", Malformed),
        post("not UTF-8 once decoded", FORM, "To=%FF%FE", Malformed),
        post(
            "invalid encoding in a name",
            FORM,
            "%G1=1&To=%2B15551234567",
            Malformed,
        ),
        post("over max_request_body", FORM, &"a".repeat(5000), TooLarge),
    ];
    let get = |what, query: &str, expect| Case {
        what,
        method: "GET",
        target: format!("{}{query}", messages()),
        headers: vec![],
        body: String::new(),
        expect,
    };
    cases.extend([
        get(
            "GET with an allowed destination",
            "?To=%2B15551234567",
            Expect::Forwarded,
        ),
        get("GET elsewhere", "?To=%2B8821234567", Expect::Denied),
        get("GET without one", "?PageSize=5", Expect::Denied),
        get(
            "GET with a raw semicolon",
            "?To=%2B15551234567;To=%2B88",
            Expect::Malformed,
        ),
    ]);
    cases.push(Case {
        what: "query and body disagree",
        method: "POST",
        target: format!("{}?To=%2B8821234567", messages()),
        headers: vec![("Content-Type", FORM)],
        body: "To=%2B15551234567".into(),
        expect: Expect::Denied,
    });
    cases.push(Case {
        what: "an unconditioned rule reads no parameters",
        method: "GET",
        target: format!("/2010-04-01/Accounts/{SID}/Calls.json?To=%2B88;x=%zz"),
        headers: vec![],
        body: String::new(),
        expect: Expect::Forwarded,
    });
    cases
}

#[tokio::test]
async fn no_encoding_spelling_or_placement_gets_a_parameter_past_a_rule() {
    let h = Harness::start_with(config).await;
    let cases = cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = h.stand_in.requests().len();
        let resp = h
            .send(
                case.method,
                &case.target,
                &case.headers,
                case.body.as_bytes(),
            )
            .await;
        let got = h.stand_in.requests();
        let outcome = match case.expect {
            Expect::Forwarded => {
                let last = got.last();
                (resp.status == 200
                    && got.len() == before + 1
                    && last
                        .is_some_and(|r| r.body == case.body.as_bytes() && r.target == case.target))
                .then_some(())
            }
            Expect::Denied => {
                (resp.status == 403 && resp.json()["code"] == 70051 && got.len() == before)
                    .then_some(())
            }
            Expect::Malformed => {
                (resp.status == 400 && resp.json()["code"] == 79410 && got.len() == before)
                    .then_some(())
            }
            Expect::TooLarge => (resp.status == 413 && got.len() == before).then_some(()),
        };
        if outcome.is_none() {
            failures.push(format!(
                "{}: expected {:?}, got {} {}",
                case.what,
                case.expect,
                resp.status,
                resp.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Denials name the rule and the parameter; the log never carries a value.
    let resp = h
        .send(
            "POST",
            &messages(),
            &[("Content-Type", FORM)],
            b"To=%2B8821234567",
        )
        .await;
    let message = resp.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("parameter To is not one of [+1*, +44*]"),
        "{message}"
    );
    let logs = h.logs().join("\n");
    for value in ["8821234567", "5551234567", "evil.example", "9005550000"] {
        assert!(!logs.contains(value), "the log holds {value:?}");
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("rule=\"POST /2010-04-01/Accounts/{AccountSid}/Messages.json where StatusCallback in [, https://hooks.example.com/*]; To in [+1*, +44*]\""),
        "{metrics}"
    );
}

/// Sends `head`, then the body in `pieces` with a pause before each.
async fn trickle(h: &Harness, head: &str, pieces: &[&str], pause: Duration) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in pieces {
        tokio::time::sleep(pause).await;
        stream.write_all(piece.as_bytes()).await.unwrap();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .as_bytes()
        .to_vec();
    RawResponse {
        status,
        headers: vec![],
        body,
        raw: buf,
    }
}

#[tokio::test]
async fn chunked_and_slow_bodies_are_read_whole_before_deciding() {
    let h = Harness::start_with(config).await;
    let target = messages();
    let host = h.proxy;
    let chunked = |body_chunks: &[&str]| {
        let mut out = String::new();
        for c in body_chunks {
            out.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        out.push_str("0\r\n\r\n");
        out
    };
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );

    // The forbidden destination arrives in a later chunk, slowly.
    let body = chunked(&["To=%2B1555", "1234567&To=%2B88", "21234567"]);
    let resp = trickle(
        &h,
        &head,
        &[&body[..12], &body[12..30], &body[30..]],
        Duration::from_millis(150),
    )
    .await;
    assert_eq!(resp.status, 403, "{}", String::from_utf8_lossy(&resp.raw));
    assert!(h.stand_in.requests().is_empty());

    // An allowed one, chunked and slow, is forwarded with the same bytes.
    let body = chunked(&["To=%2B1555", "1234567&Body=hi"]);
    let resp = trickle(
        &h,
        &head,
        &[&body[..8], &body[8..]],
        Duration::from_millis(150),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
    assert_eq!(
        h.stand_in.requests()[0].body.as_ref(),
        b"To=%2B15551234567&Body=hi"
    );

    // Chunked past max_inspected_body (1 KiB) but within max_request_body: not inspectable,
    // so the conditional allow rule does not match.
    let filler = "x".repeat(700);
    let body = chunked(&["To=%2B15551234567&Body=", &filler, &filler]);
    let resp = trickle(&h, &head, &[&body], Duration::ZERO).await;
    assert_eq!(resp.status, 403, "{}", String::from_utf8_lossy(&resp.raw));
    assert_eq!(h.stand_in.requests().len(), 1);
}
