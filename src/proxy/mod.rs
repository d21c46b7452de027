//! The request path, as named phases run top to bottom on one state snapshot:
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
//! 6. **upstream request** — rewrite the URI to `https://{host}{path}`, strip the app's
//!    credentials, hop-by-hop and method/URL-override headers, attach `Authorization`. The
//!    body streams through untouched (a small bearer-request body is buffered for a replay).
//! 7. **upstream call** — pooled, verified TLS; 502/504 on failure. A 401 to a bearer token
//!    drops that token and replays the request once with a new one, when it was buffered.
//! 8. **response** — hop-by-hop headers dropped, everything else (Twilio's own errors too)
//!    passed back as received, body streamed; except that a JSON page's paging links are
//!    pointed back at the sidecar ([`crate::proxy::paging`]).
//!
//! A phase that refuses returns a [`ProxyError`]; [`Proxy::handle`] is the one place that turns
//! it into a response, records metrics and writes the access-log line.

pub mod error;
pub mod paging;
pub mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::upstream::pool::{replayable, UpstreamBody};
use crate::credentials::{Account, Attached};
use crate::proxy::error::{ProxyError, UpstreamFailure};
use crate::gate::{Gate, Trace};
use crate::metrics::{Metrics, Series, Timing};
use crate::proxy::paging::{rewrite_links, LinkBase, MAX_REWRITE_BODY};
use crate::gate::policy::Verdict;
use crate::gate::route::RouteSource;
use crate::control::state::{SharedState, State};
use crate::upstream::{RequestBody, ResponseBody as Body};

/// Echoed back to the app and written to the access log.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Twilio's own request id, logged when present.
const TWILIO_REQUEST_ID: HeaderName = HeaderName::from_static("twilio-request-id");

/// Headers an app may not pass to Twilio: its own credentials, hop-by-hop headers, and the
/// method/URL override headers some servers honour (which would let a request be checked as one
/// thing and executed as another).
static STRIPPED_REQUEST_HEADERS: [HeaderName; 21] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::FORWARDED,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Hop-by-hop headers dropped from Twilio's response; hyper frames the body itself.
static STRIPPED_RESPONSE_HEADERS: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// What one request did, for metrics and the access log. Borrows from the state snapshot.
struct Record<'s> {
    decision: &'static str,
    rule: &'s str,
    host: &'s str,
    account: &'s str,
    /// Where the forwarded path starts inside the received path (after a host prefix).
    path_offset: usize,
    twilio_request_id: Option<HeaderValue>,
}

impl Default for Record<'_> {
    fn default() -> Self {
        Record {
            decision: "refused",
            rule: "-",
            host: "-",
            account: "-",
            path_offset: 0,
            twilio_request_id: None,
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
}

impl Proxy {
    pub fn new(state: Arc<SharedState>, metrics: Arc<Metrics>) -> Proxy {
        // A per-process prefix keeps ids from different sidecar replicas apart.
        let id_prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
            ^ std::process::id().rotate_left(16);
        Proxy {
            state,
            metrics,
            id_prefix,
            next_id: AtomicU64::new(1),
        }
    }

    /// Handles one request from the app. Never fails: refusals become Twilio-shaped errors.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        // One snapshot for the whole request: a reload mid-request cannot mix generations.
        let state = self.state.load();
        let request_id = self.request_id(req.headers().get(&X_REQUEST_ID));
        let method = req.method().clone();
        let uri = req.uri().clone();

        let mut record = Record::default();
        // The whole-request limit is applied here rather than by an outer layer so that a
        // request that runs out of time still gets its metrics and access-log line.
        let limit = state.config.limits.request_timeout;
        let outcome = tokio::time::timeout(limit, self.pipeline(&state, req, &mut record)).await;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => error.to_response().map(Either::Right),
            Err(_) => ProxyError::RequestTimeout(limit)
                .to_response()
                .map(Either::Right),
        };
        self.finish(response, &record, &method, &uri, request_id, started)
    }

    /// The answer for a request shed because `limits.max_concurrent_requests` are in flight:
    /// 503 with `Retry-After`, counted and logged like any other request.
    pub fn shed(
        &self,
        method: &Method,
        uri: &Uri,
        app_request_id: Option<&HeaderValue>,
    ) -> Response<Body> {
        let started = Instant::now();
        self.metrics.load_shed.inc();
        let record = Record {
            decision: "shed",
            ..Record::default()
        };
        let response = ProxyError::Overloaded.to_response().map(Either::Right);
        let request_id = self.request_id(app_request_id);
        self.finish(response, &record, method, uri, request_id, started)
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
        self.metrics.inc(
            Series::Requests,
            &[
                record.decision,
                record.rule,
                record.host,
                method_label(method),
                status.as_str(),
            ],
        );
        self.metrics.observe(
            Timing::Request,
            &[record.host, record.decision],
            elapsed.as_secs_f64(),
        );
        let path = uri.path().get(record.path_offset..).unwrap_or("");
        info!(
            target: "twilio_sidecar::access",
            request_id = request_id.to_str().unwrap_or("-"),
            method = %method,
            host = record.host,
            path,
            rule = record.rule,
            decision = record.decision,
            account = record.account,
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            twilio_request_id = record
                .twilio_request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        );
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
    }

    async fn pipeline<'s>(
        &self,
        state: &'s State,
        req: Request<Incoming>,
        record: &mut Record<'s>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();

        // Phases 1-4 (route, canonical path, policy, account) only read the request.
        let mut trace = Trace::default();
        let admitted = state.gate.admit(&parts, &mut trace);
        let hosts = &state.gate.router.hosts;
        record.host = trace.host.map_or("-", |h| hosts.name(h));
        record.path_offset = trace.path_offset;
        if let Some(decision) = trace.decision {
            record.decision = decision.label();
            record.rule = state.gate.policy.rule_label(decision.verdict);
            if let Verdict::Allow { rule } | Verdict::Deny { rule } = decision.verdict {
                let effect = state.gate.policy.rules()[rule as usize].effect.as_str();
                self.metrics.inc(Series::RuleHits, &[effect, record.rule]);
            }
        }
        let admission = admitted?;
        let account = &state.accounts[admission.account];
        record.account = &account.sid;
        if Gate::is_audit_only(&admission.decision) {
            warn!(
                method = %parts.method,
                host = record.host,
                path = admission.route.path,
                rule = record.rule,
                "policy audit: this request would be denied in enforce mode; forwarding it"
            );
        }

        // The forwarded target: the original bytes, minus a stripped host prefix.
        let route = admission.route;
        // A GET may come back as a page of a list whose links must point back here: keep what
        // the rewrite needs (reference-counted clones; the link base is built only if needed).
        // (The 2010 API on api.* pages with relative `next_page_uri`: nothing to rewrite, so
        // its responses stream untouched.)
        let pages_with_links =
            parts.method == Method::GET && !hosts.name(route.host).starts_with("api.");
        let paging = pages_with_links.then(|| {
            let authority = parts.headers.get(header::HOST).cloned().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            (route.source, authority)
        });
        let path_and_query = match (route.source, parts.uri.path_and_query()) {
            (RouteSource::PathPrefix, _) | (_, None) => {
                let mut pq =
                    String::with_capacity(route.path.len() + 1 + route.query.map_or(0, str::len));
                pq.push_str(route.path);
                if let Some(q) = route.query {
                    pq.push('?');
                    pq.push_str(q);
                }
                PathAndQuery::try_from(pq).map_err(|e| ProxyError::BadTarget(e.to_string()))?
            }
            (_, Some(pq)) => pq.clone(),
        };
        let host = route.host;

        // A stated body length over the limit is refused before anything else happens.
        let max = state.config.limits.max_request_body;
        if body.size_hint().lower() > max {
            return Err(ProxyError::BodyTooLarge(max));
        }

        // Phase 5: credential. An OAuth2 account may wait briefly for a token (bounded); a
        // static one never waits.
        let attached = self.attach(account, record.account).await?;

        // Phase 6: upstream request.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTPS);
        uri.authority = Some(hosts.authority(host).clone());
        uri.path_and_query = Some(path_and_query);
        parts.uri = Uri::from_parts(uri).map_err(|e| ProxyError::BadTarget(e.to_string()))?;
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            // Chunked framing wins over a stated length; never forward both.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_request_headers(&mut parts.headers);
        if paging.is_some() {
            // Paging links can only be rewritten in a body that is not compressed.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        parts
            .headers
            .insert(header::AUTHORIZATION, attached.header.clone());
        // hyper picks HTTP/2 or 1.1 upstream by ALPN, whatever the app spoke.
        parts.version = Version::HTTP_11;

        // The body never exceeds limits.max_request_body on its way to Twilio. One of unknown
        // length (chunked) is read first, bounded, so an oversized one never reaches Twilio; a
        // small one is buffered too, so the request can be sent again — after a 401 with a
        // bearer token, or when Twilio's HTTP/2 edge refuses the stream unprocessed. Larger
        // bodies stream.
        let max = state.config.limits.max_request_body;
        let replay_limit = state.config.oauth.replay_body_limit;
        let known = body.size_hint().upper();
        let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        let buffer = match known {
            None => true,
            // Nothing to hold, except that a bearer request's 401 replay is built from it.
            Some(0) => attached.bearer.is_some(),
            Some(n) => n <= replay_limit,
        };
        let (body, replayable_size) = if buffer {
            let bytes = limited
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        ProxyError::BodyTooLarge(max)
                    } else {
                        ProxyError::BadBody(e.to_string())
                    }
                })?
                .to_bytes();
            let size = bytes.len() as u64;
            (Either::Right(Full::new(bytes)), size <= replay_limit)
        } else {
            (Either::Left(limited), false)
        };
        let req = Request::from_parts(parts, body);
        // A bearer request keeps a copy to send again if Twilio rejects the token.
        let replay = (attached.bearer.is_some() && replayable_size)
            .then(|| replayable(&req))
            .flatten();

        // Phase 7: upstream call.
        let mut response = self.call_upstream(state, record.host, req).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            if let Some((cache, id)) = &attached.bearer {
                // Drop the rejected token (if no other request already did) and replay once.
                cache.invalidate(*id);
                let outcome = if replay.is_some() {
                    "replayed"
                } else {
                    "not_replayable"
                };
                self.metrics
                    .oauth_replays
                    .with_label_values(&[record.account, outcome])
                    .inc();
                if let Some(mut req) = replay {
                    let again = self.attach(account, record.account).await?;
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, again.header.clone());
                    drop(response);
                    response = self.call_upstream(state, record.host, req).await?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        if let Some((cache, id)) = &again.bearer {
                            cache.invalidate(*id);
                        }
                    }
                }
            }
        }

        // Phase 8: response.
        strip_response_headers(response.headers_mut());
        record.twilio_request_id = response.headers().get(TWILIO_REQUEST_ID).cloned();
        if let Some((source, authority)) = paging {
            if let Some(len) = rewritable_json(&response) {
                let default_host = hosts.name(state.gate.router.default_host);
                let base = LinkBase::for_request(source, authority.as_ref(), default_host);
                return self
                    .rewrite_paging(response, len, base, hosts, record.host)
                    .await;
            }
        }
        Ok(response.map(Either::Left))
    }

    /// Buffers a (bounded, uncompressed) JSON page and points its paging links back here.
    async fn rewrite_paging(
        &self,
        response: Response<UpstreamBody>,
        len: u64,
        base: Option<LinkBase>,
        hosts: &crate::gate::route::Hosts,
        host: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|_| {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[host, UpstreamFailure::Protocol.as_str()])
                    .inc();
                ProxyError::UpstreamUnreachable {
                    host: host.to_string(),
                    kind: UpstreamFailure::Protocol,
                }
            })?
            .to_bytes();
        let body = match base.and_then(|b| rewrite_links(&bytes, &b, hosts)) {
            Some(rewritten) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                Bytes::from(rewritten)
            }
            None => {
                debug_assert_eq!(bytes.len() as u64, len);
                bytes
            }
        };
        Ok(Response::from_parts(parts, Either::Right(Full::new(body))))
    }

    /// The account's credential; a missing one is counted and becomes a 503.
    async fn attach(&self, account: &Account, sid: &str) -> Result<Attached, ProxyError> {
        account.credential.attach().await.map_err(|e| {
            self.metrics.no_credential.with_label_values(&[sid]).inc();
            ProxyError::NoCredential(e.0)
        })
    }

    /// One upstream exchange, timed and counted; failures become 502/504.
    async fn call_upstream(
        &self,
        state: &State,
        host: &str,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let sent = Instant::now();
        let result = state.upstream.send(req).await;
        self.metrics
            .observe(Timing::Upstream, &[host], sent.elapsed().as_secs_f64());
        result.map_err(|kind| {
            self.metrics
                .upstream_errors
                .with_label_values(&[host, kind.as_str()])
                .inc();
            let host = host.to_string();
            match kind {
                UpstreamFailure::Timeout => ProxyError::UpstreamTimeout { host },
                kind => ProxyError::UpstreamUnreachable { host, kind },
            }
        })
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

/// Decrements the in-flight gauge however the request ends (including a dropped future).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn strip_request_headers(headers: &mut HeaderMap) {
    if lists_other_headers(headers) {
        remove_connection_listed(headers);
    }
    // One pass over the few headers the app sent, rather than a lookup per name we strip.
    let mut doomed: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    for name in headers.keys() {
        if STRIPPED_REQUEST_HEADERS.contains(name) {
            if n == doomed.len() {
                // Unusually many: remove every stripped name the slow way.
                for name in STRIPPED_REQUEST_HEADERS.iter() {
                    headers.remove(name);
                }
                return;
            }
            doomed[n] = Some(name.clone());
            n += 1;
        }
    }
    for name in doomed.iter().take(n).flatten() {
        headers.remove(name);
    }
}

fn strip_response_headers(headers: &mut HeaderMap) {
    if lists_other_headers(headers) {
        remove_connection_listed(headers);
    }
    for name in STRIPPED_RESPONSE_HEADERS.iter() {
        headers.remove(name);
    }
}

/// Whether `Connection` holds anything beyond a bare `close` / `keep-alive` (what HTTP/1.1
/// peers nearly always send, and `Connection` itself is stripped anyway).
#[inline]
fn lists_other_headers(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        let v = v.as_bytes();
        !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"))
    })
}

/// Removes the headers the message's `Connection` header lists (RFC 9110 §7.6.1: they are
/// for the next hop only). Out of line and only after [`lists_other_headers`]: parsing every
/// token of a plain `Connection: keep-alive` measured at several hundred instructions a
/// response.
#[cold]
#[inline(never)]
fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|name| HeaderName::try_from(name).ok())
        .collect();
    for name in &listed {
        headers.remove(name);
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

/// The length of a response whose paging links may be rewritten: a successful, uncompressed
/// JSON body of a known size up to [`MAX_REWRITE_BODY`].
fn rewritable_json(response: &Response<UpstreamBody>) -> Option<u64> {
    let headers = response.headers();
    let json = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        // Case-insensitive, without allocating: `application/json` or `application/…+json`.
        let ct = v.as_bytes();
        let essence = ct.split(|b| *b == b';').next().unwrap_or(ct).trim_ascii();
        essence.eq_ignore_ascii_case(b"application/json")
            || (essence.len() > 17
                && essence[..12].eq_ignore_ascii_case(b"application/")
                && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
    });
    let identity = headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let len = response.body().size_hint().exact()?;
    (response.status().is_success() && json && identity && len <= MAX_REWRITE_BODY).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_hop_by_hop_and_overrides() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Basic YXBwOmFwcA=="),
            ("proxy-authorization", "Basic eA=="),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/2010-04-01/Accounts/AC1/Keys.json"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "twilio-python/9"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "user-agent"]);
    }

    #[test]
    fn strips_hop_by_hop_from_twilios_response_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-edge-hop"),
            ("keep-alive", "timeout=5"),
            ("x-edge-hop", "1"),
            ("twilio-request-id", "RQ1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_response_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "twilio-request-id"]);
    }

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
