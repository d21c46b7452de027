//! The admin listener: `/metrics`, `/livez`, `/readyz`, `/config`, `POST /reload`, and
//! `/errors/{code}`, the page each of the sidecar's error responses links to.
//!
//! Kept on its own port so the app-facing listener never exposes operator endpoints, and so
//! probes and scrapes keep answering when the proxy port is saturated.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::config::hosts::is_local_name;
use crate::control::reload::Reloader;
use crate::control::state::SharedState;
use crate::credentials::Credential;
use crate::error_codes::{self, twilio_error_response};
use crate::gate::route::split_port;
use crate::metrics::Metrics;
use crate::upstream::ResponseBody as Body;

/// Admin endpoints over the shared state.
#[derive(Debug)]
pub struct Admin {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    draining: Arc<AtomicBool>,
    /// Where this listener is bound: error pages are linked there.
    address: SocketAddr,
}

impl Admin {
    pub fn new(
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        draining: Arc<AtomicBool>,
        address: SocketAddr,
    ) -> Admin {
        Admin {
            state,
            metrics,
            reloader,
            draining,
            address,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // Before routing: a web page (a cross-site form post, a DNS-rebinding read) must not
        // reload the sidecar or read its config.
        if let Err(refusal) = self.refuse_web_pages(&req) {
            self.metrics
                .admin_refusals
                .with_label_values(&[refusal.reason])
                .inc();
            let docs = format!("http://{}/errors", self.address);
            let response =
                twilio_error_response(refusal.code, &refusal.message, refusal.status, &docs);
            return response.map(Either::Right);
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                self.refresh_scrape_time_gauges();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    Bytes::from(self.metrics.encode()),
                )
            }
            (&Method::GET, "/livez") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/config") => {
                json_response(StatusCode::OK, &self.state.load().redacted_view())
            }
            (&Method::POST, "/reload") => match self.reloader.reload("admin").await {
                Ok(generation) => json_response(
                    StatusCode::OK,
                    &json!({ "status": "reloaded", "generation": generation }),
                ),
                Err(e) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({
                        "status": "failed",
                        "generation": self.state.load().generation,
                        "errors": e.to_string().lines().collect::<Vec<_>>(),
                    }),
                ),
            },
            (&Method::GET, "/errors") => json_response(
                StatusCode::OK,
                &json!({
                    "errors": error_codes::CODES.iter().map(code_json).collect::<Vec<_>>(),
                    "twilio_codes": error_codes::TWILIO_ERRORS_URL,
                }),
            ),
            (&Method::GET, path) if path.starts_with("/errors/") => {
                let page = path["/errors/".len()..]
                    .parse()
                    .ok()
                    .and_then(error_codes::lookup);
                match page {
                    Some(code) => json_response(StatusCode::OK, &code_json(code)),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({ "status": "not found", "see": "/errors", "twilio_codes": error_codes::TWILIO_ERRORS_URL }),
                    ),
                }
            }
            (_, "/metrics" | "/livez" | "/readyz" | "/config" | "/reload" | "/errors") => {
                json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({ "status": "method not allowed" }),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "status": "not found", "endpoints": ["/metrics", "/livez", "/readyz", "/config", "POST /reload", "/errors"] }),
            ),
        }
    }

    /// The admin port's own browser rules. `Host` must be an IP address, `localhost` or one
    /// of `listen.names`: a rebinding page reaches the port under a name of its own. A POST
    /// must not come from a page (`Origin`, `Sec-Fetch-Site`), and `POST /reload` takes no
    /// body and none of the content types a page can post without a preflight.
    fn refuse_web_pages(&self, req: &Request<Incoming>) -> Result<(), AdminRefusal> {
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        });
        if let Some(host) = host {
            let name = split_port(host).0;
            if !is_local_name(name, &self.state.load().config.names) {
                return Err(AdminRefusal::forbidden(
                    "host",
                    format!("the admin listener does not answer to Host {name:?} (a DNS-rebinding page sends its own name); use its IP address or localhost, or add the name to listen.names"),
                ));
            }
        }
        if req.method() != Method::POST {
            return Ok(());
        }
        if let Some(name) = [header::ORIGIN.as_str(), "sec-fetch-site"]
            .into_iter()
            .find(|h| req.headers().contains_key(*h))
        {
            return Err(AdminRefusal::forbidden(
                "browser",
                format!(
                    "a POST to the admin listener carries {name}, which only web browsers send"
                ),
            ));
        }
        if req.uri().path() == "/reload" {
            let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0");
            // The content types a page may post cross-site without a preflight.
            let page_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .is_some_and(|t| {
                    matches!(
                        t.as_str(),
                        "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
                    ) || t.starts_with("text/")
                });
            if has_body || page_type {
                return Err(AdminRefusal {
                    reason: "reload_body",
                    code: 79411,
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: "POST /reload takes no body, and no form or text Content-Type (what a web page's form post carries)".into(),
                });
            }
        }
        Ok(())
    }

    /// Gauges that depend on "now": set just before a scrape.
    fn refresh_scrape_time_gauges(&self) {
        let state = self.state.load();
        let reusable = state.upstream.reusable_connections();
        self.metrics
            .upstream
            .reusable
            .set(i64::try_from(reusable).unwrap_or(i64::MAX));
        for account in &state.accounts {
            if let Some(limit) = &account.limit {
                self.metrics
                    .proxy
                    .queued
                    .with_label_values(&[&account.sid])
                    .set(i64::try_from(limit.waiting()).unwrap_or(i64::MAX));
            }
            if let Credential::OAuth(cache) = &account.credential {
                let gauge = self
                    .metrics
                    .oauth
                    .seconds_until_expiry
                    .with_label_values(&[&account.sid]);
                match cache.seconds_until_expiry() {
                    Some(s) => gauge.set(s),
                    None => gauge.set(0.0),
                }
            }
        }
    }

    /// Ready when not draining and every account has a credential it can attach now.
    fn readyz(&self) -> Response<Body> {
        let state = self.state.load();
        let draining = self.draining.load(Ordering::Relaxed);
        let accounts: Vec<_> = state
            .accounts
            .iter()
            .map(|a| json!({ "sid": a.sid, "credential": a.credential.kind(), "usable": a.credential.usable() }))
            .collect();
        let ready = !draining && state.all_credentials_usable();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &json!({
                "status": if draining { "draining" } else if ready { "ready" } else { "no usable credential" },
                "generation": state.generation,
                "accounts": accounts,
            }),
        )
    }
}

/// Why the admin listener refused a request, as it answers.
struct AdminRefusal {
    reason: &'static str,
    code: u32,
    status: StatusCode,
    message: String,
}

impl AdminRefusal {
    fn forbidden(reason: &'static str, message: String) -> AdminRefusal {
        AdminRefusal {
            reason,
            code: 79409,
            status: StatusCode::FORBIDDEN,
            message,
        }
    }
}

/// One error code's page.
fn code_json(c: &error_codes::ErrorCode) -> serde_json::Value {
    json!({ "code": c.code, "status": c.status, "meaning": c.meaning, "remedy": c.remedy })
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(status, "application/json", Bytes::from(value.to_string()))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
