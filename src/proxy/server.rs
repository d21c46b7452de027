//! The accept loop shared by the proxy (TCP and unix socket) and admin listeners.
//!
//! Takes an already-bound listener and a shutdown future, so tests bind port 0 and callers
//! decide what "shut down" means. Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the
//! same port, with a header-read timeout and a header size cap; every connection is held to
//! its listener's cap, a first request in time and an idle timeout
//! ([`super::connection_guard`]). On shutdown it stops accepting (new connections are
//! refused), lets in-flight requests finish up to the drain deadline, then returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

use super::connection_guard::{guard, Activity, Counted, Deadlines, Slot, Slots};
use crate::config::Limits;
use crate::upstream::body::ResponseBody;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// A client must send its complete request head within this (slow-loris protection).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// How long in-flight requests may run on after shutdown starts.
    pub drain: Duration,
    /// A connection with nothing in flight this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
}

impl ServerOptions {
    pub fn new(limits: &Limits) -> ServerOptions {
        ServerOptions {
            header_read_timeout: limits.header_read_timeout,
            max_header_bytes: limits.max_header_bytes,
            drain: limits.drain_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            first_request: self.header_read_timeout,
            idle: self.idle_timeout,
        }
    }
}

/// HTTP/2 connections silent this long are pinged; no answer within the same time, closed.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Something connections come from.
pub trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, its peer, and its slot if it already holds one.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, String, Option<Slot>)>> + Send;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, String, Option<Slot>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Small request/response exchanges: do not wait to coalesce.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string(), None))
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, String, Option<Slot>)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "unix".to_string(), None))
    }
}

/// A connection accepted on the listener's thread, with its slot, for a serving thread.
pub type HandedOff = (std::net::TcpStream, Option<Slot>);

/// Connections accepted elsewhere and handed to this serving thread.
pub struct Handoff {
    queue: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<HandedOff>>,
}

impl Handoff {
    pub fn new(queue: tokio::sync::mpsc::UnboundedReceiver<HandedOff>) -> Handoff {
        Handoff {
            queue: tokio::sync::Mutex::new(queue),
        }
    }
}

impl Acceptor for Handoff {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, String, Option<Slot>)> {
        let (stream, slot) = self.queue.lock().await.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the listener has closed")
        })?;
        // Registers the socket with this thread's runtime.
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "-".to_string(), |p| p.to_string());
        Ok((stream, peer, slot))
    }
}

/// Accepts connections on `listener` under `slots` and hands them round-robin to the
/// serving threads' queues, until `shutdown` completes. Dropping the listener then refuses
/// new connections.
pub async fn hand_off(
    listener: TcpListener,
    queues: Vec<tokio::sync::mpsc::UnboundedSender<HandedOff>>,
    slots: Arc<Slots>,
    shutdown: impl Future<Output = ()>,
) {
    let mut next = 0usize;
    accept_until(&listener, &slots, shutdown, |stream, _| {
        let (stream, slot) = stream.into_parts();
        match stream.into_std() {
            Ok(stream) => {
                let _ = queues[next % queues.len()].send((stream, slot));
                next = next.wrapping_add(1);
            }
            Err(e) => warn!(error = %e, "cannot hand a connection over"),
        }
    })
    .await;
}

/// Accepts from `listener` until `shutdown` completes, passing each connection (with the
/// slot it came with, or one from `slots`; without one free it is closed at once) and its
/// peer to `accepted`.
async fn accept_until<L: Acceptor>(
    listener: &L,
    slots: &Slots,
    shutdown: impl Future<Output = ()>,
    mut accepted: impl FnMut(Counted<L::Io>, String),
) {
    let write_timeout = slots.write_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            result = listener.accept() => match result {
                Ok((stream, peer, slot)) => {
                    let slot = match slot.or_else(|| slots.take()) {
                        Some(slot) => slot,
                        None => {
                            debug!(%peer, "at the connection cap: closing a new connection");
                            continue;
                        }
                    };
                    accepted(Counted::new(stream, Some(slot), write_timeout), peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// How every app connection is served, on a listener or inside a tunnel: HTTP/1.1 and h2c,
/// with the header read timeout and size cap.
pub fn connection_builder(options: ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE)
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains. `slots` caps the
/// listener's connections, unless they come with slots (a [`Handoff`]); its metrics count
/// them either way.
pub async fn serve<L, H, F>(
    listener: L,
    handler: H,
    shutdown: impl Future<Output = ()>,
    options: ServerOptions,
    slots: Arc<Slots>,
) where
    L: Acceptor,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = connection_builder(options);
    // Every connection task holds a receiver: `stop` tells them to close, and its `closed()`
    // says when the last one has ended.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    accept_until(&listener, &slots, shutdown, |stream, peer| {
        let handler = handler.clone();
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = activity.clone();
            service_fn(move |req| {
                let in_flight = activity.begin();
                let handler = handler.clone();
                // The handler's future is made inside this one, not before it: a future
                // captured and then awaited takes room twice in this one (the capture, and
                // the awaited copy), and hyper moves this future whole per request.
                async move {
                    let response = handler(req).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        // With upgrades: a CONNECT becomes a tunnel (transparent mode).
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let mut stopped = stopped.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            // Borrowed, not moved: the receiver must live until the connection has ended,
            // not only until the stop signal has been seen.
            let stop = async {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let guarded = guard(conn, &activity, options.deadlines(), stop, slots.metrics());
            if let Err(e) = guarded.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    })
    .await;
    // Dropping the listener closes the socket: new connections are refused from here on.
    drop(listener);
    drop(stopped);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => {}
        () = tokio::time::sleep(options.drain) => {
            warn!(deadline_ms = options.drain.as_millis() as u64, "drain deadline reached with requests still in flight");
        }
    }
}
