//! `twilio-sidecar validate`: load the config as a start-up would (secrets read, policy
//! compiled, upstream trust built) and print every error and warning at once.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, EXIT_CONFIG};
use crate::control::state::State;
use crate::gate::Gate;
use crate::metrics::UpstreamMetrics;

/// `twilio-sidecar validate`: every error and warning, then a summary. With `skip_secrets` the
/// secret files and variables are not read (for linting a config away from where it runs).
pub fn validate(config_path: &Path, skip_secrets: bool) -> (String, i32) {
    let file = config_path.display().to_string();
    let mut out = String::new();
    // Best effort: with errors in the file, what could be read is still checked (the policy
    // rules above all), so every problem is reported in one run.
    let (config, read) = match Config::load_best_effort(config_path) {
        Ok(c) => c,
        Err(e) => {
            let n = e.problems.len();
            return (
                format!("{e}\n{file}: {n} error(s); config not usable\n"),
                EXIT_CONFIG,
            );
        }
    };
    let (mut errors, mut warnings) = (read.errors, read.warnings);
    match config {
        // Only the gate: secrets are not read for a config that cannot serve anyway, or when
        // asked not to.
        Some(config) if skip_secrets || !errors.is_empty() => match Gate::build(&config) {
            Ok(gate) => warnings.extend(gate.lint()),
            Err(problems) => errors.extend(problems),
        },
        Some(config) => {
            let metrics = Arc::new(UpstreamMetrics::detached());
            match State::build(config, Vec::new(), &[], &metrics, None) {
                Ok(state) => warnings.extend(state.warnings),
                Err(e) => errors.extend(e.problems),
            }
        }
        None => {}
    }
    for e in &errors {
        let _ = writeln!(out, "{file}: error: {e}");
    }
    for w in &warnings {
        let _ = writeln!(out, "{file}: warning: {w}");
    }
    let _ = writeln!(
        out,
        "{file}: {} error(s), {} warning(s){}",
        errors.len(),
        warnings.len(),
        if errors.is_empty() {
            "; config OK"
        } else {
            "; config not usable"
        }
    );
    (out, if errors.is_empty() { 0 } else { EXIT_CONFIG })
}
