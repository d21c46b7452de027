//! Per-account concurrency toward Twilio (`[[accounts]] max_concurrent`): at most that many
//! requests in flight for the account; the rest wait their turn in FIFO order, bounded in
//! number (`upstream.max_queued`) and in time (`upstream.queue_timeout`), so a burst queues in
//! the sidecar instead of turning into Twilio 429s, and a stuck account cannot pile up
//! unbounded work.
//!
//! One limiter per account lives as long as the limit is unchanged across reloads, so
//! requests in flight keep their slots when a new generation takes over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// `upstream.max_queued` requests were already waiting.
    Full,
    /// It waited `upstream.queue_timeout` without one.
    TimedOut,
}

impl QueueRefusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRefusal::Full => "full",
            QueueRefusal::TimedOut => "timeout",
        }
    }
}

/// One account's limit.
#[derive(Debug)]
pub struct AccountLimit {
    limit: usize,
    /// Fair (FIFO): waiters are served in arrival order.
    slots: Semaphore,
    waiting: AtomicUsize,
}

/// A slot: the request may be in flight at Twilio while it is held.
#[derive(Debug)]
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
}

impl AccountLimit {
    pub fn new(limit: usize) -> AccountLimit {
        AccountLimit {
            limit,
            slots: Semaphore::new(limit.min(Semaphore::MAX_PERMITS)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot: at once when one is free, else after the requests queued before this one,
    /// within `timeout`; `max_queued` bounds how many may wait.
    pub async fn acquire(
        &self,
        max_queued: usize,
        timeout: Duration,
    ) -> Result<Slot<'_>, QueueRefusal> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(Slot { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= max_queued {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueRefusal::Full);
        }
        let waited = tokio::time::timeout(timeout, self.slots.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => Err(QueueRefusal::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_queue_in_order_bounded_in_number_and_time() {
        let limit = AccountLimit::new(1);
        let first = limit.acquire(1, Duration::from_secs(5)).await.unwrap();
        // One may wait; a second waiter is refused at once.
        let waiter = limit.acquire(1, Duration::from_secs(5));
        tokio::pin!(waiter);
        assert!(futures_poll(&mut waiter).is_none());
        assert_eq!(limit.waiting(), 1);
        assert_eq!(
            limit.acquire(1, Duration::from_secs(5)).await.unwrap_err(),
            QueueRefusal::Full
        );
        drop(first);
        let second = waiter.await.unwrap();
        assert_eq!(limit.waiting(), 0);
        // Nobody releases: the next waiter times out.
        assert_eq!(
            limit.acquire(1, Duration::from_secs(5)).await.unwrap_err(),
            QueueRefusal::TimedOut
        );
        drop(second);
        assert!(limit.acquire(1, Duration::from_secs(5)).await.is_ok());
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
