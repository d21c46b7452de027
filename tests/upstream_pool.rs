//! The upstream connection pool against a real TLS stand-in: HTTP/1.1 connections are reused,
//! handed back only when their response was read to the end, dropped when Twilio closes them
//! or they sit idle too long, capped per host; HTTP/2 shares a connection up to
//! `http2_max_streams` requests, opens another beyond that (one handshake for everyone
//! waiting), resends refused streams, and closes idle connections; failures are sorted into
//! the right `kind`. Then the whole binary against an HTTP/1.1-only Twilio.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use twilio_sidecar::config::UpstreamConfig;
use twilio_sidecar::dev::stand_in::{echo, StandIn, ThrowawayPki};
use twilio_sidecar::upstream::UpstreamFailure;
use twilio_sidecar::upstream::{RequestBody, Upstream};

const HOST: &str = "api.twilio.com";

async fn stand_in_http1_only() -> StandIn {
    let pki = ThrowawayPki::new(&[HOST, "verify.twilio.com"]).expect("pki");
    StandIn::start_with_alpn(pki, "127.0.0.1:0".parse().unwrap(), &[b"http/1.1"])
        .await
        .expect("stand-in")
}

fn settings(stand_in: &StandIn, idle_timeout: Duration, max_idle: usize) -> UpstreamConfig {
    upstream_settings(stand_in.addr(), idle_timeout, max_idle)
}

fn upstream(stand_in: &StandIn, idle_timeout: Duration, max_idle: usize) -> Upstream {
    Upstream::new(
        &settings(stand_in, idle_timeout, max_idle),
        1,
        &[stand_in.ca_der()],
    )
    .expect("upstream")
}

fn get(host: &str, path: &str) -> Request<RequestBody> {
    Request::get(format!("https://{host}{path}"))
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap()
}

/// Sends a GET and reads the whole body.
async fn fetch(up: &Upstream, path: &str) -> (StatusCode, Bytes) {
    let response = up.send(get(HOST, path)).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Waits (bounded) until `cond` holds; the pool hands connections back asynchronously.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http1_connection_is_reused_with_origin_form_and_the_twilio_host() {
    let stand_in = stand_in_http1_only().await;
    let up = upstream(&stand_in, Duration::from_secs(60), 8);
    for i in 0..20 {
        let (status, _) = fetch(&up, &format!("/2010-04-01/Accounts.json?Page={i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let seen = stand_in.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_11));
    assert!(seen.iter().all(|r| r.host.as_deref() == Some(HOST)));
    assert!(seen.iter().all(|r| r.sni.as_deref() == Some(HOST)));
    assert_eq!(seen[3].target, "/2010-04-01/Accounts.json?Page=3");
    assert_eq!(
        stand_in.connections(),
        1,
        "sequential requests share one connection"
    );
    assert_eq!(up.idle_connections(), 1);
    assert_eq!(up.reusable_connections(), 1);

    // Another host gets its own connection, with its own Host header.
    let response = up
        .send(get("verify.twilio.com", "/v2/Services"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(stand_in.connections(), 2);
    let last = stand_in.requests().pop().unwrap();
    assert_eq!(last.host.as_deref(), Some("verify.twilio.com"));
    assert_eq!(last.sni.as_deref(), Some("verify.twilio.com"));
}

#[tokio::test]
async fn a_response_left_unread_closes_its_connection() {
    let stand_in = stand_in_http1_only().await;
    let up = upstream(&stand_in, Duration::from_secs(60), 8);
    // The app went away before reading the body: the rest of it is still on the wire, so the
    // connection cannot carry another request.
    let response = up.send(get(HOST, "/v1/a")).await.unwrap();
    drop(response);
    assert_eq!(up.idle_connections(), 0);
    let (status, _) = fetch(&up, "/v1/b").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stand_in.connections(), 2);
    assert_eq!(up.idle_connections(), 1);
}

#[tokio::test]
async fn a_connection_twilio_closes_is_not_reused() {
    let stand_in = stand_in_http1_only().await;
    stand_in.set_responder(|r| {
        let mut reply = echo(r);
        reply.headers.push(("connection".into(), "close".into()));
        reply
    });
    let up = upstream(&stand_in, Duration::from_secs(60), 8);
    for i in 0..5 {
        let (status, _) = fetch(&up, &format!("/v1/close/{i}")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    assert_eq!(stand_in.connections(), 5);
    eventually("closed connections are not kept", || {
        up.idle_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let stand_in = stand_in_http1_only().await;
    let up = upstream(&stand_in, Duration::from_millis(100), 8);
    fetch(&up, "/v1/one").await;
    assert_eq!(up.idle_connections(), 1);
    eventually("the idle connection is closed", || {
        up.idle_connections() == 0
    })
    .await;
    // And the pool still works afterwards, on a new connection.
    fetch(&up, "/v1/two").await;
    assert_eq!(stand_in.connections(), 2);
    assert_eq!(up.idle_connections(), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_at_most_max_idle_are_kept() {
    let stand_in = stand_in_http1_only().await;
    stand_in.set_responder(|r| {
        let mut reply = echo(r);
        reply.delay = Duration::from_millis(200);
        reply
    });
    let up = std::sync::Arc::new(upstream(&stand_in, Duration::from_secs(60), 2));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let up = up.clone();
            tokio::spawn(async move { fetch(&up, &format!("/v1/c/{i}")).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // HTTP/1.1 carries one exchange at a time: eight at once need eight connections.
    assert_eq!(stand_in.connections(), 8);
    assert_eq!(
        up.idle_connections(),
        2,
        "pool_max_idle_per_host caps what is kept"
    );
    stand_in.set_responder(echo);
    fetch(&up, "/v1/after").await;
    fetch(&up, "/v1/after").await;
    assert_eq!(stand_in.connections(), 8, "the kept connections are reused");
}

#[tokio::test]
async fn http2_requests_share_one_connection() {
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let stand_in = StandIn::start_with(pki, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stand_in.set_responder(|r| {
        let mut reply = echo(r);
        reply.delay = Duration::from_millis(100);
        reply
    });
    let up = std::sync::Arc::new(upstream(&stand_in, Duration::from_secs(60), 8));
    // One request first, so the rest find the h2 connection rather than racing to open one.
    fetch(&up, "/v1/first").await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let up = up.clone();
            tokio::spawn(async move { fetch(&up, &format!("/v1/h2/{i}")).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(stand_in.connections(), 1);
    assert!(stand_in
        .requests()
        .iter()
        .all(|r| r.version == Version::HTTP_2 && r.host.as_deref() == Some(HOST)));
    assert_eq!(up.idle_connections(), 0, "h2 is shared, never leased");
    assert_eq!(
        up.reusable_connections(),
        1,
        "but it is ready for the next request"
    );
}

#[tokio::test]
async fn failures_are_sorted_by_kind() {
    // Nothing listening: connect.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stand_in = stand_in_http1_only().await;
    let mut s = settings(&stand_in, Duration::from_secs(60), 8);
    s.connect_to = Some(closed);
    let up = Upstream::new(&s, 1, &[stand_in.ca_der()]).unwrap();
    assert_eq!(
        up.send(get(HOST, "/v1/x")).await.unwrap_err(),
        UpstreamFailure::Connect
    );

    // A certificate from a CA the sidecar was not told to trust: tls, and nothing arrives.
    let untrusted = ThrowawayPki::new(&[HOST]).unwrap();
    let up = Upstream::new(
        &settings(&stand_in, Duration::from_secs(60), 8),
        1,
        std::slice::from_ref(&untrusted.ca_der),
    )
    .unwrap();
    assert_eq!(
        up.send(get(HOST, "/v1/x")).await.unwrap_err(),
        UpstreamFailure::Tls
    );
    assert!(stand_in.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_speaks_http1_to_an_http1_only_twilio() {
    let h = Harness::start_against(stand_in_http1_only().await, |ctx| {
        standard_config(ctx, "", POLICY)
    })
    .await;
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    for _ in 0..5 {
        let resp = h
            .send(
                "POST",
                &path,
                &[("Authorization", &basic("ACapp", "app-own-token"))],
                b"Body=hi",
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let seen = h.stand_in.requests();
    assert_eq!(seen.len(), 5);
    for r in &seen {
        assert_eq!(r.version, Version::HTTP_11);
        assert_eq!(r.host.as_deref(), Some(HOST));
        assert_eq!(r.target, path);
        assert_eq!(r.header_values("authorization"), [expected_authorization()]);
        assert_eq!(r.header_values("host").len(), 1);
        assert_eq!(&r.body[..], b"Body=hi");
    }
    // Five app connections, served one after another by (at most) one connection per serving
    // thread.
    assert!(
        h.stand_in.connections() <= 3,
        "{}",
        h.stand_in.connections()
    );
}

/// How the HTTP/2 upstream below turns away the requests on its first connections.
#[derive(Clone, Copy)]
enum Refusal {
    /// RST_STREAM REFUSED_STREAM on every stream: never processed.
    RefusedStream,
    /// A GOAWAY (NO_ERROR) before reading any stream: retiring the connection.
    GracefulGoaway,
    /// Reads the first stream, then GOAWAY with INTERNAL_ERROR: the request may have been
    /// processed.
    GoawayAfterReading,
}

/// A TLS HTTP/2-only upstream (the `h2` crate's server) that turns away every request on its
/// first `refusing` connections as `how` says, and answers later ones 200, recording bodies.
struct H2Upstream {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>,
    read_but_unanswered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

async fn h2_upstream(pki: &ThrowawayPki, how: Refusal, refusing: u64) -> H2Upstream {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let acceptor = tls_acceptor(pki, &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = H2Upstream {
        addr: listener.local_addr().unwrap(),
        connections: Arc::new(AtomicU64::new(0)),
        bodies: Arc::new(Mutex::new(Vec::new())),
        read_but_unanswered: Arc::new(AtomicU64::new(0)),
    };
    let (connections, bodies, unanswered) = (
        up.connections.clone(),
        up.bodies.clone(),
        up.read_but_unanswered.clone(),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
            let (acceptor, bodies, unanswered) =
                (acceptor.clone(), bodies.clone(), unanswered.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let refusing = n <= refusing;
                if refusing && matches!(how, Refusal::GracefulGoaway) {
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    while conn.accept().await.is_some() {}
                    return;
                }
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if refusing {
                        match how {
                            Refusal::RefusedStream => {
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                                continue;
                            }
                            _ => {
                                unanswered.fetch_add(1, Ordering::SeqCst);
                                conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                                while conn.accept().await.is_some() {}
                                drop((req, respond));
                                return;
                            }
                        }
                    }
                    let bodies = bodies.clone();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        bodies.lock().unwrap().push(Bytes::from(got));
                        let head = http::Response::builder().status(200).body(()).unwrap();
                        let mut send = respond.send_response(head, false).unwrap();
                        let _ = send.send_data(Bytes::from_static(b"{}"), true);
                    });
                }
            });
        }
    });
    up
}

fn upstream_at(addr: std::net::SocketAddr, pki: &ThrowawayPki) -> Upstream {
    upstream_with_streams(addr, pki, 100)
}

fn upstream_with_streams(
    addr: std::net::SocketAddr,
    pki: &ThrowawayPki,
    http2_max_streams: usize,
) -> Upstream {
    let s = UpstreamConfig {
        default_host: HOST.into(),
        allowed_hosts: vec![HOST.into()],
        connect_to: Some(addr),
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        pool_idle_timeout: Duration::from_secs(60),
        pool_max_idle_per_host: 8,
        http2_max_streams,
        queue_timeout: Duration::from_secs(5),
        max_queued: 1000,
        retry_429: 3,
        forward_headers: Vec::new(),
    };
    Upstream::new(&s, 1, std::slice::from_ref(&pki.ca_der)).expect("upstream")
}

fn post(path: &str, body: &'static str) -> Request<RequestBody> {
    Request::post(format!("https://{HOST}{path}"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Either::Right(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))))
        .unwrap()
}

#[tokio::test]
async fn a_refused_http2_stream_is_sent_again_with_its_body_on_a_new_connection() {
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = h2_upstream(&pki, Refusal::RefusedStream, 1).await;
    let up = upstream_at(twilio.addr, &pki);
    let response = up
        .send(post(
            "/2010-04-01/Accounts/AC1/Messages.json",
            "To=%2B1555&Body=hi",
        ))
        .await
        .expect("the refused stream is sent again, not failed");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    assert_eq!(
        twilio.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(
        *twilio.bodies.lock().unwrap(),
        vec![Bytes::from_static(b"To=%2B1555&Body=hi")],
        "processed exactly once, with the same body"
    );
    // Counted in the metrics the upstream was built with.
    assert_eq!(up.metrics().streams_resent.get(), 1);
}

#[tokio::test]
async fn requests_after_a_graceful_goaway_go_out_on_a_new_connection() {
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = h2_upstream(&pki, Refusal::GracefulGoaway, 1).await;
    let up = upstream_at(twilio.addr, &pki);
    for i in 0..3 {
        let response = up.send(get(HOST, &format!("/v1/after-goaway/{i}"))).await;
        let response = response.expect("not a 502 because Twilio retired a connection");
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(
        twilio.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(twilio.bodies.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_request_twilio_may_have_processed_is_not_sent_twice() {
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = h2_upstream(&pki, Refusal::GoawayAfterReading, 1).await;
    let up = upstream_at(twilio.addr, &pki);
    let failure = up
        .send(post("/2010-04-01/Accounts/AC1/Messages.json", "Body=once"))
        .await
        .expect_err("a GOAWAY with an error after reading the stream is not a refusal");
    assert_eq!(failure, UpstreamFailure::Protocol);
    assert_eq!(
        twilio
            .read_but_unanswered
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        twilio.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second attempt"
    );
    assert!(twilio.bodies.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refusals_are_retried_a_bounded_number_of_times() {
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = h2_upstream(&pki, Refusal::RefusedStream, u64::MAX).await;
    let up = upstream_at(twilio.addr, &pki);
    let failure = up.send(get(HOST, "/v1/always-refused")).await.unwrap_err();
    assert_eq!(failure, UpstreamFailure::Protocol);
    assert_eq!(
        twilio.connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the first attempt and two more, each on a new connection"
    );
}

/// An HTTP/2-only upstream that allows `max_streams` concurrent streams per connection and
/// holds the responses to `/together/` requests until `release_at` of them have arrived (or
/// 5 s pass), so a test can see how many requests the pool let out at once. `accept` says what
/// happens to the n-th connection (from 1).
#[derive(Clone, Copy)]
enum Accept {
    Serve,
    Close,
    Stall,
}

fn serve_all(_: u64) -> Accept {
    Accept::Serve
}

struct HoldingH2Upstream {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    most_in_flight: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

async fn holding_h2_upstream(
    pki: &ThrowawayPki,
    max_streams: u32,
    release_at: u64,
    accept: fn(u64) -> Accept,
) -> HoldingH2Upstream {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let acceptor = tls_acceptor(pki, &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = HoldingH2Upstream {
        addr: listener.local_addr().unwrap(),
        connections: Arc::new(AtomicU64::new(0)),
        most_in_flight: Arc::new(AtomicU64::new(0)),
    };
    let (connections, most) = (up.connections.clone(), up.most_in_flight.clone());
    let (in_flight, _) = tokio::sync::watch::channel(0u64);
    let in_flight = Arc::new(in_flight);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tcp = match accept(connections.fetch_add(1, Ordering::SeqCst) + 1) {
                Accept::Serve => tcp,
                Accept::Close => continue,
                Accept::Stall => {
                    // Never answers the TLS handshake; the socket stays open.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(tcp);
                    });
                    continue;
                }
            };
            let (acceptor, most, in_flight) = (acceptor.clone(), most.clone(), in_flight.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(tls)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (most, in_flight) = (most.clone(), in_flight.clone());
                    let held = req.uri().path().contains("/together/");
                    tokio::spawn(async move {
                        if held {
                            in_flight.send_modify(|n| *n += 1);
                            most.fetch_max(*in_flight.borrow(), Ordering::SeqCst);
                            let mut seen = in_flight.subscribe();
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                seen.wait_for(|n| *n >= release_at),
                            )
                            .await;
                        }
                        let head = http::Response::builder().status(200).body(()).unwrap();
                        let mut send = respond.send_response(head, false).unwrap();
                        let _ = send.send_data(Bytes::from_static(b"{}"), true);
                    });
                }
            });
        }
    });
    up
}

/// Sends `n` GETs at once and checks they all succeed.
async fn all_at_once(up: &std::sync::Arc<Upstream>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let up = up.clone();
            tokio::spawn(async move { fetch(&up, &format!("/v1/together/{i}")).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn requests_beyond_http2_max_streams_go_out_on_another_connection_not_into_a_queue() {
    use std::sync::atomic::Ordering;
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    // Twilio allows 2 streams a connection; 4 requests must all reach it at once.
    let twilio = holding_h2_upstream(&pki, 2, 4, serve_all).await;
    let up = std::sync::Arc::new(upstream_with_streams(twilio.addr, &pki, 2));
    // One request first, so the pool knows the host speaks h2.
    fetch(&up, "/v1/first").await;
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 1);
    all_at_once(&up, 4).await;
    assert_eq!(
        twilio.most_in_flight.load(Ordering::SeqCst),
        4,
        "requests waited behind the stream limit"
    );
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.reusable_connections(),
        2,
        "both are kept, with free streams"
    );
}

#[tokio::test]
async fn requests_needing_a_new_http2_connection_share_one_handshake() {
    use std::sync::atomic::Ordering;
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = holding_h2_upstream(&pki, 2, 7, serve_all).await;
    let up = std::sync::Arc::new(upstream_with_streams(twilio.addr, &pki, 2));
    fetch(&up, "/v1/first").await;
    // 7 at once over connections of 2 streams: 4 connections, the first one included — not
    // one handshake for every request that found the streams busy.
    all_at_once(&up, 7).await;
    assert_eq!(twilio.most_in_flight.load(Ordering::SeqCst), 7);
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn idle_http2_connections_close_after_the_idle_timeout() {
    use std::sync::atomic::Ordering;
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    let twilio = holding_h2_upstream(&pki, 2, 4, serve_all).await;
    let s = UpstreamConfig {
        default_host: HOST.into(),
        allowed_hosts: vec![HOST.into()],
        connect_to: Some(twilio.addr),
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        pool_idle_timeout: Duration::from_millis(300),
        pool_max_idle_per_host: 8,
        http2_max_streams: 2,
        queue_timeout: Duration::from_secs(5),
        max_queued: 1000,
        retry_429: 3,
        forward_headers: Vec::new(),
    };
    let up = std::sync::Arc::new(Upstream::new(&s, 1, std::slice::from_ref(&pki.ca_der)).unwrap());
    fetch(&up, "/v1/first").await;
    all_at_once(&up, 4).await;
    assert_eq!(up.reusable_connections(), 2);
    eventually("idle HTTP/2 connections are closed", || {
        up.reusable_connections() == 0
    })
    .await;
    fetch(&up, "/v1/after-idle").await;
    assert_eq!(
        twilio.connections.load(Ordering::SeqCst),
        3,
        "a new one after the idle close"
    );
}

#[tokio::test]
async fn a_failed_http2_handshake_fails_the_requests_waiting_for_it_too() {
    use std::sync::atomic::Ordering;
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    // The first connection works; every later one is closed during the handshake.
    let twilio = holding_h2_upstream(&pki, 2, 2, |n| {
        if n == 1 {
            Accept::Serve
        } else {
            Accept::Close
        }
    })
    .await;
    let up = std::sync::Arc::new(upstream_with_streams(twilio.addr, &pki, 2));
    fetch(&up, "/v1/first").await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let up = up.clone();
            tokio::spawn(async move { up.send(get(HOST, &format!("/v1/together/{i}"))).await })
        })
        .collect();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(response) => assert_eq!(response.status(), StatusCode::OK),
            Err(failure) => failures.push(failure),
        }
    }
    // Two fit on the first connection; the other two needed a new one, and its failure is
    // theirs — the second does not try (and wait for) a handshake of its own.
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0], failures[1]);
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn when_the_request_opening_an_http2_connection_gives_up_a_waiting_one_opens_its_own() {
    use std::sync::atomic::Ordering;
    let pki = ThrowawayPki::new(&[HOST]).unwrap();
    // The second connection's handshake never completes; the rest are served.
    let twilio = holding_h2_upstream(&pki, 1, 2, |n| {
        if n == 2 {
            Accept::Stall
        } else {
            Accept::Serve
        }
    })
    .await;
    let up = std::sync::Arc::new(upstream_with_streams(twilio.addr, &pki, 1));
    fetch(&up, "/v1/first").await;
    let send = |path: &'static str| {
        let up = up.clone();
        tokio::spawn(async move { up.send(get(HOST, path)).await })
    };
    // Takes the first connection's only stream (held until a second request arrives).
    let holder = send("/v1/together/holder");
    eventually("the first stream is taken", || {
        up.reusable_connections() == 0
    })
    .await;
    // Starts the second connection, which stalls; then one more waits for it.
    let opener = send("/v1/opener");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = send("/v1/together/waiter");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 2);
    // The opener's app goes away; the waiter must not wait on nothing.
    opener.abort();
    let response = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was left waiting")
        .unwrap()
        .expect("the waiter opened a connection of its own");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(twilio.connections.load(Ordering::SeqCst), 3);
}

/// The sum of a metric's series whose line starts with `prefix`.
fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Two bursts of 24 overlapping requests through one serving thread: with the default idle
/// cap the second reuses the first's connections; with a cap of 2 it opens ~22 again — churn,
/// visible in `upstream_connections_opened_total` — and reconnects resume TLS sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_reuse_connections_by_default_and_churn_shows_in_the_metrics() {
    async fn opened_per_burst(extra: &str) -> (u64, u64, String) {
        let stand_in = stand_in_http1_only().await;
        stand_in.set_responder(|r| twilio_sidecar::dev::stand_in::Reply {
            delay: Duration::from_millis(300),
            ..echo(r)
        });
        let h = std::sync::Arc::new(
            Harness::start_against(stand_in, |ctx| {
                standard_config(ctx, extra, POLICY)
                    .replace("names = [\"sidecar.local\"]", "names = []\nworkers = 1")
            })
            .await,
        );
        let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
        let opened = "twilio_sidecar_upstream_connections_opened_total{host=\"api.twilio.com\",reason=\"no_idle\"}";
        let mut per_burst = Vec::new();
        for _ in 0..2 {
            let before = metric_sum(&h.metrics().await, opened);
            let burst: Vec<_> = (0..24)
                .map(|_| {
                    let (h, path) = (h.clone(), path.clone());
                    tokio::spawn(async move { h.send("GET", &path, &[], b"").await.status })
                })
                .collect();
            for r in burst {
                assert_eq!(r.await.unwrap(), 200);
            }
            per_burst.push(metric_sum(&h.metrics().await, opened) - before);
        }
        (per_burst[0], per_burst[1], h.metrics().await)
    }

    // (On a loaded machine a burst may not overlap fully: the first can open a few fewer
    // than 24, and the second then opens at most the difference.)
    let (first, second, _) = opened_per_burst("").await;
    assert!(first >= 16, "the first burst opened {first}");
    assert!(
        first + second <= 24,
        "the second burst opened {second} with the default idle cap, after {first}"
    );

    let (first, second, metrics) = opened_per_burst("pool_max_idle_per_host = 2").await;
    assert!(first >= 16, "the first burst opened {first}");
    assert!(
        second >= 12,
        "with 2 kept idle the second burst opened only {second}"
    );
    let resumed = metric_sum(
        &metrics,
        "twilio_sidecar_upstream_tls_handshakes_total{host=\"api.twilio.com\",kind=\"resumed\"}",
    );
    // rustls keeps at most 8 single-use TLS 1.3 tickets per server name, so a burst of
    // reconnects resumes up to 8 sessions and the rest pay full handshakes.
    assert!(
        resumed >= 4,
        "reconnects did not resume TLS sessions: {metrics}"
    );
}
