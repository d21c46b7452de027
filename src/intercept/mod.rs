//! Transparent mode: the sidecar as the HTTPS proxy an app's SDK already knows how to use
//! (`HTTPS_PROXY`, `HTTP_PROXY`), so an app moves behind it by setting two environment
//! variables and changing no code.
//!
//! The app sends `CONNECT api.twilio.com:443`; the sidecar answers 200 and completes the TLS
//! handshake itself, with a short-lived certificate for that host issued by a local CA the app
//! was told to trust ([`ca`], made by `twilio-sidecar ca init`). The requests inside the
//! tunnel then go through the same pipeline as plain ones (`crate::proxy::tunnel`). This
//! module owns the CA as loaded from `[intercept]` and the leaf certificates it issues, one
//! per host, cached and renewed well before they expire.

pub mod ca;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use secrecy::ExposeSecret;

use crate::config::InterceptConfig;

/// How long a leaf certificate is valid; it is replaced when less than half is left.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Leaves start this far in the past, for apps whose clock runs a little behind.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);

/// Why the CA could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{0}")]
    Invalid(String),
    #[error("{} already exists; ca init never overwrites a CA (move it away first)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate error: {0}")]
    Cert(rcgen::Error),
    #[error("{0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("the CA cannot issue certificates apps would accept: {0}")]
    SelfCheck(String),
}

/// Whether `der` is a CA, and whether it is name-constrained to DNS names under twilio.com.
fn inspect_ca(der: &[u8]) -> Result<(bool, bool), String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let (mut is_ca, mut constrained) = (false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::NameConstraints(nc) => {
                let permitted = nc.permitted_subtrees.as_deref().unwrap_or_default();
                constrained = ext.critical
                    && !permitted.is_empty()
                    && permitted.iter().all(|s| match s.base {
                        GeneralName::DNSName(d) => {
                            let d = d.trim_start_matches('.').to_ascii_lowercase();
                            d == ca::PERMITTED_DOMAIN || d.ends_with(".twilio.com")
                        }
                        _ => false,
                    });
            }
            _ => {}
        }
    }
    Ok((is_ca, constrained))
}

/// A leaf ready to serve: its TLS server config (ALPN h2 and http/1.1) and when to replace it.
struct Leaf {
    host: Box<str>,
    config: Arc<rustls::ServerConfig>,
    renew_at: SystemTime,
}

/// The loaded CA and the leaves it issued.
pub struct Intercept {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate and key as read, to tell whether a reload changed them.
    material: Vec<u8>,
    leaves: Mutex<Vec<Leaf>>,
    /// Whether the CA is name-constrained to twilio.com (a warning when not).
    pub name_constrained: bool,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept")
            .field("name_constrained", &self.name_constrained)
            .finish_non_exhaustive()
    }
}

impl Intercept {
    /// Reads the CA certificate and key, and checks that a leaf it issues verifies against it
    /// (so a key that does not belong to the certificate, or a CA that is not one, is an
    /// error now rather than a handshake failure in every app). `previous` is kept when it was
    /// loaded from the same bytes, with its cached leaves.
    pub fn load(
        config: &InterceptConfig,
        previous: Option<&Arc<Intercept>>,
    ) -> Result<Arc<Intercept>, InterceptError> {
        let cert_pem =
            std::fs::read_to_string(&config.ca_cert).map_err(|source| InterceptError::Io {
                path: config.ca_cert.clone(),
                source,
            })?;
        let key_pem = config.ca_key.read()?;
        let mut material = cert_pem.as_bytes().to_vec();
        material.extend_from_slice(key_pem.expose_secret().as_bytes());
        if let Some(previous) = previous.filter(|p| p.material == material) {
            return Ok(previous.clone());
        }
        let key = KeyPair::from_pem(key_pem.expose_secret()).map_err(|e| {
            InterceptError::Invalid(format!("the CA key is not a usable PEM private key: {e}"))
        })?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            InterceptError::Invalid(format!(
                "{} holds no PEM certificate: {e}",
                config.ca_cert.display()
            ))
        })?;
        let (is_ca, name_constrained) = inspect_ca(&ca_der).map_err(|e| {
            InterceptError::Invalid(format!(
                "{} is not a certificate this sidecar can read: {e}",
                config.ca_cert.display()
            ))
        })?;
        if !is_ca {
            return Err(InterceptError::Invalid(format!(
                "{} is not a CA certificate (no basicConstraints CA:TRUE)",
                config.ca_cert.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(InterceptError::Cert)?;
        let intercept = Intercept {
            issuer,
            material,
            leaves: Mutex::new(Vec::new()),
            name_constrained,
        };
        intercept.self_check(&ca_der)?;
        Ok(Arc::new(intercept))
    }

    /// Issues a leaf and verifies it as an app would (webpki, this CA as the only root).
    fn self_check(&self, ca_der: &CertificateDer<'static>) -> Result<(), InterceptError> {
        let (chain, _) = self.issue("api.twilio.com", SystemTime::now())?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| InterceptError::SelfCheck(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| InterceptError::SelfCheck(e.to_string()))?;
        let name = ServerName::try_from("api.twilio.com")
            .map_err(|e| InterceptError::SelfCheck(e.to_string()))?;
        verifier
            .verify_server_cert(&chain[0], &[], &name, &[], UnixTime::now())
            .map_err(|e| {
                InterceptError::SelfCheck(format!("{e} (does the key belong to the certificate?)"))
            })?;
        Ok(())
    }

    /// A new leaf for `host`: SAN = host, serverAuth, AKI, valid for [`LEAF_LIFETIME`].
    fn issue(
        &self,
        host: &str,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), InterceptError> {
        let key = KeyPair::generate().map_err(InterceptError::Cert)?;
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(InterceptError::Cert)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::from(now);
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(InterceptError::Cert)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }

    /// The TLS server config for a tunnel to `host` (an allowed Twilio host): a cached leaf,
    /// or a new one when there is none or the cached one is past half its life. Returns
    /// whether a leaf was issued (for the metric).
    pub fn server_config(
        &self,
        host: &str,
    ) -> Result<(Arc<rustls::ServerConfig>, bool), InterceptError> {
        let now = SystemTime::now();
        {
            let leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(leaf) = leaves.iter().find(|l| *l.host == *host && now < l.renew_at) {
                return Ok((leaf.config.clone(), false));
            }
        }
        // Issued outside the lock: a signature takes a while, and another tunnel to the same
        // host racing this one only costs a second leaf.
        let (chain, key) = self.issue(host, now)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| InterceptError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| InterceptError::Invalid(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        leaves.retain(|l| *l.host != *host);
        leaves.push(Leaf {
            host: host.into(),
            config: config.clone(),
            renew_at: now + LEAF_LIFETIME / 2,
        });
        Ok((config, true))
    }
}
