//! Canonical-or-refuse path handling: the one parser that turns a raw request path into the
//! percent-decoded segments the policy matches on.
//!
//! A path is accepted only when there is exactly one sensible reading of it; everything a server
//! somewhere might normalise differently is refused instead (README "Policy"): `.`/`..` segments raw or
//! encoded, empty segments, encoded `/` `\` `?` `#` `;`, raw `\` `;` `#`, control characters,
//! non-ASCII bytes, invalid percent-encoding and decoded bytes that are not UTF-8 (overlong
//! forms such as `%c0%af` included). Decoding happens once: `%252F` becomes the literal text
//! `%2F`. An accepted path is forwarded byte for byte as received; the decoded form is only for
//! matching. The query string is never part of it.

use std::borrow::Cow;

/// The deepest path the sidecar accepts. Twilio's deepest operation has 9 segments.
pub const MAX_SEGMENTS: usize = 32;
/// The longest raw path the sidecar accepts, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a path was refused; the text ends up in the 400 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty or does not start with '/'")]
    NotOriginForm,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("the path has an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment (raw or percent-encoded)")]
    DotSegment,
    #[error("the path contains {0}")]
    ForbiddenByte(&'static str),
    #[error("the path has an invalid percent-encoding")]
    BadPercentEncoding,
    #[error("the path has an encoded {0}")]
    ForbiddenEncoded(&'static str),
    #[error("the percent-decoded path is not valid UTF-8")]
    NotUtf8,
}

/// A path that passed the canonical check, with its decoded form for matching.
#[derive(Debug, Clone)]
pub struct CanonicalPath<'a> {
    raw: &'a str,
    decoded: Cow<'a, str>,
}

impl<'a> CanonicalPath<'a> {
    /// Checks `raw` (the path part of the request target, without query) and decodes it once.
    pub fn parse(raw: &'a str) -> Result<Self, PathError> {
        let bytes = raw.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err(PathError::NotOriginForm);
        }
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let mut has_percent = false;
        let mut i = 0;
        while i < bytes.len() {
            // Fast path: a byte that may appear raw (the common case for every byte).
            if RAW_OK[usize::from(bytes[i])] {
                i += 1;
                continue;
            }
            match bytes[i] {
                b'%' => {
                    let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                        (Some(&h), Some(&l)) => (hex(h), hex(l)),
                        _ => return Err(PathError::BadPercentEncoding),
                    };
                    let (Some(hi), Some(lo)) = (hi, lo) else {
                        return Err(PathError::BadPercentEncoding);
                    };
                    check_decoded(hi << 4 | lo)?;
                    has_percent = true;
                    i += 3;
                    continue;
                }
                b => check_raw(b)?,
            }
            i += 1;
        }

        let decoded = if has_percent {
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    // Validated above: two hex digits follow.
                    let hi = hex(bytes[i + 1]).unwrap_or(0);
                    let lo = hex(bytes[i + 2]).unwrap_or(0);
                    out.push(hi << 4 | lo);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            Cow::Owned(String::from_utf8(out).map_err(|_| PathError::NotUtf8)?)
        } else {
            Cow::Borrowed(raw)
        };

        // Segment checks run on the decoded form, so `%2e%2E` is the same `..` as `..`.
        // Decoding never creates a '/', so decoded segments line up with raw ones.
        let mut count = 0;
        for segment in Segments::of(&decoded) {
            count += 1;
            if count > MAX_SEGMENTS {
                return Err(PathError::TooManySegments);
            }
            match segment {
                "" => return Err(PathError::EmptySegment),
                "." | ".." => return Err(PathError::DotSegment),
                _ => {}
            }
        }
        Ok(CanonicalPath { raw, decoded })
    }

    /// The path exactly as received, for forwarding.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The decoded path, for matching and display.
    pub fn decoded(&self) -> &str {
        &self.decoded
    }

    /// Decoded segments, without the leading empty one.
    pub fn segments(&self) -> Segments<'_> {
        Segments::of(&self.decoded)
    }

    /// Decoded segments collected into a stack array, for matchers that need random access.
    pub fn segment_array(&self) -> SegmentArray<'_> {
        let mut array = SegmentArray {
            items: [""; MAX_SEGMENTS],
            len: 0,
        };
        for segment in self.segments() {
            // parse() capped the count at MAX_SEGMENTS.
            array.items[array.len] = segment;
            array.len += 1;
        }
        array
    }
}

/// The segments of a path that starts with '/', split with a plain byte loop: segments are a
/// few bytes long, too short for `str::split`'s memchr to pay for its setup.
#[derive(Debug, Clone)]
pub struct Segments<'p> {
    rest: Option<&'p str>,
}

impl<'p> Segments<'p> {
    fn of(path: &'p str) -> Self {
        Segments {
            rest: path.get(1..),
        }
    }
}

impl<'p> Iterator for Segments<'p> {
    type Item = &'p str;

    fn next(&mut self) -> Option<&'p str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(end) => {
                self.rest = rest.get(end + 1..);
                rest.get(..end)
            }
            None => self.rest.take(),
        }
    }
}

/// Up to [`MAX_SEGMENTS`] borrowed segments without a heap allocation.
#[derive(Debug, Clone, Copy)]
pub struct SegmentArray<'p> {
    items: [&'p str; MAX_SEGMENTS],
    len: usize,
}

impl<'p> SegmentArray<'p> {
    /// The segments as a slice.
    pub fn as_slice(&self) -> &[&'p str] {
        &self.items[..self.len]
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `RAW_OK[b]`: `b` may appear raw in a path (and is not '%'), so the parser can skip it with one
/// table lookup. Built from [`check_raw`], so the two can never disagree.
const RAW_OK: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b as u8 != b'%' && check_raw(b as u8).is_ok();
        b += 1;
    }
    table
};

/// Bytes that may not appear raw in a path: everything outside RFC 3986 `pchar` and `/`
/// (servers disagree on what to do with them), plus `;`, which some servers split on.
const fn check_raw(b: u8) -> Result<(), PathError> {
    match b {
        b'\\' => Err(PathError::ForbiddenByte("a backslash")),
        b';' => Err(PathError::ForbiddenByte(
            "';' (path parameters are not accepted)",
        )),
        b'#' => Err(PathError::ForbiddenByte("'#'")),
        b'?' => Err(PathError::ForbiddenByte("'?'")),
        0x00..=0x20 | 0x7f => Err(PathError::ForbiddenByte("a control character or space")),
        0x80..=0xff => Err(PathError::ForbiddenByte(
            "a raw non-ASCII byte (percent-encode it)",
        )),
        b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'}' | b'|' | b'[' | b']' => Err(
            PathError::ForbiddenByte("a character that must be percent-encoded in a path"),
        ),
        _ => Ok(()),
    }
}

/// Bytes that may not appear percent-encoded: each would be a delimiter to some server.
fn check_decoded(b: u8) -> Result<(), PathError> {
    match b {
        b'/' => Err(PathError::ForbiddenEncoded("'/' (%2F)")),
        b'\\' => Err(PathError::ForbiddenEncoded("backslash (%5C)")),
        b'?' => Err(PathError::ForbiddenEncoded("'?' (%3F)")),
        b'#' => Err(PathError::ForbiddenEncoded("'#' (%23)")),
        b';' => Err(PathError::ForbiddenEncoded("';' (%3B)")),
        0x00..=0x1f | 0x7f => Err(PathError::ForbiddenEncoded("control character")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_like_str_split() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "//",
            "/2010-04-01/Accounts/AC1/Messages.json",
            "/é/x",
        ] {
            let ours: Vec<&str> = Segments::of(p).collect();
            let std: Vec<&str> = p[1..].split('/').collect();
            assert_eq!(ours, std, "{p}");
        }
    }

    #[test]
    fn the_fast_path_table_agrees_with_check_raw() {
        for b in 0..=255u8 {
            assert_eq!(
                RAW_OK[usize::from(b)],
                b != b'%' && check_raw(b).is_ok(),
                "{b}"
            );
        }
    }

    fn refused(p: &str) -> PathError {
        CanonicalPath::parse(p).expect_err(p)
    }

    #[test]
    fn accepts_twilio_paths() {
        for p in [
            "/2010-04-01/Accounts/AC123/Messages.json",
            "/v2/PhoneNumbers/%2B15108675310",
            "/v1/Services/IS1/Documents/my%20doc",
            "/v1/Services/IS1/Documents/100%25done",
            "/v2/Services/VA1/Verifications",
        ] {
            CanonicalPath::parse(p).expect(p);
        }
        let p = CanonicalPath::parse("/v2/PhoneNumbers/%2B15108675310").unwrap();
        assert_eq!(p.decoded(), "/v2/PhoneNumbers/+15108675310");
        assert_eq!(p.raw(), "/v2/PhoneNumbers/%2B15108675310");
        assert_eq!(
            p.segment_array().as_slice(),
            &["v2", "PhoneNumbers", "+15108675310"]
        );
    }

    #[test]
    fn decodes_once() {
        let p = CanonicalPath::parse("/a/%252F/%252e%252e").unwrap();
        assert_eq!(p.decoded(), "/a/%2F/%2e%2e");
    }

    #[test]
    fn refuses_bypass_forms() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2E/b",
            "/a/%2e./b",
            "/a/%2e/b",
            "/..",
            "/a/..",
        ] {
            assert_eq!(refused(p), PathError::DotSegment, "{p}");
        }
        for p in ["//a", "/a//b", "/a/", "/"] {
            assert_eq!(refused(p), PathError::EmptySegment, "{p}");
        }
        for p in [
            "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/a%3Fb", "/a%23b", "/a%3bb", "/a%00b",
            "/a%0ab",
        ] {
            assert!(matches!(refused(p), PathError::ForbiddenEncoded(_)), "{p}");
        }
        for p in [
            "/a\\b", "/a;b", "/a..;/b", "/a#b", "/a\tb", "/a b", "/a\u{e9}", "/a\"b", "/a{b}",
            "/a|b", "/a^b", "/a`b", "/a<b>", "/a[0]",
        ] {
            assert!(matches!(refused(p), PathError::ForbiddenByte(_)), "{p}");
        }
        for p in ["/a%", "/a%2", "/a%zz", "/a%g0"] {
            assert_eq!(refused(p), PathError::BadPercentEncoding, "{p}");
        }
        for p in ["/%c0%af", "/%ff", "/%c0%ae%c0%ae"] {
            assert_eq!(refused(p), PathError::NotUtf8, "{p}");
        }
        assert_eq!(refused("a/b"), PathError::NotOriginForm);
        assert_eq!(refused(""), PathError::NotOriginForm);
        assert_eq!(refused("*"), PathError::NotOriginForm);
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(refused(&deep), PathError::TooManySegments);
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(refused(&long), PathError::TooLong);
    }
}
