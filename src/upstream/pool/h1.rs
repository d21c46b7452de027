//! HTTP/1.1 connections: leased to one request at a time, and taken back when the response
//! has been read to its end (by [`UpstreamBody`]'s drop), most recently used first, so the
//! busiest few stay warm.

use std::sync::{Arc, Weak};
use std::time::Instant;

use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::client::conn::http1;

use super::{entry_for, ConnectionPool, Unsent};
use crate::upstream::body::{RequestBody, UpstreamBody};

/// An HTTP/1.1 connection waiting in the pool for its next request.
pub(super) struct IdleConnection {
    pub(super) sender: http1::SendRequest<RequestBody>,
    pub(super) since: Instant,
}

/// An HTTP/1.1 connection lent to one request, to return once its response has been read.
pub(crate) struct PooledSender {
    pool: Weak<ConnectionPool>,
    authority: Authority,
    sender: http1::SendRequest<RequestBody>,
}

impl PooledSender {
    /// Back to the pool (if it still exists): the response was read to its end.
    pub(crate) fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(&self.authority, self.sender);
        }
    }
}

impl ConnectionPool {
    /// One HTTP/1.1 exchange on `sender`; the response's body returns the connection to the
    /// pool when it ends.
    pub(super) async fn exchange_h1(
        self: &Arc<Self>,
        authority: &Authority,
        mut sender: http1::SendRequest<RequestBody>,
        host_header: HeaderValue,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        // HTTP/1.1 wants origin form and a Host header; the URI carried the host. The
        // absolute URI is put back if the request must go out again.
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
                    authority: authority.clone(),
                    sender,
                };
                Ok(response.map(|body| UpstreamBody::pooled(body, pool)))
            }
            Err(mut e) => match e.take_message() {
                Some(mut unsent) => {
                    *unsent.uri_mut() = absolute_uri;
                    Err(Unsent::Again(unsent, e.into_error()))
                }
                None => Err(Unsent::Failed(e.into_error())),
            },
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
}
