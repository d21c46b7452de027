//! HTTP/1.1 connections: leased to one request at a time, and taken back when the response
//! has been read to its end (by [`UpstreamBody`]), most recently used first, so the busiest
//! few stay warm.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Instant;

use http::uri::Authority;
use http::{HeaderValue, Request, Response};

use super::{entry_for, ConnectionPool, ExchangeError, Unsent};
use crate::upstream::body::{RequestBody, UpstreamBody};
use crate::upstream::http1::{Http1Connection, SendError};

/// An HTTP/1.1 connection waiting in the pool for its next request.
pub(super) struct IdleConnection {
    pub(super) conn: Box<Http1Connection>,
    pub(super) since: Instant,
}

/// Where an HTTP/1.1 connection lent to one request goes back once its response has been read.
pub(crate) struct ReturnAddress {
    pool: Weak<ConnectionPool>,
    authority: Authority,
}

impl ReturnAddress {
    /// Back to the pool (if it still exists): the response was read to its end.
    pub(crate) fn give_back(self, conn: Box<Http1Connection>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(&self.authority, conn);
        }
    }
}

impl ConnectionPool {
    /// One HTTP/1.1 exchange on `conn`, in this task; the response's body returns the
    /// connection to the pool when it ends.
    /// (Not an `async fn`, which would keep `req` twice in every request's future.)
    #[allow(clippy::manual_async_fn)]
    pub(super) fn exchange_h1<'a>(
        self: &'a Arc<Self>,
        authority: &'a Authority,
        conn: Box<Http1Connection>,
        host_header: HeaderValue,
        req: Request<RequestBody>,
        reused: bool,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Unsent>> + Send + 'a {
        async move {
            match conn.send(req, &host_header, reused).await {
                Ok(response) => {
                    let home = ReturnAddress {
                        pool: Arc::downgrade(self),
                        authority: authority.clone(),
                    };
                    Ok(response.map(|body| UpstreamBody::http1(body, home)))
                }
                Err(SendError::Unsent(req, e)) => Err(Unsent::Again(req, ExchangeError::Http1(e))),
                Err(SendError::Failed(e)) => Err(Unsent::Failed(ExchangeError::Http1(e))),
            }
        }
    }

    /// Takes back an HTTP/1.1 connection whose response was read to the end.
    fn give_back(self: &Arc<Self>, authority: &Authority, conn: Box<Http1Connection>) {
        {
            let mut hosts = self.lock();
            let Ok(entry) = entry_for(&mut hosts, authority) else {
                return;
            };
            if entry.idle.len() >= self.max_idle_per_host {
                return;
            }
            entry.idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
        self.sweep_later();
    }
}
