//! The parameters a request carries, read for rules with parameter conditions, treated as the
//! adversarial parsing problem the path is: decoded exactly once, strictly, or not at all.
//!
//! - The query string, and a body that is `application/x-www-form-urlencoded` (UTF-8), are
//!   decoded as forms ([`crate::gate::form`]): `+` is a space, `%XX` a byte, once —
//!   `%252B` is the text `%2B`, never `+`. Invalid percent-encoding, text that is not UTF-8
//!   or a raw `;` (which some servers take as a separator) is a malformed request: 400.
//! - A JSON object body gives its top-level fields: strings as they are, anything else as its
//!   JSON text; a repeated key keeps every occurrence.
//! - Anything else cannot be inspected: a body larger than `policy.max_inspected_body`, a
//!   body whose `Content-Type` is neither (or is missing, repeated, or names another
//!   charset), JSON that does not parse. Then no condition holds: an allow rule with
//!   conditions does not match, and a deny rule with conditions does (failing closed).
//!
//! Names compare ASCII case-insensitively, so every spelling of `To` is checked; for an allow
//! rule every occurrence of a name, in the query and the body alike, must match, for a deny
//! rule any one matching is enough; an absent name is the empty string.

use std::borrow::Cow;

use http::{header, HeaderMap};

use crate::gate::form::{self, FormError, Pair};
use crate::gate::policy::rule::ParamCondition;

/// Why a request's parameters are malformed (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("the {0} is not valid form encoding: {1}")]
    Form(&'static str, FormError),
    #[error("the {0} has a raw ';', which servers split parameters on differently; percent-encode it as %3B")]
    RawSemicolon(&'static str),
}

/// What the body of a request is, for reading its parameters.
#[derive(Debug, Clone, Copy)]
pub enum BodyView<'a> {
    /// All of it.
    Bytes(&'a [u8]),
    /// Larger than `policy.max_inspected_body`, so not read for this.
    TooLarge,
}

/// A request's parameters, or why they cannot be inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params<'a> {
    /// Decoded name/value pairs from the query, then the body, in order.
    Read(Vec<Pair<'a>>),
    /// The body could not be inspected: conditions cannot be shown to hold.
    Uninspectable(&'static str),
}

/// Which condition a request's parameters do not meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// The condition at this index (a value, or the absent parameter, matches no glob).
    Condition(usize),
    /// The parameters could not be inspected.
    Uninspectable,
}

impl<'a> Params<'a> {
    /// Reads the parameters of a request with this query (without `?`), headers and body.
    pub fn read(
        query: Option<&'a str>,
        headers: &HeaderMap,
        body: BodyView<'a>,
    ) -> Result<Params<'a>, ParamsError> {
        let mut pairs = match query {
            Some(q) => strict_form(q.as_bytes(), "query string")?,
            None => Vec::new(),
        };
        let body = match body {
            BodyView::Bytes(b) => b,
            BodyView::TooLarge => {
                return Ok(Params::Uninspectable(
                    "the body is larger than policy.max_inspected_body",
                ))
            }
        };
        if body.is_empty() {
            return Ok(Params::Read(pairs));
        }
        let mut types = headers.get_all(header::CONTENT_TYPE).iter();
        let (Some(content_type), None) = (types.next(), types.next()) else {
            return Ok(Params::Uninspectable(
                "the body has no Content-Type, or more than one",
            ));
        };
        match BodyKind::of(content_type.as_bytes()) {
            BodyKind::Form => pairs.extend(strict_form(body, "form body")?),
            BodyKind::Json => match json_fields(body) {
                Some(fields) => pairs.extend(fields),
                None => return Ok(Params::Uninspectable("the JSON body is not an object")),
            },
            BodyKind::Other => {
                return Ok(Params::Uninspectable(
                    "the body is neither a UTF-8 form nor JSON",
                ))
            }
        }
        Ok(Params::Read(pairs))
    }

    /// Parameters given as `NAME=VALUE` pairs, already decoded (`check --param`).
    pub fn given(pairs: impl IntoIterator<Item = (String, String)>) -> Params<'static> {
        Params::Read(
            pairs
                .into_iter()
                .map(|(n, v)| (Cow::Owned(n), Cow::Owned(v)))
                .collect(),
        )
    }

    /// Whether every condition holds; otherwise the first that does not. For an allow rule
    /// (`any` false) a condition holds when *every* value of the parameter matches; for a
    /// deny rule (`any` true) when *any* does — so a repeated parameter can neither slip a
    /// value past an allow rule nor hide one from a deny rule. An absent parameter is `""`.
    pub fn check(&self, conditions: &[ParamCondition], any: bool) -> Result<(), Unmet> {
        let Params::Read(pairs) = self else {
            return Err(Unmet::Uninspectable);
        };
        for (i, condition) in conditions.iter().enumerate() {
            let mut values = pairs
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(&condition.name))
                .map(|(_, value)| value)
                .peekable();
            let holds = if values.peek().is_none() {
                condition.admits("")
            } else if any {
                values.any(|v| condition.admits(v))
            } else {
                values.all(|v| condition.admits(v))
            };
            if !holds {
                return Err(Unmet::Condition(i));
            }
        }
        Ok(())
    }
}

/// A form, strictly: what [`form::parse`] refuses, and a raw `;`.
fn strict_form<'a>(bytes: &'a [u8], what: &'static str) -> Result<Vec<Pair<'a>>, ParamsError> {
    if bytes.contains(&b';') {
        return Err(ParamsError::RawSemicolon(what));
    }
    form::parse(bytes).map_err(|e| ParamsError::Form(what, e))
}

enum BodyKind {
    Form,
    Json,
    Other,
}

impl BodyKind {
    /// `application/x-www-form-urlencoded` or `application/json` (or `…+json`), with no
    /// charset but UTF-8.
    fn of(content_type: &[u8]) -> BodyKind {
        let Ok(text) = std::str::from_utf8(content_type) else {
            return BodyKind::Other;
        };
        let mut parts = text.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name.trim().eq_ignore_ascii_case("charset") {
                let value = value.trim().trim_matches('"');
                if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") {
                    return BodyKind::Other;
                }
            }
        }
        match essence.as_str() {
            "application/x-www-form-urlencoded" => BodyKind::Form,
            "application/json" => BodyKind::Json,
            e if e.starts_with("application/") && e.ends_with("+json") => BodyKind::Json,
            _ => BodyKind::Other,
        }
    }
}

/// A JSON object's top-level fields in order, repeated keys included; `None` for anything
/// else.
fn json_fields(body: &[u8]) -> Option<Vec<Pair<'static>>> {
    struct Fields(Vec<Pair<'static>>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Fields, A::Error> {
                    let mut out = Vec::new();
                    while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                        let value = match value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        out.push((Cow::Owned(name), Cow::Owned(value)));
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Fields>(body).ok().map(|f| f.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(content_type: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for ct in content_type {
            h.append(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    fn cond(name: &str, globs: &[&str]) -> ParamCondition {
        ParamCondition {
            name: name.into(),
            globs: globs.iter().map(|g| Box::from(*g)).collect(),
        }
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    fn check(
        query: Option<&str>,
        ct: &[&'static str],
        body: &str,
        c: &[ParamCondition],
    ) -> Result<(), Unmet> {
        Params::read(query, &headers(ct), BodyView::Bytes(body.as_bytes()))
            .unwrap()
            .check(c, false)
    }

    #[test]
    fn every_occurrence_in_every_spelling_must_match() {
        let to = [cond("To", &["+1*", "+44*"])];
        assert_eq!(
            check(None, &[FORM], "To=%2B15551234567&Body=hi", &to),
            Ok(())
        );
        assert_eq!(
            check(None, &[FORM], "to=+15551234567", &to),
            Err(Unmet::Condition(0)),
            "'+' is a space"
        );
        assert_eq!(
            check(None, &[FORM], "To=%252B1555", &to),
            Err(Unmet::Condition(0)),
            "decoded once"
        );
        assert_eq!(
            check(None, &[FORM], "To=%2B1555&TO=%2B882", &to),
            Err(Unmet::Condition(0))
        );
        assert_eq!(
            check(Some("To=%2B882"), &[FORM], "To=%2B1555", &to),
            Err(Unmet::Condition(0))
        );
        assert_eq!(
            check(None, &[FORM], "T%6F=%2B882", &to),
            Err(Unmet::Condition(0)),
            "encoded name"
        );
        assert_eq!(
            check(None, &[FORM], "Body=x", &to),
            Err(Unmet::Condition(0)),
            "absent is empty"
        );
        let optional = [cond("StatusCallback", &["", "https://hooks.example.com/*"])];
        assert_eq!(check(None, &[FORM], "Body=x", &optional), Ok(()));
        assert_eq!(
            check(
                None,
                &[FORM],
                "StatusCallback=https%3A%2F%2Fevil.example%2Fx",
                &optional
            ),
            Err(Unmet::Condition(0))
        );
    }

    #[test]
    fn a_deny_condition_holds_when_any_occurrence_matches() {
        let premium = [cond("To", &["+1900*"])];
        let h = headers(&[FORM]);
        let p = Params::read(
            None,
            &h,
            BodyView::Bytes(b"To=%2B15551234567&To=%2B19005550000"),
        )
        .unwrap();
        assert_eq!(p.check(&premium, true), Ok(()));
        assert_eq!(p.check(&premium, false), Err(Unmet::Condition(0)));
    }

    #[test]
    fn json_bodies_give_their_top_level_fields() {
        let to = [cond("To", &["+1*"])];
        let ct = &["application/json; charset=utf-8"];
        assert_eq!(check(None, ct, r#"{"To":"+1555","Body":"x"}"#, &to), Ok(()));
        assert_eq!(
            check(None, ct, r#"{"To":"+1555","To":"+882"}"#, &to),
            Err(Unmet::Condition(0))
        );
        assert_eq!(
            check(None, ct, r#"{"To":["+1555"]}"#, &to),
            Err(Unmet::Condition(0))
        );
        assert_eq!(check(None, ct, r#"["To"]"#, &to), Err(Unmet::Uninspectable));
        assert_eq!(check(None, ct, "not json", &to), Err(Unmet::Uninspectable));
    }

    #[test]
    fn what_cannot_be_read_the_same_way_twice_is_uninspectable_or_malformed() {
        let to = [cond("To", &["*"])];
        assert_eq!(
            check(None, &["text/plain"], "To=%2B1555", &to),
            Err(Unmet::Uninspectable)
        );
        assert_eq!(
            check(None, &[], "To=%2B1555", &to),
            Err(Unmet::Uninspectable)
        );
        assert_eq!(
            check(None, &[FORM, FORM], "To=%2B1555", &to),
            Err(Unmet::Uninspectable)
        );
        assert_eq!(
            check(
                None,
                &["application/x-www-form-urlencoded; charset=iso-8859-1"],
                "To=1",
                &to
            ),
            Err(Unmet::Uninspectable)
        );
        let too_large = Params::read(None, &headers(&[FORM]), BodyView::TooLarge).unwrap();
        assert_eq!(too_large.check(&to, false), Err(Unmet::Uninspectable));
        let h = headers(&[FORM]);
        assert!(matches!(
            Params::read(None, &h, BodyView::Bytes(b"To=%2B1;To=%2B882")),
            Err(ParamsError::RawSemicolon("form body"))
        ));
        assert!(matches!(
            Params::read(Some("To=%zz"), &h, BodyView::Bytes(b"")),
            Err(ParamsError::Form("query string", _))
        ));
        assert!(Params::read(None, &h, BodyView::Bytes(b"To=%FF")).is_err());
    }
}
