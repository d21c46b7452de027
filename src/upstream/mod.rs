//! The connection to Twilio: verified TLS only, pooled per serving thread
//! ([`crate::upstream::pool`]).
//!
//! Trust is the webpki roots plus `upstream.ca_file`; ALPN offers h2 and http/1.1. With
//! `upstream.connect_to` every connection goes to that one socket address, but the URI (and so
//! SNI and certificate name verification) still carries the Twilio host: a stand-in must hold a
//! certificate for the real name, signed by a CA the sidecar was told to trust.

pub mod pool;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;
use crate::upstream::pool::{ConnectionPool, UpstreamBody};
use crate::proxy::error::UpstreamFailure;

/// Request bodies to Twilio: the app's, streamed under the body limit, or bytes the sidecar
/// holds (a buffered body, a token request).
pub type RequestBody = Either<Limited<Incoming>, Full<Bytes>>;
/// Response bodies to the app: Twilio's, streamed, or one the sidecar made.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// Resolves every Twilio host to `connect_to` when set, else through the system resolver.
#[derive(Clone, Debug)]
pub struct Resolver {
    connect_to: Option<SocketAddr>,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, io::Error>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self.connect_to {
            Some(addr) => Box::pin(std::future::ready(Ok(vec![addr].into_iter()))),
            None => {
                let host = name.as_str().to_string();
                Box::pin(async move {
                    // Port 0: the connector fills in the URI's port (443).
                    let addrs: Vec<SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                    Ok(addrs.into_iter())
                })
            }
        }
    }
}

/// The connection pools and the settings they were built from.
pub struct Upstream {
    /// One pool per serving thread (index 0: the main runtime), so a request never waits on a
    /// connection task that lives on another thread.
    pools: Vec<Arc<ConnectionPool>>,
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

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa { path: String, source: io::Error },
    #[error("CA file {path} holds no usable PEM certificate: {reason}")]
    BadCa { path: String, reason: String },
}

impl Upstream {
    /// Builds the client. `extra_roots` are trusted beside the webpki roots and `ca_file`
    /// (`dev` uses it for its throwaway CA).
    pub fn new(
        settings: &UpstreamConfig,
        workers: usize,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Upstream, UpstreamBuildError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let ca_pem = match &settings.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| UpstreamBuildError::ReadCa {
                    path: path.display().to_string(),
                    source,
                })?;
                let bad = |reason: String| UpstreamBuildError::BadCa {
                    path: path.display().to_string(),
                    reason,
                };
                let mut added = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| bad(e.to_string()))?;
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(bad("no CERTIFICATE block found".into()));
                }
                Some(pem)
            }
            None => None,
        };
        for cert in extra_roots {
            // Certificates we generated ourselves; a failure here is a bug, so surface it.
            roots
                .add(cert.clone())
                .map_err(|e| UpstreamBuildError::BadCa {
                    path: "<built-in>".into(),
                    reason: e.to_string(),
                })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamBuildError::BadCa {
                path: "<tls>".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new_with_resolver(Resolver {
            connect_to: settings.connect_to,
        });
        // The URI scheme is https; the TLS layer on top enforces it.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);

        let pools = (0..=workers)
            .map(|_| {
                Arc::new(ConnectionPool::new(
                    https.clone(),
                    settings.pool_idle_timeout,
                    settings.pool_max_idle_per_host,
                    settings.http2_max_streams,
                ))
            })
            .collect();

        Ok(Upstream {
            pools,
            request_timeout: settings.request_timeout,
            settings: settings.clone(),
            ca_pem,
        })
    }

    /// True when this client can serve `settings` unchanged (same settings, same CA bytes), so a
    /// reload keeps its warm connection pool.
    pub fn reusable_for(&self, settings: &UpstreamConfig, workers: usize) -> bool {
        if self.settings != *settings || self.pools.len() != workers + 1 {
            return false;
        }
        match &settings.ca_file {
            None => true,
            Some(path) => std::fs::read(path).ok() == self.ca_pem,
        }
    }

    /// The limit on waiting for a response head.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `req` (whose URI is `https://{twilio host}{path}`) and waits for the response head.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        let pool = &self.pools[serving_thread() % self.pools.len()];
        match tokio::time::timeout(self.request_timeout, pool.send(req)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure::Timeout),
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

/// True when a rustls error sits anywhere in the chain. `io::Error` wraps its payload in a way
/// `source()` skips (it returns the payload's source), so look inside it explicitly.
pub(crate) fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        if is_tls_error(inner) {
            return true;
        }
    }
    err.source().is_some_and(is_tls_error)
}
