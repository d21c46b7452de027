//! Access Tokens for Twilio's client SDKs (Voice, Video, Conversations, Sync), minted by the
//! sidecar so the app that serves a browser or a phone holds no API key secret.
//!
//! A token is a JWT signed with HS256 by an account's API key secret: header `typ` JWT, `alg`
//! HS256, `cty` `twilio-fpa;v=1`; claims `jti` (`SK…-<iat>`), `iss` (the key SID), `sub` (the
//! account), `iat`, `nbf`, `exp` and `grants` — the union of what twilio-python's and
//! twilio-node's `AccessToken` write, grants under the SDKs' keys (`voice`, `video`, `chat`,
//! `data_sync`). What may be minted is a policy (`[access_tokens]`, or a client's own): the
//! identity must match one of its globs, the lifetime stay within `max_ttl`, and each grant
//! name only what the policy lists. Anything else is refused, naming what.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{AccessTokenPolicy, MAX_ACCESS_TOKEN_TTL};
use crate::gate::glob::glob;

/// The API key that signs: its SID (the token's issuer), its account and its secret.
#[derive(Clone)]
pub struct Signer {
    pub key_sid: Box<str>,
    pub account_sid: Box<str>,
    pub secret: SecretString,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_sid", &self.key_sid)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

/// `POST /_sidecar/access-tokens`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub identity: String,
    /// Seconds; default (and at most) the policy's `max_ttl`.
    pub ttl: Option<u64>,
    #[serde(default)]
    pub grants: Grants,
}

/// The grants a token request asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    pub voice: Option<VoiceGrant>,
    pub video: Option<VideoGrant>,
    pub chat: Option<ServiceGrant>,
    pub sync: Option<ServiceGrant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceGrant {
    pub outgoing_application_sid: Option<String>,
    #[serde(default)]
    pub incoming_allow: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoGrant {
    pub room: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceGrant {
    pub service_sid: String,
}

/// What the policy refuses, named for the 403 and the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error(
        "a ttl of {asked} s is more than the {max} s the sidecar's access_tokens.max_ttl allows"
    )]
    Ttl { asked: u64, max: u64 },
    #[error("identity {0:?} matches none of the sidecar's access_tokens.identities")]
    Identity(String),
    #[error("the {grant} grant is refused: {what}")]
    Grant { grant: &'static str, what: String },
}

impl TokenRefusal {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenRefusal::Ttl { .. } => "ttl",
            TokenRefusal::Identity(_) => "identity",
            TokenRefusal::Grant { grant, .. } => grant,
        }
    }
}

/// A minted token.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub expires_at: SystemTime,
    /// The grants it carries, for the metric.
    pub grants: Vec<&'static str>,
}

#[derive(Serialize)]
struct Header {
    alg: &'static str,
    cty: &'static str,
    typ: &'static str,
}

#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    grants: serde_json::Value,
    iss: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Longest identity accepted (Twilio documents identities as short strings).
const MAX_IDENTITY: usize = 256;

/// Checks `request` against `policy`, then signs. `now` is injected for tests.
pub fn mint(
    policy: &AccessTokenPolicy,
    request: &TokenRequest,
    signer: &Signer,
    now: SystemTime,
) -> Result<Minted, TokenRefusal> {
    let max = policy.max_ttl.min(MAX_ACCESS_TOKEN_TTL).as_secs();
    let ttl = request.ttl.unwrap_or(max);
    if ttl == 0 || ttl > max {
        return Err(TokenRefusal::Ttl { asked: ttl, max });
    }
    let identity = &request.identity;
    if identity.is_empty()
        || identity.len() > MAX_IDENTITY
        || !policy.identities.iter().any(|g| glob(g, identity))
    {
        return Err(TokenRefusal::Identity(identity.clone()));
    }

    let mut grants = serde_json::Map::new();
    grants.insert("identity".into(), identity.as_str().into());
    let mut names = Vec::new();
    if let Some(voice) = &request.grants.voice {
        let refuse = |what: String| TokenRefusal::Grant {
            grant: "voice",
            what,
        };
        let allowed = policy
            .voice
            .as_ref()
            .ok_or_else(|| refuse("the sidecar's access_tokens allow no voice grant".into()))?;
        let mut payload = serde_json::Map::new();
        if voice.incoming_allow {
            if !allowed.incoming {
                return Err(refuse(
                    "incoming calls are not allowed (access_tokens.voice.incoming)".into(),
                ));
            }
            payload.insert("incoming".into(), serde_json::json!({ "allow": true }));
        }
        if let Some(app) = &voice.outgoing_application_sid {
            if !allowed.outgoing_application_sids.contains(app) {
                return Err(refuse(format!(
                    "outgoing application {app:?} is not in access_tokens.voice.outgoing_application_sids"
                )));
            }
            payload.insert(
                "outgoing".into(),
                serde_json::json!({ "application_sid": app }),
            );
        }
        grants.insert("voice".into(), payload.into());
        names.push("voice");
    }
    if let Some(video) = &request.grants.video {
        let refuse = |what: String| TokenRefusal::Grant {
            grant: "video",
            what,
        };
        let rooms = policy
            .video
            .as_ref()
            .ok_or_else(|| refuse("the sidecar's access_tokens allow no video grant".into()))?;
        let mut payload = serde_json::Map::new();
        match &video.room {
            Some(room) if rooms.iter().any(|g| glob(g, room)) => {
                payload.insert("room".into(), room.as_str().into());
            }
            Some(room) => {
                return Err(refuse(format!(
                    "room {room:?} matches none of access_tokens.video.rooms"
                )))
            }
            // Any room: only when the policy allows any.
            None if rooms.iter().any(|g| g == "*") => {}
            None => {
                return Err(refuse(
                    "a grant for any room needs access_tokens.video.rooms = [\"*\"]".into(),
                ))
            }
        }
        grants.insert("video".into(), payload.into());
        names.push("video");
    }
    for (name, key, asked, allowed) in [
        ("chat", "chat", &request.grants.chat, &policy.chat),
        ("sync", "data_sync", &request.grants.sync, &policy.sync),
    ] {
        let Some(asked) = asked else { continue };
        let sids = allowed.as_ref().ok_or_else(|| TokenRefusal::Grant {
            grant: name,
            what: format!("the sidecar's access_tokens allow no {name} grant"),
        })?;
        if !sids.contains(&asked.service_sid) {
            return Err(TokenRefusal::Grant {
                grant: name,
                what: format!(
                    "service {:?} is not in access_tokens.{name}.service_sids",
                    asked.service_sid
                ),
            });
        }
        grants.insert(
            key.into(),
            serde_json::json!({ "service_sid": asked.service_sid }),
        );
        names.push(name);
    }

    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims {
        jti: format!("{}-{iat}", signer.key_sid),
        grants: grants.into(),
        iss: &signer.key_sid,
        sub: &signer.account_sid,
        iat,
        nbf: iat,
        exp: iat + ttl,
    };
    let token = sign(&claims, &signer.secret);
    Ok(Minted {
        token,
        expires_at: UNIX_EPOCH + Duration::from_secs(iat + ttl),
        grants: names,
    })
}

/// `base64url(header).base64url(claims).base64url(HMAC-SHA256)`.
fn sign(claims: &Claims<'_>, secret: &SecretString) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = Header {
        alg: "HS256",
        cty: "twilio-fpa;v=1",
        typ: "JWT",
    };
    // Serialising plain structs of strings and numbers cannot fail.
    let mut out = b64.encode(serde_json::to_vec(&header).unwrap_or_default());
    out.push('.');
    out.push_str(&b64.encode(serde_json::to_vec(claims).unwrap_or_default()));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let tag = hmac::sign(&key, out.as_bytes());
    out.push('.');
    out.push_str(&b64.encode(tag.as_ref()));
    out
}

/// RFC 3339 (UTC, seconds) for `expires_at`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VoiceTokenPolicy;

    fn policy() -> AccessTokenPolicy {
        AccessTokenPolicy {
            account: None,
            max_ttl: Duration::from_secs(3600),
            identities: vec!["user-*".into()],
            voice: Some(VoiceTokenPolicy {
                outgoing_application_sids: vec!["AP00000000000000000000000000000001".into()],
                incoming: true,
            }),
            video: Some(vec!["room-*".into()]),
            chat: Some(vec!["IS00000000000000000000000000000001".into()]),
            sync: None,
        }
    }

    fn signer() -> Signer {
        Signer {
            key_sid: "SK00000000000000000000000000000001".into(),
            account_sid: "AC00000000000000000000000000000001".into(),
            secret: SecretString::from("token-signing-secret".to_string()),
        }
    }

    fn request(json: &str) -> TokenRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_token_carries_exactly_the_claims_and_grants_asked_for() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let m = mint(
            &policy(),
            &request(r#"{"identity": "user-1", "ttl": 600, "grants": {"voice": {"outgoing_application_sid": "AP00000000000000000000000000000001", "incoming_allow": true}, "video": {"room": "room-7"}, "chat": {"service_sid": "IS00000000000000000000000000000001"}}}"#),
            &signer(),
            now,
        )
        .unwrap();
        let parts: Vec<&str> = m.token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "HS256", "cty": "twilio-fpa;v=1", "typ": "JWT"})
        );
        assert_eq!(
            claims,
            serde_json::json!({
                "jti": "SK00000000000000000000000000000001-1800000000",
                "iss": "SK00000000000000000000000000000001",
                "sub": "AC00000000000000000000000000000001",
                "iat": 1800000000u64, "nbf": 1800000000u64, "exp": 1800000600u64,
                "grants": {
                    "identity": "user-1",
                    "voice": {"incoming": {"allow": true}, "outgoing": {"application_sid": "AP00000000000000000000000000000001"}},
                    "video": {"room": "room-7"},
                    "chat": {"service_sid": "IS00000000000000000000000000000001"},
                }
            })
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"token-signing-secret");
        hmac::verify(
            &key,
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap(),
        )
        .unwrap();
        assert_eq!(rfc3339(m.expires_at), "2027-01-15T08:10:00Z");
    }

    #[test]
    fn refusals_name_what() {
        let now = SystemTime::now();
        let refused = |json: &str| mint(&policy(), &request(json), &signer(), now).unwrap_err();
        assert_eq!(
            refused(r#"{"identity": "user-1", "ttl": 3601}"#).reason(),
            "ttl"
        );
        assert_eq!(
            refused(r#"{"identity": "user-1", "ttl": 0}"#).reason(),
            "ttl"
        );
        assert_eq!(refused(r#"{"identity": "admin"}"#).reason(), "identity");
        assert_eq!(refused(r#"{"identity": ""}"#).reason(), "identity");
        assert_eq!(refused(r#"{"identity": "user-1", "grants": {"voice": {"outgoing_application_sid": "AP99999999999999999999999999999999"}}}"#).reason(), "voice");
        assert_eq!(
            refused(r#"{"identity": "user-1", "grants": {"video": {"room": "lobby"}}}"#).reason(),
            "video"
        );
        assert_eq!(
            refused(r#"{"identity": "user-1", "grants": {"video": {}}}"#).reason(),
            "video"
        );
        assert_eq!(
            refused(r#"{"identity": "user-1", "grants": {"chat": {"service_sid": "IS2"}}}"#)
                .reason(),
            "chat"
        );
        assert_eq!(refused(r#"{"identity": "user-1", "grants": {"sync": {"service_sid": "IS00000000000000000000000000000001"}}}"#).reason(), "sync");
        let mut no_incoming = policy();
        no_incoming.voice.as_mut().unwrap().incoming = false;
        let e = mint(
            &no_incoming,
            &request(r#"{"identity": "user-1", "grants": {"voice": {"incoming_allow": true}}}"#),
            &signer(),
            now,
        )
        .unwrap_err();
        assert!(e.to_string().contains("incoming"), "{e}");
    }
}
