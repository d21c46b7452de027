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

use super::pool::{PooledSender, StreamSlot};

/// Request bodies to Twilio: the app's, streamed under the body limit, or bytes the sidecar
/// holds (a buffered body, a token request).
pub type RequestBody = Either<Limited<Incoming>, Full<Bytes>>;
/// Response bodies to the app: Twilio's, streamed, or one the sidecar made.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// A response body from Twilio. Dropped after its last byte, it returns its HTTP/1.1
/// connection to the pool; dropped early (the app went away), the connection is closed, since
/// the rest of that response would still be on the wire.
pub struct UpstreamBody {
    inner: Incoming,
    pooled: Option<PooledSender>,
    /// The HTTP/2 stream this response arrives on, freed when it ends.
    stream: Option<StreamSlot>,
    ended: bool,
}

impl UpstreamBody {
    pub(crate) fn pooled(inner: Incoming, sender: PooledSender) -> Self {
        UpstreamBody {
            inner,
            pooled: Some(sender),
            stream: None,
            ended: false,
        }
    }

    pub(crate) fn on_stream(inner: Incoming, stream: StreamSlot) -> Self {
        UpstreamBody {
            inner,
            pooled: None,
            stream: Some(stream),
            ended: false,
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.pooled.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
            // The stream is closed; the next request may have it before this body is dropped.
            self.stream = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(lent) = self.pooled.take() {
            if self.ended || self.inner.is_end_stream() {
                lent.give_back();
            }
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
