//! Reading the parsed TOML into the settings types: every key checked, every problem
//! collected with its key path, defaults applied where a key is absent.
//!
//! Here the top level and the small tables (`[listen]`, `[admin]`, `[upstream]`, `[policy]`,
//! `[oauth]`, `[reload]`, `[limits]`, `[intercept]`); the larger ones each in a file of their
//! own: `accounts`, `clients`, `webhooks`, `access_tokens`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::hosts::{check_allowed_hosts, TWILIO_PRODUCT_HOSTS};
use super::reader::{self, Diagnostics, Section};
use super::secret::SecretSource;
use super::settings::*;
use super::{Config, DEFAULT_ADMIN, DEFAULT_LISTEN};

mod access_tokens;
mod accounts;
mod clients;
mod webhooks;

use access_tokens::read_access_tokens;
use accounts::read_accounts;
use clients::read_clients;
use webhooks::read_webhooks;

pub(super) fn read_config(table: &toml::Table, base: &Path, d: &mut Diagnostics) -> Option<Config> {
    let mut root = Section::new("", table);
    let (listen, unix, workers, names) = read_listen(&mut root, d, base);
    let (admin, error_docs_url) = read_admin(&mut root, d);
    let upstream = read_upstream(&mut root, d, base);
    let accounts = read_accounts(&mut root, d, base);
    let policy = read_policy(&mut root, d, base);
    let clients = read_clients(&mut root, d, base, accounts.as_deref());
    let intercept = read_intercept(&mut root, d, base);
    let webhooks = read_webhooks(&mut root, d, accounts.as_deref());
    let access_tokens = match root.table(d, "access_tokens") {
        Some(mut s) => read_access_tokens(&mut s, d, accounts.as_deref()).map(Some),
        None => root.get("access_tokens").is_none().then_some(None),
    };
    let oauth = read_oauth(&mut root, d);
    let reload = read_reload(&mut root, d);
    let limits = read_limits(&mut root, d);
    root.finish(d);

    let (listen, admin, mut upstream, limits) = (listen?, admin?, upstream?, limits?);
    // Unless set, the pool keeps as many idle connections as requests can be in flight: a
    // lower cap closes connections after every burst and opens new ones (TLS handshakes) for
    // the next.
    let idle_cap_set = table
        .get("upstream")
        .and_then(|u| u.as_table())
        .is_some_and(|u| u.contains_key("pool_max_idle_per_host"));
    if !idle_cap_set {
        upstream.pool_max_idle_per_host = limits.max_concurrent_requests;
    }
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
        names,
        workers,
        admin,
        error_docs_url,
        upstream,
        accounts: accounts?,
        policy: policy?,
        clients: clients?,
        intercept: intercept?,
        webhooks: webhooks?,
        access_tokens: access_tokens?,
        oauth: oauth?,
        reload: reload?,
        limits,
    })
}

/// `[limits]`: every key optional.
fn read_limits(root: &mut Section<'_>, d: &mut Diagnostics) -> Option<Limits> {
    optional_table(root, d, "limits", Limits::default(), |s, d, out| {
        for (key, slot) in [
            ("request_timeout", &mut out.request_timeout),
            ("header_read_timeout", &mut out.header_read_timeout),
            ("drain_timeout", &mut out.drain_timeout),
            ("idle_timeout", &mut out.idle_timeout),
            ("write_timeout", &mut out.write_timeout),
        ] {
            if let Some(v) = s.duration(d, key) {
                *slot = v;
            }
        }
        if let Some(n) = s.count(d, "max_request_body") {
            out.max_request_body = n;
        }
        if let Some(n) = s.count(d, "max_rewrite_buffer") {
            out.max_rewrite_buffer = n;
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
        let mut connections = |key: &'static str| {
            let n = s.count(d, key)?;
            if n == 0 {
                d.error(s.key(key), "must be at least 1");
            }
            Some(usize::try_from(n).unwrap_or(usize::MAX))
        };
        out.max_connections = connections("max_connections");
        if let Some(n) = connections("max_admin_connections") {
            out.max_admin_connections = n;
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
) -> (Option<SocketAddr>, Option<UnixListen>, usize, Vec<String>) {
    let fallback = DEFAULT_LISTEN.parse().ok();
    let Some(mut s) = root.table(d, "listen") else {
        let address = if root.get("listen").is_some() {
            None
        } else {
            fallback
        };
        return (address, None, default_workers(), Vec::new());
    };
    let names: Vec<String> = s
        .strings(d, "names")
        .unwrap_or_default()
        .into_iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
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
    (address, unix, workers, names)
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
            ("min_refetch_interval", &mut out.min_refetch_interval),
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

/// `[admin]`: `address = "HOST:PORT"` and `error_docs_url`.
fn read_admin(root: &mut Section<'_>, d: &mut Diagnostics) -> (Option<SocketAddr>, Option<String>) {
    let fallback = DEFAULT_ADMIN.parse().ok();
    let Some(mut section) = root.table(d, "admin") else {
        let address = if root.get("admin").is_some() {
            None
        } else {
            fallback
        };
        return (address, None);
    };
    let address = match section.string(d, "address") {
        Some(s) => parse_addr(d, section.key("address"), s),
        None => fallback,
    };
    let docs = section.string(d, "error_docs_url").and_then(|url| {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            d.error(
                section.key("error_docs_url"),
                format!("expected an http(s) URL such as \"https://wiki.example.com/twilio-sidecar/errors\", found {url:?}"),
            );
        }
        ok.then(|| url.to_string())
    });
    section.finish(d);
    (address, docs)
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
        queue_timeout: Duration::from_secs(5),
        max_queued: 1000,
        retry_429: 3,
        forward_headers: Vec::new(),
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
        if let Err(e) = check_allowed_hosts(out.allowed_hosts.iter().map(String::as_str)) {
            d.error(s.key("allowed_hosts"), e.to_string());
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
            ("queue_timeout", &mut out.queue_timeout),
        ] {
            if let Some(v) = s.duration(d, key) {
                *slot = v;
            }
        }
        if let Some(names) = s.strings(d, "forward_headers") {
            for (i, name) in names.iter().enumerate() {
                match http::HeaderName::try_from(*name) {
                    Ok(h) => out.forward_headers.push(h),
                    Err(_) => d.error(
                        format!("{}[{i}]", s.key("forward_headers")),
                        format!("{name:?} is not a header name"),
                    ),
                }
            }
        }
        if let Some(n) = s.count(d, "max_queued") {
            out.max_queued = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = s.count(d, "retry_429") {
            if n > 10 {
                d.error(
                    s.key("retry_429"),
                    "at most 10: each retry waits longer, and the request's own timeout still applies",
                );
            }
            out.retry_429 = u32::try_from(n).unwrap_or(u32::MAX);
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
    let mode = read_mode(&mut s, d).unwrap_or(Mode::Enforce);
    let allow = read_rules(&mut s, d, "allow");
    let deny = read_rules(&mut s, d, "deny");
    let max_inspected_body = s.size(d, "max_inspected_body").unwrap_or(64 * 1024);
    let files = read_files(&mut s, d, base);
    let anonymous = s.boolean(d, "anonymous").unwrap_or(false);
    let has_clients = root.get("clients").is_some();
    if anonymous && allow.is_empty() && files.is_empty() {
        d.error(
            s.key("anonymous"),
            "anonymous = true serves requests without client credentials under [policy]'s allow rules, and there are none",
        );
    } else if allow.is_empty() && files.is_empty() && !has_clients {
        d.warn(
            s.key("allow"),
            "no allow rules: every request will be denied",
        );
    }
    if anonymous && !has_clients {
        d.warn(
            s.key("anonymous"),
            "has no effect without [[clients]]: every request is anonymous",
        );
    }
    s.finish(d);
    (d.errors.len() == before).then_some(PolicyConfig {
        mode,
        allow,
        deny,
        max_inspected_body,
        files,
        anonymous,
    })
}

/// A list of rules (`allow`, `deny`): each a string, or a table `{ rule = "…", params =
/// { Name = ["glob", …] } }`. Every bad entry is reported; the good ones are returned.
/// `files = [...]`: rule files, relative to the config's directory.
fn read_files(s: &mut Section<'_>, d: &mut Diagnostics, base: &Path) -> Vec<PathBuf> {
    s.strings(d, "files")
        .unwrap_or_default()
        .into_iter()
        .map(|f| base.join(f))
        .collect()
}

fn read_rules<'a>(s: &mut Section<'a>, d: &mut Diagnostics, key: &'a str) -> Vec<RuleSpec> {
    let Some(value) = s.get(key) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        d.error(
            s.key(key),
            format!(
                "expected a list of rules, found {}",
                reader::describe(value)
            ),
        );
        return Vec::new();
    };
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{}[{i}]", s.key(key));
        if let Some(text) = item.as_str() {
            rules.push(RuleSpec::from(text));
            continue;
        }
        let Some(table) = item.as_table() else {
            d.error(
                at,
                format!(
                    "expected a string, or a table {{ rule = \"…\", params = {{ … }} }}, found {}",
                    reader::describe(item)
                ),
            );
            continue;
        };
        let mut t = Section::new(at.clone(), table);
        let rule = t.string(d, "rule");
        if rule.is_none() && t.get("rule").is_none() {
            d.error(
                t.key("rule"),
                "missing: the rule text, [METHODS] [HOST]PATTERN",
            );
        }
        let mut params = Vec::new();
        if let Some(mut p) = t.table(d, "params") {
            let names: Vec<&String> = table
                .get("params")
                .and_then(|v| v.as_table())
                .map(|t| t.keys().collect())
                .unwrap_or_default();
            for name in names {
                if let Some(globs) = p.strings(d, name) {
                    params.push((name.clone(), globs.into_iter().map(String::from).collect()));
                }
            }
            p.finish(d);
        }
        t.finish(d);
        if let Some(rule) = rule {
            rules.push(RuleSpec {
                rule: rule.to_string(),
                params,
            });
        }
    }
    rules
}

/// `mode = "enforce" | "audit"`, if given.
fn read_mode(s: &mut Section<'_>, d: &mut Diagnostics) -> Option<Mode> {
    match s.string(d, "mode")? {
        "enforce" => Some(Mode::Enforce),
        "audit" => Some(Mode::Audit),
        other => {
            d.error(
                s.key("mode"),
                format!("expected \"enforce\" or \"audit\", found {other:?}"),
            );
            None
        }
    }
}

/// `[intercept]`: `ca_cert` and `ca_key`, both required when the table is there.
fn read_intercept(
    root: &mut Section<'_>,
    d: &mut Diagnostics,
    base: &Path,
) -> Option<Option<InterceptConfig>> {
    let Some(mut s) = root.table(d, "intercept") else {
        return root.get("intercept").is_none().then_some(None);
    };
    let cert = match s.string(d, "ca_cert") {
        Some(p) if !p.is_empty() => Some(base.join(p)),
        Some(_) => {
            d.error(s.key("ca_cert"), "must be a path");
            None
        }
        None => {
            if s.get("ca_cert").is_none() {
                d.error(
                    s.key("ca_cert"),
                    "missing: the CA certificate apps trust (`twilio-sidecar ca init --dir DIR` makes one)",
                );
            }
            None
        }
    };
    let key = SecretSource::parse(&mut s, d, "ca_key", true, base);
    s.finish(d);
    match (cert, key) {
        (Some(ca_cert), Some(ca_key)) => Some(Some(InterceptConfig { ca_cert, ca_key })),
        _ => None,
    }
}

/// A string key that must be there; `example` says what to write.
fn required<'a>(
    s: &mut Section<'a>,
    d: &mut Diagnostics,
    key: &'a str,
    example: &str,
) -> Option<&'a str> {
    let v = s.string(d, key);
    if v.is_none() && s.get(key).is_none() {
        d.error(s.key(key), format!("missing ({example})"));
    }
    v
}
