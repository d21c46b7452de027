//! The sidecar's own HTTP/1.1 exchange with Twilio, against a raw TLS server that writes
//! Twilio's side byte for byte: chunked and close-delimited bodies arrive whole, an ambiguously
//! framed response is refused and its connection dropped, a close-delimited body cut without
//! TLS close_notify is an error, an idle connection Twilio closed is
//! noticed before a request is put on it; then the whole binary streaming large bodies both
//! ways to an HTTP/1.1-only Twilio.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twilio_sidecar::dev::stand_in::{StandIn, ThrowawayPki};
use twilio_sidecar::upstream::{RequestBody, Upstream, UpstreamFailure};

const HOST: &str = "api.twilio.com";

/// What the raw server does after answering a request.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    /// Closes the TCP connection without a TLS close_notify.
    Drop,
    /// Sends close_notify, then closes.
    Shutdown,
}

/// A raw HTTP/1.1 TLS server: for the n-th request over all connections (0-based), writes
/// `script(n).0` and then does `script(n).1`. Counts connections and keeps each request head.
struct RawTwilio {
    addr: std::net::SocketAddr,
    pki: ThrowawayPki,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn raw_twilio(script: fn(usize) -> (&'static [u8], After)) -> RawTwilio {
    let pki = ThrowawayPki::new(&[HOST]).expect("pki");
    let acceptor = tls_acceptor(&pki, &[b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = RawTwilio {
        addr: listener.local_addr().unwrap(),
        pki,
        connections: Arc::new(AtomicUsize::new(0)),
        heads: Arc::new(Mutex::new(Vec::new())),
    };
    let (connections, heads) = (raw.connections.clone(), raw.heads.clone());
    let served = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, heads, served) = (acceptor.clone(), heads.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read_u8().await {
                            Ok(b) => head.push(b),
                            Err(_) => return,
                        }
                    }
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let (reply, after) = script(served.fetch_add(1, Ordering::SeqCst));
                    if tls.write_all(reply).await.is_err() {
                        return;
                    }
                    match after {
                        After::KeepOpen => {}
                        After::Drop => return,
                        After::Shutdown => {
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    raw
}

impl RawTwilio {
    fn upstream(&self) -> Upstream {
        let settings = upstream_settings(self.addr, Duration::from_secs(60), 8);
        Upstream::new(&settings, 1, std::slice::from_ref(&self.pki.ca_der)).expect("upstream")
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn get(path: &str) -> Request<RequestBody> {
    Request::get(format!("https://{HOST}{path}"))
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap()
}

/// Sends a GET; the status and the whole body, or the failure.
async fn fetch(up: &Upstream, path: &str) -> Result<(StatusCode, Bytes), UpstreamFailure> {
    let response = up.send(get(path)).await?;
    let status = response.status();
    let body = response.into_body().collect().await.expect("body");
    Ok((status, body.to_bytes()))
}

#[tokio::test]
async fn chunked_and_close_delimited_bodies_arrive_whole() {
    let raw = raw_twilio(|n| match n {
        0 | 1 => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1,\r\n6;ext=1\r\n\"b\":2}\r\n0\r\nX-Trailer: t\r\n\r\n",
            After::KeepOpen,
        ),
        2 => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", After::Shutdown),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\ncut he", After::Drop),
    })
    .await;
    let up = raw.upstream();
    for _ in 0..2 {
        let (status, body) = fetch(&up, "/v1/chunked").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"a":1,"b":2}"#);
    }
    assert_eq!(
        raw.connections(),
        1,
        "a chunked response leaves the connection reusable"
    );
    let (_, body) = fetch(&up, "/v1/until-close").await.unwrap();
    assert_eq!(body, "until the end");
    assert_eq!(
        up.idle_connections(),
        0,
        "a close-delimited body ends its connection"
    );
    // Without TLS's close_notify, the end of the stream may be an attacker's cut: an error,
    // not a shorter body.
    let response = up.send(get("/v1/truncated")).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    let heads = raw.heads.lock().unwrap().clone();
    assert!(
        heads[0].starts_with("GET /v1/chunked HTTP/1.1\r\nhost: api.twilio.com\r\n"),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn an_ambiguously_framed_response_is_refused_and_its_connection_dropped() {
    let raw = raw_twilio(|n| match n {
        // Read by Content-Length, a smuggled second response would follow the body; read as
        // chunked, the body would end elsewhere. Neither is guessed at.
        0 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            After::KeepOpen,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine", After::KeepOpen),
    })
    .await;
    let up = raw.upstream();
    assert_eq!(
        fetch(&up, "/v1/a").await.unwrap_err(),
        UpstreamFailure::Protocol
    );
    let (status, body) = fetch(&up, "/v1/b").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fine"[..]));
    assert_eq!(
        raw.connections(),
        2,
        "the refused response's connection was not reused"
    );
}

#[tokio::test]
async fn an_idle_connection_twilio_closed_is_noticed_before_it_is_used() {
    for after in [After::Drop, After::Shutdown] {
        let raw = match after {
            After::Drop => {
                raw_twilio(|_| {
                    (
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        After::Drop,
                    )
                })
                .await
            }
            _ => {
                raw_twilio(|_| {
                    (
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        After::Shutdown,
                    )
                })
                .await
            }
        };
        let up = raw.upstream();
        for i in 0..4 {
            // Twilio's close reaches the sidecar while the connection sits idle.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = fetch(&up, "/v1/again").await;
            assert!(got.is_ok(), "request {i} after a close: {got:?}");
        }
        assert_eq!(raw.connections(), 4);
    }
}

#[tokio::test]
async fn a_response_head_that_never_ends_is_refused() {
    let raw = raw_twilio(|_| {
        static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let huge = HUGE.get_or_init(|| {
            let mut h = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
            h.resize(70 * 1024, b'a');
            h
        });
        (huge.as_slice(), After::KeepOpen)
    })
    .await;
    let up = raw.upstream();
    assert_eq!(
        fetch(&up, "/v1/huge").await.unwrap_err(),
        UpstreamFailure::Protocol
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_to_an_http1_only_twilio() {
    let pki = ThrowawayPki::new(&[HOST]).expect("pki");
    let stand_in = StandIn::start_with_alpn(pki, "127.0.0.1:0".parse().unwrap(), &[b"http/1.1"])
        .await
        .expect("stand-in");
    let policy = format!("{POLICY}\n[limits]\nmax_request_body = 4194304\n");
    let h = Harness::start_against(stand_in, |ctx| standard_config(ctx, "", &policy)).await;
    // The body back, doubled: 3 MB down for 1.5 MB up.
    h.stand_in.set_responder(|r| doubled_echo(&r.body));
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let resp = h.send("POST", &path, &[], &big).await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body.len(), 3_000_000);
    assert!(resp.body[..1_500_000] == big[..] && resp.body[1_500_000..] == big[..]);
    // An empty POST still announces its length (Twilio answers a bare POST with 411).
    let resp = h.send("POST", &path, &[], b"").await;
    assert_eq!(resp.status, 201);
    let seen = h.stand_in.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0].body[..], &big[..]);
    assert_eq!(seen[1].header_values("content-length"), ["0"]);
    assert_eq!(seen[0].header_values("content-length"), ["1500000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_twilio_dropped_on_a_kept_alive_connection_is_resent_and_a_post_is_not() {
    // Requests 1 and 3 (0-based) are read and then the connection closes without an answer:
    // Twilio's keep-alive timer crossing the request.
    let raw = raw_twilio(|n| match n {
        1 | 3 => (b"", After::Drop),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            After::KeepOpen,
        ),
    })
    .await;
    let (addr, ca_pem) = (raw.addr, raw.pki.ca_pem.clone());
    let h = Harness::start_with(|ctx| {
        write(&ctx.dir, "ca.pem", &ca_pem);
        // One serving thread, so every request finds the connection the last one used.
        let head = listeners_and_upstream(ctx)
            .replace("[admin]", "workers = 1\n\n[admin]")
            .replace(&ctx.stand_in.to_string(), &addr.to_string());
        standard_config(ctx, "", POLICY).replace(&listeners_and_upstream(ctx), &head)
    })
    .await;
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    assert_eq!(h.send("GET", &path, &[], b"").await.status, 200);
    assert_eq!(h.send("GET", &path, &[], b"").await.status, 200, "resent");
    assert_eq!(raw.connections(), 2);
    // A POST may have sent a message: it is not sent twice.
    h.send("POST", &path, &[], b"Body=hi")
        .await
        .twilio_error(502);
    assert_eq!(h.send("GET", &path, &[], b"").await.status, 200);
    assert_eq!(raw.heads.lock().unwrap().len(), 5);
}
