//! Verified TLS to Twilio: the trust store (webpki roots, `upstream.ca_file`, built-in roots
//! for `dev`), ALPN h2 and http/1.1, and the resolver that honours `upstream.connect_to` —
//! every connection then goes to that one address while SNI and certificate verification still
//! use the Twilio host name.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;

/// Opens TLS connections (verified, ALPN h2 / http/1.1) to a Twilio host.
pub type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa { path: String, source: io::Error },
    #[error("CA file {path} holds no usable PEM certificate: {reason}")]
    BadCa { path: String, reason: String },
}

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

/// The connector for `settings`, and the CA file's bytes it trusts (so a reload can tell
/// whether they changed).
pub fn connector(
    settings: &UpstreamConfig,
    extra_roots: &[CertificateDer<'static>],
) -> Result<(Connector, Option<Vec<u8>>), UpstreamBuildError> {
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

    Ok((https, ca_pem))
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
