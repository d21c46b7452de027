//! Wiring: build the first state, bind both listeners, serve until shutdown, drain.
//!
//! [`Sidecar::start`] does everything that can fail at startup (config, secrets, policy, TLS
//! roots, binding) before anything is served, so a bad config never starts a half-working
//! proxy. [`Sidecar::serve`] then runs until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::reader::Diagnostic;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{publish_state_metrics, Reloader};
use crate::server::serve;
use crate::state::{SharedState, State};

/// How long in-flight requests may run on after shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A sidecar with its state built and its listeners bound, ready to serve.
pub struct Sidecar {
    pub shared: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    draining: Arc<AtomicBool>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
}

impl Sidecar {
    /// Builds the state from `config` and binds both listeners.
    pub async fn start(
        config: Config,
        warnings: Vec<Diagnostic>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Sidecar, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let extra_roots = Arc::new(extra_roots);
        let roots = extra_roots.clone();
        let path = config.path.clone();
        let state =
            tokio::task::spawn_blocking(move || State::build(config, warnings, &roots, None))
                .await
                .map_err(|e| ConfigError::single("<startup>", e.to_string()))??;
        for w in &state.warnings {
            warn!(warning = %w, "config warning");
        }
        publish_state_metrics(&metrics, &state, None, "startup");
        // OAuth token caches begin fetching now, before the listeners accept anything.
        state.start_background(&metrics);

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let proxy_listener = bind("listen.address", state.config.listen).await?;
        let admin_listener = bind("admin.address", state.config.admin).await?;

        let shared = Arc::new(SharedState::new(state));
        let reloader = Arc::new(Reloader::new(
            shared.clone(),
            metrics.clone(),
            path,
            extra_roots,
        ));
        Ok(Sidecar {
            shared,
            metrics,
            reloader,
            draining: Arc::new(AtomicBool::new(false)),
            proxy_listener,
            admin_listener,
        })
    }

    /// Where the proxy listener is bound (useful with port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.load().config.listen)
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.load().config.admin)
    }

    /// Serves both listeners until `shutdown` completes, then drains in-flight requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        // The proxy stops first; the admin listener keeps answering (readyz: draining) until
        // the drain is over.
        let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();

        let proxy = Arc::new(Proxy::new(self.shared.clone(), self.metrics.clone()));
        let admin = Arc::new(Admin::new(
            self.shared.clone(),
            self.metrics.clone(),
            self.reloader.clone(),
            self.draining.clone(),
        ));
        // Config and secret files are watched from before the first request is served.
        let watcher = crate::watch::start(self.reloader.clone(), self.shared.clone());
        info!(addr = %self.proxy_addr(), "proxy listening");
        info!(addr = %self.admin_addr(), "admin listening");

        let proxy_server = tokio::spawn(serve(
            self.proxy_listener,
            move |req| {
                let proxy = proxy.clone();
                async move { proxy.handle(req).await }
            },
            async move {
                // Err means the sender is gone, which also means stop.
                let _ = proxy_stopped.await;
            },
            DRAIN_DEADLINE,
        ));
        let admin_server = tokio::spawn(serve(
            self.admin_listener,
            move |req| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            async move {
                let _ = admin_stopped.await;
            },
            Duration::from_secs(1),
        ));

        shutdown.await;
        if let Some(w) = watcher {
            w.abort();
        }
        self.draining.store(true, Ordering::Relaxed);
        info!("shutting down: no new connections, draining in-flight requests");
        let _ = stop_proxy.send(());
        let _ = proxy_server.await;
        let _ = stop_admin.send(());
        let _ = admin_server.await;
        info!("stopped");
    }
}
