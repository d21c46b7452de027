//! The policy engine: least-privilege rules in the style of Twilio restricted API keys, compiled
//! once per config generation and consulted once per request.
//!
//! Default deny: a request is allowed when some allow rule matches and no deny rule does. The
//! rule language is in [`rule`]; the compiled index in [`matcher`]. In `audit` mode a would-be
//! denial is forwarded anyway and reported as `audit_deny`, so a policy can be rolled out
//! without breaking production.

pub mod lint;
pub mod matcher;
pub mod rule;
mod segment_match;

use http::Method;

pub use crate::config::Mode;
use crate::config::RuleSpec;
use crate::gate::params::{Params, Unmet};
use crate::gate::route::{HostId, Hosts};
use matcher::Matcher;
pub use rule::{parse_rule, parse_rule_spec, Effect, MethodSet, ParamCondition, Rule, RuleError};

/// What the rules say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first matching allow rule (in config order), with no deny rule matching.
    Allow { rule: u32 },
    /// The first matching deny rule; `unreadable` when it has parameter conditions that hold
    /// only because the parameters could not be read (deny rules fail closed).
    Deny { rule: u32, unreadable: bool },
    /// No allow rule matched, but this one (the first) matched the path and its parameter
    /// conditions did not hold: `param` is the condition that failed, `None` when the
    /// parameters could not be inspected.
    Unmet { rule: u32, param: Option<u16> },
    /// No allow rule matched: default deny.
    NoMatch,
}

/// A verdict plus what the sidecar does with it in the current mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// True when the request goes upstream (allowed, or denied in audit mode).
    pub forward: bool,
    /// True when rules with parameter conditions could change this verdict: it is
    /// provisional until [`Policy::decide_with`] sees the parameters.
    pub pending: bool,
}

impl Decision {
    /// `allow`, `deny` or `audit_deny`: the `decision` metric label.
    pub fn label(&self) -> &'static str {
        match (self.verdict, self.forward) {
            (Verdict::Allow { .. }, _) => "allow",
            (_, true) => "audit_deny",
            (_, false) => "deny",
        }
    }
}

/// The label used when no rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

/// A compiled rule set.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    /// Allow rules first, then deny rules, each in config order.
    rules: Vec<Rule>,
    matcher: Matcher,
    sids: Box<[Box<str>]>,
}

impl Policy {
    /// Parses and compiles every rule, reporting every bad rule at once, each with its position
    /// in the allow-then-deny sequence.
    pub fn compile<'a>(
        mode: Mode,
        allow: impl IntoIterator<Item = &'a str>,
        deny: impl IntoIterator<Item = &'a str>,
        hosts: &Hosts,
        account_sids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Policy, Vec<(usize, RuleError)>> {
        let allow: Vec<RuleSpec> = allow.into_iter().map(RuleSpec::from).collect();
        let deny: Vec<RuleSpec> = deny.into_iter().map(RuleSpec::from).collect();
        Self::compile_specs(mode, &allow, &deny, hosts, account_sids)
    }

    /// [`Policy::compile`] for rules that may carry parameter conditions.
    pub fn compile_specs<'r, 'a>(
        mode: Mode,
        allow: impl IntoIterator<Item = &'r RuleSpec>,
        deny: impl IntoIterator<Item = &'r RuleSpec>,
        hosts: &Hosts,
        account_sids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Policy, Vec<(usize, RuleError)>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let tagged = allow
            .into_iter()
            .map(|r| (r, Effect::Allow))
            .chain(deny.into_iter().map(|r| (r, Effect::Deny)));
        for (position, (spec, effect)) in tagged.enumerate() {
            match parse_rule_spec(spec, effect, hosts) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push((position, e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            mode,
            matcher: Matcher::build(&rules),
            rules,
            sids: account_sids.into_iter().map(Box::from).collect(),
        })
    }

    /// The decision for one request, given its decoded path segments
    /// ([`crate::gate::request_path::CanonicalPath::segment_array`]), before its parameters
    /// are read. Allocation-free. Rules with parameter conditions are set aside: when one of
    /// them could change the outcome, the decision is `pending` (and final only from
    /// [`Policy::decide_with`]).
    pub fn decide(&self, method: &Method, host: HostId, segments: &[&str]) -> Decision {
        self.decide_inner(method, host, segments, None)
    }

    /// The final decision, rules with parameter conditions included.
    pub fn decide_with(
        &self,
        method: &Method,
        host: HostId,
        segments: &[&str],
        params: &Params<'_>,
    ) -> Decision {
        self.decide_inner(method, host, segments, Some(params))
    }

    fn decide_inner(
        &self,
        method: &Method,
        host: HostId,
        segments: &[&str],
        params: Option<&Params<'_>>,
    ) -> Decision {
        let (verdict, pending) = match MethodSet::bit(method) {
            Some(bit) => self.verdict(bit, host, segments, params),
            None => (Verdict::NoMatch, false),
        };
        Decision {
            verdict,
            forward: matches!(verdict, Verdict::Allow { .. }) || self.mode == Mode::Audit,
            pending,
        }
    }

    /// First matching deny rule, else first matching allow rule. Without `params`, rules with
    /// conditions only say whether the outcome is still open: a conditional deny rule could
    /// still deny, or, with no unconditional allow, a conditional allow rule could allow.
    fn verdict(
        &self,
        method_bit: u8,
        host: HostId,
        segments: &[&str],
        params: Option<&Params<'_>>,
    ) -> (Verdict, bool) {
        let (mut allow, mut deny) = (u32::MAX, u32::MAX);
        let mut deny_unreadable = false;
        let (mut open_allow, mut open_deny) = (false, false);
        let mut unmet: Option<(u32, Option<u16>)> = None;
        self.matcher
            .for_each_match(segments, &self.sids, &mut |index| {
                let rule = &self.rules[index as usize];
                if !rule.methods.contains_bit(method_bit) || rule.host.is_some_and(|h| h != host) {
                    return;
                }
                // Whether the rule applies, and whether only because the parameters could
                // not be read (deny rules fail closed).
                let (holds, unreadable) = if rule.params.is_empty() {
                    (true, false)
                } else {
                    let deny_rule = rule.effect == Effect::Deny;
                    match params.map(|p| p.check(&rule.params, deny_rule)) {
                        None => {
                            match rule.effect {
                                Effect::Allow => open_allow = true,
                                Effect::Deny => open_deny = true,
                            }
                            return;
                        }
                        Some(Ok(())) => (true, false),
                        Some(Err(failed)) => {
                            if !deny_rule && unmet.is_none_or(|(first, _)| index < first) {
                                let param = match failed {
                                    Unmet::Condition(i) => u16::try_from(i).ok(),
                                    Unmet::Uninspectable => None,
                                };
                                unmet = Some((index, param));
                            }
                            let closed = deny_rule && failed == Unmet::Uninspectable;
                            (closed, closed)
                        }
                    }
                };
                if !holds {
                    return;
                }
                match rule.effect {
                    Effect::Allow => allow = allow.min(index),
                    Effect::Deny if index < deny => {
                        deny = index;
                        deny_unreadable = unreadable;
                    }
                    Effect::Deny => {}
                }
            });
        if deny != u32::MAX {
            (
                Verdict::Deny {
                    rule: deny,
                    unreadable: deny_unreadable,
                },
                false,
            )
        } else if open_deny || (allow == u32::MAX && open_allow) {
            // Provisional: what the unconditional rules alone say.
            let verdict = if allow != u32::MAX {
                Verdict::Allow { rule: allow }
            } else {
                Verdict::NoMatch
            };
            (verdict, true)
        } else if allow != u32::MAX {
            (Verdict::Allow { rule: allow }, false)
        } else if let Some((rule, param)) = unmet {
            (Verdict::Unmet { rule, param }, false)
        } else {
            (Verdict::NoMatch, false)
        }
    }

    /// The rule text that decided, or [`DEFAULT_DENY`]: the `rule` metric label.
    pub fn rule_label(&self, verdict: Verdict) -> &str {
        match verdict {
            Verdict::Allow { rule } | Verdict::Deny { rule, .. } | Verdict::Unmet { rule, .. } => {
                &self.rules[rule as usize].text
            }
            Verdict::NoMatch => DEFAULT_DENY,
        }
    }

    /// Why a request was refused, for the 403 message.
    pub fn denial_reason(&self, verdict: Verdict) -> String {
        match verdict {
            Verdict::Deny { rule, unreadable } => {
                let rule = &*self.rules[rule as usize].text;
                if unreadable {
                    format!("deny rule {rule:?} applies: its parameter conditions cannot be checked (the body is larger than policy.max_inspected_body, or neither a UTF-8 form nor JSON), so it fails closed")
                } else {
                    format!("deny rule {rule:?} matches")
                }
            }
            Verdict::Unmet { rule, param } => {
                let rule = &self.rules[rule as usize];
                match param.and_then(|i| rule.params.get(usize::from(i))) {
                    Some(condition) => format!(
                        "allow rule {:?} matches the path, but parameter {} is not one of [{}]",
                        &*rule.written,
                        condition.name,
                        condition.globs.join(", ")
                    ),
                    None => format!(
                        "allow rule {:?} matches the path, but its parameter conditions cannot be checked: the body is larger than policy.max_inspected_body, or neither a UTF-8 form nor JSON",
                        &*rule.written
                    ),
                }
            }
            _ => "no allow rule matches".to_string(),
        }
    }

    /// Every rule, allow rules first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The configured account SIDs `{AccountSid}` stands for.
    pub fn account_sids(&self) -> &[Box<str>] {
        &self.sids
    }

    /// `enforce` or `audit`.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC00000000000000000000000000000001";
    const OTHER: &str = "AC00000000000000000000000000000002";

    fn hosts() -> Hosts {
        Hosts::new(["api.twilio.com", "verify.twilio.com", "lookups.twilio.com"].into_iter())
            .unwrap()
    }

    fn policy(mode: Mode, allow: &[&str], deny: &[&str]) -> (Policy, Hosts) {
        let h = hosts();
        let p =
            Policy::compile(mode, allow.iter().copied(), deny.iter().copied(), &h, [SID]).unwrap();
        (p, h)
    }

    fn decide(p: &Policy, h: &Hosts, method: Method, host: &str, path: &str) -> Decision {
        let path = crate::gate::request_path::CanonicalPath::parse(path).unwrap();
        p.decide(
            &method,
            h.lookup(host).unwrap(),
            path.segment_array().as_slice(),
        )
    }

    #[test]
    fn default_deny_allow_and_deny_beats_allow() {
        let (p, h) = policy(
            Mode::Enforce,
            &[
                "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
                "GET /2010-04-01/Accounts/{AccountSid}/Messages/*",
                "verify.twilio.com /v2/Services/*/Verifications*",
                "/2010-04-01/Accounts/{AccountSid}/*",
            ],
            &["* /2010-04-01/Accounts/{AccountSid}/Keys*"],
        );
        let api = "api.twilio.com";
        let msgs = format!("/2010-04-01/Accounts/{SID}/Messages.json");
        let d = decide(&p, &h, Method::POST, api, &msgs);
        assert_eq!(d.verdict, Verdict::Allow { rule: 0 });
        assert!(d.forward);
        assert_eq!(d.label(), "allow");
        assert_eq!(
            p.rule_label(d.verdict),
            "POST /2010-04-01/Accounts/{AccountSid}/Messages.json"
        );

        // Deny beats allow even though rule 3 allows everything under the account.
        let keys = format!("/2010-04-01/Accounts/{SID}/Keys/SK1.json");
        let d = decide(&p, &h, Method::GET, api, &keys);
        assert_eq!(
            d.verdict,
            Verdict::Deny {
                rule: 4,
                unreadable: false
            }
        );
        assert!(!d.forward);
        assert_eq!(d.label(), "deny");

        // {AccountSid} binds to configured accounts only.
        let other = format!("/2010-04-01/Accounts/{OTHER}/Messages.json");
        assert_eq!(
            decide(&p, &h, Method::POST, api, &other).verdict,
            Verdict::NoMatch
        );

        // Host pin.
        let v = "/v2/Services/VA1/Verifications";
        assert!(decide(&p, &h, Method::POST, "verify.twilio.com", v).forward);
        assert!(!decide(&p, &h, Method::POST, "lookups.twilio.com", v).forward);

        // Trailing * spans segments; * inside does not.
        let media = format!("/2010-04-01/Accounts/{SID}/Messages/SM1/Media/ME1.json");
        assert_eq!(
            decide(&p, &h, Method::GET, api, &media).verdict,
            Verdict::Allow { rule: 1 }
        );
        assert!(
            decide(
                &p,
                &h,
                Method::POST,
                "verify.twilio.com",
                "/v2/Services/VA1/Verifications/VE1"
            )
            .forward
        );
        assert!(
            !decide(
                &p,
                &h,
                Method::POST,
                "verify.twilio.com",
                "/v2/Services/VA1/X/Verifications"
            )
            .forward
        );

        // Case-insensitive literals, exact methods.
        let upper = format!("/2010-04-01/ACCOUNTS/{SID}/messages.JSON");
        assert!(decide(&p, &h, Method::POST, api, &upper).forward);
        let lower = Method::from_bytes(b"post").unwrap();
        assert!(!decide(&p, &h, lower, api, &msgs).forward);
        assert!(
            !decide(
                &p,
                &h,
                Method::DELETE,
                "lookups.twilio.com",
                "/v2/PhoneNumbers/x"
            )
            .forward
        );
    }

    #[test]
    fn trailing_star_semantics() {
        let (p, h) = policy(
            Mode::Enforce,
            &["/2010-04-01/Accounts/{AccountSid}/Messages*"],
            &[],
        );
        let ok = |path: &str| decide(&p, &h, Method::GET, "api.twilio.com", path).forward;
        assert!(ok(&format!("/2010-04-01/Accounts/{SID}/Messages.json")));
        assert!(ok(&format!("/2010-04-01/Accounts/{SID}/Messages")));
        assert!(ok(&format!(
            "/2010-04-01/Accounts/{SID}/Messages/SM1/Media/ME1.json"
        )));
        assert!(!ok(&format!("/2010-04-01/Accounts/{SID}/Calls.json")));
        assert!(!ok(&format!("/2010-04-01/Accounts/{SID}")));
    }

    #[test]
    fn audit_mode_forwards_and_labels() {
        let (p, h) = policy(Mode::Audit, &["GET /v2/PhoneNumbers/*"], &[]);
        let d = decide(&p, &h, Method::POST, "lookups.twilio.com", "/v2/Services");
        assert_eq!(d.verdict, Verdict::NoMatch);
        assert!(d.forward);
        assert_eq!(d.label(), "audit_deny");
        assert_eq!(p.rule_label(d.verdict), DEFAULT_DENY);
    }

    #[test]
    fn matches_decoded_segments_once() {
        let (p, h) = policy(
            Mode::Enforce,
            &["GET /v2/PhoneNumbers/%2B1*"],
            &["GET /v2/PhoneNumbers/%2B1999*"],
        );
        let ok = |path: &str| decide(&p, &h, Method::GET, "lookups.twilio.com", path).forward;
        assert!(ok("/v2/PhoneNumbers/%2B15108675310"));
        assert!(ok("/v2/PhoneNumbers/+15108675310"));
        assert!(!ok("/v2/PhoneNumbers/%2B19995550000"));
        assert!(!ok("/v2/PhoneNumbers/%252B15108675310"));
    }

    fn conditional(allow: &[RuleSpec], deny: &[RuleSpec]) -> (Policy, Hosts) {
        let h = hosts();
        let p = Policy::compile_specs(Mode::Enforce, allow, deny, &h, [SID]).unwrap();
        (p, h)
    }

    fn spec(rule: &str, params: &[(&str, &[&str])]) -> RuleSpec {
        RuleSpec {
            rule: rule.into(),
            params: params
                .iter()
                .map(|(n, g)| (n.to_string(), g.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }
    }

    fn form(body: &'static str) -> Params<'static> {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        Params::read(
            None,
            &h,
            crate::gate::params::BodyView::Bytes(body.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn conditions_make_a_decision_pending_only_when_they_could_change_it() {
        let msgs = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json";
        let (p, h) = conditional(
            &[
                spec(msgs, &[("To", &["+1*"])]),
                spec("GET /2010-04-01/Accounts/{AccountSid}/Calls.json", &[]),
            ],
            &[spec(
                "/2010-04-01/Accounts/{AccountSid}/Calls.json",
                &[("Status", &["queued"])],
            )],
        );
        let api = h.lookup("api.twilio.com").unwrap();
        let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
        let canonical = crate::gate::request_path::CanonicalPath::parse(&path).unwrap();
        let segs = canonical.segment_array();
        let d = p.decide(&Method::POST, api, segs.as_slice());
        assert!(d.pending && !d.forward, "{d:?}");
        let ok = p.decide_with(
            &Method::POST,
            api,
            segs.as_slice(),
            &form("To=%2B15551234567"),
        );
        assert_eq!(ok.verdict, Verdict::Allow { rule: 0 });
        assert!(!ok.pending);
        let no = p.decide_with(&Method::POST, api, segs.as_slice(), &form("To=%2B8821234"));
        assert_eq!(
            no.verdict,
            Verdict::Unmet {
                rule: 0,
                param: Some(0)
            }
        );
        assert!(p
            .denial_reason(no.verdict)
            .contains("parameter To is not one of [+1*]"));
        assert!(!no.forward);
        let unreadable = Params::Uninspectable("test");
        let d = p.decide_with(&Method::POST, api, segs.as_slice(), &unreadable);
        assert_eq!(
            d.verdict,
            Verdict::Unmet {
                rule: 0,
                param: None
            }
        );
        assert!(p.rule_label(d.verdict).ends_with("where To in [+1*]"));

        // An unconditional allow with a conditional deny on the same path: pending, and the
        // deny fails closed when the body cannot be read.
        let calls = format!("/2010-04-01/Accounts/{SID}/Calls.json");
        let canonical = crate::gate::request_path::CanonicalPath::parse(&calls).unwrap();
        let segs = canonical.segment_array();
        let d = p.decide(&Method::GET, api, segs.as_slice());
        assert!(
            d.pending && d.verdict == Verdict::Allow { rule: 1 },
            "{d:?}"
        );
        let d = p.decide_with(&Method::GET, api, segs.as_slice(), &form("Status=ringing"));
        assert_eq!(d.verdict, Verdict::Allow { rule: 1 });
        let d = p.decide_with(&Method::GET, api, segs.as_slice(), &form("Status=queued"));
        assert_eq!(
            d.verdict,
            Verdict::Deny {
                rule: 2,
                unreadable: false
            }
        );
        let d = p.decide_with(&Method::GET, api, segs.as_slice(), &unreadable);
        assert_eq!(
            d.verdict,
            Verdict::Deny {
                rule: 2,
                unreadable: true
            }
        );
        assert!(p.denial_reason(d.verdict).contains("fails closed"));

        // Unconditioned policies never wait for parameters.
        let (plain, h) = policy(Mode::Enforce, &[msgs], &[]);
        let api = h.lookup("api.twilio.com").unwrap();
        let canonical = crate::gate::request_path::CanonicalPath::parse(&path).unwrap();
        assert!(
            !plain
                .decide(&Method::POST, api, canonical.segment_array().as_slice())
                .pending
        );
    }

    #[test]
    fn condition_mistakes_are_refused_at_load() {
        let h = hosts();
        for (params, needle) in [
            (&[("To", &[][..])][..], "has no globs"),
            (
                &[("To", &["+1*"][..]), ("to", &["+44*"][..])][..],
                "listed twice",
            ),
            (&[("To=x", &["*"][..])][..], "is not a parameter name"),
        ] {
            let errors =
                Policy::compile_specs(Mode::Enforce, &[spec("POST /x", params)], &[], &h, [SID])
                    .unwrap_err();
            assert!(
                errors[0].1.to_string().contains(needle),
                "{needle}: {errors:?}"
            );
        }
    }

    #[test]
    fn all_rule_errors_at_once() {
        let errors = Policy::compile(
            Mode::Enforce,
            ["/ok", "FETCH /x", "/a//b"],
            ["nohost"],
            &hosts(),
            [SID],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3);
    }
}
