//! `[[accounts]]`: each account's SID, credential (API key, Auth Token, OAuth2 client), PKCV
//! key and webhook tokens.

use super::*;

pub(super) fn read_accounts(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> Option<Vec<AccountConfig>> {
    let Some(sections) = root.tables(d, "accounts") else {
        if root.get("accounts").is_none() {
            d.error("accounts", "missing: add at least one [[accounts]] table");
        }
        return None;
    };
    if sections.is_empty() {
        d.error("accounts", "add at least one [[accounts]] table");
    }
    let before = d.errors.len();
    let mut accounts = Vec::new();
    for mut s in sections {
        let sid = s.string(d, "sid");
        if sid.is_none() && s.get("sid").is_none() {
            d.error(
                s.key("sid"),
                "missing (the account SID, AC followed by 32 hex digits)",
            );
        }
        let mut usable = sid.is_some();
        if let Some(sid) = sid {
            if !is_sid(sid, "AC") {
                d.error(
                    s.key("sid"),
                    format!("{sid:?} is not an account SID (AC followed by 32 hex digits)"),
                );
                usable = false;
            } else if accounts.iter().any(|a: &AccountConfig| a.sid == sid) {
                d.error(s.key("sid"), format!("account {sid} is configured twice"));
                usable = false;
            }
        }
        let default = s.boolean(d, "default").unwrap_or(false);
        let credential = read_credential(&mut s, d, base);
        let webhook_tokens = read_webhook_tokens(&mut s, d, base);
        let pkcv = read_pkcv(&mut s, d, base, credential.as_ref());
        let max_concurrent = s.count(d, "max_concurrent");
        if max_concurrent == Some(0) {
            d.error(
                s.key("max_concurrent"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        s.finish(d);
        if let (Some(sid), Some(credential), Some(webhook_tokens), Some(pkcv), true) =
            (sid, credential, webhook_tokens, pkcv, usable)
        {
            accounts.push(AccountConfig {
                sid: sid.to_string(),
                default,
                credential,
                webhook_tokens,
                pkcv,
                max_concurrent: max_concurrent.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            });
        }
    }
    let defaults = accounts.iter().filter(|a| a.default).count();
    if accounts.len() > 1 && defaults != 1 {
        d.error(
            "accounts",
            format!(
                "with several accounts exactly one must have default = true (found {defaults})"
            ),
        );
    }
    if accounts.len() == 1 {
        accounts[0].default = true;
    }
    // With errors, the accounts that did read go on, so the rest of the config (its policy
    // above all) is still checked and every problem is reported at once; the errors keep the
    // config from being used.
    (d.errors.len() == before || !accounts.is_empty()).then_some(accounts)
}

/// `pkcv = { credential_sid, private_key }`, for an api_key account only (the JWT's issuer
/// is the key SID). `Some(None)` when absent.
fn read_pkcv(
    account: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
    credential: Option<&CredentialConfig>,
) -> Option<Option<PkcvConfig>> {
    let Some(mut s) = account.table(d, "pkcv") else {
        return account.get("pkcv").is_none().then_some(None);
    };
    let before = d.errors.len();
    let credential_sid = s.string(d, "credential_sid");
    match credential_sid {
        Some(sid) if !is_sid(sid, "CR") => d.error(
            s.key("credential_sid"),
            format!("{sid:?} is not a public key credential SID (CR followed by 32 hex digits)"),
        ),
        None if s.get("credential_sid").is_none() => d.error(
            s.key("credential_sid"),
            "missing: the CR… SID Twilio gave the public key when you registered it",
        ),
        _ => {}
    }
    let private_key = SecretSource::parse(&mut s, d, "private_key", true, base);
    if let Some(c) = credential.filter(|c| !matches!(c, CredentialConfig::ApiKey { .. })) {
        d.error(
            account.key("pkcv"),
            format!(
                "needs an api_key credential (the validation JWT's issuer is the API key SID); this account uses {}",
                c.kind()
            ),
        );
    }
    s.finish(d);
    match (credential_sid, private_key) {
        (Some(sid), Some(private_key)) if d.errors.len() == before => Some(Some(PkcvConfig {
            credential_sid: sid.to_string(),
            private_key,
        })),
        _ => None,
    }
}

/// `webhook_token`: one source, or a list of one or two while rotating.
fn read_webhook_tokens(
    account: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> Option<Vec<SecretSource>> {
    let Some(value) = account.get("webhook_token") else {
        return Some(Vec::new());
    };
    let Some(list) = value.as_array() else {
        return SecretSource::parse(account, d, "webhook_token", true, base).map(|s| vec![s]);
    };
    let key = account.key("webhook_token");
    if list.is_empty() || list.len() > MAX_WEBHOOK_TOKENS {
        d.error(
            &key,
            format!(
                "list one token, or two while rotating (found {})",
                list.len()
            ),
        );
        return None;
    }
    let before = d.errors.len();
    let mut sources = Vec::new();
    for (i, item) in list.iter().enumerate() {
        // Each entry is read as the only key of a one-entry table, so it gets the same
        // checks and messages as a single source.
        let mut one = toml::Table::new();
        one.insert(i.to_string(), item.clone());
        let mut s = Section::new(key.clone(), &one);
        let index = i.to_string();
        sources.extend(SecretSource::parse(&mut s, d, &index, true, base));
    }
    (d.errors.len() == before).then_some(sources)
}

pub(super) fn read_credential(
    account: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> Option<CredentialConfig> {
    let Some(mut s) = account.table(d, "credential") else {
        if account.get("credential").is_none() {
            d.error(
                account.key("credential"),
                "missing (for example { type = \"api_key\", key_sid = …, secret = { file = … } })",
            );
        }
        return None;
    };
    let kind = s.string(d, "type");
    let out = match kind {
        Some("api_key") => {
            let key_sid = SecretSource::parse(&mut s, d, "key_sid", false, base);
            if let Some(SecretSource::Inline(v)) = &key_sid {
                use secrecy::ExposeSecret;
                if !is_sid(v.expose_secret(), "SK") {
                    d.error(
                        s.key("key_sid"),
                        "not an API key SID (SK followed by 32 hex digits)",
                    );
                }
            }
            let secret = SecretSource::parse(&mut s, d, "secret", true, base);
            match (key_sid, secret) {
                (Some(key_sid), Some(secret)) => Some(CredentialConfig::ApiKey { key_sid, secret }),
                _ => None,
            }
        }
        Some("auth_token") => SecretSource::parse(&mut s, d, "token", true, base)
            .map(|token| CredentialConfig::AuthToken { token }),
        Some("oauth2") => {
            let client_id = SecretSource::parse(&mut s, d, "client_id", false, base);
            let client_secret = SecretSource::parse(&mut s, d, "client_secret", true, base);
            let token_url = match s.string(d, "token_url") {
                Some(url) => match parse_token_url(url) {
                    Ok(_) => Some(url.to_string()),
                    Err(e) => {
                        d.error(s.key("token_url"), e.to_string());
                        None
                    }
                },
                None => Some(TWILIO_TOKEN_URL.to_string()),
            };
            match (client_id, client_secret, token_url) {
                (Some(client_id), Some(client_secret), Some(token_url)) => {
                    Some(CredentialConfig::OAuth2 {
                        client_id,
                        client_secret,
                        token_url,
                    })
                }
                _ => None,
            }
        }
        Some(other) => {
            d.error(
                s.key("type"),
                format!(
                    "unknown credential type {other:?}; expected \"api_key\", \"oauth2\" or \"auth_token\""
                ),
            );
            None
        }
        None => {
            if s.get("type").is_none() {
                d.error(
                    s.key("type"),
                    "missing (\"api_key\", \"oauth2\" or \"auth_token\")",
                );
            }
            None
        }
    };
    if matches!(out, Some(CredentialConfig::AuthToken { .. })) {
        d.warn(
            s.key("type"),
            "auth_token gives full account access; use it for test and development only, an API key in production",
        );
    }
    s.finish(d);
    out
}
