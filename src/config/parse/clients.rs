//! `[[clients]]`: each app's id, secret hashes, accounts, policy and access tokens.

use super::*;

/// `[[clients]]`: every key checked, every problem reported.
pub(super) fn read_clients(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
    configured: Option<&[AccountConfig]>,
) -> Option<Vec<ClientConfig>> {
    let Some(sections) = root.tables(d, "clients") else {
        return if root.get("clients").is_some() {
            None
        } else {
            Some(Vec::new())
        };
    };
    let before = d.errors.len();
    let mut clients: Vec<ClientConfig> = Vec::new();
    for mut s in sections {
        let id = s.string(d, "id");
        match id {
            None if s.get("id").is_none() => d.error(
                s.key("id"),
                "missing: the name the app presents as its Basic username",
            ),
            Some(id) if !is_client_id(id) => d.error(
                s.key("id"),
                format!("{id:?} is not a client id ([A-Za-z0-9][A-Za-z0-9_.-], up to 64 characters, not shaped like a Twilio SID)"),
            ),
            Some(id) if clients.iter().any(|c| c.id == id) => {
                d.error(s.key("id"), format!("client {id:?} is configured twice"))
            }
            _ => {}
        }
        let hashes = s.strings(d, "secret_sha256").map(|hashes| {
            if hashes.is_empty() || hashes.len() > MAX_CLIENT_HASHES {
                d.error(
                    s.key("secret_sha256"),
                    format!("give 1 to {MAX_CLIENT_HASHES} hashes (two while a rotation overlaps), found {}", hashes.len()),
                );
            }
            hashes
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    let parsed = parse_sha256_hex(&h.to_ascii_lowercase());
                    if parsed.is_none() {
                        d.error(
                            format!("{}[{i}]", s.key("secret_sha256")),
                            "not a SHA-256 hash (64 hex digits; `twilio-sidecar client-key` prints one)",
                        );
                    }
                    parsed
                })
                .collect::<Vec<_>>()
        });
        let source = if s.get("secret").is_some() {
            SecretSource::parse(&mut s, d, "secret", true, base)
        } else {
            None
        };
        let secret = match (hashes, source) {
            (Some(h), None) => Some(ClientSecret::Hashes(h)),
            (None, Some(src)) => Some(ClientSecret::Source(src)),
            (Some(_), Some(_)) => {
                d.error(
                    s.key("secret"),
                    "give either secret_sha256 or secret, not both",
                );
                None
            }
            (None, None) => {
                d.error(
                    s.key("secret_sha256"),
                    "missing: the SHA-256 of the client's local secret (`twilio-sidecar client-key` makes both), or secret = { file = \"PATH\" }",
                );
                None
            }
        };
        let accounts = s.strings(d, "accounts").map(|list| {
            for (i, sid) in list.iter().enumerate() {
                let key = format!("{}[{i}]", s.key("accounts"));
                if !is_sid(sid, "AC") {
                    d.error(
                        key,
                        format!("{sid:?} is not an account SID (AC followed by 32 hex digits)"),
                    );
                } else if configured.is_some_and(|c| !c.iter().any(|a| a.sid == *sid)) {
                    d.error(
                        key,
                        format!("account {sid} is not configured in [[accounts]]"),
                    );
                }
            }
            list.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        });
        let mode = read_mode(&mut s, d);
        let access_tokens = match s.table(d, "access_tokens") {
            Some(mut t) => read_access_tokens(&mut t, d, configured),
            None => None,
        };
        let allow = read_rules(&mut s, d, "allow");
        let deny = read_rules(&mut s, d, "deny");
        let files = read_files(&mut s, d, base);
        if allow.is_empty() && files.is_empty() {
            d.error(
                s.key("allow"),
                "a client needs allow rules (or files): without them every request it makes is denied",
            );
        }
        s.finish(d);
        if let (Some(id), Some(secret)) = (id, secret) {
            clients.push(ClientConfig {
                id: id.to_string(),
                secret,
                accounts,
                mode,
                allow,
                deny,
                files,
                access_tokens,
            });
        }
    }
    (d.errors.len() == before).then_some(clients)
}
