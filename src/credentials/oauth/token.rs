//! Tokens: what the endpoint's answer means (the lifetime taken from `expires_in` or the JWT
//! `exp` claim, whichever is plausible and earlier) and the ready-to-attach form.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::HeaderValue;
use secrecy::SecretString;
use tokio::time::Instant;

use super::fetcher::FetchError;

/// The longest lifetime believed: Twilio's tokens live an hour, and nothing it issues lives
/// beyond a day. Longer claims (the spec's own example says `1438315200000`) are ignored.
pub const MAX_PLAUSIBLE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token ready to attach.
pub struct Token {
    /// `Bearer …`, marked sensitive.
    pub header: HeaderValue,
    pub expires_at: Instant,
    /// Wall-clock expiry, seconds since the epoch (for the metric).
    pub expires_unix: f64,
    /// When the refresher fetches the next one.
    pub refresh_at: Instant,
    /// Identifies this token for 401 invalidation.
    pub id: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

/// A parsed token response.
#[derive(Debug)]
pub struct ParsedToken {
    pub access_token: SecretString,
    pub lifetime: Duration,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Parses a token endpoint answer. The lifetime is the earlier of a plausible `expires_in` and
/// a plausible JWT `exp`, else `fallback`.
pub fn parse_token_response(
    body: &[u8],
    wall_now: SystemTime,
    fallback: Duration,
) -> Result<ParsedToken, FetchError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FetchError::Malformed("empty body".into()));
    }
    let response: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        FetchError::Malformed(format!("not a JSON token response ({})", e.classify_name()))
    })?;
    let token = response
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| FetchError::Malformed("no access_token".into()))?;
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(FetchError::Malformed(
            "access_token has characters a header cannot carry".into(),
        ));
    }
    if let Some(kind) = &response.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(FetchError::Malformed(format!(
                "token_type {kind:?} is not Bearer"
            )));
        }
    }
    let from_expires_in = response
        .expires_in
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|s| *s > 0.0 && *s <= MAX_PLAUSIBLE_LIFETIME.as_secs_f64())
        .map(Duration::from_secs_f64);
    let from_jwt = jwt_exp(&token).and_then(|exp| {
        let exp = UNIX_EPOCH.checked_add(Duration::from_secs_f64(exp))?;
        exp.duration_since(wall_now)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_PLAUSIBLE_LIFETIME)
    });
    let lifetime = match (from_expires_in, from_jwt) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => fallback,
    };
    Ok(ParsedToken {
        access_token: SecretString::from(token),
        lifetime,
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong field types",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), if `token` is one.
fn jwt_exp(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    claims.get("exp")?.as_f64()
}
