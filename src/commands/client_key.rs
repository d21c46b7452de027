//! `twilio-sidecar client-key`: a new local secret for a `[[clients]]` table — 256 bits from the
//! operating system's random source, URL-safe base64 — and the `secret_sha256` line for it, so
//! the sidecar's config never holds anything that authenticates.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

use crate::gate::clients::secret_hash;

/// Bytes of randomness in a local secret.
pub const SECRET_BYTES: usize = 32;

/// A new secret and the hex SHA-256 of it.
pub fn new_client_key() -> Result<(String, String), ring::error::Unspecified> {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = secret_hash(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((secret, hash))
}

/// What the command prints (and its exit code).
pub fn client_key(id: Option<&str>) -> (String, i32) {
    match new_client_key() {
        Ok((secret, hash)) => {
            let id = id.unwrap_or("YOUR-APP");
            (
                format!(
                    "# The app's local secret: its Twilio SDK password (username: the client id).\n\
                     # Shown only here; store it where the app reads secrets.\n\
                     {secret}\n\
                     \n\
                     # For the sidecar's config (the hash only):\n\
                     [[clients]]\n\
                     id = \"{id}\"\n\
                     secret_sha256 = [\"{hash}\"]\n"
                ),
                0,
            )
        }
        Err(_) => (
            "twilio-sidecar: the operating system's random source failed; no key made\n".into(),
            1,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_url_safe_random_and_hashed() {
        let (a, hash) = new_client_key().unwrap();
        let (b, _) = new_client_key().unwrap();
        assert_ne!(a, b);
        // 256 bits, base64 without padding.
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(hash.len(), 64);
        let expected: String = secret_hash(a.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, expected);
    }
}
