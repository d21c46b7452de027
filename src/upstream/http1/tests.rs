//! The exchange against a scripted peer on an in-memory pipe: what goes on the wire, how each
//! framing ends, and when a connection may be reused.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

type Conn = Http1Connection<DuplexStream>;

fn pair() -> (Box<Conn>, DuplexStream) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    (Http1Connection::new(client), server)
}

fn request(method: Method, body: &'static [u8]) -> Request<RequestBody> {
    let mut req = Request::new(Either::Right(Full::new(Bytes::from_static(body))));
    *req.method_mut() = method;
    *req.uri_mut() = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?x=1"
        .parse()
        .unwrap();
    req.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    req
}

fn host() -> HeaderValue {
    HeaderValue::from_static("api.twilio.com")
}

/// Reads from the peer until `wanted` bytes have arrived.
async fn read_exactly(server: &mut DuplexStream, wanted: usize) -> String {
    let mut got = vec![0; wanted];
    server.read_exact(&mut got).await.unwrap();
    String::from_utf8(got).unwrap()
}

/// Reads a request head off the peer's side.
async fn skip_request_head(server: &mut DuplexStream) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(server.read_u8().await.unwrap());
    }
}

/// Reads `body` to its end or first error; the bytes, the error, and whether the connection
/// was withheld from reuse.
async fn read_to_end(mut body: Http1Body<DuplexStream>) -> (Vec<u8>, Option<Http1Error>, bool) {
    let mut data = Vec::new();
    let mut error = None;
    while let Some(piece) = std::future::poll_fn(|cx| body.poll_data(cx)).await {
        match piece {
            Ok(piece) => data.extend_from_slice(&piece),
            Err(e) => error = Some(e),
        }
    }
    (data, error, body.take_reusable().is_none())
}

/// Sends a GET, answers it with `wire` and closes the peer's side; what [`read_to_end`] saw.
async fn answer_then_close(wire: &'static [u8]) -> (Vec<u8>, Option<Http1Error>, bool) {
    let (conn, mut server) = pair();
    let reader = tokio::spawn(async move {
        let r = conn.send(request(Method::GET, b""), &host(), false).await;
        read_to_end(r.ok().unwrap().into_body()).await
    });
    skip_request_head(&mut server).await;
    server.write_all(wire).await.unwrap();
    drop(server);
    reader.await.unwrap()
}

/// Sends `req`, answers with `response` written in pieces of `step` bytes, and reads the
/// whole body. Returns the body (or its error) and the response's body for reuse checks.
async fn exchange(
    conn: Box<Conn>,
    server: &mut DuplexStream,
    req: Request<RequestBody>,
    response: &[u8],
    step: usize,
) -> (
    http::response::Parts,
    Result<Vec<u8>, Http1Error>,
    Http1Body<DuplexStream>,
) {
    let sent = tokio::spawn(async move {
        let r = conn.send(req, &host(), false).await;
        r.map_err(|e| match e {
            SendError::Unsent(_, e) | SendError::Failed(e) => e,
        })
    });
    skip_request_head(server).await;
    for piece in response.chunks(step) {
        server.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let response = sent.await.unwrap().unwrap();
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    let read = loop {
        match std::future::poll_fn(|cx| body.poll_data(cx)).await {
            Some(Ok(piece)) => data.extend_from_slice(&piece),
            Some(Err(e)) => break Err(e),
            None => break Ok(data),
        }
    };
    (parts, read, body)
}

#[tokio::test]
async fn writes_origin_form_with_host_and_length_and_reads_the_response() {
    let (conn, mut server) = pair();
    let peer = tokio::spawn(async move {
        let wanted = "POST /2010-04-01/Accounts/AC1/Messages.json?x=1 HTTP/1.1\r\n\
                      host: api.twilio.com\r\n\
                      content-type: application/x-www-form-urlencoded\r\n\
                      content-length: 7\r\n\r\nTo=%2B1";
        let got = read_exactly(&mut server, wanted.len()).await;
        assert_eq!(got, wanted);
        server
            .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Twilio: a\r\n\r\n{}")
            .await
            .unwrap();
        server
    });
    let response = conn
        .send(request(Method::POST, b"To=%2B1"), &host(), false)
        .await
        .ok()
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-twilio"], "a");
    let mut body = response.into_body();
    assert_eq!(body.size_hint().exact(), Some(2));
    let data = std::future::poll_fn(|cx| body.poll_data(cx)).await;
    assert_eq!(data.unwrap().unwrap(), "{}");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_some(), "ended exactly: reusable");
    peer.await.unwrap();
}

#[tokio::test]
async fn chunked_bodies_arrive_whole_at_any_split_and_the_connection_is_reused() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
    for step in [1, 3, 7, wire.len()] {
        let (conn, mut server) = pair();
        let (parts, body, mut rest) =
            exchange(conn, &mut server, request(Method::GET, b""), wire, step).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body.unwrap(), b"Wikipedia", "step {step}");
        let conn = rest.take_reusable().expect("reusable after the last chunk");
        // And it carries a second request.
        let (_, body, _) = exchange(
            conn,
            &mut server,
            request(Method::GET, b""),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            2,
        )
        .await;
        assert_eq!(body.unwrap(), b"abc");
    }
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let (conn, mut server) = pair();
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (parts, body, _) = exchange(conn, &mut server, request(Method::POST, b"a"), wire, 5).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("link").is_none());
    assert_eq!(body.unwrap(), b"ok");
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_length_says() {
    let (conn, mut server) = pair();
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
    let (_, body, mut rest) =
        exchange(conn, &mut server, request(Method::HEAD, b""), wire, 64).await;
    assert_eq!(body.unwrap(), b"");
    assert!(rest.take_reusable().is_some());
}

#[tokio::test]
async fn connections_that_must_close_are_not_reused() {
    // Connection: close.
    let (conn, mut server) = pair();
    let wire = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    let (_, body, mut rest) =
        exchange(conn, &mut server, request(Method::GET, b""), wire, 64).await;
    assert_eq!(body.unwrap(), b"ok");
    assert!(rest.take_reusable().is_none());

    // A body delimited by the close itself: all of it, then no reuse.
    let (data, error, not_reused) = answer_then_close(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
    assert_eq!(data, b"until close");
    assert!(error.is_none());
    assert!(not_reused);
}

#[tokio::test]
async fn bytes_after_the_response_mean_the_connection_is_not_reused() {
    let (conn, mut server) = pair();
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n";
    let (_, body, mut rest) =
        exchange(conn, &mut server, request(Method::GET, b""), wire, 64).await;
    assert_eq!(body.unwrap(), b"ok");
    assert!(rest.take_reusable().is_none(), "a smuggled second response");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let (_, error, not_reused) =
        answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    assert!(matches!(error, Some(Http1Error::Closed)));
    assert!(not_reused);
}

#[tokio::test]
async fn a_close_before_the_head_is_an_error_and_a_bad_head_too() {
    for wire in [
        &b""[..],
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
    ] {
        let (conn, mut server) = pair();
        let sent =
            tokio::spawn(async move { conn.send(request(Method::GET, b""), &host(), false).await });
        skip_request_head(&mut server).await;
        server.write_all(wire).await.unwrap();
        drop(server);
        match sent.await.unwrap() {
            Err(SendError::Failed(Http1Error::Closed | Http1Error::Parse(_))) => {}
            Err(SendError::Failed(e)) => panic!("{e}"),
            Err(SendError::Unsent(..)) => panic!("a fresh connection's request is not handed back"),
            Ok(_) => panic!("{wire:?} accepted"),
        }
    }
}

#[tokio::test]
async fn a_reused_connection_that_closed_hands_the_request_back() {
    let (conn, server) = pair();
    drop(server);
    match conn
        .send(request(Method::POST, b"Body=hi"), &host(), true)
        .await
    {
        Err(SendError::Unsent(req, _)) => {
            assert_eq!(
                req.uri().host(),
                Some("api.twilio.com"),
                "absolute URI kept"
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "Body=hi", "body intact");
        }
        _ => panic!("expected the request back"),
    }
}

#[tokio::test]
async fn a_reused_connection_closed_as_the_request_arrived_resends_only_idempotent_requests() {
    for (method, reused, handed_back) in [
        (Method::GET, true, true),
        (Method::DELETE, true, true),
        (Method::POST, true, false),
        (Method::GET, false, false),
    ] {
        let (conn, mut server) = pair();
        let sent = tokio::spawn({
            let method = method.clone();
            async move { conn.send(request(method, b""), &host(), reused).await }
        });
        // Twilio reads the request, then closes without a byte of response.
        skip_request_head(&mut server).await;
        drop(server);
        let got = sent.await.unwrap();
        assert_eq!(
            matches!(got, Err(SendError::Unsent(..))),
            handed_back,
            "{method} reused={reused}"
        );
        assert!(got.is_err());
    }
}

#[tokio::test]
async fn an_idle_connection_knows_when_the_peer_closed_or_spoke_unasked() {
    let (mut conn, server) = pair();
    assert!(conn.is_idle_open());
    drop(server);
    assert!(!conn.is_idle_open());

    let (mut conn, mut server) = pair();
    server
        .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        .await
        .unwrap();
    assert!(!conn.is_idle_open());
}

/// A body of known pieces; `exact` sets its announced length.
struct Pieces {
    pieces: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.pieces.pop_front().map(|p| Ok(Frame::data(p))))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map(SizeHint::with_exact).unwrap_or_default()
    }
}

fn pieces(exact: Option<u64>) -> Pieces {
    Pieces {
        pieces: ["abc", "", "defgh"].into_iter().map(Bytes::from).collect(),
        exact,
    }
}

#[tokio::test]
async fn streamed_bodies_go_out_chunked_or_by_their_length() {
    let (mut conn, mut server) = pair();
    conn.stream_body(pieces(None), RequestFraming::Chunked)
        .await
        .unwrap();
    let wanted = "3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n";
    assert_eq!(read_exactly(&mut server, wanted.len()).await, wanted);

    conn.stream_body(pieces(Some(8)), RequestFraming::Length(8))
        .await
        .unwrap();
    assert_eq!(read_exactly(&mut server, 8).await, "abcdefgh");
}

#[tokio::test]
async fn a_streamed_body_longer_or_shorter_than_announced_is_stopped() {
    for announced in [3, 9] {
        let (mut conn, mut server) = pair();
        let sent = conn
            .stream_body(pieces(Some(announced)), RequestFraming::Length(announced))
            .await;
        assert!(
            matches!(sent, Err(Http1Error::RequestLength)),
            "{announced}"
        );
        // Never more than announced on the wire.
        drop(conn);
        let mut wire = Vec::new();
        server.read_to_end(&mut wire).await.unwrap();
        assert!(wire.len() as u64 <= announced, "{}", wire.len());
    }
}
