//! The connection to Twilio: verified TLS only, pooled per serving thread
//! ([`crate::upstream::pool`]); HTTP/1.1 exchanges run in the request's own task
//! ([`crate::upstream::http1`]), HTTP/2 on hyper's client.
//!
//! Trust is the webpki roots plus `upstream.ca_file`; ALPN offers h2 and http/1.1. With
//! `upstream.connect_to` every connection goes to that one socket address, but the URI (and so
//! SNI and certificate name verification) still carries the Twilio host: a stand-in must hold a
//! certificate for the real name, signed by a CA the sidecar was told to trust.

pub mod account_limit;
pub mod body;
pub mod http1;
pub mod pool;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;
use crate::metrics::UpstreamMetrics;
pub use body::{RequestBody, ResponseBody, UpstreamBody};
use pool::ConnectionPool;
pub use tls::UpstreamBuildError;

/// Why the upstream call failed; also the `kind` label of the upstream error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// TCP connect failed or was refused.
    Connect,
    /// The TLS handshake failed, certificate verification included.
    Tls,
    /// No response headers within the request timeout.
    Timeout,
    /// The connection broke or the peer spoke bad HTTP.
    Protocol,
}

impl UpstreamFailure {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// The connection pools and the settings they were built from.
pub struct Upstream {
    /// One pool per serving thread (index 0: the main runtime), so a request never waits on a
    /// connection task that lives on another thread.
    pools: Vec<Arc<ConnectionPool>>,
    metrics: Arc<UpstreamMetrics>,
    request_timeout: Duration,
    settings: UpstreamConfig,
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client, counting into metrics of its own. `extra_roots` are trusted beside
    /// the webpki roots and `ca_file` (`dev` uses it for its throwaway CA).
    pub fn new(
        settings: &UpstreamConfig,
        workers: usize,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Upstream, UpstreamBuildError> {
        Self::with_metrics(
            settings,
            workers,
            extra_roots,
            Arc::new(UpstreamMetrics::detached()),
        )
    }

    /// Builds the client; its pools count into `metrics`, which outlive any one generation.
    pub fn with_metrics(
        settings: &UpstreamConfig,
        workers: usize,
        extra_roots: &[CertificateDer<'static>],
        metrics: Arc<UpstreamMetrics>,
    ) -> Result<Upstream, UpstreamBuildError> {
        let (https, ca_pem) = tls::connector(settings, extra_roots)?;

        let pools = (0..=workers)
            .map(|_| {
                Arc::new(ConnectionPool::new(
                    https.clone(),
                    settings.pool_idle_timeout,
                    settings.pool_max_idle_per_host,
                    settings.http2_max_streams,
                    metrics.clone(),
                ))
            })
            .collect();

        Ok(Upstream {
            pools,
            metrics,
            request_timeout: settings.request_timeout,
            settings: settings.clone(),
            ca_pem,
        })
    }

    /// True when this client can serve `settings` unchanged (same settings, same CA bytes), so a
    /// reload keeps its warm connection pool.
    pub fn reusable_for(&self, settings: &UpstreamConfig, workers: usize) -> bool {
        if !self.settings.same_connections(settings) || self.pools.len() != workers + 1 {
            return false;
        }
        match &settings.ca_file {
            None => true,
            Some(path) => std::fs::read(path).ok() == self.ca_pem,
        }
    }

    /// The metrics this client counts into.
    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// The limit on waiting for a response head.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `req` (whose URI is `https://{twilio host}{path}`) and waits for the response head.
    /// (Not an `async fn`, which would keep `req` twice in every request's future.)
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        &self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamFailure>> + Send + '_ {
        async move {
            let pool = &self.pools[serving_thread() % self.pools.len()];
            match tokio::time::timeout(self.request_timeout, pool.send(req)).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamFailure::Timeout),
            }
        }
    }

    /// Idle HTTP/1.1 upstream connections kept, over all serving threads.
    pub fn idle_connections(&self) -> usize {
        self.pools.iter().map(|p| p.idle_count()).sum()
    }

    /// Upstream connections ready for a request without a new handshake (idle HTTP/1.1 plus
    /// open HTTP/2), over all serving threads.
    pub fn reusable_connections(&self) -> usize {
        self.pools.iter().map(|p| p.reusable_count()).sum()
    }
}

thread_local! {
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving thread `index` (1-based; 0 is the main runtime), so its
/// upstream requests use that thread's connection pool.
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.with(|t| t.set(index));
}

fn serving_thread() -> usize {
    SERVING_THREAD.with(std::cell::Cell::get)
}
