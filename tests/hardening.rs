//! Regression tests for the second adversarial review (issue 16), against the real binary:
//! override headers in every spelling never reach Twilio (only the headers Twilio's APIs use
//! are forwarded); web pages cannot drive the proxy.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use twilio_sidecar::dev::stand_in::Reply;

use common::*;

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

#[tokio::test]
async fn only_headers_twilio_uses_are_forwarded_whatever_the_spelling_of_the_rest() {
    let h = Harness::start_with(|ctx| {
        standard_config(ctx, "forward_headers = [\"X-Trace-Id\"]", POLICY)
    })
    .await;
    let sneaky = [
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-HTTP_Method-Override", "DELETE"),
        ("X_Method_Override", "DELETE"),
        ("X_Original_URL", "/2010-04-01/Accounts/AC1/Keys.json"),
        ("X_Rewrite_URL", "/2010-04-01/Accounts/AC1/Keys.json"),
        ("X-Forwarded-Method", "DELETE"),
        ("X-Original-URI", "/2010-04-01/Accounts/AC1/Keys.json"),
        ("X-Forwarded-Uri", "/2010-04-01/Accounts/AC1/Keys.json"),
        (
            "X-Envoy-Original-Path",
            "/2010-04-01/Accounts/AC1/Keys.json",
        ),
        ("X-Rewrite-URI", "/2010-04-01/Accounts/AC1/Keys.json"),
        ("Cookie", "session=1"),
        ("Twilio-Client-Validation", "forged.jwt"),
    ];
    let kept = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("User-Agent", "twilio-python/9.13.0"),
        ("Accept", "application/json"),
        ("Accept-Charset", "utf-8"),
        ("X-Twilio-Client", "python-9.13.0"),
        ("I-Twilio-Idempotency-Token", "idem-1"),
        ("X-Trace-Id", "trace-1"),
    ];
    let headers: Vec<(&str, &str)> = sneaky.iter().chain(kept.iter()).copied().collect();
    let resp = h
        .send("POST", &messages(), &headers, b"To=%2B15558675310")
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = h.stand_in.requests().pop().unwrap();
    for (name, _) in sneaky {
        assert!(r.header_values(name).is_empty(), "{name} reached Twilio");
    }
    for (name, value) in kept {
        assert_eq!(r.header_values(name), [value], "{name} was not forwarded");
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("twilio_sidecar_request_headers_dropped_total 12"),
        "{metrics}"
    );
}

#[tokio::test]
async fn web_pages_cannot_drive_the_proxy() {
    let h = Harness::start().await;
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let body = b"To=%2B15558675310&Body=hi";
    // A cross-site form post (no preflight needed), and fetch() metadata.
    for browser in [
        ("Origin", "https://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "no-cors"),
    ] {
        let resp = h.send("POST", &messages(), &[form, browser], body).await;
        assert_eq!(resp.twilio_error(403), 79407, "{browser:?}");
    }
    // DNS rebinding: the page's own name, with same-origin metadata stripped or not.
    for host in [
        "rebind.evil.example:8080",
        "evil.example",
        "api.twilio.com.evil.example",
    ] {
        let resp = h
            .send("POST", &messages(), &[form, ("Host", host)], body)
            .await;
        assert_eq!(resp.twilio_error(403), 79407, "{host}");
        assert!(resp.text().contains("listen.names"), "{}", resp.text());
    }
    assert!(
        h.stand_in.requests().is_empty(),
        "a browser's request reached Twilio"
    );
    // What SDKs send still works: the sidecar's address, localhost, a Twilio host.
    for host in [
        h.proxy.to_string(),
        "localhost:8080".into(),
        "[::1]:8080".into(),
        "api.twilio.com".into(),
    ] {
        let resp = h
            .send("POST", &messages(), &[form, ("Host", &host)], body)
            .await;
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("twilio_sidecar_browser_refusals_total 7"),
        "{metrics}"
    );
}

#[tokio::test]
async fn web_pages_cannot_reload_or_read_the_admin_port() {
    let h = Harness::start().await;
    let admin = h.admin;
    let request = |head: String| async move { raw_request(admin, head.as_bytes()).await };
    let reloads = || async {
        let m = h.metrics().await;
        m.lines()
            .filter(|l| l.starts_with("twilio_sidecar_config_reloads_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let before = reloads().await;

    // A cross-site form post from a page: Origin, a simple content type and a body.
    let resp = request(format!(
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    ))
    .await;
    assert_eq!(resp.twilio_error(403), 79409);
    let resp = request(format!(
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(resp.twilio_error(403), 79409);
    // Without Origin (an old browser, a redirect), a form or text body is still refused.
    for (content_type, body) in [
        ("text/plain", "x"),
        ("application/x-www-form-urlencoded", ""),
        ("multipart/form-data; boundary=b", ""),
        ("TEXT/PLAIN;charset=utf-8", ""),
    ] {
        let resp = request(format!(
            "POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert_eq!(resp.twilio_error(415), 79411, "{content_type}");
    }
    let resp = request(format!(
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    ))
    .await;
    assert_eq!(resp.twilio_error(415), 79411);
    assert_eq!(reloads().await, before, "a refused POST /reload reloaded");

    // DNS rebinding: /config and /metrics under the page's own name are refused, and the
    // refusal shows nothing of the config.
    for path in ["/config", "/metrics", "/readyz"] {
        let resp = request(format!(
            "GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{}\r\nConnection: close\r\n\r\n",
            admin.port()
        ))
        .await;
        assert_eq!(resp.twilio_error(403), 79409, "{path}");
        assert!(!resp.text().contains(SID), "{}", resp.text());
        assert!(resp.text().contains("listen.names"), "{}", resp.text());
    }

    // What probes, scrapers and operators send still works.
    for host in [
        admin.to_string(),
        format!("localhost:{}", admin.port()),
        format!("[::1]:{}", admin.port()),
        "sidecar.local".to_string(),
    ] {
        let resp = request(format!(
            "GET /config HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
    }
    // A browser may still look at the pages (a navigation is a GET).
    let resp = request(format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost:{}\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nConnection: close\r\n\r\n",
        admin.port()
    ))
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(post_reload(admin).await.status, 200);
    let resp = request(
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(reloads().await, before + 2);

    let metrics = h.metrics().await;
    for (reason, n) in [("browser", 2), ("reload_body", 5), ("host", 3)] {
        assert!(
            metrics.contains(&format!(
                "twilio_sidecar_admin_refusals_total{{reason=\"{reason}\"}} {n}"
            )),
            "{reason}: {metrics}"
        );
    }
}

/// A GET that may fail at any step (the server may close it at once): its status, if any.
async fn try_get(addr: std::net::SocketAddr, target: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// The standard config and policy with a `[limits]` table.
async fn start_with_limits(limits: &str) -> Harness {
    Harness::start_with(|ctx| standard_config(ctx, "", &format!("{POLICY}\n[limits]\n{limits}")))
        .await
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_complete_a_request_are_closed_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let h = start_with_limits("header_read_timeout = \"1s\"").await;
    let openings: [(&str, &[u8]); 6] = [
        ("nothing", b""),
        ("one byte", b"P"),
        ("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("the HTTP/2 preface and SETTINGS", H2_PREFACE_AND_SETTINGS),
        (
            "half a request head",
            b"GET /2010-04-01 HTTP/1.1\r\nHost: localhost\r\n",
        ),
        ("a request line only", b"GET / HTTP/1.1\r\n"),
    ];
    let mut sockets = Vec::new();
    for (what, bytes) in openings {
        let mut s = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        s.write_all(bytes).await.unwrap();
        sockets.push((format!("proxy: {what}"), s));
    }
    for (what, bytes) in [("nothing", &b""[..]), ("one byte", b"G")] {
        let mut s = tokio::net::TcpStream::connect(h.admin).await.unwrap();
        s.write_all(bytes).await.unwrap();
        sockets.push((format!("admin: {what}"), s));
    }
    // Bounded well past the 1 s timeout: a connection still open at 10 s was never going to
    // be closed.
    for (what, mut s) in sockets {
        assert!(
            closed_by_peer(&mut s, std::time::Duration::from_secs(10)).await,
            "{what}: still open"
        );
    }
    // The process serves on, and what it closed is counted.
    assert_eq!(h.send("GET", &messages(), &[], b"").await.status, 200);
    let metrics = h.metrics().await;
    let closed = |listener: &str| {
        let series = format!(
            "twilio_sidecar_connections_closed_total{{listener=\"{listener}\",reason=\"no_request\"}}"
        );
        metric(&metrics, &series)
    };
    // hyper itself closes the two with a partial HTTP/1.1 head (its header timeout).
    assert!(closed("proxy") >= 4, "{metrics}");
    assert!(closed("admin") >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_sent_goaway_and_closed() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let h = start_with_limits("header_read_timeout = \"1s\"\nidle_timeout = \"1s\"").await;
    let stream = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}{}", h.proxy, messages()))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    // Nothing more: the sidecar closes it (GOAWAY first, so the client knows not to use it).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    assert!(sender.is_closed() || sender.ready().await.is_err());
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(
            "twilio_sidecar_connections_closed_total{listener=\"proxy\",reason=\"idle\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_meets_the_cap_and_health_checks_still_answer() {
    // 300 silent sockets against a 256-descriptor limit, with the caps left at their
    // defaults (derived from that limit).
    let h = Harness::start_with_fd_limit(256, |ctx| {
        let limits = "[limits]\nheader_read_timeout = \"2s\"\n";
        standard_config(ctx, "", &format!("{POLICY}\n{limits}"))
    })
    .await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(h.proxy).await {
            flood.push(s);
        }
    }
    // Probes and scrapes have their own slots.
    let live = h.admin_get("/livez").await;
    assert_eq!(live.status, 200, "{}", live.text());
    let metrics = h.metrics().await;
    let refused = metric(
        &metrics,
        "twilio_sidecar_connections_refused_total{listener=\"proxy\"}",
    );
    assert!(refused > 0, "the flood never met the cap: {metrics}");
    // Once the header timeout has closed the silent ones, apps are served again; and the
    // flood never exhausted the descriptors the sidecar needs to reach Twilio.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if try_get(h.proxy, &messages()).await == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "proxy never recovered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(flood);
    assert!(
        !h.logs().iter().any(|l| l.contains("Too many open files")),
        "descriptors ran out: {:?}",
        h.logs()
    );
}

/// A Conversations page of about `size` bytes whose `meta` links the sidecar rewrites.
fn large_page(size: usize) -> Bytes {
    let record = format!(
        r#"{{"sid": "CH00000000000000000000000000000000", "attributes": "{}"}}"#,
        "a".repeat(1000)
    );
    let records = vec![record.as_str(); size / (record.len() + 2)].join(", ");
    Bytes::from(format!(
        r#"{{"conversations": [{records}], "meta": {{"page": 0, "page_size": 1000, "key": "conversations", "url": "https://conversations.twilio.com/v1/Conversations?PageSize=1000&Page=0", "first_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=1000&Page=0", "previous_page_url": null, "next_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=1000&Page=1&PageToken=PT1"}}}}"#
    ))
}

/// A metric's value (the first series starting with `series`), 0 when absent.
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cannot_pin_list_pages() {
    use tokio::io::AsyncWriteExt;
    let page = large_page(2_500_000);
    let len = page.len() as u64;
    let policy = POLICY.replace(
        "allow = [",
        "allow = [\n  \"GET conversations.twilio.com /v1/Conversations*\",",
    );
    // Room for two pages, not three; apps that read nothing are cut off after 5 s.
    let limits = format!(
        "[limits]\nmax_rewrite_buffer = {}\nwrite_timeout = \"5s\"\n",
        len * 5 / 2
    );
    let h =
        Harness::start_with(|ctx| standard_config(ctx, "", &format!("{policy}\n{limits}"))).await;
    h.stand_in.set_responder(move |_| Reply {
        status: StatusCode::OK,
        headers: vec![("content-type".into(), "application/json".into())],
        body: page.clone(),
        delay: Duration::ZERO,
    });
    let target = "/conversations.twilio.com/v1/Conversations?PageSize=1000";
    let head = format!("GET {target} HTTP/1.1\r\nHost: sidecar.local\r\n\r\n");

    // Two apps ask for the page and read nothing. Socket buffers on loopback grow to a few
    // MiB and would take a whole page, so each asks three times in a row (pipelined): one
    // of its pages at least is left in the sidecar.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(h.proxy).await.unwrap();
        s.write_all(head.repeat(3).as_bytes()).await.unwrap();
        stuck.push(s);
    }
    // Once each stuck connection holds a page, a third page would pass the budget: refused,
    // retryable, counted. (On the way there a connection may briefly hold two pages, one of
    // them only until hyper has flushed it: until the holding settles, a third may fit.)
    let held = "twilio_sidecar_paging_rewrite_buffer_bytes";
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        if metric(&h.metrics().await, held) >= 2 * len {
            let resp = h
                .send("GET", target, &[("Host", "sidecar.local")], b"")
                .await;
            if resp.status == 503 {
                assert_eq!(resp.twilio_error(503), 79431);
                assert_eq!(resp.header("retry-after"), Some("1"));
                break;
            }
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        assert!(Instant::now() < deadline, "{}", h.metrics().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The readers that read nothing are cut off, which gives their pages back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = h.metrics().await;
        let cut = metric(
            &m,
            "twilio_sidecar_connections_closed_total{listener=\"proxy\",reason=\"write_timeout\"}",
        );
        if cut == 2 && metric(&m, held) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut s in stuck {
        assert!(closed_by_peer(&mut s, Duration::from_secs(5)).await);
    }
    // An app that reads gets the whole page, its links pointing back here.
    let resp = h
        .send("GET", target, &[("Host", "sidecar.local")], b"")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["meta"]["next_page_url"],
        "http://sidecar.local/conversations.twilio.com/v1/Conversations?PageSize=1000&Page=1&PageToken=PT1"
    );
    let m = h.metrics().await;
    assert!(metric(&m, "twilio_sidecar_paging_rewrite_buffer_full_total") >= 1);
    assert_eq!(metric(&m, held), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pathological_rules_against_adversarial_segments_are_decided_at_once() {
    // Backtracking took ~4 s and ~31 s of one serving thread for these; matching is now
    // bounded by segment × pattern length (the step-counting tests are in gate::policy::rule).
    let policy = POLICY.replace(
        "allow = [",
        "allow = [\n  \"GET verify.twilio.com /v2/Services/{Sid}-{Key}-{Day}.json\",\n  \"GET verify.twilio.com /v2/Services/*.*.*.json\",",
    );
    let h = Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await;
    for segment in ["-".repeat(1_700), ".".repeat(3_000) + "x"] {
        let target = format!("/verify.twilio.com/v2/Services/{segment}");
        let resp = h.send("GET", &target, &[], b"").await;
        assert_eq!(resp.twilio_error(403), 70051);
    }
    // And they still match what they should.
    for target in [
        "/verify.twilio.com/v2/Services/2026-11-26.json",
        "/verify.twilio.com/v2/Services/a.b.c.json",
    ] {
        assert_eq!(
            h.send("GET", target, &[], b"").await.status,
            200,
            "{target}"
        );
    }
    assert_eq!(h.stand_in.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_into_a_watched_directory_does_not_feed_itself() {
    // stderr goes to a file beside the config, in the directory the sidecar watches; every
    // line written there is a file-system event.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key_sid"), format!("{KEY_SID}\n")).unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let config = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "key_sid" }}, secret = {{ file = "secret" }} }}
{POLICY}
"#
    );
    std::fs::write(dir.path().join("sidecar.toml"), config).unwrap();
    let log = dir.path().join("sidecar.log");
    let mut child = sidecar_command()
        .args(["--log-level", "trace", "run", "--config"])
        .arg(dir.path().join("sidecar.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("admin listening")
    {
        assert!(Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle for two seconds: a few lines at most, not megabytes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = size();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = size() - before;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        grown < 64 * 1024,
        "the idle sidecar logged {grown} bytes in 2 s"
    );
    assert!(
        !text.contains("notify::inotify"),
        "{}",
        &text[..text.len().min(2000)]
    );
    // The sidecar's own trace logging is still on.
    assert!(text.contains("twilio_sidecar::"), "{text}");
}
