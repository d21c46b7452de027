//! Logging setup: `tracing` to stderr as text or JSON, filtered by `--log-level` or the
//! `TWILIO_SIDECAR_LOG` variable (`info` by default). The access log is the
//! `twilio_sidecar::access` target, so it can be filtered on its own.

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("TWILIO_SIDECAR_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
