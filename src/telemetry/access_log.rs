//! The access log: one line per request under the `twilio_sidecar::access` target, as the
//! proxy's `finish` describes it in an [`AccessLine`].
//!
//! A line is built from its typed fields in a per-thread buffer and handed to the log writer,
//! byte for byte what tracing-subscriber's default text (`Full`, no colours) or flattened JSON
//! format writes for the same `info!` event (the tests hold it to that). The log filter still decides
//! whether it is written: `--log-level` or `TWILIO_SIDECAR_LOG` (say,
//! `info,twilio_sidecar::access=off`) treat it as that event.
//!
//! Why not the event itself: the default formatters cost ~21,000 (text) and ~26,000 (JSON)
//! instructions a line, and even a custom `FormatEvent` cost ~4,800 (callgrind, one worker):
//! the macro's value set, the subscriber's dispatch, and a dynamic `Visit` call and a name
//! check per field. That was a tenth of a whole request. Here each field is appended as bytes
//! under a name known at compile time; a string is copied whole when nothing in it needs
//! escaping, and escaped by the formatters' own rules when something does.
//!
//! Until [`install`] is called (unit tests, library use) a line is an ordinary `info!` event.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::log_writer::LogWriter;
use super::LogFormat;
use crate::ascii::push_decimal;

/// The access log's target.
pub const ACCESS_TARGET: &str = "twilio_sidecar::access";

/// One request's line, in the order its fields are written. Nothing here may be a secret:
/// the proxy fills it with names, ids and the path, never a query string, body or header
/// value other than the two request ids.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub client: &'a str,
    pub rule: &'a str,
    pub decision: &'a str,
    pub account: &'a str,
    pub status: u16,
    /// Written as `latency_ms`, in whole microseconds.
    pub latency: Duration,
    pub twilio_request_id: &'a str,
    pub identity: &'a str,
    pub retries_429: u8,
}

/// Where lines go once installed, and in which format.
struct Direct {
    writer: LogWriter,
    format: LogFormat,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// From now on access lines go straight to `writer`, in `format` (`telemetry::init`, with the
/// subscriber's own writer and format). Only the first call counts.
pub(super) fn install(writer: LogWriter, format: LogFormat) {
    let _ = DIRECT.set(Direct { writer, format });
}

thread_local! {
    /// The line being built, kept for the thread's next one.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// `YYYY-MM-DDTHH:MM:SS.` for the Unix second in `.0`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// A field's name as it comes before its value, in each format: one copy per field rather
/// than one per separator and name.
#[derive(Clone, Copy)]
struct Name {
    /// ` name=` (the space is left out for the first field).
    text: &'static str,
    /// `,"name":`.
    json: &'static str,
}

macro_rules! name {
    ($name:literal) => {
        Name {
            text: concat!(" ", $name, "="),
            json: concat!(",\"", $name, "\":"),
        }
    };
}

/// Writes the line `make` builds, if the log filter lets an `info` event of [`ACCESS_TARGET`]
/// through; with access lines filtered out it is never built.
pub fn log<'a>(make: impl FnOnce() -> AccessLine<'a>) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    let line = make();
    let Some(direct) = DIRECT.get() else {
        return line.event();
    };
    LINE.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => direct.write(&mut buf, &line),
        Err(_) => direct.write(&mut Vec::new(), &line),
    });
}

/// Milliseconds to the microsecond (`48.232`, not `48.232476000000005`): the nearest double to
/// a whole number of microseconds prints as exactly that many decimals.
fn latency_ms(latency: Duration) -> f64 {
    latency.as_micros() as f64 / 1000.0
}

impl AccessLine<'_> {
    /// The line as the `tracing` event it stands for.
    fn event(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id,
            method = %self.method,
            host = self.host,
            path = self.path,
            client = self.client,
            rule = self.rule,
            decision = self.decision,
            account = self.account,
            status = self.status,
            latency_ms = latency_ms(self.latency),
            twilio_request_id = self.twilio_request_id,
            identity = self.identity,
            retries_429 = self.retries_429,
        );
    }

    /// Appends the whole line, newline included, as `event` would be formatted at `now`.
    fn render(&self, out: &mut Vec<u8>, now: SystemTime, format: LogFormat) {
        let mut line = Fields {
            out,
            format,
            first: true,
        };
        line.open(now);
        line.string(name!("request_id"), self.request_id);
        line.display(name!("method"), self.method);
        line.string(name!("host"), self.host);
        line.string(name!("path"), self.path);
        line.string(name!("client"), self.client);
        line.string(name!("rule"), self.rule);
        line.string(name!("decision"), self.decision);
        line.string(name!("account"), self.account);
        line.number(name!("status"), u64::from(self.status));
        line.millis(name!("latency_ms"), self.latency);
        line.string(name!("twilio_request_id"), self.twilio_request_id);
        line.string(name!("identity"), self.identity);
        line.number(name!("retries_429"), u64::from(self.retries_429));
        line.close();
    }
}

impl Direct {
    fn write(&self, buf: &mut Vec<u8>, line: &AccessLine<'_>) {
        buf.clear();
        line.render(buf, SystemTime::now(), self.format);
        self.writer.append(buf);
    }
}

/// A line being written: what surrounds the fields, and each field as the default
/// formatters write it (`name=value` in text, `,"name":value` in JSON).
struct Fields<'o> {
    out: &'o mut Vec<u8>,
    format: LogFormat,
    first: bool,
}

impl Fields<'_> {
    /// Timestamp, level and (text) target.
    fn open(&mut self, now: SystemTime) {
        match self.format {
            LogFormat::Text => {
                timestamp(self.out, now);
                self.out.extend_from_slice(b"  INFO ");
                self.out.extend_from_slice(ACCESS_TARGET.as_bytes());
                self.out.extend_from_slice(b": ");
            }
            LogFormat::Json => {
                self.out.extend_from_slice(b"{\"timestamp\":\"");
                timestamp(self.out, now);
                self.out.extend_from_slice(b"\",\"level\":\"INFO\"");
            }
        }
    }

    /// (JSON) the target, last; the newline.
    fn close(&mut self) {
        if self.format == LogFormat::Json {
            self.out.extend_from_slice(b",\"target\":\"");
            self.out.extend_from_slice(ACCESS_TARGET.as_bytes());
            self.out.extend_from_slice(b"\"}");
        }
        self.out.push(b'\n');
    }

    fn name(&mut self, name: Name) {
        let lead = match self.format {
            // The first field has no space before it.
            LogFormat::Text if std::mem::take(&mut self.first) => &name.text[1..],
            LogFormat::Text => name.text,
            LogFormat::Json => name.json,
        };
        self.out.extend_from_slice(lead.as_bytes());
    }

    /// A string: `{:?}` in text (quoted, escaped), a JSON string in JSON.
    fn string(&mut self, name: Name, value: &str) {
        self.name(name);
        if needs_no_escape(value.as_bytes()) {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
            return;
        }
        // Writing to a Vec cannot fail.
        let _ = match self.format {
            LogFormat::Text => write!(self.out, "{value:?}"),
            LogFormat::Json => serde_json::to_writer(&mut *self.out, value).map_err(Into::into),
        };
    }

    /// A `%value` field: bare in text; in JSON a string like any other.
    fn display(&mut self, name: Name, value: &str) {
        match self.format {
            LogFormat::Text => {
                self.name(name);
                self.out.extend_from_slice(value.as_bytes());
            }
            LogFormat::Json => self.string(name, value),
        }
    }

    fn number(&mut self, name: Name, value: u64) {
        self.name(name);
        push_decimal(self.out, value);
    }

    /// Whole microseconds in milliseconds, as the formatters write the `f64` `event` logs:
    /// up to three decimals without trailing zeros, and at least one.
    fn millis(&mut self, name: Name, latency: Duration) {
        self.name(name);
        let micros = latency.as_micros();
        if micros >= 1_000_000_000_000_000 {
            // From 10^12 ms on, the f64 is too coarse for the thousandths to print as they
            // are (31 years: no request lasts that long). Let it speak for itself.
            let value = latency_ms(latency);
            let _ = match self.format {
                LogFormat::Text => write!(self.out, "{value:?}"),
                LogFormat::Json => {
                    serde_json::to_writer(&mut *self.out, &value).map_err(Into::into)
                }
            };
            return;
        }
        let micros = micros as u64;
        push_decimal(self.out, micros / 1000);
        self.out.push(b'.');
        let mut fraction = micros % 1000;
        if fraction == 0 {
            self.out.push(b'0');
        }
        while fraction != 0 {
            self.out.push(b'0' + (fraction / 100) as u8);
            fraction = fraction % 100 * 10;
        }
    }
}

/// RFC 3339 in UTC with microseconds, as the default timer writes it.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let (year, month, day) = civil_from_days((secs / 86_400) as i64);
            let of_day = secs % 86_400;
            cached.1.clear();
            use std::fmt::Write as _;
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                of_day / 3600,
                of_day % 3600 / 60,
                of_day % 60
            );
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    let mut digits = [b'0'; 6];
    let mut rest = since.subsec_micros();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// True if both formatters write these bytes as they are: printable ASCII, no `"` or `\\`.
/// Eight bytes at a time: a byte is out if its top bit is set, or it is zero after masking
/// to its top three bits (a control), or after xor with DEL, `"` or `\\`.
fn needs_no_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let any_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let word_is_plain = |w: u64| {
        w & HIGHS == 0
            && !any_zero(w & u64::from_ne_bytes([0xe0; 8]))
            && !any_zero(w ^ u64::from_ne_bytes([0x7f; 8]))
            && !any_zero(w ^ u64::from_ne_bytes([b'"'; 8]))
            && !any_zero(w ^ u64::from_ne_bytes([b'\\'; 8]))
    };
    let mut words = bytes.chunks_exact(8);
    let mut plain = true;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        plain &= word_is_plain(u64::from_ne_bytes(w));
    }
    plain
        && words
            .remainder()
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber's default format, set up as `telemetry::init` sets it up,
    /// writes for whatever `log` logs.
    fn by_default_format(format: LogFormat, log: impl Fn()) -> String {
        let capture = Capture::default();
        let sink = capture.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_target(true)
            .with_writer(move || sink.clone());
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), log),
            LogFormat::Json => {
                let json = builder.json().flatten_event(true).finish();
                tracing::subscriber::with_default(json, log)
            }
        }
        let bytes = std::mem::take(&mut *capture.0.lock().unwrap());
        String::from_utf8(bytes).unwrap()
    }

    fn rendered(format: LogFormat, line: &AccessLine<'_>) -> String {
        let mut out = Vec::new();
        line.render(&mut out, SystemTime::now(), format);
        String::from_utf8(out).unwrap()
    }

    /// The line without its timestamp, which differs between two renderings.
    fn untimed(line: &str) -> &str {
        match line.split_once("{\"timestamp\":\"") {
            Some((_, rest)) => rest.split_once('"').map_or(rest, |(_, r)| r),
            None => line.split_once(' ').map_or(line, |(_, rest)| rest),
        }
    }

    fn typical() -> AccessLine<'static> {
        AccessLine {
            request_id: "66b76dd30000000000044808",
            method: "POST",
            host: "api.twilio.com",
            path: "/2010-04-01/Accounts/AC0123/Messages.json",
            client: "anonymous",
            rule: "GET,POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
            decision: "allow",
            account: "AC0123456789abcdef0123456789abcdef",
            status: 200,
            latency: Duration::from_micros(122),
            twilio_request_id: "RQ00000000000000000000000000000000",
            identity: "-",
            retries_429: 0,
        }
    }

    /// Lines with something to escape in every string, odd methods and latencies.
    fn unusual() -> Vec<AccessLine<'static>> {
        let escaped = "quote \" backslash \\ tab \t esc \u{1b}[31m nul \0 é \u{85} del \u{7f}";
        let long = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/\"";
        vec![
            AccessLine {
                request_id: escaped,
                method: "PURGE",
                host: escaped,
                path: long,
                client: "é",
                rule: "\\",
                decision: "\"",
                account: "\n",
                status: 503,
                latency: Duration::ZERO,
                twilio_request_id: "\u{7f}",
                identity: "alice \u{2028} bob",
                retries_429: 3,
            },
            AccessLine {
                latency: Duration::from_millis(12),
                identity: "",
                ..typical()
            },
            AccessLine {
                latency: Duration::from_micros(98_765_432),
                status: 0,
                retries_429: u8::MAX,
                ..typical()
            },
            AccessLine {
                latency: Duration::from_micros((1 << 53) + 1),
                ..typical()
            },
            AccessLine {
                latency: Duration::MAX,
                ..typical()
            },
        ]
    }

    #[test]
    fn lines_match_the_default_formats_byte_for_byte() {
        for format in [LogFormat::Text, LogFormat::Json] {
            for line in std::iter::once(typical()).chain(unusual()) {
                let direct = rendered(format, &line);
                let event = by_default_format(format, || line.event());
                assert_eq!(untimed(&direct), untimed(&event), "{format:?} {line:?}");
                assert!(direct.ends_with('\n') && direct.matches('\n').count() == 1);
            }
        }
        let text = rendered(LogFormat::Text, &typical());
        assert!(
            text.contains(" INFO twilio_sidecar::access: request_id=\"66b76dd30000000000044808\" method=POST host="),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&rendered(LogFormat::Json, &unusual()[0])).unwrap();
        assert_eq!(json["path"], unusual()[0].path);
        assert_eq!(json["target"], ACCESS_TARGET);
        assert_eq!(json["latency_ms"], 0.0);
    }

    #[test]
    fn before_install_a_line_is_the_event_it_stands_for() {
        // No test in this crate installs the direct writer.
        assert!(DIRECT.get().is_none());
        for format in [LogFormat::Text, LogFormat::Json] {
            let logged = by_default_format(format, || log(typical));
            let event = by_default_format(format, || typical().event());
            assert_eq!(untimed(&logged), untimed(&event));
            assert_eq!(logged.lines().count(), 1);
        }
    }

    #[test]
    fn the_log_filter_still_decides() {
        let capture = Capture::default();
        let sink = capture.clone();
        let quiet = tracing_subscriber::fmt()
            .with_env_filter("info,twilio_sidecar::access=off")
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(quiet, || {
            log(typical);
            tracing::info!(target: "twilio_sidecar::app", "kept");
        });
        let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("kept") && !logged.contains("access"),
            "{logged}"
        );
    }

    #[test]
    fn latencies_are_logged_to_the_microsecond() {
        for (nanos, text) in [
            (48_232_476, "48.232"),
            (1_000, "0.001"),
            (999, "0"),
            (3_000_000_000, "3000"),
            (12_345_678, "12.345"),
        ] {
            let ms = latency_ms(Duration::from_nanos(nanos));
            assert_eq!(ms.to_string(), text);
        }
    }

    #[test]
    fn milliseconds_are_written_as_the_formatters_write_the_f64() {
        let cases = (0..200_000u64)
            .chain((0..2_000).map(|i| i * 7_919_993))
            .chain([999_999_999_999_999, 1_000_000_000_000_000, (1 << 53) - 1]);
        let mut out = Vec::new();
        for micros in cases {
            let value = micros as f64 / 1000.0;
            for (format, expected) in [
                (LogFormat::Text, format!("latency_ms={value:?}")),
                (
                    LogFormat::Json,
                    format!(",\"latency_ms\":{}", serde_json::json!(value)),
                ),
            ] {
                out.clear();
                let mut fields = Fields {
                    out: &mut out,
                    format,
                    first: true,
                };
                fields.millis(name!("latency_ms"), Duration::from_micros(micros));
                assert_eq!(String::from_utf8_lossy(&out), expected, "{micros} µs");
            }
        }
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_a_byte_at_a_time_one() {
        let plain = |b: &u8| (b' '..=b'~').contains(b) && *b != b'"' && *b != b'\\';
        let mut bytes = *b"/2010-04-01/Accounts/AC0123/Messages.json";
        assert!(needs_no_escape(&bytes));
        for at in 0..bytes.len() {
            let kept = bytes[at];
            for b in 0..=u8::MAX {
                bytes[at] = b;
                for len in [at + 1, bytes.len()] {
                    let s = &bytes[..len];
                    assert_eq!(
                        needs_no_escape(s),
                        s.iter().all(plain),
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
            bytes[at] = kept;
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5_000, "2000-02-29T00:00:00.000005Z"),
            (1_795_710_343, 437_112_999, "2026-11-26T16:25:43.437112Z"),
            (4_102_444_799, 999_999_000, "2099-12-31T23:59:59.999999Z"),
        ];
        for (secs, nanos, expected) in cases {
            let mut out = Vec::new();
            timestamp(&mut out, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(out, expected.as_bytes());
            // The cached second is reused for the next line in the same second.
            out.clear();
            timestamp(&mut out, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn civil_dates_agree_with_a_day_by_day_count() {
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(200 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[m as usize - 1] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
