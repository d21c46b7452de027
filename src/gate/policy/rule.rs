//! The rule language: `[METHODS] [HOST]PATTERN`, parsed into a [`Rule`].
//!
//! - METHODS is `*` (the default) or a comma-separated list (`GET,POST`).
//! - HOST, when present, pins the rule to one allowed Twilio host; it may stand alone
//!   (`verify.twilio.com /v2/…`) or be glued to the pattern (`verify.twilio.com/v2/…`).
//! - PATTERN is a path of `/`-separated segments. `*` matches within one segment; a `*` at the
//!   very end matches the rest of the path, further segments included. `{AccountSid}` matches
//!   only configured account SIDs; any other `{Name}` matches one segment (or, inside a larger
//!   segment, one or more characters). Literal text may be percent-encoded and compares ASCII
//!   case-insensitively with the decoded request segment.
//!
//! In the table form `{ rule = "…", params = { To = ["+1*", "+44*"] } }` a rule also carries
//! [`ParamCondition`]s: every value a named parameter has (or the empty string when it has
//! none) must match one of its globs.

use http::Method;

use crate::config::RuleSpec;
use crate::gate::catalogue::placeholder_names;
use crate::gate::glob::glob as text_glob;
use crate::gate::route::{HostId, Hosts};

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    /// `allow` or `deny`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// The methods the sidecar forwards, in bit order.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A set of methods as a bitmask over [`METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u8);

impl MethodSet {
    /// Every forwarded method (`*`).
    pub const ALL: MethodSet = MethodSet((1 << METHODS.len()) - 1);

    /// The bit of a forwarded method; `None` for anything else (lower-case spellings included:
    /// methods are case-sensitive).
    pub fn bit(method: &Method) -> Option<u8> {
        METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .map(|i| 1 << i)
    }

    /// True when `bit` (from [`MethodSet::bit`]) is in the set.
    pub fn contains_bit(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// True when every method in `self` is also in `other`.
    pub fn is_subset_of(self, other: MethodSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// True when every method is in the set.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    fn names(self) -> impl Iterator<Item = &'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
    }
}

/// One element inside a segment pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Decoded literal text, compared ASCII case-insensitively.
    Lit(Box<str>),
    /// `*`: zero or more characters.
    Star,
    /// `{Name}`: one or more characters.
    Param,
    /// `{AccountSid}`: exactly one configured account SID.
    AccountSid,
}

/// What one path segment of a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentPattern {
    /// A plain literal segment.
    Literal(Box<str>),
    /// `*` or `{Name}` alone: any one segment.
    Any,
    /// `{AccountSid}` alone.
    AccountSid,
    /// Anything else: literals mixed with wildcards.
    Glob(Box<[Part]>),
}

impl SegmentPattern {
    /// True when the decoded request segment `s` matches.
    pub fn matches(&self, s: &str, sids: &[Box<str>]) -> bool {
        match self {
            SegmentPattern::Literal(l) => l.eq_ignore_ascii_case(s),
            SegmentPattern::Any => !s.is_empty(),
            SegmentPattern::AccountSid => sids.iter().any(|sid| **sid == *s),
            SegmentPattern::Glob(parts) => super::segment_match::glob(parts, s, sids),
        }
    }
}

/// A condition on one request parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamCondition {
    /// As written; matched ASCII case-insensitively (every spelling of `To` is `To`).
    pub name: Box<str>,
    /// `*` globs, case-sensitive; `""` admits an absent (or empty) parameter.
    pub globs: Box<[Box<str>]>,
}

impl ParamCondition {
    /// True when `value` matches one of the globs.
    pub fn admits(&self, value: &str) -> bool {
        self.globs.iter().any(|g| text_glob(g, value))
    }
}

/// A parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its metric label and its name in explanations: the rule as written (trimmed), followed
    /// by its conditions when it has any.
    pub text: Box<str>,
    /// The `[METHODS] [HOST]PATTERN` part as written (trimmed).
    pub written: Box<str>,
    /// Conditions on parameters, all of which must hold; empty for most rules.
    pub params: Box<[ParamCondition]>,
    pub effect: Effect,
    pub methods: MethodSet,
    pub host: Option<HostId>,
    /// Segment patterns; when `tail` is set the last one also matches any further segments.
    pub segments: Vec<SegmentPattern>,
    pub tail: bool,
}

impl Rule {
    /// The rule in normal form: `METHODS [HOST]PATTERN` as the sidecar understood it.
    pub fn normal_form(&self, hosts: &Hosts) -> String {
        let methods = if self.methods.is_all() {
            "*".to_string()
        } else {
            self.methods.names().collect::<Vec<_>>().join(",")
        };
        let host = self.host.map(|h| hosts.name(h)).unwrap_or("");
        let pattern = self.written.split_whitespace().last().unwrap_or("");
        let pattern = pattern.find('/').map_or(pattern, |i| &pattern[i..]);
        format!("{methods} {host}{pattern}")
    }
}

/// A rule that does not parse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {text:?}, column {column}: {message}")]
pub struct RuleError {
    pub text: String,
    /// 1-based character column in `text`.
    pub column: usize,
    pub message: String,
}

/// Parses one rule. `hosts` resolves a host pin to an allowed host.
pub fn parse_rule(input: &str, effect: Effect, hosts: &Hosts) -> Result<Rule, RuleError> {
    let text = input.trim();
    let lead = input.len() - input.trim_start().len();
    let err = |offset: usize, message: String| RuleError {
        text: input.to_string(),
        column: input[..(lead + offset).min(input.len())].chars().count() + 1,
        message,
    };
    let tokens: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|t| (t.as_ptr() as usize - text.as_ptr() as usize, t))
        .collect();
    if tokens.is_empty() {
        return Err(err(0, "the rule is empty".into()));
    }
    if tokens.len() > 3 {
        return Err(err(
            tokens[3].0,
            "too many words; a rule is [METHODS] [HOST]PATTERN".into(),
        ));
    }
    // The last token holds the pattern (maybe with a host glued on); the ones before it are
    // METHODS and/or HOST, told apart by the '.' every host name has.
    let (pat_off, pat_tok) = tokens[tokens.len() - 1];
    let mut methods = None;
    let mut host_tok: Option<(usize, &str)> = None;
    for &(off, tok) in &tokens[..tokens.len() - 1] {
        if tok.contains('/') {
            return Err(err(off, format!("{tok:?} is not a method list or a host")));
        }
        if tok.contains('.') {
            if host_tok.is_some() {
                return Err(err(off, "a rule names at most one host".into()));
            }
            host_tok = Some((off, tok));
        } else {
            if methods.is_some() || host_tok.is_some() {
                return Err(err(off, "METHODS must come first, once".into()));
            }
            methods = Some(parse_methods(tok).map_err(|m| err(off, m))?);
        }
    }
    let (pattern_off, pattern) = match pat_tok.find('/') {
        Some(0) => (pat_off, pat_tok),
        Some(i) => {
            if host_tok.is_some() {
                return Err(err(pat_off, "a rule names at most one host".into()));
            }
            host_tok = Some((pat_off, &pat_tok[..i]));
            (pat_off + i, &pat_tok[i..])
        }
        None => {
            return Err(err(
                pat_off,
                "the path pattern must start with '/' (for example /2010-04-01/Accounts/{AccountSid}/Messages*)".into(),
            ))
        }
    };
    let host = match host_tok {
        None => None,
        Some((off, name)) => Some(hosts.lookup(name).ok_or_else(|| {
            err(
                off,
                format!("host {name:?} is not in upstream.allowed_hosts"),
            )
        })?),
    };
    let (segments, tail) = parse_pattern(pattern).map_err(|(o, m)| err(pattern_off + o, m))?;
    Ok(Rule {
        text: text.into(),
        written: text.into(),
        params: Box::default(),
        effect,
        methods: methods.unwrap_or(MethodSet::ALL),
        host,
        segments,
        tail,
    })
}

/// Longest parameter name a condition may name.
const MAX_PARAM_NAME: usize = 64;

/// Parses a rule with its parameter conditions (the table form).
pub fn parse_rule_spec(spec: &RuleSpec, effect: Effect, hosts: &Hosts) -> Result<Rule, RuleError> {
    let mut rule = parse_rule(&spec.rule, effect, hosts)?;
    if spec.params.is_empty() {
        return Ok(rule);
    }
    let err = |message: String| RuleError {
        text: spec.rule.clone(),
        column: 1,
        message,
    };
    let mut params: Vec<ParamCondition> = Vec::with_capacity(spec.params.len());
    for (name, globs) in &spec.params {
        if name.is_empty()
            || name.len() > MAX_PARAM_NAME
            || name
                .bytes()
                .any(|b| matches!(b, b'=' | b'&' | b';') || !b.is_ascii_graphic())
        {
            return Err(err(format!(
                "params: {name:?} is not a parameter name (printable ASCII, no '=', '&' or ';', at most {MAX_PARAM_NAME} characters)"
            )));
        }
        if params.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
            return Err(err(format!(
                "params: {name:?} is listed twice (names match case-insensitively)"
            )));
        }
        if globs.is_empty() {
            return Err(err(format!(
                "params: {name:?} has no globs, so nothing would match; write [\"\"] to require it absent"
            )));
        }
        params.push(ParamCondition {
            name: name.as_str().into(),
            globs: globs.iter().map(|g| g.as_str().into()).collect(),
        });
    }
    let described: Vec<String> = params
        .iter()
        .map(|p| format!("{} in [{}]", p.name, p.globs.join(", ")))
        .collect();
    rule.text = format!("{} where {}", rule.written, described.join("; ")).into();
    rule.params = params.into_boxed_slice();
    Ok(rule)
}

fn parse_methods(tok: &str) -> Result<MethodSet, String> {
    if tok == "*" {
        return Ok(MethodSet::ALL);
    }
    let mut bits = 0u8;
    for name in tok.split(',') {
        let upper = name.to_ascii_uppercase();
        let Some(i) = METHODS.iter().position(|m| *m == upper) else {
            return Err(format!(
                "{name:?} is not a method the sidecar forwards ({})",
                METHODS.join(", ")
            ));
        };
        bits |= 1 << i;
    }
    Ok(MethodSet(bits))
}

/// Parses a path pattern into segment patterns; errors carry a byte offset into `pattern`.
fn parse_pattern(pattern: &str) -> Result<(Vec<SegmentPattern>, bool), (usize, String)> {
    let mut segments = Vec::new();
    let mut offset = 1;
    let body = &pattern[1..];
    let count = body.split('/').count();
    let mut tail = false;
    for (index, seg) in body.split('/').enumerate() {
        if seg.is_empty() {
            return Err((offset, "empty path segment ('//' or a trailing '/')".into()));
        }
        let parts = parse_segment(seg).map_err(|(o, m)| (offset + o, m))?;
        let is_last = index + 1 == count;
        if is_last && parts.last() == Some(&Part::Star) {
            tail = true;
        }
        if let [Part::Lit(l)] = parts.as_slice() {
            if &**l == "." || &**l == ".." {
                return Err((offset, "'.' and '..' segments never match".into()));
            }
        }
        segments.push(match parts.as_slice() {
            [Part::Lit(l)] => SegmentPattern::Literal(l.clone()),
            [Part::Star] | [Part::Param] => SegmentPattern::Any,
            [Part::AccountSid] => SegmentPattern::AccountSid,
            _ => SegmentPattern::Glob(parts.into_boxed_slice()),
        });
        offset += seg.len() + 1;
    }
    Ok((segments, tail))
}

/// Why `{name}` is refused: likely a typo (`{AcountSid}` would otherwise quietly match any
/// segment instead of only configured accounts), so say what it was probably meant to be.
fn unknown_placeholder(name: &str) -> String {
    let known = placeholder_names();
    let mut closest: Vec<&str> = known.to_vec();
    closest.sort_by_key(|k| edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase()));
    let suggest: Vec<String> = closest.iter().take(3).map(|k| format!("{{{k}}}")).collect();
    let common: Vec<String> = known.iter().take(6).map(|k| format!("{{{k}}}")).collect();
    format!(
        "{{{name}}} is not a placeholder Twilio's API paths use (did you mean {}?); the {} known \
         ones include {}…, and `*` matches any one segment",
        suggest.join(" or "),
        known.len(),
        common.join(", ")
    )
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

pub(super) fn parse_segment(seg: &str) -> Result<Vec<Part>, (usize, String)> {
    let bytes = seg.as_bytes();
    let mut parts = Vec::new();
    let mut lit: Vec<u8> = Vec::new();
    let mut i = 0;
    let flush = |lit: &mut Vec<u8>, parts: &mut Vec<Part>, at: usize| {
        if lit.is_empty() {
            return Ok(());
        }
        let s = String::from_utf8(std::mem::take(lit))
            .map_err(|_| (at, "percent-decoded literal is not UTF-8".to_string()))?;
        parts.push(Part::Lit(s.into()));
        Ok::<(), (usize, String)>(())
    };
    while i < bytes.len() {
        match bytes[i] {
            b'*' => {
                flush(&mut lit, &mut parts, i)?;
                if parts.last() == Some(&Part::Star) {
                    return Err((i, "'**' means nothing more than '*'".into()));
                }
                parts.push(Part::Star);
                i += 1;
            }
            b'{' => {
                flush(&mut lit, &mut parts, i)?;
                let Some(len) = seg[i + 1..].find('}') else {
                    return Err((i, "'{' without a closing '}'".into()));
                };
                let name = &seg[i + 1..i + 1 + len];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err((
                        i,
                        format!("{{{name}}} is not a placeholder name (letters, digits, '_')"),
                    ));
                }
                if matches!(
                    parts.last(),
                    Some(Part::Star | Part::Param | Part::AccountSid)
                ) {
                    return Err((i, "two wildcards in a row are ambiguous".into()));
                }
                if name != "AccountSid" && !placeholder_names().contains(&name) {
                    return Err((i, unknown_placeholder(name)));
                }
                parts.push(if name == "AccountSid" {
                    Part::AccountSid
                } else {
                    Part::Param
                });
                i += len + 2;
            }
            b'}' => return Err((i, "'}' without an opening '{'".into())),
            b'%' => {
                let decoded = seg
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or((i, "invalid percent-encoding".to_string()))?;
                if decoded == b'/' {
                    return Err((i, "an encoded '/' never matches".into()));
                }
                lit.push(decoded);
                i += 3;
            }
            b'?' | b'#' | b';' | b'\\' => {
                return Err((
                    i,
                    format!(
                        "{:?} never appears in a path the sidecar accepts",
                        bytes[i] as char
                    ),
                ))
            }
            b if b <= b' ' || b == 0x7f => return Err((i, "control character or space".into())),
            b => {
                lit.push(b);
                i += 1;
            }
        }
    }
    flush(&mut lit, &mut parts, bytes.len())?;
    if matches!(parts.as_slice(), [Part::Star, Part::Star]) {
        return Err((0, "'**' means nothing more than '*'".into()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        Hosts::new(["api.twilio.com", "verify.twilio.com"].iter().copied()).unwrap()
    }

    fn parse(s: &str) -> Result<Rule, RuleError> {
        parse_rule(s, Effect::Allow, &hosts())
    }

    #[test]
    fn forms() {
        let r = parse("/2010-04-01/Accounts/{AccountSid}/Messages*").unwrap();
        assert!(r.methods.is_all() && r.host.is_none() && r.tail);
        assert_eq!(r.segments.len(), 4);
        assert_eq!(r.segments[2], SegmentPattern::AccountSid);

        let r = parse("POST,get /2010-04-01/Accounts/{AccountSid}/Messages.json").unwrap();
        assert!(r
            .methods
            .contains_bit(MethodSet::bit(&Method::GET).unwrap()));
        assert!(!r
            .methods
            .contains_bit(MethodSet::bit(&Method::DELETE).unwrap()));
        assert!(!r.tail);

        let h = hosts();
        for s in [
            "verify.twilio.com /v2/Services/*/Verifications*",
            "verify.twilio.com/v2/Services/*/Verifications*",
            "* verify.twilio.com /v2/Services/*/Verifications*",
            "POST VERIFY.twilio.com/v2/Services/*/Verifications*",
        ] {
            let r = parse(s).expect(s);
            assert_eq!(r.host, h.lookup("verify.twilio.com"), "{s}");
            assert_eq!(r.segments[2], SegmentPattern::Any);
        }
        let r = parse("/v2/PhoneNumbers/%2B1*").unwrap();
        assert_eq!(
            r.segments[2],
            SegmentPattern::Glob(vec![Part::Lit("+1".into()), Part::Star].into())
        );
        assert_eq!(
            parse("GET verify.twilio.com/v2/*").unwrap().normal_form(&h),
            "GET verify.twilio.com/v2/*"
        );
    }

    #[test]
    fn errors_name_the_column() {
        let e = parse("POST /a//b").unwrap_err();
        assert_eq!(e.column, 9, "{e}");
        let e = parse("FETCH /a").unwrap_err();
        assert_eq!(e.column, 1);
        let e = parse("GET evil.example.com /a").unwrap_err();
        assert!(e.message.contains("allowed_hosts"), "{e}");
        assert_eq!(e.column, 5);
        for bad in [
            "",
            "Messages*",
            "/a/{Sid",
            "/a/Sid}",
            "/a/{}",
            "/a/**",
            "/a/%zz",
            "/a/%2F",
            "/a/../b",
            "/a;b",
            "GET POST /a",
            "GET api.twilio.com verify.twilio.com /a",
            "a b c d",
            "/a/{X}{Y}",
            "/a/{AcountSid}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn an_unknown_placeholder_names_the_likely_one() {
        let e = parse("/2010-04-01/Accounts/{AcountSid}/Messages.json").unwrap_err();
        assert!(e.to_string().contains("did you mean {AccountSid}"), "{e}");
        assert!(e.to_string().contains("{Sid}"), "{e}");
        for known in [
            "/v2/Services/{ServiceSid}/Verifications",
            "/v1/{Sid}",
            "/v2/PhoneNumbers/{PhoneNumber}",
        ] {
            assert!(parse(known).is_ok(), "{known}");
        }
    }

    #[test]
    fn segment_globs() {
        let sids: Vec<Box<str>> = vec!["AC1".into(), "AC22".into()];
        let (segs, _) = parse_pattern("/{AccountSid}.json").unwrap();
        assert!(segs[0].matches("AC1.json", &sids));
        assert!(segs[0].matches("AC22.json", &sids));
        assert!(!segs[0].matches("AC3.json", &sids));
        assert!(!segs[0].matches("ac1.json", &sids));
        let (segs, _) = parse_pattern("/ME*.json").unwrap();
        assert!(segs[0].matches("ME123.JSON", &sids));
        assert!(segs[0].matches("me.json", &sids));
        assert!(!segs[0].matches("ME123.xml", &sids));
        let (segs, _) = parse_pattern("/{Sid}.json").unwrap();
        assert!(!segs[0].matches(".json", &sids));
        assert!(segs[0].matches("x.json", &sids));
    }
}
