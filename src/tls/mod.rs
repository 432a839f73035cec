//! PEM loading and rustls configuration, shared by the WebSocket and QUIC transports.
//!
//! Everything runs on the `ring` provider; nothing here uses aws-lc. The link to the cloud is
//! TLS 1.3 only, with client certificates on both transports.

mod identity;
mod validity;
pub mod watch;

pub use identity::CertIdentity;
pub use validity::{Utc, Validity, Window, now as unix_now};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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
    /// rustls refused the configuration.
    Config(String),
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
            TlsError::Config(e) => write!(f, "TLS configuration refused: {e}"),
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

/// The largest certificate, key or CA bundle file read, in bytes: 16 MiB, some 10,000
/// certificates (a whole public CA bundle is about 220 KiB).
pub const MAX_PEM_BYTES: u64 = 16 << 20;

/// The bytes of the PEM file at `path`, less a leading UTF-8 byte-order mark: editors on
/// Windows save one, and in front of the first `-----BEGIN` line it would hide that item from
/// the PEM parser (a chain would silently lose its leaf).
///
/// Only a regular file (symlinks followed) of at most [`MAX_PEM_BYTES`] is read: a FIFO would
/// block the reading thread until something writes to it, and a device such as `/dev/zero`
/// never ends; both are opened without blocking and refused, as is a larger file.
///
/// Errors: [`TlsError::Read`] naming the file, for those and for any error of the system.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |e| TlsError::Read(path.to_owned(), e);
    let refuse = |why: String| error(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    // nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(error)?;
    let meta = file.metadata().map_err(error)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(refuse(format!(
            "{} bytes, more than the {} a certificate, key or CA bundle may have",
            meta.len(),
            MAX_PEM_BYTES
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file still growing is read up to the limit and one byte more, then refused.
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(refuse(format!(
            "more than the {MAX_PEM_BYTES} bytes a certificate, key or CA bundle may have"
        )));
    }
    if bytes.starts_with(b"\xef\xbb\xbf") {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// Loads every certificate in the PEM file at `path` (a chain, leaf first); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e, "certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::Missing(path.to_owned(), "certificate"));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_pem(path)?).map_err(|e| pem_error(path, e, "private key"))
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

/// The most bytes of CA names a server lists in its request for the client's certificate.
///
/// A TLS 1.3 CertificateRequest names the CAs it accepts in its `certificate_authorities`
/// extension (RFC 8446 section 4.2.4), a list with a 16-bit length inside a block of extensions
/// with a 16-bit length; a bundle of some thousand CAs or more does not fit (rustls panics
/// encoding it), and a list near that size makes every handshake 64 KiB longer. Clients pick
/// their certificate without it (a hub edge has one), so a longer list is left out.
pub const MAX_CA_NAMES_BYTES: usize = 16 * 1024;

/// The verifier of client certificates chaining to `roots`, as both the node link and the MQTT
/// TLS listener use: it names the CAs of `roots` in its CertificateRequest while their names
/// (with their 2-byte lengths) take at most [`MAX_CA_NAMES_BYTES`], and names none otherwise.
///
/// Errors: rustls refuses the verifier (`roots` is empty), as its error's text.
pub fn client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let names: usize = roots.subjects().iter().map(|n| n.as_ref().len() + 2).sum();
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if names > MAX_CA_NAMES_BYTES {
        builder.clear_root_hint_subjects()
    } else {
        builder
    };
    builder.build().map_err(|e| e.to_string())
}

/// A certificate chain and its private key, checked to belong together.
pub struct Credentials {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity().map(|i| i.describe()))
            .field("key", &"MASKED")
            .finish()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Credentials {
    /// Loads `cert` and `key` and checks that the key belongs to the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
        let creds = Credentials {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        };
        let signing = provider()
            .key_provider
            .load_private_key(creds.key.clone_key())
            .map_err(|e| TlsError::BadKey(key.to_owned(), format!("unusable private key: {e}")))?;
        CertifiedKey::new(creds.chain.clone(), signing)
            .keys_match()
            .map_err(|_| {
                let why = format!(
                    "this key does not belong to the certificate in {}",
                    cert.display()
                );
                TlsError::BadKey(key.to_owned(), why)
            })?;
        Ok(creds)
    }

    /// The identity in the leaf certificate.
    pub fn identity(&self) -> Option<CertIdentity> {
        self.chain.first().and_then(|c| CertIdentity::from_der(c))
    }

    /// The validity window of the leaf certificate; `None` when it cannot be read.
    pub fn validity(&self) -> Option<Validity> {
        self.chain.first().and_then(|c| Validity::from_der(c))
    }

    /// Checks that the chain verifies, as a client certificate, against the CA bundle in `ca`
    /// at `at` (seconds since the Unix epoch): what a cloud with that `ca` checks (RFC 5280
    /// path validation by rustls' WebPKI verifier, including the client-auth key usage).
    ///
    /// Errors: the CA bundle cannot be loaded, or the verifier's reason (for example "unknown
    /// issuer", "expired").
    pub fn verify_as_client(&self, ca: &Path, at: i64) -> Result<(), String> {
        let roots = Arc::new(load_roots(ca).map_err(|e| e.to_string())?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| e.to_string())?;
        let (leaf, intermediates) = self.chain.split_first().ok_or("no certificate")?;
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at).unwrap_or(0),
        ));
        verifier
            .verify_client_cert(leaf, intermediates, at)
            .map(drop)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
                other => other.to_string(),
            })
    }
}

/// The alert when `e` is one the peer sent about this side's certificate: bad, unsupported,
/// revoked, expired, unknown or missing certificate, unknown CA, access denied (RFC 8446 section
/// 6.2). Errors this side found in the peer's certificate are not alerts received and give `None`.
pub fn certificate_alert(e: &rustls::Error) -> Option<rustls::AlertDescription> {
    match e {
        rustls::Error::AlertReceived(alert) => is_certificate_alert(*alert).then_some(*alert),
        _ => None,
    }
}

/// Whether `alert` is about the certificate its receiver presented (see [`certificate_alert`]).
pub fn is_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// How many TLS sessions the cloud remembers for QUIC resumption and 0-RTT (WebSocket's travel in
/// their tickets: [`tickets`]).
pub const SESSION_CACHE: usize = 16 * 1024;

/// Where the cloud keeps the TLS sessions its nodes may resume: held by a [`ServerConfig`] and
/// handed on to the configuration that replaces it, so a reload does not cost every node a full
/// handshake.
pub type SessionStore = Arc<dyn rustls::server::StoresServerSessions>;

/// A new, empty [`SessionStore`] in memory for [`SESSION_CACHE`] sessions.
pub fn session_store() -> SessionStore {
    ServerSessionMemoryCache::new(SESSION_CACHE)
}

/// The key that seals the cloud's stateless TLS session tickets ([`tickets`]): handed on to the
/// configuration that replaces a [`ServerConfig`] as a [`SessionStore`] is.
pub type Tickets = Arc<dyn rustls::server::ProducesTickets>;

/// A new ticket key for WebSocket (TLS over TCP): the session travels in the ticket itself,
/// sealed with ChaCha20-Poly1305 under a random key that rustls replaces every 6 hours (a ticket
/// lives 12 hours), so the cloud keeps nothing per session. A [`session_store`] kept about
/// 900 bytes per ticket (the client's certificate with it), two tickets per handshake, up to
/// [`SESSION_CACHE`] of them; QUIC keeps one, since its 0-RTT data needs each session resumed at
/// most once. Errors: rustls cannot make the key ([`TlsError::Config`]).
pub fn tickets() -> Result<Tickets, TlsError> {
    rustls::crypto::ring::Ticketer::new().map_err(config_error)
}

/// The cloud's credentials as read from its `ca`, `cert` and `key` files, checked to belong
/// together; [`config`](Self::config) turns them into a [`ServerConfig`].
#[derive(Clone)]
pub struct ServerCredentials {
    /// The CA bundle's certificates (DER), in file order.
    pub ca: Vec<CertificateDer<'static>>,
    /// The same, as trust anchors for client certificates.
    roots: Arc<RootCertStore>,
    /// The server's chain (leaf first) and key.
    pub creds: Credentials,
}

impl ServerCredentials {
    /// Reads the CA bundle at `ca`, the chain at `cert` and the key at `key`.
    ///
    /// Errors: a file cannot be read or holds no PEM of its kind ([`TlsError::Read`],
    /// [`TlsError::Missing`], [`TlsError::Pem`]), a CA certificate is not a usable trust anchor
    /// ([`TlsError::BadCa`]), the key is unusable or does not belong to the leaf certificate
    /// ([`TlsError::BadKey`]); each names the file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ServerCredentials, TlsError> {
        let ca_certs = load_certs(ca)?;
        let mut roots = RootCertStore::empty();
        for c in &ca_certs {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::BadCa(ca.to_owned(), e.to_string()))?;
        }
        Ok(ServerCredentials {
            ca: ca_certs,
            roots: Arc::new(roots),
            creds: Credentials::load(cert, key)?,
        })
    }

    /// The cloud's TLS configuration: TLS 1.3, a client certificate chaining to the CA bundle
    /// required, `alpn` offered. With `early_data`, resumed QUIC clients may send 0-RTT data;
    /// sessions are kept in memory (in `sessions`, see [`session_store`]) and each can be
    /// resumed once, so 0-RTT data cannot be replayed to this process.
    /// [`with_tickets`](Self::with_tickets) is the configuration without 0-RTT.
    ///
    /// A resumed session is not checked against the CA bundle again (RFC 8446 section 2.2: the
    /// client's certificate was verified when the session began), so a store must not outlive a
    /// CA its sessions were verified against.
    pub fn config(
        &self,
        alpn: &[u8],
        early_data: bool,
        sessions: SessionStore,
    ) -> Result<ServerConfig, TlsError> {
        let verifier = client_verifier(self.roots.clone()).map_err(TlsError::Config)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.creds.chain.clone(), self.creds.key.clone_key())
            .map_err(config_error)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        config.session_storage = sessions;
        if early_data {
            config.max_early_data_size = u32::MAX;
        }
        Ok(config)
    }

    /// The cloud's TLS configuration as [`config`](Self::config) without 0-RTT, whose sessions
    /// travel in the tickets sealed with `tickets` ([`tickets`]) rather than in a store.
    pub fn with_tickets(&self, alpn: &[u8], tickets: Tickets) -> Result<ServerConfig, TlsError> {
        let none: SessionStore = Arc::new(rustls::server::NoServerSessionStorage {});
        let mut config = self.config(alpn, false, none)?;
        config.ticketer = tickets;
        Ok(config)
    }
}

/// The cloud's TLS configuration from the files `ca`, `cert` and `key`
/// ([`ServerCredentials::load`], then [`ServerCredentials::config`] with a new session store).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
    early_data: bool,
) -> Result<ServerConfig, TlsError> {
    ServerCredentials::load(ca, cert, key)?.config(alpn, early_data, session_store())
}

/// The edge's TLS configuration: TLS 1.3, the cloud verified against `ca`, `creds` presented,
/// `alpn` offered. With `early_data`, resumed sessions send 0-RTT data.
pub fn client_config(
    ca: &Path,
    creds: &Credentials,
    alpn: &[u8],
    early_data: bool,
) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::in_memory_sessions(64);
    config.enable_early_data = early_data;
    Ok(config)
}
