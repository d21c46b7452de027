//! Transparent mode's data path (`[intercept]`): `CONNECT host:443` from an app whose SDK uses
//! the sidecar as its HTTPS proxy, the TLS handshake with a leaf certificate for that host
//! ([`crate::intercept`]), and the requests inside, each through the same pipeline as a plain
//! request — with the host pinned to the CONNECT's and the caller fixed by the CONNECT's
//! `Proxy-Authorization`.
//!
//! Phase **connect** may refuse: without `[intercept]`, 405 as for any CONNECT; a target
//! other than an allowed Twilio host on port 443, 403 (nothing is ever dialled: the tunnel
//! ends here); client credentials missing or not valid, 407 with `Proxy-Authenticate`. The
//! TLS handshake must complete within `limits.header_read_timeout`. Tunnels are counted,
//! their requests take permits like any other, and they are drained on shutdown.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use tracing::debug;

use super::connection_guard::{guard, Activity};
use super::error::ProxyError;
use super::server::{connection_builder, ServerOptions};
use super::{Proxy, Record};
use crate::control::state::State;
use crate::gate::clients::{AuthFailure, Caller};
use crate::gate::Refusal;
use crate::upstream::body::ResponseBody as Body;

/// What holds for every request in one tunnel. Names rather than indexes: a reload may
/// renumber hosts and clients while the tunnel stays open, and may revoke the client.
#[derive(Debug)]
pub(super) struct Tunnel {
    pub(super) host: Box<str>,
    /// The client the CONNECT authenticated as; `None`: anonymous.
    pub(super) client: Option<Box<str>>,
}

/// The tunnels open now, the options their connections are served with, and the shutdown
/// signal they drain on.
#[derive(Debug)]
pub(super) struct Tunnels {
    pub(super) options: ServerOptions,
    active: AtomicUsize,
    idle: Notify,
    stop: watch::Receiver<bool>,
}

impl Tunnels {
    pub(super) fn new(options: ServerOptions, stop: watch::Receiver<bool>) -> Tunnels {
        Tunnels {
            options,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            stop,
        }
    }

    /// Resolves once no tunnel is open (after shutdown has asked them to close).
    pub(super) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open tunnel, counted while it lives.
struct Open<'t>(&'t Tunnels);

impl<'t> Open<'t> {
    fn new(tunnels: &'t Tunnels) -> Open<'t> {
        tunnels.active.fetch_add(1, Ordering::AcqRel);
        Open(tunnels)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Proxy {
    /// A `CONNECT`: opens a tunnel (200, then the TLS handshake on the upgraded connection)
    /// or refuses it. Counted and logged like any request.
    pub(super) fn connect(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let state = self.state.load();
        let request_id = self.request_id(req.headers().get(&super::X_REQUEST_ID));
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let mut record = Record::default();
        let response = match self.open_tunnel(&state, &mut req, &mut record) {
            Ok(()) => {
                record.decision = "tunnel";
                let mut ok = Response::new(Either::Right(Full::default()));
                *ok.status_mut() = StatusCode::OK;
                ok
            }
            Err(e) => {
                let result = match &e {
                    ProxyError::TunnelUnauthenticated(_) => "refused_auth",
                    ProxyError::Refused(Refusal::MethodNotAllowed(_)) => "refused_disabled",
                    ProxyError::Refused(_) => "refused_target",
                    _ => "failed",
                };
                self.metrics.proxy.tunnel(result);
                e.to_response(self.error_docs(&state)).map(Either::Right)
            }
        };
        self.finish(response, &record, &method, &uri, request_id, started)
    }

    /// Phase **connect**: the checks, then the tunnel's task is spawned to wait for the
    /// upgrade.
    fn open_tunnel<'s>(
        self: &Arc<Self>,
        state: &'s State,
        req: &mut Request<Incoming>,
        record: &mut Record<'s>,
    ) -> Result<(), ProxyError> {
        let Some(intercept) = state.intercept.clone() else {
            return Err(Refusal::MethodNotAllowed("CONNECT".into()).into());
        };
        if req.version() >= Version::HTTP_2 {
            return Err(Refusal::MethodNotAllowed("CONNECT".into()).into());
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .ok_or_else(|| Refusal::BadTarget("CONNECT needs host:443".into()))?;
        let host = state.gate.router.connect_target(authority)?;
        let name = state.gate.router.hosts.name(host);
        record.host = name;
        let caller = match self.identify(state, req.headers(), record) {
            Ok(caller) => caller,
            Err(Refusal::Unauthenticated(failure)) => {
                return Err(ProxyError::TunnelUnauthenticated(failure))
            }
            Err(other) => return Err(other.into()),
        };
        let (config, issued) = intercept
            .server_config(name)
            .map_err(|e| ProxyError::TunnelFailed(e.to_string()))?;
        if issued {
            self.metrics.proxy.leaf_certificates_issued.inc();
        }
        let tunnel = Tunnel {
            host: name.into(),
            client: match caller {
                Caller::Client(i) => Some(state.gate.clients[i].id.clone()),
                Caller::Anonymous => None,
            },
        };
        let upgrade = hyper::upgrade::on(req);
        let proxy = self.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            proxy.run_tunnel(upgrade, acceptor, tunnel).await;
        });
        Ok(())
    }

    /// The tunnel's life: the upgrade, the app's TLS handshake (bounded), then its HTTP/1.1
    /// or HTTP/2 connection served until either side closes or shutdown drains it.
    async fn run_tunnel(
        self: Arc<Self>,
        upgrade: hyper::upgrade::OnUpgrade,
        acceptor: tokio_rustls::TlsAcceptor,
        tunnel: Tunnel,
    ) {
        let tunnels = &self.tunnels;
        let _open = Open::new(tunnels);
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let handshake = acceptor.accept(TokioIo::new(upgraded));
        let tls = match tokio::time::timeout(tunnels.options.header_read_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // Usually an app that does not trust the sidecar's CA.
                self.metrics.proxy.tunnel("app_tls_failed");
                debug!(host = %tunnel.host, error = %e, "the app's TLS handshake in a tunnel failed");
                return;
            }
            Err(_) => {
                self.metrics.proxy.tunnel("app_tls_failed");
                return;
            }
        };
        self.metrics.proxy.tunnel("opened");
        let tunnel = Arc::new(tunnel);
        let proxy = self.clone();
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = activity.clone();
            service_fn(move |req| {
                let in_flight = activity.begin();
                let (proxy, tunnel) = (proxy.clone(), tunnel.clone());
                async move {
                    let response = proxy.serve_tunneled(req, &tunnel).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let builder = connection_builder(tunnels.options);
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        let mut stop = tunnels.stop.clone();
        let stopping = async move {
            if stop.wait_for(|stop| *stop).await.is_err() {
                // No one can ask any more (a proxy built without `with_shutdown`).
                std::future::pending::<()>().await;
            }
        };
        // Held to the same rules as a listener's connections: a first request in time, an
        // idle timeout, a graceful close on shutdown (what is in flight finishes).
        let deadlines = tunnels.options.deadlines();
        // A tunnel is one of the proxy listener's connections, and counted as one.
        let metrics = self.metrics.connections.listener("proxy");
        if let Err(e) = guard(conn, &activity, deadlines, stopping, &metrics).await {
            debug!(error = %e, "tunnel connection ended with an error");
        }
    }

    /// A request inside a tunnel: a permit, then the pipeline with the tunnel's host and
    /// caller.
    /// (Not an `async fn`, which would keep `req` twice in every request's future.)
    #[allow(clippy::manual_async_fn)]
    fn serve_tunneled<'a>(
        &'a self,
        req: Request<Incoming>,
        tunnel: &'a Tunnel,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'a {
        async move {
            match self.permits.try_acquire() {
                Ok(_permit) => self.handle_in(req, Some(tunnel), false).await,
                Err(_) => self.shed(&req),
            }
        }
    }

    /// Phase 0 in a tunnel: the caller the CONNECT authenticated as, as this generation knows
    /// it (a client revoked since gets 401), or anonymous if that is still served.
    pub(super) fn tunnel_caller<'s>(
        &self,
        state: &'s State,
        tunnel: &Tunnel,
        record: &mut Record<'s>,
    ) -> Result<Caller, Refusal> {
        let caller = match &tunnel.client {
            Some(id) => state.gate.client(id).ok_or(AuthFailure::UnknownClient),
            None if state.client_keys.any() && !state.gate.anonymous => Err(AuthFailure::Missing),
            None => Ok(Caller::Anonymous),
        };
        match caller {
            Ok(caller) => {
                record.client = state.gate.client_label(caller);
                Ok(caller)
            }
            Err(failure) => {
                self.metrics
                    .proxy
                    .client_auth_failures
                    .with_label_values(&[failure.as_str()])
                    .inc();
                Err(Refusal::Unauthenticated(failure))
            }
        }
    }
}
