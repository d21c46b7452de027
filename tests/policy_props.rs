//! Property tests: the compiled trie matcher agrees with a small, obviously-correct reference
//! matcher, and nothing the parser accepts and the policy allows hides a dot segment or a
//! separator after decoding.

use http::Method;
use proptest::prelude::*;
use twilio_sidecar::gate::policy::{Mode, Policy};
use twilio_sidecar::gate::request_path::CanonicalPath;
use twilio_sidecar::gate::route::Hosts;

const SID: &str = "AC00000000000000000000000000000001";
const OTHER_SID: &str = "AC00000000000000000000000000000002";
const HOSTS: [&str; 3] = ["api.twilio.com", "verify.twilio.com", "lookups.twilio.com"];
const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "PUT"];

/// A rule in parts, so the reference can read it without the real parser.
#[derive(Debug, Clone)]
struct RuleSpec {
    methods: Vec<&'static str>,
    host: Option<&'static str>,
    pattern: String,
}

impl RuleSpec {
    fn text(&self) -> String {
        let methods = if self.methods.is_empty() {
            "*".to_string()
        } else {
            self.methods.join(",")
        };
        match self.host {
            Some(h) => format!("{methods} {h}{}", self.pattern),
            None => format!("{methods} {}", self.pattern),
        }
    }
}

/// Reference semantics, straight from the rule language's definition, on the decoded path
/// string: `*` matches within a segment, a final `*` matches the rest of the path,
/// `{AccountSid}` one configured SID, `{Name}` one or more characters of one segment, literals
/// ASCII case-insensitively (percent-decoded).
fn reference_match(pattern: &str, path: &str) -> bool {
    let p = decode(pattern);
    glob(p.as_bytes(), path.as_bytes())
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    if p[0] == b'*' {
        if p.len() == 1 {
            return true; // final star: the rest of the path
        }
        // within one segment: any run without '/'
        return (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(&p[1..], &s[i..]));
    }
    if p[0] == b'{' {
        let end = p.iter().position(|&c| c == b'}').unwrap();
        let name = &p[1..end];
        let rest = &p[end + 1..];
        if name == b"AccountSid" {
            return [SID]
                .iter()
                .any(|sid| s.starts_with(sid.as_bytes()) && glob(rest, &s[sid.len()..]));
        }
        return (1..=s.len())
            .take_while(|&i| s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..]));
    }
    !s.is_empty() && p[0].eq_ignore_ascii_case(&s[0]) && glob(&p[1..], &s[1..])
}

fn reference_decide(rules: &[(RuleSpec, bool)], method: &str, host: &str, decoded: &str) -> bool {
    let hit = |allow: bool| {
        rules.iter().filter(|(_, a)| *a == allow).any(|(r, _)| {
            (r.methods.is_empty() || r.methods.contains(&method))
                && r.host.is_none_or(|h| h == host)
                && reference_match(&r.pattern, decoded)
        })
    };
    hit(true) && !hit(false)
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2010-04-01".to_string()),
        Just("Accounts".to_string()),
        Just("Messages".to_string()),
        Just("Messages.json".to_string()),
        Just("Keys".to_string()),
        Just("v2".to_string()),
        Just("Services".to_string()),
        Just("a".to_string()),
        Just("%2B1".to_string()),
        Just("*".to_string()),
        Just("{AccountSid}".to_string()),
        Just("{Sid}".to_string()),
        Just("{Sid}.json".to_string()),
        Just("ME*".to_string()),
        Just("*.json".to_string()),
        Just("Messages*".to_string()),
        Just("{AccountSid}.json".to_string()),
    ]
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    (
        proptest::sample::subsequence(METHODS.to_vec(), 0..3),
        proptest::option::of(proptest::sample::select(HOSTS.to_vec())),
        proptest::collection::vec(segment(), 1..5),
    )
        .prop_filter("'**' is not a pattern", |(_, _, segs)| {
            !segs.join("/").contains("**")
                && !segs
                    .iter()
                    .any(|s| s.contains("}{") || s.contains("*{") || s.contains("}*"))
        })
        .prop_map(|(methods, host, segs)| RuleSpec {
            methods,
            host,
            pattern: format!("/{}", segs.join("/")),
        })
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2010-04-01".to_string()),
        Just("accounts".to_string()),
        Just("ACCOUNTS".to_string()),
        Just(SID.to_string()),
        Just(OTHER_SID.to_string()),
        Just(format!("{SID}.json")),
        Just("Messages".to_string()),
        Just("messages.json".to_string()),
        Just("SM1.json".to_string()),
        Just("Keys".to_string()),
        Just("ME1.json".to_string()),
        Just("me.json".to_string()),
        Just("%2B15".to_string()),
        Just("+15".to_string()),
        Just("%2b1".to_string()),
        Just("v2".to_string()),
        Just("Services".to_string()),
        Just("a".to_string()),
        Just(".json".to_string()),
        Just("x%20y".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_matcher_agrees_with_the_reference(
        allow in proptest::collection::vec(rule(), 0..8),
        deny in proptest::collection::vec(rule(), 0..4),
        method in proptest::sample::select(METHODS.to_vec()),
        host in proptest::sample::select(HOSTS.to_vec()),
        segs in proptest::collection::vec(path_segment(), 1..6),
    ) {
        let hosts = Hosts::new(HOSTS.iter().copied()).unwrap();
        let allow_text: Vec<String> = allow.iter().map(RuleSpec::text).collect();
        let deny_text: Vec<String> = deny.iter().map(RuleSpec::text).collect();
        let policy = Policy::compile(
            Mode::Enforce,
            allow_text.iter().map(String::as_str),
            deny_text.iter().map(String::as_str),
            &hosts,
            [SID],
        ).unwrap();
        let raw = format!("/{}", segs.join("/"));
        let path = CanonicalPath::parse(&raw).unwrap();
        let got = policy.decide(&Method::from_bytes(method.as_bytes()).unwrap(), hosts.lookup(host).unwrap(), path.segment_array().as_slice()).forward;
        let rules: Vec<(RuleSpec, bool)> = allow.into_iter().map(|r| (r, true)).chain(deny.into_iter().map(|r| (r, false))).collect();
        let want = reference_decide(&rules, method, host, path.decoded());
        prop_assert_eq!(got, want, "{} {} {} with rules {:?}", method, host, raw, rules.iter().map(|(r, a)| (r.text(), *a)).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_allowed_hides_a_dot_segment_or_separator(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("/"), Just("."), Just(".."), Just("%2e"), Just("%2E"), Just("%2f"), Just("%2F"),
                Just("%5c"), Just("\\"), Just("%25"), Just("%"), Just("a"), Just("%252e"), Just(";"),
                Just("%3b"), Just("%00"), Just("%c0%ae"), Just("%c0%af"), Just("b"), Just("%2"),
            ],
            1..12,
        ),
    ) {
        let raw = format!("/{}", parts.concat());
        let hosts = Hosts::new(HOSTS.iter().copied()).unwrap();
        let policy = Policy::compile(Mode::Enforce, ["/*"], [], &hosts, [SID]).unwrap();
        if let Ok(path) = CanonicalPath::parse(&raw) {
            let allowed = policy.decide(&Method::GET, hosts.lookup("api.twilio.com").unwrap(), path.segment_array().as_slice()).forward;
            prop_assert!(allowed);
            let decoded = path.decoded();
            prop_assert_eq!(decoded.split('/').count(), raw.split('/').count(), "a separator appeared after decoding: {}", raw);
            for seg in decoded[1..].split('/') {
                prop_assert!(seg != "." && seg != ".." && !seg.is_empty(), "dot or empty segment in {}", raw);
                prop_assert!(!seg.contains('\\') && !seg.contains(';') && !seg.contains('\0'), "separator-like byte in {}", raw);
            }
        }
    }
}
