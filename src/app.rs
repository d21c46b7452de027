//! Wiring: build the first state, bind the listeners, serve until shutdown, drain.
//!
//! [`Sidecar::start`] does everything that can fail at startup (config, secrets, policy, TLS
//! roots, binding) before anything is served, so a bad config never starts a half-working
//! proxy. [`Sidecar::serve`] then runs until the shutdown future completes.
//!
//! The proxy's TCP listener is accepted on the main runtime and its connections handed
//! round-robin to `listen.workers` serving threads, each with its own current-thread runtime
//! and upstream pool (thread-per-core: no request crosses threads). The unix socket and the
//! admin listener are served on the main runtime.
//!
//! The app-facing stack, outermost first:
//! - the accept loop ([`crate::proxy::server`]): header read timeout and size cap, HTTP/1.1
//!   and h2c on one port, graceful drain;
//! - load shedding: a semaphore permit per request, shared by the TCP and unix listeners;
//!   beyond `limits.max_concurrent_requests` the answer is 503 at once instead of a queue, so
//!   a stuck Twilio cannot pile up unbounded work;
//! - the proxy ([`crate::proxy`]): whole-request timeout, the request phases.
//!
//! With `[webhooks]`, a third listener serves Twilio's inbound webhooks
//! ([`crate::webhooks`]) on the main runtime, drained with the proxy listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info, warn};

use crate::config::reader::Diagnostic;
use crate::config::{Config, ConfigError};
use crate::control::admin::Admin;
use crate::control::reload::{publish_state_metrics, Reloader};
use crate::control::state::{SharedState, State};
use crate::metrics::Metrics;
use crate::proxy::connection_guard::Slots;
use crate::proxy::server::{hand_off, serve, Handoff, ServerOptions};
use crate::proxy::Proxy;
use crate::webhooks::Webhooks;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        what: &'static str,
        addr: String,
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
    unix_listener: Option<(UnixListener, PathBuf)>,
    admin_listener: TcpListener,
    /// `[webhooks]`' listener, when configured.
    webhook_listener: Option<TcpListener>,
}

impl Sidecar {
    /// Builds the state from `config` and binds the listeners.
    pub async fn start(
        config: Config,
        warnings: Vec<Diagnostic>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Sidecar, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let extra_roots = Arc::new(extra_roots);
        let roots = extra_roots.clone();
        let path = config.path.clone();
        let upstream_metrics = metrics.upstream.clone();
        let state = tokio::task::spawn_blocking(move || {
            State::build(config, warnings, &roots, &upstream_metrics, None)
        })
        .await
        .map_err(|e| ConfigError::single("<startup>", e.to_string()))??;
        for w in &state.warnings {
            warn!(warning = %w, "config warning");
        }
        publish_state_metrics(&metrics, &state, None, "startup");
        // OAuth token caches begin fetching now, before the listeners accept anything.
        state.start_background(&metrics.oauth);

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what,
                    addr: addr.to_string(),
                    source,
                })
        };
        let proxy_listener = bind("listen.address", state.config.listen).await?;
        let admin_listener = bind("admin.address", state.config.admin).await?;
        let webhook_listener = match &state.config.webhooks {
            Some(w) => Some(bind("webhooks.listen", w.listen).await?),
            None => None,
        };
        let unix_listener = match &state.config.unix {
            Some(unix) => Some((bind_unix(&unix.path, unix.mode)?, unix.path.clone())),
            None => None,
        };

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
            unix_listener,
            admin_listener,
            webhook_listener,
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

    /// Where the webhook listener is bound, with `[webhooks]`.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves every listener until `shutdown` completes, then drains in-flight requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let config = self.shared.load().config.clone();
        let admin_addr = self.admin_addr();
        let options = ServerOptions::new(&config.limits);
        let caps = ConnectionCaps::new(&config.limits, config.webhooks.is_some());
        info!(
            proxy = caps.proxy,
            webhooks = caps.webhooks,
            admin = caps.admin,
            fd_limit = caps.fd_limit,
            "connection caps"
        );
        let connections = &self.metrics.connections;
        let write_timeout = config.limits.write_timeout;
        let proxy_slots = Slots::new(caps.proxy, connections.listener("proxy"), write_timeout);

        // The proxy listeners stop first; the admin listener keeps answering (readyz:
        // draining) until the drain is over.
        let (stop_proxy, proxy_stopped) = tokio::sync::watch::channel(false);
        let proxy = Arc::new(
            Proxy::new(self.shared.clone(), self.metrics.clone())
                .with_admin_address(self.admin_addr())
                .with_shutdown(proxy_stopped.clone()),
        );
        // Load shedding lives in the proxy: past `limits.max_concurrent_requests` in flight a
        // request is answered 503 at once rather than queued, whichever listener or tunnel it
        // came through.
        let handler = {
            let proxy = proxy.clone();
            move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { proxy.serve_request(req).await }
            }
        };

        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = move || {
            let mut rx = proxy_stopped.clone();
            async move {
                // Err means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let admin = Arc::new(Admin::new(
            self.shared.clone(),
            self.metrics.clone(),
            self.reloader.clone(),
            self.draining.clone(),
            admin_addr,
        ));
        // Config and secret files are watched from before the first request is served.
        let watcher = crate::control::watch::start(self.reloader.clone(), self.shared.clone());
        if let (Some(addr), Some(webhooks)) = (self.webhook_addr(), &config.webhooks) {
            info!(%addr, forward_to = %webhooks.forward_to, "webhooks listening");
        }
        info!(addr = %self.proxy_addr(), "proxy listening");
        info!(addr = %self.admin_addr(), "admin listening");

        // The TCP listener is served by `listen.workers` threads with a runtime each; a
        // request is handled start to finish on one thread, with that thread's upstream pool,
        // so it never waits on a task another thread has to wake.
        let mut queues = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let (queue, connections) = tokio::sync::mpsc::unbounded_channel();
            let (handler, stop, proxy) = (handler.clone(), stopped(), proxy.clone());
            let slots = proxy_slots.clone();
            let thread = std::thread::Builder::new()
                .name(format!("twilio-sidecar-{index}"))
                .spawn(move || {
                    crate::upstream::set_serving_thread(index + 1);
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(async move {
                            serve(Handoff::new(connections), handler, stop, options, slots).await;
                            // Tunnels opened on this thread run on its runtime: it lives
                            // until they have drained (or the deadline passed).
                            let _ =
                                tokio::time::timeout(options.drain, proxy.tunnels_drained()).await;
                        }),
                        Err(e) => error!(error = %e, "cannot start a serving thread"),
                    }
                });
            match thread {
                Ok(t) => {
                    queues.push(queue);
                    threads.push(t);
                }
                Err(e) => error!(error = %e, "cannot start a serving thread"),
            }
        }
        let mut proxy_servers = vec![tokio::spawn(hand_off(
            self.proxy_listener,
            queues,
            proxy_slots.clone(),
            stopped(),
        ))];
        // Webhooks: verified, then forwarded to the app; drained with the proxy listeners.
        if let (Some(listener), Some(webhooks)) = (self.webhook_listener, &config.webhooks) {
            let service = Arc::new(Webhooks::new(
                self.shared.clone(),
                self.metrics.clone(),
                webhooks,
                admin_addr,
            ));
            proxy_servers.push(tokio::spawn(serve(
                listener,
                move |req| {
                    let service = service.clone();
                    async move { service.handle(req).await }
                },
                stopped(),
                options,
                Slots::new(
                    caps.webhooks,
                    connections.listener("webhooks"),
                    write_timeout,
                ),
            )));
        }
        let mut socket_path = None;
        if let Some((listener, path)) = self.unix_listener {
            info!(path = %path.display(), "proxy listening on unix socket");
            let proxy = proxy.clone();
            let unix_handler = move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { proxy.serve_unix_request(req).await }
            };
            // The unix socket shares the TCP listener's cap: one pool of app connections.
            proxy_servers.push(tokio::spawn(serve(
                listener,
                unix_handler,
                stopped(),
                options,
                proxy_slots.clone(),
            )));
            socket_path = Some(path);
        }
        let admin_server = tokio::spawn(serve(
            self.admin_listener,
            move |req| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
            async move {
                let _ = admin_stopped.await;
            },
            ServerOptions {
                drain: Duration::from_secs(1),
                ..options
            },
            Slots::new(caps.admin, connections.listener("admin"), write_timeout),
        ));

        shutdown.await;
        if let Some(w) = watcher {
            w.abort();
        }
        self.draining.store(true, Ordering::Relaxed);
        info!(
            deadline_ms = options.drain.as_millis() as u64,
            "shutting down: no new connections, draining in-flight requests"
        );
        let _ = stop_proxy.send(true);
        for server in proxy_servers {
            let _ = server.await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        // CONNECT tunnels drain on the same signal and deadline.
        if tokio::time::timeout(options.drain, proxy.tunnels_drained())
            .await
            .is_err()
        {
            warn!("drain deadline reached with tunnels still open");
        }
        if let Some(path) = socket_path {
            let _ = std::fs::remove_file(path);
        }
        let _ = stop_admin.send(());
        let _ = admin_server.await;
        info!("stopped");
    }
}

/// How many connections each listener may hold open at once.
#[derive(Debug, Clone, Copy)]
struct ConnectionCaps {
    proxy: usize,
    webhooks: usize,
    admin: usize,
    /// The soft file-descriptor limit the defaults were derived from.
    fd_limit: u64,
}

impl ConnectionCaps {
    /// `limits.max_connections`, or by default a quarter of the file descriptors left after
    /// the admin's connections and a reserve for files, listeners and token fetches (an
    /// eighth each for the proxy and webhook listeners when both run) — the rest is for
    /// upstream connections and connections to the webhook app, so a flood of
    /// app sockets meets the cap before the descriptor limit. The soft limit is raised to
    /// the hard one first, as servers do.
    fn new(limits: &crate::config::Limits, webhooks: bool) -> ConnectionCaps {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut nofile = getrlimit(Resource::Nofile);
        // `None` is unlimited. An unlimited hard limit still has the kernel's `nr_open` (2^20
        // unless changed) above it, which is as far as a soft limit can go.
        let raise_to = match (nofile.current, nofile.maximum) {
            (Some(soft), Some(hard)) if soft < hard => Some(hard),
            (Some(soft), None) if soft < 1 << 20 => Some(1 << 20),
            _ => None,
        };
        if let Some(to) = raise_to {
            let raised = rustix::process::Rlimit {
                current: Some(to),
                maximum: nofile.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                nofile = getrlimit(Resource::Nofile);
            }
        }
        let fd_limit = nofile.current.unwrap_or(u64::MAX);
        let admin = limits.max_admin_connections;
        let reserve = 64 + admin as u64;
        let shares = if webhooks { 8 } else { 4 };
        let default = usize::try_from(fd_limit.saturating_sub(reserve) / shares)
            .unwrap_or(usize::MAX)
            .max(16);
        let cap = limits.max_connections.unwrap_or(default);
        ConnectionCaps {
            proxy: cap,
            webhooks: cap,
            admin,
            fd_limit,
        }
    }
}

/// Binds the unix socket, replacing a stale one, and sets its file mode.
fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source: std::io::Error| StartError::Bind {
        what: "listen.unix",
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // Left behind by a previous run that did not exit cleanly.
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}
