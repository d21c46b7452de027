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

use http::Method;

pub use crate::config::Mode;
use crate::gate::route::{HostId, Hosts};
use matcher::Matcher;
pub use rule::{parse_rule, Effect, MethodSet, Rule, RuleError};

/// What the rules say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first matching allow rule (in config order), with no deny rule matching.
    Allow { rule: u32 },
    /// The first matching deny rule.
    Deny { rule: u32 },
    /// No allow rule matched: default deny.
    NoMatch,
}

/// A verdict plus what the sidecar does with it in the current mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// True when the request goes upstream (allowed, or denied in audit mode).
    pub forward: bool,
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
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let tagged = allow
            .into_iter()
            .map(|r| (r, Effect::Allow))
            .chain(deny.into_iter().map(|r| (r, Effect::Deny)));
        for (position, (text, effect)) in tagged.enumerate() {
            match parse_rule(text, effect, hosts) {
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
    /// ([`crate::gate::request_path::CanonicalPath::segment_array`]). Allocation-free.
    pub fn decide(&self, method: &Method, host: HostId, segments: &[&str]) -> Decision {
        let verdict = match MethodSet::bit(method) {
            Some(bit) => self.verdict(bit, host, segments),
            None => Verdict::NoMatch,
        };
        Decision {
            verdict,
            forward: matches!(verdict, Verdict::Allow { .. }) || self.mode == Mode::Audit,
        }
    }

    fn verdict(&self, method_bit: u8, host: HostId, segments: &[&str]) -> Verdict {
        let (mut allow, mut deny) = (u32::MAX, u32::MAX);
        self.matcher
            .for_each_match(segments, &self.sids, &mut |index| {
                let rule = &self.rules[index as usize];
                if !rule.methods.contains_bit(method_bit) || rule.host.is_some_and(|h| h != host) {
                    return;
                }
                match rule.effect {
                    Effect::Allow => allow = allow.min(index),
                    Effect::Deny => deny = deny.min(index),
                }
            });
        if deny != u32::MAX {
            Verdict::Deny { rule: deny }
        } else if allow != u32::MAX {
            Verdict::Allow { rule: allow }
        } else {
            Verdict::NoMatch
        }
    }

    /// The rule text that decided, or [`DEFAULT_DENY`]: the `rule` metric label.
    pub fn rule_label(&self, verdict: Verdict) -> &str {
        match verdict {
            Verdict::Allow { rule } | Verdict::Deny { rule } => &self.rules[rule as usize].text,
            Verdict::NoMatch => DEFAULT_DENY,
        }
    }

    /// Why a request was refused, for the 403 message.
    pub fn denial_reason(&self, verdict: Verdict) -> String {
        match verdict {
            Verdict::Deny { rule } => {
                format!("deny rule {:?} matches", &*self.rules[rule as usize].text)
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
        assert_eq!(d.verdict, Verdict::Deny { rule: 4 });
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
