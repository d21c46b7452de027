//! A stand-in for Twilio on loopback: a real TLS server (its own throwaway CA, a certificate for
//! the Twilio host names) that records what it receives and answers with an echo.
//!
//! `twilio-sidecar dev` runs the proxy against it, and the integration tests use it as the
//! upstream mock, so both exercise the real upstream path: SNI, certificate verification, ALPN,
//! pooled connections. What it records keeps the raw headers (tests assert the exact credential
//! arrived); what it echoes redacts the credential's secret.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How many requests the stand-in remembers (oldest dropped first).
const RECORD_LIMIT: usize = 10_000;

/// A throwaway certificate authority and a server certificate signed by it.
pub struct ThrowawayPki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for ThrowawayPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThrowawayPki")
    }
}

impl ThrowawayPki {
    /// The server certificate's private key (PKCS#8), for TLS servers other than [`StandIn`].
    pub fn server_key_der(&self) -> PrivatePkcs8KeyDer<'static> {
        self.server_key.clone_key()
    }

    /// A new CA and a server certificate for `names`.
    pub fn new(names: &[&str]) -> Result<ThrowawayPki, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "twilio-sidecar throwaway CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        server.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        Ok(ThrowawayPki {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        })
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    /// `Host` header, or `:authority` for HTTP/2.
    pub host: Option<String>,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
    /// Which TLS connection it came on: 1 for the first the stand-in accepted, and so on.
    pub connection: u64,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// Every value of `name`, as text.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before answering (to simulate a slow Twilio).
    pub delay: Duration,
}

/// Decides the reply for a request.
pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    addr: SocketAddr,
    pki: ThrowawayPki,
    log: Arc<Mutex<VecDeque<Recorded>>>,
    responder: Arc<RwLock<Responder>>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn").field("addr", &self.addr).finish()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts on `127.0.0.1:0` with a certificate for `names`.
    pub async fn start(
        names: &[&str],
    ) -> Result<StandIn, Box<dyn std::error::Error + Send + Sync>> {
        let pki = ThrowawayPki::new(names)?;
        Self::start_with(pki, "127.0.0.1:0".parse()?).await
    }

    /// Starts on `addr` serving `pki`'s server certificate, offering h2 and http/1.1.
    pub async fn start_with(
        pki: ThrowawayPki,
        addr: SocketAddr,
    ) -> Result<StandIn, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with_alpn(pki, addr, &[b"h2", b"http/1.1"]).await
    }

    /// Starts on `addr` offering exactly `alpn` (e.g. only `http/1.1`, as some Twilio edges and
    /// most test upstreams do).
    pub async fn start_with_alpn(
        pki: ThrowawayPki,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> Result<StandIn, Box<dyn std::error::Error + Send + Sync>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                pki.server_chain.clone(),
                PrivateKeyDer::Pkcs8(pki.server_key.clone_key()),
            )?;
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let accepted = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let responder: Arc<RwLock<Responder>> = Arc::new(RwLock::new(Arc::new(echo)));

        let (log2, responder2, accepted2) = (log.clone(), responder.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let (log, responder, accepted) =
                    (log2.clone(), responder2.clone(), accepted2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let connection = accepted.fetch_add(1, Ordering::Relaxed) + 1;
                    let service = service_fn(move |req| {
                        let (log, responder, sni) = (log.clone(), responder.clone(), sni.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(req, sni, connection, &log, &responder).await,
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(StandIn {
            addr,
            pki,
            log,
            responder,
            accepted,
            task,
        })
    }

    /// Where it listens: give this to `upstream.connect_to`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its CA certificate (DER), to trust.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.pki.ca_der.clone()
    }

    /// Its CA certificate (PEM), for `upstream.ca_file`.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// How many TLS connections it has accepted.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Everything received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }

    /// Replaces the reply logic.
    pub fn set_responder(&self, responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        if let Ok(mut r) = self.responder.write() {
            *r = Arc::new(responder);
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    sni: Option<String>,
    connection: u64,
    log: &Mutex<VecDeque<Recorded>>,
    responder: &RwLock<Responder>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let recorded = Recorded {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
        host,
        sni,
        connection,
        version: parts.version,
        headers: parts.headers,
        body,
    };
    let responder = responder
        .read()
        .map(|r| r.clone())
        .unwrap_or_else(|_| Arc::new(echo));
    let reply = responder(&recorded);
    if let Ok(mut l) = log.lock() {
        if l.len() >= RECORD_LIMIT {
            l.pop_front();
        }
        l.push_back(recorded);
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::try_from(v)) {
            response.headers_mut().append(k, v);
        }
    }
    response
}

/// The default reply: 200 JSON describing what arrived, with the credential's secret redacted.
pub fn echo(r: &Recorded) -> Reply {
    let authorization = r
        .headers
        .get(header::AUTHORIZATION)
        .map(redact_authorization);
    let body = serde_json::json!({
        "stand_in": "twilio-sidecar stand-in for Twilio (not the real Twilio)",
        "method": r.method,
        "host": r.host,
        "sni": r.sni,
        "target": r.target,
        "http_version": format!("{:?}", r.version),
        "authorization": authorization,
        "authorization_headers": r.headers.get_all(header::AUTHORIZATION).iter().count(),
        "cookie_seen": r.headers.contains_key(header::COOKIE),
        "body_bytes": r.body.len(),
    });
    Reply {
        status: StatusCode::OK,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "twilio-request-id".into(),
                "RQ00000000000000000000000000000000".into(),
            ),
        ],
        body: Bytes::from(body.to_string()),
        delay: Duration::ZERO,
    }
}

/// `Basic SK…:[redacted]`: the scheme and username, never the secret.
pub fn redact_authorization(v: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(v.as_bytes());
    match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            let user = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| s.split_once(':').map(|(u, _)| u.to_string()))
                .unwrap_or_else(|| "?".into());
            format!("Basic {user}:[redacted]")
        }
        Some((scheme, _)) => format!("{scheme} [redacted]"),
        None => "[redacted]".into(),
    }
}
