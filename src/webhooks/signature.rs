//! `X-Twilio-Signature`, checked exactly as the official SDKs' `RequestValidator` checks it.
//!
//! The signed string is the full URL Twilio called (the configured public base, then the
//! request's path and query as received), followed, for form posts, by every parameter's name
//! and value: names sorted, a repeated name's values sorted, exact duplicates counted once
//! (both SDKs de-duplicate). A GET, or a JSON body, signs the URL alone; a JSON body is tied
//! to it by the `bodySHA256` query parameter, the hex SHA-256 of the raw body, which must
//! match. HMAC-SHA1 with the token (HMAC-SHA256 when `X-Twilio-Webhooks-Signature-Settings`
//! says so), base64, compared in constant time. Twilio signs with or without the default
//! port, so both spellings of the URL are tried, as the SDKs do.
//!
//! [`SignedWebhook::read`] decodes what is signed without any key (it also names the account,
//! which picks the keys); [`SignedWebhook::verify`] checks it against an account's keys.
//! Pure functions, no I/O: the listener and the benchmark run the same code.

use std::borrow::Cow;

use base64::Engine;
use http::{HeaderMap, HeaderName, Method};
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::config::PublicUrl;
use crate::credentials::{SignatureAlgorithm, WebhookKeys};
use crate::gate::form::{self, FormError, Pair};

/// The signature header.
pub static X_TWILIO_SIGNATURE: HeaderName = HeaderName::from_static("x-twilio-signature");
/// Names a SharedKey and its algorithm; absent: the Auth Token and HMAC-SHA1.
pub static X_TWILIO_SIGNATURE_SETTINGS: HeaderName =
    HeaderName::from_static("x-twilio-webhooks-signature-settings");

/// Why a webhook is not accepted as Twilio's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request has no X-Twilio-Signature header")]
    MissingSignature,
    #[error("X-Twilio-Signature does not match the request for account {0}'s webhook token")]
    InvalidSignature(String),
    #[error("the body's SHA-256 does not match the bodySHA256 the signed URL carries")]
    BodyHashMismatch,
    #[error("the body is neither a form nor covered by a bodySHA256 query parameter, so the signature does not cover it")]
    UnverifiableBody,
    #[error("X-Twilio-Webhooks-Signature-Settings names an algorithm twilio-sidecar does not know: {0:?} (HMAC_SHA1 and HMAC_SHA256 are)")]
    UnsupportedAlgorithm(String),
    #[error("account {0} has no webhook_token configured, so its webhooks cannot be verified")]
    NoToken(String),
    #[error("the request is malformed: {0}")]
    Malformed(#[from] FormError),
}

impl Rejection {
    /// The `result` label of `twilio_sidecar_webhooks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::InvalidSignature(_) => "invalid_signature",
            Rejection::BodyHashMismatch => "body_hash_mismatch",
            Rejection::UnverifiableBody => "unverifiable_body",
            Rejection::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Rejection::NoToken(_) => "no_token",
            Rejection::Malformed(_) => "malformed",
        }
    }
}

/// A webhook decoded for verification: what the signature covers, and the account it names.
#[derive(Debug)]
pub struct SignedWebhook<'r> {
    path_and_query: &'r str,
    /// Form parameters, sorted and de-duplicated (empty for a GET or a hashed body).
    params: Vec<Pair<'r>>,
    /// `bodySHA256` from the query, with the body it must match.
    body_hash: Option<(Cow<'r, str>, &'r [u8])>,
    account_sid: Option<Cow<'r, str>>,
    algorithm: SignatureAlgorithm,
    signature: &'r [u8],
}

impl<'r> SignedWebhook<'r> {
    /// Decodes a webhook: its path and query as received, headers and complete body.
    pub fn read(
        method: &Method,
        path_and_query: &'r str,
        headers: &'r HeaderMap,
        body: &'r [u8],
    ) -> Result<SignedWebhook<'r>, Rejection> {
        let signature = headers
            .get(&X_TWILIO_SIGNATURE)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .ok_or(Rejection::MissingSignature)?;
        let algorithm = algorithm(headers.get(&X_TWILIO_SIGNATURE_SETTINGS))?;
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let query = form::parse(query.as_bytes())?;
        let first = |pairs: &[Pair<'r>], name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut account_sid = first(&query, "AccountSid");

        let (params, body_hash) = if let Some(hash) = first(&query, "bodySHA256") {
            if account_sid.is_none() {
                account_sid = json_account_sid(body).map(Cow::Owned);
            }
            (Vec::new(), Some((hash, body)))
        } else if is_form(headers) && *method != Method::GET && *method != Method::HEAD {
            let mut params = form::parse(body)?;
            if let Some(sid) = first(&params, "AccountSid") {
                account_sid = Some(sid);
            }
            params.sort_unstable();
            params.dedup();
            (params, None)
        } else if body.is_empty() {
            (Vec::new(), None)
        } else {
            return Err(Rejection::UnverifiableBody);
        };
        Ok(SignedWebhook {
            path_and_query,
            params,
            body_hash,
            account_sid,
            algorithm,
            signature,
        })
    }

    /// The `AccountSid` the webhook names (form or query parameter, or a JSON body's
    /// top-level field), if any: it picks whose token verifies it.
    pub fn account_sid(&self) -> Option<&str> {
        self.account_sid.as_deref()
    }

    /// Checks the signature with `keys` (any of them may match), for the URL under `public`.
    /// `account` only names the account in a rejection.
    pub fn verify(
        &self,
        public: &PublicUrl,
        keys: &WebhookKeys,
        account: &str,
    ) -> Result<(), Rejection> {
        if keys.is_empty() {
            return Err(Rejection::NoToken(account.to_string()));
        }
        if let Some((expected, body)) = &self.body_hash {
            let digest = ring::digest::digest(&ring::digest::SHA256, body);
            let mut hex = [0u8; 64];
            for (i, b) in digest.as_ref().iter().enumerate() {
                hex[2 * i] = HEX[usize::from(b >> 4)];
                hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
            }
            if !bool::from(hex.as_slice().ct_eq(expected.as_bytes())) {
                return Err(Rejection::BodyHashMismatch);
            }
        }
        // Everything after the URL's base, once: up to four HMACs run over it.
        let mut signed = Vec::with_capacity(
            self.path_and_query.len()
                + self
                    .params
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>(),
        );
        signed.extend_from_slice(self.path_and_query.as_bytes());
        for (name, value) in &self.params {
            signed.extend_from_slice(name.as_bytes());
            signed.extend_from_slice(value.as_bytes());
        }
        for base in [&public.without_port, &public.with_port] {
            for key in keys.keys(self.algorithm) {
                if self.matches(key, base, &signed) {
                    return Ok(());
                }
            }
        }
        Err(Rejection::InvalidSignature(account.to_string()))
    }

    /// Whether the signature is `key`'s over `base` followed by `rest`.
    fn matches(&self, key: &hmac::Key, base: &str, rest: &[u8]) -> bool {
        let mut mac = hmac::Context::with_key(key);
        mac.update(base.as_bytes());
        mac.update(rest);
        let tag = mac.sign();
        // Compared as the base64 text, as the SDKs compare it: 28 or 44 characters.
        let mut encoded = [0u8; 44];
        let Ok(n) =
            base64::engine::general_purpose::STANDARD.encode_slice(tag.as_ref(), &mut encoded)
        else {
            return false;
        };
        bool::from(encoded[..n].ct_eq(self.signature))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The algorithm `X-Twilio-Webhooks-Signature-Settings` names (`key=…,algorithm=…`), as the
/// SDKs read it: absent, or without `algorithm=`, is HMAC-SHA1.
fn algorithm(settings: Option<&http::HeaderValue>) -> Result<SignatureAlgorithm, Rejection> {
    let Some(settings) = settings else {
        return Ok(SignatureAlgorithm::HmacSha1);
    };
    let text = String::from_utf8_lossy(settings.as_bytes());
    for part in text.split(',') {
        if let Some((name, value)) = part.split_once('=') {
            let value = value.trim();
            if name.trim() == "algorithm" && !value.is_empty() {
                return match value.to_ascii_uppercase().as_str() {
                    "HMAC_SHA1" => Ok(SignatureAlgorithm::HmacSha1),
                    "HMAC_SHA256" => Ok(SignatureAlgorithm::HmacSha256),
                    _ => Err(Rejection::UnsupportedAlgorithm(
                        value.chars().take(32).collect(),
                    )),
                };
            }
        }
    }
    Ok(SignatureAlgorithm::HmacSha1)
}

/// Whether the body is `application/x-www-form-urlencoded` (any parameters, any case).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A JSON object body's top-level `AccountSid`, if it is a string.
fn json_account_sid(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "AccountSid")]
        account_sid: Option<String>,
    }
    serde_json::from_slice::<Named>(body).ok()?.account_sid
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The SDKs' published test vector (twilio-python's and twilio-node's validator tests):
    /// token `12345`, this URL and these parameters sign to this value.
    const TOKEN: &str = "12345";
    const SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const BODY: &str = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn public(s: &str) -> PublicUrl {
        PublicUrl::parse(s).unwrap()
    }

    fn form_headers(signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(
            &X_TWILIO_SIGNATURE,
            HeaderValue::from_str(signature).unwrap(),
        );
        h
    }

    fn check(url: &str, pq: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        let w = SignedWebhook::read(&Method::POST, pq, headers, body)?;
        w.verify(&public(url), &WebhookKeys::from_tokens([TOKEN]), "AC1")
    }

    #[test]
    fn the_sdks_published_vector_verifies_with_and_without_the_port() {
        let h = form_headers(SIGNATURE);
        let pq = "/myapp.php?foo=1&bar=2";
        assert_eq!(
            check("https://mycompany.com", pq, &h, BODY.as_bytes()),
            Ok(())
        );
        assert_eq!(
            check("https://mycompany.com:443", pq, &h, BODY.as_bytes()),
            Ok(())
        );
        // The order of the form fields does not matter; their values do.
        let shuffled = "To=%2B18005551212&From=%2B14158675309&Digits=1234&Caller=%2B14158675309&CallSid=CA1234567890ABCDE";
        assert_eq!(
            check("https://mycompany.com", pq, &h, shuffled.as_bytes()),
            Ok(())
        );
        let tampered = BODY.replace("Digits=1234", "Digits=1235");
        assert!(matches!(
            check("https://mycompany.com", pq, &h, tampered.as_bytes()),
            Err(Rejection::InvalidSignature(_))
        ));
        assert!(check(
            "https://mycompany.com",
            "/myapp.php?foo=1&bar=3",
            &h,
            BODY.as_bytes()
        )
        .is_err());
        assert!(check("http://mycompany.com", pq, &h, BODY.as_bytes()).is_err());
    }

    #[test]
    fn a_second_token_verifies_during_rotation_and_an_empty_set_refuses() {
        let h = form_headers(SIGNATURE);
        let w = SignedWebhook::read(&Method::POST, "/myapp.php?foo=1&bar=2", &h, BODY.as_bytes())
            .unwrap();
        let url = public("https://mycompany.com");
        assert_eq!(
            w.verify(&url, &WebhookKeys::from_tokens(["new", TOKEN]), "AC1"),
            Ok(())
        );
        assert!(w
            .verify(&url, &WebhookKeys::from_tokens(["new"]), "AC1")
            .is_err());
        assert_eq!(
            w.verify(&url, &WebhookKeys::default(), "AC1"),
            Err(Rejection::NoToken("AC1".into()))
        );
    }

    #[test]
    fn missing_signature_malformed_form_and_uncovered_bodies_are_refused() {
        let mut h = form_headers(SIGNATURE);
        assert!(matches!(
            SignedWebhook::read(&Method::POST, "/a", &h, b"a=%zz"),
            Err(Rejection::Malformed(_))
        ));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        assert_eq!(
            SignedWebhook::read(&Method::POST, "/a", &h, b"hello").unwrap_err(),
            Rejection::UnverifiableBody
        );
        h.remove(&X_TWILIO_SIGNATURE);
        assert_eq!(
            SignedWebhook::read(&Method::POST, "/a", &h, b"").unwrap_err(),
            Rejection::MissingSignature
        );
    }

    #[test]
    fn the_account_comes_from_the_form_the_query_or_a_json_body() {
        let h = form_headers(SIGNATURE);
        let w =
            SignedWebhook::read(&Method::POST, "/a?AccountSid=ACq", &h, b"AccountSid=ACf").unwrap();
        assert_eq!(w.account_sid(), Some("ACf"));
        let w = SignedWebhook::read(&Method::GET, "/a?AccountSid=ACq", &h, b"").unwrap();
        assert_eq!(w.account_sid(), Some("ACq"));
        let w = SignedWebhook::read(
            &Method::POST,
            "/a?bodySHA256=00",
            &h,
            br#"{"AccountSid":"ACj"}"#,
        )
        .unwrap();
        assert_eq!(w.account_sid(), Some("ACj"));
    }

    #[test]
    fn algorithm_settings_are_read_as_the_sdks_read_them() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(algorithm(None), Ok(SignatureAlgorithm::HmacSha1));
        assert_eq!(
            algorithm(Some(&v("key=webhooks_sharedkey_1, algorithm=HMAC_SHA256"))),
            Ok(SignatureAlgorithm::HmacSha256)
        );
        assert_eq!(
            algorithm(Some(&v("key=k"))),
            Ok(SignatureAlgorithm::HmacSha1)
        );
        assert!(matches!(
            algorithm(Some(&v("algorithm=HMAC_MD5"))),
            Err(Rejection::UnsupportedAlgorithm(_))
        ));
    }
}
