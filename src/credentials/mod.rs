//! Credentials: what each account attaches. (Which account a request uses is decided in
//! [`crate::gate`].)
//!
//! Static credentials (API key, Auth Token) are read once per config generation, when the state
//! is built, and turned into a sensitive [`HeaderValue`] (`Basic base64(user:secret)`); the hot
//! path only clones that value (a reference-count bump). The key SID and its secret are read
//! together and stored in one value, so a request can never pair a SID from one generation with
//! a secret from another. OAuth2 accounts attach a bearer token from their [`oauth::TokenCache`].
//!
//! An account enforcing PKCV also signs each request ([`pkcv`]). Inbound, an account's
//! [`WebhookKeys`] verify the webhooks Twilio signs for it.

pub mod access_token;
mod basic;
pub mod oauth;
pub mod pkcv;
pub mod webhook_token;

pub use access_token::Signer;
pub use basic::BasicCredential;
pub use pkcv::PkcvSigner;
pub use webhook_token::{SignatureAlgorithm, WebhookKeys};

use std::sync::Arc;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::config::reader::Diagnostic;
use crate::config::{is_sid, AccountConfig, CredentialConfig, SecretSource};
use crate::config::{OAuthSettings, TokenUrlError};
use crate::upstream::account_limit::AccountLimit;
use crate::upstream::Upstream;
use oauth::fetcher::HttpTokenFetcher;
pub use oauth::Invalidation;
use oauth::{ClientCredentials, NoToken, SystemClock, TokenCache};

/// Why a credential could not be built from values that were read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the credential holds characters an Authorization header cannot carry; check the secret's value")]
    NotAHeader,
    #[error(transparent)]
    TokenUrl(#[from] TokenUrlError),
}

/// One account's credential.
#[derive(Clone)]
pub enum Credential {
    Basic(BasicCredential),
    OAuth(Arc<TokenCache>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic(b) => b.fmt(f),
            Credential::OAuth(cache) => f.debug_tuple("Credential::OAuth").field(cache).finish(),
        }
    }
}

/// What a request carries upstream.
#[derive(Debug, Clone)]
pub struct Attached {
    pub header: HeaderValue,
    /// For bearer tokens: the cache and token id, so a 401 can invalidate exactly this token.
    pub bearer: Option<(Arc<TokenCache>, u64)>,
}

impl Attached {
    /// Twilio answered 401 to this credential: a bearer token is dropped from its cache (if
    /// it is still the current one, and no 401 dropped one too recently) and a fresh one
    /// fetched. `None` for Basic credentials, whose 401 is final.
    pub fn rejected(&self) -> Option<Invalidation> {
        self.bearer
            .as_ref()
            .map(|(cache, id)| cache.invalidate(*id))
    }
}

/// What building a credential may need beyond the account's own config.
pub struct LoadContext<'a> {
    pub upstream: &'a Arc<Upstream>,
    /// True when `upstream` is the same client the previous generation used.
    pub upstream_unchanged: bool,
    pub oauth: &'a OAuthSettings,
    /// The same account's credential in the previous generation, if any.
    pub previous: Option<&'a Credential>,
}

impl Credential {
    /// `Basic` credential for `username:secret`.
    pub fn basic(
        kind: &'static str,
        username: &str,
        secret: &SecretString,
    ) -> Result<Self, CredentialError> {
        BasicCredential::new(kind, username, secret).map(Credential::Basic)
    }

    /// Reads the sources of the account's credential (files, env) and builds it. Errors name
    /// the key under `key` (for example `accounts[0].credential`). An OAuth2 account whose
    /// client credentials did not change keeps its previous token cache.
    pub fn load(
        account: &AccountConfig,
        key: &str,
        ctx: &LoadContext<'_>,
    ) -> Result<Credential, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let mut read = |name: &str, source: &SecretSource| match source.read() {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(Diagnostic {
                    key: format!("{key}.{name}"),
                    message: e.to_string(),
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
                            Some(Credential::basic("api_key", sid, &secret).map(|c| {
                                c.with_signer(Signer {
                                    key_sid: sid.into(),
                                    account_sid: account.sid.as_str().into(),
                                    secret: secret.clone(),
                                })
                            }))
                        }
                    }
                    _ => None,
                }
            }
            CredentialConfig::AuthToken { token } => read("token", token)
                .map(|token| Credential::basic("auth_token", &account.sid, &token)),
            CredentialConfig::OAuth2 {
                client_id,
                client_secret,
                token_url,
            } => {
                let id = read("client_id", client_id);
                let secret = read("client_secret", client_secret);
                match (id, secret) {
                    (Some(id), Some(secret)) => Some(Self::oauth(
                        &account.sid,
                        ClientCredentials {
                            client_id: id.expose_secret().to_string(),
                            client_secret: secret,
                            token_url: token_url.clone(),
                        },
                        ctx,
                    )),
                    _ => None,
                }
            }
        };
        match built {
            Some(Ok(c)) if errors.is_empty() => Ok(c),
            Some(Err(e)) => {
                errors.push(Diagnostic {
                    key: key.to_string(),
                    message: e.to_string(),
                });
                Err(errors)
            }
            _ => Err(errors),
        }
    }

    fn oauth(
        account: &str,
        client: ClientCredentials,
        ctx: &LoadContext<'_>,
    ) -> Result<Credential, CredentialError> {
        if let Some(Credential::OAuth(old)) = ctx.previous {
            if ctx.upstream_unchanged && old.same_client(&client, ctx.oauth) {
                return Ok(Credential::OAuth(old.clone()));
            }
        }
        let fetcher = HttpTokenFetcher::new(
            ctx.upstream.clone(),
            &client.token_url,
            &client.client_id,
            &client.client_secret,
        )?;
        Ok(Credential::OAuth(TokenCache::new(
            account,
            client,
            ctx.oauth.clone(),
            Arc::new(fetcher),
            Arc::new(SystemClock),
            oauth::default_jitter(),
        )))
    }

    /// The header to attach, waiting briefly for a token when an OAuth2 account has none.
    pub async fn attach(&self) -> Result<Attached, NoToken> {
        match self {
            Credential::Basic(b) => Ok(Attached {
                header: b.authorization.clone(),
                bearer: None,
            }),
            Credential::OAuth(cache) => {
                let token = cache.token().await?;
                Ok(Attached {
                    header: token.header.clone(),
                    bearer: Some((cache.clone(), token.id)),
                })
            }
        }
    }

    /// True when a request could get a credential now without waiting.
    pub fn usable(&self) -> bool {
        match self {
            Credential::Basic(_) => true,
            Credential::OAuth(cache) => cache.usable_token().is_some(),
        }
    }

    /// `api_key`, `auth_token` or `oauth2`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Basic(b) => b.kind,
            Credential::OAuth(_) => "oauth2",
        }
    }

    /// Safe to show: the Basic username (key SID or account SID) or the OAuth client id.
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic(b) => &b.username,
            Credential::OAuth(c) => c.client_id(),
        }
    }

    /// True when both carry the same secret material (used to keep generations across reloads).
    pub fn same_as(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::Basic(a), Credential::Basic(b)) => {
                a.kind == b.kind && a.authorization == b.authorization
            }
            (Credential::OAuth(a), Credential::OAuth(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// An API key's signing material (key SID, account, secret), to mint Access Tokens and
    /// sign PKCV JWTs with; other credentials have none.
    pub fn signer(&self) -> Option<&Signer> {
        match self {
            Credential::Basic(b) => b.signer.as_ref(),
            Credential::OAuth(_) => None,
        }
    }

    fn with_signer(self, signer: Signer) -> Self {
        match self {
            Credential::Basic(mut b) => {
                b.signer = Some(signer);
                Credential::Basic(b)
            }
            other => other,
        }
    }

    /// The static header, for credentials that have one (tests, benchmarks).
    pub fn basic_header(&self) -> Option<&HeaderValue> {
        match self {
            Credential::Basic(b) => Some(&b.authorization),
            Credential::OAuth(_) => None,
        }
    }
}

/// A configured account.
#[derive(Debug, Clone)]
pub struct Account {
    pub sid: Box<str>,
    pub credential: Credential,
    /// Bumped each time a reload changes this account's credential.
    pub credential_generation: u64,
    /// What verifies this account's inbound webhooks (empty: they are refused).
    pub webhook_keys: WebhookKeys,
    /// With `pkcv`: signs every request's `Twilio-Client-Validation` JWT.
    pub pkcv: Option<Arc<PkcvSigner>>,
    /// With `max_concurrent`: the slots its requests to Twilio queue for (kept across
    /// reloads while the limit is unchanged).
    pub limit: Option<Arc<AccountLimit>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

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
        let header = c.basic_header().unwrap();
        assert!(header.is_sensitive());
        assert_eq!(format!("{header:?}"), "Sensitive");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode("SK00000000000000000000000000000001:topsecret")
        );
        assert_eq!(header.to_str().unwrap(), expected);
    }
}
