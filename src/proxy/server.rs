//! The accept loop shared by the proxy (TCP and unix socket) and admin listeners.
//!
//! Takes an already-bound listener and a shutdown future, so tests bind port 0 and callers
//! decide what "shut down" means. Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the
//! same port, with a header-read timeout and a header size cap. On shutdown it stops accepting
//! (new connections are refused), lets in-flight requests finish up to the drain deadline,
//! then returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

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
}

/// Something connections come from.
pub trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Small request/response exchanges: do not wait to coalesce.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "unix".to_string()))
    }
}

/// Connections accepted elsewhere and handed to this serving thread.
pub struct Handoff {
    queue: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>>,
}

impl Handoff {
    pub fn new(queue: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>) -> Handoff {
        Handoff {
            queue: tokio::sync::Mutex::new(queue),
        }
    }
}

impl Acceptor for Handoff {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, String)> {
        let stream = self.queue.lock().await.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "the listener has closed")
        })?;
        // Registers the socket with this thread's runtime.
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "-".to_string(), |p| p.to_string());
        Ok((stream, peer))
    }
}

/// Accepts connections on `listener` and hands them round-robin to the serving threads'
/// queues, until `shutdown` completes. Dropping the listener then refuses new connections.
pub async fn hand_off(
    listener: TcpListener,
    queues: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut next = 0usize;
    accept_until(&listener, shutdown, |stream, _| match stream.into_std() {
        Ok(stream) => {
            let _ = queues[next % queues.len()].send(stream);
            next = next.wrapping_add(1);
        }
        Err(e) => warn!(error = %e, "cannot hand a connection over"),
    })
    .await;
}

/// Accepts from `listener` until `shutdown` completes, passing each connection and its peer
/// to `accepted`.
async fn accept_until<L: Acceptor>(
    listener: &L,
    shutdown: impl Future<Output = ()>,
    mut accepted: impl FnMut(L::Io, String),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            result = listener.accept() => match result {
                Ok((stream, peer)) => accepted(stream, peer),
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
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains.
pub async fn serve<L, H, F>(
    listener: L,
    handler: H,
    shutdown: impl Future<Output = ()>,
    options: ServerOptions,
) where
    L: Acceptor,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = connection_builder(options);
    let graceful = GracefulShutdown::new();
    accept_until(&listener, shutdown, |stream, peer| {
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        // With upgrades: a CONNECT becomes a tunnel (transparent mode).
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    })
    .await;
    // Dropping the listener closes the socket: new connections are refused from here on.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.drain) => {
            warn!(deadline_ms = options.drain.as_millis() as u64, "drain deadline reached with requests still in flight");
        }
    }
}
