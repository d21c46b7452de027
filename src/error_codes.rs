//! The sidecar's own error codes (794xx, 795xx; 796xx from the webhook listener): what each
//! means and what to do about it.
//!
//! One table, read by the responses (their `more_info` links to a page made from it), by the
//! admin listener's `/errors` pages and by a test that keeps the README's table in step; and
//! the JSON body every listener answers with. A leaf: it imports nothing of the crate.
//! Twilio's own codes (70051 for a permission a restricted key lacks) are documented by
//! Twilio and link there.

/// One code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: u32,
    pub status: u16,
    /// What happened, in a line.
    pub meaning: &'static str,
    /// What to do about it.
    pub remedy: &'static str,
}

/// Where Twilio documents its own codes.
pub const TWILIO_ERRORS_URL: &str = "https://www.twilio.com/docs/errors/";

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Every code the sidecar answers with itself, besides Twilio's 70051.
pub const CODES: &[ErrorCode] = &[
    ErrorCode {
        code: 79400,
        status: 400,
        meaning: "The request path is not canonical: a dot segment, an empty segment, an encoded \
                  '/', '\\\\', '?', '#' or ';', a raw '\\\\' or ';', a control character, invalid \
                  percent-encoding or bytes that are not UTF-8.",
        remedy: "Send the path exactly as Twilio's API documents it, percent-encoded once. The \
                 sidecar refuses paths that servers could read in more than one way rather than \
                 normalise them.",
    },
    ErrorCode {
        code: 79401,
        status: 400,
        meaning: "The request target or Host header is malformed or ambiguous: userinfo, a \
                  non-default port, an absolute-form target whose host disagrees with Host, a \
                  duplicated Host, a trailing dot.",
        remedy: "Send a plain request to the sidecar (origin form), or an absolute-form request \
                 whose host and Host header name the same Twilio host.",
    },
    ErrorCode {
        code: 79402,
        status: 400,
        meaning: "The request body could not be read: it broke off, or exceeded the length it \
                  announced.",
        remedy: "Retry; check the client's Content-Length and that it sends the whole body.",
    },
    ErrorCode {
        code: 79403,
        status: 403,
        meaning: "The request names a host that is not an allowed Twilio host. The sidecar is \
                  not an open proxy: it contacts only upstream.allowed_hosts.",
        remedy: "Use a Twilio product host. To reach a region or edge host \
                 (api.dublin.ie1.twilio.com), add it to upstream.allowed_hosts.",
    },
    ErrorCode {
        code: 79404,
        status: 403,
        meaning: "The account SID in the path (/2010-04-01/Accounts/{sid}/…) is not configured \
                  in the sidecar, so it holds no credential for it.",
        remedy: "Use a configured account, or add an [[accounts]] table for this one.",
    },
    ErrorCode {
        code: 79405,
        status: 405,
        meaning: "The method is not one the sidecar forwards: only GET, HEAD, POST, PUT, PATCH, \
                  DELETE and OPTIONS, in upper case; never CONNECT or TRACE.",
        remedy: "Use the method Twilio's API documents, spelled in upper case.",
    },
    ErrorCode {
        code: 79406,
        status: 404,
        meaning: "No endpoint of the sidecar's answers this path under /_sidecar/ (a prefix \
                  reserved for the sidecar, never sent to Twilio), or /_sidecar/access-tokens \
                  was asked for and no access_tokens table applies.",
        remedy: "Use POST /_sidecar/access-tokens, with [access_tokens] (or the client's \
                 access_tokens) configured.",
    },
    ErrorCode {
        code: 79407,
        status: 403,
        meaning: "The request looks like a web browser's: it carries Origin or Sec-Fetch-* \
                  (which no Twilio SDK sends), or a Host that is neither a Twilio host, an IP \
                  address, localhost nor one of listen.names (a DNS-rebinding page sends its \
                  own name). A web page the user visits must not be able to use the app's \
                  Twilio access.",
        remedy: "Call the sidecar from your server-side code, not from a browser. If apps reach \
                 the sidecar by a host name (a gateway's Service name), add it to listen.names.",
    },
    ErrorCode {
        code: 79408,
        status: 504,
        meaning: "The whole request took longer than limits.request_timeout.",
        remedy: "Retry; if it keeps happening, look at upstream latency \
                 (twilio_sidecar_upstream_duration_seconds) or raise limits.request_timeout.",
    },
    ErrorCode {
        code: 79409,
        status: 403,
        meaning: "The admin listener refused the request: its Host is neither an IP address, \
                  localhost nor one of listen.names (a DNS-rebinding page sends its own name), \
                  or a POST carries Origin or Sec-Fetch-Site (a web page).",
        remedy: "Call the admin port from curl, a probe or a scraper by IP address or \
                 localhost; if it is reached by a host name, add it to listen.names.",
    },
    ErrorCode {
        code: 79411,
        status: 415,
        meaning: "POST /reload was sent with a body or a form or text content type: it takes \
                  none, so a web page's form post cannot trigger it.",
        remedy: "Send POST /reload without a body (curl -X POST http://ADMIN/reload).",
    },
    ErrorCode {
        code: 79410,
        status: 400,
        meaning: "A rule with parameter conditions applies, and the request's parameters \
                  cannot be read one way only: invalid percent-encoding or non-UTF-8 text in \
                  the query or form body, or a raw ';' (which some servers split on).",
        remedy: "Encode the parameters as the Twilio SDKs do (application/x-www-form-urlencoded, \
                 UTF-8, ';' as %3B).",
    },
    ErrorCode {
        code: 79413,
        status: 413,
        meaning: "The request body is larger than limits.max_request_body; it never reached \
                  Twilio.",
        remedy: "Send a smaller body, or raise limits.max_request_body.",
    },
    ErrorCode {
        code: 79420,
        status: 400,
        meaning: "The access-token request is not valid: not JSON, an unknown field, or larger \
                  than 16 KiB.",
        remedy:
            "Send {\"identity\": \"…\", \"ttl\": 3600, \"grants\": {\"voice\": …, \"video\": …, \
                 \"chat\": …, \"sync\": …}} as JSON (README \"Access Tokens\").",
    },
    ErrorCode {
        code: 79429,
        status: 503,
        meaning: "The sidecar is overloaded: limits.max_concurrent_requests requests are in \
                  flight, so this one was shed at once rather than queued.",
        remedy: "Retry after the Retry-After delay; scale out, or look at upstream latency.",
    },
    ErrorCode {
        code: 79430,
        status: 503,
        meaning: "The request's account is at its max_concurrent requests to Twilio, and the \
                  request found upstream.max_queued already waiting, or waited longer than \
                  upstream.queue_timeout for a slot. It was not sent.",
        remedy: "Retry after the Retry-After delay. If it persists, the account's traffic \
                 exceeds its concurrency: raise max_concurrent if Twilio allows it, or look at \
                 twilio_sidecar_account_queue_wait_seconds and Twilio's latency.",
    },
    ErrorCode {
        code: 79431,
        status: 503,
        meaning: "A page of a list, whose paging links the sidecar rewrites, would take the \
                  pages it holds for apps past limits.max_rewrite_buffer: apps are reading \
                  earlier pages slowly, or not at all. Twilio answered; the page was dropped.",
        remedy: "Retry shortly. If apps read pages slowly by design, raise \
                 limits.max_rewrite_buffer (and the memory limit with it); apps that stop \
                 reading are cut off after limits.write_timeout.",
    },
    ErrorCode {
        code: 79500,
        status: 500,
        meaning: "The sidecar could not open a CONNECT tunnel: issuing the certificate for the \
                  host failed.",
        remedy: "Check the sidecar's log and its [intercept] CA (`twilio-sidecar validate`); \
                 retry.",
    },
    ErrorCode {
        code: 79501,
        status: 500,
        meaning: "The sidecar could not sign the request's PKCV validation token \
                  (Twilio-Client-Validation) for an account with pkcv configured; it was not \
                  sent.",
        remedy: "Check the sidecar's log and twilio_sidecar_pkcv_signatures_total; retry.",
    },
    ErrorCode {
        code: 79502,
        status: 502,
        meaning: "Twilio could not be reached: a connect, TLS (certificate verification \
                  included) or protocol error.",
        remedy: "Retry. If it persists, check network egress to Twilio on 443, and, for TLS \
                 errors, whether something intercepts the traffic \
                 (twilio_sidecar_upstream_errors_total by kind).",
    },
    ErrorCode {
        code: 79503,
        status: 503,
        meaning: "No usable credential: an OAuth2 account has no usable token because its token \
                  endpoint is failing.",
        remedy: "Retry after the Retry-After delay. Check the account's client credentials and \
                 twilio_sidecar_oauth_token_fetches_total; /readyz lists the account.",
    },
    ErrorCode {
        code: 79504,
        status: 504,
        meaning: "Twilio did not answer within upstream.request_timeout.",
        remedy: "Retry; Twilio or the network is slow. Raise upstream.request_timeout only if \
                 Twilio is known to need longer for this call.",
    },
    ErrorCode {
        code: 79600,
        status: 403,
        meaning: "A webhook on the webhook listener is not Twilio's: X-Twilio-Signature is \
                  missing, or does not match the request (URL, parameters or body hash) for \
                  the account's webhook_token. It was not forwarded to the app.",
        remedy: "If Twilio sent it: check that webhooks.public_url is the scheme://host[:port] \
                 (and path prefix) Twilio calls, and that the account's webhook_token is its \
                 current Auth Token (list the old and the new while rotating).",
    },
    ErrorCode {
        code: 79601,
        status: 403,
        meaning: "The webhook's account (its AccountSid, or the default account) has no \
                  webhook_token, so the sidecar cannot verify it.",
        remedy: "Add webhook_token = { file = \"…\" } to that [[accounts]] table.",
    },
    ErrorCode {
        code: 79602,
        status: 403,
        meaning: "The webhook cannot be verified as sent: a body that is neither a form nor \
                  covered by a bodySHA256 query parameter, or a signature algorithm the \
                  sidecar does not know.",
        remedy: "Twilio signs form posts, GETs and JSON bodies with bodySHA256; anything else \
                 is not from Twilio, or needs a newer twilio-sidecar.",
    },
    ErrorCode {
        code: 79610,
        status: 400,
        meaning: "The webhook is malformed: invalid percent-encoding or non-UTF-8 text in its \
                  form body or query, or a body that broke off.",
        remedy: "Twilio does not send these; look at what sent it.",
    },
    ErrorCode {
        code: 79613,
        status: 413,
        meaning: "The webhook body is larger than webhooks.max_body; it was not forwarded.",
        remedy: "Raise webhooks.max_body if Twilio legitimately sends bodies this large.",
    },
    ErrorCode {
        code: 79629,
        status: 503,
        meaning: "The webhook listener is at webhooks.max_concurrent (or [webhooks] was removed \
                  by a reload), so this webhook was shed.",
        remedy: "Twilio retries some webhooks; look at the app's latency \
                 (twilio_sidecar_webhook_app_duration_seconds) or raise \
                 webhooks.max_concurrent.",
    },
    ErrorCode {
        code: 79650,
        status: 502,
        meaning: "A verified webhook could not be delivered: the app at webhooks.forward_to \
                  refused the connection, broke it off, or answered with more than \
                  webhooks.max_body.",
        remedy: "Check that the app is running and listening on webhooks.forward_to.",
    },
    ErrorCode {
        code: 79654,
        status: 504,
        meaning: "The app did not answer a verified webhook within webhooks.timeout.",
        remedy: "Make the app answer faster (Twilio itself waits 15 s), or raise \
                 webhooks.timeout.",
    },
];

/// The entry for `code`, if it is one of the sidecar's.
pub fn lookup(code: u32) -> Option<&'static ErrorCode> {
    CODES.iter().find(|c| c.code == code)
}

/// `more_info` for a code: the sidecar's own page (`{docs}/{code}`) for its codes, Twilio's
/// for Twilio's.
pub fn more_info(code: u32, docs: &str) -> String {
    if lookup(code).is_some() {
        format!("{}/{code}", docs.trim_end_matches('/'))
    } else {
        format!("{TWILIO_ERRORS_URL}{code}")
    }
}

/// A response in Twilio's error shape, JSON, with `Retry-After` on a 503 (transient by
/// nature: it tells clients and SDK retry logic when to come back).
pub fn twilio_error_response(
    code: u32,
    message: &str,
    status: StatusCode,
    docs: &str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(twilio_error_body(code, message, status, docs)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Serialises Twilio's error shape.
pub fn twilio_error_body(code: u32, message: &str, status: StatusCode, docs: &str) -> Bytes {
    let value = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": more_info(code, docs),
        "status": status.as_u16(),
    });
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_links_go_to_the_right_place() {
        let mut codes: Vec<u32> = CODES.iter().map(|c| c.code).collect();
        codes.dedup();
        assert_eq!(codes.len(), CODES.len());
        assert_eq!(
            more_info(79403, "http://127.0.0.1:9090/errors/"),
            "http://127.0.0.1:9090/errors/79403"
        );
        assert_eq!(
            more_info(70051, "http://127.0.0.1:9090/errors"),
            "https://www.twilio.com/docs/errors/70051"
        );
    }

    #[test]
    fn the_readme_table_lists_every_code() {
        let readme = include_str!("../README.md");
        for c in CODES {
            let row = format!("| {} | {} |", c.code, c.status);
            assert!(readme.contains(&row), "README lacks the row for {}", c.code);
        }
    }
}
