//! Which request and response headers cross the sidecar.
//!
//! Toward Twilio, secure by construction: only the headers Twilio's APIs use are forwarded —
//! content type, length and encoding, `Accept*`, `User-Agent`, `Twilio-*`/`X-Twilio-*`/
//! `I-Twilio-*` (idempotency) except the signatures the sidecar itself makes, the app's
//! `X-Request-Id`, and the names in `upstream.forward_headers`. Everything else is dropped, however it is spelled: the app's
//! own credentials, cookies, hop-by-hop headers, and the method/URL override headers some
//! servers honour (`X-HTTP-Method-Override`, `X_Original_URL`, `X-Envoy-Original-Path`…),
//! which would let a request be checked as one thing and executed as another.
//!
//! From Twilio, and on the webhook listener: hop-by-hop headers (and whatever `Connection`
//! lists) are dropped, everything else passes.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// Standard headers forwarded to Twilio (and the app's request id, which ties Twilio's logs
/// to the app's).
static FORWARDED_REQUEST_HEADERS: [HeaderName; 9] = [
    HeaderName::from_static("x-request-id"),
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_CHARSET,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
];

/// Dropped without being counted: what every request may carry and the sidecar replaces or
/// handles itself (credentials, framing, the connection).
static EXPECTED_DROPS: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether the app's header `name` is forwarded to Twilio.
fn forwarded(name: &HeaderName, extra: &[HeaderName]) -> bool {
    if FORWARDED_REQUEST_HEADERS.contains(name) || extra.contains(name) {
        return true;
    }
    // Header names are lower-case here.
    let n = name.as_str();
    (n.starts_with("twilio-") || n.starts_with("x-twilio-") || n.starts_with("i-twilio-"))
        && n != "twilio-client-validation"
        && n != "x-twilio-signature"
}

/// Hop-by-hop headers, dropped from Twilio's responses and from webhooks and their answers;
/// hyper frames the body itself. (A request's `TE` and `Proxy-Authorization` are hop-by-hop
/// too: the proxy drops them with the app's other stripped headers, the webhook listener with
/// [`strip_hop_by_hop_request`].)
static HOP_BY_HOP_HEADERS: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Keeps only the app's headers that are [`forwarded`] (`extra`: `upstream.forward_headers`).
/// Returns how many it dropped that are not among the [`EXPECTED_DROPS`], for the metric.
pub(super) fn strip_request_headers(headers: &mut HeaderMap, extra: &[HeaderName]) -> u64 {
    if lists_other_headers(headers) {
        // `Connection: user-agent` makes even a forwardable header this hop's only.
        remove_connection_listed(headers);
    }
    // One pass over the few headers the app sent, collecting what to drop.
    let mut doomed: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    let mut unexpected = 0;
    let mut overflow = false;
    for name in headers.keys() {
        if forwarded(name, extra) {
            continue;
        }
        if !EXPECTED_DROPS.contains(name) {
            unexpected += 1;
        }
        if n == doomed.len() {
            overflow = true;
        } else {
            doomed[n] = Some(name.clone());
            n += 1;
        }
    }
    for name in doomed.iter().take(n).flatten() {
        headers.remove(name);
    }
    if overflow {
        // Unusually many: a second pass over what is left.
        let rest: Vec<HeaderName> = headers
            .keys()
            .filter(|name| !forwarded(name, extra))
            .cloned()
            .collect();
        for name in &rest {
            headers.remove(name);
        }
    }
    unexpected
}

/// Removes hop-by-hop headers (and whatever `Connection` lists): from Twilio's responses, and
/// from webhooks and the app's answers to them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields, then a remove for each hop-by-hop name present (usually just
    // `Connection`): a lookup and remove for each name that might be there measured ~1,400
    // instructions a response. Names present are collected once each, so seven slots hold
    // all there can be.
    let mut present: [Option<HeaderName>; HOP_BY_HOP_HEADERS.len()] = Default::default();
    let mut n = 0;
    let mut lists_others = false;
    for (name, value) in headers.iter() {
        if !HOP_BY_HOP_HEADERS.contains(name) {
            continue;
        }
        lists_others |= name == header::CONNECTION && !is_bare_connection(value);
        if present[..n].iter().flatten().any(|seen| seen == name) {
            continue;
        }
        if let Some(slot) = present.get_mut(n) {
            *slot = Some(name.clone());
            n += 1;
        }
    }
    if lists_others {
        remove_connection_listed(headers);
    }
    for name in present.iter().flatten() {
        headers.remove(name);
    }
}

/// [`strip_hop_by_hop`] for a request: also `TE` and `Proxy-Authorization`.
pub(crate) fn strip_hop_by_hop_request(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::TE);
    headers.remove(header::PROXY_AUTHORIZATION);
}

/// Whether `Connection` holds anything beyond a bare `close` / `keep-alive` (what HTTP/1.1
/// peers nearly always send, and `Connection` itself is stripped anyway).
#[inline]
fn lists_other_headers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| !is_bare_connection(v))
}

/// A `Connection` value that lists no other header.
fn is_bare_connection(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// Removes the headers the message's `Connection` header lists (RFC 9110 §7.6.1: they are
/// for the next hop only). Out of line and only after [`lists_other_headers`]: parsing every
/// token of a plain `Connection: keep-alive` measured at several hundred instructions a
/// response.
#[cold]
#[inline(never)]
fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|name| HeaderName::try_from(name).ok())
        .collect();
    for name in &listed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map of `pairs`, in order, repeats appended.
    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn strips_credentials_hop_by_hop_and_overrides() {
        let mut h = fields(&[
            ("authorization", "Basic YXBwOmFwcA=="),
            ("proxy-authorization", "Basic eA=="),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/2010-04-01/Accounts/AC1/Keys.json"),
            ("x_http_method_override", "DELETE"),
            ("x-http_method-override", "DELETE"),
            ("x_original_url", "/x"),
            ("x-envoy-original-path", "/x"),
            ("x-forwarded-uri", "/x"),
            ("x-forwarded-method", "DELETE"),
            ("twilio-client-validation", "forged"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "twilio-python/9"),
            ("x-twilio-client", "python"),
            ("i-twilio-idempotency-token", "abc"),
            ("x-custom-tracing", "1"),
        ]);
        let extra = [HeaderName::from_static("x-custom-tracing")];
        let unexpected = strip_request_headers(&mut h, &extra);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "content-type",
                "i-twilio-idempotency-token",
                "user-agent",
                "x-custom-tracing",
                "x-twilio-client",
            ]
        );
        // Authorization, Proxy-Authorization and Connection are expected, and what Connection
        // lists goes as hop-by-hop; the other ten are counted.
        assert_eq!(unexpected, 10);
    }

    #[test]
    fn strips_hop_by_hop_from_twilios_response_and_keeps_the_rest() {
        let mut h = fields(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-edge-hop"),
            ("keep-alive", "timeout=5"),
            ("x-edge-hop", "1"),
            ("twilio-request-id", "RQ1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "twilio-request-id"]);

        // Every hop-by-hop name at once, some more than once, and a header listed only by a
        // later `Connection` field.
        let mut h = fields(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
            ("proxy-authenticate", "Basic"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("connection", "x-second-hop"),
            ("transfer-encoding", "gzip"),
            ("x-second-hop", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
