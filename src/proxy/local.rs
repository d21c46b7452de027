//! The sidecar's own endpoints on the proxy listener, under the reserved `/_sidecar/` prefix
//! (never routed to Twilio, whatever the host): today `POST /_sidecar/access-tokens`, which
//! mints an Access Token for a browser or mobile SDK under `[access_tokens]` (or the calling
//! client's own table), signed with the account's API key — so the app that serves those SDKs
//! holds no API key secret.
//!
//! Phase **local** answers in place of phases 1–8: 404 for anything else under the prefix or
//! when no policy applies, 405 for another method, 400 for a body that is not a token request,
//! 403 (70051) naming what the policy refuses.

use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::{Proxy, Record};
use crate::control::state::State;
use crate::credentials::access_token::{mint, rfc3339, TokenRequest};
use crate::gate::clients::Caller;
use crate::gate::Refusal;
use crate::upstream::body::ResponseBody as Body;

/// The reserved prefix.
pub const PREFIX: &str = "/_sidecar/";

/// Largest token request read.
const MAX_TOKEN_REQUEST: usize = 16 * 1024;

impl Proxy {
    /// Phase **local**: a `/_sidecar/` request, answered here.
    pub(super) async fn local<'s>(
        &self,
        state: &'s State,
        parts: Parts,
        body: Incoming,
        caller: Caller,
        record: &mut Record<'s>,
    ) -> Result<Response<Body>, ProxyError> {
        record.decision = "local";
        match parts.uri.path() {
            "/_sidecar/access-tokens" => {
                record.rule = "/_sidecar/access-tokens";
                self.access_token(state, parts, body, caller, record).await
            }
            path => Err(ProxyError::LocalNotFound(path.to_string())),
        }
    }

    /// `POST /_sidecar/access-tokens`: `{"identity", "ttl", "grants"}` in, `{"token",
    /// "identity", "expires_at"}` out.
    async fn access_token<'s>(
        &self,
        state: &'s State,
        parts: Parts,
        body: Incoming,
        caller: Caller,
        record: &mut Record<'s>,
    ) -> Result<Response<Body>, ProxyError> {
        let count = |result: &str, reason: &str| {
            self.metrics
                .proxy
                .access_tokens
                .with_label_values(&[result, reason])
                .inc();
        };
        // The caller's own table, else [access_tokens].
        let policy = match caller {
            Caller::Client(i) => state.config.clients[i]
                .access_tokens
                .as_ref()
                .or(state.config.access_tokens.as_ref()),
            Caller::Anonymous => state.config.access_tokens.as_ref(),
        };
        let Some(policy) = policy else {
            count("refused", "not_configured");
            return Err(ProxyError::LocalNotFound(
                "/_sidecar/access-tokens (no access_tokens table applies)".into(),
            ));
        };
        if parts.method != Method::POST {
            count("refused", "method");
            return Err(Refusal::MethodNotAllowed(parts.method.to_string()).into());
        }
        let bytes = Limited::new(body, MAX_TOKEN_REQUEST)
            .collect()
            .await
            .map_err(|_| {
                count("refused", "bad_request");
                ProxyError::BadTokenRequest(format!(
                    "the body could not be read, or is larger than {MAX_TOKEN_REQUEST} bytes"
                ))
            })?
            .to_bytes();
        record.body_done = true;
        let request: TokenRequest = serde_json::from_slice(&bytes).map_err(|e| {
            count("refused", "bad_request");
            ProxyError::BadTokenRequest(format!(
                "expected {{\"identity\", \"ttl\", \"grants\"}} JSON: {e}"
            ))
        })?;
        record.identity = Some(request.identity.as_str().into());
        let account = match &policy.account {
            Some(sid) => state.accounts.iter().find(|a| *a.sid == **sid),
            None => state.accounts.get(state.gate.default_account()),
        };
        let Some(account) = account else {
            count("refused", "not_configured");
            return Err(ProxyError::LocalNotFound(
                "/_sidecar/access-tokens (its account is not configured)".into(),
            ));
        };
        record.account = &account.sid;
        let Some(signer) = account.credential.signer() else {
            count("refused", "not_configured");
            return Err(ProxyError::NoCredential(format!(
                "account {} has no API key to sign Access Tokens with",
                account.sid
            )));
        };
        let minted = mint(policy, &request, signer, std::time::SystemTime::now()).map_err(|e| {
            count("refused", e.reason());
            ProxyError::TokenRefused(e.to_string())
        })?;
        count("issued", "-");
        for grant in &minted.grants {
            self.metrics
                .proxy
                .access_token_grants
                .with_label_values(&[grant])
                .inc();
        }
        let body = serde_json::json!({
            "token": minted.token,
            "identity": request.identity,
            "expires_at": rfc3339(minted.expires_at),
        });
        let mut response = Response::new(Either::Right(Full::new(bytes::Bytes::from(
            body.to_string(),
        ))));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A credential: never cached on the way.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}
