//! Config parsing: defaults, every error at once, warnings, durations.

use super::*;
use std::time::Duration;

const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn parse(text: &str) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    Config::parse(text, Path::new("/etc/ts"), "test.toml")
}

#[test]
fn minimal_config_gets_defaults() {
    let (c, warnings) = parse(&format!(
        r#"
        [[accounts]]
        sid = "{SID}"
        credential = {{ type = "api_key", key_sid = {{ env = "K" }}, secret = {{ file = "secret" }} }}
        [policy]
        allow = ["/2010-04-01/Accounts/{{AccountSid}}/Messages*"]
        "#
    ))
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(c.upstream.allowed_hosts.len(), 38);
    assert!(c.accounts[0].default);
    match &c.accounts[0].credential {
        CredentialConfig::ApiKey { secret, .. } => {
            assert_eq!(secret.file(), Some(Path::new("/etc/ts/secret")))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_idle_cap_follows_the_concurrency_limit_unless_set() {
    let config = |extra: &str| {
        parse(&format!(
            r#"
            {extra}
            [[accounts]]
            sid = "{SID}"
            credential = {{ type = "api_key", key_sid = {{ env = "K" }}, secret = {{ file = "secret" }} }}
            [policy]
            allow = ["/2010-04-01/Accounts/{{AccountSid}}/Messages*"]
            "#
        ))
        .unwrap()
        .0
    };
    // As many idle connections as requests can be in flight: a burst never closes what the
    // next one needs.
    assert_eq!(config("").upstream.pool_max_idle_per_host, 1024);
    let c = config("[limits]\nmax_concurrent_requests = 300");
    assert_eq!(c.upstream.pool_max_idle_per_host, 300);
    let c =
        config("[upstream]\npool_max_idle_per_host = 8\n[limits]\nmax_concurrent_requests = 300");
    assert_eq!(c.upstream.pool_max_idle_per_host, 8);
}

#[test]
fn every_error_at_once_naming_the_key() {
    let err = parse(
        r#"
        bogus = 1
        [listen]
        address = "nope"
        [upstream]
        default_host = "evil.example"
        request_timeout = "soon"
        connect_timeout = "3000000000000000h"
        http2_max_streams = 0
        colour = "blue"
        [[accounts]]
        sid = "AC1"
        credential = { type = "oauth3" }
        [[accounts]]
        credential = { type = "api_key", key_sid = "SKnope", secret = { file = "a", env = "B" } }
        [policy]
        mode = "strict"
        allow = [1]
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "test.toml: error: bogus: unknown key",
        "listen.address: expected an IP:PORT",
        "upstream.default_host: \"evil.example\" is not in upstream.allowed_hosts",
        "upstream.request_timeout: expected a positive duration",
        "upstream.connect_timeout: \"3000000000000000h\" is more than 876000h (100 years)",
        "upstream.http2_max_streams: must be at least 1",
        "upstream.colour: unknown key",
        "accounts[0].sid: \"AC1\" is not an account SID",
        "accounts[0].credential.type: unknown credential type \"oauth3\"",
        "accounts[1].sid: missing",
        "accounts[1].credential.key_sid: not an API key SID",
        "accounts[1].credential.secret: give either file or env, not both",
        "policy.mode: expected \"enforce\" or \"audit\"",
        "policy.allow[0]: expected a string",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn warnings_for_inline_secrets_and_auth_tokens() {
    let (_, warnings) = parse(&format!(
        r#"
        [listen]
        address = "0.0.0.0:8080"
        [[accounts]]
        sid = "{SID}"
        credential = {{ type = "auth_token", token = "abc" }}
        [policy]
        allow = ["/x"]
        "#
    ))
    .unwrap();
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.iter().any(|w| w.starts_with("listen.address")),
        "{text:?}"
    );
    assert!(text.iter().any(|w| w.contains("inline secret")), "{text:?}");
    assert!(text.iter().any(|w| w.contains("auth_token")), "{text:?}");
}

#[test]
fn syntax_errors_give_a_position_but_never_echo_the_line() {
    let err =
        parse("[upstream]\ndefault_host = \"api.twilio.com\"\nsecret = \"hunter2").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("invalid TOML at line 3"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("s"), None);
}

/// `accounts[2].credential.key_sid.file` → `accounts[].credential.key_sid.<source>`: one
/// entry per key, whatever the array index, and a secret's `file`/`env` forms as one.
fn normalized(key: &str) -> String {
    let mut out = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '[' {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        }
    }
    for form in [".file", ".env"] {
        if let Some(stripped) = out.strip_suffix(form) {
            out = format!("{stripped}.<source>");
        }
    }
    // A client's access_tokens table has the same keys as [access_tokens], shown there.
    if let Some(inner) = out.strip_prefix("clients[].access_tokens.") {
        return format!("access_tokens.{inner}");
    }
    out
}

/// The keys a config file shows: set ones, and ones commented out as `# key = value` under
/// their table.
fn shown_keys(text: &str) -> std::collections::BTreeSet<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(normalized(&key));
                    walk(&key, v, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items.iter().filter(|i| i.is_table()) {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(
        "",
        &toml::Value::Table(text.parse::<toml::Table>().unwrap()),
        &mut out,
    );
    let mut table = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = format!("{t}[]");
        } else if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = t.to_string();
        } else if let Some(commented) = line.strip_prefix('#') {
            let commented = commented.trim();
            if let Some((key, _)) = commented.split_once(" = ") {
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert(format!("{table}.{key}"));
                }
            }
        }
    }
    out
}

#[test]
fn the_example_config_shows_every_key_the_parser_reads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let read = crate::config::reader::queried::during(|| {
        Config::parse(&text, path.parent().unwrap(), "sidecar.toml").unwrap();
    });
    let read: std::collections::BTreeSet<String> = read.iter().map(|k| normalized(k)).collect();
    let shown = shown_keys(&text);
    let missing: Vec<_> = read.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "config/sidecar.toml does not show {missing:?}"
    );
    // And nothing it shows (set or commented out) is a key the parser does not know.
    let unknown: Vec<_> = shown.difference(&read).collect();
    assert!(
        unknown.is_empty(),
        "config/sidecar.toml shows unknown keys {unknown:?}"
    );
}

fn one_account(
    account_extra: &str,
    webhooks: &str,
) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    parse(&format!(
        r#"
        [[accounts]]
        sid = "{SID}"
        credential = {{ type = "api_key", key_sid = {{ env = "K" }}, secret = {{ file = "secret" }} }}
        {account_extra}
        [policy]
        allow = ["/2010-04-01/Accounts/{{AccountSid}}/Messages*"]
        {webhooks}
        "#
    ))
}

#[test]
fn webhooks_read_with_defaults_and_two_tokens_while_rotating() {
    let (c, warnings) = one_account(
        r#"webhook_token = [{ file = "old" }, { env = "NEW" }]"#,
        r#"[webhooks]
        listen = "0.0.0.0:8081"
        forward_to = "http://127.0.0.1:3000"
        public_url = "https://hooks.example.com/twilio/""#,
    )
    .unwrap();
    let w = c.webhooks.unwrap();
    assert_eq!(w.max_body, 1024 * 1024);
    assert_eq!(w.timeout, Duration::from_secs(15));
    assert_eq!(w.max_concurrent, 256);
    assert_eq!(
        w.public_url.without_port,
        "https://hooks.example.com/twilio"
    );
    assert_eq!(
        w.public_url.with_port,
        "https://hooks.example.com:443/twilio"
    );
    assert_eq!(c.accounts[0].webhook_tokens.len(), 2);
    assert_eq!(
        c.accounts[0].webhook_tokens[0].file(),
        Some(Path::new("/etc/ts/old"))
    );
    // 0.0.0.0 is the point of this listener: no warning for it.
    assert!(
        warnings.iter().all(|w| !w.key.starts_with("webhooks")),
        "{warnings:?}"
    );
    assert_eq!(parse_size("64KiB"), Some(65536));
    assert_eq!(parse_size("2MiB"), Some(2 << 20));
    assert_eq!(parse_size("12"), Some(12));
    assert_eq!(parse_size("1MB"), None);
}

#[test]
fn webhook_mistakes_are_named() {
    let err = one_account(
        r#"webhook_token = [{ file = "a" }, { file = "b" }, { file = "c" }]"#,
        r#"[webhooks]
        listen = "0.0.0.0:8081"
        forward_to = "https://app.internal/hooks"
        public_url = "hooks.example.com?x=1"
        max_body = "lots""#,
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "accounts[0].webhook_token: list one token, or two while rotating (found 3)",
        "webhooks.forward_to",
        "must be http://host:port",
        "webhooks.public_url",
        "webhooks.max_body",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    let err = one_account(
        "",
        r#"[webhooks]
        listen = "0.0.0.0:8081"
        forward_to = "http://127.0.0.1:3000"
        public_url = "https://hooks.example.com""#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no account has a webhook_token"), "{err}");
    let (_, warnings) = one_account(r#"webhook_token = { file = "t" }"#, "").unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("no [webhooks] table")),
        "{warnings:?}"
    );
}

#[test]
fn pkcv_needs_a_cr_sid_a_key_and_an_api_key_credential() {
    let (c, _) = one_account(
        r#"pkcv = { credential_sid = "CR0123456789abcdef0123456789abcdef", private_key = { file = "pkcv.pem" } }"#,
        "",
    )
    .unwrap();
    let pkcv = c.accounts[0].pkcv.as_ref().unwrap();
    assert_eq!(pkcv.private_key.file(), Some(Path::new("/etc/ts/pkcv.pem")));
    let err = parse(&format!(
        r#"
        [[accounts]]
        sid = "{SID}"
        credential = {{ type = "auth_token", token = {{ env = "T" }} }}
        pkcv = {{ credential_sid = "CRnope" }}
        [policy]
        allow = ["/2010-04-01/Accounts/{{AccountSid}}/Messages*"]
        "#
    ))
    .unwrap_err()
    .to_string();
    for needle in [
        "accounts[0].pkcv.credential_sid: \"CRnope\" is not a public key credential SID",
        "accounts[0].pkcv.private_key: missing",
        "accounts[0].pkcv: needs an api_key credential",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
}
