//! The real token fetcher: `POST token_url` form-encoded `grant_type=client_credentials`,
//! `client_id`, `client_secret`, through the same upstream client as API calls — verified TLS,
//! and `upstream.connect_to` / `upstream.ca_file` apply, so tests and `dev` can stand in for
//! oauth.twilio.com exactly as they do for the API hosts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use secrecy::{ExposeSecret, SecretString};

#[cfg(test)]
use crate::config::TWILIO_TOKEN_URL;
use crate::config::{parse_token_url, TokenUrlError};
use crate::upstream::Upstream;
use crate::upstream::UpstreamFailure;

/// The largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Why a token fetch failed. Messages name the endpoint's fault, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the token endpoint ({0})")]
    Connect(String),
    #[error("the token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the token endpoint's answer is not a usable token: {0}")]
    Malformed(String),
}

impl FetchError {
    /// `result` label of the fetch metric.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Connect(_) => "connect_error",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status(_) => "http_error",
            FetchError::Malformed(_) => "malformed",
        }
    }
}

/// Fetches one token response body from the token endpoint. Non-2xx answers are errors.
pub trait TokenFetcher: Send + Sync + 'static {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, FetchError>> + Send + '_>>;
}

/// Fetches tokens over HTTPS.
pub struct HttpTokenFetcher {
    upstream: Arc<Upstream>,
    url: Uri,
    /// The form body; it carries the client secret, so it is never printed.
    form: Bytes,
}

impl std::fmt::Debug for HttpTokenFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTokenFetcher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpTokenFetcher {
    /// `url` must be an https URL.
    pub fn new(
        upstream: Arc<Upstream>,
        url: &str,
        client_id: &str,
        secret: &SecretString,
    ) -> Result<Self, TokenUrlError> {
        let url = parse_token_url(url)?;
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            form_encode(client_id),
            form_encode(secret.expose_secret())
        );
        Ok(HttpTokenFetcher {
            upstream,
            url,
            form: Bytes::from(form),
        })
    }
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl TokenFetcher for HttpTokenFetcher {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, FetchError>> + Send + '_>> {
        Box::pin(async move {
            let mut req = Request::new(Either::Right(Full::new(self.form.clone())));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = self.url.clone();
            let headers = req.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            let response = self.upstream.send(req).await.map_err(|kind| match kind {
                UpstreamFailure::Timeout => FetchError::Timeout(self.upstream.request_timeout()),
                other => FetchError::Connect(format!("{} error", other.as_str())),
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| FetchError::Malformed(format!("reading the body failed: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_url_checks() {
        assert_eq!(form_encode("OQ abc+/=&é"), "OQ+abc%2B%2F%3D%26%C3%A9");
        assert!(parse_token_url(TWILIO_TOKEN_URL).is_ok());
        assert!(parse_token_url("http://oauth.twilio.com/v2/token").is_err());
        assert!(parse_token_url("oauth.twilio.com/v2/token").is_err());
    }
}
