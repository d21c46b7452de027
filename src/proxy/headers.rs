//! Which request and response headers never cross the sidecar: the app's own credentials,
//! hop-by-hop headers (and whatever `Connection` lists), and the method/URL override headers
//! some servers honour, which would let a request be checked as one thing and executed as
//! another.

use http::header::{self, HeaderName};
use http::HeaderMap;

/// Headers an app may not pass to Twilio.
static STRIPPED_REQUEST_HEADERS: [HeaderName; 21] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::FORWARDED,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-prefix"),
];

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

/// Removes from the app's request everything in [`STRIPPED_REQUEST_HEADERS`] and whatever its
/// `Connection` header lists.
pub(super) fn strip_request_headers(headers: &mut HeaderMap) {
    if lists_other_headers(headers) {
        remove_connection_listed(headers);
    }
    // One pass over the few headers the app sent, rather than a lookup per name we strip.
    let mut doomed: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    for name in headers.keys() {
        if STRIPPED_REQUEST_HEADERS.contains(name) {
            if n == doomed.len() {
                // Unusually many: remove every stripped name the slow way.
                for name in STRIPPED_REQUEST_HEADERS.iter() {
                    headers.remove(name);
                }
                return;
            }
            doomed[n] = Some(name.clone());
            n += 1;
        }
    }
    for name in doomed.iter().take(n).flatten() {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers (and whatever `Connection` lists): from Twilio's responses, and
/// from webhooks and the app's answers to them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if lists_other_headers(headers) {
        remove_connection_listed(headers);
    }
    for name in HOP_BY_HOP_HEADERS.iter() {
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
    headers.get_all(header::CONNECTION).iter().any(|v| {
        let v = v.as_bytes();
        !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"))
    })
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
    use http::HeaderValue;

    #[test]
    fn strips_credentials_hop_by_hop_and_overrides() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Basic YXBwOmFwcA=="),
            ("proxy-authorization", "Basic eA=="),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/2010-04-01/Accounts/AC1/Keys.json"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "twilio-python/9"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "user-agent"]);
    }

    #[test]
    fn strips_hop_by_hop_from_twilios_response_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-edge-hop"),
            ("keep-alive", "timeout=5"),
            ("x-edge-hop", "1"),
            ("twilio-request-id", "RQ1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "twilio-request-id"]);
    }
}
