//! The node's certificate and key, re-read every `refresh-ak-sk-interval` for rotation without a
//! restart.
//!
//! Rotated credentials are read from `auth-info-files-path` as `tls.crt` and `tls.key` (the
//! layout of a Kubernetes TLS secret mounted there); when that directory does not hold both, the
//! configured `certfile` and `keyfile` are re-read, so replacing those files in place rotates too.
//!
//! A new pair is checked before it is adopted ([`CredentialStore::check`]): it loads, the key
//! belongs to the certificate, the certificate is this node's (its CN or a DNS SAN is the node
//! id), it is within its validity window now, and, when the edge's CA (`cafile`) issued the pair
//! in use, it chains to that CA as a client certificate. A pair that fails is logged (once per
//! pair and reason) and the current one kept. An adopted pair is used from the next connection on.
//!
//! What the edge cannot check (the cloud's own CA when it is not the edge's, revocation, the
//! cloud's clock) shows when the cloud refuses the certificate: then the edge goes back to the
//! last pair that opened a link ([`CredentialStore::refused`]) and does not adopt the refused one
//! again while this process runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;

use crate::config::EdgeConfig;
use crate::shutdown::Shutdown;
use crate::tls::{Credentials, Utc, Window};

/// File names of rotated credentials inside `auth-info-files-path`.
pub const ROTATED_CERT: &str = "tls.crt";
/// See [`ROTATED_CERT`].
pub const ROTATED_KEY: &str = "tls.key";

/// Chains the cloud refused that are remembered, so that they are not adopted again.
const REMEMBERED_REFUSALS: usize = 8;

/// A pair and the certificate file it came from.
#[derive(Clone)]
struct Pair {
    creds: Credentials,
    from: PathBuf,
}

impl Pair {
    fn describe(&self) -> String {
        format!(
            "{} from {}",
            self.creds
                .identity()
                .map_or_else(|| "an unreadable certificate".into(), |i| i.describe()),
            self.from.display()
        )
    }
}

/// What the store knows, behind its lock.
struct State {
    /// Changes whenever `current` does.
    generation: u64,
    current: Pair,
    /// The last pair a link opened with.
    worked: Option<Pair>,
    /// Chains the cloud refused (newest last, at most [`REMEMBERED_REFUSALS`]).
    refused: Vec<Vec<CertificateDer<'static>>>,
    /// The last pair not adopted and why, so the same complaint is logged once.
    complaint: Option<(Vec<CertificateDer<'static>>, String)>,
    /// The generation whose refusal was logged without a pair to go back to.
    stuck: Option<u64>,
}

/// The credentials in use, with a generation number that changes on every rotation.
pub struct CredentialStore {
    node_id: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    rotated: Option<PathBuf>,
    state: Mutex<State>,
}

impl CredentialStore {
    /// Loads the node's credentials: the rotated ones when present and usable (see
    /// [`check`](Self::check)), else the configured files, which must load (the error says
    /// which file and why). A configured pair that fails the checks is still used, with a
    /// warning: the cloud has the last word.
    pub fn load(config: &EdgeConfig) -> Result<Arc<CredentialStore>, String> {
        let creds = Credentials::load(&config.cert, &config.key).map_err(|e| e.to_string())?;
        let store = Arc::new(CredentialStore {
            node_id: config.node_id.clone(),
            ca: config.ca.clone(),
            cert: config.cert.clone(),
            key: config.key.clone(),
            rotated: config.refresh.as_ref().map(|r| r.path.clone()),
            state: Mutex::new(State {
                generation: 0,
                current: Pair {
                    creds: creds.clone(),
                    from: config.cert.clone(),
                },
                worked: None,
                refused: Vec::new(),
                complaint: None,
                stuck: None,
            }),
        });
        if let Err(why) = store.check(&creds, None) {
            log::warn!(
                "node certificate in {} {why}; the cloud will likely refuse it",
                config.cert.display()
            );
        }
        store.refresh();
        Ok(store)
    }

    /// The credentials to connect with and their generation.
    pub fn current(&self) -> (u64, Credentials) {
        let state = self.lock();
        (state.generation, state.current.creds.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Checks `fresh` before it is used (its key already matched when it loaded): the
    /// certificate is this node's, valid now, and chains to the edge's CA as a client
    /// certificate when `current` (the pair in use, if any) does, that is when the edge's CA is
    /// also the CA of the nodes. Returns why not, as the end of a sentence about the certificate.
    pub fn check(&self, fresh: &Credentials, current: Option<&Credentials>) -> Result<(), String> {
        let identity = fresh.identity();
        if !identity.as_ref().is_some_and(|i| i.is(&self.node_id)) {
            return Err(format!(
                "is for {}, not node {}",
                identity.map_or_else(|| "an unreadable certificate".into(), |i| i.describe()),
                self.node_id
            ));
        }
        let now = crate::tls::unix_now();
        let validity = fresh.validity().ok_or("has no readable validity period")?;
        match validity.at(now) {
            Window::Valid => {}
            Window::Expired => {
                return Err(format!("expired on {}", Utc(validity.not_after)));
            }
            Window::NotYetValid => {
                return Err(format!("is not valid before {}", Utc(validity.not_before)));
            }
        }
        let Err(why) = fresh.verify_as_client(&self.ca, now) else {
            return Ok(());
        };
        // Does the edge's CA issue node certificates? It does if the pair in use chains to it
        // (checked in the middle of that pair's own validity, so its age does not matter).
        let ca_issues_nodes = current.is_some_and(|c| {
            let at = c
                .validity()
                .map_or(now, |v| v.not_before + (v.not_after - v.not_before) / 2);
            c.verify_as_client(&self.ca, at).is_ok()
        });
        if ca_issues_nodes {
            Err(format!(
                "does not verify against the CA in {}, which issued the certificate in use: {why}",
                self.ca.display()
            ))
        } else {
            Ok(())
        }
    }

    /// Re-reads the credentials and adopts them if they are new and pass the checks; returns
    /// whether they were adopted.
    pub fn refresh(&self) -> bool {
        let (cert, key) = self.source();
        let loaded = Credentials::load(&cert, &key);
        let mut state = self.lock();
        let fresh = match loaded {
            Ok(c) => c,
            Err(e) => {
                complain(&mut state, Vec::new(), e.to_string());
                return false;
            }
        };
        if fresh.chain == state.current.creds.chain || state.refused.contains(&fresh.chain) {
            return false;
        }
        if let Err(why) = self.check(&fresh, Some(&state.current.creds)) {
            let chain = fresh.chain.clone();
            complain(&mut state, chain, format!("{} {why}", cert.display()));
            return false;
        }
        state.generation += 1;
        state.current = Pair {
            creds: fresh,
            from: cert,
        };
        state.complaint = None;
        log::info!(
            "node credentials rotated: now {}; used from the next connection on",
            state.current.describe()
        );
        true
    }

    /// Records that a link opened with the credentials of `generation`: they are the pair to go
    /// back to.
    pub fn worked(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation == generation {
            state.worked = Some(state.current.clone());
        }
    }

    /// Records that the cloud refused the certificate of `generation` (`why`, for the log) and
    /// goes back to the last pair that opened a link or, when none has yet, to the configured
    /// `certfile` and `keyfile` if they hold another usable pair. The refused chain is not
    /// adopted again while this process runs. Returns whether the credentials changed.
    pub fn refused(&self, generation: u64, why: &str) -> bool {
        let mut state = self.lock();
        if state.generation != generation {
            return false;
        }
        let refused = state.current.clone();
        let fallback = match &state.worked {
            Some(w) if w.creds.chain != refused.creds.chain => Some(w.clone()),
            Some(_) => None,
            None => Credentials::load(&self.cert, &self.key)
                .ok()
                .filter(|c| c.chain != refused.creds.chain && self.check(c, None).is_ok())
                .map(|creds| Pair {
                    creds,
                    from: self.cert.clone(),
                }),
        };
        let Some(fallback) = fallback else {
            if state.stuck != Some(generation) {
                state.stuck = Some(generation);
                log::warn!(
                    "the cloud refused node certificate {} ({why}); no other pair worked before, so it is kept",
                    refused.describe()
                );
            }
            return false;
        };
        log::warn!(
            "the cloud refused node certificate {} ({why}); going back to {}, the last pair that worked",
            refused.describe(),
            fallback.describe()
        );
        if state.refused.len() == REMEMBERED_REFUSALS {
            state.refused.remove(0);
        }
        state.refused.push(refused.creds.chain);
        state.generation += 1;
        state.current = fallback;
        true
    }

    /// Re-reads the credentials every `interval` until shutdown, on smol's blocking-task
    /// threads.
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
                // Off the executor: reading and parsing the files must not hold up the link.
                let store = store.clone();
                smol::unblock(move || store.refresh()).await;
            }
        })
        .detach();
    }
}

/// Logs that a pair was not adopted, unless the same pair was already refused for the same reason.
fn complain(state: &mut State, chain: Vec<CertificateDer<'static>>, why: String) {
    let complaint = (chain, why);
    if state.complaint.as_ref() != Some(&complaint) {
        log::warn!(
            "node credentials not rotated: {}; keeping {}",
            complaint.1,
            state.current.describe()
        );
        state.complaint = Some(complaint);
    }
}
