//! HTTP/2 connections: shared by the thread's requests to a host, each carrying at most
//! `http2_max_streams` at once ([`StreamSlot`] counts them), with one handshake at a time per
//! host that other requests wait on ([`Announce`]), and a resend for streams Twilio turned
//! away unprocessed ([`is_refused_stream`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::http2;

use super::{entry_for, ConnectionPool, ExchangeError, HostConnections, Unsent};
use crate::upstream::body::{RequestBody, UpstreamBody};
use crate::upstream::UpstreamFailure;

/// One shared HTTP/2 connection.
pub(super) struct SharedH2 {
    /// Which connection this is, so a refusal retires this one and not a successor.
    pub(super) id: u64,
    pub(super) sender: http2::SendRequest<RequestBody>,
    /// Requests sent on it whose response has not ended yet.
    pub(super) open_streams: Arc<AtomicUsize>,
    /// When a request last took a stream on it; idle connections close like HTTP/1.1 ones.
    pub(super) last_used: Instant,
}

/// What a request waiting on an HTTP/2 handshake learns: still going (`None`), done (the new
/// connection is in the host's list, or the host turned out to speak HTTP/1.1), or failed,
/// which fails the waiters too — each trying again in turn would multiply the wait.
pub(super) type ConnectState = Option<Result<(), UpstreamFailure>>;

/// A stream counted against its connection's `http2_max_streams` until the response ends.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    pub(super) fn take(open_streams: &Arc<AtomicUsize>) -> StreamSlot {
        open_streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(open_streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One exchange as a stream of a shared HTTP/2 connection; the stream's slot is freed when the
/// response ends. `copy` is the request to send again if the stream is refused unprocessed.
pub(super) async fn exchange_h2(
    mut sender: http2::SendRequest<RequestBody>,
    stream: StreamSlot,
    req: Request<RequestBody>,
    copy: Option<Request<RequestBody>>,
) -> Result<Response<UpstreamBody>, Unsent> {
    match sender.try_send_request(req).await {
        Ok(response) => Ok(response.map(|body| UpstreamBody::on_stream(body, stream))),
        Err(mut e) => {
            let refused = is_refused_stream(e.error());
            match e.take_message().or(if refused { copy } else { None }) {
                Some(again) => Err(Unsent::Again(again, ExchangeError::Http2(e.into_error()))),
                None => Err(Unsent::Failed(ExchangeError::Http2(e.into_error()))),
            }
        }
    }
}

/// True when Twilio refused the stream without processing it: a RST_STREAM with
/// REFUSED_STREAM, or a graceful (NO_ERROR) GOAWAY that the stream came after. h2 ends exactly
/// those streams with the remote NO_ERROR GOAWAY — the ones it covers finish normally or end
/// with an I/O error — while a GOAWAY carrying an error ends every open stream, processed or
/// not, and so is never taken for a refusal.
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return refused_unprocessed(h2.reason(), h2.is_go_away(), h2.is_remote());
        }
        source = cause.source();
    }
    false
}

/// The resend decision on an HTTP/2 error's parts: REFUSED_STREAM, or a GOAWAY that Twilio
/// sent gracefully (NO_ERROR).
pub(super) fn refused_unprocessed(reason: Option<h2::Reason>, go_away: bool, remote: bool) -> bool {
    reason == Some(h2::Reason::REFUSED_STREAM)
        || (go_away && remote && reason == Some(h2::Reason::NO_ERROR))
}

/// Held by the request opening the HTTP/2 connection others wait for. It clears the host's
/// "being opened" mark when the connection is filed or failed — or when its request gives up
/// (timed out, app gone) and drops it mid-handshake, so the waiters look again rather than
/// wait on nothing.
pub(super) struct Announce<'p> {
    pub(super) pool: &'p ConnectionPool,
    pub(super) authority: &'p Authority,
    pub(super) sender: Option<tokio::sync::watch::Sender<ConnectState>>,
}

impl Announce<'_> {
    pub(super) fn finish(
        &mut self,
        entry: &mut HostConnections,
        outcome: Result<(), UpstreamFailure>,
    ) {
        if let Some(sender) = self.sender.take() {
            entry.h2_connecting = None;
            sender.send_replace(Some(outcome));
        }
    }
}

impl Drop for Announce<'_> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut hosts = self.pool.lock();
            if let Ok(entry) = entry_for(&mut hosts, self.authority) {
                entry.h2_connecting = None;
            }
            // Dropping the sender (after this) wakes the waiters with "closed".
        }
    }
}
