//! Matching one decoded path segment against a segment pattern's parts (literals, `*`,
//! `{Name}`, `{AccountSid}`) in time bounded by segment × pattern length, whatever the rule.

use super::rule::Part;

#[inline]
pub(super) fn glob(parts: &[Part], s: &str, sids: &[Box<str>]) -> bool {
    // Most segments a pattern is tried on fail on its leading literal (`Keys*` against
    // `Messages`): that check first, inline.
    if let Some(Part::Lit(l)) = parts.first() {
        let s = s.as_bytes();
        if s.len() < l.len() || !s[..l.len()].eq_ignore_ascii_case(l.as_bytes()) {
            return false;
        }
        // `Prefix*`, the commonest glob of all, is then decided.
        if let [_, Part::Star] = parts {
            return true;
        }
    }
    glob_counting(parts, s.as_bytes(), sids, &mut 0)
}

/// Matches `s` against a segment's parts in time bounded by `len(s) × len(pattern)` (times the
/// configured SIDs), whatever the rule: `*` and `{Name}` only set a least gap before the
/// next run of literal parts, so each run is placed at its earliest fit and never revisited —
/// the earliest end leaves the most room for what follows. The last run, when the pattern does
/// not end in a wildcard, must end exactly at the end. `steps` counts byte comparisons (for
/// the complexity tests).
fn glob_counting(parts: &[Part], s: &[u8], sids: &[Box<str>], steps: &mut u64) -> bool {
    let wild = |p: &Part| matches!(p, Part::Star | Part::Param);
    // The run before the first wildcard is anchored at the start; with no wildcard it is the
    // whole segment.
    let Some(mut i) = parts.iter().position(wild) else {
        return ends_exactly(parts, s, 0, sids, steps);
    };
    let Some(mut pos) = earliest_end_at(&parts[..i], s, 0, sids, steps) else {
        return false;
    };
    loop {
        // `parts[i]` is a wildcard: `*` needs nothing, `{Name}` one byte or more.
        pos += usize::from(parts[i] == Part::Param);
        if pos > s.len() {
            return false;
        }
        let start = i + 1;
        let Some(next) = parts[start..].iter().position(wild).map(|n| start + n) else {
            // The last run: it must end at the end (an empty run, after a trailing
            // wildcard, always does). Usually its length is fixed (`{Sid}.json`): one place
            // to try.
            let run = &parts[start..];
            return match fixed_len(run, sids) {
                Some(len) => {
                    s.len() >= pos + len && ends_exactly(run, s, s.len() - len, sids, steps)
                }
                None => (pos..=s.len()).any(|at| ends_exactly(run, s, at, sids, steps)),
            };
        };
        let run = &parts[start..next];
        match (pos..=s.len()).find_map(|at| earliest_end_at(run, s, at, sids, steps)) {
            Some(end) => pos = end,
            None => return false,
        }
        i = next;
    }
}

/// The length of whatever `run` matches, when there is only one: literals, and SIDs when all
/// configured ones are as long (they are: 34 characters).
fn fixed_len(run: &[Part], sids: &[Box<str>]) -> Option<usize> {
    run.iter().try_fold(0, |total, part| match part {
        Part::Lit(l) => Some(total + l.len()),
        Part::AccountSid => match sids.split_first() {
            Some((first, rest)) if rest.iter().all(|s| s.len() == first.len()) => {
                Some(total + first.len())
            }
            _ => None,
        },
        Part::Star | Part::Param => None,
    })
}

/// The earliest end of `run` (literals and `{AccountSid}`s) placed at `at`, if it fits.
fn earliest_end_at(
    run: &[Part],
    s: &[u8],
    at: usize,
    sids: &[Box<str>],
    steps: &mut u64,
) -> Option<usize> {
    // The common runs: nothing, or one literal.
    match run {
        [] => return Some(at),
        [Part::Lit(l)] => {
            *steps += l.len() as u64 + 1;
            let end = at + l.len();
            return (end <= s.len() && s[at..end].eq_ignore_ascii_case(l.as_bytes()))
                .then_some(end);
        }
        _ => {}
    }
    let mut best = None;
    run_ends(run, s, at, sids, steps, &mut |end| {
        best = Some(best.map_or(end, |b: usize| b.min(end)));
        false
    });
    best
}

/// True when `run` placed at `at` can end exactly at the end of `s`.
fn ends_exactly(run: &[Part], s: &[u8], at: usize, sids: &[Box<str>], steps: &mut u64) -> bool {
    match run {
        [] => at == s.len(),
        [Part::Lit(l)] => {
            *steps += l.len() as u64 + 1;
            s.len() - at == l.len() && s[at..].eq_ignore_ascii_case(l.as_bytes())
        }
        _ => run_ends(run, s, at, sids, steps, &mut |end| end == s.len()),
    }
}

/// Calls `found` with each position where `run` placed at `at` can end, until it returns
/// true. Runs hold no wildcard, so only `{AccountSid}` alternatives branch.
fn run_ends(
    run: &[Part],
    s: &[u8],
    at: usize,
    sids: &[Box<str>],
    steps: &mut u64,
    found: &mut impl FnMut(usize) -> bool,
) -> bool {
    let Some((part, rest)) = run.split_first() else {
        return found(at);
    };
    let fits = |text: &[u8], steps: &mut u64| {
        *steps += text.len() as u64 + 1;
        s.len() - at >= text.len() && s[at..at + text.len()].eq_ignore_ascii_case(text)
    };
    match part {
        Part::Lit(l) => {
            fits(l.as_bytes(), steps) && run_ends(rest, s, at + l.len(), sids, steps, found)
        }
        Part::AccountSid => sids.iter().any(|sid| {
            // SIDs are compared exactly (they are ASCII; case matters).
            *steps += sid.len() as u64 + 1;
            s[at..].starts_with(sid.as_bytes())
                && run_ends(rest, s, at + sid.len(), sids, steps, found)
        }),
        // Runs are split at wildcards: none is ever inside one.
        Part::Star | Part::Param => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::policy::rule::parse_segment;

    /// The matcher before it was made linear: plain backtracking, exponential in the number
    /// of wildcards on adversarial segments. The reference for equivalence.
    fn backtracking(parts: &[Part], s: &str, sids: &[Box<str>]) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return s.is_empty();
        };
        match first {
            Part::Lit(l) => {
                s.len() >= l.len()
                    && s.as_bytes()[..l.len()].eq_ignore_ascii_case(l.as_bytes())
                    && s.get(l.len()..)
                        .is_some_and(|tail| backtracking(rest, tail, sids))
            }
            Part::Star => {
                (0..=s.len()).any(|i| s.get(i..).is_some_and(|t| backtracking(rest, t, sids)))
            }
            Part::Param => {
                (1..=s.len()).any(|i| s.get(i..).is_some_and(|t| backtracking(rest, t, sids)))
            }
            Part::AccountSid => sids.iter().any(|sid| {
                s.strip_prefix(&**sid)
                    .is_some_and(|tail| backtracking(rest, tail, sids))
            }),
        }
    }

    fn steps(pattern: &str, s: &str, sids: &[Box<str>]) -> (bool, u64) {
        let parts = parse_segment(pattern).unwrap();
        let mut steps = 0;
        let matched = glob_counting(&parts, s.as_bytes(), sids, &mut steps);
        (matched, steps)
    }

    /// The work allowed for one segment: proportional to segment × pattern length (and the
    /// SIDs an `{AccountSid}` tries), with a small constant.
    fn bound(pattern: &str, s: &str, sids: &[Box<str>]) -> u64 {
        let alternatives = 1 + sids.iter().map(|s| s.len()).sum::<usize>();
        4 * (s.len() as u64 + 2) * (pattern.len() as u64 + 2) * alternatives as u64
    }

    #[test]
    fn the_reviews_pathological_rules_are_linear() {
        let sids: Vec<Box<str>> = vec![format!("AC{}", "1".repeat(32)).into()];
        for (pattern, segment) in [
            ("{Sid}-{Key}-{Day}.json", "-".repeat(1_700)),
            ("*.*.*.json", ".".repeat(3_000)),
            ("*a*a*a*a*a*a*a*b", "a".repeat(5_000)),
            ("{Sid}x{Key}x{Day}x{Sid}x{Key}xy", "x".repeat(5_000)),
            ("*-{AccountSid}-*-{AccountSid}-*.json", "-AC".repeat(2_000)),
        ] {
            let (matched, n) = steps(pattern, &segment, &sids);
            assert!(!matched, "{pattern}");
            assert!(
                n <= bound(pattern, &segment, &sids),
                "{pattern}: {n} steps for {} bytes",
                segment.len()
            );
        }
    }

    fn part_text() -> impl Strategy<Value = String> {
        // Few letters, so that literals recur in segments and wildcards have choices.
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("-"),
                Just("."),
                Just("*"),
                Just("{Sid}"),
                Just("{AccountSid}"),
            ],
            1..8,
        )
        .prop_map(|parts| {
            let mut out = String::new();
            for p in parts {
                // `**` is refused by the parser.
                if !(p == "*" && out.ends_with('*')) {
                    out.push_str(p);
                }
            }
            out
        })
    }

    fn segment_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("A"),
                Just("b"),
                Just("-"),
                Just("."),
                Just("é"),
                Just("AC11")
            ],
            0..max,
        )
        .prop_map(|v| v.concat())
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn linear_matching_decides_as_backtracking_does(
            pattern in part_text(),
            segment in segment_text(12),
        ) {
            let sids: Vec<Box<str>> = vec!["AC11".into(), "AC1".into()];
            // Only what the rule parser accepts (it refuses adjacent wildcards).
            let Ok(parts) = parse_segment(&pattern) else { return Ok(()) };
            let want = backtracking(&parts, &segment, &sids);
            prop_assert_eq!(glob(&parts, &segment, &sids), want, "{} against {:?}", pattern, segment);
            prop_assert_eq!(
                glob_counting(&parts, segment.as_bytes(), &sids, &mut 0),
                want,
                "{} against {:?}", pattern, segment
            );
        }

        #[test]
        fn matching_work_is_bounded_on_adversarial_segments(
            pattern in part_text(),
            segment in segment_text(600),
        ) {
            let sids: Vec<Box<str>> = vec!["AC11".into(), "AC1".into()];
            prop_assume!(parse_segment(&pattern).is_ok());
            let (_, n) = steps(&pattern, &segment, &sids);
            prop_assert!(n <= bound(&pattern, &segment, &sids), "{} steps", n);
        }
    }
}
