//! PKCV (Public Key Client Validation): the `Twilio-Client-Validation` JWT that accounts
//! enforcing it require on every request, signed here so the private key lives only in the
//! sidecar.
//!
//! Exactly as twilio-python's `ClientValidationJwt`: header `{"alg":"RS256","typ":"JWT",
//! "cty":"twilio-pkrv;v=1","kid":"CR…"}`; claims `iss` (the API key SID), `sub` (the account),
//! `nbf` (now), `exp` (now + 300), `hrh` (`authorization;host`) and `rqh`, the hex SHA-256 of
//! the canonical request ([`request_hash`]): method, path, query (its `&`-separated pieces
//! sorted as strings), the `authorization` and `host` lines, an empty line, the signed header
//! names, and the hex SHA-256 of the body (empty for an empty body), joined by `\n`.
//!
//! The key is read when the state is built (RSA 2048, PKCS#8 or PKCS#1 PEM) and kept only as
//! ring's key pair; it is never printed. Signing is RSA 2048, about a millisecond of CPU, so
//! the proxy runs it off the serving thread. Nothing can be cached across requests without
//! weakening it: `rqh` covers each request's query, body and credential.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use secrecy::ExposeSecret;

use crate::config::PkcvConfig;

/// The header Twilio reads the JWT from.
pub static TWILIO_CLIENT_VALIDATION: http::HeaderName =
    http::HeaderName::from_static("twilio-client-validation");

/// How long a validation JWT is valid (twilio-python's `ttl=300`).
const LIFETIME_SECS: u64 = 300;
/// The headers the JWT covers, sorted, joined.
const SIGNED_HEADERS: &str = "authorization;host";
/// Twilio's required key size.
const MODULUS_BITS: usize = 2048;

/// Why a PKCV key cannot be used. Names the source, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkcvError {
    #[error("{0}: not a PEM private key (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)")]
    NotPem(String),
    #[error("{0}: not an RSA key (PKCV keys are RSA 2048)")]
    NotRsa(String),
    #[error("{0}: an RSA key of {1} bits; Twilio's PKCV needs RSA 2048")]
    WrongSize(String, usize),
    #[error("{0}: an RSA key smaller than 2048 bits; Twilio's PKCV needs RSA 2048")]
    TooSmall(String),
    #[error("{0}: the RSA key is not usable: {1}")]
    Rejected(String, String),
    #[error("signing the PKCV validation token failed")]
    Signing,
}

/// One account's PKCV signer, for one config generation.
pub struct PkcvSigner {
    credential_sid: Box<str>,
    account_sid: Box<str>,
    key_sid: Box<str>,
    key: RsaKeyPair,
    /// SHA-256 of the key's DER, so a reload can tell whether it changed.
    fingerprint: [u8; 32],
    rng: SystemRandom,
}

impl std::fmt::Debug for PkcvSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkcvSigner")
            .field("credential_sid", &self.credential_sid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl PkcvSigner {
    /// Reads and checks the key; `key_sid` is the account's API key SID (the JWT's issuer).
    pub fn load(
        config: &PkcvConfig,
        account_sid: &str,
        key_sid: &str,
    ) -> Result<PkcvSigner, PkcvError> {
        let origin = config.private_key.origin();
        let pem = config
            .private_key
            .read()
            .map_err(|e| PkcvError::Rejected(origin.clone(), e.to_string()))?;
        let der = PrivateKeyDer::from_pem_slice(pem.expose_secret().as_bytes())
            .map_err(|_| PkcvError::NotPem(origin.clone()))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(PkcvError::NotRsa(origin)),
        }
        .map_err(|e| match e.to_string().as_str() {
            // ring names a non-RSA PKCS#8 key by its algorithm.
            "WrongAlgorithm" => PkcvError::NotRsa(origin.clone()),
            "TooSmall" => PkcvError::TooSmall(origin.clone()),
            other => PkcvError::Rejected(origin.clone(), other.to_string()),
        })?;
        let bits = key.public().modulus_len() * 8;
        if bits != MODULUS_BITS {
            return Err(PkcvError::WrongSize(origin, bits));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, der.secret_der());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(PkcvSigner {
            credential_sid: config.credential_sid.as_str().into(),
            account_sid: account_sid.into(),
            key_sid: key_sid.into(),
            key,
            fingerprint,
            rng: SystemRandom::new(),
        })
    }

    /// The `Twilio-Client-Validation` value for a request whose canonical hash is `rqh`
    /// ([`request_hash`]), valid from `now` for five minutes. RSA: about a millisecond.
    pub fn sign(&self, rqh: &str, now: SystemTime) -> Result<HeaderValue, PkcvError> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "cty": "twilio-pkrv;v=1",
            "kid": &*self.credential_sid,
        });
        let claims = serde_json::json!({
            "iss": &*self.key_sid,
            "sub": &*self.account_sid,
            "nbf": now,
            "exp": now + LIFETIME_SECS,
            "hrh": SIGNED_HEADERS,
            "rqh": rqh,
        });
        let mut token = b64.encode(header.to_string());
        token.push('.');
        token.push_str(&b64.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| PkcvError::Signing)?;
        token.push('.');
        token.push_str(&b64.encode(&signature));
        let mut value = HeaderValue::try_from(token).map_err(|_| PkcvError::Signing)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Same key and credential SID.
    pub fn same_as(&self, other: &PkcvSigner) -> bool {
        self.fingerprint == other.fingerprint
            && self.credential_sid == other.credential_sid
            && self.key_sid == other.key_sid
    }

    /// The registered public key credential (`CR…`).
    pub fn credential_sid(&self) -> &str {
        &self.credential_sid
    }
}

/// `rqh`: the hex SHA-256 of the canonical request, as twilio-python's `ClientValidationJwt`
/// builds it. `path` and `query` are the request target's, as sent (`query` without `?`);
/// `authorization` and `host` the values sent upstream.
pub fn request_hash(
    method: &str,
    path: &str,
    query: &str,
    authorization: &[u8],
    host: &str,
    body: &[u8],
) -> String {
    let mut pieces: Vec<&str> = query.split('&').collect();
    pieces.sort_unstable();
    let mut canonical = Vec::with_capacity(
        method.len() + path.len() + query.len() + authorization.len() + host.len() + 160,
    );
    for part in [method, "\n", path, "\n"] {
        canonical.extend_from_slice(part.as_bytes());
    }
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            canonical.push(b'&');
        }
        canonical.extend_from_slice(piece.as_bytes());
    }
    canonical.extend_from_slice(b"\nauthorization:");
    canonical.extend_from_slice(authorization);
    canonical.extend_from_slice(b"\nhost:");
    canonical.extend_from_slice(host.as_bytes());
    canonical.extend_from_slice(b"\n\n");
    canonical.extend_from_slice(SIGNED_HEADERS.as_bytes());
    canonical.push(b'\n');
    if !body.is_empty() {
        canonical.extend_from_slice(hex_sha256(body).as_bytes());
    }
    hex_sha256(&canonical)
}

/// Lowercase hex SHA-256.
fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;
    use std::path::Path;

    fn fixture(name: &str) -> SecretSource {
        SecretSource::File(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/pkcv")
                .join(name),
        )
    }

    fn load(name: &str) -> Result<PkcvSigner, PkcvError> {
        PkcvSigner::load(
            &PkcvConfig {
                credential_sid: "CR00000000000000000000000000000001".into(),
                private_key: fixture(name),
            },
            "AC00000000000000000000000000000001",
            "SK00000000000000000000000000000001",
        )
    }

    /// twilio-python's own test vector (tests/unit/jwt/test_client_validation.py).
    #[test]
    fn the_sdks_test_vector() {
        assert_eq!(
            request_hash(
                "GET",
                "/Messages",
                "PageSize=5&Limit=10",
                b"foobar",
                "api.twilio.com",
                b"foobar"
            ),
            "4dc9b67bed579647914587b0e22a1c65c1641d8674797cd82de65e766cce5f80"
        );
    }

    #[test]
    fn rsa_2048_keys_load_in_both_pem_forms_and_others_are_named() {
        assert!(load("key-a.pk8.pem").is_ok());
        assert!(load("key-b.pkcs1.pem").is_ok());
        let small = load("small-1024.pem").unwrap_err();
        assert!(small.to_string().contains("RSA 2048"), "{small}");
        assert!(matches!(load("ec-p256.pem"), Err(PkcvError::NotRsa(_))));
        assert!(matches!(load("README.md"), Err(PkcvError::NotPem(_))));
        let debug = format!("{:?}", load("key-a.pk8.pem").unwrap());
        assert!(!debug.contains("MII"), "{debug}");
    }

    #[test]
    fn the_token_verifies_with_the_public_key_and_carries_the_claims() {
        let signer = load("key-a.pk8.pem").unwrap();
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let token = signer.sign("abc123", now).unwrap();
        assert!(token.is_sensitive());
        let token = token.to_str().unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signer.key.public().as_ref(),
        );
        public
            .verify(input.as_bytes(), &b64.decode(signature).unwrap())
            .unwrap();
        let (header, claims) = input.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(header).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(claims).unwrap()).unwrap();
        assert_eq!(header["cty"], "twilio-pkrv;v=1");
        assert_eq!(header["kid"], "CR00000000000000000000000000000001");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(claims["iss"], "SK00000000000000000000000000000001");
        assert_eq!(claims["sub"], "AC00000000000000000000000000000001");
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_300u64);
        assert_eq!(claims["hrh"], "authorization;host");
        assert_eq!(claims["rqh"], "abc123");
    }
}
