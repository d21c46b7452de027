//! Property test: any form body the parameter conditions accept, read again by a lax parser
//! (Python's `urllib.parse.parse_qsl` semantics, and its older habit of also splitting on
//! `;`), still satisfies the rule — whatever the attacker mixes of `+`, `%2B`, `%252B`,
//! `;`, `&`, `=`, case and repetition. So the server behind, parsing leniently, never sees a
//! destination the sidecar did not allow.

use http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;
use twilio_sidecar::gate::glob::glob;
use twilio_sidecar::gate::params::{BodyView, Params};
use twilio_sidecar::gate::policy::ParamCondition;

/// `parse_qsl(body, keep_blank_values=False)`: pieces split on `&` (and `;`), pieces
/// without `=` or with an empty value dropped, `+` a space, `%XX` decoded where valid and
/// left as it is where not, bytes that are not UTF-8 replaced.
fn parse_qsl_lax(body: &str) -> Vec<(String, String)> {
    let unquote = |s: &str| -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split(['&', ';'])
        .filter_map(|piece| {
            let (name, value) = piece.split_once('=')?;
            (!value.is_empty()).then(|| (unquote(name), unquote(value)))
        })
        .collect()
}

fn piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "To", "to", "TO", "T%6F", "%54o", "=", "&", ";", "+", "%2B", "%252B", "%2b", "1", "44",
        "882", "555", "%20", "%26", "%3D", "%3B", "Body", "x", "%", "%2", "%zz", "%C3%A9",
        "To=%2B1", "To=%2B44", "&To=", "&to=%2B", "Body=hi&",
    ])
    .prop_map(String::from)
}

/// Bodies the conditions accepted, so the test can tell it compared something.
static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn the_property_sees_accepted_bodies() {
    what_the_conditions_accept_a_lax_parser_reads_the_same();
    assert!(
        ACCEPTED.load(std::sync::atomic::Ordering::Relaxed) > 100,
        "too few accepted bodies to mean anything: {}",
        ACCEPTED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, .. ProptestConfig::default() })]

    #[test]
    fn what_the_conditions_accept_a_lax_parser_reads_the_same(pieces in prop::collection::vec(piece(), 1..14)) {
        let body = pieces.concat();
        let condition = ParamCondition { name: "To".into(), globs: vec![Box::from("+1*"), Box::from("+44*")].into() };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        let Ok(params) = Params::read(None, &headers, BodyView::Bytes(body.as_bytes())) else {
            return Ok(()); // refused as malformed: nothing to compare
        };
        if params.check(std::slice::from_ref(&condition), false).is_err() {
            return Ok(());
        }
        ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Accepted: every To a lax parser finds (in any case) is allowed.
        for (name, value) in parse_qsl_lax(&body) {
            if name.eq_ignore_ascii_case("To") {
                prop_assert!(
                    condition.globs.iter().any(|g| glob(g, &value)),
                    "body {body:?}: a lax parser reads To={value:?}"
                );
            }
        }
    }
}
