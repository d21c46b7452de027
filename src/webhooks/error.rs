//! Every response the webhook listener makes itself, in Twilio's error shape: the one place a
//! webhook failure becomes an HTTP response. Twilio shows these bodies in its debugger, so
//! they say what went wrong and never carry the body, the signature or a token.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::signature::Rejection;
use crate::proxy::error::twilio_error_response;

/// A webhook the sidecar answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signature is missing, wrong or does not cover the request.
    #[error("twilio-sidecar refused the webhook: {0}")]
    Rejected(#[from] Rejection),
    /// The body is over `webhooks.max_body`.
    #[error("the webhook body is larger than twilio-sidecar's webhooks.max_body ({0} bytes)")]
    TooLarge(u64),
    /// The body broke off.
    #[error("the webhook body could not be read: {0}")]
    BadBody(String),
    /// `webhooks.max_concurrent` are in flight.
    #[error("twilio-sidecar is at webhooks.max_concurrent and shed this webhook")]
    Overloaded,
    /// A reload removed `[webhooks]`; the listener stays until restart.
    #[error("[webhooks] is no longer configured; restart twilio-sidecar to close this listener")]
    NotConfigured,
    /// The app could not be reached, or its answer could not be read.
    #[error("the app at webhooks.forward_to could not be reached: {0}")]
    AppUnreachable(String),
    /// The app did not answer within `webhooks.timeout`.
    #[error("the app did not answer within webhooks.timeout ({0:?})")]
    AppTimeout(std::time::Duration),
}

impl WebhookError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::Rejected(Rejection::Malformed(_)) | WebhookError::BadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            WebhookError::Rejected(_) => StatusCode::FORBIDDEN,
            WebhookError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::Overloaded | WebhookError::NotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            WebhookError::AppUnreachable(_) => StatusCode::BAD_GATEWAY,
            WebhookError::AppTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code, documented in [`crate::error_codes`].
    pub fn code(&self) -> u32 {
        match self {
            WebhookError::Rejected(Rejection::NoToken(_)) => 79601,
            WebhookError::Rejected(
                Rejection::UnverifiableBody | Rejection::UnsupportedAlgorithm(_),
            ) => 79602,
            WebhookError::Rejected(Rejection::Malformed(_)) | WebhookError::BadBody(_) => 79610,
            WebhookError::Rejected(_) => 79600,
            WebhookError::TooLarge(_) => 79613,
            WebhookError::Overloaded | WebhookError::NotConfigured => 79629,
            WebhookError::AppUnreachable(_) => 79650,
            WebhookError::AppTimeout(_) => 79654,
        }
    }

    /// The `result` label of `twilio_sidecar_webhooks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            WebhookError::Rejected(r) => r.reason(),
            WebhookError::TooLarge(_) => "too_large",
            WebhookError::BadBody(_) => "malformed",
            WebhookError::Overloaded | WebhookError::NotConfigured => "overloaded",
            WebhookError::AppUnreachable(_) => "app_unreachable",
            WebhookError::AppTimeout(_) => "app_timeout",
        }
    }

    /// The answer Twilio receives; `docs` is where the sidecar's error pages are.
    pub fn to_response(&self, docs: &str) -> Response<Full<Bytes>> {
        twilio_error_response(self.code(), &self.to_string(), self.status(), docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::form::FormError;

    #[test]
    fn every_code_is_documented_with_its_status() {
        let errors = [
            WebhookError::Rejected(Rejection::MissingSignature),
            WebhookError::Rejected(Rejection::InvalidSignature("AC1".into())),
            WebhookError::Rejected(Rejection::NoToken("AC1".into())),
            WebhookError::Rejected(Rejection::UnverifiableBody),
            WebhookError::Rejected(Rejection::Malformed(FormError::BadPercent("a value"))),
            WebhookError::TooLarge(1),
            WebhookError::Overloaded,
            WebhookError::AppUnreachable(String::new()),
            WebhookError::AppTimeout(std::time::Duration::ZERO),
        ];
        for e in &errors {
            let documented = crate::error_codes::lookup(e.code())
                .unwrap_or_else(|| panic!("{} has no entry in error_codes", e.code()));
            assert_eq!(documented.status, e.status().as_u16(), "{}", e.code());
        }
    }
}
