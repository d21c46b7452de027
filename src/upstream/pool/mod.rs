//! Connections to Twilio hosts, kept per serving thread and per host: checkout, connect and
//! the send loop here; `h1` leased HTTP/1.1 connections, `h2` shared HTTP/2 connections
//! and their streams, `sweep` idle connections closed.
//!
//! Why not hyper-util's legacy pooled client: callgrind put it at ~9k instructions a request on
//! the load benchmark — SipHash over the host name on every checkout and every return, a boxed
//! checkout-or-connect race, and a task spawned per request only to wait for the connection to
//! become idle again. Here a checkout is a short scan of a handful of host entries under an
//! uncontended lock (each serving thread has its own pool), and the connection goes back when
//! its response body is dropped after its last byte — no task, no timer per request.
//!
//! What it keeps from the pooled client: ALPN picks HTTP/2 (connections shared by the thread's
//! requests to a host) or HTTP/1.1 (a stack of idle connections, most recently used first, so
//! the busiest few stay warm; each exchange is driven by the request's own task through
//! [`crate::upstream::http1`], with no connection task, and an idle connection is checked for
//! Twilio's close, without waiting, before a request is put on it); a request that never left
//! because its reused connection had just closed is sent again on a fresh one; idle
//! connections are closed after `pool_idle_timeout` and at most `pool_max_idle_per_host` are
//! kept. What it adds:
//! - an HTTP/2 stream Twilio turned away without processing it (REFUSED_STREAM, or a graceful
//!   GOAWAY retiring the connection) is sent again on a new connection instead of failing —
//!   `h2::is_refused_stream` says which ones qualify;
//! - each HTTP/2 connection carries at most `http2_max_streams` requests at once; the next one
//!   opens another connection rather than queueing behind the server's stream limit (hyper
//!   would hold it, unannounced, until a stream closes — a round trip to Twilio each);
//! - while an HTTP/2 connection to a host is being opened, other requests that need one wait
//!   for it instead of each paying a handshake of their own (a burst after a GOAWAY, or more
//!   than one connection's worth of streams arriving at once).

mod h1;
mod h2;
mod sweep;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::HandshakeKind;
use tower_service::Service;

use crate::metrics::UpstreamMetrics;
use crate::upstream::body::{replayable, RequestBody, UpstreamBody};
use crate::upstream::http1::{Http1Connection, Http1Error};
use crate::upstream::tls::{is_tls_error, Connector};
use crate::upstream::UpstreamFailure;
use h1::IdleConnection;
pub(crate) use h1::ReturnAddress;
pub(crate) use h2::StreamSlot;
use h2::{exchange_h2, Announce, ConnectState, SharedH2};
use sweep::idle_expired;

/// One serving thread's connections, by host.
pub struct ConnectionPool {
    connector: Connector,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    max_streams: usize,
    hosts: Mutex<Vec<HostConnections>>,
    /// True while a sweeper task is closing idle connections past `idle_timeout`.
    sweeping: AtomicBool,
    /// Numbers the shared HTTP/2 connections.
    next_h2_id: AtomicU64,
    /// Counts resent streams; shared with the pools of other threads and generations.
    metrics: Arc<UpstreamMetrics>,
}

/// How many times one request is sent again after Twilio refused its HTTP/2 stream.
const MAX_REFUSALS: u32 = 2;

/// The connections to one host (`api.twilio.com`, `verify.twilio.com`, the token host, …).
/// There are at most as many entries as allowed hosts, so a linear scan beats hashing.
pub(super) struct HostConnections {
    authority: Authority,
    /// Written on every HTTP/1.1 request; made once so the hot path only bumps a refcount.
    host_header: HeaderValue,
    /// HTTP/1.1 connections waiting for a request, most recently returned last.
    idle: Vec<IdleConnection>,
    /// The HTTP/2 connections requests to this host share, once ALPN chose h2; the first with
    /// a free stream takes the next request, so load concentrates and the rest can go idle.
    h2: Vec<SharedH2>,
    /// The last connection opened to this host negotiated h2: a request finding every stream
    /// busy waits for one handshake in progress rather than starting its own.
    speaks_h2: bool,
    /// An HTTP/2 connection being opened; it tells its waiters when it is done.
    h2_connecting: Option<tokio::sync::watch::Receiver<ConnectState>>,
}

/// A connection checked out for one request.
enum Lease {
    Http1 {
        conn: Box<Http1Connection>,
        host_header: HeaderValue,
        reused: bool,
    },
    Http2 {
        sender: http2::SendRequest<RequestBody>,
        /// Which shared connection this is, so a refusal retires that one and not its successor.
        id: u64,
        stream: StreamSlot,
    },
}

/// What `checkout` found for a request.
enum Pick {
    Lease(Lease),
    /// Every HTTP/2 stream is busy and another request is opening a connection: wait for it.
    Wait(tokio::sync::watch::Receiver<ConnectState>),
    /// Open a connection (for the reason given); `Some` when this request is the one the
    /// others wait for.
    Connect(
        Option<tokio::sync::watch::Sender<ConnectState>>,
        &'static str,
    ),
}

impl Lease {
    /// Waits until the connection can take a request; false if it closed instead.
    async fn ready(&mut self) -> bool {
        match self {
            Lease::Http1 { conn, .. } => conn.is_idle_open(),
            Lease::Http2 { sender, .. } => sender.ready().await.is_ok(),
        }
    }
}

impl ConnectionPool {
    pub fn new(
        connector: Connector,
        idle_timeout: Duration,
        max_idle_per_host: usize,
        max_streams: usize,
        metrics: Arc<UpstreamMetrics>,
    ) -> Self {
        ConnectionPool {
            metrics,
            connector,
            idle_timeout,
            max_idle_per_host,
            max_streams: max_streams.max(1),
            hosts: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
            next_h2_id: AtomicU64::new(0),
        }
    }

    /// Sends `req` (absolute `https://{host}{path}` URI) and returns the response head; the
    /// body streams from the connection.
    ///
    /// Not an `async fn`: that would keep the request twice in the future, once as the
    /// argument and once as the variable it is moved into.
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamFailure>> + Send + '_ {
        async move {
            let authority = req
                .uri()
                .authority()
                .cloned()
                .ok_or(UpstreamFailure::Protocol)?;
            let mut lease = self.checkout(&authority).await?;
            let mut refusals = 0;
            // Each pass settles its exchange in a function of its own, dropping what that held
            // (the error, the resend copy, the lease) before awaiting another connection: what
            // this future keeps across an await makes every request's future larger, and hyper
            // copies that future whole into the app connection when the request arrives.
            loop {
                // Sent again on a new connection (true) or on one from the pool (false).
                let connect = match lease {
                    Lease::Http2 { sender, id, stream } => {
                        // Twilio may refuse a stream it never processed — REFUSED_STREAM, or a
                        // GOAWAY when it retires the connection — and then it is safe to send again
                        // (RFC 9113 §8.7), if the request can be rebuilt: no body, or one buffered.
                        let copy = (refusals < MAX_REFUSALS)
                            .then(|| replayable(&req))
                            .flatten();
                        match exchange_h2(sender, stream, req, copy).await {
                            Ok(response) => return Ok(response),
                            Err(Unsent::Again(again, error)) if refusals < MAX_REFUSALS => {
                                refusals += 1;
                                self.metrics.streams_resent.inc();
                                tracing::debug!(%error, "upstream HTTP/2 stream refused; sending it again");
                                self.forget_shared_h2(&authority, id);
                                req = again;
                                false
                            }
                            Err(Unsent::Again(_, error) | Unsent::Failed(error)) => {
                                return Err(classify_exchange(&error))
                            }
                        }
                    }
                    Lease::Http1 {
                        conn,
                        host_header,
                        reused,
                    } => match self
                        .exchange_h1(&authority, conn, host_header, req, reused)
                        .await
                    {
                        Ok(response) => return Ok(response),
                        // A reused connection can close just as a request is handed to it; if
                        // the request never left, send it again on a new one.
                        Err(Unsent::Again(again, _)) if reused => {
                            req = again;
                            true
                        }
                        Err(Unsent::Again(_, error) | Unsent::Failed(error)) => {
                            return Err(classify_exchange(&error))
                        }
                    },
                };
                lease = if connect {
                    Box::pin(self.connect(&authority, None, "resend")).await?
                } else {
                    self.checkout(&authority).await?
                };
            }
        }
    }

    /// A ready connection to `authority`: a shared HTTP/2 one with a free stream, the most
    /// recently used idle HTTP/1.1 one, or a new one.
    async fn checkout(self: &Arc<Self>, authority: &Authority) -> Result<Lease, UpstreamFailure> {
        loop {
            let pick = {
                let mut hosts = self.lock();
                let entry = entry_for(&mut hosts, authority)?;
                self.pick(entry)
            };
            match pick {
                // Twilio may have closed an idle connection of either kind meanwhile: the next
                // pass drops a closed one and tries again.
                Pick::Lease(mut lease) => {
                    if lease.ready().await {
                        return Ok(lease);
                    }
                }
                Pick::Wait(mut connecting) => {
                    // Done, or the request opening it gave up (its sender is gone): look again.
                    // Failed: so does this request.
                    let outcome = connecting.wait_for(Option::is_some).await.map(|done| *done);
                    if let Ok(Some(Err(failure))) = outcome {
                        return Err(failure);
                    }
                }
                // Boxed: opening a connection (TLS handshake, h2 set-up) is a large future, and
                // inline it would make every request's future that large, to be moved each time.
                Pick::Connect(announce, reason) => {
                    return Box::pin(self.connect(authority, announce, reason)).await;
                }
            }
        }
    }

    /// Chooses for one request, under the lock.
    fn pick(&self, entry: &mut HostConnections) -> Pick {
        entry.h2.retain(|c| !c.sender.is_closed());
        let max_streams = self.max_streams;
        if let Some(shared) = entry
            .h2
            .iter_mut()
            .find(|c| c.open_streams.load(Ordering::Relaxed) < max_streams)
        {
            shared.last_used = Instant::now();
            return Pick::Lease(Lease::Http2 {
                sender: shared.sender.clone(),
                id: shared.id,
                stream: StreamSlot::take(&shared.open_streams),
            });
        }
        if entry.speaks_h2 {
            if let Some(connecting) = &entry.h2_connecting {
                return Pick::Wait(connecting.clone());
            }
            let (announce, connecting) = tokio::sync::watch::channel(None);
            entry.h2_connecting = Some(connecting);
            return Pick::Connect(Some(announce), "h2_streams_busy");
        }
        let now = Instant::now();
        while let Some(idle) = entry.idle.pop() {
            if !idle_expired(idle.since, now, self.idle_timeout) {
                return Pick::Lease(Lease::Http1 {
                    conn: idle.conn,
                    host_header: entry.host_header.clone(),
                    reused: true,
                });
            }
        }
        Pick::Connect(None, "no_idle")
    }

    /// Opens a new connection; ALPN decides whether it is shared (h2) or leased (HTTP/1.1).
    /// `announce`, when given, tells the requests waiting for this connection how it went.
    async fn connect(
        self: &Arc<Self>,
        authority: &Authority,
        announce: Option<tokio::sync::watch::Sender<ConnectState>>,
        reason: &'static str,
    ) -> Result<Lease, UpstreamFailure> {
        let mut announce = Announce {
            pool: self,
            authority,
            sender: announce,
        };
        let host = authority.host();
        self.metrics
            .connections_opened
            .with_label_values(&[host, reason])
            .inc();
        let connected = self.open(authority).await;
        let mut kept_h2 = false;
        let mut hosts = self.lock();
        let entry = entry_for(&mut hosts, authority)?;
        let lease = match connected {
            Err(failure) => {
                announce.finish(entry, Err(failure));
                return Err(failure);
            }
            Ok(Connected::Http1(conn)) => {
                entry.speaks_h2 = false;
                Lease::Http1 {
                    conn,
                    host_header: entry.host_header.clone(),
                    reused: false,
                }
            }
            Ok(Connected::Http2(sender)) => {
                entry.speaks_h2 = true;
                entry.h2.retain(|c| !c.sender.is_closed());
                let id = self.next_h2_id.fetch_add(1, Ordering::Relaxed);
                let open_streams = Arc::new(AtomicUsize::new(0));
                let stream = StreamSlot::take(&open_streams);
                // Shared only when the ones kept are full: requests racing to a cold host each
                // open one, and the surplus would only sit idle.
                let max_streams = self.max_streams;
                if entry
                    .h2
                    .iter()
                    .all(|c| c.open_streams.load(Ordering::Relaxed) >= max_streams)
                {
                    entry.h2.push(SharedH2 {
                        id,
                        sender: sender.clone(),
                        open_streams,
                        last_used: Instant::now(),
                    });
                    kept_h2 = true;
                }
                Lease::Http2 { sender, id, stream }
            }
        };
        announce.finish(entry, Ok(()));
        drop(hosts);
        if kept_h2 {
            // So it closes once idle, like an HTTP/1.1 connection.
            self.sweep_later();
        }
        Ok(lease)
    }

    /// The TLS handshake, then HTTP/2 set-up or a bare HTTP/1.1 connection as ALPN chose.
    async fn open(&self, authority: &Authority) -> Result<Connected, UpstreamFailure> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| classify_connect(&*e))?;
        let io = connector
            .call(absolute(authority, PathAndQuery::from_static("/"))?)
            .await
            .map_err(|e| classify_connect(&*e))?;
        if let MaybeHttpsStream::Https(tls) = &io {
            // Resumed: the session of an earlier connection to the host, no certificate
            // exchange — what reconnects to Twilio should mostly be.
            let kind = match tls.inner().get_ref().1.handshake_kind() {
                Some(HandshakeKind::Resumed) => "resumed",
                _ => "full",
            };
            self.metrics
                .tls_handshakes
                .with_label_values(&[authority.host(), kind])
                .inc();
        }
        if !io.connected().is_negotiated_h2() {
            // HTTP/1.1 is driven by the request that leases it, on the TLS stream itself.
            return match io {
                MaybeHttpsStream::Https(tls) => {
                    Ok(Connected::Http1(Http1Connection::new(tls.into_inner())))
                }
                // The connector is built `https_only`; a plain stream is refused, never used.
                MaybeHttpsStream::Http(_) => Err(UpstreamFailure::Tls),
            };
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| classify_exchange(&e))?;
        drive(connection, "HTTP/2");
        Ok(Connected::Http2(sender))
    }

    /// Stops handing out shared HTTP/2 connection `id` (Twilio is retiring it); the requests
    /// already on it finish there.
    fn forget_shared_h2(&self, authority: &Authority, id: u64) {
        let mut hosts = self.lock();
        if let Ok(entry) = entry_for(&mut hosts, authority) {
            entry.h2.retain(|c| c.id != id);
        }
    }

    /// Idle HTTP/1.1 connections currently kept, over all hosts.
    pub fn idle_count(&self) -> usize {
        self.lock().iter().map(|h| h.idle.len()).sum()
    }

    /// Connections the next request could use without a handshake: the idle HTTP/1.1 ones
    /// plus the open HTTP/2 ones with a free stream.
    pub fn reusable_count(&self) -> usize {
        let max_streams = self.max_streams;
        self.lock()
            .iter()
            .map(|h| {
                let h2 = h.h2.iter().filter(|c| {
                    !c.sender.is_closed() && c.open_streams.load(Ordering::Relaxed) < max_streams
                });
                h.idle.len() + h2.count()
            })
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<HostConnections>> {
        // Nothing panics while holding it; if something did, the entries are still valid.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The entry for `authority`, made on first use.
pub(super) fn entry_for<'h>(
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
                h2: Vec::new(),
                speaks_h2: false,
                h2_connecting: None,
            });
            hosts.len() - 1
        }
    };
    Ok(&mut hosts[at])
}

/// How an exchange ended without a response. Only ever returned, never kept, so the request
/// stays inline rather than boxed (a box would be an allocation on every resend).
#[allow(clippy::large_enum_variant)]
pub(super) enum Unsent {
    /// The request may go out again: it never left, or Twilio refused its stream unprocessed.
    Again(Request<RequestBody>, ExchangeError),
    Failed(ExchangeError),
}

/// What broke an exchange, by protocol.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error(transparent)]
    Http1(Http1Error),
    #[error(transparent)]
    Http2(hyper::Error),
}

/// Runs a connection's I/O in a task of its own until Twilio or the pool closes it.
fn drive(
    connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    protocol: &'static str,
) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended");
        }
    });
}

fn absolute(authority: &Authority, path: PathAndQuery) -> Result<Uri, UpstreamFailure> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).map_err(|_| UpstreamFailure::Protocol)
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
fn classify_exchange(e: &(dyn std::error::Error + 'static)) -> UpstreamFailure {
    if is_tls_error(e) {
        UpstreamFailure::Tls
    } else {
        UpstreamFailure::Protocol
    }
}

/// A connection just opened, before the pool has filed it.
enum Connected {
    Http1(Box<Http1Connection>),
    Http2(http2::SendRequest<RequestBody>),
}
