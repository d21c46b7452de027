//! Every response the sidecar makes itself, in Twilio's error shape.
//!
//! This is the one place where a failure becomes an HTTP response: the request phases return a
//! [`ProxyError`] and the proxy turns it into `{"code", "message", "more_info", "status"}` JSON with
//! `Content-Type: application/json`, so the Twilio SDKs surface it as an ordinary Twilio error.
//!
//! The codes, what they mean and what to do about them are in [`crate::error_codes`]; each
//! response's `more_info` links to that code's page (the admin listener serves them at
//! `/errors/{code}`, or `admin.error_docs_url` points elsewhere), and Twilio's own codes to
//! Twilio's documentation.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

pub use crate::error_codes::{twilio_error_body, twilio_error_response};
use crate::gate::clients::AuthFailure;
use crate::gate::Refusal;
use crate::upstream::UpstreamFailure;
use http_body_util::Full;

/// A request the sidecar answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The admission phases (route, canonical path, policy, account) refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A CONNECT without valid client credentials (`Proxy-Authorization`), when they are
    /// needed.
    #[error("{}", Refusal::Unauthenticated(*.0))]
    TunnelUnauthenticated(AuthFailure),
    /// Nothing under `/_sidecar/` answers this (or no `access_tokens` table applies).
    #[error("twilio-sidecar has no endpoint {0}")]
    LocalNotFound(String),
    /// An Access Token request that is not one.
    #[error("the access-token request is not valid: {0}")]
    BadTokenRequest(String),
    /// The Access Token policy refused what was asked for.
    #[error("the access token was refused by the twilio-sidecar policy: {0}")]
    TokenRefused(String),
    /// Signing the PKCV validation token failed.
    #[error("twilio-sidecar could not sign the request for PKCV: {0}")]
    SigningFailed(String),
    /// The sidecar could not make the certificate a tunnel needs.
    #[error("twilio-sidecar could not open the tunnel: {0}")]
    TunnelFailed(String),
    /// The app's request body broke off or exceeded what it announced.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// Twilio could not be reached.
    #[error("twilio-sidecar could not reach {host}: {kind} error", kind = .kind.as_str())]
    UpstreamUnreachable { host: String, kind: UpstreamFailure },
    /// The request body is over `limits.max_request_body`.
    #[error(
        "the request body is larger than twilio-sidecar's limits.max_request_body ({0} bytes)"
    )]
    BodyTooLarge(u64),
    /// The whole request took longer than `limits.request_timeout`.
    #[error("the request did not complete within twilio-sidecar's limits.request_timeout ({0:?})")]
    RequestTimeout(std::time::Duration),
    /// `limits.max_concurrent_requests` are in flight.
    #[error(
        "twilio-sidecar is at limits.max_concurrent_requests and shed this request; retry shortly"
    )]
    Overloaded,
    /// No slot under the account's `max_concurrent`: the queue was full, or the wait ran
    /// past `upstream.queue_timeout`.
    #[error(
        "account {account} is at its max_concurrent requests and this one {reason}; retry shortly"
    )]
    AccountBusy {
        account: String,
        reason: &'static str,
    },
    /// The list page would take the bytes buffered for paging rewrites past
    /// `limits.max_rewrite_buffer`.
    #[error("twilio-sidecar is holding limits.max_rewrite_buffer ({0} bytes) of list pages for slow readers; retry shortly")]
    RewriteBufferFull(u64),
    /// An OAuth2 account has no usable token and none arrived in time.
    #[error("{0}")]
    NoCredential(String),
    /// Twilio did not answer in time.
    #[error("{host} did not answer within the sidecar's upstream.request_timeout")]
    UpstreamTimeout { host: String },
}

impl ProxyError {
    /// HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(refusal) => refusal.status(),
            ProxyError::TunnelUnauthenticated(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::TunnelFailed(_) | ProxyError::SigningFailed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::LocalNotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::BadTokenRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::TokenRefused(_) => StatusCode::FORBIDDEN,
            ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoCredential(_)
            | ProxyError::Overloaded
            | ProxyError::AccountBusy { .. }
            | ProxyError::RewriteBufferFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The Twilio-style error code (see the module table).
    pub fn code(&self) -> u32 {
        match self {
            ProxyError::Refused(refusal) => refusal.code(),
            ProxyError::TunnelUnauthenticated(_) => 20003,
            ProxyError::TunnelFailed(_) => 79500,
            ProxyError::SigningFailed(_) => 79501,
            ProxyError::LocalNotFound(_) => 79406,
            ProxyError::BadTokenRequest(_) => 79420,
            ProxyError::TokenRefused(_) => 70051,
            ProxyError::BadBody(_) => 79402,
            ProxyError::UpstreamUnreachable { .. } => 79502,
            ProxyError::UpstreamTimeout { .. } => 79504,
            ProxyError::NoCredential(_) => 79503,
            ProxyError::BodyTooLarge(_) => 79413,
            ProxyError::RequestTimeout(_) => 79408,
            ProxyError::Overloaded => 79429,
            ProxyError::AccountBusy { .. } => 79430,
            ProxyError::RewriteBufferFull(_) => 79431,
        }
    }

    /// The response the app receives; `docs` is where the sidecar's error pages are.
    pub fn to_response(&self, docs: &str) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut response = twilio_error_response(self.code(), &self.to_string(), status, docs);
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            // A proxy asks for its credentials with 407; SDKs' proxy agents know it.
            response.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"twilio-sidecar\""),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // Client credentials are asked for as a server asks for Basic credentials.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"twilio-sidecar\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn denial_is_twilio_shaped() {
        let err = ProxyError::from(Refusal::Denied {
            method: http::Method::POST,
            host: "api.twilio.com".into(),
            path: "/2010-04-01/Accounts/AC1/Calls.json".into(),
            reason: "no allow rule matches".into(),
        });
        let response = err.to_response("http://127.0.0.1:9090/errors");
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], 70051);
        assert_eq!(v["status"], 403);
        assert_eq!(v["more_info"], "https://www.twilio.com/docs/errors/70051");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("POST api.twilio.com/2010-04-01/Accounts/AC1/Calls.json"));
        assert!(msg.contains("policy"));
    }

    #[test]
    fn codes_are_distinct() {
        let errors = [
            ProxyError::from(Refusal::NonCanonicalPath(String::new())),
            ProxyError::from(Refusal::BadTarget(String::new())),
            ProxyError::from(Refusal::Browser(String::new())),
            ProxyError::from(Refusal::BadParams(String::new())),
            ProxyError::BadBody(String::new()),
            ProxyError::TunnelFailed(String::new()),
            ProxyError::SigningFailed(String::new()),
            ProxyError::LocalNotFound(String::new()),
            ProxyError::BadTokenRequest(String::new()),
            ProxyError::from(Refusal::HostNotAllowed(String::new())),
            ProxyError::from(Refusal::UnknownAccount(String::new())),
            ProxyError::from(Refusal::MethodNotAllowed(String::new())),
            ProxyError::UpstreamUnreachable {
                host: String::new(),
                kind: UpstreamFailure::Connect,
            },
            ProxyError::UpstreamTimeout {
                host: String::new(),
            },
            ProxyError::NoCredential(String::new()),
            ProxyError::BodyTooLarge(0),
            ProxyError::RequestTimeout(std::time::Duration::ZERO),
            ProxyError::Overloaded,
            ProxyError::AccountBusy {
                account: String::new(),
                reason: "",
            },
        ];
        for e in &errors {
            let documented = crate::error_codes::lookup(e.code())
                .unwrap_or_else(|| panic!("{} has no entry in error_codes", e.code()));
            assert_eq!(documented.status, e.status().as_u16(), "{}", e.code());
        }
        let mut codes: Vec<u32> = errors.iter().map(ProxyError::code).collect();
        codes.push(70051);
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }
}
