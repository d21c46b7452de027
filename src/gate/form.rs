//! `application/x-www-form-urlencoded` decoding, strict: the bodies Twilio's SDKs send and
//! the webhooks Twilio signs, and the query strings of both. `+` is a space and `%XX` a byte;
//! a `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded, are an
//! error rather than something to guess at, since whatever is checked here must read the same
//! way to the server behind.

use std::borrow::Cow;

/// Why form data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("invalid percent-encoding in {0}")]
    BadPercent(&'static str),
    #[error("{0} is not valid UTF-8 once decoded")]
    NotUtf8(&'static str),
}

/// One decoded `name=value` pair, borrowing from the input where nothing needed decoding.
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The `name=value` pairs of `input` in order, decoded; empty pieces (`a=1&&b=2`) are
/// skipped, a piece without `=` has an empty value.
pub fn parse(input: &[u8]) -> Result<Vec<Pair<'_>>, FormError> {
    let mut pairs = Vec::new();
    for piece in input.split(|b| *b == b'&') {
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(at) => (&piece[..at], &piece[at + 1..]),
            None => (piece, &piece[piece.len()..]),
        };
        pairs.push((decode(name, "a name")?, decode(value, "a value")?));
    }
    Ok(pairs)
}

/// One name or value, decoded.
pub fn decode<'a>(raw: &'a [u8], what: &'static str) -> Result<Cow<'a, str>, FormError> {
    if !raw.iter().any(|b| matches!(b, b'%' | b'+')) {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| FormError::NotUtf8(what));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(FormError::BadPercent(what)),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::NotUtf8(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(input: &str) -> Result<Vec<(String, String)>, FormError> {
        parse(input.as_bytes()).map(|p| {
            p.into_iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect()
        })
    }

    #[test]
    fn decodes_plus_percent_and_utf8() {
        assert_eq!(
            owned("To=%2B15558675310&Body=hello+w%C3%B6rld&&Flag&Empty=").unwrap(),
            [
                ("To", "+15558675310"),
                ("Body", "hello wörld"),
                ("Flag", ""),
                ("Empty", "")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(owned("a=b=c").unwrap(), [("a".into(), "b=c".into())]);
    }

    #[test]
    fn refuses_what_servers_would_read_differently() {
        assert_eq!(owned("a=%zz"), Err(FormError::BadPercent("a value")));
        assert_eq!(owned("a=%4"), Err(FormError::BadPercent("a value")));
        assert_eq!(owned("%ff=1"), Err(FormError::NotUtf8("a name")));
        assert!(parse(b"a=\xff").is_err());
    }
}
