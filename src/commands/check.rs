//! `twilio-sidecar check`: what the sidecar would do with one request, explained phase by
//! phase with the same gate the proxy runs. Reads no secrets.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, Uri};

use crate::config::hosts::is_twilio_name;
use crate::config::{Config, CredentialConfig, SecretSource, EXIT_CONFIG};
use crate::gate::catalogue;
use crate::gate::clients::{AuthFailure, Caller};
use crate::gate::params::{BodyView, Params};
use crate::gate::policy::Verdict;
use crate::gate::request_path::CanonicalPath;
use crate::gate::route::RouteSource;
use crate::gate::{Gate, Refusal, Trace};
use crate::proxy::error::ProxyError;

/// Exit codes of `check`.
pub const CHECK_ALLOWED: i32 = 0;
pub const CHECK_DENIED: i32 = 1;
pub const CHECK_INVALID: i32 = 2;

/// `twilio-sidecar check`: what the sidecar would do with `METHOD URL`. Reads no secrets.
/// Returns the report and the exit code (0 allowed, 1 denied or refused, 2 invalid input,
/// 64 bad config).
pub fn check(config_path: &Path, method: &str, url: &str) -> (String, i32) {
    check_as(config_path, method, url, None, &[])
}

/// [`check`] for a request from the client `client` (`--client ID`; `None`: one without
/// client credentials) with these parameters (`--param`, decoded) besides its URL's query.
pub fn check_as(
    config_path: &Path,
    method: &str,
    url: &str,
    client: Option<&str>,
    given: &[(String, String)],
) -> (String, i32) {
    let config = match Config::load(config_path) {
        Ok((config, _)) => config,
        Err(e) => return (e.to_string(), EXIT_CONFIG),
    };
    let gate = match Gate::build(&config) {
        Ok(g) => g,
        Err(problems) => {
            let text = problems
                .iter()
                .map(|p| format!("{}: error: {p}", config_path.display()))
                .collect::<Vec<_>>()
                .join("\n");
            return (text, EXIT_CONFIG);
        }
    };
    let parts = match synthetic_request(method, url, config.listen) {
        Ok(p) => p,
        Err(message) => return (format!("invalid input: {message}"), CHECK_INVALID),
    };

    let caller = match client {
        Some(id) => match gate.client(id) {
            Some(caller) => caller,
            None => {
                let known: Vec<&str> = gate.clients.iter().map(|c| &*c.id).collect();
                return (
                    format!("invalid input: no client {id:?} in the config (clients: {known:?})"),
                    CHECK_INVALID,
                );
            }
        },
        None => Caller::Anonymous,
    };

    let mut out = String::new();
    let _ = writeln!(out, "request:  {method} {url}");
    if let Err(refusal) = gate.refuse_browsers(&parts, true) {
        let e = ProxyError::from(refusal);
        let _ = writeln!(
            out,
            "decision: refused: {} {} (code {}): {e}",
            e.status().as_u16(),
            e.status().canonical_reason().unwrap_or(""),
            e.code()
        );
        return (out, CHECK_DENIED);
    }
    if !gate.clients.is_empty() {
        let _ = writeln!(out, "client:   {}", gate.client_label(caller));
        if caller == Caller::Anonymous && !gate.anonymous {
            let e = ProxyError::from(Refusal::Unauthenticated(AuthFailure::Missing));
            let _ = writeln!(
                out,
                "decision: refused: {} {} (code {}): {e} (check --client ID explains a client's request)",
                e.status().as_u16(),
                e.status().canonical_reason().unwrap_or(""),
                e.code()
            );
            return (out, CHECK_DENIED);
        }
    }
    // The URL's query and the --param pairs, as the proxy reads a request's parameters.
    let params = match Params::read(
        parts.uri.query(),
        &http::HeaderMap::new(),
        BodyView::Bytes(b""),
    ) {
        Ok(Params::Read(mut pairs)) => {
            pairs.extend(
                given
                    .iter()
                    .map(|(n, v)| (n.as_str().into(), v.as_str().into())),
            );
            Params::Read(pairs)
        }
        Ok(other) => other,
        Err(e) => return (format!("invalid input: {e}"), CHECK_INVALID),
    };
    if !given.is_empty() {
        let names: Vec<&str> = given.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(out, "params:   {}", names.join(", "));
    }
    let mut trace = Trace::default();
    let result = gate.admit_with(&parts, caller, None, Some(&params), &mut trace);
    let hosts = &gate.router.hosts;
    let policy = gate.policy_for(caller);
    if let Some(host) = trace.host {
        let source = match trace.source {
            Some(RouteSource::AbsoluteForm) => " (from the absolute URL)",
            Some(RouteSource::HostHeader) => " (from the URL's host)",
            Some(RouteSource::PathPrefix) => " (from the leading path segment)",
            Some(RouteSource::Default) => " (upstream.default_host)",
            Some(RouteSource::Tunnel) => " (the CONNECT tunnel's host)",
            None => "",
        };
        let _ = writeln!(out, "host:     {}{source}", hosts.name(host));
        let path = parts.uri.path().get(trace.path_offset..).unwrap_or("");
        let _ = writeln!(out, "path:     {path}");
        if let Ok(canonical) = CanonicalPath::parse(path) {
            let operation = catalogue::find(
                parts.method.as_str(),
                hosts.name(host),
                canonical.segment_array().as_slice(),
            );
            let _ = match operation {
                Some(op) => writeln!(
                    out,
                    "operation: {} {} ({} {})",
                    op.spec, op.id, op.method, op.template
                ),
                None => writeln!(out, "operation: none in Twilio's API catalogue"),
            };
        }
    }
    if let Some(decision) = trace.decision {
        let rule = match decision.verdict {
            Verdict::Allow { rule } | Verdict::Deny { rule, .. } => format!(
                "{} rule {:?} ({})",
                policy.rules()[rule as usize].effect.as_str(),
                policy.rule_label(decision.verdict),
                gate.rule_origin_for(caller, rule as usize)
            ),
            Verdict::Unmet { rule, .. } => format!(
                "allow rule {:?} ({}) matches the path, not the parameters: {}",
                policy.rule_label(decision.verdict),
                gate.rule_origin_for(caller, rule as usize),
                policy.denial_reason(decision.verdict)
            ),
            Verdict::NoMatch => "no allow rule matches (default deny)".to_string(),
        };
        let _ = writeln!(out, "rule:     {rule}");
    }
    // One decision, labelled as the proxy labels it in its metrics and access log.
    let label = Gate::outcome_label(&result, &trace);
    let code = match result {
        Ok(admission) => {
            let sid = gate.account_sid(admission.account);
            let account = &config.accounts[admission.account];
            let _ = writeln!(
                out,
                "account:  {sid} ({})",
                describe_credential(&account.credential)
            );
            if Gate::is_audit_only(&admission.decision) {
                let _ = writeln!(out, "decision: {label} (forwarded because policy.mode = \"audit\"; enforce mode would refuse it)");
                CHECK_DENIED
            } else {
                let _ = writeln!(out, "decision: {label}");
                CHECK_ALLOWED
            }
        }
        Err(refusal) => {
            let e = ProxyError::from(refusal);
            let _ = writeln!(
                out,
                "decision: {label}: {} {} (code {}): {e}",
                e.status().as_u16(),
                e.status().canonical_reason().unwrap_or(""),
                e.code()
            );
            CHECK_DENIED
        }
    };
    (out, code)
}

/// Builds the request the sidecar would see for `URL`, as an app would send it: a URL on the
/// sidecar's own address (a loopback or unspecified host, `localhost`, or the port of
/// `listen.address`, as when a gateway is reached by a Service name) becomes an origin-form
/// request with that `Host`; any other URL an absolute-form request, as an HTTP proxy client
/// sends it (so a foreign host is refused exactly as the proxy refuses it); a bare path an
/// origin-form request without `Host`.
fn synthetic_request(
    method: &str,
    url: &str,
    listen: SocketAddr,
) -> Result<http::request::Parts, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL or path: {e}"))?;
    let mut builder = Request::builder().method(method);
    match uri.authority() {
        Some(authority) if is_sidecar_address(authority, uri.scheme_str(), listen) => {
            let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let value = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            builder = builder.uri(pq).header(header::HOST, value);
        }
        Some(authority) => {
            builder = builder
                .uri(uri.clone())
                .header(header::HOST, authority.as_str());
        }
        None => builder = builder.uri(uri),
    }
    builder
        .body(())
        .map(|r| r.into_parts().0)
        .map_err(|e| e.to_string())
}

/// True when `authority` names the sidecar itself rather than a host to proxy to.
fn is_sidecar_address(authority: &Authority, scheme: Option<&str>, listen: SocketAddr) -> bool {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if is_twilio_name(host) {
        return false;
    }
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified() || ip == listen.ip());
    let default_port = if scheme == Some("https") { 443 } else { 80 };
    local || authority.port_u16().unwrap_or(default_port) == listen.port()
}

fn describe_credential(c: &CredentialConfig) -> String {
    let from = |s: &SecretSource| match s {
        SecretSource::Inline(_) => "inline".to_string(),
        other => other.origin(),
    };
    match c {
        CredentialConfig::ApiKey { key_sid, secret } => {
            format!(
                "api_key: key SID from {}, secret from {}",
                from(key_sid),
                from(secret)
            )
        }
        CredentialConfig::AuthToken { token } => format!("auth_token from {}", from(token)),
        CredentialConfig::OAuth2 {
            client_id,
            client_secret,
            token_url,
        } => format!(
            "oauth2: client id from {}, client secret from {}, tokens from {token_url}",
            from(client_id),
            from(client_secret)
        ),
    }
}
