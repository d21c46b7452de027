//! The admin listener: `/metrics`, `/livez`, `/readyz`, `/config`, `POST /reload`, and
//! `/errors/{code}`, the page each of the sidecar's error responses links to.
//!
//! Kept on its own port so the app-facing listener never exposes operator endpoints, and so
//! probes and scrapes keep answering when the proxy port is saturated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::control::reload::Reloader;
use crate::control::state::SharedState;
use crate::credentials::Credential;
use crate::error_codes;
use crate::metrics::Metrics;
use crate::upstream::ResponseBody as Body;

/// Admin endpoints over the shared state.
#[derive(Debug)]
pub struct Admin {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    draining: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        draining: Arc<AtomicBool>,
    ) -> Admin {
        Admin {
            state,
            metrics,
            reloader,
            draining,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
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
