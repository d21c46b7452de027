//! The fast path for access-log lines: byte for byte what tracing-subscriber's default text
//! (`Full`, no colours) or JSON (flattened) format writes, without its `core::fmt` and serde
//! machinery.
//!
//! Why: callgrind put the default text formatter at ~21,000 instructions per access-log line —
//! a `write!` per field name, value, `=` and (empty) colour code, quoting each string a char at
//! a time — and the JSON one at ~26,000: close to half of what the rest of the request costs. Here a line is the timestamp
//! (its date and time re-formatted once a second, per thread), the fixed level and target, and
//! each field appended as bytes; a string is copied whole when nothing in it needs escaping.
//!
//! Only events of the access-log target outside any span take this path; everything else —
//! and an access event carrying something this does not format the same way (an error value;
//! in JSON, a string that needs escaping) — goes through the default formatter unchanged.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime as DefaultTimer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The access log's target (`proxy` logs one line per request under it).
pub const ACCESS_TARGET: &str = "twilio_sidecar::access";

/// An event format: the fast path for access lines, `default` for the rest.
pub struct AccessFormat<D> {
    default: D,
    style: Style,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Text,
    Json,
}

impl AccessFormat<Format<Full, DefaultTimer>> {
    /// `--log-format text`.
    pub fn text() -> Self {
        AccessFormat {
            default: Format::default().with_ansi(false).with_target(true),
            style: Style::Text,
        }
    }
}

impl AccessFormat<Format<Json, DefaultTimer>> {
    /// `--log-format json` (flattened: the fields beside timestamp, level and target).
    pub fn json() -> Self {
        AccessFormat {
            default: Format::default().json().flatten_event(true),
            style: Style::Json,
        }
    }
}

impl<S, N, D> FormatEvent<S, N> for AccessFormat<D>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    D: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() == ACCESS_TARGET && ctx.event_scope().is_none() {
            let written = LINE.with(|line| {
                let mut line = line.borrow_mut();
                line.clear();
                if format_line(&mut line, SystemTime::now(), self.style, event) {
                    Some(writer.write_str(&line))
                } else {
                    None
                }
            });
            if let Some(result) = written {
                #[cfg(test)]
                tests::FAST_LINES.with(|n| n.set(n.get() + 1));
                return result;
            }
        }
        self.default.format_event(ctx, writer, event)
    }
}

thread_local! {
    /// The line being built, kept for the thread's next one.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// `YYYY-MM-DDTHH:MM:SS.` for the Unix second in `.0`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes one whole line into `line`; false if a field needs the default formatter.
fn format_line(line: &mut String, now: SystemTime, style: Style, event: &Event<'_>) -> bool {
    let meta = event.metadata();
    let level = meta.level();
    match style {
        Style::Text => {
            timestamp(line, now);
            line.push(' ');
            line.push_str(match *level {
                tracing::Level::TRACE => "TRACE",
                tracing::Level::DEBUG => "DEBUG",
                tracing::Level::INFO => " INFO",
                tracing::Level::WARN => " WARN",
                tracing::Level::ERROR => "ERROR",
            });
            line.push(' ');
            line.push_str(meta.target());
            line.push_str(": ");
        }
        Style::Json => {
            line.push_str("{\"timestamp\":\"");
            timestamp(line, now);
            line.push_str("\",\"level\":\"");
            line.push_str(level.as_str());
            line.push('"');
        }
    }
    let mut fields = Fields {
        line,
        style,
        first: true,
        unsupported: false,
    };
    event.record(&mut fields);
    if fields.unsupported {
        return false;
    }
    if style == Style::Json {
        if !needs_no_escape(meta.target().as_bytes()) {
            return false;
        }
        line.push_str(",\"target\":\"");
        line.push_str(meta.target());
        line.push_str("\"}");
    }
    line.push('\n');
    true
}

/// RFC 3339 in UTC with microseconds, as the default timer writes it.
fn timestamp(line: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let (year, month, day) = civil_from_days((secs / 86_400) as i64);
            let of_day = secs % 86_400;
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                of_day / 3600,
                of_day % 3600 / 60,
                of_day % 60
            );
            cached.0 = secs;
        }
        line.push_str(&cached.1);
    });
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    for d in digits {
        line.push(d as char);
    }
    line.push('Z');
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

/// Appends `name=value` (text) or `,"name":value` (JSON) as the default formatters do.
struct Fields<'a> {
    line: &'a mut String,
    style: Style,
    first: bool,
    unsupported: bool,
}

impl Fields<'_> {
    fn name(&mut self, field: &Field) {
        let name = field.name();
        match self.style {
            Style::Text => {
                if self.first {
                    self.first = false;
                } else {
                    self.line.push(' ');
                }
                self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
                self.line.push('=');
            }
            Style::Json => {
                self.line.push_str(",\"");
                self.line.push_str(name);
                self.line.push_str("\":");
            }
        }
    }

    /// The default formatters treat these as log-crate metadata and a message specially; in
    /// JSON, a name is written as it is only if nothing in it needs escaping.
    fn plain(&self, field: &Field) -> bool {
        let name = field.name();
        name != "message"
            && !name.starts_with("log.")
            && (self.style == Style::Text
                || (!name.starts_with("r#") && needs_no_escape(name.as_bytes())))
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.plain(field) {
            self.unsupported = true;
            return;
        }
        self.name(field);
        // `{:?}` of a str: quoted, with `"`, `\` and anything not printable ASCII escaped.
        if needs_no_escape(value.as_bytes()) {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else if self.style == Style::Text {
            let _ = write!(self.line, "{value:?}");
        } else {
            self.unsupported = true;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.plain(field) {
            self.unsupported = true;
            return;
        }
        self.name(field);
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for &d in &digits[at..] {
            self.line.push(d as char);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if value >= 0 {
            self.record_u64(field, value as u64);
        } else if self.style == Style::Text {
            self.record_debug(field, &value);
        } else {
            self.unsupported = true;
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Whole microseconds in milliseconds (latency_ms): `{:?}` writes up to three decimals
        // without trailing zeros, and at least one.
        let micros = value * 1000.0;
        if !(0.0..1e12).contains(&value) || micros.fract() != 0.0 || micros / 1000.0 != value {
            if self.style == Style::Text {
                self.record_debug(field, &value);
            } else {
                self.unsupported = true;
            }
            return;
        }
        let micros = micros as u64;
        self.record_u64(field, micros / 1000);
        let mut fraction = micros % 1000;
        self.line.push('.');
        if fraction == 0 {
            self.line.push('0');
            return;
        }
        while fraction != 0 {
            self.line.push((b'0' + (fraction / 100) as u8) as char);
            fraction = fraction % 100 * 10;
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.plain(field) {
            self.unsupported = true;
            return;
        }
        self.name(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        self.unsupported = true;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.plain(field) {
            self.unsupported = true;
            return;
        }
        self.name(field);
        match self.style {
            Style::Text => {
                let _ = write!(self.line, "{value:?}");
            }
            // The JSON formatter writes it as a string.
            Style::Json => {
                self.line.push('"');
                let start = self.line.len();
                let _ = write!(self.line, "{value:?}");
                if !needs_no_escape(&self.line.as_bytes()[start..]) {
                    self.unsupported = true;
                }
                self.line.push('"');
            }
        }
    }
}

/// True if `{:?}` would print these bytes as they are: printable ASCII, no `"` or `\\`.
/// Checked 16 bytes at a time without stopping early, so the compiler can use vector compares.
fn needs_no_escape(bytes: &[u8]) -> bool {
    let plain = |b: u8| (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\');
    let mut chunks = bytes.chunks_exact(16);
    let mut ok = true;
    for chunk in &mut chunks {
        ok &= chunk.iter().fold(true, |ok, &b| ok & plain(b));
    }
    ok && chunks.remainder().iter().all(|&b| plain(b))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing::{info, info_span, warn};

    use super::*;

    struct TestCallsite;
    static TEST_CALLSITE: TestCallsite = TestCallsite;
    static TEST_META: tracing::Metadata<'static> = tracing::Metadata::new(
        "test",
        ACCESS_TARGET,
        tracing::Level::INFO,
        None,
        None,
        None,
        tracing::field::FieldSet::new(
            &["latency_ms"],
            tracing::callsite::Identifier(&TEST_CALLSITE),
        ),
        tracing::metadata::Kind::EVENT,
    );
    impl tracing::callsite::Callsite for TestCallsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            &TEST_META
        }
    }
    static FIELD: std::sync::LazyLock<Field> =
        std::sync::LazyLock::new(|| TEST_META.fields().field("latency_ms").unwrap());

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    thread_local! {
        /// Lines the fast path wrote on this thread.
        pub(super) static FAST_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Logs with `AccessFormat`, then the same with the default format, both as `--log-format`
    /// sets them up; returns both outputs with each line's timestamp cut out, and how many
    /// lines took the fast path.
    fn both(style: Style, log: impl Fn()) -> (String, String, usize) {
        let fast = Capture::default();
        let default = Capture::default();
        let make = |c: &Capture| {
            let c = c.clone();
            move || c.clone()
        };
        let builder = |c: &Capture| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_target(true)
                .with_writer(make(c))
        };
        FAST_LINES.with(|n| n.set(0));
        match style {
            Style::Text => {
                let with = builder(&fast).event_format(AccessFormat::text()).finish();
                tracing::subscriber::with_default(with, &log);
                tracing::subscriber::with_default(builder(&default).finish(), &log);
            }
            Style::Json => {
                let with = builder(&fast)
                    .json()
                    .flatten_event(true)
                    .event_format(AccessFormat::json())
                    .finish();
                tracing::subscriber::with_default(with, &log);
                let without = builder(&default).json().flatten_event(true).finish();
                tracing::subscriber::with_default(without, &log);
            }
        }
        let cut = |s: String| -> String {
            s.lines()
                .map(|l| match l.split_once("{\"timestamp\":\"") {
                    Some((_, rest)) => rest.split_once('"').map_or(rest, |(_, r)| r),
                    None => l.split_once(' ').map_or(l, |(_, rest)| rest),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let fast_lines = FAST_LINES.with(|n| n.get());
        (cut(fast.take()), cut(default.take()), fast_lines)
    }

    /// An access line as the proxy logs it.
    fn access_line() {
        let method = http::Method::POST;
        info!(
            target: "twilio_sidecar::access",
            request_id = "66b76dd30000000000044808",
            method = %method,
            host = "api.twilio.com",
            path = "/2010-04-01/Accounts/AC0123/Messages.json",
            client = "anonymous",
            rule = "GET,POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
            decision = "allow",
            status = 200u16,
            latency_ms = 0.122,
            twilio_request_id = "-",
            retries_429 = 0u32,
            whole_ms = 12.0,
            big_ms = 98_765.432,
            flag = true,
        );
        warn!(target: "twilio_sidecar::access", decision = "shed", status = 503u16);
    }

    #[test]
    fn json_access_lines_match_the_default_format_byte_for_byte() {
        let (fast, default, fast_lines) = both(Style::Json, access_line);
        assert_eq!(fast, default);
        assert_eq!(fast_lines, 2, "{fast}");
        assert!(
            fast.contains(r#","request_id":"66b76dd30000000000044808","method":"POST","#),
            "{fast}"
        );
        let (_, _, text_lines) = both(Style::Text, access_line);
        assert_eq!(text_lines, 2);
    }

    #[test]
    fn json_falls_back_for_what_needs_escaping() {
        let (fast, default, fast_lines) = both(Style::Json, || {
            info!(target: "twilio_sidecar::access", path = "/a\"b", status = 200u16);
            info!(target: "twilio_sidecar::access", path = "/é", status = 200u16);
            info!(target: "twilio_sidecar::access", debugged = ?"quoted", status = 200u16);
            info!(target: "twilio_sidecar::access", latency_ms = f64::NAN);
            info!(target: "twilio_sidecar::access", latency_ms = 0.0001);
            info!(target: "twilio_sidecar::access", negative = -3i64);
            // tracing names this field `type` itself: nothing to fall back for.
            info!(target: "twilio_sidecar::access", r#type = "raw");
        });
        assert_eq!(fast, default);
        assert_eq!(fast_lines, 1, "{fast}");
        assert_eq!(fast.lines().count(), 7);
    }

    #[test]
    fn text_access_lines_match_the_default_format_byte_for_byte() {
        let method = http::Method::POST;
        let (fast, default, fast_lines) = both(Style::Text, || {
            info!(
                target: "twilio_sidecar::access",
                request_id = "66b76dd30000000000044808",
                method = %method,
                host = "api.twilio.com",
                path = "/2010-04-01/Accounts/AC0123/Messages.json",
                rule = "GET,POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
                status = 200u16,
                latency_ms = 0.122,
                whole_ms = 12.0,
                tenth_ms = 3.1,
                big_ms = 98_765.432,
                tiny = 0.0001,
                nan = f64::NAN,
                minus = -1.5,
                long_path = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM0123456789abcdef0123456789abcdef.json",
                late_quote = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/\"",
                late_byte = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/\u{7f}/x",
                r#type = "raw name",
                escaped = "quote \" backslash \\ tab \t esc \u{1b}[31m nul \0 é \u{85}",
                negative = -3i64,
                positive = 7i64,
                max = u64::MAX,
                flag = true,
                debugged = ?Some("x"),
            );
            warn!(target: "twilio_sidecar::access", decision = "shed", status = 503u16);
        });
        assert_eq!(fast, default);
        assert_eq!(fast_lines, 2);
        assert!(
            fast.contains(r#"request_id="66b76dd30000000000044808" method=POST"#),
            "{fast}"
        );
    }

    #[test]
    fn other_events_errors_and_spans_take_the_default_path() {
        let error = std::io::Error::other("boom");
        for style in [Style::Text, Style::Json] {
            let (fast, default, fast_lines) = both(style, || {
                info!(target: "twilio_sidecar::app", addr = "127.0.0.1:1", "proxy listening");
                info!(target: "twilio_sidecar::access", error = &error as &dyn std::error::Error, status = 500u16);
                info!(target: "twilio_sidecar::access", "with a message {}", 1);
                let span = info_span!("conn", peer = "1.2.3.4");
                let _in = span.enter();
                info!(target: "twilio_sidecar::access", status = 200u16);
            });
            assert_eq!(fast, default);
            assert_eq!(fast.lines().count(), 4, "{fast}");
            assert_eq!(fast_lines, 0, "{fast}");
        }
    }

    #[test]
    fn milliseconds_are_written_as_debug_writes_them() {
        let cases = (0..200_000u64)
            .chain((0..2_000).map(|i| i * 7_919_993))
            .chain([999_999_999_999_999, 1_000_000_000_000_000]);
        let mut line = String::new();
        for micros in cases {
            let value = micros as f64 / 1000.0;
            line.clear();
            let mut fields = Fields {
                line: &mut line,
                style: Style::Text,
                first: true,
                unsupported: false,
            };
            fields.record_f64(&FIELD, value);
            assert_eq!(line, format!("latency_ms={value:?}"), "{micros} µs");
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
            let mut line = String::new();
            timestamp(&mut line, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(line, expected);
            // The cached second is reused for the next line in the same second.
            line.clear();
            timestamp(&mut line, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(line, expected);
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
