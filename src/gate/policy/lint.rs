//! Policy lint: the warnings `validate` (and startup, and `/config`) report about rules that
//! parse but are probably not what the author meant.
//!
//! - more than 100 rules (a Twilio restricted key holds at most 100 permissions);
//! - a rule that matches no operation in Twilio's API catalogue (usually a typo);
//! - a hostless rule that matches operations on several product hosts (pin it to one);
//! - an allow rule wholly covered by a deny rule (it can never allow anything);
//! - a parameter condition naming a parameter none of the rule's operations has (a typo, or
//!   a condition that can only ever see the parameter absent);
//! - a `To`/`From` glob that can never match an E.164 number (`1*` for `+1*`).
//!
//! Patterns are compared as token strings where `*` and `{Name}` become "any run of
//! characters": intersection decides "could match", a conservative cover test decides
//! "always matched by".

use crate::gate::catalogue::{self, Operation, TemplatePart};
use crate::gate::route::Hosts;

use super::rule::{Effect, MethodSet, Part, Rule, SegmentPattern};
use super::Policy;

/// Twilio's limit on permissions per restricted key.
pub const TWILIO_RULE_LIMIT: usize = 100;

/// One lint finding: the rule's index in `Policy::rules()` (if about one rule) and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Ch(u8),
    Star,
}

/// Every finding for `policy`, in rule order.
pub fn lint(policy: &Policy, hosts: &Hosts) -> Vec<Finding> {
    let rules = policy.rules();
    let sids = policy.account_sids();
    let mut out = Vec::new();
    if rules.len() > TWILIO_RULE_LIMIT {
        out.push(Finding {
            rule: None,
            message: format!(
                "{} rules: a Twilio restricted key holds at most {TWILIO_RULE_LIMIT} permissions, so no single key can mirror this policy",
                rules.len()
            ),
        });
    }
    let products: Vec<String> = hosts.iter().map(catalogue::product_host).collect();
    for (index, rule) in rules.iter().enumerate() {
        let compiled = CompiledRule::new(rule, sids);
        let mut matched_hosts: Vec<&str> = Vec::new();
        let mut matched_ops: Vec<&Operation> = Vec::new();
        for op in catalogue::operations() {
            let host_ok = match rule.host {
                Some(h) => catalogue::product_host(hosts.name(h)) == op.host,
                None => products.iter().any(|p| p == op.host),
            };
            if host_ok && method_in(rule.methods, op.method) && compiled.intersects(op) {
                if !rule.params.is_empty() {
                    matched_ops.push(op);
                }
                if !matched_hosts.contains(&op.host) {
                    matched_hosts.push(op.host);
                }
            }
        }
        lint_conditions(index, rule, &matched_ops, &mut out);
        if matched_hosts.is_empty() {
            out.push(Finding {
                rule: Some(index),
                message: format!(
                    "{} rule {:?} matches no operation in Twilio's API catalogue{} (a typo?)",
                    rule.effect.as_str(),
                    &*rule.text,
                    rule.host
                        .map_or(String::new(), |h| format!(" on {}", hosts.name(h)))
                ),
            });
        } else if rule.host.is_none() && matched_hosts.len() > 1 {
            matched_hosts.sort_unstable();
            let shown: Vec<&str> = matched_hosts.iter().take(6).copied().collect();
            out.push(Finding {
                rule: Some(index),
                message: format!(
                    "hostless {} rule {:?} matches operations on {} product hosts ({}{}); pin it to the one you mean",
                    rule.effect.as_str(),
                    &*rule.text,
                    matched_hosts.len(),
                    shown.join(", "),
                    if matched_hosts.len() > shown.len() { ", …" } else { "" }
                ),
            });
        }
    }
    for (a_index, allow) in rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.effect == Effect::Allow)
    {
        let a = CompiledRule::new(allow, sids);
        if let Some(deny) = rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .find(|deny| CompiledRule::new(deny, sids).covers(&a))
        {
            out.push(Finding {
                rule: Some(a_index),
                message: format!(
                    "allow rule {:?} never allows anything: deny rule {:?} covers all of it",
                    &*allow.text, &*deny.text
                ),
            });
        }
    }
    out
}

/// Parameter conditions the rule's operations cannot see, and phone-number globs that can
/// never match.
fn lint_conditions(index: usize, rule: &Rule, ops: &[&Operation], out: &mut Vec<Finding>) {
    for condition in rule.params.iter() {
        let known: Vec<&Operation> = ops
            .iter()
            .copied()
            .filter(|op| op.params.is_some())
            .collect();
        if !known.is_empty()
            && known.len() == ops.len()
            && known
                .iter()
                .all(|op| op.has_param(&condition.name) == Some(false))
        {
            let ids: Vec<&str> = known.iter().take(3).map(|op| op.id).collect();
            out.push(Finding {
                rule: Some(index),
                message: format!(
                    "rule {:?}: {:?} is not a parameter of {} (per Twilio's API spec), so the condition only ever sees it absent; check the name",
                    &*rule.written,
                    &*condition.name,
                    ids.join(", ")
                ),
            });
        }
        let phone = ["To", "From"]
            .iter()
            .any(|n| condition.name.eq_ignore_ascii_case(n));
        if phone {
            for glob in condition.globs.iter().filter(|g| !never_e164(g).is_empty()) {
                out.push(Finding {
                    rule: Some(index),
                    message: format!(
                        "rule {:?}: {} glob {:?} can never match an E.164 number ({}); write it as \"+…\"",
                        &*rule.written,
                        &*condition.name,
                        &**glob,
                        never_e164(glob)
                    ),
                });
            }
        }
    }
}

/// Why a `To`/`From` glob can never match an E.164 number (`+` and digits), or `""` when it
/// can (or is not about one: empty, `*`, or a channel address such as `whatsapp:+1*`).
fn never_e164(glob: &str) -> &'static str {
    if glob.is_empty() || glob.starts_with('*') || glob.contains(':') {
        return "";
    }
    let Some(digits) = glob.strip_prefix('+') else {
        return "no leading +";
    };
    if digits.chars().any(|c| !c.is_ascii_digit() && c != '*') {
        return "only digits follow the +";
    }
    ""
}

fn method_in(methods: MethodSet, method: &str) -> bool {
    http::Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| MethodSet::bit(&m))
        .is_some_and(|bit| methods.contains_bit(bit))
}

/// A rule as alternatives of token strings per segment.
struct CompiledRule<'r> {
    rule: &'r Rule,
    segments: Vec<Vec<Vec<Tok>>>,
}

impl<'r> CompiledRule<'r> {
    fn new(rule: &'r Rule, sids: &[Box<str>]) -> Self {
        CompiledRule {
            rule,
            segments: rule
                .segments
                .iter()
                .map(|s| segment_alternatives(s, sids))
                .collect(),
        }
    }

    /// Could some request match both this rule's path and `op`'s template?
    fn intersects(&self, op: &Operation) -> bool {
        let n = self.segments.len();
        let m = op.segments.len();
        if (self.rule.tail && m < n) || (!self.rule.tail && m != n) {
            return false;
        }
        self.segments
            .iter()
            .zip(&op.segments)
            .all(|(alts, template)| {
                let t = template_tokens(template);
                alts.iter().any(|a| intersect(a, &t))
            })
    }

    /// Is every request `other` matches also matched by `self`? Conservative: false when unsure.
    fn covers(&self, other: &CompiledRule<'_>) -> bool {
        let (d, a) = (self.rule, other.rule);
        if !a.methods.is_subset_of(d.methods) {
            return false;
        }
        if d.host.is_some() && d.host != a.host {
            return false;
        }
        let (n, m) = (self.segments.len(), other.segments.len());
        let shape_ok = if d.tail { m >= n } else { !a.tail && m == n };
        shape_ok
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(d_alts, a_alts)| a_alts.iter().all(|a| d_alts.iter().any(|d| cover(d, a))))
    }
}

fn chars(s: &str) -> impl Iterator<Item = Tok> + '_ {
    s.bytes().map(|b| Tok::Ch(b.to_ascii_lowercase()))
}

fn segment_alternatives(seg: &SegmentPattern, sids: &[Box<str>]) -> Vec<Vec<Tok>> {
    match seg {
        SegmentPattern::Literal(l) => vec![chars(l).collect()],
        SegmentPattern::Any => vec![vec![Tok::Star]],
        SegmentPattern::AccountSid => sids.iter().map(|s| chars(s).collect()).collect(),
        SegmentPattern::Glob(parts) => {
            let mut alts: Vec<Vec<Tok>> = vec![Vec::new()];
            for part in parts.iter() {
                match part {
                    Part::Lit(l) => alts.iter_mut().for_each(|a| a.extend(chars(l))),
                    Part::Star | Part::Param => alts.iter_mut().for_each(|a| a.push(Tok::Star)),
                    Part::AccountSid => {
                        alts = alts
                            .iter()
                            .flat_map(|a| {
                                sids.iter().map(move |sid| {
                                    let mut v = a.clone();
                                    v.extend(chars(sid));
                                    v
                                })
                            })
                            .take(64)
                            .collect();
                    }
                }
            }
            alts
        }
    }
}

fn template_tokens(parts: &[TemplatePart]) -> Vec<Tok> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            TemplatePart::Lit(l) => out.extend(chars(l)),
            TemplatePart::Param(_) => out.push(Tok::Star),
        }
    }
    out
}

/// Is there a string both token patterns match?
fn intersect(a: &[Tok], b: &[Tok]) -> bool {
    let mut memo = vec![None; (a.len() + 1) * (b.len() + 1)];
    fn go(a: &[Tok], b: &[Tok], i: usize, j: usize, memo: &mut Vec<Option<bool>>) -> bool {
        let key = i * (b.len() + 1) + j;
        if let Some(v) = memo[key] {
            return v;
        }
        let v = match (a.get(i), b.get(j)) {
            (None, None) => true,
            (Some(Tok::Star), _) => {
                go(a, b, i + 1, j, memo) || (j < b.len() && go(a, b, i, j + 1, memo))
            }
            (_, Some(Tok::Star)) => {
                go(a, b, i, j + 1, memo) || (i < a.len() && go(a, b, i + 1, j, memo))
            }
            (Some(Tok::Ch(x)), Some(Tok::Ch(y))) => x == y && go(a, b, i + 1, j + 1, memo),
            _ => false,
        };
        memo[key] = Some(v);
        v
    }
    go(a, b, 0, 0, &mut memo)
}

/// Does pattern `d` match every string pattern `a` matches? Sound, not complete: a `*` in `a`
/// can only be covered by a `*` in `d`.
fn cover(d: &[Tok], a: &[Tok]) -> bool {
    let mut memo = vec![None; (d.len() + 1) * (a.len() + 1)];
    fn go(d: &[Tok], a: &[Tok], i: usize, j: usize, memo: &mut Vec<Option<bool>>) -> bool {
        let key = i * (a.len() + 1) + j;
        if let Some(v) = memo[key] {
            return v;
        }
        let v = match (d.get(i), a.get(j)) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(Tok::Star), _) => {
                go(d, a, i + 1, j, memo) || (j < a.len() && go(d, a, i, j + 1, memo))
            }
            (Some(Tok::Ch(x)), Some(Tok::Ch(y))) => x == y && go(d, a, i + 1, j + 1, memo),
            (Some(Tok::Ch(_)), _) => false,
        };
        memo[key] = Some(v);
        v
    }
    go(d, a, 0, 0, &mut memo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hosts::TWILIO_PRODUCT_HOSTS;
    use crate::gate::policy::Mode;

    const SID: &str = "AC00000000000000000000000000000001";

    fn findings(allow: &[&str], deny: &[&str]) -> Vec<String> {
        let hosts = Hosts::new(TWILIO_PRODUCT_HOSTS.iter().copied()).unwrap();
        let policy = Policy::compile(
            Mode::Enforce,
            allow.iter().copied(),
            deny.iter().copied(),
            &hosts,
            [SID],
        )
        .unwrap();
        lint(&policy, &hosts)
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn parameter_conditions_are_checked_against_the_spec_and_e164() {
        let hosts = Hosts::new(TWILIO_PRODUCT_HOSTS.iter().copied()).unwrap();
        let spec = |params: &[(&str, &[&str])]| crate::config::RuleSpec {
            rule: "POST /2010-04-01/Accounts/{AccountSid}/Messages.json".into(),
            params: params
                .iter()
                .map(|(n, g)| (n.to_string(), g.iter().map(|s| s.to_string()).collect()))
                .collect(),
        };
        let lint_of = |params: &[(&str, &[&str])]| {
            let policy =
                Policy::compile_specs(Mode::Enforce, &[spec(params)], &[], &hosts, [SID]).unwrap();
            lint(&policy, &hosts)
                .into_iter()
                .map(|f| f.message)
                .collect::<Vec<_>>()
        };
        let clean = lint_of(&[
            ("To", &["+1*", "whatsapp:+44*"]),
            ("statuscallback", &["", "https://hooks.example.com/*"]),
            ("From", &[""]),
        ]);
        assert!(clean.is_empty(), "{clean:?}");
        let found = lint_of(&[("Too", &["+1*"]), ("To", &["1*", "+1-555*"])]);
        assert!(
            found
                .iter()
                .any(|m| m.contains("\"Too\" is not a parameter of CreateMessage")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.contains("\"1*\" can never match an E.164 number (no leading +)")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.contains("\"+1-555*\" can never match")),
            "{found:?}"
        );
    }

    #[test]
    fn clean_policy_has_no_findings() {
        let f = findings(
            &[
                "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
                "GET /2010-04-01/Accounts/{AccountSid}/Messages*",
                "verify.twilio.com /v2/Services/*/Verifications*",
                "GET lookups.twilio.com /v2/PhoneNumbers/*",
            ],
            &["* /2010-04-01/Accounts/{AccountSid}/Keys*"],
        );
        assert!(f.is_empty(), "{f:#?}");
    }

    #[test]
    fn typos_match_no_operation() {
        let f = findings(
            &[
                "POST /2010-04-01/Accounts/{AccountSid}/Mesages.json",
                "GET verify.twilio.com /v2/Services/*/Verificatons",
            ],
            &[],
        );
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f[0].contains("Mesages.json") && f[0].contains("matches no operation"));
        assert!(f[1].contains("on verify.twilio.com"));
        // Method matters: there is no DELETE of a phone number itself (only of its overrides,
        // which `/v2/PhoneNumbers/*` with its spanning trailing `*` would match).
        assert!(findings(&["DELETE lookups.twilio.com /v2/PhoneNumbers/*"], &[]).is_empty());
        let f = findings(
            &["DELETE lookups.twilio.com /v2/PhoneNumbers/{PhoneNumber}"],
            &[],
        );
        assert_eq!(f.len(), 1, "{f:#?}");
    }

    #[test]
    fn hostless_rules_spanning_products() {
        let f = findings(&["GET /v1/Services/*"], &[]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].contains("hostless") && f[0].contains("8 product hosts"),
            "{f:#?}"
        );
        assert!(
            f[0].contains("chat.twilio.com, conversations.twilio.com"),
            "{f:#?}"
        );
        // A hostless rule that only one product has is fine.
        assert!(findings(&["/v2/Services/*/Verifications*"], &[]).is_empty());
    }

    #[test]
    fn shadowed_allow_rules() {
        let f = findings(
            &[
                "GET /2010-04-01/Accounts/{AccountSid}/Keys/*",
                "GET /2010-04-01/Accounts/{AccountSid}/Messages.json",
            ],
            &["* /2010-04-01/Accounts/{AccountSid}/Keys*"],
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].contains("never allows anything"), "{f:#?}");
        // Partly covered is not shadowed.
        let f = findings(
            &["/2010-04-01/Accounts/{AccountSid}/*"],
            &["DELETE /2010-04-01/Accounts/{AccountSid}/Keys*"],
        );
        assert!(f.iter().all(|m| !m.contains("never allows")), "{f:#?}");
    }

    #[test]
    fn too_many_rules() {
        let allow: Vec<String> = (0..101)
            .map(|i| format!("GET /2010-04-01/Accounts/{{AccountSid}}/Messages/SM{i}.json"))
            .collect();
        let hosts = Hosts::new(TWILIO_PRODUCT_HOSTS.iter().copied()).unwrap();
        let policy = Policy::compile(
            Mode::Enforce,
            allow.iter().map(String::as_str),
            [],
            &hosts,
            [SID],
        )
        .unwrap();
        let f = lint(&policy, &hosts);
        assert!(f[0].message.contains("101 rules"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn token_algebra() {
        let t = |s: &str| -> Vec<Tok> {
            s.bytes()
                .map(|b| if b == b'*' { Tok::Star } else { Tok::Ch(b) })
                .collect()
        };
        assert!(intersect(&t("messages*"), &t("messages.json")));
        assert!(intersect(&t("*.json"), &t("sm*")));
        assert!(!intersect(&t("a*b"), &t("c*")));
        assert!(cover(&t("keys*"), &t("keys.json")));
        assert!(cover(&t("*"), &t("a*b")));
        assert!(!cover(&t("a*"), &t("*")));
        assert!(!cover(&t("keys.json"), &t("keys*")));
    }
}
