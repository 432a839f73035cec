//! The local application endpoint: a WebSocket server on loopback (and optionally a unix socket)
//! where applications publish, subscribe and make requests with JSON messages in KubeEdge's
//! `model.Message` shape. See `docs/api.md`.
//!
//! - `/` (query `group=…`, `resource=…` to subscribe): every text message the application sends is
//!   a message to publish; the hub answers each with a notice (`route.operation` `accepted` or
//!   `error`, `header.parent_msg_id` the message's id) once it is in the durable queue, in order.
//!   Matching messages from the other side arrive as they come; so do responses to the
//!   application's sync requests (or an `error` notice after the request timeout).
//! - `/nodes` (cloud): one text message with the nodes as JSON, then the connection closes.
//! - `/status` (edge): one text message with the link's status as JSON, then the connection
//!   closes.
//!
//! Every buffer an application can grow is bounded in bytes before the bytes are taken: a
//! WebSocket message (or fragment) over [`ws_message_limit`] is refused when its header or the
//! fragment that passes the limit arrives (close code 1009), publishes awaiting their notice are
//! bounded by [`IN_FLIGHT_BYTES`], and what waits to be written to the application by
//! [`queue_bytes`] (then it is disconnected, close code 1008). Those bounds are counts, not
//! preallocated room: an idle connection costs a few tens of KiB (an 8 KiB read buffer, its
//! tasks), whatever the bounds.
//!
//! The connections themselves are bounded: at most `apps.max-connections` at once (one more is
//! answered with HTTP 503 and the reason), each given `apps.upgrade-timeout` to complete its
//! WebSocket upgrade.

use crate::cloud::CloudQueues;
use crate::metrics::{API_WEBSOCKET, METRICS};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use futures_util::SinkExt;
use smol::Async;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use smol::stream::StreamExt;

use crate::config::AppsConfig;
use crate::exchange::lane_for;
use crate::local::{Filter, Local, Out, app_channel};
use crate::message::{Message, MessageError, MessageRef, split_node_resource};
use crate::sessions::Kind;

use crate::shutdown::Shutdown;
use crate::transport::timeout;

/// Messages waiting for one application before it counts as too slow and is disconnected.
const APP_QUEUE: usize = 65536;
/// Bytes (of JSON text) waiting for one application before it counts as too slow and is
/// disconnected, unless twice the largest message is more (see [`queue_bytes`]).
pub const APP_QUEUE_BYTES: usize = 16 << 20;
/// Publishes of one application awaiting their notice before the hub stops reading from it.
/// Counted, not preallocated: an idle connection holds no room for them.
const IN_FLIGHT: usize = 4096;
/// Bytes of one application's publishes awaiting their notice (the encoded messages, on their way
/// into the queue) before the hub stops reading from it; one message is always let through.
pub const IN_FLIGHT_BYTES: usize = 8 << 20;
/// Messages to one application written with one flush at most.
const WRITE_BATCH: usize = 256;
/// What a WebSocket message may add to `apps.max-message-bytes`: the JSON's field names,
/// quotes and escapes around the binary form the limit counts.
pub const JSON_ALLOWANCE: usize = 64 * 1024;
/// How long a connection the hub refused (close 1009 or 1008) is kept open after the close
/// frame: the hub reads and discards what the application still sends meanwhile, so the
/// application reads the close frame rather than a reset.
const LINGER: Duration = Duration::from_secs(5);
/// Connections refused (HTTP 503, `apps.max-connections` reached) that may be answered at once;
/// beyond them a connection is closed without an answer, so that a flood of connections cannot
/// make the refusals themselves pile up.
const REFUSING_AT_ONCE: usize = 64;
/// How long a refused connection has to send its request before it is closed without its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two log lines about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The largest WebSocket message (and frame) an application may send, in bytes: the largest
/// message `max_message_bytes` (in its binary form) plus [`JSON_ALLOWANCE`]. Larger ones are
/// refused as soon as their frame header, or the fragment that passes the limit, arrives.
pub fn ws_message_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(JSON_ALLOWANCE)
}

/// Bytes of JSON text that may wait for one application: [`APP_QUEUE_BYTES`], or twice the
/// largest WebSocket message when that is more, so the bound never refuses a single message.
pub fn queue_bytes(max_message_bytes: usize) -> usize {
    APP_QUEUE_BYTES.max(ws_message_limit(max_message_bytes).saturating_mul(2))
}

/// Where this hub sends what its applications publish.
pub enum Route {
    /// Edge: everything goes into the outbox (of the message's lane), for the cloud.
    Edge(Arc<crate::exchange::LaneStores>),
    /// Cloud: `node/{node-id}/…` goes into that node's queue, without the prefix.
    Cloud(crate::cloud::CloudQueues),
}

/// The application endpoint's shared state.
pub struct Apps {
    /// Local delivery.
    pub local: Arc<Local>,
    /// Where published messages go.
    pub route: Route,
    /// The largest message accepted, encoded.
    pub max_message_bytes: usize,
    /// Cloud: the `/nodes` answer.
    pub nodes: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// Edge: the `/status` answer.
    pub status: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// Durable sessions (named subscriptions: `?session=NAME`).
    pub sessions: Arc<crate::sessions::Sessions>,
}

/// A publish on its way into the queue: finishes with its sequence number once durable, or why
/// it was refused.
pub enum Accepted {
    /// In its queue's group commit.
    Queued(crate::queue::Answered),
    /// Its outcome is known already (until the future is polled to it).
    Ready(Option<Result<u64, String>>),
    /// On its way into the cluster's JetStream (cluster mode).
    Shared(Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>),
}

impl Accepted {
    /// A publish whose outcome is known already.
    pub fn ready(outcome: Result<u64, String>) -> Accepted {
        Accepted::Ready(Some(outcome))
    }
}

impl Future for Accepted {
    type Output = Result<u64, String>;

    /// Panics if polled again after it finished.
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Accepted::Queued(answered) => Pin::new(answered).poll(cx),
            Accepted::Ready(outcome) => {
                std::task::Poll::Ready(outcome.take().expect("polled after it finished"))
            }
            Accepted::Shared(append) => append.as_mut().poll(cx),
        }
    }
}

impl Apps {
    /// Puts an application's message on its way; the future finishes once it is durable (for a
    /// request or a response: once it is written). Also returns the encoded message's size.
    /// `msg` keeps the application's resource (the cloud queues `node/{node-id}/rest` as `rest`).
    pub fn publish(&self, msg: &Message) -> Result<(Accepted, usize), String> {
        self.submit(
            msg.sync,
            msg.urgent,
            &msg.parent_id,
            &msg.resource,
            |resource| msg.encode_as(resource),
        )
    }

    /// [`publish`](Self::publish) for a message read from an application's JSON, encoded
    /// straight from the text it borrows from.
    pub fn publish_json(&self, msg: &MessageRef<'_>) -> Result<(Accepted, usize), String> {
        self.submit(
            msg.sync,
            msg.urgent,
            &msg.parent_id,
            &msg.resource,
            |resource| msg.encode_as(resource),
        )
    }

    /// Encodes a message with `encode(queued resource)` and submits it to the queue of its lane
    /// ([`lane_for`]).
    fn submit(
        &self,
        sync: bool,
        urgent: bool,
        parent_id: &str,
        resource: &str,
        encode: impl FnOnce(&str) -> Result<Vec<u8>, MessageError>,
    ) -> Result<(Accepted, usize), String> {
        let lane = lane_for(sync, urgent, parent_id);
        let (queue, resource) = match &self.route {
            Route::Edge(outbox) => (outbox.out[lane.index()].clone(), resource),
            Route::Cloud(CloudQueues::Cluster(cluster)) => {
                let (node, rest) = split_node_resource(resource)?;
                crate::config::valid_id(node).map_err(|p| format!("node id {p}"))?;
                let bytes = self.encode_within(rest, encode)?;
                let len = bytes.len();
                let (cluster, node) = (cluster.clone(), node.to_owned());
                let append = async move { cluster.append(&node, lane, bytes).await };
                return Ok((Accepted::Shared(Box::pin(append)), len));
            }
            Route::Cloud(CloudQueues::Disk(queues)) => {
                // A node whose queues are open has a valid id: only another resource is checked
                // (and refused with the reason).
                let open = resource
                    .strip_prefix("node/")
                    .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
                    .and_then(|(node, rest)| Some((queues.open_already(node)?, rest)));
                match open {
                    Some((stores, rest)) => (stores.out[lane.index()].clone(), rest),
                    None => {
                        let (node, rest) = split_node_resource(resource)?;
                        (queues.node(node)?.out[lane.index()].clone(), rest)
                    }
                }
            }
        };
        let bytes = self.encode_within(resource, encode)?;
        // Requests and responses are written but not synced on their own: they are useless after
        // a restart, which ends the requester's connection and its wait.
        let durable = !sync && parent_id.is_empty();
        let len = bytes.len();
        Ok((Accepted::Queued(queue.submit_one(bytes, durable)), len))
    }
}

impl Apps {
    /// `encode(resource)`, refused beyond `apps.max-message-bytes`.
    fn encode_within(
        &self,
        resource: &str,
        encode: impl FnOnce(&str) -> Result<Vec<u8>, MessageError>,
    ) -> Result<Vec<u8>, String> {
        let bytes = encode(resource).map_err(|e| e.to_string())?;
        if bytes.len() > self.max_message_bytes {
            return Err(format!(
                "message of {} bytes is over the {}-byte limit (apps.max-message-bytes)",
                bytes.len(),
                self.max_message_bytes
            ));
        }
        Ok(bytes)
    }
}

/// The connections of the endpoint (TCP and unix socket together): how many are open, against
/// `apps.max-connections`, and the refusals beyond it.
struct Gate {
    /// Connections open, from their accept to their end (upgrades under way included).
    open: AtomicUsize,
    /// `apps.max-connections`.
    max: usize,
    /// Refusals being answered (see [`REFUSING_AT_ONCE`]).
    refusing: AtomicUsize,
    /// `apps.upgrade-timeout`.
    upgrade_timeout: Duration,
    /// Refusals so far, and when and at which count the last log line about them was written.
    refused: AtomicU64,
    logged: Mutex<Option<(Instant, u64)>>,
}

/// One connection counted in [`Gate::open`] or [`Gate::refusing`]; counted out when dropped.
struct Ticket {
    gate: Arc<Gate>,
    refusal: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let count = if self.refusal {
            &self.gate.refusing
        } else {
            &self.gate.open
        };
        count.fetch_sub(1, Ordering::AcqRel);
        if !self.refusal {
            METRICS.app_connections[API_WEBSOCKET].dec();
        }
    }
}

/// What to do with a connection just accepted.
enum Admission {
    /// Serve it.
    Serve(Ticket),
    /// Answer it with HTTP 503.
    Refuse(Ticket),
    /// Close it without a word: too many refusals under way already.
    Drop,
}

impl Gate {
    fn new(config: &AppsConfig) -> Gate {
        Gate {
            open: AtomicUsize::new(0),
            max: crate::open_files::budget(
                config.max_connections.max(1),
                "apps.max-connections",
                4,
            ),
            refusing: AtomicUsize::new(0),
            upgrade_timeout: config.upgrade_timeout,
            refused: AtomicU64::new(0),
            logged: Mutex::new(None),
        }
    }

    /// Counts a new connection in, if there is room for it.
    fn admit(self: &Arc<Self>) -> Admission {
        let take = |count: &AtomicUsize, max: usize| {
            count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        };
        if take(&self.open, self.max) {
            METRICS.app_connections[API_WEBSOCKET].inc();
            return Admission::Serve(Ticket {
                gate: self.clone(),
                refusal: false,
            });
        }
        self.note_refusal();
        if take(&self.refusing, REFUSING_AT_ONCE) {
            Admission::Refuse(Ticket {
                gate: self.clone(),
                refusal: true,
            })
        } else {
            Admission::Drop
        }
    }

    /// Why a connection is refused, for the application.
    fn refusal_reason(&self) -> String {
        format!(
            "too many application connections: {} are open, the most this hub takes (apps.max-connections)",
            self.max
        )
    }

    /// Counts a refusal; logs one line per [`REFUSAL_LOG_INTERVAL`] at most, with the count
    /// since the previous line.
    fn note_refusal(&self) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let since = match *logged {
            Some((at, _)) if now.duration_since(at) < REFUSAL_LOG_INTERVAL => return,
            Some((_, count)) => total - count,
            None => total,
        };
        *logged = Some((now, total));
        drop(logged);
        log::warn!(
            "refused {since} application connection(s) with 503: {} are open, the most apps.max-connections allows",
            self.max
        );
    }
}

/// Serves the endpoint on the configured TCP address and unix socket until `shutdown`.
/// Returns the TCP address actually bound (the port may have been 0).
///
/// At most `apps.max-connections` connections are open at once (both listeners together); one
/// more is answered with HTTP 503 and the reason, and a connection whose WebSocket upgrade is
/// not complete within `apps.upgrade-timeout` is closed.
pub fn start(
    config: &AppsConfig,
    apps: Arc<Apps>,
    shutdown: Shutdown,
) -> Result<Option<SocketAddr>, String> {
    let gate = Arc::new(Gate::new(config));
    let mut bound = None;
    if let Some(addr) = config.listen {
        let listener = Async::<TcpListener>::bind(addr)
            .map_err(|e| format!("cannot listen for applications on {addr}: {e}"))?;
        let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
        if !local.ip().is_loopback() {
            log::warn!(
                "the application endpoint listens on {local}, beyond this machine: anyone who reaches it can publish"
            );
        }
        log::info!("apps listening on ws://{local}");
        bound = Some(local);
        let (apps, shutdown, gate) = (apps.clone(), shutdown.clone(), gate.clone());
        smol::spawn(async move {
            let accept = || async {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.get_ref().set_nodelay(true);
                Ok((stream, peer.to_string()))
            };
            accept_loop(accept, apps, gate, shutdown).await
        })
        .detach();
    }
    if let Some(path) = &config.unix {
        let listener = bind_unix(path)?;
        log::info!("apps listening on unix:{}", path.display());
        smol::spawn(async move {
            let accept = || async {
                let (stream, _) = listener.accept().await?;
                Ok((stream, "on the unix socket".to_owned()))
            };
            accept_loop(accept, apps, gate, shutdown).await
        })
        .detach();
    }
    Ok(bound)
}

/// Serves each connection `accept` yields, until `shutdown`.
async fn accept_loop<S, F, Fut>(mut accept: F, apps: Arc<Apps>, gate: Arc<Gate>, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<(S, String)>>,
{
    let mut failures = crate::open_files::AcceptFailures::default();
    loop {
        let accepted = async { Some(accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok((stream, name))) => match gate.admit() {
                Admission::Serve(ticket) => {
                    let (apps, upgrade_timeout) = (apps.clone(), gate.upgrade_timeout);
                    smol::spawn(async move {
                        connection(stream, name, apps, upgrade_timeout).await;
                        drop(ticket);
                    })
                    .detach()
                }
                Admission::Refuse(ticket) => {
                    let why = gate.refusal_reason();
                    smol::spawn(async move {
                        refuse(stream, &name, why).await;
                        drop(ticket);
                    })
                    .detach()
                }
                Admission::Drop => drop(stream),
            },
            Some(Err(e)) => failures.pause("application", &e).await,
        }
    }
}

/// Binds a unix socket readable and writable by its owner only, replacing a stale socket file.
fn bind_unix(path: &Path) -> Result<Async<UnixListener>, String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(format!("{} exists and is not a socket", path.display()));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The socket is made in a private folder (mode 0700), restricted to its owner there and only
    // then moved to `path`: at no moment can anyone else connect through a looser mode.
    let private = dir.join(format!(".hub-apps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("cannot create {}: {e}", private.display()))?;
    let staged = private.join("socket");
    let bound = Async::<UnixListener>::bind(&staged)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
            std::fs::rename(&staged, path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// The request's path and subscription filter, as the upgrade saw them.
#[derive(Default)]
struct Target {
    path: String,
    filter: Option<Filter>,
    /// `session=NAME`: a durable subscription.
    session: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `session` of a query: the name of a durable subscription (see `docs/api.md`).
fn session_name(query: Option<&str>) -> Option<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "session")
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn parse_query(query: Option<&str>) -> Option<Filter> {
    let mut filter = None::<Filter>;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "group" => {
                filter.get_or_insert_with(Filter::default).group = Some(v).filter(|g| !g.is_empty())
            }
            "resource" => filter.get_or_insert_with(Filter::default).resource = Some(v),
            _ => {}
        }
    }
    filter
}

/// Answers a connection over `apps.max-connections` with HTTP 503 and `why` (once its request
/// is read, so that it gets the answer rather than a reset), within [`REFUSAL_TIMEOUT`].
async fn refuse<S>(stream: S, name: &str, why: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let callback = move |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut err = ErrorResponse::new(Some(why));
        *err.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Err(err)
    };
    let answered = async_tungstenite::accept_hdr_async(stream, callback);
    if let Some(Ok(_)) = timeout(REFUSAL_TIMEOUT, answered).await {
        log::debug!("application {name}: refused, yet upgraded");
    }
}

async fn connection<S>(stream: S, name: String, apps: Arc<Apps>, upgrade_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = Arc::new(Mutex::new(Target::default()));
    let seen = target.clone();
    let has_nodes = apps.nodes.is_some();
    let has_status = apps.status.is_some();
    // The other path there is, naming the hub: a command asking the wrong one learns why.
    let other = if has_nodes {
        "a cloud hub: use / or /nodes"
    } else {
        "an edge hub: use / or /status"
    };
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path().to_owned();
        let known =
            path == "/" || (path == "/nodes" && has_nodes) || (path == "/status" && has_status);
        if !known {
            let mut err = ErrorResponse::new(Some(format!("no such path {path} on {other}")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let mut t = seen.lock().unwrap_or_else(|e| e.into_inner());
        t.filter = parse_query(req.uri().query());
        t.session = session_name(req.uri().query());
        t.path = path;
        Ok(resp)
    };
    let limit = ws_message_limit(apps.max_message_bytes);
    let config = WebSocketConfig::default()
        .read_buffer_size(crate::transport::ws::READ_BUFFER)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let upgrade = async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match timeout(upgrade_timeout, upgrade).await {
        Some(Ok(ws)) => ws,
        Some(Err(e)) => {
            log::debug!("application {name}: upgrade failed: {e}");
            return;
        }
        None => {
            log::info!(
                "application {name}: no WebSocket upgrade within {:.1}s (apps.upgrade-timeout); closing its connection",
                upgrade_timeout.as_secs_f64()
            );
            return;
        }
    };
    let Target {
        path,
        filter,
        session: durable,
    } = std::mem::take(&mut *target.lock().unwrap_or_else(|e| e.into_inner()));
    let answer = match path.as_str() {
        "/nodes" => apps.nodes.as_ref(),
        "/status" => apps.status.as_ref(),
        _ => None,
    };
    if let Some(answer) = answer {
        let mut ws = ws;
        let _ = ws.send(WsMessage::text(answer())).await;
        let _ = ws.close(None).await;
        return;
    }
    session(ws, name, filter, durable, apps).await;
}

/// Hands what a durable session's queue holds to its connection, in order, from the first
/// record not yet written to the application; waits for more. Finishes when the connection is
/// gone or the queue cannot be read.
async fn feed_from_session(d: Arc<crate::sessions::Durable>, out: crate::local::AppSender) {
    let mut next = d.queue.first();
    let mut reader: Option<crate::store::Reader> = None;
    let mut batch = Vec::new();
    loop {
        let visible = d.queue.visible();
        if next >= visible {
            d.queue.added().await;
            continue;
        }
        if reader.as_ref().is_none_or(|r| r.position() != next) {
            match d.queue.reader(next) {
                Ok(r) => reader = Some(r),
                Err(e) => {
                    out.cut_off(format!("cannot read the session's queue: {e}"));
                    return;
                }
            }
        }
        batch.clear();
        let read =
            reader
                .as_mut()
                .expect("set above")
                .read_limited(visible, 64, 1 << 20, &mut batch);
        if let Err(e) = read {
            out.cut_off(format!("cannot read the session's queue: {e}"));
            return;
        }
        for (seq, bytes) in batch.drain(..) {
            next = seq + 1;
            match crate::sessions::decode_out(&bytes, seq) {
                Ok(o) => {
                    if out.send(o).await.is_err() {
                        return;
                    }
                }
                Err(e) => log::warn!("a stored message is unreadable ({e}); skipped"),
            }
        }
    }
}

/// Reads an application's publish from its frame's `text` and puts it on its way: the publish
/// awaiting its notice, refused at once if it is not a message or cannot be queued.
fn publish_text(apps: &Apps, out: &crate::local::AppSender, text: &str) -> Pending {
    let mut msg = match MessageRef::from_json(text) {
        Ok(m) => m,
        Err(e) => return Pending::refused(About::default(), e.to_string()),
    };
    msg.fill_header();
    // A request leaves under an id the hub makes, so that its answer comes back to this
    // connection whatever ids other applications chose; `own_id` is the application's.
    let (wire, own_id) = if msg.sync {
        let about = Message {
            id: msg.id.to_string(),
            resource: msg.resource.to_string(),
            ..Message::default()
        };
        match apps.local.await_response(&about, out.clone()) {
            Ok(wire) => {
                let own_id = std::mem::replace(&mut msg.id, wire.clone().into());
                (Some(wire), Some(own_id))
            }
            Err(e) => return Pending::refused(About::new(&about.id, &about.resource), e),
        }
    } else {
        (None, None)
    };
    let published = apps.publish_json(&msg);
    // What a notice needs of the message: its id and resource (not its content).
    let about = About::new(own_id.as_ref().unwrap_or(&msg.id), &msg.resource);
    match published {
        Ok((accepted, bytes)) => Pending {
            bytes: bytes + msg.resource.len(),
            about,
            wire,
            accepted,
        },
        Err(e) => {
            if let Some(wire) = &wire {
                apps.local.cancel(wire);
            }
            Pending::refused(about, e)
        }
    }
}

/// What a notice needs of a publish: the id and the resource the application gave it, in one
/// string.
#[derive(Default)]
struct About {
    /// The id, then the resource.
    text: String,
    /// Where the id ends.
    id_len: usize,
}

impl About {
    fn new(id: &str, resource: &str) -> About {
        let mut text = String::with_capacity(id.len() + resource.len());
        text.push_str(id);
        text.push_str(resource);
        About {
            text,
            id_len: id.len(),
        }
    }

    fn id(&self) -> &str {
        &self.text[..self.id_len]
    }

    fn resource(&self) -> &str {
        &self.text[self.id_len..]
    }
}

/// A publish awaiting its notice.
struct Pending {
    /// What the notice needs of the message: the id and resource the application gave it.
    about: About,
    /// A sync request: the id it left this hub with (forgotten if the queue refuses it).
    wire: Option<String>,
    /// Counted in the connection's in-flight bytes until the notice is out.
    bytes: usize,
    accepted: Accepted,
}

impl Pending {
    /// A publish refused at once, with `why`.
    fn refused(about: About, why: String) -> Pending {
        Pending {
            about,
            wire: None,
            bytes: 0,
            accepted: Accepted::ready(Err(why)),
        }
    }
}

/// One connection's publishes awaiting their notice: how many, and their bytes.
#[derive(Default)]
struct InFlight {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl InFlight {
    /// Counts a publish of `bytes` in (0 for one refused at once: it still takes a place).
    fn add(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Counts a publish of `bytes` out, once its outcome is known.
    fn remove(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether the reader must wait before reading another publish: [`IN_FLIGHT`] publishes or
    /// [`IN_FLIGHT_BYTES`] bytes await their notice.
    fn full(&self) -> bool {
        self.messages.load(Ordering::Acquire) >= IN_FLIGHT
            || self.bytes.load(Ordering::Acquire) >= IN_FLIGHT_BYTES
    }
}

/// The close frame for `code` with `reason` (cut to the 123 bytes a close frame carries).
fn close_frame(code: WsCloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

async fn session<S>(
    ws: WebSocketStream<S>,
    name: String,
    filter: Option<Filter>,
    durable: Option<String>,
    apps: Arc<Apps>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let (out, queue) = app_channel(name.clone(), APP_QUEUE, queue_bytes(apps.max_message_bytes));
    // A named subscription is a durable session: what it selects goes into its queue on disk,
    // from which this connection is fed, and which keeps it while the application is away.
    let durable = durable.and_then(|session| {
        let filter = filter.clone().unwrap_or_default();
        match apps
            .sessions
            .attach(Kind::Ws, &session, false, Some(&filter), u32::MAX, &out)
        {
            Ok((d, _)) => Some(d),
            Err(e) => {
                log::error!("application {name}: session {session:?}: {e}");
                out.cut_off(format!("session {session:?} cannot be kept: {e}"));
                None
            }
        }
    });
    let subscription = match &durable {
        Some(_) => None,
        None => filter.map(|f| apps.local.subscribe(f, out.clone())),
    };
    let pump = durable
        .as_ref()
        .map(|d| smol::spawn(feed_from_session(d.clone(), out.clone())));
    let session_queue = durable.as_ref().map(|d| d.queue.clone());

    // Writer: everything for this application, in order. Whatever is waiting goes out with one
    // flush (one write for many notices or messages, not one each). It stops at once when the
    // application is cut off, even in the middle of a write it does not read.
    let writer = smol::spawn(async move {
        let mut healthy = true;
        while let Some(text) = queue.recv().await {
            let mut stored = text.seq;
            let batch = async {
                tx.feed(WsMessage::text(text.into_json())).await?;
                for _ in 1..WRITE_BATCH {
                    let Some(text) = queue.try_recv() else { break };
                    stored = text.seq.or(stored);
                    tx.feed(WsMessage::text(text.into_json())).await?;
                }
                tx.flush().await
            };
            let cut = async {
                queue.cut_off_wait().await;
                None
            };
            match async { Some(batch.await) }.or(cut).await {
                Some(Ok(())) => {
                    // Written: the session's queue may let it go.
                    if let (Some(seq), Some(q)) = (stored, &session_queue) {
                        if let Err(e) = q.ack(seq) {
                            log::error!("cannot acknowledge in a session's queue: {e}");
                        }
                    }
                }
                Some(Err(_)) => {
                    healthy = false;
                    // Whoever waits to queue a notice for it must not wait forever.
                    queue.close();
                    break;
                }
                None => break,
            }
        }
        (tx, queue, healthy)
    });

    // Notices: each publish is answered in order, once durable (or at once when refused).
    // Publishes awaiting their notice are bounded by count and bytes (`InFlight`), not by the
    // channel, which would allocate room for all of them up front.
    let in_flight = Arc::new(InFlight::default());
    let (room_tx, room_rx) = smol::channel::bounded::<()>(1);
    let (pending, pending_rx) = smol::channel::unbounded::<Pending>();
    let notices_out = out.clone();
    let notices_local = apps.local.clone();
    let notices_in_flight = in_flight.clone();
    let notices = smol::spawn(async move {
        while let Ok(p) = pending_rx.recv().await {
            let outcome = p.accepted.await;
            notices_in_flight.remove(p.bytes);
            let _ = room_tx.try_send(());
            let (operation, error) = match &outcome {
                Ok(_) => ("accepted", None),
                Err(e) => {
                    if let Some(wire) = &p.wire {
                        notices_local.cancel(wire);
                    }
                    ("error", Some(e.as_str()))
                }
            };
            let notice = Message::notice_json(p.about.id(), p.about.resource(), operation, error);
            if notices_out.send(Out::notice(notice)).await.is_err() {
                break;
            }
        }
    });

    let limit = ws_message_limit(apps.max_message_bytes);
    let refusal = 'reading: loop {
        // Publishes awaiting their notice are bounded: wait for room before reading on.
        while in_flight.full() {
            let room = async { room_rx.recv().await.is_ok() };
            let cut = async {
                out.cut_off_wait().await;
                false
            };
            if !room.or(cut).await {
                break 'reading None;
            }
        }
        let next = async { rx.next().await };
        let cut = async {
            out.cut_off_wait().await;
            None
        };
        let frame = match next.or(cut).await {
            Some(Ok(frame)) => frame,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                log::warn!(
                    "application {name} sent a message of {size} bytes or more, over the {limit} bytes \
                     the endpoint takes (apps.max-message-bytes {} plus {JSON_ALLOWANCE} for its JSON); \
                     closing its connection (1009) without reading the rest",
                    apps.max_message_bytes
                );
                let why =
                    format!("message too big: {size} bytes or more, over the {limit}-byte limit");
                break Some(close_frame(WsCloseCode::Size, &why));
            }
            Some(Err(e)) => {
                log::debug!("application {name}: {e}");
                break None;
            }
            None => break None,
        };
        let item = {
            let text = match &frame {
                WsMessage::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
                WsMessage::Binary(b) => String::from_utf8_lossy(b),
                WsMessage::Close(_) => break None,
                _ => continue,
            };
            publish_text(&apps, &out, &text)
        };
        drop(frame);
        in_flight.add(item.bytes);
        if pending.send(item).await.is_err() {
            break None;
        }
    };
    if let Some(id) = subscription {
        apps.local.unsubscribe(id);
    }
    // The session's feeder ends with the connection.
    drop(pump);
    if let Some(d) = &durable {
        apps.sessions.detach(d, out.id(), u32::MAX);
    }
    apps.local.forget(&out);
    drop(pending);
    let _ = notices.await;
    drop(out);
    let (mut tx, queue, healthy) = writer.await;
    let close = match queue.cut_reason() {
        Some(why) => {
            let (messages, bytes) = queue.discard();
            if messages > 0 {
                log::info!(
                    "application {name}: dropped the {messages} message(s), {bytes} bytes, still waiting for it"
                );
            }
            Some(close_frame(WsCloseCode::Policy, &why))
        }
        None => refusal,
    };
    let Some(close) = close else {
        if healthy {
            let _ = tx.close(None).await;
        }
        return;
    };
    // Refused: say why, then keep reading (and discarding, never buffering) for a moment, so
    // the application gets to read the close frame instead of a reset for its unread input.
    if timeout(LINGER, tx.close(Some(close))).await.is_none() {
        return;
    }
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    let mut stream = ws.into_inner();
    let drain = async {
        // On the heap, and only now: an array here would make every connection's task larger.
        let mut scratch = vec![0u8; 8192];
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_make_filters() {
        assert_eq!(parse_query(None), None);
        assert_eq!(parse_query(Some("x=1")), None);
        assert_eq!(
            parse_query(Some("group=user&resource=node%2Fedge-1%2F")),
            Some(Filter {
                group: Some("user".into()),
                resource: Some("node/edge-1/".into())
            })
        );
        assert_eq!(
            parse_query(Some("resource=")),
            Some(Filter {
                group: None,
                resource: Some(String::new())
            })
        );
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }

    /// The size of what `f`'s future holds (an idle connection's task is mostly this).
    fn future_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_is_a_few_kilobytes() {
        // Every idle application connection holds one such task: no buffer belongs in it (the
        // linger's 8 KiB scratch array once made it several times larger).
        let size = future_size(connection::<Async<std::net::TcpStream>>);
        assert!(size < 6 * 1024, "a connection's future is {size} bytes");
    }
}
