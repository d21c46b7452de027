//! The request phases, one function each, run top to bottom by [`Proxy::pipeline`] on one
//! state snapshot. Each says what it may change and when it short-circuits; a phase that
//! refuses returns a [`ProxyError`] and nothing after it runs.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use tracing::warn;

use super::headers::{strip_hop_by_hop, strip_request_headers};
use super::paging::{rewrite_links, HeldPage, LinkBase, MAX_REWRITE_BODY};
use super::request_body::{discard, read_body, upstream_body, AppBody};
use super::tunnel::Tunnel;
use super::{Proxy, Record};
use crate::control::state::State;
use crate::credentials::pkcv::{request_hash, TWILIO_CLIENT_VALIDATION};
use crate::credentials::{Account, Attached, Invalidation, PkcvSigner};
use crate::gate::clients::{AuthFailure, Caller};
use crate::gate::params::{BodyView, Params};
use crate::gate::policy::Verdict;
use crate::gate::route::{HostId, Hosts, RouteSource};
use crate::gate::{Admission, Gate, Refusal, Trace};
use crate::proxy::error::ProxyError;
use crate::upstream::body::{replayable, RequestBody, ResponseBody as Body, UpstreamBody};
use crate::upstream::UpstreamFailure;

/// Twilio's own request id, logged when present.
const TWILIO_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("twilio-request-id");

/// What the forwarded request keeps of the received one once it is admitted.
/// What the response phase decided.
enum Respond {
    /// Stream Twilio's body to the app as it arrives.
    Stream(Response<Body>),
    /// Read the JSON page (`len` bytes) and point its paging links at `base` first.
    Rewrite(Response<UpstreamBody>, u64, LinkBase),
}

struct Target {
    host: HostId,
    /// Rules with parameter conditions may still change the decision: the parameters must be
    /// read ([`Proxy::settle`]) before anything is forwarded.
    pending: bool,
    /// The original bytes, minus a stripped host prefix.
    path_and_query: PathAndQuery,
    /// For a GET that may come back as a page of a list: how the request reached the sidecar
    /// and its authority, so the page's links can point back here.
    paging: Option<(RouteSource, Option<HeaderValue>)>,
}

impl Proxy {
    /// Phases 1–8 for one request. The hot path stays flat: each phase that can wait is
    /// awaited from here, and the request is moved as little as possible (hyper moves this
    /// whole future once per request, and each nested future is a copy of its arguments).
    pub(super) async fn pipeline<'s>(
        &self,
        state: &'s State,
        req: Request<Incoming>,
        record: &mut Record<'s>,
        tunnel: Option<&Tunnel>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // Phases 0–4 read the head only. Refused there, the body is unread: a small one is
        // read and dropped so the app's connection can carry its next request. Boxed, as
        // every rare path here: its future need not enlarge every request's.
        let (caller, target) = match self.head_phases(state, &parts, tunnel, record) {
            Ok((caller, Some(target))) => (caller, target),
            // The sidecar's own endpoints: never routed to Twilio.
            Ok((caller, None)) => {
                return Box::pin(self.local(state, parts, body, caller, record)).await
            }
            Err(error) => {
                record.body_done = Box::pin(discard(body, &parts)).await;
                return Err(error);
            }
        };
        let account = &state.accounts[record.account_index];
        // A stated body length over the limit is refused before anything else happens.
        let max = state.config.limits.max_request_body;
        if body.size_hint().lower() > max {
            return Err(ProxyError::BodyTooLarge(max));
        }
        let body = if target.pending {
            // Boxed: only requests that rules with parameter conditions apply to read their
            // parameters; the rest keep a small future.
            Box::pin(self.settle(state, &parts, caller, tunnel, body, record)).await?
        } else {
            AppBody::Streaming(body)
        };
        let attached = match self.credential(account, record.account).await {
            Ok(attached) => attached,
            Err(error) => {
                if let AppBody::Streaming(body) = body {
                    record.body_done = Box::pin(discard(body, &parts)).await;
                }
                return Err(error);
            }
        };
        let dropped = upstream_head(state, &mut parts, &target, &attached)?;
        if dropped > 0 {
            self.metrics.proxy.headers_dropped.inc_by(dropped);
        }
        let pkcv = account.pkcv.as_ref();
        let (body, buffered) = upstream_body(state, body, &attached, pkcv.is_some()).await?;
        record.body_done |= buffered.is_some();
        if let (Some(signer), Some(body)) = (pkcv, &buffered) {
            // Boxed: RSA signing is for PKCV accounts only; it must not enlarge every
            // request's future. (Their credential is an API key, so the 401 replay below,
            // for bearer tokens, never applies to them.)
            Box::pin(self.sign_pkcv(signer, &mut parts, body, record.account)).await?;
        }
        let req = Request::from_parts(parts, body);
        // A copy to send again — after a 401 to a bearer token, or a 429, which Twilio never
        // processed — when the body is empty or was buffered (within the replay limit).
        let replay_limit = state.config.oauth.replay_body_limit;
        let small = buffered
            .as_ref()
            .is_none_or(|b| b.len() as u64 <= replay_limit);
        let spare = (small && (attached.bearer.is_some() || state.config.upstream.retry_429 > 0))
            .then(|| replayable(&req))
            .flatten();

        // Phase 7 — **upstream call**: under the account's max_concurrent (boxed: most
        // accounts have none), then the replay after a 401 to a bearer token and the
        // retries after a 429.
        let slot = match &account.limit {
            Some(limit) => Some(Box::pin(self.queue(state, limit, record.account)).await?),
            None => None,
        };
        let mut response = self.exchange(state, record.host, req).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let replay = spare.as_ref().and_then(replayable);
            if let Some(again) = self.unauthorized(record, &attached, replay) {
                drop(response);
                // Boxed: a second exchange in this future would double its size.
                response = Box::pin(self.replay(state, account, again, record.host)).await?;
            }
        }
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            response =
                Box::pin(self.retry_429(state, account, response, spare, buffered, slot, record))
                    .await?;
        }
        match self.respond(state, response, target.paging, record) {
            Respond::Stream(response) => Ok(response),
            Respond::Rewrite(response, len, base) => {
                let hosts = &state.gate.router.hosts;
                self.rewrite_paging(response, len, base, hosts, record.host)
                    .await
            }
        }
    }

    /// Phases 0–4, which read the request's head only: browsers, then the caller, then —
    /// unless it is one of the sidecar's own endpoints (`None`) — the target.
    fn head_phases<'s>(
        &self,
        state: &'s State,
        parts: &Parts,
        tunnel: Option<&Tunnel>,
        record: &mut Record<'s>,
    ) -> Result<(Caller, Option<Target>), ProxyError> {
        // Phase 0 — browsers: a web page driving the sidecar is refused before anything else
        // (before a 401 could make a browser ask its user for credentials).
        if let Err(refusal) = state.gate.refuse_browsers(parts, record.check_host) {
            self.metrics.proxy.browser_refusals.inc();
            return Err(refusal.into());
        }
        let caller = match tunnel {
            Some(tunnel) => self.tunnel_caller(state, tunnel, record)?,
            None => self.identify(state, &parts.headers, record)?,
        };
        if parts.uri.path().starts_with(super::local::PREFIX) {
            return Ok((caller, None));
        }
        // Phases 1–4: the same code `check` runs.
        Ok((
            caller,
            Some(self.admit(state, parts, caller, tunnel, record)?),
        ))
    }

    /// Phase 0 — **client**: with `[[clients]]`, who is asking, from the Basic credentials in
    /// `Authorization` or `Proxy-Authorization` (both are stripped later, as always). Changes
    /// nothing. Short-circuits with 401 (code 20003, counted by reason) when they are missing
    /// (and anonymous requests are not served), malformed, or not valid — an unknown id and a
    /// wrong secret answered alike.
    pub(super) fn identify<'s>(
        &self,
        state: &'s State,
        headers: &http::HeaderMap,
        record: &mut Record<'s>,
    ) -> Result<Caller, Refusal> {
        if !state.client_keys.any() {
            record.client = "anonymous";
            return Ok(Caller::Anonymous);
        }
        let caller = match state.client_keys.authenticate(headers) {
            Ok(Caller::Anonymous) if !state.gate.anonymous => Err(AuthFailure::Missing),
            other => other,
        };
        match caller {
            Ok(caller) => {
                record.client = state.gate.client_label(caller);
                Ok(caller)
            }
            Err(failure) => {
                self.metrics
                    .proxy
                    .client_auth_failures
                    .with_label_values(&[failure.as_str()])
                    .inc();
                Err(Refusal::Unauthenticated(failure))
            }
        }
    }

    /// Phases 1–4 — **route**, **canonical path**, **policy**, **account** — as the gate
    /// decides them for `caller` ([`Gate::admit_as`]). Changes nothing; records how far the
    /// request got.
    /// Short-circuits with the gate's refusal (400/403/405), or 403 (70051) on a denial in
    /// enforce mode; an audit-mode denial is logged and goes on.
    fn admit<'s>(
        &self,
        state: &'s State,
        parts: &Parts,
        caller: Caller,
        tunnel: Option<&Tunnel>,
        record: &mut Record<'s>,
    ) -> Result<Target, Refusal> {
        let mut trace = Trace::default();
        let pinned = pinned_host(state, tunnel)?;
        let admitted = state.gate.admit_as(parts, caller, pinned, &mut trace);
        let admission = self.note_admission(state, parts, caller, admitted, &trace, record)?;
        target(&state.gate.router.hosts, parts, &admission)
    }

    /// Phase 3, continued — **parameters**, for a request whose decision rules with parameter
    /// conditions could change: its query and body ([`crate::gate::params`]) are read —
    /// the body up to `policy.max_inspected_body` (a larger one cannot satisfy an allow
    /// rule's conditions), within `limits.max_request_body` — and phases 1–4 decided again
    /// with them. Changes nothing; the body read is what is forwarded, byte for byte.
    /// Short-circuits with 400 (79410) for malformed parameters, 413 over the body limit, or
    /// the policy's refusal.
    async fn settle<'s>(
        &self,
        state: &'s State,
        parts: &Parts,
        caller: Caller,
        tunnel: Option<&Tunnel>,
        body: Incoming,
        record: &mut Record<'s>,
    ) -> Result<AppBody, ProxyError> {
        let inspect = state.config.policy.max_inspected_body;
        let max = state.config.limits.max_request_body;
        let body = if body.size_hint().lower() > inspect {
            AppBody::Streaming(body)
        } else {
            let bytes = read_body(body, max).await?;
            record.body_done = true;
            AppBody::Read(bytes)
        };
        let view = match &body {
            AppBody::Read(bytes) if bytes.len() as u64 <= inspect => BodyView::Bytes(bytes),
            _ => BodyView::TooLarge,
        };
        let params = Params::read(parts.uri.query(), &parts.headers, view)
            .map_err(|e| Refusal::BadParams(e.to_string()))?;
        let mut trace = Trace::default();
        let pinned = pinned_host(state, tunnel)?;
        let admitted = state
            .gate
            .admit_with(parts, caller, pinned, Some(&params), &mut trace);
        self.note_admission(state, parts, caller, admitted, &trace, record)?;
        Ok(body)
    }

    /// Records how far a request got in phases 1–4 and the rule that decided (counted once
    /// the decision is final), and passes the admission on.
    fn note_admission<'s, 'r>(
        &self,
        state: &'s State,
        parts: &Parts,
        caller: Caller,
        admitted: Result<Admission<'r>, Refusal>,
        trace: &Trace,
        record: &mut Record<'s>,
    ) -> Result<Admission<'r>, Refusal> {
        let hosts = &state.gate.router.hosts;
        record.host = trace.host.map_or("-", |h| hosts.name(h));
        record.path_offset = trace.path_offset;
        record.decision = Gate::outcome_label(&admitted, trace);
        if let Some(decision) = trace.decision.filter(|d| !d.pending) {
            let policy = state.gate.policy_for(caller);
            record.rule = policy.rule_label(decision.verdict);
            if let Verdict::Allow { rule } | Verdict::Deny { rule, .. } = decision.verdict {
                let effect = policy.rules()[rule as usize].effect.as_str();
                self.metrics.proxy.rule_hit(effect, record.rule);
            }
        }
        let admission = admitted?;
        record.account_index = admission.account;
        record.account = &state.accounts[admission.account].sid;
        if !admission.decision.pending && Gate::is_audit_only(&admission.decision) {
            warn!(
                method = %parts.method,
                host = record.host,
                path = admission.route.path,
                rule = record.rule,
                "policy audit: this request would be denied in enforce mode; forwarding it"
            );
        }
        Ok(admission)
    }

    /// Phase 5 — **credential**: the account's `Authorization` value. A static one never
    /// waits; an OAuth2 account with no usable token waits briefly for the fetch in flight,
    /// then short-circuits with 503 (counted).
    pub(super) async fn credential(
        &self,
        account: &Account,
        sid: &str,
    ) -> Result<Attached, ProxyError> {
        account.credential.attach().await.map_err(|e| {
            self.metrics
                .proxy
                .no_credential
                .with_label_values(&[sid])
                .inc();
            ProxyError::NoCredential(e.0)
        })
    }

    /// Phase 6 — **upstream request**, for PKCV accounts: `Twilio-Client-Validation`, a JWT
    /// over the request exactly as it will be sent (method, path, query, the attached
    /// `Authorization`, the Twilio host, the body). The RSA signature runs on the blocking
    /// pool: a millisecond of CPU would otherwise stall every connection on this thread.
    /// Short-circuits with 500 (79501) if signing fails.
    pub(super) async fn sign_pkcv(
        &self,
        signer: &Arc<PkcvSigner>,
        parts: &mut Parts,
        body: &Bytes,
        account: &str,
    ) -> Result<(), ProxyError> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map_or(&b""[..], HeaderValue::as_bytes);
        let rqh = request_hash(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            authorization,
            parts.uri.host().unwrap_or(""),
            body,
        );
        let signer = signer.clone();
        let started = std::time::Instant::now();
        let signed =
            tokio::task::spawn_blocking(move || signer.sign(&rqh, std::time::SystemTime::now()))
                .await;
        let metrics = &self.metrics.proxy;
        metrics
            .pkcv_sign_duration
            .observe(started.elapsed().as_secs_f64());
        match signed {
            Ok(Ok(token)) => {
                metrics
                    .pkcv_signatures
                    .with_label_values(&[account, "signed"])
                    .inc();
                parts
                    .headers
                    .insert(TWILIO_CLIENT_VALIDATION.clone(), token);
                Ok(())
            }
            failed => {
                metrics
                    .pkcv_signatures
                    .with_label_values(&[account, "failed"])
                    .inc();
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                warn!(account, error = %reason, "PKCV signing failed; request not sent");
                Err(ProxyError::SigningFailed(reason))
            }
        }
    }

    /// Phase 7 — **upstream call**, after Twilio answered 401: a bearer token it rejected is
    /// dropped (if no other request already did), and the request is sent once more with a
    /// new one when its body was buffered. Returns the request to send again, if any; a Basic
    /// credential's 401 is Twilio's answer and passes through.
    #[cold]
    fn unauthorized(
        &self,
        record: &Record<'_>,
        attached: &Attached,
        replay: Option<Request<RequestBody>>,
    ) -> Option<Request<RequestBody>> {
        let invalidation = attached.rejected()?;
        self.count_invalidation(record.account, invalidation);
        let outcome = if invalidation == Invalidation::RateLimited {
            // The token that got the 401 is still the one a replay would carry.
            "rate_limited"
        } else if replay.is_some() {
            "replayed"
        } else {
            "not_replayable"
        };
        self.metrics
            .proxy
            .oauth_replays
            .with_label_values(&[record.account, outcome])
            .inc();
        replay.filter(|_| invalidation != Invalidation::RateLimited)
    }

    fn count_invalidation(&self, account: &str, invalidation: Invalidation) {
        self.metrics
            .oauth
            .invalidations
            .with_label_values(&[account, invalidation.as_str()])
            .inc();
    }

    /// The replay after a 401 to a bearer token: the same request with a new token; a 401 to
    /// that one drops it too.
    async fn replay(
        &self,
        state: &State,
        account: &Account,
        mut again: Request<RequestBody>,
        host: &str,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let fresh = self.credential(account, &account.sid).await?;
        again
            .headers_mut()
            .insert(header::AUTHORIZATION, fresh.header.clone());
        let response = self.exchange(state, host, again).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            if let Some(invalidation) = fresh.rejected() {
                self.count_invalidation(&account.sid, invalidation);
            }
        }
        Ok(response)
    }

    /// One upstream exchange, timed and counted; failures become 502/504.
    /// (Not an `async fn`, which would keep `req` twice in every request's future.)
    #[allow(clippy::manual_async_fn)]
    pub(super) fn exchange<'a>(
        &'a self,
        state: &'a State,
        host: &'a str,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + Send + 'a {
        async move {
            let sent = std::time::Instant::now();
            let result = state.upstream.send(req).await;
            let upstream = &self.metrics.upstream;
            upstream.exchange(host, sent.elapsed().as_secs_f64());
            result.map_err(|kind| {
                upstream.error(host, kind.as_str());
                let host = host.to_string();
                match kind {
                    UpstreamFailure::Timeout => ProxyError::UpstreamTimeout { host },
                    kind => ProxyError::UpstreamUnreachable { host, kind },
                }
            })
        }
    }

    /// Phase 8 — **response**: hop-by-hop headers dropped, everything else (Twilio's own
    /// errors too) passed back as received, body streamed; except that a JSON page's paging
    /// links are pointed back at the sidecar ([`crate::proxy::paging`]), which needs the body
    /// read first.
    fn respond(
        &self,
        state: &State,
        mut response: Response<UpstreamBody>,
        paging: Option<(RouteSource, Option<HeaderValue>)>,
        record: &mut Record<'_>,
    ) -> Respond {
        strip_hop_by_hop(response.headers_mut());
        record.twilio_request_id = response.headers().get(TWILIO_REQUEST_ID).cloned();
        if let Some((source, authority)) = paging {
            if let Some(len) = rewritable_json(&response) {
                let router = &state.gate.router;
                let default_host = router.hosts.name(router.default_host);
                // Without a base to point links at, there is nothing to rewrite: stream it.
                if let Some(base) = LinkBase::for_request(source, authority.as_ref(), default_host)
                {
                    return Respond::Rewrite(response, len, base);
                }
            }
        }
        Respond::Stream(response.map(Either::Left))
    }

    /// Buffers a (bounded, uncompressed) JSON page and points its paging links back here.
    async fn rewrite_paging(
        &self,
        response: Response<UpstreamBody>,
        len: u64,
        base: LinkBase,
        hosts: &Hosts,
        host: &str,
    ) -> Result<Response<Body>, ProxyError> {
        // The page is held from here until the app has read it: room for it first.
        let Some(reservation) = self.rewrite_budget.reserve(len) else {
            self.metrics.proxy.rewrite_buffer_full.inc();
            return Err(ProxyError::RewriteBufferFull(self.rewrite_budget.limit()));
        };
        let (mut parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|_| {
                self.metrics
                    .upstream
                    .error(host, UpstreamFailure::Protocol.as_str());
                ProxyError::UpstreamUnreachable {
                    host: host.to_string(),
                    kind: UpstreamFailure::Protocol,
                }
            })?
            .to_bytes();
        let body = match rewrite_links(&bytes, &base, hosts) {
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
        let held = Bytes::from_owner(HeldPage {
            bytes: body,
            reservation,
        });
        Ok(Response::from_parts(parts, Either::Right(Full::new(held))))
    }
}

/// What an admitted request forwards: its host, its target minus a stripped host prefix, and
/// (for a GET that may come back as a page) what the paging rewrite needs.
fn target(hosts: &Hosts, parts: &Parts, admission: &Admission<'_>) -> Result<Target, Refusal> {
    let route = admission.route;
    // A GET may come back as a page of a list whose links must point back here: keep what the
    // rewrite needs (reference-counted clones; the link base is built only if needed). (The
    // 2010 API on api.* pages with relative `next_page_uri`: nothing to rewrite, so its
    // responses stream untouched.)
    let pages_with_links = parts.method == Method::GET
        && route.source != RouteSource::Tunnel
        && !hosts.name(route.host).starts_with("api.");
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
            PathAndQuery::try_from(pq).map_err(|e| Refusal::BadTarget(e.to_string()))?
        }
        (_, Some(pq)) => pq.clone(),
    };
    Ok(Target {
        host: route.host,
        pending: admission.decision.pending,
        path_and_query,
        paging,
    })
}

/// Phase 6 — **upstream request**, its head: the URI becomes `https://{host}{path}`; only
/// the headers Twilio's APIs use are kept ([`super::headers`]) and `Authorization`
/// attached. Returns how many unexpected headers were dropped.
fn upstream_head(
    state: &State,
    parts: &mut Parts,
    target: &Target,
    attached: &Attached,
) -> Result<u64, Refusal> {
    let hosts = &state.gate.router.hosts;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTPS);
    uri.authority = Some(hosts.authority(target.host).clone());
    uri.path_and_query = Some(target.path_and_query.clone());
    parts.uri = Uri::from_parts(uri).map_err(|e| Refusal::BadTarget(e.to_string()))?;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked framing wins over a stated length; never forward both.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let dropped = strip_request_headers(&mut parts.headers, &state.config.upstream.forward_headers);
    if target.paging.is_some() {
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
    Ok(dropped)
}

/// The tunnel's host as this generation knows it (a reload may have removed it).
fn pinned_host(state: &State, tunnel: Option<&Tunnel>) -> Result<Option<HostId>, Refusal> {
    match tunnel {
        Some(t) => state
            .gate
            .router
            .hosts
            .lookup(&t.host)
            .map(Some)
            .ok_or_else(|| {
                Refusal::HostNotAllowed(format!(
                    "host {} is no longer in the sidecar's upstream.allowed_hosts",
                    t.host
                ))
            }),
        None => Ok(None),
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
