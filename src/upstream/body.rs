//! The bodies that cross the upstream: what is sent to Twilio ([`RequestBody`]: the app's,
//! streamed under the body limit, or bytes held in memory), what comes back
//! ([`UpstreamBody`], which hands its HTTP/1.1 connection back to the pool when read to the
//! end), what the app receives ([`ResponseBody`]), and the copy of a request that can be sent
//! again ([`replayable`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::http1::Http1Body;
use super::pool::{ReturnAddress, StreamSlot};

/// Request bodies to Twilio: the app's, streamed under the body limit, or bytes the sidecar
/// holds (a buffered body, a token request).
pub type RequestBody = Either<Limited<Incoming>, Full<Bytes>>;
/// Response bodies to the app: Twilio's, streamed, or one the sidecar made.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// A response body from Twilio. Read to its end, an HTTP/1.1 body returns its connection to
/// the pool; dropped early (the app went away), the connection is closed, since the rest of
/// that response would still be on the wire.
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    /// Read from the connection in the app connection's task; `home` takes the connection
    /// back at the end.
    Http1 {
        body: Http1Body,
        home: Option<ReturnAddress>,
    },
    /// A stream of a shared HTTP/2 connection, freed when the body ends.
    Http2 {
        body: Incoming,
        stream: Option<StreamSlot>,
        ended: bool,
    },
}

/// Why reading a response body failed.
pub type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamBody {
    pub(crate) fn http1(body: Http1Body, home: ReturnAddress) -> Self {
        UpstreamBody {
            inner: Inner::Http1 {
                body,
                home: Some(home),
            },
        }
    }

    pub(crate) fn on_stream(body: Incoming, stream: StreamSlot) -> Self {
        UpstreamBody {
            inner: Inner::Http2 {
                body,
                stream: Some(stream),
                ended: false,
            },
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("http1", &matches!(self.inner, Inner::Http1 { .. }))
            .field("ended", &self.is_end_stream())
            .finish()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match &mut self.inner {
            Inner::Http1 { body, home } => {
                let polled = body.poll_data(cx);
                // Home as soon as the last byte is in: the next request may have the
                // connection before the app has even been sent this one's end.
                if let Poll::Ready(Some(Ok(_)) | None) = polled {
                    send_home(body, home);
                }
                polled.map(|d| d.map(|r| r.map(Frame::data).map_err(Into::into)))
            }
            Inner::Http2 {
                body,
                stream,
                ended,
            } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    *ended = true;
                    // The stream is closed; the next request may have it before this body is
                    // dropped.
                    *stream = None;
                }
                polled.map(|f| f.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1 { body, .. } => body.is_end_stream(),
            Inner::Http2 { body, ended, .. } => *ended || body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1 { body, .. } => body.size_hint(),
            Inner::Http2 { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with no bytes (HEAD, 204, Content-Length: 0) may never be polled.
        if let Inner::Http1 { body, home } = &mut self.inner {
            send_home(body, home);
        }
    }
}

/// Returns the connection to the pool, once, if the body has been read to its end and the
/// connection can carry another request.
fn send_home(body: &mut Http1Body, home: &mut Option<ReturnAddress>) {
    if let Some(conn) = body.take_reusable() {
        if let Some(home) = home.take() {
            home.give_back(conn);
        }
    }
}

/// A copy of `req` to send again, when its body is empty or already in memory; `None` for a
/// body still streaming from the app (the proxy buffers small ones, so those are rare). Used
/// for refused HTTP/2 streams by the pool and for the proxy's replay after a 401.
pub fn replayable(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let body = match req.body() {
        Either::Right(buffered) => Either::Right(buffered.clone()),
        Either::Left(streamed) if streamed.is_end_stream() => Either::Right(Full::default()),
        Either::Left(_) => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}
