//! Closing idle connections: one task per pool and thread while anything is kept, waking at
//! half the idle timeout, ending when nothing is left (and with the pool).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ConnectionPool, HostConnections};

/// An idle HTTP/1.1 connection returned at `since` is closed once `timeout` has passed.
pub(super) fn idle_expired(since: Instant, now: Instant, timeout: Duration) -> bool {
    now.duration_since(since) >= timeout
}

/// A shared HTTP/2 connection is closed once no stream is open on it and none was taken for
/// `timeout`.
pub(super) fn h2_idle_expired(
    open_streams: usize,
    last_used: Instant,
    now: Instant,
    timeout: Duration,
) -> bool {
    open_streams == 0 && idle_expired(last_used, now, timeout)
}

impl ConnectionPool {
    /// Connections kept for reuse: idle HTTP/1.1 plus shared HTTP/2 (busy or not).
    pub(super) fn kept_count(hosts: &[HostConnections]) -> usize {
        hosts.iter().map(|h| h.idle.len() + h.h2.len()).sum()
    }

    /// Closes connections idle past `idle_timeout` (or already closed) — HTTP/2 ones once no
    /// request has used them for that long; returns how many are left.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut hosts = self.lock();
        for entry in hosts.iter_mut() {
            entry.idle.retain_mut(|idle| {
                !idle_expired(idle.since, now, self.idle_timeout) && idle.conn.is_idle_open()
            });
            entry.h2.retain(|c| {
                !c.sender.is_closed()
                    && !h2_idle_expired(
                        c.open_streams.load(Ordering::Relaxed),
                        c.last_used,
                        now,
                        self.idle_timeout,
                    )
            });
        }
        Self::kept_count(&hosts)
    }

    /// Makes sure one task on this thread will close idle connections once they time out. It
    /// ends when nothing is idle, and with the pool (it holds only a weak reference).
    pub(super) fn sweep_later(self: &Arc<Self>) {
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
                    if Self::kept_count(&pool.lock()) == 0
                        || pool.sweeping.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
            }
        });
    }
}
