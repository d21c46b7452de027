//! Reloading: re-read the config file, build a complete new state, and swap it in — or keep the
//! old one and say why.
//!
//! Triggers (SIGHUP, `POST /reload`) all call [`Reloader::reload`]; one reload runs at a time.
//! The build (file reads, secret reads, policy compile) runs on the blocking pool, off the
//! request path. In-flight requests keep the snapshot they started with.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigError, SecretSource};
use crate::control::state::{SharedState, State};
use crate::metrics::Metrics;

/// Rebuilds and swaps the shared state.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<SharedState>,
    metrics: Arc<Metrics>,
    /// `None` for configs that did not come from a file (`dev`): nothing to re-read.
    config_path: Option<PathBuf>,
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
    running: tokio::sync::Mutex<()>,
    /// Fingerprint of the inputs of the state now serving; a watch-triggered reload whose
    /// inputs hash the same is skipped.
    loaded: Mutex<Option<u64>>,
}

impl Reloader {
    pub fn new(
        shared: Arc<SharedState>,
        metrics: Arc<Metrics>,
        config_path: Option<PathBuf>,
        extra_roots: Arc<Vec<CertificateDer<'static>>>,
    ) -> Reloader {
        let loaded = config_path.as_deref().map(fingerprint);
        Reloader {
            shared,
            metrics,
            config_path,
            extra_roots,
            running: tokio::sync::Mutex::new(()),
            loaded: Mutex::new(loaded),
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
            self.metrics.reload.reload(trigger, "failure");
            return Err(err);
        };
        let previous = self.shared.load();
        let roots = self.extra_roots.clone();
        let prev = previous.clone();
        let upstream_metrics = self.metrics.upstream.clone();
        let last = self.loaded.lock().map(|l| *l).unwrap_or(None);
        // A file event is only a hint: skip it when the inputs read the same. Explicit
        // triggers (SIGHUP, POST /reload) always rebuild.
        let only_if_changed = trigger == "watch";
        let built = tokio::task::spawn_blocking(move || {
            let inputs = fingerprint(&path);
            if only_if_changed && Some(inputs) == last {
                return Ok(None);
            }
            let (config, warnings) = Config::load(&path)?;
            State::build(config, warnings, &roots, &upstream_metrics, Some(&prev))
                .map(|s| Some((s, inputs)))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::single(
                "<reload>",
                format!("reload task failed: {e}"),
            ))
        });
        let built = match built {
            Ok(None) => {
                debug!(
                    trigger,
                    "files changed but the config and secrets read the same; nothing to reload"
                );
                return Ok(previous.generation);
            }
            Ok(Some((state, inputs))) => {
                if let Ok(mut l) = self.loaded.lock() {
                    *l = Some(inputs);
                }
                Ok(state)
            }
            Err(e) => Err(e),
        };

        match built {
            Ok(state) => {
                warn_restart_needed(&previous.config, &state.config);
                for w in &state.warnings {
                    warn!(warning = %w, "config warning");
                }
                let generation = state.generation;
                state.start_background(&self.metrics.oauth);
                publish_state_metrics(&self.metrics, &state, Some(&previous), trigger);
                self.shared.store(state);
                crate::metrics::new_generation();
                info!(generation, trigger, "config reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.metrics.reload.reload(trigger, "failure");
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
    let (proxy, reload) = (&metrics.proxy, &metrics.reload);
    reload.state_generation.set(state.generation as i64);
    // Every rule of [policy] and of each client's policy (a text in several, once).
    let labels = |s: &State| -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let policies =
            std::iter::once(&s.gate.policy).chain(s.gate.clients.iter().map(|c| &c.policy));
        for rule in policies.flat_map(|p| p.rules()) {
            let label = (rule.effect.as_str(), rule.text.to_string());
            if !out.contains(&label) {
                out.push(label);
            }
        }
        out
    };
    let current = labels(state);
    if let Some(previous) = previous {
        for (effect, text) in labels(previous) {
            if !current.iter().any(|(e, t)| *e == effect && *t == text) {
                proxy.retire_rule(effect, &text);
            }
        }
    }
    for (effect, text) in &current {
        proxy.declare_rule(effect, text);
    }
    for account in state.accounts.iter() {
        reload
            .credential_generation
            .with_label_values(&[&account.sid])
            .set(account.credential_generation as i64);
    }
    reload.reload(trigger, "success");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    reload.last_success.set(now);
}

/// A hash of everything a reload reads: the config file, each file it references and each
/// environment variable it names. Equal fingerprints mean a reload would build the same state.
/// (It stays in memory; it is not a place secrets can be recovered from.)
pub fn fingerprint(config_path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let mut file = |p: &Path| match std::fs::read(p) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(e) => e.kind().hash(&mut h),
    };
    file(config_path);
    if let Ok((config, _)) = Config::load(config_path) {
        for f in config.watched_files().iter().skip(1) {
            file(f);
        }
        for account in &config.accounts {
            for (_, source) in account.credential.sources() {
                if let SecretSource::Env(name) = source {
                    std::env::var(name).ok().hash(&mut h);
                }
            }
        }
    }
    h.finish()
}

/// Logs the settings a reload cannot apply to running listeners.
fn warn_restart_needed(old: &Config, new: &Config) {
    let (o, n) = (&old.limits, &new.limits);
    let changed = [
        ("listen.address", old.listen != new.listen),
        ("admin.address", old.admin != new.admin),
        ("listen.unix", old.unix != new.unix),
        ("listen.workers", old.workers != new.workers),
        (
            "limits.header_read_timeout",
            o.header_read_timeout != n.header_read_timeout,
        ),
        (
            "limits.max_header_bytes",
            o.max_header_bytes != n.max_header_bytes,
        ),
        (
            "limits.max_concurrent_requests",
            o.max_concurrent_requests != n.max_concurrent_requests,
        ),
        ("limits.drain_timeout", o.drain_timeout != n.drain_timeout),
        ("limits.idle_timeout", o.idle_timeout != n.idle_timeout),
        ("limits.write_timeout", o.write_timeout != n.write_timeout),
        (
            "limits.max_connections",
            o.max_connections != n.max_connections,
        ),
        (
            "limits.max_admin_connections",
            o.max_admin_connections != n.max_admin_connections,
        ),
        (
            "limits.max_rewrite_buffer",
            o.max_rewrite_buffer != n.max_rewrite_buffer,
        ),
        (
            "webhooks.listen",
            old.webhooks.as_ref().map(|w| w.listen) != new.webhooks.as_ref().map(|w| w.listen),
        ),
        (
            "webhooks.max_concurrent",
            old.webhooks.as_ref().map(|w| w.max_concurrent)
                != new.webhooks.as_ref().map(|w| w.max_concurrent),
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, c)| *c) {
        warn!(key, "changing a listen address or a listener limit needs a restart; still using the old value, the rest of the reload applies");
    }
}
