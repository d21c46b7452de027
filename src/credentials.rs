//! Credentials: each account's ready-made `Authorization` header. (Which account a request
//! uses is decided in [`crate::gate`].)
//!
//! Secrets are read once per config generation, when the state is built, and turned into a
//! sensitive [`HeaderValue`] (`Basic base64(user:secret)`); the hot path only clones that value
//! (a reference-count bump). The key SID and its secret are read together and stored in one
//! value, so a request can never pair a SID from one generation with a secret from another.

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::config::reader::Diagnostic;
use crate::config::{is_sid, AccountConfig, CredentialConfig};

/// One account's credential, ready to attach.
#[derive(Clone)]
pub struct Credential {
    kind: &'static str,
    /// The Basic username: the API key SID (`SK…`) or the account SID (`AC…`). Not a secret.
    username: Box<str>,
    authorization: HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("username", &self.username)
            .field("authorization", &"[redacted]")
            .finish()
    }
}

impl Credential {
    /// `Basic` credential for `username:secret`.
    pub fn basic(
        kind: &'static str,
        username: &str,
        secret: &SecretString,
    ) -> Result<Self, String> {
        let mut raw = String::with_capacity(username.len() + 1 + secret.expose_secret().len());
        raw.push_str(username);
        raw.push(':');
        raw.push_str(secret.expose_secret());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
        let mut authorization = HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| "the credential cannot be sent in a header".to_string())?;
        authorization.set_sensitive(true);
        Ok(Credential {
            kind,
            username: username.into(),
            authorization,
        })
    }

    /// Reads the sources of `config` (files, env) and builds the credential. Errors name the key
    /// under `key` (for example `accounts[0].credential`).
    pub fn load(account: &AccountConfig, key: &str) -> Result<Credential, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let mut read = |name: &str, source: &crate::config::SecretSource| match source.read() {
            Ok(v) => Some(v),
            Err(message) => {
                errors.push(Diagnostic {
                    key: format!("{key}.{name}"),
                    message,
                });
                None
            }
        };
        let built = match &account.credential {
            CredentialConfig::ApiKey { key_sid, secret } => {
                let sid = read("key_sid", key_sid);
                let secret = read("secret", secret);
                match (sid, secret) {
                    (Some(sid), Some(secret)) => {
                        let sid = sid.expose_secret();
                        if !is_sid(sid, "SK") {
                            errors.push(Diagnostic {
                                key: format!("{key}.key_sid"),
                                message: format!(
                                    "{} does not hold an API key SID (SK followed by 32 hex digits)",
                                    key_sid.origin()
                                ),
                            });
                            None
                        } else {
                            Some(Credential::basic("api_key", sid, &secret))
                        }
                    }
                    _ => None,
                }
            }
            CredentialConfig::AuthToken { token } => read("token", token)
                .map(|token| Credential::basic("auth_token", &account.sid, &token)),
        };
        match built {
            Some(Ok(c)) if errors.is_empty() => Ok(c),
            Some(Err(message)) => {
                errors.push(Diagnostic {
                    key: key.to_string(),
                    message,
                });
                Err(errors)
            }
            _ => Err(errors),
        }
    }

    /// The header value to attach. Marked sensitive, so hyper never logs it.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// `api_key` or `auth_token`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The Basic username (key SID or account SID): safe to show.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// True when both carry the same secret material (used to keep generations across reloads).
    pub fn same_as(&self, other: &Credential) -> bool {
        self.kind == other.kind && self.authorization == other.authorization
    }
}

/// A configured account.
#[derive(Debug, Clone)]
pub struct Account {
    pub sid: Box<str>,
    pub credential: Credential,
    /// Bumped each time a reload changes this account's credential.
    pub credential_generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_header_hide_the_secret() {
        let c = Credential::basic(
            "api_key",
            "SK00000000000000000000000000000001",
            &SecretString::from("topsecret".to_string()),
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("topsecret"));
        assert!(!debug.contains(
            &base64::engine::general_purpose::STANDARD
                .encode("SK00000000000000000000000000000001:topsecret")
        ));
        assert!(c.authorization().is_sensitive());
        assert_eq!(format!("{:?}", c.authorization()), "Sensitive");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode("SK00000000000000000000000000000001:topsecret")
        );
        assert_eq!(c.authorization().to_str().unwrap(), expected);
    }
}
