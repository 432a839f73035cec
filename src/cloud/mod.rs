//! The cloud hub: a WebSocket listener and a QUIC endpoint side by side, each handshake in its own
//! task, every admitted node in the [`Registry`].

mod credentials;
mod ops;
mod queues;
mod registry;

pub use queues::{CloudQueues, NodeQueues};
pub use registry::{Admission, LastEnd, NodeInfo, Registry};

use crate::metrics::{METRICS, Refusal};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use futures_rustls::TlsAcceptor;
use rustls::pki_types::CertificateDer;
use smol::Async;
use smol::future::FutureExt;

use crate::apps::{Apps, Route};
use crate::cluster::{Cluster, ClusterAdmission, Refused};
use crate::config::{CloudConfig, Protocol, valid_id};
use crate::exchange::{Exchange, LaneStores};
use crate::local::Local;
use crate::message::node_prefix;
use crate::proto::frame::Hello;
use crate::proto::{CloseCode, Event, Session, WS_SUBPROTOCOL};
use crate::shutdown::Shutdown;
use crate::tls::{self, CertIdentity};
use crate::transport::{Inbound, Link, LinkError, Wake, close_cause, quic, timeout, ws};

/// How long a closing link may take to tell its peer why.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long shutdown waits for links to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Handshakes in progress at once on each transport. Each holds a socket or a QUIC connection
/// (with every allowed stream set up) and TLS state until it completes or keepalive-interval
/// passes; beyond this, new connections are turned away at once.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Handshakes in progress beyond which a QUIC source must first prove it receives at its address
/// (a stateless Retry), so datagrams from sources that never answer cost the cloud nothing.
pub const QUIC_RETRY_ABOVE: usize = 256;

/// What every connection task shares.
struct Cloud {
    config: CloudConfig,
    registry: Arc<Registry>,
    queues: Arc<NodeQueues>,
    /// The shared registry in cluster mode (`cluster:`), else `None`.
    cluster: Option<Arc<Cluster>>,
    local: Arc<Local>,
    shutdown: Shutdown,
    /// Each connection task holds a clone; shutdown waits until all are dropped.
    active: smol::channel::Sender<()>,
    /// Handshakes in progress over WebSocket and over QUIC (see [`Pending`]).
    pending: [AtomicUsize; 2],
    /// For each transport: when connections turned away for load were last logged, and how many
    /// since.
    shed: Mutex<[(Option<Instant>, u64); 2]>,
}

impl Cloud {
    /// Handshakes in progress over `protocol`.
    fn pending(&self, protocol: Protocol) -> usize {
        self.pending[protocol as usize].load(Ordering::Relaxed)
    }

    /// Logs a connection turned away because too many handshakes are in progress: at most one
    /// line a second, counting the others, so a flood cannot flood the log.
    fn shed(&self, protocol: Protocol, what: impl FnOnce() -> String) {
        let mut all = self.shed.lock().unwrap_or_else(|e| e.into_inner());
        let shed = &mut all[protocol as usize];
        shed.1 += 1;
        let due = shed
            .0
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            log::warn!(
                "{}: {} handshakes in progress (limit {MAX_PENDING_HANDSHAKES}, QUIC Retry above {QUIC_RETRY_ABOVE}); {} turned away since the last such line",
                what(),
                self.pending(protocol),
                shed.1
            );
            *shed = (Some(Instant::now()), 0);
        }
    }
}

/// One handshake in progress, counted in [`Cloud::pending`] until dropped.
struct Pending(Arc<Cloud>, usize);

impl Pending {
    fn new(cloud: &Arc<Cloud>, protocol: Protocol) -> Pending {
        let i = protocol as usize;
        cloud.pending[i].fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.handshakes[i].inc();
        Pending(cloud.clone(), i)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending[self.1].fetch_sub(1, Ordering::Relaxed);
        crate::metrics::METRICS.handshakes[self.1].dec();
    }
}

/// The addresses the cloud actually listens on (ports resolved when the config says 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The WebSocket listener.
    pub websocket: Option<SocketAddr>,
    /// The QUIC endpoint.
    pub quic: Option<SocketAddr>,
}

/// What a message stored in cluster mode needs beside its encoding, in bytes: hub's headers
/// and the NATS ones.
const HEADER_ALLOWANCE: usize = 4096;

/// Runs the cloud hub until `shutdown`, then closes every link with "shutting down".
pub async fn run(config: CloudConfig, shutdown: Shutdown) -> Result<(), String> {
    let hangups =
        crate::shutdown::hangups().map_err(|e| format!("cannot watch for SIGHUP: {e}"))?;
    let registry = Registry::new(crate::open_files::budget(
        config.node_limit,
        "node-limit",
        2,
    ));
    let _lock = crate::queue::lock_dir(&config.queues.dir)?;
    let cluster = match &config.cluster {
        Some(c) => {
            let limits = crate::cluster::Limits {
                nodes: config.node_limit,
                lane_messages: config.queues.max_messages,
            };
            let cluster = Cluster::start(c, registry.clone(), limits).await?;
            // A message is stored as one NATS message with hub's headers (and, in a batch, its
            // length): beyond max_payload it cannot be stored.
            let largest = config.apps.max_message_bytes + HEADER_ALLOWANCE;
            if cluster.max_payload() < largest {
                log::warn!(
                    "cluster: the NATS server takes messages of at most {} bytes (max_payload), less than apps.max-message-bytes ({}) with {} bytes for hub's headers: larger messages will be refused, and a node sending one will reconnect for ever; raise max_payload in the NATS servers' configuration (e.g. max_payload: 8MB)",
                    cluster.max_payload(),
                    config.apps.max_message_bytes,
                    HEADER_ALLOWANCE
                );
            }
            Some(cluster)
        }
        None => None,
    };
    let queues = NodeQueues::open(&config.queues)?;
    let (local, sessions) = crate::mqtt::open_core(
        &config.queues.dir,
        config.apps.request_timeout,
        &config.mqtt,
        &config.queues,
    )?;
    let (active, all_done) = smol::channel::bounded::<()>(1);
    let cloud = Arc::new(Cloud {
        config: config.clone(),
        registry: registry.clone(),
        queues: queues.clone(),
        cluster: cluster.clone(),
        local: local.clone(),
        shutdown: shutdown.clone(),
        active,
        pending: Default::default(),
        shed: Mutex::default(),
    });
    if let Some(c) = &cluster {
        c.deliver_up(local.clone());
    }
    let listing = (registry, queues.clone(), cluster.clone());
    let apps = Arc::new(Apps {
        local,
        route: Route::Cloud(match &cluster {
            Some(c) => CloudQueues::Cluster(c.clone()),
            None => CloudQueues::Disk(queues),
        }),
        max_message_bytes: config.apps.max_message_bytes,
        nodes: Some(Box::new(move || {
            nodes_json(&listing.0, &listing.1, listing.2.as_deref())
        })),
        status: None,
        sessions: sessions.clone(),
    });

    let served = credentials::CloudTls::load(&config)?;
    if let Some(addr) = config.websocket {
        let listener = Async::<TcpListener>::bind(addr)
            .map_err(|e| format!("cannot listen for websocket on {addr}: {e}"))?;
        let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
        log::info!("websocket listening on {local}");
        smol::spawn(ws_accept_loop(listener, served.clone(), cloud.clone())).detach();
    }
    let mut endpoint = None;
    if let Some(addr) = config.quic {
        let tls = served.quic_tls()?;
        let transport = quic::transport_config(
            config.max_incoming_streams,
            config.keepalive_interval * 2,
            config.quic_congestion,
        );
        let secret = tls::load_key(&config.key).map_err(|e| e.to_string())?;
        let keys = quic::RestartKeys::derive(secret.secret_der());
        let (ep, template) = quic::server_endpoint_with_config(addr, tls, transport, keys)?;
        served.serve_quic(ep.clone(), template);
        log::info!(
            "quic listening on {}",
            ep.local_addr().map_err(|e| e.to_string())?
        );
        smol::spawn(quic_accept_loop(ep.clone(), cloud.clone())).detach();
        endpoint = Some(ep);
    }

    credentials::watch(served.clone(), hangups, shutdown.clone());

    // The local endpoints last: a node link listener given its port binds before any listener
    // asking the system for a free one (port 0) could be handed that very port.
    crate::apps::start(&config.apps, apps.clone(), shutdown.clone())?;
    crate::mqtt::start(&config.mqtt, apps, sessions, shutdown.clone())?;
    let ops = ops::ops(
        &config,
        cloud.registry.clone(),
        cloud.queues.clone(),
        served,
        shutdown.clone(),
    );
    crate::http::start(config.metrics.listen, Arc::new(ops), shutdown.clone())?;
    crate::http::notify_ready();

    shutdown.wait().await;
    crate::http::notify_stopping();
    let connected = cloud.registry.len();
    log::info!("closing {connected} node link(s)");
    drop(cloud);
    let _ = timeout(SHUTDOWN_GRACE, all_done.recv()).await;
    if let Some(c) = &cluster {
        c.stop().await;
    }
    if let Some(ep) = endpoint {
        quic::close_endpoint(&ep, CLOSE_LINGER).await;
    }
    log::info!("stopped");
    Ok(())
}

/// The `/nodes` answer: connected nodes and nodes with queued messages, sorted by id, each with
/// its link's figures (protocol, address, since, round trip, in flight), what is queued for it,
/// its identity conflicts and why its last link ended. Both lists come sorted, so they are merged
/// in one pass: O(n log n) in all for n nodes (the sorts), one registry lock for the offline.
/// In cluster mode each row names the instance holding the node, and the nodes other instances
/// hold follow (with their protocol, address and since; no link figures, no local queue).
fn nodes_json(registry: &Registry, queues: &NodeQueues, cluster: Option<&Cluster>) -> String {
    let instance = cluster.map(|c| c.instance());
    let connected = registry.nodes();
    let queued = queues.queued();
    // Merged by id: (id, its link if connected, what is queued for it).
    let mut rows: Vec<(&str, Option<&NodeInfo>, u64)> =
        Vec::with_capacity(connected.len().max(queued.len()));
    let (mut i, mut j) = (0, 0);
    while i < connected.len() || j < queued.len() {
        let (link, queue) = (connected.get(i), queued.get(j));
        let row = match (link, queue) {
            (Some(n), Some((id, count))) if n.node_id == *id => {
                (i, j) = (i + 1, j + 1);
                (n.node_id.as_str(), Some(n), *count)
            }
            (Some(n), Some((id, _))) if n.node_id < *id => {
                i += 1;
                (n.node_id.as_str(), Some(n), 0)
            }
            (Some(n), None) => {
                i += 1;
                (n.node_id.as_str(), Some(n), 0)
            }
            (_, Some((id, count))) => {
                j += 1;
                (id.as_str(), None, *count)
            }
            (None, None) => break,
        };
        rows.push(row);
    }
    let offline = registry.history(
        rows.iter()
            .filter(|(_, link, _)| link.is_none())
            .map(|(id, _, _)| *id),
    );
    let mut offline = offline.into_iter();
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    };
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(id, link, queued)| {
            let (conflicts, last_end) = match link {
                Some(n) => (n.conflicts, n.last_end.clone()),
                None => offline.next().unwrap_or_default(),
            };
            serde_json::json!({
                "node_id": id,
                "protocol": link.map(|n| n.protocol.name()),
                "address": link.map(|n| n.peer.to_string()),
                "since": link.and_then(|n| ms(n.since)),
                "rtt_ms": link
                    .and_then(|n| n.live.rtt())
                    .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                "in_flight": link.map(|n| n.live.in_flight()),
                "queued": queued,
                "conflicts": conflicts,
                "last_cause": last_end.as_ref().map(|e| e.cause.label()),
                "last_cause_detail": last_end.as_ref().map(|e| e.detail.as_str()),
                "last_cause_at": last_end.as_ref().and_then(|e| ms(e.at)),
                "instance": link.and(instance),
            })
        })
        .collect();
    let mut rows = rows;
    if let Some(c) = cluster {
        let local: std::collections::HashSet<&str> =
            connected.iter().map(|n| n.node_id.as_str()).collect();
        for n in c.remote_nodes() {
            if local.contains(n.node_id.as_str()) {
                continue; // replaced here a moment ago; the registry's row is the newer
            }
            rows.push(serde_json::json!({
                "node_id": n.node_id,
                "protocol": n.protocol.map(|p| p.name()),
                "address": n.address,
                "since": ms(n.since),
                "rtt_ms": null,
                "in_flight": null,
                "queued": 0,
                "conflicts": 0,
                "last_cause": null,
                "last_cause_detail": null,
                "last_cause_at": null,
                "instance": n.instance,
            }));
        }
        rows.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    }
    serde_json::Value::Array(rows).to_string()
}

async fn ws_accept_loop(
    listener: Async<TcpListener>,
    served: Arc<credentials::CloudTls>,
    cloud: Arc<Cloud>,
) {
    let mut failures = crate::open_files::AcceptFailures::default();
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                cloud.shutdown.wait().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                if cloud.pending(Protocol::Websocket) >= MAX_PENDING_HANDSHAKES {
                    METRICS.refused(Refusal::Load);
                    cloud.shed(Protocol::Websocket, || {
                        format!("closed websocket connection from {peer} at once")
                    });
                    continue;
                }
                let pending = Pending::new(&cloud, Protocol::Websocket);
                let _ = stream.get_ref().set_nodelay(true);
                let task = ws_handshake(stream, peer, served.acceptor(), cloud.clone(), pending);
                smol::spawn(task).detach();
            }
            Some(Err(e)) => failures.pause("websocket", &e).await,
        }
    }
}

/// The leaf certificate's identity; rustls has already verified the chain.
fn leaf_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<CertIdentity, String> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    CertIdentity::from_der(leaf).ok_or_else(|| "client certificate is not readable X.509".into())
}

/// The project and node ids from `/{project-id}/{node-id}/events`, or why the path is not that.
fn parse_events_path(path: &str) -> Result<(String, String), String> {
    let shape = || format!("no such path {path}; use /{{project-id}}/{{node-id}}/events");
    let mut parts = path.strip_prefix('/').ok_or_else(shape)?.split('/');
    let (Some(project), Some(node), Some("events"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(shape());
    };
    valid_id(project).map_err(|p| format!("{}: project id {p}", shape()))?;
    valid_id(node).map_err(|p| format!("{}: node id {p}", shape()))?;
    Ok((project.to_owned(), node.to_owned()))
}

fn refusal(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(reason.to_owned()));
    *resp.status_mut() = status;
    resp
}

/// Decides on a WebSocket upgrade request before upgrading: path, subprotocol, identity, room.
fn check_upgrade(
    req: &Request,
    identity: &CertIdentity,
    registry: &Registry,
    cluster: Option<&Cluster>,
) -> Result<(String, String), (StatusCode, String)> {
    let (project, node) =
        parse_events_path(req.uri().path()).map_err(|why| (StatusCode::NOT_FOUND, why))?;
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == WS_SUBPROTOCOL);
    if !offered {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "{}: this cloud speaks subprotocol {WS_SUBPROTOCOL}",
                CloseCode::UnsupportedVersion
            ),
        ));
    }
    if !identity.is(&node) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "{}: certificate ({}) is not node {node}",
                CloseCode::IdentityMismatch,
                identity.describe()
            ),
        ));
    }
    if !registry.has_room_for(&node) || cluster.is_some_and(|c| !c.has_room_for(&node)) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} (node {node})", CloseCode::NodeLimit),
        ));
    }
    Ok((project, node))
}

/// The upgrade callback's decision: the project and node ids, or the refusal (status and reason).
type Verdict = Result<(String, String), (Refusal, String)>;

async fn ws_handshake(
    tcp: Async<std::net::TcpStream>,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    cloud: Arc<Cloud>,
    pending: Pending,
) {
    let active = cloud.active.clone();
    let limit = cloud.config.keepalive_interval;
    let handshake = async {
        let stream = acceptor
            .accept(tcp)
            .await
            .map_err(|e| (Refusal::Tls, format!("TLS: {e}")))?;
        let identity = leaf_identity(stream.get_ref().1.peer_certificates())
            .map_err(|e| (Refusal::Identity, e))?;
        // None until the callback saw an upgrade request.
        let verdict: Arc<Mutex<Option<Verdict>>> = Arc::new(Mutex::new(None));
        let record = verdict.clone();
        let registry = cloud.registry.clone();
        let cluster = cloud.cluster.clone();
        let id = identity.clone();
        #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
        let callback = move |req: &Request, mut resp: Response| {
            let checked = check_upgrade(req, &id, &registry, cluster.as_deref());
            let mut slot = record.lock().unwrap_or_else(|e| e.into_inner());
            match checked {
                Ok(ids) => {
                    *slot = Some(Ok(ids));
                    resp.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        WS_SUBPROTOCOL.parse().expect("valid header"),
                    );
                    Ok(resp)
                }
                Err((status, reason)) => {
                    let kind = match status {
                        StatusCode::FORBIDDEN => Refusal::Identity,
                        StatusCode::SERVICE_UNAVAILABLE => Refusal::NodeLimit,
                        _ => Refusal::ProtocolError,
                    };
                    *slot = Some(Err((kind, format!("{} {reason}", status.as_u16()))));
                    Err(refusal(status, &reason))
                }
            }
        };
        let upgraded =
            async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws::config()))
                .await;
        let ids = verdict.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (upgraded, ids) {
            (Ok(ws), Some(Ok(ids))) => Ok((ws, identity, Some(ids))),
            (_, Some(Err(refused))) => Err(refused),
            (Err(e), _) => Err((Refusal::ProtocolError, format!("WebSocket upgrade: {e}"))),
            (Ok(_), None) => Err((Refusal::ProtocolError, "no upgrade request".into())),
        }
    };
    // Boxed: the handshake's state (TLS, the upgrade) is freed once it is done, rather than
    // kept in the connection's task as long as the node stays connected.
    let handshake = timeout(limit, Box::pin(handshake)).await;
    drop(pending);
    match handshake {
        None => {
            METRICS.refused(Refusal::Timeout);
            log::info!(
                "refused websocket connection from {peer}: no handshake within {:.1}s",
                limit.as_secs_f64()
            )
        }
        Some(Err((kind, e))) => {
            METRICS.refused(kind);
            log::info!("refused websocket connection from {peer}: {e}")
        }
        Some(Ok((ws, identity, ids))) => {
            let link = ws::spawn_link(ws, peer, cloud.config.write_timeout);
            smol::spawn(serve(link, identity, ids, cloud, active)).detach();
        }
    }
}

async fn quic_accept_loop(endpoint: quinn::Endpoint, cloud: Arc<Cloud>) {
    loop {
        let incoming = async { endpoint.accept().await }
            .or(async {
                cloud.shutdown.wait().await;
                None
            })
            .await;
        let Some(incoming) = incoming else { return };
        let (peer, busy) = (incoming.remote_address(), cloud.pending(Protocol::Quic));
        if busy >= QUIC_RETRY_ABOVE && incoming.may_retry() {
            if incoming.retry().is_ok() {
                cloud.shed(Protocol::Quic, || {
                    format!("asked quic source {peer} to prove its address (Retry)")
                });
            }
            continue;
        }
        if busy >= MAX_PENDING_HANDSHAKES {
            incoming.refuse();
            METRICS.refused(Refusal::Load);
            cloud.shed(Protocol::Quic, || {
                format!("refused quic connection from {peer} at once")
            });
            continue;
        }
        let pending = Pending::new(&cloud, Protocol::Quic);
        smol::spawn(quic_handshake(incoming, cloud.clone(), pending)).detach();
    }
}

fn quic_peer_certs(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

async fn quic_handshake(incoming: quinn::Incoming, cloud: Arc<Cloud>, pending: Pending) {
    let active = cloud.active.clone();
    let peer = incoming.remote_address();
    let limit = cloud.config.keepalive_interval;
    // The connection once there is one, so a peer that never opens its control stream can be told
    // why it is closed (code 7), as a silent link would be.
    let opened: Mutex<Option<quinn::Connection>> = Mutex::new(None);
    let handshake = async {
        let connecting = incoming
            .accept()
            .map_err(|e| (Refusal::Tls, format!("QUIC: {e}")))?;
        // A resumed edge sends HELLO as 0-RTT data; its identity comes with the resumed session,
        // so the link can start before the handshake completes. Otherwise wait for the handshake
        // (and the client certificate) first.
        let (conn, established) = match connecting.into_0rtt() {
            Ok(pair) => pair,
            Err(connecting) => {
                let conn = connecting
                    .await
                    .map_err(|e| (Refusal::Tls, format!("QUIC handshake: {e}")))?;
                let certs = quic_peer_certs(&conn);
                let identity =
                    leaf_identity(certs.as_deref()).map_err(|e| (Refusal::Identity, e))?;
                *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                let (send, recv) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| (Refusal::ProtocolError, format!("QUIC: {e}")))?;
                return Ok((conn, send, recv, identity));
            }
        };
        let certs = match quic_peer_certs(&conn) {
            Some(c) => Some(c),
            None => {
                established.await;
                quic_peer_certs(&conn)
            }
        };
        let identity = match leaf_identity(certs.as_deref()) {
            Ok(id) => id,
            Err(e) => {
                return Err(match conn.close_reason() {
                    Some(reason) => (Refusal::Tls, format!("QUIC handshake: {reason}")),
                    None => (Refusal::Identity, e),
                });
            }
        };
        // The node is known (a completed handshake, or a resumed session): from here on only its
        // control stream is awaited.
        *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| (Refusal::ProtocolError, format!("QUIC: {e}")))?;
        Ok::<_, (Refusal, String)>((conn, send, recv, identity))
    };
    // Boxed: the handshake's state (TLS, the upgrade) is freed once it is done, rather than
    // kept in the connection's task as long as the node stays connected.
    let handshake = timeout(limit, Box::pin(handshake)).await;
    drop(pending);
    match handshake {
        None => {
            METRICS.refused(Refusal::Timeout);
            let opened = opened.lock().unwrap_or_else(|e| e.into_inner()).take();
            let what = match opened {
                Some(conn) => {
                    let code = CloseCode::Timeout;
                    conn.close(code.code().into(), code.reason().as_bytes());
                    "no control stream"
                }
                None => "no handshake",
            };
            log::info!(
                "refused quic connection from {peer}: {what} within {:.1}s",
                limit.as_secs_f64()
            );
        }
        Some(Err((kind, e))) => {
            METRICS.refused(kind);
            log::info!("refused quic connection from {peer}: {e}")
        }
        Some(Ok((conn, send, recv, identity))) => {
            let link = quic::spawn_link(
                conn,
                send,
                recv,
                cloud.config.write_timeout,
                quic::BulkStream::Accept,
            );
            smol::spawn(serve(link, identity, None, cloud, active)).detach();
        }
    }
}

/// What [`serve`] does about a session event once the event is gone: only what it needs is kept
/// across the wait, not the event (a HELLO is 152 bytes) in every node's task.
enum Step {
    /// A HELLO was admitted: open the node's exchange (project id for the log line).
    Admit(Admission, Option<Arc<LaneStores>>, String),
    /// The session ended with this code: close the link and stop.
    End(CloseCode),
}

/// Runs one node's session until it ends, in a task of its own (the handshake's task is gone by
/// then, and with it the handshake's state). `url_ids` are the project and node ids from the
/// WebSocket URL, which the HELLO must repeat; `active` is held until the session ends.
///
/// A function returning an `async move` block rather than an `async fn`: the block uses what it
/// captures where it is, while an `async fn` keeps a second copy of its arguments (312 bytes)
/// in the future for as long as the node stays connected.
#[allow(clippy::manual_async_fn)] // on purpose, as said above
fn serve(
    mut link: Link,
    identity: CertIdentity,
    url_ids: Option<(String, String)>,
    cloud: Arc<Cloud>,
    active: smol::channel::Sender<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let node = url_ids
        .as_ref()
        .map_or_else(|| "?".to_owned(), |(_, n)| n.clone());
    // What the HELLO is checked against: boxed, and let go once the node is admitted (a task
    // per node keeps the rest for as long as the link lasts).
    let mut checks = Some(Box::new((identity, url_ids)));
    async move {
        let _active = active;
        let (protocol, peer) = (link.protocol, link.peer);
        let mut session = Session::cloud(
            Instant::now(),
            cloud.config.keepalive_interval,
            cloud.config.queues.window,
        );
        let mut admission: Option<Admission> = None;
        // Cluster mode: the node's entry in the shared registry, held as long as the admission.
        let mut _shared: Option<ClusterAdmission> = None;
        let mut exchange: Option<Exchange> = None;
        let mut node = node;
        let log_end = |admitted: bool, node: &str, why: &str| {
            if admitted {
                log::info!("node {node} disconnected ({protocol}, {peer}): {why}");
            } else {
                log::info!("refused {protocol} connection from {peer} (node {node}): {why}");
            }
        };
        loop {
            let now = Instant::now();
            loop {
                let step = match session.poll_event() {
                    None => break,
                    Some(event) => {
                        let event = match exchange.as_mut() {
                            Some(ex) => match ex.handle(&mut session, event) {
                                Some(e) => e,
                                None => continue,
                            },
                            None => event,
                        };
                        match event {
                            Event::Hello(hello) => {
                                if valid_id(&hello.node_id).is_ok() {
                                    node = hello.node_id.clone(); // else it stays out of the log lines
                                }
                                let live = link.live().clone();
                                // Only one HELLO gets this far: the session refuses another.
                                let Some((identity, url_ids)) = checks.as_deref() else {
                                    continue;
                                };
                                match admit(&cloud, &hello, url_ids, identity, protocol, peer, live)
                                {
                                    Ok((a, stores)) => Step::Admit(a, stores, hello.project_id),
                                    Err((code, why)) => {
                                        session.close(code, why);
                                        continue;
                                    }
                                }
                            }
                            Event::Close(code, detail) => {
                                if admission.is_none() {
                                    if let Some(kind) = Refusal::of_close(code) {
                                        METRICS.refused(kind);
                                    }
                                }
                                let detail = if detail.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {detail}")
                                };
                                let why = format!("{code}{detail}");
                                log_end(admission.is_some(), &node, &why);
                                if let (Some(a), Some(cause)) = (&admission, close_cause(code)) {
                                    a.ended(cause, &why);
                                }
                                if let Some(mut ex) = exchange.take() {
                                    ex.finish();
                                    drop(ex);
                                    cloud.queues.release(&node);
                                }
                                Step::End(code)
                            }
                            _ => continue,
                        }
                    }
                };
                match step {
                    Step::Admit(a, stores, project) => {
                        // The link this one replaces lets go of the node's queues first. The
                        // node id is the HELLO's: admit() accepted it as valid.
                        let prefix = node_prefix(&node);
                        let opened = async {
                            let entry = match &cloud.cluster {
                                Some(c) => Some(
                                    c.admit(&node, a.id(), protocol, peer)
                                        .await
                                        .map_err(cluster_refusal)?,
                                ),
                                None => None,
                            };
                            let ex = match (&stores, &cloud.cluster) {
                                (Some(stores), _) => {
                                    Exchange::open(stores, cloud.local.clone(), Some(prefix)).await
                                }
                                (None, Some(c)) => {
                                    let holding = c.holder(&node).lock_arc().await;
                                    let lanes = c
                                        .node_lanes(&node)
                                        .await
                                        .map_err(|e| (CloseCode::Unavailable, e))?;
                                    Exchange::open_shared(
                                        lanes,
                                        cloud.local.clone(),
                                        prefix,
                                        holding,
                                    )
                                }
                                // admit() opens the disk queues whenever there is no cluster.
                                (None, None) => {
                                    let why = "the node's queues are not open".to_owned();
                                    return Err((CloseCode::Unavailable, why));
                                }
                            };
                            Ok((ex, entry))
                        }
                        .or(async {
                            a.replaced().await;
                            Err((CloseCode::Replaced, String::new()))
                        })
                        .or(async {
                            cloud.shutdown.wait().await;
                            Err((CloseCode::ShuttingDown, String::new()))
                        })
                        .await;
                        let ex = match opened {
                            Ok((ex, entry)) => {
                                _shared = entry;
                                ex
                            }
                            Err((code, why)) => {
                                session.close(code, why);
                                continue;
                            }
                        };
                        session.accept(Instant::now(), ex.streams());
                        admission = Some(a);
                        exchange = Some(ex);
                        let identity = checks.take().map(|c| c.0.describe());
                        log::info!(
                            "node {node} connected over {protocol} from {peer} ({}, project {project})",
                            identity.unwrap_or_default(),
                        );
                    }
                    Step::End(code) => {
                        link.close(code, CLOSE_LINGER).await;
                        return;
                    }
                }
            }
            // Checked before anything else is read: a replaced link must stop delivering at
            // once, since its replacement waits for it (see [`Exchange::open`]).
            if admission.as_ref().is_some_and(|a| a.is_replaced()) {
                session.close(CloseCode::Replaced, "");
                continue;
            }
            if let Some(ex) = exchange.as_mut() {
                ex.fill(&mut session, |lane| link.room(lane));
            }
            link.live().set_unacknowledged(session.unacknowledged());
            link.tick(&session, now);
            link.flush(&mut session, now);
            let other = async {
                match &admission {
                    Some(a) => a.replaced().await,
                    None => std::future::pending().await,
                }
                Wake::Stop(CloseCode::Replaced)
            }
            .or(async {
                cloud.shutdown.wait().await;
                Wake::Stop(CloseCode::ShuttingDown)
            })
            .or(async {
                match &exchange {
                    Some(ex) => ex.added().await,
                    None => std::future::pending().await,
                }
                Wake::Added
            });
            match link.wait(&session, other).await {
                Wake::Inbound(Inbound::Frame(bytes)) => {
                    session.handle_owned(Instant::now(), bytes);
                    link.handle_waiting(&mut session);
                }
                Wake::Inbound(Inbound::Closed(LinkError::Frame(e))) => {
                    session.fail(Instant::now(), e)
                }
                Wake::Inbound(Inbound::Closed(LinkError::WriteTimeout(d))) => session.close(
                    CloseCode::WriteTimeout,
                    format!("writes blocked for {:.1}s", d.as_secs_f64()),
                ),
                Wake::Inbound(Inbound::Closed(e)) => {
                    let why = e.to_string();
                    log_end(admission.is_some(), &node, &why);
                    if let Some(a) = &admission {
                        a.ended(e.cause(), &why);
                    }
                    if let Some(mut ex) = exchange.take() {
                        ex.finish();
                        drop(ex);
                        cloud.queues.release(&node);
                    }
                    return;
                }
                Wake::Timer => session.handle_timeout(Instant::now()),
                Wake::Stop(code) => session.close(code, ""),
                Wake::Added => {}
            }
        }
    }
}

/// The close code and reason for a node the cluster refused.
fn cluster_refusal(refused: Refused) -> (CloseCode, String) {
    match refused {
        Refused::NodeLimit(n) => (
            CloseCode::NodeLimit,
            format!("{n} nodes connected across the cluster"),
        ),
        Refused::Unavailable(why) => (CloseCode::Unavailable, why),
    }
}

/// A node's registry entry, and its queues on disk (`None` in cluster mode).
type Admitted = (Admission, Option<Arc<LaneStores>>);

/// Decides on a HELLO: the ids agree with the URL (WebSocket) and the certificate, and the node
/// fits under node-limit. Returns its registry entry and its queues (`None` in cluster mode).
fn admit(
    cloud: &Arc<Cloud>,
    hello: &Hello,
    url_ids: &Option<(String, String)>,
    identity: &CertIdentity,
    protocol: Protocol,
    peer: SocketAddr,
    live: Arc<crate::transport::Live>,
) -> Result<Admitted, (CloseCode, String)> {
    // Checked before anything else reads them: the ids become a registry key, a queue folder and
    // log lines, so only the canonical form gets that far.
    valid_id(&hello.project_id).map_err(|p| {
        (
            CloseCode::IdentityMismatch,
            format!("HELLO's project id {p}"),
        )
    })?;
    valid_id(&hello.node_id)
        .map_err(|p| (CloseCode::IdentityMismatch, format!("HELLO's node id {p}")))?;
    if let Some((p, n)) = url_ids {
        if *p != hello.project_id || *n != hello.node_id {
            let why = format!(
                "HELLO names {}/{} but the URL {p}/{n}",
                hello.project_id, hello.node_id
            );
            return Err((CloseCode::IdentityMismatch, why));
        }
    }
    if !identity.is(&hello.node_id) {
        let why = format!(
            "certificate ({}) is not node {}",
            identity.describe(),
            hello.node_id
        );
        return Err((CloseCode::IdentityMismatch, why));
    }
    // In cluster mode the node's lanes are in JetStream, opened once it is admitted there.
    let streams = match cloud.cluster {
        Some(_) => None,
        None => Some(
            cloud
                .queues
                .node(&hello.node_id)
                .map_err(|e| (CloseCode::Unavailable, e))?,
        ),
    };
    let admission = cloud
        .registry
        .admit(&hello.node_id, protocol, peer, live)
        .ok_or_else(|| {
            (
                CloseCode::NodeLimit,
                format!("{} nodes connected", cloud.config.node_limit),
            )
        })?;
    Ok((admission, streams))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Cause;

    #[test]
    fn the_node_list_merges_connected_and_queued_nodes_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::QueueConfig {
            dir: tmp.path().to_owned(),
            max_messages: 100,
            max_bytes: 1 << 30,
            fsync: crate::store::Fsync::Never,
            window: 64,
        };
        let queues = NodeQueues::open(&config).unwrap();
        let registry = Registry::new(10);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // b and d have queues only (d's link ended), c both, a and e a link only.
        for id in ["d", "c", "b"] {
            queues.node(id).unwrap();
        }
        let d = registry.admit("d", Protocol::Quic, addr, Arc::default());
        d.unwrap()
            .ended(Cause::ReadDeadline, "timeout: nothing received");
        let live = Arc::new(crate::transport::Live::default());
        live.record_rtt(Duration::from_micros(1500));
        live.set_unacknowledged((7, 0));
        let _e = registry.admit("e", Protocol::Websocket, addr, Arc::default());
        let _c = registry.admit("c", Protocol::Quic, addr, live);
        let _a = registry.admit("a", Protocol::Quic, addr, Arc::default());

        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&nodes_json(&registry, &queues, None)).unwrap();
        let ids: Vec<&str> = rows
            .iter()
            .map(|r| r["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        let c = &rows[2];
        assert_eq!(c["protocol"], "quic");
        assert_eq!(c["rtt_ms"], 1.5);
        assert_eq!(c["in_flight"], 7);
        assert_eq!(c["queued"], 0);
        let d = &rows[3];
        assert!(d["protocol"].is_null() && d["rtt_ms"].is_null() && d["in_flight"].is_null());
        assert_eq!(d["last_cause"], "read_deadline");
        assert_eq!(d["last_cause_detail"], "timeout: nothing received");
        assert!(d["last_cause_at"].as_u64().unwrap() > 0);
        assert!(rows[0]["last_cause"].is_null());
        assert_eq!(rows[4]["protocol"], "websocket");
    }
}
