//! A development PKI (`hub certs`): a CA, a server certificate for the cloud, and one client
//! certificate per node with the node-id as its identity (CN and DNS SAN).
//!
//! Production deployments bring their own CA; this one exists so that the demo, the tests and a
//! first trial run use real mutual TLS from the start.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// What to generate, and where.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// The directory the files are written to (created if missing).
    pub dir: PathBuf,
    /// Node ids to issue client certificates for.
    pub nodes: Vec<String>,
    /// DNS names and IP addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Validity of every certificate, in days from now.
    pub days: u32,
    /// Overwrite files that already exist.
    pub force: bool,
}

/// Why the PKI could not be written.
#[derive(Debug)]
pub enum PkiError {
    /// A file exists and `force` was not given.
    Exists(PathBuf),
    /// A node id or host is not usable in a certificate.
    BadName(String),
    /// Certificate generation failed.
    Generate(rcgen::Error),
    /// Writing a file failed.
    Write(PathBuf, std::io::Error),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::Exists(p) => {
                write!(
                    f,
                    "{} already exists; pass --force to overwrite it",
                    p.display()
                )
            }
            PkiError::BadName(m) => f.write_str(m),
            PkiError::Generate(e) => write!(f, "cannot generate a certificate: {e}"),
            PkiError::Write(p, e) => write!(f, "cannot write {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for PkiError {}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e)
    }
}

/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key.
pub const CA_KEY: &str = "ca.key";
/// File name of the cloud's server certificate.
pub const SERVER_CERT: &str = "server.crt";
/// File name of the cloud's server key.
pub const SERVER_KEY: &str = "server.key";

/// File names of the client certificate and key for `node_id`.
pub fn node_files(node_id: &str) -> (String, String) {
    (format!("node-{node_id}.crt"), format!("node-{node_id}.key"))
}

/// Writes the PKI described by `opts` and returns the paths written, certificates before keys.
pub fn write(opts: &PkiOptions) -> Result<Vec<PathBuf>, PkiError> {
    for node in &opts.nodes {
        crate::config::valid_id(node).map_err(|p| PkiError::BadName(format!("node id {p}")))?;
    }
    if opts.hosts.is_empty() {
        return Err(PkiError::BadName(
            "give at least one --host for the server certificate".into(),
        ));
    }
    let mut files = vec![
        (CA_CERT.to_owned(), CA_KEY.to_owned()),
        (SERVER_CERT.to_owned(), SERVER_KEY.to_owned()),
    ];
    files.extend(opts.nodes.iter().map(|n| node_files(n)));
    if !opts.force {
        for (crt, key) in &files {
            for name in [crt, key] {
                let p = opts.dir.join(name);
                if p.exists() {
                    return Err(PkiError::Exists(p));
                }
            }
        }
    }

    let now = OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        // An hour of slack for gateways whose clock lags behind.
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(i64::from(opts.days));
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.distinguished_name = name("hub development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(opts.hosts.clone())
        .map_err(|e| PkiError::BadName(format!("a --host is not a DNS name or IP address: {e}")))?;
    server.distinguished_name = name("hub cloud");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut server);
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let mut pems = vec![
        (ca_cert.pem(), ca_key.serialize_pem()),
        (server_cert.pem(), server_key.serialize_pem()),
    ];
    for node in &opts.nodes {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node.clone()])?;
        params.distinguished_name = name(node);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        pems.push((cert.pem(), key.serialize_pem()));
    }

    fs::create_dir_all(&opts.dir).map_err(|e| PkiError::Write(opts.dir.clone(), e))?;
    let mut written = Vec::new();
    let mut keys = Vec::new();
    for ((crt_name, key_name), (crt_pem, key_pem)) in files.iter().zip(&pems) {
        let crt = opts.dir.join(crt_name);
        let key = opts.dir.join(key_name);
        write_file(&crt, crt_pem, 0o644)?;
        write_file(&key, key_pem, 0o600)?;
        written.push(crt);
        keys.push(key);
    }
    written.extend(keys);
    Ok(written)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `text` to `path` with permissions `mode`, also when the file already existed.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let err = |e| PkiError::Write(path.to_owned(), e);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}
