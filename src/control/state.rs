//! The per-generation state every request reads: the admission gate (router, compiled policy,
//! account list), the accounts' ready-made credentials, and the upstream client, held behind
//! one `ArcSwap`.
//!
//! A request loads the snapshot once at the start and uses it to the end, so a reload that
//! swaps in a new generation never changes a request half-way. A new state is built completely
//! (config checked, secrets read, policy compiled, client ready) before it is swapped in; a
//! failed build leaves the old one serving.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use serde_json::json;

use crate::config::reader::Diagnostic;
use crate::config::{Config, ConfigError, SecretSource};
use crate::credentials::{Account, Credential, LoadContext, PkcvSigner, WebhookKeys};
use crate::gate::clients::ClientKeys;
use crate::gate::Gate;
use crate::intercept::Intercept;
use crate::metrics::{OAuthMetrics, UpstreamMetrics};
use crate::upstream::account_limit::AccountLimit;
use crate::upstream::Upstream;

/// Everything a request needs, for one config generation.
#[derive(Debug)]
pub struct State {
    pub generation: u64,
    pub gate: Gate,
    /// `[[clients]]`' local keys, as hashes, in the gate's client order.
    pub client_keys: ClientKeys,
    /// Transparent mode's CA and its leaf certificates, with `[intercept]`.
    pub intercept: Option<Arc<Intercept>>,
    /// In config order, the same order as the gate's account indexes.
    pub accounts: Vec<Account>,
    pub upstream: Arc<Upstream>,
    /// The config this state was built from (secrets are only sources here, never values).
    pub config: Config,
    /// Lint warnings found while loading.
    pub warnings: Vec<Diagnostic>,
}

impl State {
    /// Builds a complete state from `config`: reads every secret and policy file, compiles the
    /// policy, and builds (or, when unchanged, reuses) the upstream client. Every problem is
    /// reported at once. Blocking: call from a blocking context when on the runtime.
    pub fn build(
        config: Config,
        mut warnings: Vec<Diagnostic>,
        extra_roots: &[CertificateDer<'static>],
        upstream_metrics: &Arc<UpstreamMetrics>,
        previous: Option<&State>,
    ) -> Result<State, ConfigError> {
        let file = config
            .path
            .as_ref()
            .map_or_else(|| "<config>".to_string(), |p| p.display().to_string());
        let mut problems = Vec::new();

        let gate = Gate::build(&config).map_err(|e| problems.extend(e)).ok();
        let client_keys = ClientKeys::load(&config.clients)
            .map_err(|e| problems.extend(e))
            .ok();
        // Kept from the previous generation (with its leaves) when the CA did not change.
        let intercept = match &config.intercept {
            Some(cfg) => match Intercept::load(cfg, previous.and_then(|p| p.intercept.as_ref())) {
                Ok(i) => {
                    if !i.name_constrained {
                        warnings.push(Diagnostic {
                            key: "intercept.ca_cert".into(),
                            message: "this CA is not name-constrained to twilio.com: whoever steals its key can impersonate any site to the apps that trust it; make one with `twilio-sidecar ca init`".into(),
                        });
                    }
                    Some(Some(i))
                }
                Err(e) => {
                    problems.push(Diagnostic {
                        key: "intercept".into(),
                        message: e.to_string(),
                    });
                    None
                }
            },
            None => Some(None),
        };

        let mut upstream_unchanged = false;
        let upstream = match previous.map(|p| &p.upstream) {
            // extra_roots are fixed for the life of the process, so they cannot differ here.
            Some(old) if old.reusable_for(&config.upstream, config.workers) => {
                upstream_unchanged = true;
                Some(old.clone())
            }
            _ => match Upstream::with_metrics(
                &config.upstream,
                config.workers,
                extra_roots,
                upstream_metrics.clone(),
            ) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    problems.push(Diagnostic {
                        key: "upstream.ca_file".into(),
                        message: e.to_string(),
                    });
                    None
                }
            },
        };

        let mut accounts = Vec::new();
        if let Some(upstream) = &upstream {
            for (i, account) in config.accounts.iter().enumerate() {
                let old = previous.and_then(|p| p.accounts.iter().find(|a| *a.sid == *account.sid));
                let ctx = LoadContext {
                    upstream,
                    upstream_unchanged,
                    oauth: &config.oauth,
                    previous: old.map(|a| &a.credential),
                };
                let webhook_keys = WebhookKeys::load(
                    &account.webhook_tokens,
                    &format!("accounts[{i}].webhook_token"),
                )
                .map_err(|e| problems.extend(e))
                .unwrap_or_default();
                match Credential::load(account, &format!("accounts[{i}].credential"), &ctx) {
                    Ok(credential) => {
                        let pkcv = account.pkcv.as_ref().and_then(|cfg| {
                            let key_sid = credential.signer().map(|s| &*s.key_sid)?;
                            PkcvSigner::load(cfg, &account.sid, key_sid)
                                .map(Arc::new)
                                .map_err(|e| {
                                    problems.push(Diagnostic {
                                        key: format!("accounts[{i}].pkcv.private_key"),
                                        message: e.to_string(),
                                    })
                                })
                                .ok()
                        });
                        let credential_generation = old.map_or(1, |old| {
                            if old.credential.same_as(&credential) {
                                old.credential_generation
                            } else {
                                old.credential_generation + 1
                            }
                        });
                        accounts.push(Account {
                            sid: account.sid.as_str().into(),
                            credential,
                            credential_generation,
                            webhook_keys,
                            pkcv,
                            limit: account.max_concurrent.map(|n| {
                                old.and_then(|o| o.limit.as_ref())
                                    .filter(|l| l.limit() == n)
                                    .cloned()
                                    .unwrap_or_else(|| Arc::new(AccountLimit::new(n)))
                            }),
                        });
                    }
                    Err(errors) => problems.extend(errors),
                }
            }
        }

        match (gate, upstream, client_keys, intercept) {
            (Some(gate), Some(upstream), Some(client_keys), Some(intercept))
                if problems.is_empty() =>
            {
                warnings.extend(gate.lint());
                Ok(State {
                    generation: previous.map_or(1, |p| p.generation + 1),
                    gate,
                    client_keys,
                    intercept,
                    accounts,
                    upstream,
                    config,
                    warnings,
                })
            }
            _ => Err(ConfigError { file, problems }),
        }
    }

    /// Starts what this state runs in the background (OAuth token refreshers). Idempotent: a
    /// cache kept from the previous generation is already running.
    pub fn start_background(&self, metrics: &Arc<OAuthMetrics>) {
        for account in &self.accounts {
            if let Credential::OAuth(cache) = &account.credential {
                cache.start(Some(metrics.clone()));
            }
        }
    }

    /// Ready to serve: every account can get a credential now.
    pub fn all_credentials_usable(&self) -> bool {
        self.accounts.iter().all(|a| a.credential.usable())
    }

    /// The effective config for `GET /config`: secrets shown only as their sources.
    pub fn redacted_view(&self) -> serde_json::Value {
        let c = &self.config;
        let accounts: Vec<_> = self
            .accounts
            .iter()
            .zip(&c.accounts)
            .map(|(account, cfg)| {
                let sources: serde_json::Map<String, serde_json::Value> = cfg
                    .credential
                    .sources()
                    .into_iter()
                    .map(|(name, source)| (name.to_string(), source.redacted()))
                    .collect();
                let mut credential = json!({
                    "type": account.credential.kind(),
                    "username": account.credential.username(),
                    "sources": sources,
                    "generation": account.credential_generation,
                });
                if let Credential::OAuth(cache) = &account.credential {
                    credential["token_url"] = json!(cache.token_url());
                }
                json!({
                    "sid": account.sid,
                    "default": cfg.default,
                    "credential": credential,
                    "max_concurrent": cfg.max_concurrent,
                    "webhook_token": cfg.webhook_tokens.iter().map(SecretSource::redacted).collect::<Vec<_>>(),
                    "pkcv": cfg.pkcv.as_ref().map(|p| json!({
                        "credential_sid": p.credential_sid,
                        "private_key": p.private_key.redacted(),
                    })),
                })
            })
            .collect();
        let hosts = &self.gate.router.hosts;
        let rules: Vec<_> = self
            .gate
            .policy
            .rules()
            .iter()
            .map(|r| json!({ "effect": r.effect.as_str(), "rule": r.text, "normal_form": r.normal_form(hosts) }))
            .collect();
        json!({
            "generation": self.generation,
            "source": c.path,
            "listen": { "address": c.listen },
            "admin": { "address": c.admin },
            "upstream": {
                "default_host": c.upstream.default_host,
                "allowed_hosts": c.upstream.allowed_hosts,
                "connect_to": c.upstream.connect_to,
                "ca_file": c.upstream.ca_file,
                "connect_timeout_ms": c.upstream.connect_timeout.as_millis() as u64,
                "request_timeout_ms": c.upstream.request_timeout.as_millis() as u64,
                "pool_idle_timeout_ms": c.upstream.pool_idle_timeout.as_millis() as u64,
                "pool_max_idle_per_host": c.upstream.pool_max_idle_per_host,
                "http2_max_streams": c.upstream.http2_max_streams,
                "retry_429": c.upstream.retry_429,
                "queue_timeout_ms": c.upstream.queue_timeout.as_millis() as u64,
                "max_queued": c.upstream.max_queued,
            },
            "accounts": accounts,
            "webhooks": c.webhooks.as_ref().map(|w| json!({
                "listen": w.listen,
                "forward_to": w.forward_to.to_string(),
                "public_url": w.public_url.as_configured,
                "max_body": w.max_body,
                "timeout_ms": w.timeout.as_millis() as u64,
                "max_concurrent": w.max_concurrent,
            })),
            "policy": {
                "mode": self.gate.policy.mode(),
                "rules": rules,
                "files": c.policy.files,
                "anonymous": self.gate.anonymous,
            },
            // Ids, rule counts and accounts: never a secret or a hash.
            "clients": self.gate.clients.iter().zip(&c.clients).map(|(client, cfg)| json!({
                "id": client.id,
                "mode": client.policy.mode(),
                "allow_rules": client.policy.rules().iter().filter(|r| r.effect.as_str() == "allow").count(),
                "deny_rules": client.policy.rules().iter().filter(|r| r.effect.as_str() == "deny").count(),
                "accounts": cfg.accounts.as_ref().map_or_else(
                    || json!("all"),
                    |a| json!(a),
                ),
                "files": cfg.files,
                "secret": match &cfg.secret {
                    crate::config::ClientSecret::Hashes(h) => json!({ "sha256": h.len() }),
                    crate::config::ClientSecret::Source(source) => source.redacted(),
                },
            })).collect::<Vec<_>>(),
            "warnings": self.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// The current state, swapped atomically on reload.
#[derive(Debug)]
pub struct SharedState {
    current: ArcSwap<State>,
}

impl SharedState {
    pub fn new(state: State) -> SharedState {
        SharedState {
            current: ArcSwap::from_pointee(state),
        }
    }

    /// The snapshot a request uses from start to finish.
    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Swaps in a fully built new state.
    pub fn store(&self, state: State) {
        self.current.store(Arc::new(state));
    }
}
