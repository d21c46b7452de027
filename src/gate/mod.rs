//! The admission decision — request phases 1 to 4 — as pure functions over one config
//! generation: route, canonical path, policy, account. No I/O and no secrets, so the proxy and
//! `twilio-sidecar check` run exactly the same code.

pub mod catalogue;
pub mod clients;
pub mod form;
pub mod glob;
pub mod params;
pub mod policy;
mod refusal;
pub mod request_path;
pub mod route;

use std::path::Path;

use http::request::Parts;

use crate::config::reader::Diagnostic;
use crate::config::Mode;
use crate::config::{Config, RuleSpec};
use crate::gate::clients::{Caller, ClientPolicy};
use crate::gate::params::Params;
use crate::gate::policy::{Decision, Policy, Verdict};
use crate::gate::request_path::CanonicalPath;
use crate::gate::route::{HostId, Hosts, Route, RouteSource, Router};
pub use refusal::Refusal;

/// Routing, policy and the account list of one config generation.
#[derive(Debug)]
pub struct Gate {
    pub router: Router,
    pub policy: Policy,
    /// Configured account SIDs, in config order.
    sids: Vec<Box<str>>,
    default_account: usize,
    /// Where each rule came from (`policy.allow[2]`, a policy file…), in `policy.rules()` order.
    origins: Vec<String>,
    /// `[[clients]]`, in config order: each with a policy of its own.
    pub clients: Vec<ClientPolicy>,
    /// Whether a request without client credentials is served (under `policy`): always
    /// without clients, with them only when `policy.anonymous` says so.
    pub anonymous: bool,
    /// `listen.names`: names `Host` may carry besides Twilio's, IP addresses and `localhost`.
    local_names: Vec<String>,
}

/// Headers only web browsers send: a request with one is a web page driving the sidecar.
static BROWSER_HEADERS: [http::HeaderName; 3] = [
    http::header::ORIGIN,
    http::HeaderName::from_static("sec-fetch-site"),
    http::HeaderName::from_static("sec-fetch-mode"),
];

/// A request that passed phases 1–4.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'r> {
    pub route: Route<'r>,
    pub decision: Decision,
    /// Index of the account whose credential to attach (config order).
    pub account: usize,
}

/// What was learned about a request before it was admitted or refused: metrics, the access
/// log and `check` report it either way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace {
    pub host: Option<HostId>,
    /// What named the host.
    pub source: Option<RouteSource>,
    pub decision: Option<Decision>,
    /// Where the forwarded path starts in the received path (after a stripped host prefix).
    pub path_offset: usize,
}

/// `{"allow": [...], "deny": [...]}` documents named by `policy.files`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    #[serde(default)]
    allow: Vec<RuleSpec>,
    #[serde(default)]
    deny: Vec<RuleSpec>,
}

impl Gate {
    /// Compiles routing and policy from `config`, reading `policy.files`. Every problem is
    /// reported, each naming where the bad rule came from.
    pub fn build(config: &Config) -> Result<Gate, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let hosts = match Hosts::new(config.upstream.allowed_hosts.iter().map(String::as_str)) {
            Ok(h) => h,
            Err(e) => {
                return Err(vec![Diagnostic {
                    key: "upstream.allowed_hosts".into(),
                    message: e.to_string(),
                }])
            }
        };
        let Some(default_host) = hosts.lookup(&config.upstream.default_host) else {
            return Err(vec![Diagnostic {
                key: "upstream.default_host".into(),
                message: "not in upstream.allowed_hosts".into(),
            }]);
        };

        let sids: Vec<Box<str>> = config
            .accounts
            .iter()
            .map(|a| a.sid.as_str().into())
            .collect();
        let global = gather_rules(
            "policy",
            &config.policy.allow,
            &config.policy.deny,
            &config.policy.files,
            &mut problems,
        );
        let policy = compile(config.policy.mode, &global, &hosts, &sids, &mut problems);
        // A client's policy: its own allow rules; its own deny rules and, as the
        // organisation-wide guard rail, [policy]'s.
        let mut clients = Vec::with_capacity(config.clients.len());
        for (i, client) in config.clients.iter().enumerate() {
            let mut rules = gather_rules(
                &format!("clients[{i}]"),
                &client.allow,
                &client.deny,
                &client.files,
                &mut problems,
            );
            rules.deny.extend(global.deny.iter().cloned());
            let mode = client.mode.unwrap_or(config.policy.mode);
            let accounts = client.accounts.as_ref().map(|list| {
                list.iter()
                    .filter_map(|sid| sids.iter().position(|s| **s == **sid))
                    .collect()
            });
            if let Some((policy, origins)) = compile(mode, &rules, &hosts, &sids, &mut problems) {
                clients.push(ClientPolicy {
                    id: client.id.as_str().into(),
                    policy,
                    accounts,
                    origins,
                });
            }
        }
        match policy {
            Some((policy, origins)) if problems.is_empty() => Ok(Gate {
                router: Router {
                    hosts,
                    default_host,
                },
                policy,
                default_account: config.accounts.iter().position(|a| a.default).unwrap_or(0),
                sids,
                origins,
                clients,
                anonymous: config.clients.is_empty() || config.policy.anonymous,
                local_names: config.names.clone(),
            }),
            _ => Err(problems),
        }
    }

    /// Phase 0 — **browsers**: no Twilio SDK sends `Origin` or `Sec-Fetch-*`, so a request
    /// with one is a web page using the app's sidecar (a cross-site form post needs no
    /// preflight); and, with `check_host` (a TCP listener), an origin-form request's `Host`
    /// must be a Twilio host, an IP address, `localhost` or one of `listen.names` — a
    /// DNS-rebinding page sends its own name. Absolute-form targets are the router's to check.
    pub fn refuse_browsers(&self, parts: &Parts, check_host: bool) -> Result<(), Refusal> {
        // One pass over the few names a request carries, rather than a hashed lookup for
        // each of these.
        if let Some(name) = parts
            .headers
            .keys()
            .find(|name| BROWSER_HEADERS.contains(name))
        {
            return Err(Refusal::Browser(format!(
                "the request carries {name}, which only web browsers send"
            )));
        }
        if !check_host || (parts.uri.authority().is_some() && parts.version < http::Version::HTTP_2)
        {
            return Ok(());
        }
        let host = match parts.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok()),
        };
        let Some(host) = host else {
            return Ok(());
        };
        let name = route::split_port(host).0;
        if crate::config::hosts::is_twilio_name(name)
            || crate::config::hosts::is_local_name(name, &self.local_names)
        {
            Ok(())
        } else {
            Err(Refusal::Browser(format!(
                "Host {name:?} is neither a Twilio host nor this sidecar's address (a DNS-rebinding page sends its own name); if apps reach the sidecar by this name, add it to listen.names"
            )))
        }
    }

    /// Phases 1–4 for a request without client credentials, under `[policy]`.
    pub fn admit<'r>(&self, parts: &'r Parts, trace: &mut Trace) -> Result<Admission<'r>, Refusal> {
        self.admit_as(parts, Caller::Anonymous, None, trace)
    }

    /// Phases 1–4 for one request from `caller`: under that client's policy and accounts, or
    /// `[policy]` for an anonymous one; `tunnel` is the host of the CONNECT tunnel it came
    /// through, if any. `trace` is filled in as phases complete, so it tells how far a
    /// refused request got.
    pub fn admit_as<'r>(
        &self,
        parts: &'r Parts,
        caller: Caller,
        tunnel: Option<HostId>,
        trace: &mut Trace,
    ) -> Result<Admission<'r>, Refusal> {
        self.admit_with(parts, caller, tunnel, None, trace)
    }

    /// [`Gate::admit_as`] with the request's parameters, for rules with conditions. Without
    /// them, a decision such rules could change comes back `pending` (not refused), and the
    /// caller reads the parameters and asks again with them.
    pub fn admit_with<'r>(
        &self,
        parts: &'r Parts,
        caller: Caller,
        tunnel: Option<HostId>,
        params: Option<&Params<'_>>,
        trace: &mut Trace,
    ) -> Result<Admission<'r>, Refusal> {
        // Phase 1: route.
        let route = self.router.route_in(parts, tunnel)?;
        trace.host = Some(route.host);
        trace.source = Some(route.source);
        trace.path_offset = parts.uri.path().len() - route.path.len();

        // Phase 2: canonical path.
        let path = CanonicalPath::parse(route.path)
            .map_err(|e| Refusal::NonCanonicalPath(e.to_string()))?;
        let segments = path.segment_array();

        // Phase 3: policy — the client's, or [policy].
        let client = match caller {
            Caller::Client(i) => Some(&self.clients[i]),
            Caller::Anonymous => None,
        };
        let policy = client.map_or(&self.policy, |c| &c.policy);
        let decision = match params {
            Some(params) => {
                policy.decide_with(&parts.method, route.host, segments.as_slice(), params)
            }
            None => policy.decide(&parts.method, route.host, segments.as_slice()),
        };
        trace.decision = Some(decision);
        if !decision.forward && !decision.pending {
            return Err(Refusal::Denied {
                method: parts.method.clone(),
                host: self.router.hosts.name(route.host).to_string(),
                path: route.path.to_string(),
                reason: policy.denial_reason(decision.verdict),
            });
        }

        // Phase 4: account — configured, and one the client may use.
        let account = match account_in_path(segments.as_slice()) {
            Some(sid) => self
                .sids
                .iter()
                .position(|s| **s == *sid)
                .ok_or_else(|| Refusal::UnknownAccount(sid.to_string()))?,
            None => self.default_account,
        };
        if let Some(client) = client.filter(|c| !c.may_use(account)) {
            return Err(Refusal::AccountNotAllowed {
                client: client.id.to_string(),
                account: self.sids[account].to_string(),
            });
        }
        Ok(Admission {
            route,
            decision,
            account,
        })
    }

    /// The policy `caller`'s requests are decided under.
    pub fn policy_for(&self, caller: Caller) -> &Policy {
        match caller {
            Caller::Client(i) => &self.clients[i].policy,
            Caller::Anonymous => &self.policy,
        }
    }

    /// The client with this id.
    pub fn client(&self, id: &str) -> Option<Caller> {
        self.clients
            .iter()
            .position(|c| *c.id == *id)
            .map(Caller::Client)
    }

    /// The `client` label of `caller`: its id, or `anonymous`.
    pub fn client_label(&self, caller: Caller) -> &str {
        match caller {
            Caller::Client(i) => &self.clients[i].id,
            Caller::Anonymous => "anonymous",
        }
    }

    /// Policy lint warnings (see [`crate::gate::policy::lint`]) for `[policy]` and every
    /// client's policy, keyed by where each rule came from.
    pub fn lint(&self) -> Vec<Diagnostic> {
        let sets = std::iter::once((&self.policy, &self.origins, "policy")).chain(
            self.clients
                .iter()
                .map(|c| (&c.policy, &c.origins, "clients")),
        );
        let mut out: Vec<Diagnostic> = Vec::new();
        for (policy, origins, fallback) in sets {
            for f in crate::gate::policy::lint::lint(policy, &self.router.hosts) {
                let d = Diagnostic {
                    key: f
                        .rule
                        .and_then(|i| origins.get(i).cloned())
                        .unwrap_or_else(|| fallback.to_string()),
                    message: f.message,
                };
                // [policy].deny rules recur in every client's policy: said once.
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out
    }

    /// Where rule `index` (in `policy.rules()` order) came from.
    pub fn rule_origin(&self, index: usize) -> &str {
        self.origins.get(index).map_or("policy", String::as_str)
    }

    /// Where rule `index` of `caller`'s policy came from.
    pub fn rule_origin_for(&self, caller: Caller, index: usize) -> &str {
        let origins = match caller {
            Caller::Client(i) => &self.clients[i].origins,
            Caller::Anonymous => &self.origins,
        };
        origins.get(index).map_or("policy", String::as_str)
    }

    /// The index of the default account (the one non-2010 APIs use).
    pub fn default_account(&self) -> usize {
        self.default_account
    }

    /// The SID of account `index`.
    pub fn account_sid(&self, index: usize) -> &str {
        &self.sids[index]
    }

    /// The decision label a request's outcome is recorded with (metrics, access log, `check`):
    /// the policy's own (`allow`, `deny`, `audit_deny`) — or `refused` when a phase other than
    /// the policy refused it, even after the policy allowed it (an unconfigured account).
    pub fn outcome_label(result: &Result<Admission<'_>, Refusal>, trace: &Trace) -> &'static str {
        match (result, trace.decision) {
            (Ok(admission), _) => admission.decision.label(),
            (Err(Refusal::Denied { .. }), Some(decision)) => decision.label(),
            (Err(_), _) => "refused",
        }
    }

    /// True when a denial here is only audited.
    pub fn is_audit_only(decision: &Decision) -> bool {
        decision.forward && !matches!(decision.verdict, Verdict::Allow { .. })
    }
}

/// Rules with where each came from (config key or policy file), allow and deny apart.
struct Gathered {
    allow: Vec<(String, RuleSpec)>,
    deny: Vec<(String, RuleSpec)>,
}

/// The rules of `key` (`policy`, `clients[0]`): its `allow` and `deny` lists, then its
/// policy documents' (a document that cannot be read is a problem).
fn gather_rules(
    key: &str,
    allow: &[RuleSpec],
    deny: &[RuleSpec],
    files: &[std::path::PathBuf],
    problems: &mut Vec<Diagnostic>,
) -> Gathered {
    let mut out = Gathered {
        allow: Vec::new(),
        deny: Vec::new(),
    };
    for (list, name, into) in [
        (allow, "allow", &mut out.allow),
        (deny, "deny", &mut out.deny),
    ] {
        into.extend(
            list.iter()
                .enumerate()
                .map(|(i, r)| (format!("{key}.{name}[{i}]"), r.clone())),
        );
    }
    for (i, path) in files.iter().enumerate() {
        match read_policy_document(path) {
            Ok(doc) => {
                let origin = |name: &str, j: usize| {
                    format!("{key}.files[{i}] ({}): {name}[{j}]", path.display())
                };
                out.allow.extend(
                    doc.allow
                        .into_iter()
                        .enumerate()
                        .map(|(j, r)| (origin("allow", j), r)),
                );
                out.deny.extend(
                    doc.deny
                        .into_iter()
                        .enumerate()
                        .map(|(j, r)| (origin("deny", j), r)),
                );
            }
            Err(message) => problems.push(Diagnostic {
                key: format!("{key}.files[{i}]"),
                message,
            }),
        }
    }
    out
}

/// Compiles gathered rules (allow rules first, as the policy wants); a bad rule is a problem
/// named by its origin. Returns the policy and each rule's origin, in rule order.
fn compile(
    mode: Mode,
    rules: &Gathered,
    hosts: &Hosts,
    sids: &[Box<str>],
    problems: &mut Vec<Diagnostic>,
) -> Option<(Policy, Vec<String>)> {
    let ordered: Vec<&(String, RuleSpec)> = rules.allow.iter().chain(rules.deny.iter()).collect();
    match Policy::compile_specs(
        mode,
        rules.allow.iter().map(|(_, r)| r),
        rules.deny.iter().map(|(_, r)| r),
        hosts,
        sids.iter().map(|s| &**s),
    ) {
        Ok(policy) => Some((policy, ordered.iter().map(|(k, _)| k.clone()).collect())),
        Err(errors) => {
            for (position, e) in errors {
                problems.push(Diagnostic {
                    key: ordered
                        .get(position)
                        .map_or_else(|| "policy".to_string(), |(k, _)| k.clone()),
                    message: e.to_string(),
                });
            }
            None
        }
    }
}

/// The account SID a 2010 API path names (`/2010-04-01/Accounts/{sid}[.json]/…`), if any.
/// Other APIs use the default account.
pub fn account_in_path<'a>(segments: &[&'a str]) -> Option<&'a str> {
    match segments {
        [version, accounts, sid, ..]
            if *version == "2010-04-01" && accounts.eq_ignore_ascii_case("Accounts") =>
        {
            let cut = sid.len().saturating_sub(5);
            Some(match sid.get(cut..) {
                Some(ext) if ext.eq_ignore_ascii_case(".json") => &sid[..cut],
                _ => sid,
            })
        }
        _ => None,
    }
}

fn read_policy_document(path: &Path) -> Result<PolicyDocument, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a policy document {{\"allow\": [...], \"deny\": [...]}}: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_in_2010_paths() {
        let a = "AC00000000000000000000000000000001";
        assert_eq!(
            account_in_path(&["2010-04-01", "Accounts", a, "Messages.json"]),
            Some(a)
        );
        let with_ext = format!("{a}.json");
        assert_eq!(
            account_in_path(&["2010-04-01", "Accounts", &with_ext]),
            Some(a)
        );
        assert_eq!(account_in_path(&["2010-04-01", "accounts", a]), Some(a));
        assert_eq!(account_in_path(&["2010-04-01", "Accounts.json"]), None);
        assert_eq!(account_in_path(&["v2", "Services", "VA1"]), None);
    }
}
