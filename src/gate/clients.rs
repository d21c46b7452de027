//! Clients: apps with a local key of their own and a policy of their own, so one sidecar or
//! gateway serving several apps still gives each only what it needs.
//!
//! An app presents its local key exactly as it would a Twilio API key — `Authorization: Basic
//! id:secret`, what `twilio.rest.Client("billing-api", secret, "AC…")` sends — or as
//! `Proxy-Authorization` (proxy clients). The key is worthless outside this sidecar. This
//! module owns the phase before routing, **client**: who is asking ([`ClientKeys`]); the
//! gate then decides under that client's [`ClientPolicy`].
//!
//! Secrets are compared by SHA-256 in constant time, and every configured key is compared on
//! every attempt, so an unknown id and a wrong secret cost the same and answer the same (401).
//! Credentials whose username is shaped like a Twilio SID (`AC…`, `SK…`: what an SDK sends
//! when it was given Twilio credentials, or dummies) are not client credentials at all: the
//! request is anonymous, served only when `policy.anonymous` allows it. Client ids may not take
//! that shape, so this says nothing about which ids exist.

use base64::Engine;
use http::{header, HeaderMap, HeaderValue};
use ring::digest::{digest, SHA256};
use subtle::ConditionallySelectable;

use crate::config::reader::Diagnostic;
use crate::config::{ClientConfig, ClientSecret};
use crate::gate::policy::Policy;

/// A client's place in the config (and in [`ClientKeys`] and the gate's client list).
pub type ClientIndex = usize;

/// One client's compiled policy: its allow rules; its deny rules and `[policy].deny`; its
/// mode (or `policy.mode`); the accounts it may use.
#[derive(Debug)]
pub struct ClientPolicy {
    pub id: Box<str>,
    pub policy: Policy,
    /// Indexes of the accounts it may use; `None`: all.
    pub accounts: Option<Box<[usize]>>,
    /// Where each rule came from (`clients[0].allow[1]`, `policy.deny[0]`), in rule order.
    pub(super) origins: Vec<String>,
}

impl ClientPolicy {
    /// True when the client may use account `index`.
    pub fn may_use(&self, index: usize) -> bool {
        self.accounts.as_ref().is_none_or(|a| a.contains(&index))
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No client credentials (none sent, or Twilio-shaped ones an SDK sends by habit).
    Anonymous,
    Client(ClientIndex),
}

/// Why client authentication failed: the `reason` label of its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Credentials are required and there are none.
    Missing,
    /// Not Basic, not base64, no `:`, more than one credential header.
    Malformed,
    /// No client has this id.
    UnknownClient,
    /// The id is a client's, the secret is not its.
    WrongSecret,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownClient => "unknown_client",
            AuthFailure::WrongSecret => "wrong_secret",
        }
    }
}

/// Hashes at most per client (two overlap during a rotation).
const SLOTS: usize = crate::config::MAX_CLIENT_HASHES;
/// Client ids are at most this long.
const MAX_ID: usize = 64;

/// One client's key material, as machine words so that comparing it costs a few dozen
/// instructions: its id (zero-padded) and length, and the hashes of its secrets.
struct Key {
    id: [u64; MAX_ID / 8],
    id_len: u64,
    hashes: [[u64; 4]; SLOTS],
    /// All ones for a slot in use, zero for an empty one (which then never matches).
    used: [u64; SLOTS],
}

/// `bytes` (at most `8 * N`), zero-padded, as words.
fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, chunk) in bytes.chunks(8).take(N).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(w);
    }
    out
}

/// The OR of the XORs of two word arrays: zero exactly when they are equal. No early exit.
fn difference<const N: usize>(a: &[u64; N], b: &[u64; N]) -> u64 {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y))
}

/// 1 when `d` is zero, else 0, without a branch.
fn is_zero(d: u64) -> u64 {
    1 ^ ((d | d.wrapping_neg()) >> 63)
}

/// Every client's key, built with the state (a `secret = { file }` is read then, and only its
/// hash kept). Empty when there are no `[[clients]]`.
#[derive(Default)]
pub struct ClientKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("clients", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a local secret.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret).as_ref());
    out
}

/// True for usernames shaped like a Twilio SID: two letters and 32 hex digits.
fn is_twilio_sid_shaped(user: &[u8]) -> bool {
    user.len() == 34
        && user[..2].iter().all(u8::is_ascii_alphabetic)
        && user[2..].iter().all(u8::is_ascii_hexdigit)
}

impl ClientKeys {
    /// Reads every client's secret (hashes as given, or a source read and hashed now). Errors
    /// name the key.
    pub fn load(clients: &[ClientConfig]) -> Result<ClientKeys, Vec<Diagnostic>> {
        let mut keys = Vec::with_capacity(clients.len());
        let mut errors = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let hashes: Vec<[u8; 32]> = match &client.secret {
                ClientSecret::Hashes(h) => h.clone(),
                ClientSecret::Source(source) => match source.read() {
                    Ok(secret) => {
                        use secrecy::ExposeSecret;
                        vec![secret_hash(secret.expose_secret().as_bytes())]
                    }
                    Err(e) => {
                        errors.push(Diagnostic {
                            key: format!("clients[{i}].secret"),
                            message: e.to_string(),
                        });
                        continue;
                    }
                },
            };
            let mut key = Key {
                id: words(client.id.as_bytes()),
                id_len: client.id.len() as u64,
                hashes: [[0; 4]; SLOTS],
                used: [0; SLOTS],
            };
            for (slot, hash) in hashes.iter().take(SLOTS).enumerate() {
                key.hashes[slot] = words(hash);
                key.used[slot] = u64::MAX;
            }
            keys.push(key);
        }
        if errors.is_empty() {
            Ok(ClientKeys { keys })
        } else {
            Err(errors)
        }
    }

    /// True when there are clients (requests must then authenticate, or be anonymous).
    pub fn any(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Who sent `headers`. `Proxy-Authorization` (aimed at the proxy) wins over
    /// `Authorization`; more than one value of the header used is refused as ambiguous.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        let proxy = headers.get_all(header::PROXY_AUTHORIZATION);
        let chosen = if proxy.iter().next().is_some() {
            proxy
        } else {
            headers.get_all(header::AUTHORIZATION)
        };
        let mut values = chosen.iter();
        let Some(value) = values.next() else {
            return Ok(Caller::Anonymous);
        };
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        self.authenticate_value(value)
    }

    /// One `Basic` credential value.
    pub fn authenticate_value(&self, value: &HeaderValue) -> Result<Caller, AuthFailure> {
        let raw = value.as_bytes();
        let Some(encoded) = raw
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
            .map(|_| raw[6..].trim_ascii())
        else {
            // Bearer and other schemes: not client credentials, not Twilio's either.
            return Err(AuthFailure::Malformed);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthFailure::Malformed)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(AuthFailure::Malformed)?;
        let (user, secret) = (&decoded[..colon], &decoded[colon + 1..]);
        if is_twilio_sid_shaped(user) {
            return Ok(Caller::Anonymous);
        }
        if user.is_empty() || user.len() > MAX_ID {
            return Err(AuthFailure::Malformed);
        }
        Ok(Caller::Client(self.find(user, secret)?))
    }

    /// Compares against every key, whatever matches, in time that depends only on how many
    /// keys there are: no comparison exits early, and which key matched is selected without a
    /// branch.
    fn find(&self, user: &[u8], secret: &[u8]) -> Result<ClientIndex, AuthFailure> {
        let hash: [u64; 4] = words(&secret_hash(secret));
        let id: [u64; MAX_ID / 8] = words(user);
        let id_len = user.len() as u64;
        let (mut found_id, mut found_both) = (0u64, 0u64);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let same_id = is_zero(difference(&key.id, &id) | (key.id_len ^ id_len));
            let mut same_secret = 0u64;
            for slot in 0..SLOTS {
                same_secret |= is_zero(difference(&key.hashes[slot], &hash)) & key.used[slot];
            }
            // Opaque to the optimiser, so it cannot turn the selection into a branch.
            let both = std::hint::black_box(same_id & same_secret);
            index.conditional_assign(&(i as u32), subtle::Choice::from(both as u8));
            found_id |= same_id;
            found_both |= both;
        }
        if found_both == 1 {
            Ok(index as usize)
        } else if found_id == 1 {
            Err(AuthFailure::WrongSecret)
        } else {
            Err(AuthFailure::UnknownClient)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn client(id: &str, secrets: &[&str]) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            secret: ClientSecret::Hashes(
                secrets.iter().map(|s| secret_hash(s.as_bytes())).collect(),
            ),
            accounts: None,
            mode: None,
            allow: vec!["/x".into()],
            deny: vec![],
            files: vec![],
            access_tokens: None,
        }
    }

    fn basic(user: &str, secret: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    fn keys() -> ClientKeys {
        ClientKeys::load(&[
            client("billing-api", &["old-secret", "new-secret"]),
            client("notifications", &["n-secret"]),
        ])
        .unwrap()
    }

    fn headers(pairs: &[(&str, HeaderValue)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.clone(),
            );
        }
        h
    }

    #[test]
    fn clients_authenticate_with_any_of_their_hashes() {
        let k = keys();
        for (user, secret, want) in [
            ("billing-api", "old-secret", Ok(Caller::Client(0))),
            ("billing-api", "new-secret", Ok(Caller::Client(0))),
            ("notifications", "n-secret", Ok(Caller::Client(1))),
            ("billing-api", "n-secret", Err(AuthFailure::WrongSecret)),
            ("billing-ap", "old-secret", Err(AuthFailure::UnknownClient)),
            (
                "billing-api-x",
                "old-secret",
                Err(AuthFailure::UnknownClient),
            ),
            ("BILLING-API", "old-secret", Err(AuthFailure::UnknownClient)),
            ("", "old-secret", Err(AuthFailure::Malformed)),
        ] {
            assert_eq!(
                k.authenticate_value(&basic(user, secret)),
                want,
                "{user}:{secret}"
            );
        }
    }

    #[test]
    fn header_forms() {
        let k = keys();
        let good = basic("billing-api", "new-secret");
        assert_eq!(k.authenticate(&headers(&[])), Ok(Caller::Anonymous));
        // What an SDK sends with Twilio (or dummy) credentials: not a client.
        let sdk = basic("AC0123456789abcdef0123456789abcdef", "dummy");
        assert_eq!(
            k.authenticate(&headers(&[("authorization", sdk.clone())])),
            Ok(Caller::Anonymous)
        );
        // The proxy's header wins over the SDK's.
        assert_eq!(
            k.authenticate(&headers(&[
                ("authorization", sdk),
                ("proxy-authorization", good.clone())
            ])),
            Ok(Caller::Client(0))
        );
        // Two values of the header in use are ambiguous.
        assert_eq!(
            k.authenticate(&headers(&[
                ("authorization", good.clone()),
                ("authorization", good.clone())
            ])),
            Err(AuthFailure::Malformed)
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic YWJj", "Digest x"] {
            let v = HeaderValue::from_static(bad);
            assert_eq!(
                k.authenticate(&headers(&[("authorization", v)])),
                Err(AuthFailure::Malformed),
                "{bad}"
            );
        }
        // The scheme is case-insensitive.
        let lower =
            HeaderValue::from_str(&good.to_str().unwrap().replacen("Basic", "bASIC", 1)).unwrap();
        assert_eq!(
            k.authenticate(&headers(&[("authorization", lower)])),
            Ok(Caller::Client(0))
        );
    }

    #[test]
    fn a_secret_source_is_hashed_on_load_and_its_errors_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "from-a-file\n").unwrap();
        let mut c = client("filed", &[]);
        c.secret = ClientSecret::Source(SecretSource::File(dir.path().join("s")));
        let k = ClientKeys::load(&[c.clone()]).unwrap();
        assert_eq!(
            k.authenticate_value(&basic("filed", "from-a-file")),
            Ok(Caller::Client(0))
        );
        c.secret = ClientSecret::Source(SecretSource::File(dir.path().join("missing")));
        let e = ClientKeys::load(&[c]).unwrap_err();
        assert_eq!(e[0].key, "clients[0].secret");
    }
}
