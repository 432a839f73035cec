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

    let ca = Authority::new(opts.days)?;
    let mut pems = vec![ca.pem(), ca.issue_server(&opts.hosts)?];
    for node in &opts.nodes {
        pems.push(ca.issue_node(node)?);
    }

    fs::create_dir_all(&opts.dir).map_err(|e| PkiError::Write(opts.dir.clone(), e))?;
    // Every file is staged beside its place and moved in only once all of them are written, so
    // a full disk (or any other failure) leaves the previous PKI whole, never half replaced.
    let mut staged = Vec::new();
    let mut written = Vec::new();
    let mut keys = Vec::new();
    for ((crt_name, key_name), (crt_pem, key_pem)) in files.iter().zip(&pems) {
        for (name, pem, mode) in [(crt_name, crt_pem, 0o644), (key_name, key_pem, 0o600)] {
            let path = opts.dir.join(name);
            match stage_file(&path, pem, mode) {
                Ok(tmp) => staged.push((tmp, path)),
                Err(e) => {
                    for (tmp, _) in &staged {
                        let _ = fs::remove_file(tmp);
                    }
                    return Err(e);
                }
            }
        }
        written.push(opts.dir.join(crt_name));
        keys.push(opts.dir.join(key_name));
    }
    for (tmp, path) in &staged {
        fs::rename(tmp, path).map_err(|e| PkiError::Write(path.clone(), e))?;
    }
    sync_dir(&opts.dir)?;
    written.extend(keys);
    Ok(written)
}

/// A certificate authority held in memory: issues server and node certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    days: u32,
}

impl Authority {
    /// A new self-signed CA whose certificates are valid for `days` from now.
    pub fn new(days: u32) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::new())?;
        // A distinct name per CA, so a certificate from another dev PKI reads as "unknown
        // issuer" rather than as a bad signature from a namesake.
        let tag = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        params.distinguished_name = name(&format!("hub development CA {tag:x}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key, days })
    }

    /// The CA certificate and key, PEM.
    pub fn pem(&self) -> (String, String) {
        (self.cert.pem(), self.key.serialize_pem())
    }

    /// A server certificate and key (PEM) for `hosts` (DNS names or IP addresses).
    pub fn issue_server(&self, hosts: &[String]) -> Result<(String, String), PkiError> {
        let mut window = CertificateParams::default();
        validity(&mut window, self.days);
        self.issue_server_valid(hosts, window.not_before, window.not_after)
    }

    /// A server certificate and key (PEM) like [`issue_server`](Self::issue_server), valid from
    /// `not_before` to `not_after` (for tests of expired certificates).
    pub fn issue_server_valid(
        &self,
        hosts: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| {
            PkiError::BadName(format!("a --host is not a DNS name or IP address: {e}"))
        })?;
        params.distinguished_name = name("hub cloud");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate and key (PEM) for `node_id`: CN and DNS SAN are the node id. Each
    /// call makes a new key, so issuing twice gives two certificates for the same node.
    pub fn issue_node(&self, node_id: &str) -> Result<(String, String), PkiError> {
        let mut window = CertificateParams::default();
        validity(&mut window, self.days);
        self.issue_node_valid(node_id, window.not_before, window.not_after)
    }

    /// A client certificate and key (PEM) for `node_id` like [`issue_node`](Self::issue_node),
    /// valid from `not_before` to `not_after` (for tests of expired or not yet valid
    /// certificates).
    pub fn issue_node_valid(
        &self,
        node_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        crate::config::valid_id(node_id).map_err(|p| PkiError::BadName(format!("node id {p}")))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node_id.to_owned()])?;
        params.distinguished_name = name(node_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Valid from an hour ago (for gateways whose clock lags) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `text` to `path` with permissions `mode`, also when the file already existed: through a
/// synced temporary file beside it (`.NAME.new`) renamed over it, so that a failure (a full disk,
/// say) leaves the previous file as it was.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = stage_file(path, text, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PkiError::Write(path.to_owned(), e)
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `text` (synced, permissions `mode`) to the temporary file beside `path` and returns
/// its path; on failure removes it.
fn stage_file(path: &Path, text: &str, mode: u32) -> Result<PathBuf, PkiError> {
    let err = |e| PkiError::Write(path.to_owned(), e);
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.new"));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

/// `fsync` of the folder `dir`, so renamed entries survive power loss.
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::Write(dir.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testfs::{fill, on_small_fs};

    fn options(dir: &Path, force: bool) -> PkiOptions {
        PkiOptions {
            dir: dir.to_owned(),
            nodes: vec!["edge-1".into()],
            hosts: vec!["localhost".into()],
            days: 1,
            force,
        }
    }

    /// Every file in `dir` with its contents.
    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read(e.path()).unwrap())
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_full_disk_leaves_the_previous_pki_whole() {
        on_small_fs(
            "pki::tests::a_full_disk_leaves_the_previous_pki_whole",
            "256k",
            |root| {
                let dir = root.join("pki");
                write(&options(&dir, false)).unwrap();
                let before = contents(&dir);
                assert_eq!(before.len(), 6);
                let filler = fill(root);
                let e = write(&options(&dir, true)).unwrap_err();
                assert!(e.to_string().contains("No space left"), "{e}");
                assert_eq!(contents(&dir), before, "no file replaced, none left over");

                fs::remove_file(filler).unwrap();
                write(&options(&dir, true)).unwrap();
                let after = contents(&dir);
                assert_eq!(after.len(), 6);
                assert_ne!(after, before, "a new PKI once there is room");
            },
        );
    }
}
