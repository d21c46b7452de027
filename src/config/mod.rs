//! The config file: TOML in, a typed [`Config`] out, with every problem reported at once.
//!
//! This module only reads and checks the file's own content; reading secrets, loading the CA
//! file and compiling the policy happen when a [`crate::control::state::State`] is built from it, so
//! that `validate`, startup and reload share one path. Relative paths are resolved against the
//! config file's directory.

pub mod hosts;
pub mod reader;
pub mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::credentials::oauth::OAuthSettings;
use crate::credentials::oauth::fetcher::{parse_token_url, TWILIO_TOKEN_URL};
use crate::gate::policy::Mode;
use crate::config::hosts::TWILIO_PRODUCT_HOSTS;
use reader::{Diagnostic, Diagnostics, Section};
pub use secret::SecretSource;

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// The whole config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from, when it came from a file.
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    /// `listen.unix`: also serve apps on this unix socket.
    pub unix: Option<UnixListen>,
    /// `listen.workers`: threads serving the proxy listeners, one runtime each (default: one
    /// per CPU).
    pub workers: usize,
    pub admin: SocketAddr,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    pub policy: PolicyConfig,
    /// `[oauth]`: token cache tunables for oauth2 accounts.
    pub oauth: OAuthSettings,
    /// `[reload]`: file watching.
    pub reload: ReloadConfig,
    /// `[limits]`: bounds on what one request or client may take.
    pub limits: Limits,
}

/// `listen.unix` and `listen.unix_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    /// File mode of the socket, e.g. `0o660`.
    pub mode: u32,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// From request received to response head sent, everything included.
    pub request_timeout: Duration,
    /// A client must send its complete request head within this.
    pub header_read_timeout: Duration,
    /// Larger request bodies get 413 and never reach Twilio.
    pub max_request_body: u64,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Requests handled at once; beyond it, 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_request_body: 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_concurrent_requests: 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// `[reload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    /// Reload when the config file or a file it references changes.
    pub watch: bool,
    /// Quiet period after the last change before reloading, so a burst of writes (an editor's
    /// temp file and rename, Kubernetes' `..data` swap) is one reload.
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Duration::from_millis(250),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub default_host: String,
    pub allowed_hosts: Vec<String>,
    /// Send every upstream connection here instead of resolving the Twilio host; TLS still
    /// verifies the Twilio name. For tests and `dev`.
    pub connect_to: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Requests in flight on one HTTP/2 connection before the pool opens another to the host.
    pub http2_max_streams: usize,
}

/// `[[accounts]]`.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub sid: String,
    pub default: bool,
    pub credential: CredentialConfig,
}

/// `credential = { type = … }`.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    /// Basic `SK…:secret`, the production choice.
    ApiKey {
        key_sid: SecretSource,
        secret: SecretSource,
    },
    /// Basic `AC…:token`: full account access, for test and development only.
    AuthToken { token: SecretSource },
    /// OAuth2 client_credentials: bearer tokens fetched, cached and refreshed by the sidecar.
    OAuth2 {
        client_id: SecretSource,
        client_secret: SecretSource,
        token_url: String,
    },
}

impl CredentialConfig {
    /// The `type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::ApiKey { .. } => "api_key",
            CredentialConfig::AuthToken { .. } => "auth_token",
            CredentialConfig::OAuth2 { .. } => "oauth2",
        }
    }

    /// Every source, with its key name.
    pub fn sources(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            CredentialConfig::ApiKey { key_sid, secret } => {
                vec![("key_sid", key_sid), ("secret", secret)]
            }
            CredentialConfig::AuthToken { token } => vec![("token", token)],
            CredentialConfig::OAuth2 {
                client_id,
                client_secret,
                ..
            } => vec![("client_id", client_id), ("client_secret", client_secret)],
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// JSON documents `{"allow": [...], "deny": [...]}` whose rules are added.
    pub files: Vec<PathBuf>,
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<dev>` for built-in configs).
    pub file: String,
    pub problems: Vec<Diagnostic>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: error: {p}", self.file)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn single(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            problems: vec![Diagnostic {
                key: String::new(),
                message: message.into(),
            }],
        }
    }
}

/// Defaults, also used by `dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

impl Config {
    /// Reads and checks `path`. Warnings come back beside the config.
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base, &path.display().to_string())?;
        config.0.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses config text; `file` names it in messages, `base` resolves relative paths.
    pub fn parse(
        text: &str,
        base: &Path,
        file: &str,
    ) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        // Only the message and position: toml's own Display quotes the offending line, which
        // could be an inline secret.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            });
            ConfigError::single(
                file,
                format!("invalid TOML{at}: {}", e.message().trim_end()),
            )
        })?;
        let mut d = Diagnostics::default();
        let config = read_config(&table, base, &mut d);
        match config {
            Some(c) if d.errors.is_empty() => Ok((c, d.warnings)),
            _ => Err(ConfigError {
                file: file.to_string(),
                problems: d.errors,
            }),
        }
    }

    /// Every file whose change should trigger a reload: the config, secret and policy files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        for account in &self.accounts {
            for (_, source) in account.credential.sources() {
                files.extend(source.file().map(Path::to_path_buf));
            }
        }
        files.extend(self.upstream.ca_file.iter().cloned());
        files.extend(self.policy.files.iter().cloned());
        files
    }
}

fn read_config(table: &toml::Table, base: &Path, d: &mut Diagnostics) -> Option<Config> {
    let mut root = Section::new("", table);
    let (listen, unix, workers) = read_listen(&mut root, d, base);
    let admin = read_address(&mut root, d, "admin", DEFAULT_ADMIN);
    let upstream = read_upstream(&mut root, d, base);
    let accounts = read_accounts(&mut root, d, base);
    let policy = read_policy(&mut root, d, base);
    let oauth = read_oauth(&mut root, d);
    let reload = read_reload(&mut root, d);
    let limits = read_limits(&mut root, d);
    root.finish(d);

    let (listen, admin) = (listen?, admin?);
    if listen == admin && listen.port() != 0 {
        d.error("admin.address", "must differ from listen.address");
    }
    for (key, addr) in [("listen.address", listen), ("admin.address", admin)] {
        if !addr.ip().is_loopback() {
            d.warn(
                key,
                format!("{addr} is reachable from other hosts; restrict who can reach it (NetworkPolicy, firewall)"),
            );
        }
    }
    Some(Config {
        path: None,
        listen,
        unix,
        workers,
        admin,
        upstream: upstream?,
        accounts: accounts?,
        policy: policy?,
        oauth: oauth?,
        reload: reload?,
        limits: limits?,
    })
}

/// `[limits]`: every key optional.
fn read_limits(root: &mut Section<'_>, d: &mut Diagnostics) -> Option<Limits> {
    optional_table(root, d, "limits", Limits::default(), |s, d, out| {
        for (key, slot) in [
            ("request_timeout", &mut out.request_timeout),
            ("header_read_timeout", &mut out.header_read_timeout),
            ("drain_timeout", &mut out.drain_timeout),
        ] {
            if let Some(v) = s.duration(d, key) {
                *slot = v;
            }
        }
        if let Some(n) = s.count(d, "max_request_body") {
            out.max_request_body = n;
        }
        if let Some(n) = s.count(d, "max_header_bytes") {
            if n < 8192 {
                d.error(s.key("max_header_bytes"), "must be at least 8192");
            }
            out.max_header_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = s.count(d, "max_concurrent_requests") {
            if n == 0 {
                d.error(s.key("max_concurrent_requests"), "must be at least 1");
            }
            out.max_concurrent_requests = usize::try_from(n).unwrap_or(usize::MAX);
        }
    })
}

/// Reads an optional table onto defaults: absent, the defaults stand; present, `read` fills
/// it in. `None` when the table, or any key in it, is wrong (every problem is reported).
fn optional_table<'a, T>(
    root: &mut Section<'a>,
    d: &mut Diagnostics,
    key: &'a str,
    mut out: T,
    read: impl FnOnce(&mut Section<'a>, &mut Diagnostics, &mut T),
) -> Option<T> {
    let Some(mut s) = root.table(d, key) else {
        return if root.get(key).is_some() {
            None
        } else {
            Some(out)
        };
    };
    let before = d.errors.len();
    read(&mut s, d, &mut out);
    s.finish(d);
    (d.errors.len() == before).then_some(out)
}

/// The default for `listen.workers`: one per CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `[listen]`: `address`, `workers`, and optionally `unix` with `unix_mode`.
fn read_listen(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> (Option<SocketAddr>, Option<UnixListen>, usize) {
    let fallback = DEFAULT_LISTEN.parse().ok();
    let Some(mut s) = root.table(d, "listen") else {
        let address = if root.get("listen").is_some() {
            None
        } else {
            fallback
        };
        return (address, None, default_workers());
    };
    let workers = match s.count(d, "workers") {
        Some(0) => {
            d.error(s.key("workers"), "must be at least 1");
            1
        }
        Some(n) => usize::try_from(n).unwrap_or(1024).min(1024),
        None => default_workers(),
    };
    let address = match s.string(d, "address") {
        Some(a) => parse_addr(d, s.key("address"), a),
        None => fallback,
    };
    let mode = match s.string(d, "unix_mode") {
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => Some(mode),
            _ => {
                d.error(
                    s.key("unix_mode"),
                    format!("expected an octal file mode such as \"0660\", found {m:?}"),
                );
                None
            }
        },
        None => Some(0o660),
    };
    let unix = s.string(d, "unix").and_then(|p| {
        if p.is_empty() {
            d.error(s.key("unix"), "must be a socket path");
            return None;
        }
        mode.map(|mode| UnixListen {
            path: base.join(p),
            mode,
        })
    });
    s.finish(d);
    (address, unix, workers)
}

/// `[reload]`: every key optional.
fn read_reload(root: &mut Section<'_>, d: &mut Diagnostics) -> Option<ReloadConfig> {
    optional_table(root, d, "reload", ReloadConfig::default(), |s, d, out| {
        if let Some(w) = s.boolean(d, "watch") {
            out.watch = w;
        }
        if let Some(v) = s.duration(d, "debounce") {
            out.debounce = v;
        }
    })
}

/// `[oauth]`: every key optional.
fn read_oauth(root: &mut Section<'_>, d: &mut Diagnostics) -> Option<OAuthSettings> {
    optional_table(root, d, "oauth", OAuthSettings::default(), |s, d, out| {
        for (key, slot) in [
            ("token_timeout", &mut out.token_timeout),
            ("wait_for_token", &mut out.wait_for_token),
            ("expiry_margin", &mut out.expiry_margin),
            ("backoff_base", &mut out.backoff_base),
            ("backoff_max", &mut out.backoff_max),
            ("fallback_lifetime", &mut out.fallback_lifetime),
        ] {
            if let Some(v) = s.duration(d, key) {
                *slot = v;
            }
        }
        if let Some(n) = s.count(d, "replay_body_limit") {
            out.replay_body_limit = n;
        }
        if out.backoff_base > out.backoff_max {
            d.error(s.key("backoff_base"), "must not exceed oauth.backoff_max");
        }
    })
}

/// `[listen]` / `[admin]`: `address = "HOST:PORT"`.
fn read_address(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    key: &'static str,
    default: &str,
) -> Option<SocketAddr> {
    let fallback = default.parse().ok();
    let Some(mut section) = root.table(d, key) else {
        return if root.get(key).is_some() {
            None
        } else {
            fallback
        };
    };
    let out = match section.string(d, "address") {
        Some(s) => parse_addr(d, section.key("address"), s),
        None => fallback,
    };
    section.finish(d);
    out
}

fn parse_addr(d: &mut Diagnostics, key: String, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(
                key,
                format!(
                    "expected an IP:PORT socket address such as \"127.0.0.1:8080\", found {s:?}"
                ),
            );
            None
        }
    }
}

fn read_upstream(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> Option<UpstreamConfig> {
    let out = UpstreamConfig {
        default_host: "api.twilio.com".to_string(),
        allowed_hosts: TWILIO_PRODUCT_HOSTS.iter().map(|h| h.to_string()).collect(),
        connect_to: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle_per_host: 64,
        // RFC 9113 asks servers to allow at least 100 concurrent streams.
        http2_max_streams: 100,
    };
    optional_table(root, d, "upstream", out, |s, d, out| {
        if let Some(h) = s.string(d, "default_host") {
            out.default_host = h.to_ascii_lowercase();
        }
        if let Some(hosts) = s.strings(d, "allowed_hosts") {
            if hosts.is_empty() {
                d.error(s.key("allowed_hosts"), "must name at least one Twilio host");
            }
            out.allowed_hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        }
        if let Err(e) = crate::gate::route::Hosts::new(out.allowed_hosts.iter().map(String::as_str)) {
            d.error(s.key("allowed_hosts"), e);
        }
        if !out.allowed_hosts.contains(&out.default_host) {
            d.error(
                s.key("default_host"),
                format!("{:?} is not in upstream.allowed_hosts", out.default_host),
            );
        }
        if let Some(a) = s.string(d, "connect_to") {
            out.connect_to = parse_addr(d, s.key("connect_to"), a);
        }
        if let Some(p) = s.string(d, "ca_file") {
            out.ca_file = Some(base.join(p));
        }
        for (key, slot) in [
            ("connect_timeout", &mut out.connect_timeout),
            ("request_timeout", &mut out.request_timeout),
            ("pool_idle_timeout", &mut out.pool_idle_timeout),
        ] {
            if let Some(v) = s.duration(d, key) {
                *slot = v;
            }
        }
        if let Some(n) = s.count(d, "pool_max_idle_per_host") {
            out.pool_max_idle_per_host = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = s.count(d, "http2_max_streams") {
            if n == 0 {
                d.error(
                    s.key("http2_max_streams"),
                    "must be at least 1 (100 suits servers that follow RFC 9113)",
                );
            }
            out.http2_max_streams = usize::try_from(n).unwrap_or(usize::MAX);
        }
    })
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// True for `AC` or `SK` followed by 32 hex digits.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_accounts(
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
        if let Some(sid) = sid {
            if !is_sid(sid, "AC") {
                d.error(
                    s.key("sid"),
                    format!("{sid:?} is not an account SID (AC followed by 32 hex digits)"),
                );
            } else if accounts.iter().any(|a: &AccountConfig| a.sid == sid) {
                d.error(s.key("sid"), format!("account {sid} is configured twice"));
            }
        }
        let default = s.boolean(d, "default").unwrap_or(false);
        let credential = read_credential(&mut s, d, base);
        s.finish(d);
        if let (Some(sid), Some(credential)) = (sid, credential) {
            accounts.push(AccountConfig {
                sid: sid.to_string(),
                default,
                credential,
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
    (d.errors.len() == before).then_some(accounts)
}

fn read_credential(
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
                        d.error(s.key("token_url"), e);
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

fn read_policy(root: &mut Section<'_>, d: &mut Diagnostics, base: &Path) -> Option<PolicyConfig> {
    let Some(mut s) = root.table(d, "policy") else {
        if root.get("policy").is_none() {
            d.error(
                "policy",
                "missing: without a [policy] every request is denied",
            );
        }
        return None;
    };
    let before = d.errors.len();
    let mode = match s.string(d, "mode") {
        None | Some("enforce") => Mode::Enforce,
        Some("audit") => Mode::Audit,
        Some(other) => {
            d.error(
                s.key("mode"),
                format!("expected \"enforce\" or \"audit\", found {other:?}"),
            );
            Mode::Enforce
        }
    };
    let allow = s.strings(d, "allow").unwrap_or_default();
    let deny = s.strings(d, "deny").unwrap_or_default();
    let files: Vec<PathBuf> = s
        .strings(d, "files")
        .unwrap_or_default()
        .into_iter()
        .map(|f| base.join(f))
        .collect();
    if allow.is_empty() && files.is_empty() {
        d.warn(
            s.key("allow"),
            "no allow rules: every request will be denied",
        );
    }
    s.finish(d);
    (d.errors.len() == before).then(|| PolicyConfig {
        mode,
        allow: allow.into_iter().map(String::from).collect(),
        deny: deny.into_iter().map(String::from).collect(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_error_at_once_naming_the_key() {
        let err = parse(
            r#"
            bogus = 1
            [listen]
            address = "nope"
            [upstream]
            default_host = "evil.example"
            request_timeout = "soon"
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
}
