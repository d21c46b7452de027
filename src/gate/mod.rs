//! The admission decision — request phases 1 to 4 — as pure functions over one config
//! generation: route, canonical path, policy, account. No I/O and no secrets, so the proxy and
//! `twilio-sidecar check` run exactly the same code.

pub mod catalogue;
pub mod policy;
mod refusal;
pub mod request_path;
pub mod route;

use std::path::Path;

use http::request::Parts;

use crate::config::reader::Diagnostic;
use crate::config::Config;
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
}

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
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
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

        // Rules with their origin (config key or file), allow rules first as the policy wants.
        let mut allow: Vec<(String, String)> = Vec::new();
        let mut deny: Vec<(String, String)> = Vec::new();
        for (list, key, out) in [
            (&config.policy.allow, "policy.allow", &mut allow),
            (&config.policy.deny, "policy.deny", &mut deny),
        ] {
            out.extend(
                list.iter()
                    .enumerate()
                    .map(|(i, r)| (format!("{key}[{i}]"), r.clone())),
            );
        }
        for (i, path) in config.policy.files.iter().enumerate() {
            match read_policy_document(path) {
                Ok(doc) => {
                    let origin = |name: &str, j: usize| {
                        format!("policy.files[{i}] ({}): {name}[{j}]", path.display())
                    };
                    allow.extend(
                        doc.allow
                            .into_iter()
                            .enumerate()
                            .map(|(j, r)| (origin("allow", j), r)),
                    );
                    deny.extend(
                        doc.deny
                            .into_iter()
                            .enumerate()
                            .map(|(j, r)| (origin("deny", j), r)),
                    );
                }
                Err(message) => problems.push(Diagnostic {
                    key: format!("policy.files[{i}]"),
                    message,
                }),
            }
        }

        let sids: Vec<Box<str>> = config
            .accounts
            .iter()
            .map(|a| a.sid.as_str().into())
            .collect();
        let policy = Policy::compile(
            config.policy.mode,
            allow.iter().map(|(_, r)| r.as_str()),
            deny.iter().map(|(_, r)| r.as_str()),
            &hosts,
            sids.iter().map(|s| &**s),
        );
        let policy = match policy {
            Ok(p) => Some(p),
            Err(errors) => {
                for (position, e) in errors {
                    let origin = allow
                        .iter()
                        .chain(deny.iter())
                        .nth(position)
                        .map_or_else(|| "policy".to_string(), |(k, _)| k.clone());
                    problems.push(Diagnostic {
                        key: origin,
                        message: e.to_string(),
                    });
                }
                None
            }
        };
        match policy {
            Some(policy) if problems.is_empty() => Ok(Gate {
                router: Router {
                    hosts,
                    default_host,
                },
                policy,
                default_account: config.accounts.iter().position(|a| a.default).unwrap_or(0),
                sids,
                origins: allow
                    .into_iter()
                    .chain(deny)
                    .map(|(origin, _)| origin)
                    .collect(),
            }),
            _ => Err(problems),
        }
    }

    /// Phases 1–4 for one request. `trace` is filled in as phases complete, so it tells how far
    /// a refused request got.
    pub fn admit<'r>(&self, parts: &'r Parts, trace: &mut Trace) -> Result<Admission<'r>, Refusal> {
        // Phase 1: route.
        let route = self.router.route(parts)?;
        trace.host = Some(route.host);
        trace.source = Some(route.source);
        trace.path_offset = parts.uri.path().len() - route.path.len();

        // Phase 2: canonical path.
        let path = CanonicalPath::parse(route.path)
            .map_err(|e| Refusal::NonCanonicalPath(e.to_string()))?;
        let segments = path.segment_array();

        // Phase 3: policy.
        let decision = self
            .policy
            .decide(&parts.method, route.host, segments.as_slice());
        trace.decision = Some(decision);
        if !decision.forward {
            return Err(Refusal::Denied {
                method: parts.method.clone(),
                host: self.router.hosts.name(route.host).to_string(),
                path: route.path.to_string(),
                reason: self.policy.denial_reason(decision.verdict),
            });
        }

        // Phase 4: account.
        let account = match account_in_path(segments.as_slice()) {
            Some(sid) => self
                .sids
                .iter()
                .position(|s| **s == *sid)
                .ok_or_else(|| Refusal::UnknownAccount(sid.to_string()))?,
            None => self.default_account,
        };
        Ok(Admission {
            route,
            decision,
            account,
        })
    }

    /// Policy lint warnings (see [`crate::gate::policy::lint`]), keyed by where each rule came from.
    pub fn lint(&self) -> Vec<Diagnostic> {
        crate::gate::policy::lint::lint(&self.policy, &self.router.hosts)
            .into_iter()
            .map(|f| Diagnostic {
                key: f
                    .rule
                    .and_then(|i| self.origins.get(i).cloned())
                    .unwrap_or_else(|| "policy".to_string()),
                message: f.message,
            })
            .collect()
    }

    /// Where rule `index` (in `policy.rules()` order) came from.
    pub fn rule_origin(&self, index: usize) -> &str {
        self.origins.get(index).map_or("policy", String::as_str)
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
