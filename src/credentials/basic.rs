//! Basic credentials — `api_key` (`SK…:secret`) and `auth_token` (`AC…:token`). One type for
//! both, since they differ only in where the username comes from: the header is built once per
//! config generation, marked sensitive, and the hot path clones it (a reference-count bump).

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::CredentialError;

/// A Basic credential, ready to attach.
#[derive(Clone)]
pub struct BasicCredential {
    pub(super) kind: &'static str,
    /// The Basic username: the API key SID (`SK…`) or the account SID (`AC…`). Not a secret.
    pub(super) username: Box<str>,
    pub(super) authorization: HeaderValue,
    /// For an API key: what signs Access Tokens and PKCV JWTs.
    pub(super) signer: Option<super::Signer>,
}

impl BasicCredential {
    /// `Basic base64(username:secret)`, marked sensitive.
    pub fn new(
        kind: &'static str,
        username: &str,
        secret: &SecretString,
    ) -> Result<Self, CredentialError> {
        let mut raw = String::with_capacity(username.len() + 1 + secret.expose_secret().len());
        raw.push_str(username);
        raw.push(':');
        raw.push_str(secret.expose_secret());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
        let mut authorization = HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| CredentialError::NotAHeader)?;
        authorization.set_sensitive(true);
        Ok(BasicCredential {
            kind,
            username: username.into(),
            authorization,
            signer: None,
        })
    }
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("username", &self.username)
            .field("authorization", &"[redacted]")
            .finish()
    }
}
