//! Why the gate refused a request, with the status and Twilio-style code it stands for (the
//! codes are in the README's error table). [`crate::proxy::error`] is the one place a refusal
//! becomes a response, for the proxy and for `check` alike.

use http::{Method, StatusCode};

use super::clients::AuthFailure;

/// One message for every failed authentication but a missing one: an unknown id and a wrong
/// secret must look the same.
fn unauthenticated_message(failure: AuthFailure) -> &'static str {
    match failure {
        AuthFailure::Missing => {
            "twilio-sidecar requires client credentials: send your client id and local secret as \
             Basic credentials (the Twilio SDK's username and password)"
        }
        _ => {
            "twilio-sidecar did not accept these client credentials: the client id or its local \
             secret is not valid"
        }
    }
}

/// A request the admission phases refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No allow rule matched, or a deny rule did.
    #[error("{method} {host}{path} was refused by the twilio-sidecar policy ({reason})")]
    Denied {
        method: Method,
        host: String,
        path: String,
        reason: String,
    },
    /// The path failed the canonical-or-refuse check.
    #[error("the request path was refused because it is not canonical: {0}")]
    NonCanonicalPath(String),
    /// Bad or ambiguous request target / Host.
    #[error("the request target was refused: {0}")]
    BadTarget(String),
    /// A web browser's request (`Origin`, `Sec-Fetch-*`), or one whose `Host` is a name the
    /// sidecar does not answer to (DNS rebinding): no Twilio SDK sends either.
    #[error("twilio-sidecar refuses requests from web browsers: {0}")]
    Browser(String),
    /// The parameters a rule's conditions check cannot be read one way only: invalid
    /// percent-encoding, text that is not UTF-8, a raw `;`.
    #[error("the request's parameters are malformed: {0}")]
    BadParams(String),
    /// The request names a host outside `upstream.allowed_hosts`.
    #[error("{0}")]
    HostNotAllowed(String),
    /// `/2010-04-01/Accounts/{sid}` with a SID the sidecar holds no credential for.
    #[error("account {0} is not configured in twilio-sidecar, so it holds no credential for it")]
    UnknownAccount(String),
    /// With `[[clients]]`: no valid client credentials (and anonymous requests not served).
    /// The message is the same for an unknown id and a wrong secret.
    #[error("{}", unauthenticated_message(*.0))]
    Unauthenticated(AuthFailure),
    /// The client's `accounts` do not include the account the request uses.
    #[error(
        "client {client:?} may not use account {account} (its accounts setting in twilio-sidecar)"
    )]
    AccountNotAllowed { client: String, account: String },
    /// A method outside GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
    #[error("method {0:?} is not forwarded by twilio-sidecar; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS")]
    MethodNotAllowed(String),
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied { .. }
            | Refusal::HostNotAllowed(_)
            | Refusal::UnknownAccount(_)
            | Refusal::AccountNotAllowed { .. }
            | Refusal::Browser(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::NonCanonicalPath(_) | Refusal::BadTarget(_) | Refusal::BadParams(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The Twilio-style error code: 70051 is Twilio's own for a permission a restricted key
    /// lacks; 794xx are the sidecar's.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::Denied { .. } | Refusal::AccountNotAllowed { .. } => 70051,
            // Twilio's own code for credentials it does not accept, so SDKs raise their usual
            // authentication error.
            Refusal::Unauthenticated(_) => 20003,
            Refusal::NonCanonicalPath(_) => 79400,
            Refusal::BadTarget(_) => 79401,
            Refusal::Browser(_) => 79407,
            Refusal::BadParams(_) => 79410,
            Refusal::HostNotAllowed(_) => 79403,
            Refusal::UnknownAccount(_) => 79404,
            Refusal::MethodNotAllowed(_) => 79405,
        }
    }
}
