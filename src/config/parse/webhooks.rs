//! `[webhooks]`: the inbound listener, where verified webhooks go and the URL Twilio calls.

use super::*;

/// `[webhooks]`: `listen`, `forward_to` and `public_url` required when the table is there.
pub(super) fn read_webhooks(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    accounts: Option<&[AccountConfig]>,
) -> Option<Option<WebhooksConfig>> {
    let Some(mut s) = root.table(d, "webhooks") else {
        if root.get("webhooks").is_none() {
            if let Some(a) = accounts
                .into_iter()
                .flatten()
                .find(|a| !a.webhook_tokens.is_empty())
            {
                d.warn(
                    format!("accounts.{}.webhook_token", a.sid),
                    "a webhook token is configured but there is no [webhooks] table, so nothing verifies webhooks",
                );
            }
            return Some(None);
        }
        return None;
    };
    let before = d.errors.len();
    let listen = required(
        &mut s,
        d,
        "listen",
        "where Twilio's requests arrive, e.g. \"0.0.0.0:8081\"",
    )
    .and_then(|a| parse_addr(d, s.key("listen"), a));
    let forward_to = required(
        &mut s,
        d,
        "forward_to",
        "the app, e.g. \"http://127.0.0.1:3000\"",
    )
    .and_then(|u| {
        parse_forward_to(u)
            .map_err(|e| d.error(s.key("forward_to"), e))
            .ok()
    });
    let public_url = required(
        &mut s,
        d,
        "public_url",
        "the scheme://host[:port] Twilio calls, e.g. \"https://hooks.example.com\"",
    )
    .and_then(|u| {
        PublicUrl::parse(u)
            .map_err(|e| d.error(s.key("public_url"), e))
            .ok()
    });
    let max_body = s.size(d, "max_body").unwrap_or(1024 * 1024);
    let timeout = s.duration(d, "timeout").unwrap_or(Duration::from_secs(15));
    let max_concurrent = s.count(d, "max_concurrent").unwrap_or(256);
    if max_concurrent == 0 {
        d.error(s.key("max_concurrent"), "must be at least 1");
    }
    if let Some(accounts) = accounts {
        if accounts.iter().all(|a| a.webhook_tokens.is_empty()) {
            d.error(
                "webhooks",
                "no account has a webhook_token: add webhook_token = { file = \"…\" } (the Auth Token Twilio signs with) to the [[accounts]] whose webhooks arrive here",
            );
        } else if let Some(a) = accounts
            .iter()
            .find(|a| a.default && a.webhook_tokens.is_empty())
        {
            d.warn(
                "webhooks",
                format!("the default account {} has no webhook_token: webhooks that name no configured account are refused", a.sid),
            );
        }
    }
    s.finish(d);
    match (listen, forward_to, public_url) {
        (Some(listen), Some(forward_to), Some(public_url)) if d.errors.len() == before => {
            Some(Some(WebhooksConfig {
                listen,
                forward_to,
                public_url,
                max_body,
                timeout,
                max_concurrent: usize::try_from(max_concurrent).unwrap_or(usize::MAX),
            }))
        }
        _ => None,
    }
}
