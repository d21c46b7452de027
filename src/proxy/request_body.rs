//! The app's request body: read whole when a rule's parameter conditions need it, bounded
//! and (when small) buffered on its way to Twilio, or discarded when the request is refused.
//!
//! A refused body matters because hyper closes an HTTP/1.1 connection after a response
//! whose request body was left unread (unless the rest had already arrived), and the
//! response does not say so. An app that puts its next request on that kept-alive
//! connection before the close reaches it sees the connection drop with no answer
//! (urllib3's `RemoteDisconnected`). So a request refused before its body was read has a
//! small body read and dropped first, and the connection stays usable; when that cannot be
//! done — a body larger than [`DISCARD_LIMIT`], one still arriving after [`DISCARD_WAIT`],
//! one the app holds back for `100 Continue` — the refusal says `Connection: close`, so the
//! app opens a new one.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, Version};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};

use crate::control::state::State;
use crate::credentials::Attached;
use crate::proxy::error::ProxyError;
use crate::upstream::body::RequestBody;

/// Largest refused body read to keep its connection; nginx discards bodies the same way.
const DISCARD_LIMIT: u64 = 64 * 1024;

/// How long a refusal waits for the rest of a body it discards.
const DISCARD_WAIT: Duration = Duration::from_secs(1);

/// Reads and drops a refused request's body when it is small and arrives promptly. Returns
/// whether it was read to its end (the connection can then carry another request).
pub(super) async fn discard(mut body: Incoming, parts: &Parts) -> bool {
    // HTTP/2 ends the stream alone, whatever is left of its body; nothing to wait for.
    if body.is_end_stream() || parts.version >= Version::HTTP_2 {
        return true;
    }
    // Reading would make hyper send `100 Continue`: asking for a body only to drop it.
    if expects_continue(&parts.headers) || body.size_hint().lower() > DISCARD_LIMIT {
        return false;
    }
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DISCARD_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_WAIT, drain)
        .await
        .unwrap_or(false)
}

/// Says `Connection: close` on a response sent while its request's body is still unread:
/// hyper closes the connection after it.
pub(super) fn announce_close<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Phase 6 — **upstream request**, its body: it never exceeds `limits.max_request_body` on
/// its way to Twilio (413 otherwise). One of unknown length (chunked) is read first, bounded;
/// a small one is buffered too, so the request can be sent again — after a 401 with a bearer
/// token, or when Twilio's HTTP/2 edge refuses the stream unprocessed — and a PKCV account's
/// always, since its hash is signed. Larger bodies stream through untouched. Returns the
/// buffered bytes too, when they were buffered.
pub(super) async fn upstream_body(
    state: &State,
    body: AppBody,
    attached: &Attached,
    whole: bool,
) -> Result<(RequestBody, Option<Bytes>), ProxyError> {
    let body = match body {
        AppBody::Read(bytes) => return Ok((Either::Right(Full::new(bytes.clone())), Some(bytes))),
        AppBody::Streaming(body) => body,
    };
    let max = state.config.limits.max_request_body;
    let replay_limit = state.config.oauth.replay_body_limit;
    let known = body.size_hint().upper();
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let buffer = whole
        || match known {
            None => true,
            // Nothing to hold, except that a bearer request's 401 replay is built from it.
            Some(0) => attached.bearer.is_some(),
            Some(n) => n <= replay_limit,
        };
    if !buffer {
        return Ok((Either::Left(limited), None));
    }
    let bytes = collect_limited(limited, max).await?;
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
}

/// The app's request body: still streaming, or already read (to check its parameters).
pub(super) enum AppBody {
    Streaming(Incoming),
    Read(Bytes),
}

/// Reads a whole body, at most `max` bytes (413 beyond).
pub(super) async fn read_body(body: Incoming, max: u64) -> Result<Bytes, ProxyError> {
    collect_limited(
        Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)),
        max,
    )
    .await
}

async fn collect_limited(body: Limited<Incoming>, max: u64) -> Result<Bytes, ProxyError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ProxyError::BodyTooLarge(max)
            } else {
                ProxyError::BadBody(e.to_string())
            }
        })?
        .to_bytes())
}
