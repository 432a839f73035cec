//! The cloud's own credentials (`ca`, `cert`, `key`), re-read on SIGHUP and when the files
//! change, so that rotating the cloud's certificate or its CA bundle drops no node.
//!
//! A new set is read and checked whole before anything uses it: every file loads, the CA bundle
//! parses as trust anchors, the key belongs to the certificate, the certificate has not expired.
//! Then both server configurations are built exactly as at start (WebSocket with ALPN `http/1.1`,
//! QUIC with the protocol's ALPN and 0-RTT) and swapped in: the WebSocket listener takes the
//! current one for each connection it accepts, the QUIC endpoint gets it through
//! [`quinn::Endpoint::set_server_config`]. Links already open are not touched.
//!
//! What stays from start:
//! - the QUIC keys derived from the key at start ([`quic::RestartKeys`]): the stateless reset key
//!   and the connection id generator belong to the endpoint, which is not replaced, and the
//!   address validation token key and the log of used tokens come from the start configuration
//!   ([`quic::with_tls`]), so Retry and NEW_TOKEN tokens handed out before a reload still
//!   validate. (After a restart they are derived from the key the cloud then starts with.)
//! - the TLS sessions nodes resume (and send 0-RTT data with), unless the new CA bundle lacks a
//!   certificate of the old one: a resumed session is not checked against the CA bundle again,
//!   so sessions are forgotten when a CA is taken out, and those nodes make a full handshake.
//!   QUIC's sessions are kept in a store ([`tls::session_store`]); WebSocket's travel in their
//!   tickets, sealed with a key ([`tls::tickets`]) that is replaced to forget them.
//!
//! A set that fails a check is refused with one error line naming the file and the reason, and
//! the set in use stays; the next SIGHUP or change of a file tries again. A half-written set (a
//! new certificate beside the old key) fails the key check and is retried when the key changes;
//! a changed file is read only once it stayed the same for one more poll, which spares most such
//! refusals. Why the files are polled: [`crate::tls::watch`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_rustls::TlsAcceptor;
use rustls::ServerConfig;
use smol::future::FutureExt;

use crate::config::CloudConfig;
use crate::metrics::METRICS;
use crate::proto::ALPN;
use crate::shutdown::Shutdown;
use crate::tls::watch::{FileWatch, POLL};
use crate::tls::{self, ServerCredentials, SessionStore, Tickets, Utc, Window};
use crate::transport::quic;

/// Why credentials are read again.
#[derive(Debug, Clone)]
enum Cause {
    /// A SIGHUP.
    Hangup,
    /// Files changed: which of ca, cert, key.
    Changed(Vec<bool>),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Hangup => f.write_str("SIGHUP"),
            Cause::Changed(which) => {
                let names: Vec<&str> = ["ca", "cert", "key"]
                    .into_iter()
                    .zip(which)
                    .filter(|(_, changed)| **changed)
                    .map(|(n, _)| n)
                    .collect();
                write!(f, "{} changed", names.join(", "))
            }
        }
    }
}

/// The QUIC endpoint's side.
struct QuicServing {
    sessions: SessionStore,
    /// The endpoint and its start configuration, once the endpoint exists.
    endpoint: Option<(quinn::Endpoint, quinn::ServerConfig)>,
}

struct State {
    served: ServerCredentials,
    websocket: Option<Arc<ServerConfig>>,
    quic: Option<QuicServing>,
}

/// The credentials the cloud serves, on each transport it runs.
pub struct CloudTls {
    /// ca, cert, key.
    paths: [PathBuf; 3],
    /// The same files, as last read.
    files: Mutex<FileWatch>,
    state: Mutex<State>,
}

impl CloudTls {
    /// Reads the credentials of `config` and builds the configuration of each transport it
    /// enables. Errors: as [`ServerCredentials::load`], as one sentence.
    pub fn load(config: &CloudConfig) -> Result<Arc<CloudTls>, String> {
        let paths = [config.ca.clone(), config.cert.clone(), config.key.clone()];
        let files = Mutex::new(FileWatch::new(paths.to_vec()));
        let served =
            ServerCredentials::load(&paths[0], &paths[1], &paths[2]).map_err(|e| e.to_string())?;
        let websocket = match config.websocket {
            Some(_) => {
                let tickets = tls::tickets().map_err(|e| e.to_string())?;
                Some(Arc::new(websocket_config(&served, tickets)?))
            }
            None => None,
        };
        let quic = config.quic.map(|_| QuicServing {
            sessions: tls::session_store(),
            endpoint: None,
        });
        Ok(Arc::new(CloudTls {
            paths,
            files,
            state: Mutex::new(State {
                served,
                websocket,
                quic,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The acceptor for a new WebSocket connection: the current credentials.
    ///
    /// Panics when the configuration given to [`load`](Self::load) has no WebSocket listener.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.lock().websocket.clone();
        TlsAcceptor::from(config.expect("the WebSocket listener is configured"))
    }

    /// The TLS configuration to start the QUIC endpoint with; give the endpoint to
    /// [`serve_quic`](Self::serve_quic) then. Errors: rustls refuses the configuration.
    pub fn quic_tls(&self) -> Result<ServerConfig, String> {
        let state = self.lock();
        let sessions = state
            .quic
            .as_ref()
            .map_or_else(tls::session_store, |q| q.sessions.clone());
        quic_config(&state.served, sessions)
    }

    /// Hands over the QUIC endpoint and the configuration it started with
    /// ([`quic::server_endpoint_with_config`]), for reloads to replace.
    pub fn serve_quic(&self, endpoint: quinn::Endpoint, template: quinn::ServerConfig) {
        if let Some(q) = self.lock().quic.as_mut() {
            q.endpoint = Some((endpoint, template));
        }
    }

    /// Reads the files again and, when they make a good set, serves it from the next handshake
    /// on; otherwise logs why (one error line) and keeps the set in use.
    fn reload(&self, cause: Cause) {
        let [ca, cert, key] = &self.paths;
        let loaded = ServerCredentials::load(ca, cert, key)
            .map_err(|e| e.to_string())
            .and_then(|new| {
                let validity = new.creds.validity();
                match validity.map(|v| (v.at(tls::unix_now()), v.not_after)) {
                    Some((Window::Expired, until)) => Err(format!(
                        "{}: the certificate expired on {}",
                        cert.display(),
                        Utc(until)
                    )),
                    _ => Ok(new),
                }
            });
        let mut state = self.lock();
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                METRICS.credential_reloads[1].inc();
                log::error!(
                    "credentials not reloaded ({cause}): {e}; still serving {}",
                    describe(&state.served)
                );
                return;
            }
        };
        if same(&new, &state.served) {
            let line = format!(
                "credentials re-read ({cause}): unchanged, serving {}",
                describe(&new)
            );
            match cause {
                Cause::Hangup => log::info!("{line}"),
                Cause::Changed(_) => log::debug!("{line}"),
            }
            return;
        }
        // Sessions verified against a CA that is gone must not be resumed.
        let keep_sessions = state.served.ca.iter().all(|c| new.ca.contains(c));
        let sessions = |old: SessionStore| {
            if keep_sessions {
                old
            } else {
                tls::session_store()
            }
        };
        let built = (|| {
            let websocket = match &state.websocket {
                Some(old) => {
                    let tickets = match keep_sessions {
                        true => old.ticketer.clone(),
                        false => tls::tickets().map_err(|e| e.to_string())?,
                    };
                    Some(Arc::new(websocket_config(&new, tickets)?))
                }
                None => None,
            };
            let quic = match &state.quic {
                Some(QuicServing {
                    sessions: old,
                    endpoint: Some((_, template)),
                }) => {
                    let store = sessions(old.clone());
                    let config = quic::with_tls(template, quic_config(&new, store.clone())?)?;
                    Some((store, config))
                }
                _ => None,
            };
            Ok::<_, String>((websocket, quic))
        })();
        let (websocket, quic) = match built {
            Ok(b) => b,
            Err(e) => {
                METRICS.credential_reloads[1].inc();
                log::error!(
                    "credentials not reloaded ({cause}): {e}; still serving {}",
                    describe(&state.served)
                );
                return;
            }
        };
        METRICS.credential_reloads[0].inc();
        // `None` only where there was none: a cloud without a WebSocket listener.
        state.websocket = websocket;
        if let (Some((store, config)), Some(q)) = (quic, state.quic.as_mut()) {
            if let Some((endpoint, _)) = &q.endpoint {
                endpoint.set_server_config(Some(config));
            }
            q.sessions = store;
        }
        log::info!(
            "reloaded credentials ({cause}): serving {}; {} CA certificate(s){}",
            describe(&new),
            new.ca.len(),
            if keep_sessions {
                ""
            } else {
                "; a CA was taken out, so nodes make a full TLS handshake once"
            }
        );
        state.served = new;
    }

    /// When the certificate served now expires (its notAfter, seconds since the epoch).
    pub fn not_after(&self) -> Option<i64> {
        self.lock().served.creds.validity().map(|v| v.not_after)
    }

    fn files(&self) -> MutexGuard<'_, FileWatch> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn websocket_config(served: &ServerCredentials, tickets: Tickets) -> Result<ServerConfig, String> {
    served
        .with_tickets(b"http/1.1", tickets)
        .map_err(|e| e.to_string())
}

fn quic_config(served: &ServerCredentials, sessions: SessionStore) -> Result<ServerConfig, String> {
    served
        .config(ALPN, true, sessions)
        .map_err(|e| e.to_string())
}

/// Whether `a` and `b` are the same files' contents.
fn same(a: &ServerCredentials, b: &ServerCredentials) -> bool {
    a.ca == b.ca
        && a.creds.chain == b.creds.chain
        && a.creds.key.secret_der() == b.creds.key.secret_der()
}

/// The leaf certificate for a log line: its names, serial and end of validity.
fn describe(served: &ServerCredentials) -> String {
    let who = served
        .creds
        .identity()
        .map_or_else(|| "an unreadable certificate".into(), |i| i.describe());
    match served.creds.validity() {
        Some(v) => format!("certificate {who}, valid until {}", Utc(v.not_after)),
        None => format!("certificate {who}"),
    }
}

/// Re-reads the credentials of `tls` on each SIGHUP from `hangups` and, every [`POLL`], when a
/// file changed and then stayed the same for one more poll ([`FileWatch`]); until `shutdown`.
/// The files are read on smol's blocking-task threads, not on the executor.
pub fn watch(tls: Arc<CloudTls>, hangups: smol::channel::Receiver<()>, shutdown: Shutdown) {
    smol::spawn(async move {
        loop {
            let hangup = async {
                match hangups.recv().await {
                    Ok(()) => Some(true),
                    Err(_) => std::future::pending().await,
                }
            };
            let tick = async {
                smol::Timer::after(POLL).await;
                Some(false)
            };
            let stop = async {
                shutdown.wait().await;
                None
            };
            match hangup.or(tick).or(stop).await {
                None => return,
                // Off the executor: reading and parsing the files, up to 16 MiB each
                // (`tls::MAX_PEM_BYTES`), must not hold up the links and endpoints it runs.
                Some(true) => {
                    let tls = tls.clone();
                    smol::unblock(move || {
                        tls.files().reading();
                        tls.reload(Cause::Hangup);
                    })
                    .await;
                }
                Some(false) => {
                    let tls = tls.clone();
                    smol::unblock(move || {
                        let changed = tls.files().poll();
                        if let Some(changed) = changed {
                            tls.reload(Cause::Changed(changed));
                        }
                    })
                    .await;
                }
            }
        }
    })
    .detach();
}
