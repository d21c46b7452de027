//! The chunked transfer coding of Twilio's responses (RFC 9112 §7.1), decoded strictly:
//! hexadecimal sizes that fit in a `u64`, CRLF line ends only, bounded extensions and trailer
//! section. Anything else is a framing error, and the connection is not reused — a lenient
//! decoder is how a proxy ends up disagreeing with its peer about where a response ends.

use bytes::{Bytes, BytesMut};

use super::Http1Error;

/// Longest chunk extension, and longest trailer section, accepted (bytes). Twilio sends
/// neither; the bound keeps a misbehaving peer from holding the decoder in a loop forever.
const MAX_EXTENSION: usize = 1024;
const MAX_TRAILERS: usize = 8 * 1024;

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: an extension, skipped up to the CR; `len` bytes so far.
    Extension {
        size: u64,
        len: usize,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data {
        remaining: u64,
    },
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk's size line: trailer fields, each ending in CRLF, then an empty
    /// line. `at_line_start` is true at the start of a line; `len` counts the section.
    Trailers {
        at_line_start: bool,
        len: usize,
    },
    /// A CR seen in the trailer section; `empty` if it ended an empty line (the end).
    TrailerLf {
        empty: bool,
        len: usize,
    },
    Done,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes, taken from the front of the buffer.
    Data(Bytes),
    /// The buffer ran out before the next data or the end.
    NeedMore,
    /// The last chunk and the trailer section have been read.
    End,
}

/// A chunked body's decoder; feed it the connection's read buffer.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedDecoder {
    /// Consumes control bytes from the front of `buf` and returns the next data, the end, or
    /// `NeedMore` once `buf` is empty. Trailer fields are read and dropped (the sidecar never
    /// forwards trailers).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Http1Error> {
        let mut used = 0;
        let result = loop {
            if let State::Data { remaining } = self.state {
                if used > 0 {
                    let _ = buf.split_to(used);
                    used = 0;
                }
                if buf.is_empty() {
                    break Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == State::Done {
                break Ok(Decoded::End);
            }
            let Some(&byte) = buf.get(used) else {
                break Ok(Decoded::NeedMore);
            };
            used += 1;
            self.state = match self.step(byte) {
                Ok(next) => next,
                Err(e) => break Err(e),
            };
        };
        let _ = buf.split_to(used);
        result
    }

    /// The state after `byte`, for every state but `Data` and `Done`.
    fn step(&self, byte: u8) -> Result<State, Http1Error> {
        let bad = |what: &'static str| Err(Http1Error::Framing(what));
        Ok(match self.state {
            State::Size { size, digits } => match hex(byte) {
                Some(d) if digits < 16 => State::Size {
                    size: size << 4 | u64::from(d),
                    digits: digits + 1,
                },
                Some(_) => return bad("chunk size longer than 16 hex digits"),
                None if digits == 0 => return bad("chunk size missing"),
                None => match byte {
                    b'\r' => State::SizeLf { size },
                    b';' | b' ' | b'\t' => State::Extension { size, len: 1 },
                    _ => return bad("invalid byte after chunk size"),
                },
            },
            State::Extension { size, len } => match byte {
                b'\r' => State::SizeLf { size },
                _ if len >= MAX_EXTENSION => return bad("chunk extension too long"),
                0..=8 | 10..=31 | 127 => return bad("control byte in chunk extension"),
                _ => State::Extension { size, len: len + 1 },
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::Trailers {
                    at_line_start: true,
                    len: 0,
                },
                b'\n' => State::Data { remaining: size },
                _ => return bad("chunk size line not ended by CRLF"),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return bad("chunk data not followed by CRLF"),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return bad("chunk data not followed by CRLF"),
            },
            State::Trailers { at_line_start, len } => match byte {
                _ if len >= MAX_TRAILERS => return bad("trailer section too long"),
                b'\r' => State::TrailerLf {
                    empty: at_line_start,
                    len: len + 1,
                },
                0..=8 | 10..=31 | 127 => return bad("control byte in trailer section"),
                _ => State::Trailers {
                    at_line_start: false,
                    len: len + 1,
                },
            },
            State::TrailerLf { empty, len } => match byte {
                b'\n' if empty => State::Done,
                b'\n' => State::Trailers {
                    at_line_start: true,
                    len: len + 1,
                },
                _ => return bad("trailer line not ended by CRLF"),
            },
            State::Data { .. } | State::Done => return bad("chunked decoder misused"),
        })
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; the body, or the first error.
    fn decode_in_pieces(wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), Http1Error> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End => return Ok((body, buf.len() + wire.len() - fed)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        return Err(Http1Error::Framing("ran out"));
                    }
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_at_every_split() {
        let wire = b"5\r\nhello\r\n1;name=\"v\"\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for step in 1..=wire.len() {
            let (body, left) = decode_in_pieces(wire, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(left, 0);
        }
    }

    #[test]
    fn stops_at_the_end_and_leaves_what_follows() {
        let (body, left) = decode_in_pieces(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1", 64).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(left, 8);
    }

    #[test]
    fn upper_case_and_leading_zero_sizes() {
        let (body, _) = decode_in_pieces(b"00B\r\nhello world\r\n000\r\n\r\n", 3).unwrap();
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn refuses_malformed_codings() {
        for wire in [
            &b"\r\n"[..],                    // no size
            b"g\r\n",                        // not hex
            b"-1\r\n",                       // sign
            b"5\nhello\r\n0\r\n\r\n",        // bare LF after size
            b"5\r\nhelloX\r\n0\r\n\r\n",     // data longer than its size
            b"5\r\nhello\n0\r\n\r\n",        // bare LF after data
            b"11111111111111111\r\n",        // 17 hex digits
            b"0\r\nx: 1\n\r\n",              // bare LF in trailers
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside an extension
            b"0\r\n\r\r",                    // CR not followed by LF
        ] {
            assert!(
                matches!(decode_in_pieces(wire, 1), Err(Http1Error::Framing(w)) if w != "ran out"),
                "{:?} should be refused",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn largest_size_is_accepted_without_overflow() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ab"))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::NeedMore);
    }

    #[test]
    fn bounds_extensions_and_trailers() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_EXTENSION + 1));
        long_ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(decode_in_pieces(&long_ext, 512).is_err());

        let mut long_trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 8 + 1 {
            long_trailers.extend_from_slice(b"x-a: 1\r\n");
        }
        long_trailers.extend_from_slice(b"\r\n");
        assert!(decode_in_pieces(&long_trailers, 512).is_err());
    }
}
