//! The data path: the proxy service, its request phases and the one place errors become
//! responses. [`server`] accepts connections; each request then goes through these phases,
//! run top to bottom on one state snapshot by `pipeline` (each phase a function there):
//!
//! 1. **route** — which allowed Twilio host the request is for. Changes nothing; refuses
//!    (400/403/405) bad targets, non-Twilio hosts and unforwarded methods.
//! 2. **canonical path** — decode the path once or refuse it (400). Changes nothing.
//! 3. **policy** — allow, deny or audit_deny. Short-circuits with 403 (code 70051) on a denial
//!    in enforce mode.
//! 4. **account** — pick the account whose credential is attached; refuses an unconfigured
//!    account SID (403).
//! 5. **credential** — the account's `Authorization` value; an OAuth2 account with no usable
//!    token waits briefly for the fetch in flight, then gets 503.
//! 6. **upstream request** — `upstream_head` rewrites the URI to `https://{host}{path}`,
//!    strips the app's credentials, hop-by-hop and method/URL-override headers and attaches
//!    `Authorization`; `upstream_body` (`request_body`) bounds the body (413) and buffers a
//!    small one so the request can be sent again.
//! 7. **upstream call** — `exchange`: pooled, verified TLS; 502/504 on failure. A 401 to a
//!    bearer token drops that token and replays the request once with a new one, when it was
//!    buffered (`unauthorized`).
//! 8. **response** — `respond`: hop-by-hop headers dropped, everything else (Twilio's own
//!    errors too) passed back as received, body streamed; except that a JSON page's paging
//!    links are pointed back at the sidecar ([`paging`]).
//!
//! Phases 1–4 are the gate's ([`crate::gate::Gate::admit`]), shared with `check`. A phase that
//! refuses returns a [`ProxyError`]; [`Proxy::handle`] is the one place that turns it into a
//! response ([`error`]), records metrics and writes the access-log line; a refusal sent with
//! the app's body unread says `Connection: close` unless the body could be discarded first
//! (`request_body`). `headers` holds what never crosses the sidecar.

pub mod connection_guard;
pub mod error;
pub(crate) mod headers;
mod local;
pub mod paging;
mod pipeline;
mod request_body;
mod retry;
pub mod server;
mod tunnel;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::control::state::{SharedState, State};
use crate::metrics::{Metrics, RequestLabels};
use crate::telemetry::access_log::{self, AccessLine};
use crate::upstream::body::ResponseBody as Body;
use error::ProxyError;
use server::ServerOptions;

/// Echoed back to the app and written to the access log.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What one request did, for metrics and the access log. Borrows from the state snapshot.
struct Record<'s> {
    decision: &'static str,
    /// The client's id, `anonymous`, or `-` before (or when) it is known.
    client: &'s str,
    rule: &'s str,
    host: &'s str,
    account: &'s str,
    /// The account's index in the snapshot, once the account phase chose it.
    account_index: usize,
    /// Where the forwarded path starts inside the received path (after a host prefix).
    path_offset: usize,
    twilio_request_id: Option<HeaderValue>,
    /// The identity an Access Token was asked for (never the token).
    identity: Option<Box<str>>,
    /// Times the request was sent again after Twilio answered 429.
    retries: u8,
    /// When `limits.request_timeout` runs out: 429 backoffs never sleep past it.
    deadline: Option<tokio::time::Instant>,
    /// Whether `Host` must be one the sidecar answers to (TCP listener requests).
    check_host: bool,
    /// The app's request body was read to its end (or discarded), or there was none to
    /// read, so its connection can carry another request after a refusal (`request_body`).
    body_done: bool,
}

impl Default for Record<'_> {
    fn default() -> Self {
        Record {
            decision: "refused",
            client: "-",
            rule: "-",
            host: "-",
            account: "-",
            account_index: 0,
            path_offset: 0,
            twilio_request_id: None,
            identity: None,
            retries: 0,
            deadline: None,
            check_host: false,
            body_done: false,
        }
    }
}

/// The proxy service: one per process, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    id_prefix: u32,
    next_id: AtomicU64,
    /// Where `more_info` points for the sidecar's codes unless `admin.error_docs_url` says.
    error_docs: Box<str>,
    /// Requests in flight, bounded by `limits.max_concurrent_requests`: shared by every
    /// listener and tunnel; a request that finds none left is shed at once.
    permits: tokio::sync::Semaphore,
    /// CONNECT tunnels (transparent mode): their connections' options, count and drain.
    tunnels: tunnel::Tunnels,
    /// List pages held for paging-link rewriting, bounded across every serving thread.
    rewrite_budget: Arc<paging::RewriteBudget>,
}

impl Proxy {
    pub fn new(state: Arc<SharedState>, metrics: Arc<Metrics>) -> Proxy {
        // A per-process prefix keeps ids from different sidecar replicas apart.
        let id_prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
            ^ std::process::id().rotate_left(16);
        let (admin, limits) = {
            let s = state.load();
            (s.config.admin, s.config.limits.clone())
        };
        let options = ServerOptions::new(&limits);
        Proxy {
            state,
            id_prefix,
            next_id: AtomicU64::new(1),
            error_docs: admin_error_pages(admin).into(),
            permits: tokio::sync::Semaphore::new(
                limits
                    .max_concurrent_requests
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            // Never asked to stop until `with_shutdown` says how.
            tunnels: tunnel::Tunnels::new(options, tokio::sync::watch::channel(false).1),
            rewrite_budget: paging::RewriteBudget::new(
                limits.max_rewrite_buffer,
                metrics.proxy.rewrite_buffer_bytes.clone(),
            ),
            metrics,
        }
    }

    /// The signal that stops tunnels taking new requests on shutdown (they then finish what
    /// is in flight; [`Proxy::tunnels_drained`] says when).
    pub fn with_shutdown(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Proxy {
        self.tunnels = tunnel::Tunnels::new(self.tunnels.options, stop);
        self
    }

    /// Resolves once no CONNECT tunnel is open.
    pub async fn tunnels_drained(&self) {
        self.tunnels.drained().await;
    }

    /// One request from an app connection: shed at once when `limits.max_concurrent_requests`
    /// are in flight (a permit is one atomic operation, and the request future stays inline in
    /// its connection's task), a tunnel for a CONNECT, else the pipeline.
    ///
    /// The functions that take the request on its way down return an `async move` block
    /// rather than being `async fn`s: an `async fn` keeps each argument twice in its future
    /// (as passed, and moved into its body), and hyper moves the whole future per request.
    pub fn serve_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        self.serve_in(req, true)
    }

    /// [`Proxy::serve_request`] for the unix socket listener: no web page can reach it, and
    /// its clients' `Host` is often the socket's path, so `Host` is not checked
    /// ([`crate::gate::Gate::refuse_browsers`]).
    pub fn serve_unix_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        self.serve_in(req, false)
    }

    #[allow(clippy::manual_async_fn)]
    fn serve_in(
        self: &Arc<Self>,
        req: Request<Incoming>,
        check_host: bool,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        async move {
            match self.permits.try_acquire() {
                Ok(_permit) if req.method() == Method::CONNECT => self.connect(req),
                Ok(_permit) => self.handle_in(req, None, check_host).await,
                Err(_) => self.shed(&req),
            }
        }
    }

    /// The admin listener's address as bound (it may have been port 0), for `more_info`.
    pub fn with_admin_address(mut self, admin: SocketAddr) -> Proxy {
        self.error_docs = admin_error_pages(admin).into();
        self
    }

    /// Where `more_info` points for the sidecar's own codes.
    fn error_docs<'s>(&'s self, state: &'s State) -> &'s str {
        state
            .config
            .error_docs_url
            .as_deref()
            .unwrap_or(&self.error_docs)
    }

    /// Handles one request from the app. Never fails: refusals become Twilio-shaped errors.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.handle_in(req, None, true).await
    }

    /// [`Proxy::handle`] for a request that came in plain, or through `tunnel`; `check_host`
    /// for a TCP listener's requests (see [`crate::gate::Gate::refuse_browsers`]).
    #[allow(clippy::manual_async_fn)]
    fn handle_in<'a>(
        &'a self,
        req: Request<Incoming>,
        tunnel: Option<&'a tunnel::Tunnel>,
        check_host: bool,
    ) -> impl Future<Output = Response<Body>> + Send + 'a {
        async move {
            let started = Instant::now();
            self.metrics.proxy.in_flight.inc();
            let _in_flight = InFlight(&self.metrics);
            // One snapshot for the whole request: a reload mid-request cannot mix generations.
            let state = self.state.load();
            let request_id = self.request_id(req.headers().get(&X_REQUEST_ID));
            let method = req.method().clone();
            let uri = req.uri().clone();

            // The whole-request limit is applied here rather than by an outer layer so that a
            // request that runs out of time still gets its metrics and access-log line.
            let limit = state.config.limits.request_timeout;
            // Cannot overflow: the config reader caps durations at 100 years.
            let deadline = tokio::time::Instant::from_std(started + limit);
            let mut record = Record {
                deadline: Some(deadline),
                check_host,
                body_done: !body_pending(&req),
                ..Record::default()
            };
            let outcome =
                tokio::time::timeout_at(deadline, self.pipeline(&state, req, &mut record, tunnel))
                    .await;
            let error = match outcome {
                Ok(Ok(response)) => {
                    return self.finish(response, &record, &method, &uri, request_id, started)
                }
                Ok(Err(error)) => error,
                Err(_) => ProxyError::RequestTimeout(limit),
            };
            let mut response = error
                .to_response(self.error_docs(&state))
                .map(Either::Right);
            if !record.body_done {
                request_body::announce_close(&mut response);
            }
            self.finish(response, &record, &method, &uri, request_id, started)
        }
    }

    /// The answer for a request shed because `limits.max_concurrent_requests` are in flight:
    /// 503 with `Retry-After`, counted and logged like any other request. Its body is not
    /// read (that is the work being shed): the connection closes after it if it had one.
    fn shed(&self, req: &Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        self.metrics.proxy.load_shed.inc();
        let record = Record {
            decision: "shed",
            ..Record::default()
        };
        let state = self.state.load();
        let mut response = ProxyError::Overloaded
            .to_response(self.error_docs(&state))
            .map(Either::Right);
        if body_pending(req) {
            request_body::announce_close(&mut response);
        }
        let request_id = self.request_id(req.headers().get(X_REQUEST_ID));
        self.finish(
            response,
            &record,
            req.method(),
            req.uri(),
            request_id,
            started,
        )
    }

    /// Adds the request id, then records the metrics and the access-log line.
    fn finish(
        &self,
        mut response: Response<Body>,
        record: &Record<'_>,
        method: &Method,
        uri: &Uri,
        request_id: HeaderValue,
        started: Instant,
    ) -> Response<Body> {
        let status = response.status();
        let elapsed = started.elapsed();
        self.metrics.proxy.request(
            &RequestLabels {
                decision: record.decision,
                rule: record.rule,
                host: record.host,
                method: method_label(method),
                status: status.as_str(),
                client: record.client,
            },
            elapsed.as_secs_f64(),
        );
        access_log::log(|| AccessLine {
            request_id: request_id.to_str().unwrap_or("-"),
            method: method.as_str(),
            host: record.host,
            path: uri.path().get(record.path_offset..).unwrap_or(""),
            client: record.client,
            rule: record.rule,
            decision: record.decision,
            account: record.account,
            status: status.as_u16(),
            latency: elapsed,
            twilio_request_id: record
                .twilio_request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            identity: record.identity.as_deref().unwrap_or("-"),
            retries_429: record.retries,
        });
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
    }

    /// The app's `X-Request-Id` when it is short and printable, else a new one.
    fn request_id(&self, from_app: Option<&HeaderValue>) -> HeaderValue {
        if let Some(v) = from_app {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
                return v.clone();
            }
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        generated_request_id(self.id_prefix, n)
    }
}

/// `http://{admin}/errors`, with an unspecified admin IP (`0.0.0.0`) as loopback: the pages
/// are reachable from the sidecar's own host or pod.
pub(crate) fn admin_error_pages(admin: SocketAddr) -> String {
    let ip = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
        ip if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/errors", SocketAddr::new(ip, admin.port()))
}

/// `{prefix:08x}{n:016x}`, written in place rather than through `format!`: nearly every
/// request gets one.
fn generated_request_id(prefix: u32, n: u64) -> HeaderValue {
    let mut id = [0u8; 24];
    let digits = (u128::from(prefix) << 64) | u128::from(n);
    for (i, b) in id.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((digits >> (4 * (23 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// An HTTP/1 request whose body has yet to be read: refused unread, its connection closes
/// (`request_body`). HTTP/2 resets just the stream.
fn body_pending(req: &Request<Incoming>) -> bool {
    use hyper::body::Body as _;
    req.version() < http::Version::HTTP_2 && !req.body().is_end_stream()
}

/// Decrements the in-flight gauge however the request ends (including a dropped future).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.proxy.in_flight.dec();
    }
}

/// Bounded method label: forwarded methods by name, anything else as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_prefix_then_counter_in_hex() {
        for (prefix, n) in [
            (0, 0),
            (0xdead_beef, 1),
            (u32::MAX, u64::MAX),
            (0x1234, 0xabc),
        ] {
            assert_eq!(
                generated_request_id(prefix, n).to_str().unwrap(),
                format!("{prefix:08x}{n:016x}")
            );
        }
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"post").unwrap()), "OTHER");
    }
}
