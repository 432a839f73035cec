//! PEM loading and rustls configuration, shared by the WebSocket and QUIC transports.
//!
//! Everything runs on the `ring` provider; nothing here uses aws-lc.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why certificates or keys could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be opened or read.
    Read(PathBuf, std::io::Error),
    /// The file holds no PEM section of the expected kind.
    Missing(PathBuf, &'static str),
    /// The PEM is malformed.
    Pem(PathBuf, String),
    /// A certificate in a CA bundle is not a usable trust anchor.
    BadCa(PathBuf, String),
    /// The private key cannot be used, or does not belong to the certificate.
    BadKey(PathBuf, String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            TlsError::Missing(p, what) => write!(f, "{} holds no PEM {what}", p.display()),
            TlsError::Pem(p, e) => write!(f, "{} is not valid PEM: {e}", p.display()),
            TlsError::BadCa(p, e) => {
                write!(f, "{} is not a usable CA certificate: {e}", p.display())
            }
            TlsError::BadKey(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for TlsError {}

fn pem_error(path: &Path, e: pem::Error, what: &'static str) -> TlsError {
    match e {
        pem::Error::Io(io) => TlsError::Read(path.to_owned(), io),
        pem::Error::NoItemsFound => TlsError::Missing(path.to_owned(), what),
        other => TlsError::Pem(path.to_owned(), other.to_string()),
    }
}

/// The crypto provider every configuration uses: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate in the PEM file at `path` (a chain, leaf first); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e, "certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::Missing(path.to_owned(), "certificate"));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e, "private key"))
}

/// Loads the CA bundle at `path` as trust anchors; every certificate in it must parse as one.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::BadCa(path.to_owned(), e.to_string()))?;
    }
    Ok(roots)
}

/// Loads a certificate chain and its private key, and checks that they belong together.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey(key.to_owned(), format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        TlsError::BadKey(
            key.to_owned(),
            format!(
                "this key does not belong to the certificate in {}",
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(certified))
}
