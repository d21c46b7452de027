//! Reloading: re-read the config file, build a complete new state, and swap it in — or keep the
//! old one and say why.
//!
//! Triggers (SIGHUP, `POST /reload`) all call [`Reloader::reload`]; one reload runs at a time.
//! The build (file reads, secret reads, policy compile) runs on the blocking pool, off the
//! request path. In-flight requests keep the snapshot they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::state::{SharedState, State};

/// Rebuilds and swaps the shared state.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<SharedState>,
    metrics: Arc<Metrics>,
    /// `None` for configs that did not come from a file (`dev`): nothing to re-read.
    config_path: Option<PathBuf>,
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        shared: Arc<SharedState>,
        metrics: Arc<Metrics>,
        config_path: Option<PathBuf>,
        extra_roots: Arc<Vec<CertificateDer<'static>>>,
    ) -> Reloader {
        Reloader {
            shared,
            metrics,
            config_path,
            extra_roots,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the config and swaps in the new state. Returns the generation now serving.
    /// `trigger` labels the reload metric (`signal`, `admin`, `watch`).
    pub async fn reload(&self, trigger: &'static str) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.running.lock().await;
        let Some(path) = self.config_path.clone() else {
            let err = ConfigError::single(
                "<dev>",
                "this sidecar's config was built in (dev mode); there is no file to reload",
            );
            self.metrics
                .reloads
                .with_label_values(&[trigger, "failure"])
                .inc();
            return Err(err);
        };
        let previous = self.shared.load();
        let roots = self.extra_roots.clone();
        let prev = previous.clone();
        let built = tokio::task::spawn_blocking(move || {
            let (config, warnings) = Config::load(&path)?;
            State::build(config, warnings, &roots, Some(&prev))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::single(
                "<reload>",
                format!("reload task failed: {e}"),
            ))
        });

        match built {
            Ok(state) => {
                for (what, old, new) in [
                    (
                        "listen.address",
                        previous.config.listen,
                        state.config.listen,
                    ),
                    ("admin.address", previous.config.admin, state.config.admin),
                ] {
                    if old != new {
                        warn!(key = what, old = %old, new = %new, "changing a listen address needs a restart; still listening on the old one, the rest of the reload applies");
                    }
                }
                for w in &state.warnings {
                    warn!(warning = %w, "config warning");
                }
                let generation = state.generation;
                state.start_background(&self.metrics);
                publish_state_metrics(&self.metrics, &state, Some(&previous), trigger);
                self.shared.store(state);
                info!(generation, trigger, "config reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .with_label_values(&[trigger, "failure"])
                    .inc();
                error!(trigger, error = %e, "config reload failed; still serving the previous config");
                Err(e)
            }
        }
    }
}

/// Sets generation gauges, lines the per-rule counters up with the new policy (rules that are
/// gone are dropped, new ones appear at zero, unchanged ones keep counting) and counts a
/// successful load.
pub fn publish_state_metrics(
    metrics: &Metrics,
    state: &State,
    previous: Option<&State>,
    trigger: &'static str,
) {
    metrics.state_generation.set(state.generation as i64);
    let labels = |s: &State| -> Vec<(&'static str, String)> {
        s.gate
            .policy
            .rules()
            .iter()
            .map(|r| (r.effect.as_str(), r.text.to_string()))
            .collect()
    };
    let current = labels(state);
    if let Some(previous) = previous {
        for (effect, text) in labels(previous) {
            if !current.iter().any(|(e, t)| *e == effect && *t == text) {
                let _ = metrics.rule_hits.remove_label_values(&[effect, &text]);
            }
        }
    }
    for (effect, text) in &current {
        metrics
            .rule_hits
            .with_label_values(&[effect, text.as_str()]);
    }
    for account in state.accounts.iter() {
        metrics
            .credential_generation
            .with_label_values(&[&account.sid])
            .set(account.credential_generation as i64);
    }
    metrics
        .reloads
        .with_label_values(&[trigger, "success"])
        .inc();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.last_reload_success.set(now);
}
