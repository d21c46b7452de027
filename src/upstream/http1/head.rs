//! Message heads: the request head written to Twilio, and Twilio's response head read back
//! with how its body is framed (RFC 9112 §6.3).
//!
//! Framing is decided strictly, because a proxy that reads a response's length differently
//! from its peer is how responses get smuggled onto the wrong request: `Transfer-Encoding`
//! must be exactly `chunked`, `Content-Length` digits only (repeats must agree), and a
//! response carrying both is refused rather than guessed at.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};

use super::chunked::ChunkedDecoder;
use super::Http1Error;
use crate::ascii::push_decimal;

/// Most header fields in a response head, as hyper's default.
const MAX_HEADERS: usize = 100;
/// Longest response head accepted (bytes).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// How a response body ends.
#[derive(Debug, Clone)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304), or the body has been read.
    Empty,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Neither header: the body runs until Twilio closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another request once this response has been read.
    pub(crate) keep_alive: bool,
}

/// Parses a response head from the front of `buf`, taking it off when complete. `None`: the
/// head is not complete yet. An informational (1xx) response is returned like any other; the
/// caller skips it.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, Http1Error> {
    // The head is taken off whole first, so its header values can share its bytes (one
    // allocation for the head, not one per header) and are parsed only once.
    let Some(len) = head_len(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(Http1Error::HeadTooLarge);
        }
        return Ok(None);
    };
    if len > MAX_HEAD {
        return Err(Http1Error::HeadTooLarge);
    }
    let head: Bytes = buf.split_to(len).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        &head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        Ok(_) => {
            return Err(Http1Error::Framing(
                "response head does not end where it should",
            ))
        }
        Err(e) => return Err(Http1Error::Parse(e)),
    }
    let code = response.code.unwrap_or(0);
    let minor = response.version.unwrap_or(1);
    let status = StatusCode::from_u16(code).map_err(|_| Http1Error::Framing("bad status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version == Version::HTTP_10;
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Http1Error::Framing("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| Http1Error::Framing("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = content_length(part.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return Err(Http1Error::Framing("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked`, once: another coding (or chunked twice) would leave the body's
            // end to guesswork.
            if chunked
                || !value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")
            {
                return Err(Http1Error::Framing("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                if token.trim_ascii().eq_ignore_ascii_case(b"close") {
                    close = true;
                }
            }
        }
        headers.append(name, value);
    }

    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        Framing::Empty
    } else if chunked {
        if length.is_some() {
            return Err(Http1Error::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(Http1Error::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        Framing::Chunked(ChunkedDecoder::default())
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Http1Error::Framing(
            "101 Switching Protocols without an upgrade asked",
        ));
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive: !close,
    }))
}

/// The length of the head at the front of `buf` — through the empty line that ends it — once
/// it has all arrived. Lines may end in CRLF or a bare LF (as httparse reads them); header
/// values cannot hold an LF, so the first empty line is the end.
fn head_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    // memchr: a vector search per line, not a byte at a time.
    while let Some(lf) = memchr::memchr(b'\n', &buf[at..]) {
        let next = at + lf + 1;
        match buf.get(next..next + 2) {
            Some([b'\r', b'\n']) => return Some(next + 2),
            Some([b'\n', _]) => return Some(next + 1),
            None if buf.get(next) == Some(&b'\n') => return Some(next + 1),
            _ => at = next,
        }
    }
    None
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
fn content_length(digits: &[u8]) -> Result<u64, Http1Error> {
    let bad = Http1Error::Framing("bad Content-Length");
    if digits.is_empty() {
        return Err(bad);
    }
    digits.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Http1Error::Framing("Content-Length too large")),
        _ => Err(Http1Error::Framing("bad Content-Length")),
    })
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// `Content-Length: n` (or no header, for an empty body on a method that takes none).
    Length(u64),
    Chunked,
}

/// Appends the request head: origin-form target, `Host`, the request's headers except the
/// ones this hop frames itself, and the body's framing header. The `http` types have already
/// refused CR, LF and NUL in every part, so nothing written here can split the head.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &HeaderValue,
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Length(0) if !takes_body(method) => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Methods whose empty body is still announced (`Content-Length: 0`); servers answer a bare
/// POST with 411.
fn takes_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Appends a chunk-size line for `n` bytes.
pub(crate) fn push_chunk_size(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &str, method: Method) -> Result<Option<ResponseHead>, Http1Error> {
        parse_response(&mut BytesMut::from(wire.as_bytes()), &method)
    }

    fn framing_of(wire: &str) -> Result<Framing, Http1Error> {
        parse(wire, Method::GET).map(|h| h.expect("complete head").framing)
    }

    #[test]
    fn reads_status_headers_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nSet-Cookie: a\r\nset-cookie: b\r\nContent-Length: 2\r\n\r\n{}"[..],
        );
        let head = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(matches!(head.framing, Framing::Length(2)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        let mut long = "HTTP/1.1 200 OK\r\nx-a: ".to_string();
        long.push_str(&"a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(&long, Method::GET),
            Err(Http1Error::HeadTooLarge)
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", Method::GET),
            Err(Http1Error::Parse(_))
        ));
    }

    #[test]
    fn a_head_is_complete_only_at_its_empty_line_however_it_arrives() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok",
        ] {
            let end = wire.len() - 2;
            let mut buf = BytesMut::new();
            for (i, byte) in wire.iter().enumerate() {
                buf.extend_from_slice(&[*byte]);
                let parsed = parse_response(&mut buf, &Method::GET).unwrap();
                assert_eq!(parsed.is_some(), i + 1 == end, "after {} bytes", i + 1);
                if let Some(head) = parsed {
                    assert_eq!(head.headers["x-a"], "b");
                    assert!(buf.is_empty());
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert!(matches!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked(_))
        ));
        assert!(matches!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        ));
        assert!(matches!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n"),
            Ok(Framing::UntilClose)
        ));
        for no_body in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert!(
                matches!(framing_of(no_body), Ok(Framing::Empty)),
                "{no_body}"
            );
        }
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD);
        assert!(matches!(head.unwrap().unwrap().framing, Framing::Empty));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for wire in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                matches!(framing_of(wire), Err(Http1Error::Framing(_))),
                "{wire:?} should be refused"
            );
        }
    }

    #[test]
    fn keep_alive_only_when_nothing_says_otherwise() {
        let alive = |wire: &str| parse(wire, Method::GET).unwrap().unwrap().keep_alive;
        assert!(alive("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!alive("HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn request_head_frames_the_body_itself() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("host", HeaderValue::from_static("evil.example"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        let host = HeaderValue::from_static("api.twilio.com");
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            "/2010-04-01/Accounts/AC1/Messages.json?a=b",
            &host,
            &headers,
            RequestFraming::Length(12),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /2010-04-01/Accounts/AC1/Messages.json?a=b HTTP/1.1\r\nhost: api.twilio.com\r\n\
             content-type: text/plain\r\ncontent-length: 12\r\n\r\n"
        );

        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::GET,
            "/",
            &host,
            &HeaderMap::new(),
            RequestFraming::Length(0),
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: api.twilio.com\r\n\r\n");
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            "/",
            &host,
            &HeaderMap::new(),
            RequestFraming::Length(0),
        );
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::PUT,
            "/",
            &host,
            &HeaderMap::new(),
            RequestFraming::Chunked,
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn numbers_are_written_like_format() {
        for n in [0, 1, 9, 10, 255, 4096, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            let mut out = Vec::new();
            push_chunk_size(&mut out, n);
            assert_eq!(out, format!("{n:x}\r\n").as_bytes());
        }
    }
}
