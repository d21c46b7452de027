//! `*` globs over text, as parameter conditions and Access Token policies write them: `*`
//! matches any run of characters (none included), everything else itself, case-sensitively.
//! Linear in practice: one backtrack point, no recursion, no allocation.

/// True when `s` matches `pattern`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            resume = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((star, matched)) = resume {
            pi = star + 1;
            si = matched + 1;
            resume = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("user-*", "user-123", true),
            ("user-*", "user-", true),
            ("user-*", "admin-1", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("+1*", "+15558675310", true),
            ("+1*", "+4415558675310", false),
            ("+1*", "1+1", false),
            (
                "https://hooks.example.com/*",
                "https://hooks.example.com.evil/x",
                false,
            ),
            ("MG*", "mg123", false),
        ] {
            assert_eq!(glob(p, s), want, "{p} {s}");
        }
    }
}
