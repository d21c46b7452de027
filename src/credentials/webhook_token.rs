//! The keys that verify an account's inbound webhooks: its `webhook_token`s (the Auth Token,
//! or a webhook SharedKey secret), read when the state is built and kept only as HMAC keys.
//! Two while a token rotates; a webhook signed with either is accepted.

use ring::hmac;
use secrecy::ExposeSecret;

use crate::config::reader::Diagnostic;
use crate::config::SecretSource;

/// The HMAC a webhook signature uses, from `X-Twilio-Webhooks-Signature-Settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// The classic Auth Token signature, and the default.
    HmacSha1,
    HmacSha256,
}

impl SignatureAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureAlgorithm::HmacSha1 => "HMAC_SHA1",
            SignatureAlgorithm::HmacSha256 => "HMAC_SHA256",
        }
    }
}

/// An account's webhook tokens as HMAC keys, for both algorithms.
#[derive(Clone, Default)]
pub struct WebhookKeys {
    sha1: Vec<hmac::Key>,
    sha256: Vec<hmac::Key>,
    /// SHA-256 of each token, so a reload can tell whether they changed without keeping them.
    fingerprints: Vec<[u8; 32]>,
}

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookKeys({} tokens, redacted)", self.sha1.len())
    }
}

impl WebhookKeys {
    /// Reads every source; `key` names them in errors (`accounts[0].webhook_token`).
    pub fn load(sources: &[SecretSource], key: &str) -> Result<WebhookKeys, Vec<Diagnostic>> {
        let mut keys = WebhookKeys::default();
        let mut errors = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            match source.read() {
                Ok(token) => keys.add(token.expose_secret().as_bytes()),
                Err(e) => errors.push(Diagnostic {
                    key: if sources.len() > 1 {
                        format!("{key}[{i}]")
                    } else {
                        key.to_string()
                    },
                    message: e.to_string(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(keys)
        } else {
            Err(errors)
        }
    }

    /// Keys from token values (tests and benchmarks).
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> WebhookKeys {
        let mut keys = WebhookKeys::default();
        for t in tokens {
            keys.add(t.as_bytes());
        }
        keys
    }

    fn add(&mut self, token: &[u8]) {
        self.sha1
            .push(hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token));
        self.sha256.push(hmac::Key::new(hmac::HMAC_SHA256, token));
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        self.fingerprints.push(fingerprint);
    }

    /// The keys to try for `algorithm`, in config order.
    pub fn keys(&self, algorithm: SignatureAlgorithm) -> &[hmac::Key] {
        match algorithm {
            SignatureAlgorithm::HmacSha1 => &self.sha1,
            SignatureAlgorithm::HmacSha256 => &self.sha256,
        }
    }

    /// No token: this account's webhooks cannot be verified.
    pub fn is_empty(&self) -> bool {
        self.sha1.is_empty()
    }

    /// Same tokens in the same order.
    pub fn same_as(&self, other: &WebhookKeys) -> bool {
        self.fingerprints == other.fingerprints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn debug_hides_the_tokens_and_sources_are_named_in_errors() {
        let keys = WebhookKeys::load(
            &[SecretSource::Inline(SecretString::from(
                "supersecrettoken".to_string(),
            ))],
            "accounts[0].webhook_token",
        )
        .unwrap();
        assert!(!format!("{keys:?}").contains("supersecret"));
        assert_eq!(keys.keys(SignatureAlgorithm::HmacSha1).len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let errors = WebhookKeys::load(
            &[
                SecretSource::Inline(SecretString::from("a".to_string())),
                SecretSource::File(dir.path().join("missing")),
            ],
            "accounts[0].webhook_token",
        )
        .unwrap_err();
        assert_eq!(errors[0].key, "accounts[0].webhook_token[1]");
    }

    #[test]
    fn fingerprints_tell_a_rotation_apart() {
        let a = WebhookKeys::from_tokens(["one", "two"]);
        assert!(a.same_as(&WebhookKeys::from_tokens(["one", "two"])));
        assert!(!a.same_as(&WebhookKeys::from_tokens(["two"])));
    }
}
