//! `access_tokens` tables (`[access_tokens]` or a client's): what the sidecar may mint.

use super::*;

/// An `access_tokens` table (`[access_tokens]` or a client's): every key checked. The
/// account's credential must be an API key (Access Tokens are signed with its secret).
pub(super) fn read_access_tokens(
    s: &mut Section<'_>,
    d: &mut Diagnostics,
    configured: Option<&[AccountConfig]>,
) -> Option<AccessTokenPolicy> {
    let before = d.errors.len();
    let account = s.string(d, "account").map(str::to_string);
    if let (Some(sid), Some(accounts)) = (&account, configured) {
        match accounts.iter().find(|a| a.sid == *sid) {
            None => d.error(
                s.key("account"),
                format!("account {sid} is not configured in [[accounts]]"),
            ),
            Some(a) if !matches!(a.credential, CredentialConfig::ApiKey { .. }) => d.error(
                s.key("account"),
                format!("account {sid} must use an api_key credential: Access Tokens are signed with an API key's secret"),
            ),
            Some(_) => {}
        }
    } else if let (None, Some(accounts)) = (&account, configured) {
        if let Some(a) = accounts.iter().find(|a| a.default) {
            if !matches!(a.credential, CredentialConfig::ApiKey { .. }) {
                d.error(
                    s.key("account"),
                    format!("the default account {} does not use an api_key credential: name an account that does (Access Tokens are signed with an API key's secret)", a.sid),
                );
            }
        }
    }
    let max_ttl = s
        .duration(d, "max_ttl")
        .unwrap_or(Duration::from_secs(3600));
    if max_ttl > MAX_ACCESS_TOKEN_TTL {
        d.error(
            s.key("max_ttl"),
            "must be at most 24h, Twilio's longest Access Token lifetime",
        );
    }
    let identities = s.strings(d, "identities").unwrap_or_default();
    if identities.is_empty() {
        d.error(
            s.key("identities"),
            "missing: the identities tokens may be minted for, as globs (\"user-*\"; \"*\" for any)",
        );
    }
    let voice = s.table(d, "voice").map(|mut v| {
        let apps = v
            .strings(d, "outgoing_application_sids")
            .unwrap_or_default();
        for (i, sid) in apps.iter().enumerate() {
            if !is_sid(sid, "AP") {
                d.error(
                    format!("{}[{i}]", v.key("outgoing_application_sids")),
                    format!(
                        "{sid:?} is not a TwiML application SID (AP followed by 32 hex digits)"
                    ),
                );
            }
        }
        let incoming = v.boolean(d, "incoming").unwrap_or(false);
        v.finish(d);
        VoiceTokenPolicy {
            outgoing_application_sids: apps.into_iter().map(String::from).collect(),
            incoming,
        }
    });
    let video = s.table(d, "video").map(|mut v| {
        let rooms = v.strings(d, "rooms").unwrap_or_default();
        v.finish(d);
        rooms.into_iter().map(String::from).collect()
    });
    let mut services = |name: &'static str| {
        s.table(d, name).map(|mut v| {
            let sids = v.strings(d, "service_sids").unwrap_or_default();
            for (i, sid) in sids.iter().enumerate() {
                if !is_sid(sid, "IS") {
                    d.error(
                        format!("{}[{i}]", v.key("service_sids")),
                        format!("{sid:?} is not a service SID (IS followed by 32 hex digits)"),
                    );
                }
            }
            v.finish(d);
            sids.into_iter().map(String::from).collect::<Vec<_>>()
        })
    };
    let chat = services("chat");
    let sync = services("sync");
    if voice.is_none() && video.is_none() && chat.is_none() && sync.is_none() {
        d.warn(
            s.key("voice"),
            "no grant is allowed (voice, video, chat, sync): tokens can carry only an identity",
        );
    }
    s.finish_ref(d);
    (d.errors.len() == before).then(|| AccessTokenPolicy {
        account,
        max_ttl,
        identities: identities.into_iter().map(String::from).collect(),
        voice,
        video,
        chat,
        sync,
    })
}
