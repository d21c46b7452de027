//! End-to-end tests of the proxy: the real binary, a real TLS stand-in for Twilio, real sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use twilio_sidecar::config::hosts::TWILIO_PRODUCT_HOSTS;
use twilio_sidecar::dev::stand_in::{Reply, StandIn, ThrowawayPki};

fn messages_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{sid}/Messages.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_carries_the_exact_credential_once_and_never_the_apps() {
    let h = Harness::start().await;
    let body = b"To=%2B15005550006&From=%2B15005550006&Body=hello";
    let target = format!("{}?Foo=%2Bbar&x=1", messages_path(SID));
    let resp = h
        .send(
            "POST",
            &target,
            &[
                ("Authorization", &basic("ACapp", "app-own-token")),
                ("Proxy-Authorization", "Basic cHJveHk6cHJveHk="),
                ("Cookie", "session=abc"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Original-URL", "/2010-04-01/Accounts/AC1/Keys.json"),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Request-Id", "req-from-app-1"),
            ],
            body,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-request-id"), Some("req-from-app-1"));
    assert_eq!(
        resp.header("twilio-request-id"),
        Some("RQ00000000000000000000000000000000")
    );

    let got = h.stand_in.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(
        r.header_values("authorization"),
        vec![expected_authorization()]
    );
    assert!(r.header_values("proxy-authorization").is_empty());
    assert!(r.header_values("cookie").is_empty());
    assert!(r.header_values("x-http-method-override").is_empty());
    assert!(r.header_values("x-original-url").is_empty());
    assert_eq!(
        r.header_values("content-type"),
        vec!["application/x-www-form-urlencoded"]
    );
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, target, "path and query forwarded byte for byte");
    assert_eq!(r.body, Bytes::from_static(body));
    assert_eq!(r.sni.as_deref(), Some("api.twilio.com"));
    assert_eq!(r.host.as_deref(), Some("api.twilio.com"));
    // ALPN picked HTTP/2 to the stand-in.
    assert_eq!(r.version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_never_reaches_twilio_and_gets_twilio_error_70051() {
    let h = Harness::start().await;
    // A path outside every allow rule.
    let resp = h
        .send("POST", "/v2/Services/IS1/Documents", &[], b"x=1")
        .await;
    assert_eq!(resp.twilio_error(403), 70051);
    let msg = resp.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("POST api.twilio.com/v2/Services/IS1/Documents"),
        "{msg}"
    );
    assert!(msg.contains("policy"), "{msg}");
    assert_eq!(
        resp.json()["more_info"],
        "https://www.twilio.com/docs/errors/70051"
    );

    // A deny rule beats the allow rule that covers everything under the account.
    let keys = format!("/2010-04-01/Accounts/{SID}/Keys.json");
    let resp = h.send("GET", &keys, &[], b"").await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("deny rule"));
    let resp = h
        .send(
            "POST",
            &format!("/2010-04-01/Accounts/{SID}/Keys/SK1.json"),
            &[],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 70051);

    // Method matters: only GET on Lookups.
    let resp = h
        .send(
            "DELETE",
            "/v2/PhoneNumbers/%2B15108675310",
            &[("Host", "lookups.twilio.com")],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert!(
        h.stand_in.requests().is_empty(),
        "denied requests reached the upstream"
    );

    // Sanity check of the test policy: its catch-all allow rule does cover Calls.
    let calls = format!("/2010-04-01/Accounts/{SID}/Calls.json");
    let resp = h.send("POST", &calls, &[], b"To=1").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_absolute_form_host_header_path_prefix_and_default() {
    let h = Harness::start().await;
    let verify = "/v2/Services/VA1/Verifications";

    // 1. Absolute-form target.
    let raw = format!(
        "POST http://verify.twilio.com{verify} HTTP/1.1\r\nHost: verify.twilio.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(h.raw(&raw).await.status, 200);
    // 2. Host header naming a Twilio host (mixed case, with port).
    let resp = h
        .send(
            "GET",
            "/v2/PhoneNumbers/%2B15108675310",
            &[("Host", "Lookups.Twilio.com:443")],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // 3. Leading path segment naming the host.
    let resp = h
        .send("POST", &format!("/verify.twilio.com{verify}"), &[], b"")
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // 4. Default host.
    let resp = h.send("GET", &messages_path(SID), &[], b"").await;
    assert_eq!(resp.status, 200);
    // A Host that only looks like Twilio's is not a Twilio host, nor the sidecar's: refused
    // as a DNS-rebinding page's would be.
    let resp = h
        .send(
            "GET",
            &messages_path(SID),
            &[("Host", "api.twilio.com.evil.example")],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 79407);

    let got = h.stand_in.requests();
    let seen: Vec<(Option<String>, Option<String>, String)> = got
        .iter()
        .map(|r| (r.sni.clone(), r.host.clone(), r.target.clone()))
        .collect();
    let v = |host: &str, target: &str| {
        (
            Some(host.to_string()),
            Some(host.to_string()),
            target.to_string(),
        )
    };
    assert_eq!(
        seen,
        vec![
            v("verify.twilio.com", verify),
            v("lookups.twilio.com", "/v2/PhoneNumbers/%2B15108675310"),
            v("verify.twilio.com", verify),
            v("api.twilio.com", &messages_path(SID)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_an_open_proxy() {
    let h = Harness::start_with(|ctx| {
        standard_config(
            ctx,
            r#"allowed_hosts = ["api.twilio.com", "verify.twilio.com", "lookups.twilio.com"]"#,
            POLICY,
        )
    })
    .await;
    let cases = [
        // Absolute-form to a foreign host.
        "GET http://evil.example/2010-04-01/Accounts.json HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "GET https://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        // A Twilio host outside the allowlist, in each routing form.
        "GET http://chat.twilio.com/v2/Services HTTP/1.1\r\nHost: chat.twilio.com\r\nConnection: close\r\n\r\n",
        "GET /v2/Services HTTP/1.1\r\nHost: chat.twilio.com\r\nConnection: close\r\n\r\n",
        "GET /chat.twilio.com/v2/Services HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ];
    for raw in cases {
        let resp = h.raw(raw).await;
        assert_eq!(resp.twilio_error(403), 79403, "{raw:?}");
    }
    // CONNECT tunnels are refused outright.
    let resp = h
        .raw("CONNECT api.twilio.com:443 HTTP/1.1\r\nHost: api.twilio.com:443\r\n\r\n")
        .await;
    assert_eq!(resp.twilio_error(405), 79405);
    // Malformed or ambiguous targets.
    for raw in [
        "GET http://user@api.twilio.com/2010-04-01/Accounts.json HTTP/1.1\r\nHost: api.twilio.com\r\nConnection: close\r\n\r\n",
        "GET http://api.twilio.com:8443/2010-04-01/Accounts.json HTTP/1.1\r\nHost: api.twilio.com:8443\r\nConnection: close\r\n\r\n",
        "GET http://api.twilio.com/2010-04-01/Accounts.json HTTP/1.1\r\nHost: verify.twilio.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: api.twilio.com\r\nHost: verify.twilio.com\r\nConnection: close\r\n\r\n",
    ] {
        let resp = h.raw(raw).await;
        assert_eq!(resp.twilio_error(400), 79401, "{raw:?}");
    }
    assert!(h.stand_in.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_paths_are_refused_before_policy() {
    let h = Harness::start().await;
    let base = format!("/2010-04-01/Accounts/{SID}");
    let paths = [
        format!("{base}/Messages/../Keys.json"),
        format!("{base}/Messages/%2e%2e/Keys.json"),
        format!("{base}/Messages/.%2E/Keys.json"),
        format!("{base}/./Messages.json"),
        format!("{base}//Messages.json"),
        format!("/{base}/Messages.json"),
        format!("{base}/Messages.json%2F..%2FKeys.json"),
        format!("{base}/Messages.json%5C..%5CKeys.json"),
        format!("{base}/Messages.json;x=1"),
        format!("{base}/Messages%00.json"),
        format!("{base}/Messages/%c0%af"),
        format!("{base}/Messages/%zz"),
        format!("{base}/Messages.json%23frag"),
        format!("{base}/Messages.json%3Fx=1"),
    ];
    for p in &paths {
        let resp = h.send("GET", p, &[], b"").await;
        assert_eq!(resp.twilio_error(400), 79400, "{p}");
    }
    assert!(h.stand_in.requests().is_empty());
    // Double encoding stays literal: %252e%252e is the text "%2e%2e", an ordinary segment.
    let resp = h
        .send("GET", &format!("{base}/Messages/%252e%252e"), &[], b"")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        h.stand_in.requests()[0].target,
        format!("{base}/Messages/%252e%252e")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_follows_the_account_in_the_path() {
    let h = Harness::start().await;
    // Account 2 (Auth Token) for its own 2010 path.
    let resp = h.send("GET", &messages_path(SID2), &[], b"").await;
    assert_eq!(resp.status, 200);
    // Non-2010 APIs use the default account.
    let resp = h
        .send(
            "GET",
            "/v2/PhoneNumbers/%2B15108675310",
            &[("Host", "lookups.twilio.com")],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200);
    let got = h.stand_in.requests();
    assert_eq!(
        got[0].header_values("authorization"),
        vec![basic(SID2, TOKEN2)]
    );
    assert_eq!(
        got[1].header_values("authorization"),
        vec![expected_authorization()]
    );

    // An unconfigured account SID is refused even where a rule allows any SID.
    let unknown = "AC99999999999999999999999999999999";
    let resp = h
        .send(
            "GET",
            &format!("/2010-04-01/Accounts/{unknown}/Recordings.json"),
            &[],
            b"",
        )
        .await;
    assert_eq!(resp.twilio_error(403), 79404);
    // And {AccountSid} rules never match it in the first place.
    let resp = h.send("POST", &messages_path(unknown), &[], b"").await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert_eq!(h.stand_in.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_responses_pass_through_untouched_and_bodies_stream_both_ways() {
    // Room for a 1.5 MB body (the default limit is 1 MiB).
    let policy = format!("{POLICY}\n[limits]\nmax_request_body = 4194304\n");
    let h = Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await;
    let twilio_error = r#"{"code": 20404, "message": "The requested resource was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}"#;
    h.stand_in.set_responder(move |r| {
        if r.target.ends_with("/Missing.json") {
            Reply {
                status: StatusCode::NOT_FOUND,
                headers: vec![
                    (
                        "content-type".into(),
                        "application/json; charset=utf-8".into(),
                    ),
                    ("x-custom".into(), "kept".into()),
                ],
                body: Bytes::from_static(twilio_error.as_bytes()),
                delay: Duration::ZERO,
            }
        } else {
            // Echo the body back, doubled, to check large bodies both ways.
            doubled_echo(&r.body)
        }
    });
    let resp = h
        .send(
            "GET",
            &format!("/2010-04-01/Accounts/{SID}/Missing.json"),
            &[],
            b"",
        )
        .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), twilio_error);
    assert_eq!(resp.header("x-custom"), Some("kept"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/json; charset=utf-8")
    );

    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let resp = h.send("POST", &messages_path(SID), &[], &big).await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body.len(), big.len() * 2);
    assert_eq!(&resp.body[..big.len()], &big[..]);
    assert_eq!(h.stand_in.requests()[1].body.len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unreachable_is_a_502_and_counted() {
    // Point connect_to at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let h = Harness::start_with(|ctx| {
        standard_config(ctx, "", POLICY).replace(
            &format!("connect_to = \"{}\"", ctx.stand_in),
            &format!("connect_to = \"{closed_addr}\""),
        )
    })
    .await;
    let resp = h.send("GET", &messages_path(SID), &[], b"").await;
    assert_eq!(resp.twilio_error(502), 79502);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("api.twilio.com"));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(
            r#"twilio_sidecar_upstream_errors_total{host="api.twilio.com",kind="connect"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_twilio_is_always_verified() {
    // A stand-in whose certificate comes from a CA the sidecar does not trust.
    let untrusted = StandIn::start(&TWILIO_PRODUCT_HOSTS).await.unwrap();
    let other_ca = ThrowawayPki::new(&["unused.example"]).unwrap().ca_pem;
    let h = Harness::start_against(untrusted, |ctx| {
        write(&ctx.dir, "other-ca.pem", &other_ca);
        standard_config(ctx, "", POLICY)
            .replace("ca_file = \"ca.pem\"", "ca_file = \"other-ca.pem\"")
    })
    .await;
    let resp = h.send("GET", &messages_path(SID), &[], b"").await;
    assert_eq!(resp.twilio_error(502), 79502);
    assert!(h.stand_in.requests().is_empty());
    assert!(h
        .metrics()
        .await
        .contains(r#"twilio_sidecar_upstream_errors_total{host="api.twilio.com",kind="tls"} 1"#));

    // A trusted CA but a certificate for other names: the Twilio name is still verified.
    let wrong_name = StandIn::start(&["not-twilio.example"]).await.unwrap();
    let h = Harness::start_against(wrong_name, |ctx| standard_config(ctx, "", POLICY)).await;
    let resp = h.send("GET", &messages_path(SID), &[], b"").await;
    assert_eq!(resp.twilio_error(502), 79502);
    assert!(h.stand_in.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_with_bounded_labels() {
    let h = Harness::start().await;
    assert_eq!(
        h.send("POST", &messages_path(SID), &[], b"a=1")
            .await
            .status,
        200
    );
    assert_eq!(
        h.send("POST", &messages_path(SID), &[], b"a=1")
            .await
            .status,
        200
    );
    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 403);
    assert_eq!(h.send("GET", "/a/../b", &[], b"").await.status, 400);
    let m = h.metrics().await;
    for line in [
        r#"twilio_sidecar_requests_total{client="anonymous",decision="allow",host="api.twilio.com",method="POST",rule="POST /2010-04-01/Accounts/{AccountSid}/Messages.json",status="200"} 2"#,
        r#"twilio_sidecar_requests_total{client="anonymous",decision="deny",host="api.twilio.com",method="GET",rule="default-deny",status="403"} 1"#,
        r#"twilio_sidecar_requests_total{client="anonymous",decision="refused",host="api.twilio.com",method="GET",rule="-",status="400"} 1"#,
        r#"twilio_sidecar_request_duration_seconds_count{decision="allow",host="api.twilio.com"} 2"#,
        r#"twilio_sidecar_upstream_duration_seconds_count{host="api.twilio.com"} 2"#,
        r#"twilio_sidecar_in_flight_requests 0"#,
        r#"twilio_sidecar_state_generation 1"#,
        r#"twilio_sidecar_credential_generation{account="AC00000000000000000000000000000001"} 1"#,
        r#"twilio_sidecar_config_reloads_total{result="success",trigger="startup"} 1"#,
        r#"twilio_sidecar_build_info{version=""#,
        "twilio_sidecar_process_resident_memory_bytes",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    // No raw path ever becomes a label.
    assert!(!m.contains("/v2/Nope") && !m.contains("/a/../b"));
    // The connections the two forwarded requests used are kept for the next ones (one per
    // serving thread the two app connections landed on).
    let reusable: u32 = m
        .lines()
        .find_map(|l| l.strip_prefix("twilio_sidecar_upstream_reusable_connections "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reusable-connections gauge\n{m}"));
    assert!((1..=2).contains(&reusable), "{reusable}");
    // The stand-in refused no stream, so nothing was sent twice.
    assert!(
        m.contains("twilio_sidecar_upstream_streams_resent_total 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_metrics_errors_or_config() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let h = Harness::start().await;
    let mut bodies = Vec::new();
    for (method, target, host) in [
        ("POST", messages_path(SID), None),
        ("GET", messages_path(SID2), None),
        ("POST", "/v2/Nope".to_string(), None),
        ("GET", "/a/%2e%2e/b".to_string(), None),
        ("GET", "/x".to_string(), Some("evil.twilio.com")),
    ] {
        let mut headers = vec![("Authorization", "Basic YXBwOmFwcC1zZWNyZXQ=")];
        if let Some(host) = host {
            headers.push(("Host", host));
        }
        let resp = h.send(method, &target, &headers, b"Body=hi").await;
        bodies.push(String::from_utf8_lossy(&resp.raw).into_owned());
    }
    let config = h.admin_get("/config").await;
    assert_eq!(config.status, 200);
    let v = config.json();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["accounts"][0]["credential"]["username"], KEY_SID);
    assert!(v["accounts"][0]["credential"]["sources"]["secret"]["file"]
        .as_str()
        .unwrap()
        .ends_with("/secret"));
    assert_eq!(
        v["accounts"][1]["credential"]["sources"]["token"]["env"],
        TOKEN2_ENV
    );
    let metrics = h.metrics().await;
    let logs = h.logs_after("/x").await.join("\n");
    assert!(logs.contains("twilio_sidecar::access"), "{logs}");

    // And a failing upstream, whose error text must not leak either.
    let h2 = Harness::start_with(|ctx| {
        standard_config(ctx, "", POLICY).replace(
            &format!("connect_to = \"{}\"", ctx.stand_in),
            &format!("connect_to = \"{closed_addr}\""),
        )
    })
    .await;
    bodies.push(
        String::from_utf8_lossy(&h2.send("GET", &messages_path(SID), &[], b"").await.raw)
            .into_owned(),
    );
    let logs2 = h2.logs().join("\n");

    for needle in secret_needles() {
        for (what, text) in [
            ("logs", &logs),
            ("logs of the failing sidecar", &logs2),
            ("metrics", &metrics),
            ("config", &config.text()),
        ] {
            assert!(!text.contains(&needle), "{what} contains a secret");
        }
        for b in &bodies {
            assert!(!b.contains(&needle), "an error body contains a secret");
        }
    }
    // The app's own credential is not logged either.
    assert!(!logs.contains("YXBwOmFwcC1zZWNyZXQ="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_from_the_app() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let h = Harness::start().await;
    let stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", h.proxy, messages_path(SID)))
            .header("authorization", "Basic YXBwOmFwcA==")
            .body(Full::new(Bytes::from_static(b"Body=h2")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["authorization"], format!("Basic {KEY_SID}:[redacted]"));
    }
    // In HTTP/2 :authority plays Host's role: a Host header that disagrees is refused, and a
    // Twilio :authority routes like a Host header.
    let conflicting = http::Request::builder()
        .method("POST")
        .uri("http://verify.twilio.com/v2/Services/VA1/Verifications")
        .header("host", "lookups.twilio.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(conflicting).await.unwrap();
    assert_eq!(resp.status(), 400);
    let routed = http::Request::builder()
        .method("POST")
        .uri("http://verify.twilio.com/v2/Services/VA1/Verifications")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(routed).await.unwrap().status(), 200);
    assert_eq!(
        h.stand_in.requests().last().unwrap().sni.as_deref(),
        Some("verify.twilio.com")
    );

    let got = h.stand_in.requests();
    assert_eq!(got.len(), 4);
    assert!(got
        .iter()
        .all(|r| r.header_values("authorization") == vec![expected_authorization()]));
    assert!(got[..3]
        .iter()
        .all(|r| r.body == Bytes::from_static(b"Body=h2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let h = Harness::start().await;
    let live = h.admin_get("/livez").await;
    assert_eq!(
        (live.status, live.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(ready.json()["accounts"].as_array().unwrap().len(), 2);
    let config = h.admin_get("/config").await.json();
    assert_eq!(config["policy"]["mode"], "enforce");
    assert_eq!(config["policy"]["rules"].as_array().unwrap().len(), 7);
    assert_eq!(h.admin_get("/nope").await.status, 404);
    // The proxy port does not serve admin endpoints: /metrics there is just a denied path.
    let resp = h.send("GET", "/metrics", &[], b"").await;
    assert_eq!(resp.twilio_error(403), 70051);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_swaps_policy_and_keeps_the_old_state_on_error() {
    let h = Harness::start().await;
    let config_path = h.dir.path().join("sidecar.toml");

    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 403);

    // Allow /v2/Nope and rotate the secret: both apply after the reload.
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("allow = [", "allow = [\n  \"GET /v2/Nope\","),
    )
    .unwrap();
    std::fs::write(h.dir.path().join("secret"), "rotated-secret-value-0001\n").unwrap();
    let resp = post_reload(h.admin).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["generation"], 2);
    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 200);
    assert_eq!(
        h.last_authorization(),
        vec![basic(KEY_SID, "rotated-secret-value-0001")]
    );
    let m = h.metrics().await;
    assert!(m.contains("twilio_sidecar_state_generation 2"), "{m}");
    assert!(m.contains(r#"twilio_sidecar_credential_generation{account="AC00000000000000000000000000000001"} 2"#), "{m}");
    assert!(m.contains(r#"twilio_sidecar_credential_generation{account="AC00000000000000000000000000000002"} 1"#), "{m}");

    // A broken config is refused; the previous state keeps serving.
    std::fs::write(&config_path, "this is not [valid toml").unwrap();
    let resp = post_reload(h.admin).await;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.json()["generation"], 2);
    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 200);
    let m = h.metrics().await;
    assert!(
        m.contains(r#"twilio_sidecar_config_reloads_total{result="failure",trigger="admin"} 1"#),
        "{m}"
    );
    assert!(!resp.text().contains("rotated-secret-value-0001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_forwards_would_be_denials_and_counts_them() {
    let h = Harness::start_with(|ctx| {
        standard_config(
            ctx,
            "",
            &POLICY.replace("[policy]", "[policy]\nmode = \"audit\""),
        )
    })
    .await;
    // Every rule is listed at zero before any traffic.
    let m = h.metrics().await;
    assert!(m.contains(r#"twilio_sidecar_policy_rule_hits_total{effect="deny",rule="* /2010-04-01/Accounts/{AccountSid}/Keys*"} 0"#), "{m}");

    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 200);
    assert_eq!(
        h.send(
            "GET",
            &format!("/2010-04-01/Accounts/{SID}/Keys.json"),
            &[],
            b""
        )
        .await
        .status,
        200
    );
    assert_eq!(
        h.send("POST", &messages_path(SID), &[], b"").await.status,
        200
    );
    // Refusals are not policy decisions: audit mode never forwards a non-canonical path.
    assert_eq!(
        h.send("GET", "/a/../b", &[], b"").await.twilio_error(400),
        79400
    );
    assert_eq!(h.stand_in.requests().len(), 3);

    let m = h.metrics().await;
    for line in [
        r#"twilio_sidecar_requests_total{client="anonymous",decision="audit_deny",host="api.twilio.com",method="GET",rule="default-deny",status="200"} 1"#,
        r#"twilio_sidecar_requests_total{client="anonymous",decision="audit_deny",host="api.twilio.com",method="GET",rule="* /2010-04-01/Accounts/{AccountSid}/Keys*",status="200"} 1"#,
        r#"twilio_sidecar_requests_total{client="anonymous",decision="allow",host="api.twilio.com",method="POST",rule="POST /2010-04-01/Accounts/{AccountSid}/Messages.json",status="200"} 1"#,
        r#"twilio_sidecar_policy_rule_hits_total{effect="deny",rule="* /2010-04-01/Accounts/{AccountSid}/Keys*"} 1"#,
        r#"twilio_sidecar_policy_rule_hits_total{effect="allow",rule="POST /2010-04-01/Accounts/{AccountSid}/Messages.json"} 1"#,
        r#"twilio_sidecar_policy_rule_hits_total{effect="allow",rule="GET lookups.twilio.com /v2/PhoneNumbers/*"} 0"#,
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    let logs = h.logs_after("Keys.json").await.join("\n");
    assert!(logs.contains("would be denied in enforce mode"), "{logs}");
    assert!(logs.contains(r#""decision":"audit_deny""#), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_links_point_back_at_the_sidecar_in_the_form_the_request_came_in() {
    let page = r#"{"conversations": [], "meta": {"page": 0, "page_size": 1, "first_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=1&Page=0", "previous_page_url": null, "url": "https://conversations.twilio.com/v1/Conversations?PageSize=1&Page=0", "next_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=1&Page=1&PageToken=PT1", "key": "conversations"}}"#;
    let policy = POLICY.replace(
        "allow = [",
        "allow = [\n  \"GET conversations.twilio.com /v1/Conversations*\",",
    );
    let h = Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await;
    h.stand_in.set_responder(move |_| Reply {
        status: StatusCode::OK,
        headers: vec![(
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body: Bytes::from_static(page.as_bytes()),
        delay: Duration::ZERO,
    });
    let next = |resp: &RawResponse| {
        resp.json()["meta"]["next_page_url"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Host-prefix form: links keep the prefix and the sidecar's address.
    let resp = h
        .send(
            "GET",
            "/conversations.twilio.com/v1/Conversations?PageSize=1",
            &[("Host", "sidecar.local:8080"), ("Accept-Encoding", "gzip")],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(next(&resp), "http://sidecar.local:8080/conversations.twilio.com/v1/Conversations?PageSize=1&Page=1&PageToken=PT1");
    assert_eq!(
        resp.json()["meta"]["url"],
        "http://sidecar.local:8080/conversations.twilio.com/v1/Conversations?PageSize=1&Page=0"
    );
    assert_eq!(
        resp.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        resp.body.len()
    );
    // The page was fetched uncompressed so that it could be rewritten.
    assert_eq!(h.last_authorization(), vec![expected_authorization()]);
    assert_eq!(
        h.stand_in
            .requests()
            .last()
            .unwrap()
            .header_values("accept-encoding"),
        vec!["identity"]
    );

    // Host-header form: links name the Twilio host over plain HTTP, to come back through here.
    let resp = h
        .send(
            "GET",
            "/v1/Conversations",
            &[("Host", "conversations.twilio.com")],
            b"",
        )
        .await;
    assert_eq!(
        next(&resp),
        "http://conversations.twilio.com/v1/Conversations?PageSize=1&Page=1&PageToken=PT1"
    );

    // Following the rewritten link works.
    let resp = h
        .send(
            "GET",
            "/conversations.twilio.com/v1/Conversations?PageSize=1&Page=1&PageToken=PT1",
            &[("Host", "sidecar.local:8080")],
            b"",
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        h.stand_in.requests().last().unwrap().target,
        "/v1/Conversations?PageSize=1&Page=1&PageToken=PT1"
    );
}

/// Every error the sidecar makes links to a page that resolves: its own codes to the admin
/// listener's `/errors/{code}`, Twilio's to Twilio's documentation.
#[tokio::test]
async fn more_info_links_resolve() {
    let h = Harness::start().await;
    let resp = h
        .raw("GET http://evil.example.com/x HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(resp.twilio_error(403), 79403);
    let link = resp.json()["more_info"].as_str().unwrap().to_string();
    assert_eq!(link, format!("http://{}/errors/79403", h.admin));
    let page = h.admin_get("/errors/79403").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    assert_eq!(page["code"], 79403);
    assert_eq!(page["status"], 403);
    assert!(
        page["remedy"].as_str().unwrap().contains("allowed_hosts"),
        "{page}"
    );
    let all = h.admin_get("/errors").await.json();
    assert!(all["errors"].as_array().unwrap().len() >= 12, "{all}");
    assert_eq!(h.admin_get("/errors/70051").await.status, 404);
}
