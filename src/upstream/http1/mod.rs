//! The HTTP/1.1 exchange with Twilio, driven inside the request's own task: write the request
//! head and body, read the response head, then read the body as the app's connection asks for
//! it — straight from the TLS stream, with no connection task, no channel between tasks and no
//! wake-up of another task per request ([`Http1Connection`], [`Http1Body`]).
//!
//! Why not hyper's client connection: it runs each connection in a task of its own, so every
//! request crossed tasks four times (request in, head back, body frames back, "want more"), and
//! the load benchmark measured that hop as the largest single cost the sidecar added. HTTP/2
//! keeps hyper's client, where multiplexing needs a connection task anyway.
//!
//! Framing is strict ([`head`], [`chunked`]): a response whose length is ambiguous is refused,
//! and a connection is reused only when its response ended exactly where its framing said.

mod chunked;
mod head;
#[cfg(test)]
mod tests;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::body::RequestBody;
pub(crate) use head::MAX_HEAD;
use head::{encode_request, parse_response, push_chunk_size, Framing, RequestFraming};

/// The TLS stream an HTTP/1.1 connection to Twilio runs on.
pub(crate) type TlsIo = tokio_rustls::client::TlsStream<TokioIo<TokioIo<TcpStream>>>;

/// Bytes read from the connection at a time, at most.
const READ_CHUNK: usize = 8 * 1024;
/// A buffered request body up to this size goes out in the same write as its head.
const INLINE_BODY: usize = 16 * 1024;
/// A write buffer grown past this (by an inlined body) is not kept for the next request.
const KEPT_WRITE_BUFFER: usize = 4 * 1024;

/// Why an HTTP/1.1 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("Twilio's response head is malformed: {0}")]
    Parse(httparse::Error),
    #[error("Twilio's response head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("Twilio's response is framed ambiguously or badly: {0}")]
    Framing(&'static str),
    #[error("the upstream connection closed before the response was complete")]
    Closed,
    #[error("the request body to Twilio could not be read: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body's length differs from the length announced for it")]
    RequestLength,
}

/// How a request that got no response failed. Only ever returned, never kept, so the request
/// stays inline rather than boxed (as the pool's `Unsent`).
#[allow(clippy::large_enum_variant)]
pub(crate) enum SendError {
    /// A reused connection failed before the request was complete on the wire, so Twilio
    /// cannot have acted on it, or closed with nothing sent back to an idempotent request: it
    /// may go out again on another connection.
    Unsent(Request<RequestBody>, Http1Error),
    Failed(Http1Error),
}

/// One HTTP/1.1 connection to Twilio, with its read buffer (bytes received and not yet
/// consumed) and its write buffer (reused for each request head).
pub(crate) struct Http1Connection<IO = TlsIo> {
    io: IO,
    read: BytesMut,
    write: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Http1Connection<IO> {
    pub(crate) fn new(io: IO) -> Box<Self> {
        Box::new(Http1Connection {
            io,
            read: BytesMut::new(),
            write: Vec::with_capacity(KEPT_WRITE_BUFFER),
        })
    }

    /// Whether an idle connection is still open with nothing unasked-for waiting on it,
    /// checked without waiting: Twilio closes idle connections on its own schedule. Costs no
    /// system call unless the socket has become readable since it was last drained.
    pub(crate) fn is_idle_open(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        // Readable now means closed (0 bytes), an error, or bytes nobody asked for.
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// Reads what is available into the read buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Sends `req` (its URI absolute; `host` goes in the `Host` header) and reads the response
    /// head. The body is then read through [`Http1Body`], which owns the connection. `reused`:
    /// the connection carried an earlier request, so a failure while writing may be a close
    /// that raced this request, and the request is handed back to go out again.
    ///
    /// (Not an `async fn`, which would keep `req` twice in every request's future.)
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send<'a>(
        mut self: Box<Self>,
        mut req: Request<RequestBody>,
        host: &'a HeaderValue,
        reused: bool,
    ) -> impl Future<Output = Result<Response<Http1Body<IO>>, SendError>> + 'a
    where
        IO: 'a,
    {
        async move {
            let framing = match req.body().size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            };
            let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            self.write.clear();
            encode_request(
                &mut self.write,
                req.method(),
                target,
                host,
                req.headers(),
                framing,
            );
            let method = req.method().clone();
            let unsent = |req, e: io::Error| {
                if reused {
                    SendError::Unsent(req, e.into())
                } else {
                    SendError::Failed(e.into())
                }
            };
            // A buffered body goes out with the head, and so does a request without a body:
            // either can go out again. A streamed body follows the head and cannot.
            let (with_head, streamed) = match req.body() {
                Either::Right(full) => (full_bytes(full), false),
                Either::Left(body) => (Bytes::new(), !body.is_end_stream()),
            };
            if let Err(e) = self.write_all_with(&with_head).await {
                return Err(unsent(req, e));
            }
            if streamed {
                let body = std::mem::replace(req.body_mut(), Either::Right(Full::default()));
                self.stream_body(body, framing)
                    .await
                    .map_err(SendError::Failed)?;
            }
            let head = match self.read_head(&method).await {
                Ok(head) => head,
                // Twilio closed a kept-alive connection just as this request reached it (its
                // idle timer and the request crossed): nothing came back, so an idempotent
                // request goes out again, as RFC 9112 §9.3.1 lets a client do. Anything else
                // — a POST above all, which may have sent a message — fails rather than risk
                // being acted on twice.
                Err(e)
                    if reused
                        && method.is_idempotent()
                        && self.read.is_empty()
                        && closed_by_peer(&e) =>
                {
                    return Err(if streamed {
                        SendError::Failed(e)
                    } else {
                        SendError::Unsent(req, e)
                    });
                }
                Err(e) => return Err(SendError::Failed(e)),
            };
            let mut response = Response::new(Http1Body {
                framing: match head.framing {
                    Framing::Length(0) => Framing::Empty,
                    framing => framing,
                },
                keep_alive: head.keep_alive,
                conn: Some(self),
            });
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            Ok(response)
        }
    }

    /// Writes the head in the write buffer, with `body` after it in the same write when small.
    async fn write_all_with(&mut self, body: &[u8]) -> io::Result<()> {
        if body.len() <= INLINE_BODY {
            self.write.extend_from_slice(body);
            self.io.write_all(&self.write).await?;
        } else {
            self.io.write_all(&self.write).await?;
            self.io.write_all(body).await?;
        }
        if self.write.capacity() > KEPT_WRITE_BUFFER {
            // An idle connection keeps its buffer; a large inlined body should not stay in it.
            self.write = Vec::with_capacity(KEPT_WRITE_BUFFER);
        }
        self.io.flush().await
    }

    /// Streams the app's body after the head, framed as announced.
    async fn stream_body<B>(&mut self, body: B, framing: RequestFraming) -> Result<(), Http1Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut body = std::pin::pin!(body);
        let mut sent = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Http1Error::RequestBody(e.into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not forwarded
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            match framing {
                RequestFraming::Length(n) if sent > n => return Err(Http1Error::RequestLength),
                RequestFraming::Length(_) => self.io.write_all(&data).await?,
                RequestFraming::Chunked => {
                    self.write.clear();
                    push_chunk_size(&mut self.write, data.len() as u64);
                    self.io.write_all(&self.write).await?;
                    self.io.write_all(&data).await?;
                    self.io.write_all(b"\r\n").await?;
                }
            }
        }
        match framing {
            RequestFraming::Length(n) if sent != n => return Err(Http1Error::RequestLength),
            RequestFraming::Length(_) => {}
            RequestFraming::Chunked => self.io.write_all(b"0\r\n\r\n").await?,
        }
        Ok(self.io.flush().await?)
    }

    /// Reads until a final (non-1xx) response head has arrived.
    async fn read_head(&mut self, method: &Method) -> Result<head::ResponseHead, Http1Error> {
        loop {
            if let Some(head) = parse_response(&mut self.read, method)? {
                if !head.status.is_informational() {
                    return Ok(head);
                }
                // 100 Continue and 103 Early Hints: the final response follows.
                continue;
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(Http1Error::Closed);
            }
        }
    }
}

/// An end of the connection from Twilio's side: end of stream, or a reset.
fn closed_by_peer(e: &Http1Error) -> bool {
    match e {
        Http1Error::Closed => true,
        Http1Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The bytes of a body held in memory, without consuming it (the request may need to go out
/// again): polling a clone of `Full` is immediate and costs a reference count.
fn full_bytes(full: &Full<Bytes>) -> Bytes {
    let mut copy = full.clone();
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut copy).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// A response body read from its HTTP/1.1 connection, which it owns until the body ends.
pub(crate) struct Http1Body<IO = TlsIo> {
    conn: Option<Box<Http1Connection<IO>>>,
    framing: Framing,
    keep_alive: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Http1Body<IO> {
    /// The next piece of the body; `None` at its end.
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Http1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Empty => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if !conn.read.is_empty() {
                        let take = usize::try_from(*remaining)
                            .map_or(conn.read.len(), |r| r.min(conn.read.len()));
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            self.framing = Framing::Empty;
                        }
                        return Poll::Ready(Some(Ok(conn.read.split_to(take).freeze())));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(chunked::Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(chunked::Decoded::End) => {
                        self.framing = Framing::Empty;
                        return Poll::Ready(None);
                    }
                    Ok(chunked::Decoded::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
                },
                Framing::UntilClose => {
                    if !conn.read.is_empty() {
                        let all = conn.read.len();
                        return Poll::Ready(Some(Ok(conn.read.split_to(all).freeze())));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.framing, Framing::UntilClose) => {
                    self.framing = Framing::Empty;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.fail(Http1Error::Closed)))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.fail(e.into())))),
            }
        }
    }

    /// Gives up on the connection after an error: nothing more is read from it.
    fn fail(&mut self, e: Http1Error) -> Http1Error {
        self.conn = None;
        self.framing = Framing::Empty;
        e
    }

    /// True once the whole body has been read.
    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty)
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }

    /// The connection, once the body has been read to its end and the connection may carry
    /// another request: the response did not ask to close, and nothing followed its end.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Http1Connection<IO>>> {
        let reusable = self.is_end_stream()
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.read.is_empty());
        if reusable {
            self.conn.take()
        } else {
            None
        }
    }
}
