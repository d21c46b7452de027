//! An app's kept-alive HTTP/1.1 connection across refusals, against the real binary: a
//! request refused before its body was read must leave the connection either ready for the
//! next request (the body read and dropped) or plainly closing (`Connection: close`) — never
//! closed under the app's next request with no word (what twilio-python met as
//! `RemoteDisconnected`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{Either, Empty};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use twilio_sidecar::dev::stand_in::{echo, Reply};

/// Denied by the standard policy (70051).
fn keys() -> String {
    format!("/2010-04-01/Accounts/{SID}/Keys.json")
}

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

/// A kept-alive POST's head, announcing `framing` (`Content-Length: n` or chunked).
fn post_head(target: &str, framing: &str) -> String {
    format!("POST {target} HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n")
}

/// The next request on the same connection is answered: the connection was kept.
async fn next_request_is_served(stream: &mut TcpStream) {
    let body = "To=%2B15005550006&Body=next";
    let head = post_head(&messages(), &format!("Content-Length: {}", body.len()));
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let resp = read_response(stream).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_small_body_leaves_its_connection_ready() {
    let h = Harness::start().await;
    let body = "FriendlyName=stolen";
    let framing = format!("Content-Length: {}", body.len());
    // Head and body together, head and body apart (the body arriving after the policy has
    // refused), and a chunked body: each refused, each connection kept.
    let mut together = TcpStream::connect(h.proxy).await.unwrap();
    let request = format!("{}{body}", post_head(&keys(), &framing));
    together.write_all(request.as_bytes()).await.unwrap();
    let mut apart = TcpStream::connect(h.proxy).await.unwrap();
    apart
        .write_all(post_head(&keys(), &framing).as_bytes())
        .await
        .unwrap();
    let mut chunked = TcpStream::connect(h.proxy).await.unwrap();
    chunked
        .write_all(post_head(&keys(), "Transfer-Encoding: chunked").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    apart.write_all(body.as_bytes()).await.unwrap();
    chunked
        .write_all(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    for stream in [&mut together, &mut apart, &mut chunked] {
        let resp = read_response(stream).await;
        assert_eq!(resp.twilio_error(403), 70051);
        assert_eq!(resp.header("connection"), None);
        next_request_is_served(stream).await;
    }
    // Only the three follow-ups reached Twilio.
    assert_eq!(h.stand_in.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_cannot_read_the_body_says_the_connection_closes() {
    let h = Harness::start().await;
    // A body that never comes: refused once the discard wait is over, and closed.
    let mut silent = TcpStream::connect(h.proxy).await.unwrap();
    silent
        .write_all(post_head(&keys(), "Content-Length: 10").as_bytes())
        .await
        .unwrap();
    // A body held back for `100 Continue`: refused at once, without asking for it.
    let mut waiting = TcpStream::connect(h.proxy).await.unwrap();
    let head = post_head(&keys(), "Content-Length: 5\r\nExpect: 100-continue");
    waiting.write_all(head.as_bytes()).await.unwrap();
    // A body larger than is worth reading to keep a connection.
    let mut large = TcpStream::connect(h.proxy).await.unwrap();
    let size = 256 * 1024;
    let mut request = post_head(&keys(), &format!("Content-Length: {size}")).into_bytes();
    request.resize(request.len() + size, b'x');
    let writer = tokio::spawn(async move {
        // The sidecar may close before taking it all.
        let _ = large.write_all(&request).await;
        large
    });

    let started = Instant::now();
    let resp = read_response(&mut waiting).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a body held back for 100 Continue was waited for"
    );
    assert_eq!(resp.twilio_error(403), 70051);
    assert!(!String::from_utf8_lossy(&resp.raw).contains("100 Continue"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_by_peer(&mut waiting, Duration::from_secs(5)).await);

    let resp = read_response(&mut silent).await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_by_peer(&mut silent, Duration::from_secs(5)).await);

    let mut large = writer.await.unwrap();
    let resp = read_response(&mut large).await;
    assert_eq!(resp.twilio_error(403), 70051);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_by_peer(&mut large, Duration::from_secs(5)).await);
    assert!(h.stand_in.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_request_with_a_body_says_the_connection_closes() {
    let policy = format!("{POLICY}\n[limits]\nmax_concurrent_requests = 1\n");
    let h = Arc::new(Harness::start_with(|ctx| standard_config(ctx, "", &policy)).await);
    h.stand_in.set_responder(|r| Reply {
        delay: Duration::from_millis(1500),
        ..echo(r)
    });
    let busy = {
        let h = h.clone();
        tokio::spawn(async move { h.send("POST", &messages(), &[], b"").await.status })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stand_in.requests().is_empty() {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shedding reads nothing: with a body the connection closes, without one it is kept.
    let mut with_body = TcpStream::connect(h.proxy).await.unwrap();
    let request = format!("{}Body=hi", post_head(&messages(), "Content-Length: 7"));
    with_body.write_all(request.as_bytes()).await.unwrap();
    let resp = read_response(&mut with_body).await;
    assert_eq!(resp.twilio_error(503), 79429);
    assert_eq!(resp.header("connection"), Some("close"));
    let mut without = TcpStream::connect(h.proxy).await.unwrap();
    let request = format!("GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n", messages());
    without.write_all(request.as_bytes()).await.unwrap();
    let resp = read_response(&mut without).await;
    assert_eq!(resp.twilio_error(503), 79429);
    assert_eq!(resp.header("connection"), None);
    assert_eq!(busy.await.unwrap(), 200);
    h.stand_in.set_responder(echo);
    next_request_is_served(&mut without).await;
}

/// A request body that never arrives.
struct NeverEnds;

impl hyper::body::Body for NeverEnds {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_refusal_never_waits_for_the_body() {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let h = Harness::start().await;
    let stream = TcpStream::connect(h.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let denied = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{}", h.proxy, keys()))
        .body(Either::Left(NeverEnds))
        .unwrap();
    let started = Instant::now();
    let resp = sender.send_request(denied).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "an HTTP/2 refusal waited for a body it does not need"
    );
    assert_eq!(resp.headers().get("connection"), None);
    // The stream is done with; the connection carries the next request.
    let next = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}{}", h.proxy, messages()))
        .body(Either::Right(Empty::new()))
        .unwrap();
    assert_eq!(sender.send_request(next).await.unwrap().status(), 200);
}
