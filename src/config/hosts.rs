//! The Twilio product hosts: the default upstream allowlist, and the test for "does this name a
//! Twilio host at all", which routing uses to tell a Twilio target from the sidecar's own address.
//!
//! The list is the set of `servers` in Twilio's official OpenAPI specs (twilio-oai), 38 hosts.

/// Every product host named by Twilio's OpenAPI specs. The default for `upstream.allowed_hosts`.
pub const TWILIO_PRODUCT_HOSTS: [&str; 38] = [
    "accounts.twilio.com",
    "api.twilio.com",
    "assistants.twilio.com",
    "bulkexports.twilio.com",
    "chat.twilio.com",
    "content.twilio.com",
    "conversations.twilio.com",
    "events.twilio.com",
    "flex-api.twilio.com",
    "frontline-api.twilio.com",
    "iam.twilio.com",
    "insights.twilio.com",
    "intelligence.twilio.com",
    "ip-messaging.twilio.com",
    "knowledge.twilio.com",
    "lookups.twilio.com",
    "marketplace.twilio.com",
    "messaging.twilio.com",
    "monitor.twilio.com",
    "notify.twilio.com",
    "numbers.twilio.com",
    "oauth.twilio.com",
    "preview-iam.twilio.com",
    "preview.twilio.com",
    "pricing.twilio.com",
    "proxy.twilio.com",
    "routes.twilio.com",
    "serverless.twilio.com",
    "studio.twilio.com",
    "supersim.twilio.com",
    "sync.twilio.com",
    "taskrouter.twilio.com",
    "trunking.twilio.com",
    "trusthub.twilio.com",
    "verify.twilio.com",
    "video.twilio.com",
    "voice.twilio.com",
    "wireless.twilio.com",
];

/// The registrable domain every Twilio REST host lives under.
pub const TWILIO_DOMAIN: &str = "twilio.com";

/// True when `host` (already without a port) is `twilio.com` or a name under it, compared
/// ASCII case-insensitively. A trailing dot is not accepted here: callers refuse it separately.
pub fn is_twilio_name(host: &str) -> bool {
    let suffix = TWILIO_DOMAIN.len();
    if host.len() == suffix {
        return host.eq_ignore_ascii_case(TWILIO_DOMAIN);
    }
    host.len() > suffix + 1
        && host.as_bytes()[host.len() - suffix - 1] == b'.'
        && host[host.len() - suffix..].eq_ignore_ascii_case(TWILIO_DOMAIN)
}

/// True when `name` (a Host header's host, port removed) is this sidecar's own: an IP
/// address (bracketed or not), `localhost`, or one of `names` (`listen.names`). A
/// DNS-rebinding page reaches a loopback listener under a name of its own, never these.
pub fn is_local_name(name: &str, names: &[String]) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// True when `host` is a syntactically valid DNS name made of letters, digits, `-` and `.`,
/// with no empty label. Used to validate configured host names.
pub fn is_valid_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Why `upstream.allowed_hosts` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    #[error("{0:?} is not a Twilio host name (a DNS name under twilio.com)")]
    NotTwilio(String),
    #[error("{0} allowed hosts is too many; list at most 65535")]
    TooMany(usize),
}

/// Checks an allowlist: every name must be a DNS name under twilio.com. Returns the names
/// lower-cased, duplicates dropped, in their first order.
pub fn check_allowed_hosts<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, HostNameError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if !is_valid_dns_name(&lower) || !is_twilio_name(&lower) {
            return Err(HostNameError::NotTwilio(name.to_string()));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    if out.len() > usize::from(u16::MAX) {
        return Err(HostNameError::TooMany(out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_names() {
        assert!(is_twilio_name("api.twilio.com"));
        assert!(is_twilio_name("API.Twilio.COM"));
        assert!(is_twilio_name("api.dublin.ie1.twilio.com"));
        assert!(is_twilio_name("twilio.com"));
        assert!(!is_twilio_name("api.twilio.com.evil.example"));
        assert!(!is_twilio_name("eviltwilio.com"));
        assert!(!is_twilio_name("api.twilio.com."));
        assert!(!is_twilio_name(".twilio.com"));
    }

    #[test]
    fn product_hosts_are_valid_twilio_names() {
        for h in TWILIO_PRODUCT_HOSTS {
            assert!(is_twilio_name(h) && is_valid_dns_name(h), "{h}");
        }
    }
}
