//! What every connection a listener accepts is held to, whatever it turns out to speak.
//!
//! - **A slot under its listener's cap**, taken at accept and held by the socket itself (so a
//!   CONNECT tunnel, which keeps the socket, keeps the slot). With none free the connection
//!   is closed at once: a flood of sockets runs into the cap, not into the file-descriptor
//!   limit, and the admin listener's own slots keep probes and scrapes answering.
//! - **A complete first request within `header_read_timeout`.** hyper bounds each HTTP/1.1
//!   request head once it knows the connection is HTTP/1.1, but not the protocol detection
//!   before that (nothing sent, `P`, half an HTTP/2 preface), nor HTTP/2's wait for a first
//!   HEADERS frame. A connection that has not started a request by then is dropped.
//! - **A write timeout.** A peer that reads nothing of a response for `write_timeout` is
//!   cut off, so a response (a buffered list page above all) cannot be pinned in memory.
//! - **An idle timeout.** With nothing in flight for `idle_timeout` the connection is closed
//!   gracefully (HTTP/2: GOAWAY, so no stream is cut); an idle HTTP/1.1 connection is closed
//!   sooner by hyper's `header_read_timeout`. Dead HTTP/2 peers are found by keep-alive pings
//!   (see `connection_builder`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::ListenerMetrics;

/// A listener's connection cap and its metrics.
#[derive(Debug)]
pub struct Slots {
    free: Arc<Semaphore>,
    metrics: ListenerMetrics,
    /// For the connections' [`Counted`] sockets.
    pub write_timeout: Duration,
}

impl Slots {
    pub fn new(limit: usize, metrics: ListenerMetrics, write_timeout: Duration) -> Arc<Slots> {
        Arc::new(Slots {
            free: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            metrics,
            write_timeout,
        })
    }

    /// A slot for a connection just accepted, or `None` (counted) when the cap is reached.
    pub fn take(&self) -> Option<Slot> {
        match self.free.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.open.inc();
                Some(Slot {
                    _permit: permit,
                    open: self.metrics.open.clone(),
                    write_timeouts: self.metrics.write_timeout.clone(),
                })
            }
            Err(_) => {
                self.metrics.refused.inc();
                None
            }
        }
    }

    pub fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }
}

/// One connection's place under the cap; given back when the socket is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
    write_timeouts: prometheus::IntCounter,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A socket and its slot (the slot lives exactly as long as the socket), with a write
/// timeout: a peer that reads nothing of what is written to it for `write_timeout` gets an
/// error instead of pinning the response (and its memory) for ever.
#[derive(Debug)]
pub struct Counted<T> {
    io: T,
    slot: Option<Slot>,
    write_timeout: Duration,
    /// Armed while a write is blocked; made the first time one is.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
}

impl<T> Counted<T> {
    pub fn new(io: T, slot: Option<Slot>, write_timeout: Duration) -> Counted<T> {
        Counted {
            io,
            slot,
            write_timeout,
            stall: None,
            stalled: false,
        }
    }

    pub fn into_parts(self) -> (T, Option<Slot>) {
        (self.io, self.slot)
    }

    /// After a write could not proceed: starts the stall timer if it is not running, and
    /// fails the write once it has run out.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.write_timeout;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.stalled {
            timer.as_mut().reset(after(timeout));
            self.stalled = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            if let Some(slot) = &self.slot {
                slot.write_timeouts.inc();
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer read nothing for limits.write_timeout",
            )));
        }
        Poll::Pending
    }

    /// Wraps a write's outcome: progress disarms the stall timer, a block arms it.
    fn track<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            ready => {
                self.stalled = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.track(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.track(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Requests on one connection: how many have started, how many are in flight. Updated by
/// the connection's service, read by its [`guard`].
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// A request has arrived; it is in flight until the returned guard is dropped (its
    /// response head is sent, or it is abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Timeouts a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// For the first complete request, and for an idle close to finish.
    pub first_request: Duration,
    pub idle: Duration,
}

/// Drives `conn` to its end under the rules above; on `stop`, closes it gracefully (what is
/// in flight finishes) and keeps driving it — the caller bounds the drain.
pub async fn guard<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    deadlines: Deadlines,
    stop: impl Future<Output = ()>,
    metrics: &ListenerMetrics,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    tokio::pin!(stop);
    let timer = tokio::time::sleep(deadlines.first_request);
    tokio::pin!(timer);
    // Requests started when the idle timer was last armed.
    let mut seen = 0;
    // Closing because it idled: bounded by the timer. Stopping: bounded by the caller.
    let (mut closing, mut stopping) = (false, false);
    // The timer is polled once after each (re)arming, which registers this task's waker,
    // and after that only once it has fired: polling it on every wake of a busy
    // connection cost ~200 instructions a request.
    let mut arm = true;
    loop {
        let event = std::future::poll_fn(|cx| {
            // The connection first: it is what wakes this task nearly every time.
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            if stopping {
                return Poll::Pending;
            }
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if arm || timer.is_elapsed() {
                arm = false;
                // Outside the task's budget: a poll the budget turned away would not
                // register the timer, and it would then never be looked at again.
                let mut due = tokio::task::unconstrained(timer.as_mut());
                if Pin::new(&mut due).poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => return result,
            Event::Stop => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                }
                stopping = true;
            }
            Event::Timer => {
                let started = activity.started.load(Ordering::Relaxed);
                if closing || started == 0 {
                    // No request in time, or a graceful close the peer did not let finish:
                    // dropping the connection closes the socket.
                    if started == 0 {
                        metrics.silent.inc();
                    }
                    return Ok(());
                }
                if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    metrics.idle.inc();
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    timer.as_mut().reset(after(deadlines.first_request));
                } else {
                    seen = started;
                    timer.as_mut().reset(after(deadlines.idle));
                }
                arm = true;
            }
        }
    }
}

/// What woke the guard.
enum Event<E> {
    Ended(Result<(), E>),
    Stop,
    Timer,
}

/// `now + d`, or a time that never comes when that is past what an `Instant` can hold (a
/// timeout configured as "never" in effect: `"100000000000h"`).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_large_for_an_instant_is_never_rather_than_a_panic() {
        let now = Instant::now();
        assert!(after(Duration::MAX) > now + Duration::from_secs(10 * 365 * 86_400));
        assert!(after(Duration::from_secs(1)) <= Instant::now() + Duration::from_secs(1));
    }
}
