//! Inbound webhooks, verified by the sidecar so the app never holds the Auth Token.
//!
//! Twilio signs every webhook with the account's Auth Token; the `[webhooks]` listener checks
//! the signature ([`signature`]) and forwards only what verifies to the app at
//! `webhooks.forward_to`, adding `X-Twilio-Sidecar-Verified: AC…`. The app's answer (TwiML,
//! usually) goes back to Twilio as it is. Everything else is refused in Twilio's error shape
//! ([`error`]) and counted by reason; the log names the path and reason, never the body, the
//! query or the signature.
//!
//! Phases of one webhook, each free to short-circuit with a [`WebhookError`]:
//! 1. admit — a permit under `webhooks.max_concurrent`, else 503 at once;
//! 2. read — the whole body, up to `webhooks.max_body` (413 beyond), within `webhooks.timeout`;
//! 3. verify — decode what is signed, pick the account (`AccountSid` when it names a
//!    configured one, else the default) and check the signature with its tokens;
//! 4. forward — the request as received (hop-by-hop headers removed) to the app, with the
//!    verified header, within `webhooks.timeout`;
//! 5. respond — the app's status, headers (hop-by-hop removed) and body, read whole up to
//!    `webhooks.max_body`.
//!
//! The listener itself is started by [`crate::app`] with the same accept loop, header limits
//! and drain as the proxy. Tokens, `forward_to`, `public_url`, `max_body` and `timeout` come
//! from the state each webhook loads, so a reload changes them without a restart.

pub mod error;
pub mod signature;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, info, warn};

use crate::config::WebhooksConfig;
use crate::control::state::{SharedState, State};
use crate::metrics::Metrics;
use crate::proxy::headers::{strip_hop_by_hop, strip_hop_by_hop_request};
use crate::upstream::body::ResponseBody;
pub use error::WebhookError;
use signature::SignedWebhook;

/// Added to every webhook the app receives: the account whose token verified it. An incoming
/// header of that name is removed first, so the app can trust it.
pub static X_TWILIO_SIDECAR_VERIFIED: HeaderName =
    HeaderName::from_static("x-twilio-sidecar-verified");

/// The `account` label before an account is known.
const NO_ACCOUNT: &str = "-";

/// The webhook listener's service: one per process.
pub struct Webhooks {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    /// In flight, bounded by `webhooks.max_concurrent` as it was at startup.
    permits: tokio::sync::Semaphore,
    /// Plain HTTP/1.1 to the app, connections kept alive between webhooks.
    app: Client<HttpConnector, Full<Bytes>>,
    /// Where `more_info` points unless `admin.error_docs_url` says.
    error_docs: Box<str>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Webhooks {
    /// `config` is `[webhooks]` as the listener was started with; `admin` is the admin
    /// listener's address, for `more_info` links.
    pub fn new(
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        config: &WebhooksConfig,
        admin: SocketAddr,
    ) -> Webhooks {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(5))));
        let app = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Webhooks {
            state,
            metrics,
            permits: tokio::sync::Semaphore::new(
                config
                    .max_concurrent
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            app,
            error_docs: crate::proxy::admin_error_pages(admin).into(),
        }
    }

    /// One webhook. Never fails: refusals become Twilio-shaped errors.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let state = self.state.load();
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // Phase 1, admit.
        let outcome = match self.permits.try_acquire() {
            Ok(_permit) => {
                self.metrics.webhooks.in_flight.inc();
                let outcome = self.verify_and_forward(req, &state).await;
                self.metrics.webhooks.in_flight.dec();
                outcome
            }
            Err(_) => Err((WebhookError::Overloaded, NO_ACCOUNT.to_string())),
        };
        let elapsed_us = started.elapsed().as_micros() as u64;
        match outcome {
            Ok((response, account)) => {
                self.metrics.webhooks.webhook(&account, "forwarded");
                info!(
                    target: "twilio_sidecar::webhook",
                    %method, %path, %account, status = response.status().as_u16(), elapsed_us,
                    "webhook forwarded"
                );
                response.map(ResponseBody::Right)
            }
            Err((error, account)) => {
                self.metrics.webhooks.webhook(&account, error.reason());
                warn!(
                    target: "twilio_sidecar::webhook",
                    %method, %path, %account, reason = error.reason(), status = error.status().as_u16(), elapsed_us,
                    "webhook refused: {error}"
                );
                let docs = state
                    .config
                    .error_docs_url
                    .as_deref()
                    .unwrap_or(&self.error_docs);
                error.to_response(docs).map(ResponseBody::Right)
            }
        }
    }

    /// Phases 2–5; the error comes with the account it was for (or `-`).
    async fn verify_and_forward(
        &self,
        req: Request<Incoming>,
        state: &State,
    ) -> Result<(Response<Full<Bytes>>, String), (WebhookError, String)> {
        let no_account = |e: WebhookError| (e, NO_ACCOUNT.to_string());
        let config = state
            .config
            .webhooks
            .as_ref()
            .ok_or_else(|| no_account(WebhookError::NotConfigured))?;
        let deadline = tokio::time::Instant::now() + config.timeout;

        // Phase 2, read: the signature covers the body, so all of it, bounded.
        let (parts, body) = req.into_parts();
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > config.max_body) {
            return Err(no_account(WebhookError::TooLarge(config.max_body)));
        }
        let limit = usize::try_from(config.max_body).unwrap_or(usize::MAX);
        let body =
            match tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(no_account(WebhookError::TooLarge(config.max_body)))
                }
                Ok(Err(e)) => return Err(no_account(WebhookError::BadBody(e.to_string()))),
                Err(_) => return Err(no_account(WebhookError::AppTimeout(config.timeout))),
            };

        // Phase 3, verify.
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let signed = SignedWebhook::read(&parts.method, path_and_query, &parts.headers, &body)
            .map_err(|e| no_account(e.into()))?;
        let account = signed
            .account_sid()
            .and_then(|sid| state.accounts.iter().find(|a| *a.sid == *sid))
            .or_else(|| state.accounts.get(state.gate.default_account()))
            .ok_or_else(|| no_account(WebhookError::NotConfigured))?;
        let sid = account.sid.to_string();
        signed
            .verify(&config.public_url, &account.webhook_keys, &sid)
            .map_err(|e| (e.into(), sid.clone()))?;

        // Phase 4, forward.
        let forward =
            to_app(parts, body, &config.forward_to, &account.sid).map_err(|e| (e, sid.clone()))?;
        let asked = Instant::now();
        let response = match tokio::time::timeout_at(deadline, self.app.request(forward)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                debug!(error = ?e, "webhook forward failed");
                return Err((WebhookError::AppUnreachable(describe(&e)), sid));
            }
            Err(_) => return Err((WebhookError::AppTimeout(config.timeout), sid)),
        };

        // Phase 5, respond: read whole (TwiML is small; Twilio takes at most 64 KB), so
        // the timeout covers the app's entire answer.
        let (mut head, body) = response.into_parts();
        let body =
            match tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err((
                        WebhookError::AppUnreachable(
                            "its answer is larger than webhooks.max_body".into(),
                        ),
                        sid,
                    ))
                }
                Ok(Err(e)) => return Err((WebhookError::AppUnreachable(e.to_string()), sid)),
                Err(_) => return Err((WebhookError::AppTimeout(config.timeout), sid)),
            };
        self.metrics
            .webhooks
            .app_duration
            .with_label_values(&[&sid])
            .observe(asked.elapsed().as_secs_f64());
        strip_hop_by_hop(&mut head.headers);
        Ok((Response::from_parts(head, Full::new(body)), sid))
    }
}

/// The webhook as the app receives it: same method, path, query, headers (hop-by-hop
/// removed) and body, plus the verified header.
fn to_app(
    mut parts: http::request::Parts,
    body: Bytes,
    forward_to: &Uri,
    account: &str,
) -> Result<Request<Full<Bytes>>, WebhookError> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let authority = forward_to
        .authority()
        .map_or("", |a| a.as_str())
        .to_string();
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| WebhookError::AppUnreachable(e.to_string()))?;
    // HTTP/2 carries the host in :authority; the app's HTTP/1.1 wants a Host header.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
    }
    strip_hop_by_hop_request(&mut parts.headers);
    parts.headers.remove(&X_TWILIO_SIDECAR_VERIFIED);
    if let Ok(v) = HeaderValue::from_str(account) {
        parts.headers.insert(X_TWILIO_SIDECAR_VERIFIED.clone(), v);
    }
    let mut forward = Request::new(Full::new(body));
    *forward.method_mut() = parts.method;
    *forward.uri_mut() = uri;
    *forward.headers_mut() = parts.headers;
    Ok(forward)
}

/// What went wrong reaching the app, in a few words (hyper-util's Display says little).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
