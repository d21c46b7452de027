//! What an SRE checks: load shedding, body and time limits, slow clients, graceful drain on
//! SIGTERM, the JSON access log and the unix socket listener — against the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twilio_sidecar::dev::stand_in::{echo, Reply};

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

/// The standard config plus a `[limits]` table.
async fn start_with_limits(limits: &str) -> Harness {
    let policy = format!("{POLICY}\n[limits]\n{limits}\n");
    Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await
}

/// Makes the stand-in answer after `delay`.
fn slow(h: &Harness, delay: Duration) {
    h.stand_in
        .set_responder(move |r| Reply { delay, ..echo(r) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_shed_with_503_and_retry_after() {
    let h = Arc::new(start_with_limits("max_concurrent_requests = 4").await);
    slow(&h, Duration::from_millis(1500));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.send("POST", &messages(), &[], b"").await.status })
        })
        .collect();
    // Wait until all four are in flight at the upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stand_in.requests().len() < 4 {
        assert!(Instant::now() < deadline, "the slow requests never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let resp = h
        .send("POST", &messages(), &[("X-Request-Id", "shed-me")], b"")
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shedding must not queue"
    );
    assert_eq!(resp.twilio_error(503), 79429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("x-request-id"), Some("shed-me"));
    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    // Under the limit again: served.
    h.stand_in.set_responder(echo);
    assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
    let m = h.metrics().await;
    assert!(m.contains("twilio_sidecar_load_shed_total 1"), "{m}");
    assert!(m.contains(r#"decision="shed""#), "{m}");
    let logs = h.logs_after("shed-me").await.join("\n");
    assert!(logs.contains(r#""decision":"shed""#), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_and_never_reaches_twilio() {
    let h = start_with_limits("max_request_body = 1000").await;
    let big = vec![b'x'; 2000];
    let resp = h.send("POST", &messages(), &[], &big).await;
    assert_eq!(resp.twilio_error(413), 79413);
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("max_request_body"));
    // Chunked, so the size is only known while reading.
    let mut raw = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        messages()
    )
    .into_bytes();
    for _ in 0..4 {
        raw.extend_from_slice(format!("{:x}\r\n", 500).as_bytes());
        raw.extend_from_slice(&[b'y'; 500]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(h.proxy, &raw).await;
    assert_eq!(resp.twilio_error(413), 79413);
    assert!(
        h.stand_in.requests().is_empty(),
        "an oversized body reached the upstream"
    );
    // At the limit: fine, streamed or chunked.
    assert_eq!(
        h.send("POST", &messages(), &[], &[b'z'; 1000]).await.status,
        200
    );
    let mut raw = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        messages()
    )
    .into_bytes();
    raw.extend_from_slice(b"3e8\r\n");
    raw.extend_from_slice(&[b'w'; 1000]);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw_request(h.proxy, &raw).await.status, 200);
    let got = h.stand_in.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body, Bytes::from(vec![b'w'; 1000]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_slow_requests_are_cut_off() {
    let h = start_with_limits("header_read_timeout = \"1s\"\nrequest_timeout = \"700ms\"").await;
    // A client that never finishes its headers is disconnected.
    let mut stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    stream
        .write_all(b"GET /2010-04-01/Accounts HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(h.stand_in.requests().is_empty());

    // A request that takes longer than limits.request_timeout as a whole gets a 504.
    slow(&h, Duration::from_secs(3));
    let started = Instant::now();
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.twilio_error(504), 79408);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The sidecar keeps serving.
    h.stand_in.set_responder(echo);
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_zero() {
    let mut h = start_with_limits("drain_timeout = \"10s\"").await;
    slow(&h, Duration::from_millis(2000));
    let proxy = h.proxy;
    let in_flight = tokio::spawn(async move {
        let raw = format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            messages()
        );
        raw_request(proxy, raw.as_bytes()).await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stand_in.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &h.child.id().to_string()])
        .status()
        .unwrap();

    // New connections are refused while the in-flight request finishes, and readiness drops.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if tokio::net::TcpStream::connect(proxy).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");

    let resp = in_flight.await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "the in-flight request was cut short: {}",
        resp.text()
    );
    let status = loop {
        if let Some(status) = h.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "did not exit within the drain deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_request_timeout_accepted_does_not_overflow() {
    // 100 years: the request's deadline (`Instant + d`) must not panic.
    let h = start_with_limits("request_timeout = \"876000h\"").await;
    let resp = h.send("POST", &messages(), &[], b"").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_can_turn_the_access_log_off_on_its_own() {
    let mut quiet = sidecar_command();
    quiet.env("TWILIO_SIDECAR_LOG", "info,twilio_sidecar::access=off");
    let h = Harness::start_as(quiet, stand_in().await, |ctx| {
        standard_config(ctx, "", POLICY)
    })
    .await;
    for id in ["req-off-1", "req-off-2"] {
        let resp = h
            .send("POST", &messages(), &[("X-Request-Id", id)], b"")
            .await;
        assert_eq!(resp.status, 200);
    }
    // Lines wait at most 5 ms for their batch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = h.logs().join("\n");
    assert!(logs.contains("proxy listening"), "{logs}");
    assert!(!logs.contains("twilio_sidecar::access"), "{logs}");
    assert!(!logs.contains("req-off"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_with_every_field_and_nothing_secret() {
    let h = Harness::start().await;
    let target = format!("{}?To=%2B15005550006&secret_query=hunter2", messages());
    let resp = h
        .send(
            "POST",
            &target,
            &[
                ("X-Request-Id", "req-42"),
                ("Authorization", "Basic YXBwOmFwcA=="),
            ],
            b"Body=do-not-log",
        )
        .await;
    assert_eq!(resp.status, 200);
    h.send("GET", "/v2/Nope", &[("X-Request-Id", "req-43")], b"")
        .await;
    let logs = h.logs_after("req-43").await;
    let access: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|v| v["target"] == "twilio_sidecar::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    let line = &access[0];
    for (field, want) in [
        ("request_id", "req-42"),
        ("method", "POST"),
        ("host", "api.twilio.com"),
        ("path", messages().as_str()),
        (
            "rule",
            "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
        ),
        ("decision", "allow"),
        ("account", SID),
        ("twilio_request_id", "RQ00000000000000000000000000000000"),
    ] {
        assert_eq!(line[field], want, "{field} in {line}");
    }
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    assert_eq!(access[1]["decision"], "deny");
    assert_eq!(access[1]["status"], 403);
    let all = logs.join("\n");
    for needle in [
        "secret_query",
        "hunter2",
        "%2B15005550006",
        "do-not-log",
        "YXBwOmFwcA==",
        SECRET,
        TOKEN2,
    ] {
        assert!(!all.contains(needle), "the logs contain {needle}");
    }
    for needle in secret_needles() {
        assert!(!all.contains(&needle));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_listener_serves_requests() {
    let h = Harness::start_with(|ctx| {
        standard_config(ctx, "", POLICY).replacen(
            "address = \"127.0.0.1:0\"",
            "address = \"127.0.0.1:0\"\nunix = \"proxy.sock\"\nunix_mode = \"0600\"",
            1,
        )
    })
    .await;
    let path = h.dir.path().join("proxy.sock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nConnection: close\r\n\r\nBody",
        messages()
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let got = h.stand_in.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header_values("authorization"),
        vec![expected_authorization()]
    );
    assert_eq!(got[0].body, Bytes::from_static(b"Body"));
}
