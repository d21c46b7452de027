//! Logging setup: `tracing` to stderr as text or JSON, filtered by `--log-level` or the
//! `TWILIO_SIDECAR_LOG` variable (`info` by default), with the file watcher's per-event
//! logging held at `warn`. The access log is the
//! `twilio_sidecar::access` target, so it can be filtered on its own; in both formats its
//! lines are built by [`access_log`] (the default formats' bytes, without `tracing`'s cost).
//! Lines reach stderr through [`log_writer`], in batches written off the serving threads.

pub mod access_log;
pub mod log_writer;

use tracing_subscriber::EnvFilter;

pub use log_writer::LogGuard;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The file watcher's own crate logs every inotify event at trace level: with stderr going to
/// a file in a watched directory (beside the config), each line written is an event that
/// writes another, tens of MiB a second. It stays at `warn` unless a filter names it.
const WATCHER_CAP: &str = "notify=warn";

/// Installs the global subscriber. Safe to call once per process; keep the guard until the
/// process is done logging (dropping it writes what is still waiting).
pub fn init(format: LogFormat, level: Option<&str>) -> LogGuard {
    let from_env = std::env::var("TWILIO_SIDECAR_LOG")
        .ok()
        .filter(|spec| EnvFilter::try_new(spec).is_ok());
    let spec = level.or(from_env.as_deref()).unwrap_or("info");
    let mut filter = EnvFilter::new(spec);
    if !spec.contains("notify") {
        if let Ok(cap) = WATCHER_CAP.parse() {
            filter = filter.add_directive(cap);
        }
    }
    let (writer, guard) = log_writer::LogWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_target(true);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Only beside the subscriber it imitates: with another one in place, access lines stay
    // events for it.
    if installed.is_ok() {
        access_log::install(writer, format);
    }
    guard
}
