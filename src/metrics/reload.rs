//! The control plane's metrics: config loads by trigger and result, the generation serving,
//! and each account's credential generation.

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics about loading and reloading the config.
pub struct ReloadMetrics {
    /// Per-account credential generation, bumped when a reload changes the credential.
    pub credential_generation: IntGaugeVec,
    /// The config/state generation serving requests.
    pub state_generation: IntGauge,
    /// Config loads by trigger and result.
    pub reloads: IntCounterVec,
    /// Unix time of the last successful config load.
    pub last_success: Gauge,
}

impl ReloadMetrics {
    pub fn new() -> Result<ReloadMetrics, prometheus::Error> {
        Ok(ReloadMetrics {
            credential_generation: IntGaugeVec::new(
                Opts::new(
                    "credential_generation",
                    "Generation of each account's credential; changes when a reload changes it.",
                ),
                &["account"],
            )?,
            state_generation: IntGauge::new(
                "state_generation",
                "Generation of the config state serving requests.",
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Config loads by trigger and result.",
                ),
                &["trigger", "result"],
            )?,
            last_success: Gauge::new(
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.credential_generation.clone()))?;
        registry.register(Box::new(self.state_generation.clone()))?;
        registry.register(Box::new(self.reloads.clone()))?;
        registry.register(Box::new(self.last_success.clone()))?;
        Ok(())
    }

    /// One load (`trigger`: startup, watch, signal, admin) ended with `result`.
    pub fn reload(&self, trigger: &str, result: &str) {
        self.reloads.with_label_values(&[trigger, result]).inc();
    }
}
