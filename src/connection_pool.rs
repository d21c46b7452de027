//! Connections to Twilio hosts, kept per serving thread and per host, and the response body
//! that hands an HTTP/1.1 connection back when the app has read the whole response.
//!
//! Why not hyper-util's legacy pooled client: callgrind put it at ~9k instructions a request on
//! the load benchmark — SipHash over the host name on every checkout and every return, a boxed
//! checkout-or-connect race, and a task spawned per request only to wait for the connection to
//! become idle again. Here a checkout is a short scan of a handful of host entries under an
//! uncontended lock (each serving thread has its own pool), and the connection goes back when
//! its response body is dropped after its last byte — no task, no timer per request.
//!
//! What it keeps from the pooled client: ALPN picks HTTP/2 (one shared connection per host and
//! thread) or HTTP/1.1 (a stack of idle connections, most recently used first, so the busiest
//! few stay warm); a request that never left because its reused connection had just closed is
//! sent again on a fresh one; idle connections are closed after `pool_idle_timeout` and at most
//! `pool_max_idle_per_host` are kept. What it adds: an HTTP/2 stream Twilio turned away without
//! processing it (REFUSED_STREAM, or a graceful GOAWAY retiring the connection) is sent again
//! on a new connection instead of failing — `is_refused_stream` says which ones qualify.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::error::UpstreamFailure;
use crate::upstream::{is_tls_error, RequestBody, Resolver};

/// Opens TLS connections (verified, ALPN h2 / http/1.1) to a Twilio host.
pub type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// One serving thread's connections, by host.
pub struct ConnectionPool {
    connector: Connector,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    hosts: Mutex<Vec<HostConnections>>,
    /// True while a sweeper task is closing idle connections past `idle_timeout`.
    sweeping: AtomicBool,
    /// Numbers the shared HTTP/2 connections.
    next_h2_id: AtomicU64,
}

/// How many times one request is sent again after Twilio refused its HTTP/2 stream.
const MAX_REFUSALS: u32 = 2;

/// HTTP/2 requests sent again because Twilio turned their stream away unprocessed, over the
/// process's life (pools come and go with reloads; this count must not).
static STREAMS_RESENT: AtomicU64 = AtomicU64::new(0);

/// HTTP/2 requests sent again on a new connection so far (REFUSED_STREAM, a graceful GOAWAY,
/// or a connection that ended before the request was handed to it).
pub fn streams_resent() -> u64 {
    STREAMS_RESENT.load(Ordering::Relaxed)
}

/// The connections to one host (`api.twilio.com`, `verify.twilio.com`, the token host, …).
/// There are at most as many entries as allowed hosts, so a linear scan beats hashing.
struct HostConnections {
    authority: Authority,
    /// Written on every HTTP/1.1 request; made once so the hot path only bumps a refcount.
    host_header: HeaderValue,
    /// HTTP/1.1 connections waiting for a request, most recently returned last.
    idle: Vec<IdleConnection>,
    /// The HTTP/2 connection requests to this host share, once ALPN chose h2, and its id.
    shared_h2: Option<(u64, http2::SendRequest<RequestBody>)>,
}

struct IdleConnection {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A connection checked out for one request.
enum Lease {
    Http1 {
        sender: http1::SendRequest<RequestBody>,
        host_header: HeaderValue,
        reused: bool,
    },
    Http2 {
        sender: http2::SendRequest<RequestBody>,
        /// Which shared connection this is, so a refusal retires that one and not its successor.
        id: u64,
    },
}

impl Lease {
    /// Waits until the connection can take a request; false if it closed instead.
    async fn ready(&mut self) -> bool {
        match self {
            Lease::Http1 { sender, .. } => sender.ready().await.is_ok(),
            Lease::Http2 { sender, .. } => sender.ready().await.is_ok(),
        }
    }
}

impl ConnectionPool {
    pub fn new(connector: Connector, idle_timeout: Duration, max_idle_per_host: usize) -> Self {
        ConnectionPool {
            connector,
            idle_timeout,
            max_idle_per_host,
            hosts: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
            next_h2_id: AtomicU64::new(0),
        }
    }

    /// Sends `req` (absolute `https://{host}{path}` URI) and returns the response head; the
    /// body streams from the connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(UpstreamFailure::Protocol)?;
        let mut lease = self.checkout(&authority).await?;
        let mut refusals = 0;
        loop {
            match lease {
                Lease::Http2 { mut sender, id } => {
                    // Twilio may refuse a stream it never processed — REFUSED_STREAM, or a
                    // GOAWAY when it retires the connection — and then it is safe to send again
                    // (RFC 9113 §8.7), if the request can be rebuilt: no body, or one buffered.
                    let copy = (refusals < MAX_REFUSALS)
                        .then(|| replayable(&req))
                        .flatten();
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(response.map(UpstreamBody::unpooled)),
                        Err(mut e) => {
                            let refused = is_refused_stream(e.error());
                            match e.take_message().or(if refused { copy } else { None }) {
                                Some(again) if refusals < MAX_REFUSALS => {
                                    refusals += 1;
                                    STREAMS_RESENT.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(error = %e.error(), "upstream HTTP/2 stream refused; sending it again");
                                    self.forget_shared_h2(&authority, id);
                                    req = again;
                                    lease = self.checkout(&authority).await?;
                                }
                                _ => return Err(classify_exchange(e.error())),
                            }
                        }
                    }
                }
                Lease::Http1 {
                    mut sender,
                    host_header,
                    reused,
                } => {
                    // HTTP/1.1 wants origin form and a Host header; the URI carried the host.
                    // The absolute URI is kept in case the request must go out again.
                    req.headers_mut().insert(header::HOST, host_header);
                    let origin = req
                        .uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/"));
                    let absolute_uri = std::mem::replace(req.uri_mut(), Uri::from(origin));
                    match sender.try_send_request(req).await {
                        Ok(response) => {
                            let pool = PooledSender {
                                pool: Arc::downgrade(self),
                                authority,
                                sender,
                            };
                            return Ok(response.map(|body| UpstreamBody::pooled(body, pool)));
                        }
                        Err(mut e) => {
                            // A reused connection can close just as a request is handed to
                            // it; if the request never left, send it again on a new one.
                            match e.take_message() {
                                Some(unsent) if reused => {
                                    req = unsent;
                                    *req.uri_mut() = absolute_uri;
                                    lease = Box::pin(self.connect(&authority)).await?;
                                }
                                _ => return Err(classify_exchange(e.error())),
                            }
                        }
                    }
                }
            }
        }
    }

    /// A ready connection to `authority`: the shared HTTP/2 one, the most recently used idle
    /// HTTP/1.1 one, or a new one.
    async fn checkout(self: &Arc<Self>, authority: &Authority) -> Result<Lease, UpstreamFailure> {
        loop {
            let candidate = {
                let mut hosts = self.lock();
                let entry = entry_for(&mut hosts, authority)?;
                if let Some((id, shared)) = &entry.shared_h2 {
                    if shared.is_closed() {
                        entry.shared_h2 = None;
                        None
                    } else {
                        Some(Lease::Http2 {
                            sender: shared.clone(),
                            id: *id,
                        })
                    }
                } else {
                    let now = Instant::now();
                    let mut found = None;
                    while let Some(idle) = entry.idle.pop() {
                        if !idle.sender.is_closed()
                            && now.duration_since(idle.since) < self.idle_timeout
                        {
                            found = Some(Lease::Http1 {
                                sender: idle.sender,
                                host_header: entry.host_header.clone(),
                                reused: true,
                            });
                            break;
                        }
                    }
                    found
                }
            };
            match candidate {
                // Boxed: opening a connection (TLS handshake, h2 set-up) is a large future, and
                // inline it would make every request's future that large, to be moved each time.
                None => return Box::pin(self.connect(authority)).await,
                // An idle HTTP/1.1 connection was returned as soon as its response body ended
                // (hyper may still be finishing that exchange), and Twilio may have closed
                // either kind meanwhile: the next pass drops a closed one and tries again.
                Some(mut lease) => {
                    if lease.ready().await {
                        return Ok(lease);
                    }
                }
            }
        }
    }

    /// Opens a new connection; ALPN decides whether it is shared (h2) or leased (HTTP/1.1).
    async fn connect(self: &Arc<Self>, authority: &Authority) -> Result<Lease, UpstreamFailure> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| classify_connect(&*e))?;
        let io = connector
            .call(absolute(authority, PathAndQuery::from_static("/"))?)
            .await
            .map_err(|e| classify_connect(&*e))?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| classify_exchange(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            let id = self.next_h2_id.fetch_add(1, Ordering::Relaxed);
            let mut hosts = self.lock();
            entry_for(&mut hosts, authority)?.shared_h2 = Some((id, sender.clone()));
            Ok(Lease::Http2 { sender, id })
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| classify_exchange(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            let host_header = entry_for(&mut self.lock(), authority)?.host_header.clone();
            Ok(Lease::Http1 {
                sender,
                host_header,
                reused: false,
            })
        }
    }

    /// Stops handing out shared HTTP/2 connection `id` (Twilio is retiring it); the requests
    /// already on it finish there.
    fn forget_shared_h2(&self, authority: &Authority, id: u64) {
        let mut hosts = self.lock();
        if let Ok(entry) = entry_for(&mut hosts, authority) {
            if entry
                .shared_h2
                .as_ref()
                .is_some_and(|(shared, _)| *shared == id)
            {
                entry.shared_h2 = None;
            }
        }
    }

    /// Takes back an HTTP/1.1 connection whose response was read to the end.
    fn give_back(self: &Arc<Self>, authority: &Authority, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut hosts = self.lock();
            let Ok(entry) = entry_for(&mut hosts, authority) else {
                return;
            };
            if entry.idle.len() >= self.max_idle_per_host {
                return;
            }
            entry.idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
        self.sweep_later();
    }

    /// Idle HTTP/1.1 connections currently kept, over all hosts.
    pub fn idle_count(&self) -> usize {
        self.lock().iter().map(|h| h.idle.len()).sum()
    }

    /// Connections the next request could use without a handshake: the idle HTTP/1.1 ones
    /// plus each host's open HTTP/2 connection.
    pub fn reusable_count(&self) -> usize {
        self.lock()
            .iter()
            .map(|h| {
                let h2 = h.shared_h2.as_ref().is_some_and(|(_, s)| !s.is_closed());
                h.idle.len() + usize::from(h2)
            })
            .sum()
    }

    /// Closes idle connections past `idle_timeout` (or already closed); returns how many are
    /// left.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut hosts = self.lock();
        for entry in hosts.iter_mut() {
            entry.idle.retain(|idle| {
                !idle.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout
            });
            if entry.shared_h2.as_ref().is_some_and(|(_, s)| s.is_closed()) {
                entry.shared_h2 = None;
            }
        }
        hosts.iter().map(|h| h.idle.len()).sum()
    }

    /// Makes sure one task on this thread will close idle connections once they time out. It
    /// ends when nothing is idle, and with the pool (it holds only a weak reference).
    fn sweep_later(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (process teardown): checkouts still skip stale connections.
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let period = (self.idle_timeout / 2).max(Duration::from_millis(10));
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = pool.upgrade() else { return };
                if pool.sweep() == 0 {
                    pool.sweeping.store(false, Ordering::Release);
                    // A connection given back between the sweep and the store found the flag
                    // still set and started nothing; keep going for it.
                    if pool.idle_count() == 0 || pool.sweeping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, Vec<HostConnections>> {
        // Nothing panics while holding it; if something did, the entries are still valid.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The entry for `authority`, made on first use.
fn entry_for<'h>(
    hosts: &'h mut Vec<HostConnections>,
    authority: &Authority,
) -> Result<&'h mut HostConnections, UpstreamFailure> {
    // Byte equality, not `Authority`'s case-insensitive `==`: every authority here comes from
    // the lower-cased host table or the token URL, and this runs twice a request.
    let at = match hosts
        .iter()
        .position(|h| h.authority.as_str() == authority.as_str())
    {
        Some(at) => at,
        None => {
            let host_header =
                HeaderValue::from_str(authority.as_str()).map_err(|_| UpstreamFailure::Protocol)?;
            hosts.push(HostConnections {
                authority: authority.clone(),
                host_header,
                idle: Vec::new(),
                shared_h2: None,
            });
            hosts.len() - 1
        }
    };
    Ok(&mut hosts[at])
}

fn absolute(authority: &Authority, path: PathAndQuery) -> Result<Uri, UpstreamFailure> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).map_err(|_| UpstreamFailure::Protocol)
}

/// A copy of `req` to send again, when its body is empty or already in memory; `None` for a
/// body still streaming from the app (the proxy buffers small ones, so those are rare).
fn replayable(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
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

/// True when Twilio refused the stream without processing it: a RST_STREAM with
/// REFUSED_STREAM, or a graceful (NO_ERROR) GOAWAY that the stream came after. h2 ends exactly
/// those streams with the remote NO_ERROR GOAWAY — the ones it covers finish normally or end
/// with an I/O error — while a GOAWAY carrying an error ends every open stream, processed or
/// not, and so is never taken for a refusal.
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = cause.source();
    }
    false
}

/// A failure to open a connection: certificate or handshake trouble is `tls`, the rest
/// (refused, unreachable, DNS, connect timeout) is `connect`.
fn classify_connect(e: &(dyn std::error::Error + Send + Sync + 'static)) -> UpstreamFailure {
    if is_tls_error(e) {
        UpstreamFailure::Tls
    } else {
        UpstreamFailure::Connect
    }
}

/// A failure on an open connection.
fn classify_exchange(e: &hyper::Error) -> UpstreamFailure {
    if is_tls_error(e) {
        UpstreamFailure::Tls
    } else {
        UpstreamFailure::Protocol
    }
}

/// An HTTP/1.1 connection lent to one request, to return once its response has been read.
struct PooledSender {
    pool: Weak<ConnectionPool>,
    authority: Authority,
    sender: http1::SendRequest<RequestBody>,
}

/// A response body from Twilio. Dropped after its last byte, it returns its HTTP/1.1
/// connection to the pool; dropped early (the app went away), the connection is closed, since
/// the rest of that response would still be on the wire.
pub struct UpstreamBody {
    inner: Incoming,
    pooled: Option<PooledSender>,
    ended: bool,
}

impl UpstreamBody {
    fn pooled(inner: Incoming, sender: PooledSender) -> Self {
        UpstreamBody {
            inner,
            pooled: Some(sender),
            ended: false,
        }
    }

    fn unpooled(inner: Incoming) -> Self {
        UpstreamBody {
            inner,
            pooled: None,
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
                if let Some(pool) = lent.pool.upgrade() {
                    pool.give_back(&lent.authority, lent.sender);
                }
            }
        }
    }
}
