//! The node's certificate and key, re-read every `refresh-ak-sk-interval` for rotation without a
//! restart.
//!
//! Rotated credentials are read from `auth-info-files-path` as `tls.crt` and `tls.key` (the
//! layout of a Kubernetes TLS secret mounted there); when that directory does not hold both, the
//! configured `certfile` and `keyfile` are re-read, so replacing those files in place rotates too.
//! A new pair is used from the next connection on. A pair that does not load, whose key does not
//! match, or whose identity is not this node is logged and ignored; the current one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::EdgeConfig;
use crate::shutdown::Shutdown;
use crate::tls::Credentials;

/// File names of rotated credentials inside `auth-info-files-path`.
pub const ROTATED_CERT: &str = "tls.crt";
/// See [`ROTATED_CERT`].
pub const ROTATED_KEY: &str = "tls.key";

/// The credentials in use, with a generation number that changes on every rotation.
pub struct CredentialStore {
    node_id: String,
    cert: PathBuf,
    key: PathBuf,
    rotated: Option<PathBuf>,
    current: Mutex<(u64, Credentials)>,
}

impl CredentialStore {
    /// Loads the node's credentials: the rotated ones when present and usable, else the
    /// configured files.
    pub fn load(config: &EdgeConfig) -> Result<Arc<CredentialStore>, String> {
        let creds = Credentials::load(&config.cert, &config.key).map_err(|e| e.to_string())?;
        let store = Arc::new(CredentialStore {
            node_id: config.node_id.clone(),
            cert: config.cert.clone(),
            key: config.key.clone(),
            rotated: config.refresh.as_ref().map(|r| r.path.clone()),
            current: Mutex::new((0, creds)),
        });
        store.refresh();
        Ok(store)
    }

    /// The credentials to connect with and their generation.
    pub fn current(&self) -> (u64, Credentials) {
        let guard = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Where the next credentials are read from.
    fn source(&self) -> (PathBuf, PathBuf) {
        if let Some(dir) = &self.rotated {
            let (c, k) = (dir.join(ROTATED_CERT), dir.join(ROTATED_KEY));
            if c.exists() && k.exists() {
                return (c, k);
            }
        }
        (self.cert.clone(), self.key.clone())
    }

    /// Re-reads the credentials; returns whether they changed.
    pub fn refresh(&self) -> bool {
        let (cert, key) = self.source();
        let fresh = match Credentials::load(&cert, &key) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("node credentials not rotated: {e}; keeping the current ones");
                return false;
            }
        };
        let mut guard = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.chain == guard.1.chain {
            return false;
        }
        let identity = fresh.identity();
        if !identity.as_ref().is_some_and(|i| i.is(&self.node_id)) {
            log::warn!(
                "node credentials not rotated: {} is for {}, not node {}; keeping the current ones",
                cert.display(),
                identity.map_or_else(|| "an unreadable certificate".into(), |i| i.describe()),
                self.node_id
            );
            return false;
        }
        log::info!(
            "node credentials rotated: now {} from {}; used from the next connection on",
            identity.map(|i| i.describe()).unwrap_or_default(),
            display(&cert)
        );
        guard.0 += 1;
        guard.1 = fresh;
        true
    }

    /// Re-reads the credentials every `interval` until shutdown.
    pub fn spawn_refresh(self: &Arc<Self>, interval: std::time::Duration, shutdown: Shutdown) {
        let store = self.clone();
        smol::spawn(async move {
            use smol::future::FutureExt;
            loop {
                let stop = async {
                    smol::Timer::after(interval).await;
                    false
                }
                .or(async {
                    shutdown.wait().await;
                    true
                })
                .await;
                if stop {
                    return;
                }
                store.refresh();
            }
        })
        .detach();
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
