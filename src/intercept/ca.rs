//! The local CA for transparent mode, made by `twilio-sidecar ca init`: name-constrained to
//! `twilio.com` (a critical nameConstraints extension permitting only that DNS subtree), so
//! that even a stolen CA key can impersonate nothing but Twilio — and only to the apps that
//! chose to trust it. `pathlen:0`, key usage keyCertSign and cRLSign, a subject key
//! identifier: what `openssl verify -x509_strict` and Python's strict verification ask of a
//! CA.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};

use super::InterceptError;

/// The only DNS subtree the CA may certify.
pub const PERMITTED_DOMAIN: &str = "twilio.com";

/// What `ca init` wrote.
#[derive(Debug)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA's parameters, valid for `days` from now.
fn params(days: u32) -> Result<CertificateParams, InterceptError> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(InterceptError::Cert)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(PERMITTED_DOMAIN.into())],
        excluded_subtrees: vec![],
    });
    ca.distinguished_name.push(
        DnType::CommonName,
        "twilio-sidecar local CA (name-constrained to twilio.com)",
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "twilio-sidecar");
    let now = time::OffsetDateTime::now_utc();
    ca.not_before = now - Duration::from_secs(3600);
    ca.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    Ok(ca)
}

/// Writes a new CA into `dir`: `ca.pem` (mode 0644) and `ca.key` (0600). Refuses to overwrite
/// either.
pub fn init(dir: &Path, days: u32) -> Result<CaFiles, InterceptError> {
    if days == 0 {
        return Err(InterceptError::Invalid("--days must be at least 1".into()));
    }
    std::fs::create_dir_all(dir).map_err(|source| InterceptError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = CaFiles {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    };
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(InterceptError::Exists(path.clone()));
        }
    }
    let key = KeyPair::generate().map_err(InterceptError::Cert)?;
    let cert = params(days)?
        .self_signed(&key)
        .map_err(InterceptError::Cert)?;
    // The key first, exclusively and private from its first byte.
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InterceptError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| InterceptError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(bytes).map_err(|source| InterceptError::Io {
        path: path.to_path_buf(),
        source,
    })
}
