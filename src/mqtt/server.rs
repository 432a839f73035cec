//! The MQTT listener and one client connection's protocol: CONNECT/CONNACK, keep-alive, QoS 0,
//! 1 and 2 both ways, SUBSCRIBE/UNSUBSCRIBE, retained messages, wills, clean and persistent
//! sessions, MQTT 5.0 request/response. Messages go through the same routing core as the
//! WebSocket API (`crate::local`, `crate::apps::Apps::publish`, `crate::sessions`): see
//! `docs/mqtt.md` for the mapping.
//!
//! Bounds: a packet is at most `mqtt.max-packet-bytes` (refused from its fixed header, before
//! its body is read); publishes awaiting their PUBACK or PUBREC are at most [`RECEIVE_MAXIMUM`]
//! (MQTT 5.0's Receive Maximum; beyond it the hub stops reading from the client); deliveries to
//! a client wait in its bounded queue (a clean session: then it is disconnected as too slow) or
//! in its durable session's queue on disk. An idle connection holds no buffer.

use crate::metrics::{API_MQTT, METRICS};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smol::Async;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth::Passwords;
use super::codec::{
    Connack, ConnackProps, Connect, DecodeError, Decoder, Disconnect, FilterAck, Packet, PubAck,
    Publish, PublishProps, Version, encode, reason,
};
use super::topic;
use crate::apps::{Accepted, Apps, Route};
use crate::config::MqttConfig;
use crate::local::{AppReceiver, AppSender, Out, Selector, Sink, TopicSet, TopicSub, app_channel};
use crate::message::{Extra, Message, new_id, now_millis};
use crate::sessions::{Durable, Kind, Sessions, TAKEN_OVER};
use crate::shutdown::Shutdown;
use crate::tls::watch::{FileWatch, POLL};
use crate::transport::timeout;

/// QoS 1 and 2 publishes of one client awaiting their PUBACK or PUBREC (MQTT 5.0's Receive
/// Maximum, announced in CONNACK).
pub const RECEIVE_MAXIMUM: u16 = 1024;
/// QoS 1 and 2 deliveries to one client awaiting its acknowledgement, at most (less if the
/// client's Receive Maximum says so).
const SEND_MAXIMUM: usize = 1024;
/// Topic filters one session may subscribe to; more are refused in their SUBACK.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// Topic aliases a client may use (MQTT 5.0 section 3.3.2.3.4).
const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// How long a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries a clean session's queue holds before the client counts as too slow.
const CLIENT_QUEUE: usize = 65536;
/// Bytes of deliveries a clean session's queue holds before the client counts as too slow.
const CLIENT_QUEUE_BYTES: usize = 16 << 20;
/// Sync requests of one client waiting for their answer.
const MAX_REQUESTS: usize = 1024;
/// The topic a hub sync request's answer is published to (then the request's id).
pub const RESPONSE_PREFIX: &str = "$hub/response/";
/// Bytes read at once from a client that keeps sending.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read at once from a client that was quiet: an idle connection holds no more buffer
/// than this while it waits.
const IDLE_READ: usize = 256;
/// Deliveries written to a client with one write, at most.
const WRITE_BATCH: usize = 256;
/// Bytes written to a client with one write, at most (more only for a single larger packet).
const WRITE_BYTES: usize = 256 * 1024;
/// A connection yields to the executor's other tasks after this many events handled in a row
/// (each at most [`READ_CHUNK`] bytes read or [`WRITE_BATCH`] deliveries): its input or its
/// room to write may never run out, and a task only lets others run when it waits.
const YIELD_EVERY: u32 = 16;

/// The MQTT front-end's shared state.
pub struct Mqtt {
    /// Where publishes go, and local delivery.
    pub apps: Arc<Apps>,
    /// Persistent sessions.
    pub sessions: Arc<Sessions>,
    config: MqttConfig,
    passwords: Option<Passwords>,
    open: AtomicUsize,
    /// `mqtt.max-connections`, within an eighth of the open-file limit (the node links take
    /// half of it on the cloud, the application endpoint a quarter).
    max_open: usize,
    /// Clean sessions by client identifier: the connection, and a sender whose closing takes
    /// it over.
    live: Mutex<HashMap<String, AppSender>>,
}

impl Mqtt {
    /// The front-end for `apps` with persistent sessions in `sessions`.
    ///
    /// Errors: the password file cannot be read.
    pub fn new(
        apps: Arc<Apps>,
        sessions: Arc<Sessions>,
        config: &MqttConfig,
    ) -> Result<Arc<Mqtt>, String> {
        let passwords = match &config.password_file {
            Some(p) => Some(Passwords::load(p)?),
            None => None,
        };
        Ok(Arc::new(Mqtt {
            apps,
            sessions,
            config: config.clone(),
            passwords,
            open: AtomicUsize::new(0),
            max_open: crate::open_files::budget(
                config.max_connections.max(1),
                "mqtt.max-connections",
                8,
            ),
            live: Mutex::new(HashMap::new()),
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves MQTT on `mqtt.listen` (and `mqtt.tls-listen`) until `shutdown`; returns the plain
/// TCP address bound, if any.
///
/// Errors: an address cannot be bound, or the TLS files cannot be loaded.
pub fn start(mqtt: Arc<Mqtt>, shutdown: Shutdown) -> Result<Option<SocketAddr>, String> {
    let mut bound = None;
    if let Some(addr) = mqtt.config.listen {
        let listener = Async::<TcpListener>::bind(addr)
            .map_err(|e| format!("cannot listen for MQTT on {addr}: {e}"))?;
        let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
        if admits_anyone(local, mqtt.passwords.is_some(), false) {
            log::warn!(
                "the MQTT listener on {local} reaches beyond this machine without mqtt.password-file: anyone who reaches it can publish"
            );
        }
        log::info!("mqtt listening on {local}");
        bound = Some(local);
        smol::spawn(accept_loop(listener, None, mqtt.clone(), shutdown.clone())).detach();
    }
    if let Some(addr) = mqtt.config.tls_listen {
        let files = FileWatch::new(tls_files(&mqtt.config));
        let acceptor = tls_acceptor(&mqtt.config)?;
        let listener = Async::<TcpListener>::bind(addr)
            .map_err(|e| format!("cannot listen for MQTT over TLS on {addr}: {e}"))?;
        let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
        if admits_anyone(
            local,
            mqtt.passwords.is_some(),
            mqtt.config.tls_ca.is_some(),
        ) {
            log::warn!(
                "the MQTT listener on {local} (TLS) reaches beyond this machine without mqtt.password-file or mqtt.tls-ca: anyone who reaches it can publish"
            );
        }
        log::info!("mqtt listening on {local} (TLS)");
        let tls = Arc::new(Mutex::new(acceptor));
        let config = mqtt.config.clone();
        smol::spawn(reload_tls(config, files, tls.clone(), shutdown.clone())).detach();
        smol::spawn(accept_loop(listener, Some(tls), mqtt, shutdown)).detach();
    }
    Ok(bound)
}

/// Whether a listener bound to `local` lets anyone who reaches it publish: it is not on a
/// loopback address, and neither a password file (`passwords`) nor, over TLS, client
/// certificates from `mqtt.tls-ca` (`client_certificates`) stand in the way.
fn admits_anyone(local: SocketAddr, passwords: bool, client_certificates: bool) -> bool {
    !local.ip().is_loopback() && !passwords && !client_certificates
}

/// The files of the TLS listener: `tls-cert`, `tls-key` and `tls-ca` when given.
fn tls_files(config: &MqttConfig) -> Vec<std::path::PathBuf> {
    [&config.tls_cert, &config.tls_key, &config.tls_ca]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// Builds the TLS listener's acceptor again whenever its files changed ([`FileWatch`]), until
/// `shutdown`, so that a renewed certificate is served from the next connection on without a
/// restart; connections already open keep theirs. A set that does not load is refused with one
/// error line and the acceptor in use kept.
async fn reload_tls(
    config: MqttConfig,
    mut files: FileWatch,
    tls: Arc<Mutex<futures_rustls::TlsAcceptor>>,
    shutdown: Shutdown,
) {
    loop {
        let tick = async {
            smol::Timer::after(POLL).await;
            true
        };
        let stop = async {
            shutdown.wait().await;
            false
        };
        if !tick.or(stop).await {
            return;
        }
        if files.poll().is_none() {
            continue;
        }
        // Off the executor: reading and parsing the files must not hold up the connections.
        let reading = config.clone();
        match smol::unblock(move || tls_acceptor(&reading)).await {
            Ok(acceptor) => {
                *lock(&tls) = acceptor;
                log::info!("mqtt TLS listener: reloaded mqtt.tls-cert, tls-key and tls-ca");
            }
            Err(e) => log::error!(
                "mqtt TLS listener: credentials not reloaded: {e}; still serving those in use"
            ),
        }
    }
}

fn tls_acceptor(config: &MqttConfig) -> Result<futures_rustls::TlsAcceptor, String> {
    use crate::tls::{Credentials, client_verifier, load_roots, provider};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err("mqtt.tls-listen needs mqtt.tls-cert and mqtt.tls-key".into());
    };
    let creds = Credentials::load(cert, key).map_err(|e| e.to_string())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &config.tls_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca).map_err(|e| e.to_string())?);
            builder.with_client_cert_verifier(client_verifier(roots)?)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(creds.chain, creds.key)
        .map_err(|e| format!("mqtt.tls-cert and mqtt.tls-key: {e}"))?;
    Ok(futures_rustls::TlsAcceptor::from(Arc::new(server)))
}

async fn accept_loop(
    listener: Async<TcpListener>,
    tls: Option<Arc<Mutex<futures_rustls::TlsAcceptor>>>,
    mqtt: Arc<Mqtt>,
    shutdown: Shutdown,
) {
    let mut failures = crate::open_files::AcceptFailures::default();
    let max = mqtt.max_open;
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        let (stream, peer) = match accepted {
            None => return,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                failures.pause("MQTT", &e).await;
                continue;
            }
        };
        let open = mqtt
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if open.is_err() {
            log::warn!(
                "refused the MQTT connection of {peer}: {max} are open (mqtt.max-connections)"
            );
            continue;
        }
        METRICS.app_connections[API_MQTT].inc();
        let _ = stream.get_ref().set_nodelay(true);
        let (mqtt, shutdown) = (mqtt.clone(), shutdown.clone());
        let name = peer.to_string();
        // Two tasks of their own types: a plain connection's task does not carry the room a TLS
        // handshake takes.
        match tls.as_ref().map(|t| lock(t).clone()) {
            None => smol::spawn(async move {
                let mut stream = stream;
                connection(&mut stream, name, mqtt.clone(), shutdown).await;
                linger(&mut stream, |s| {
                    s.get_ref().shutdown(std::net::Shutdown::Write)
                })
                .await;
                mqtt.open.fetch_sub(1, Ordering::AcqRel);
                METRICS.app_connections[API_MQTT].dec();
            })
            .detach(),
            Some(acceptor) => smol::spawn(async move {
                match timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                    Some(Ok(mut s)) => {
                        connection(&mut s, name, mqtt.clone(), shutdown).await;
                        let tcp =
                            |s: &futures_rustls::server::TlsStream<Async<std::net::TcpStream>>| {
                                s.get_ref().0.get_ref().shutdown(std::net::Shutdown::Write)
                            };
                        linger(&mut s, tcp).await;
                    }
                    Some(Err(e)) => log::info!("MQTT client {name}: TLS handshake failed: {e}"),
                    None => log::info!(
                        "MQTT client {name}: no TLS handshake within {CONNECT_TIMEOUT:?}"
                    ),
                }
                mqtt.open.fetch_sub(1, Ordering::AcqRel);
                METRICS.app_connections[API_MQTT].dec();
            })
            .detach(),
        }
    }
}

/// Reads until `decoder` has a whole packet (or the stream ends: `Ok(None)`).
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &mut Decoder,
    buf: &mut Vec<u8>,
) -> Result<Option<Packet>, ReadError> {
    loop {
        if let Some((packet, used)) = decoder.decode(buf).map_err(ReadError::Decode)? {
            buf.drain(..used);
            return Ok(Some(packet));
        }
        if read_some(stream, decoder, buf, false)
            .await
            .map_err(ReadError::Io)?
            .0
            == 0
        {
            return Ok(None);
        }
    }
}

/// Why [`read_packet`] got no packet.
enum ReadError {
    /// The stream failed.
    Io(std::io::Error),
    /// The bytes are not a packet this hub takes.
    Decode(DecodeError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => e.fmt(f),
            ReadError::Decode(e) => e.fmt(f),
        }
    }
}

/// Reads what the stream has, at most up to the end of the packet under way (or [`READ_CHUNK`]
/// more while its size is not known). Returns the count read (0 at the end of the stream) and
/// whether it was all that was asked for.
///
/// `busy`: the last read filled what it asked for, so more is likely waiting; otherwise an
/// empty buffer asks for [`IDLE_READ`] bytes only. The room asked for a large packet grows with
/// what arrived of it (at most [`READ_CHUNK`] or as much again as the buffer holds): a size a
/// client announces is not memory the hub commits before the bytes come.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &Decoder,
    buf: &mut Vec<u8>,
    busy: bool,
) -> std::io::Result<(usize, bool)> {
    let want = match decoder.needed(buf) {
        Some(total) if total > buf.len() => {
            (total - buf.len()).max(4096).min(buf.len().max(READ_CHUNK))
        }
        _ if buf.is_empty() && !busy => IDLE_READ,
        _ => READ_CHUNK,
    };
    /// Cuts the buffer back to what was read when the read finishes or is dropped (the read
    /// races other events, and the loser is dropped).
    struct Filling<'a> {
        buf: &'a mut Vec<u8>,
        len: usize,
    }
    impl Drop for Filling<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.len);
        }
    }
    let start = buf.len();
    buf.resize(start + want, 0);
    let filling = Filling { buf, len: start };
    let n = stream.read(&mut filling.buf[start..]).await;
    let mut filling = filling;
    if let Ok(n) = n {
        filling.len = start + n;
    }
    n.map(|n| (n, n == want))
}

/// Why a connection ends.
enum End {
    /// The client sent DISCONNECT (`true`: with reason 0x04, "publish my will").
    Disconnected(bool),
    /// The stream ended or failed without a DISCONNECT.
    Lost(String),
    /// The hub closes it, with this v5 reason code and sentence.
    Closed(u8, String),
}

/// One QoS 1 or 2 publish of the client, on its way into the queue.
struct Incoming {
    pid: u16,
    qos: u8,
    /// Counted in the client's bytes on their way into the queue until the outcome is known.
    bytes: usize,
    accepted: Accepted,
}

/// One connection's protocol state.
struct Client {
    name: String,
    client_id: String,
    version: Version,
    conn: u64,
    mqtt: Arc<Mqtt>,
    sender: AppSender,
    topics: Arc<TopicSet>,
    durable: Option<Arc<Durable>>,
    /// The session's queue position to read next, and below which records may have been sent
    /// before (DUP).
    next_seq: u64,
    replay_below: u64,
    staged: VecDeque<Out>,
    reader: Option<crate::store::Reader>,
    incoming: VecDeque<Incoming>,
    /// QoS 2 packet identifiers received (PUBREC sent) and not yet released.
    received: HashSet<u16>,
    /// QoS 1 and 2 deliveries awaiting the client's acknowledgement (at most `send_maximum`):
    /// packet identifier -> the record's sequence number in the session's queue, if from it.
    in_flight: HashMap<u16, Option<u64>>,
    /// The session queue's records given to the client and not yet acknowledged by it (the
    /// sequence numbers of `in_flight`), the last record handed out in all (sent, expired or
    /// skipped), and the position acknowledged in the queue so far: the queue is acknowledged
    /// up to the record before the first unacknowledged one.
    unacked_seqs: BTreeSet<u64>,
    handled_seq: Option<u64>,
    acked_seq: Option<u64>,
    /// Bytes of `incoming`.
    incoming_bytes: usize,
    next_pid: u16,
    send_maximum: usize,
    max_out_packet: usize,
    aliases: HashMap<u16, String>,
    /// This client's sync requests: its local id -> (response topic, correlation data).
    requests: HashMap<String, (String, Option<Bytes>)>,
    will: Option<super::codec::Will>,
    session_expiry: u32,
    /// A clean session's registration with local delivery.
    clean_subscription: Option<u64>,
    out: Vec<u8>,
    /// A write was abandoned part way (the client read nothing): the stream may end in the
    /// middle of a packet, so nothing more is written to it.
    torn: bool,
}

/// How long a connection the hub ends goes on reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
/// How many bytes it reads at most.
const LINGER_BYTES: usize = 1 << 20;

/// Closes a client's connection gracefully: a client may send packets right after its CONNECT
/// without waiting for the CONNACK (MQTT 3.1.1 and 5.0 section 3.1.4), and closing a socket with
/// such unread input makes the kernel send a reset that can destroy a refusing CONNACK or a
/// DISCONNECT with its reason before the client reads it. So what was written is flushed (for
/// TLS, with its close_notify), the socket's write side is shut with `shut_write` (the streams'
/// own close does not send a FIN), and what the client still sends is read and dropped until it
/// closes, [`LINGER_BYTES`] were read or [`LINGER`] passed.
async fn linger<S>(stream: &mut S, shut_write: impl FnOnce(&S) -> std::io::Result<()>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(LINGER, async {
        if stream.close().await.is_err() || shut_write(stream).is_err() {
            return;
        }
        // On the heap, and only now: an array here would make every connection's task larger.
        let mut sink = vec![0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn connection<S>(stream: &mut S, name: String, mqtt: Arc<Mqtt>, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut decoder = Decoder::new(mqtt.config.max_packet_bytes);
    let mut buf = Vec::new();
    let first = timeout(CONNECT_TIMEOUT, read_packet(stream, &mut decoder, &mut buf)).await;
    let connect = match first {
        Some(Ok(Some(Packet::Connect(c)))) => c,
        Some(Ok(Some(_))) => {
            log::info!("MQTT client {name}: the first packet is not CONNECT; closing");
            return;
        }
        Some(Ok(None)) => return,
        Some(Err(e)) => {
            log::info!("MQTT client {name}: {e}; closing");
            // A CONNECT naming an unknown protocol level is answered before the close
            // (MQTT 5.0 section 3.1.2.2, MQTT 3.1.1 section 3.1.2.2).
            if let ReadError::Decode(DecodeError::UnsupportedVersion(_)) = e {
                let mut out = Vec::new();
                let ack = Connack {
                    code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                    ..Connack::default()
                };
                let _ = encode(Version::V311, &Packet::Connack(ack), &mut out);
                let _ = stream.write_all(&out).await;
            }
            return;
        }
        None => {
            log::info!("MQTT client {name}: no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    let Some(mut client) = accept(stream, &name, *connect, mqtt.clone()).await else {
        return;
    };
    let rx = match client.start() {
        Ok(v) => v,
        Err(e) => {
            log::warn!("MQTT client {name}: {e}");
            return;
        }
    };
    let keep_alive = client.keep_alive;
    let end = client
        .serve(stream, &mut decoder, &mut buf, &rx, keep_alive, &shutdown)
        .await;
    client.finish(stream, end, &rx).await;
}

/// Checks a CONNECT and answers it; `None` when the client was refused.
async fn accept<S>(
    stream: &mut S,
    name: &str,
    connect: Connect,
    mqtt: Arc<Mqtt>,
) -> Option<ClientWithKeepAlive>
where
    S: AsyncWrite + Unpin,
{
    let version = connect.version;
    let refuse = |code: u8, why: &str| {
        log::info!(
            "MQTT client {name} ({:?}): refused: {why}",
            connect.client_id
        );
        let mut out = Vec::new();
        let _ = encode(
            version,
            &Packet::Connack(Connack {
                session_present: false,
                code,
                props: ConnackProps {
                    reason_string: Some(why.to_owned()),
                    ..ConnackProps::default()
                },
            }),
            &mut out,
        );
        out
    };
    let mut refusal = None;
    if connect.auth_method.is_some() {
        refusal = Some(refuse(
            reason::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported",
        ));
    } else if let Some(passwords) = &mqtt.passwords {
        let ok = match (&connect.username, &connect.password) {
            (Some(u), Some(p)) => passwords.check(u, p),
            _ => false,
        };
        if !ok {
            refusal = Some(refuse(
                reason::BAD_USER_NAME_OR_PASSWORD,
                "bad user name or password",
            ));
        }
    }
    let persistent = match version {
        Version::V311 => !connect.clean_start,
        Version::V5 => connect.session_expiry.unwrap_or(0) > 0,
    };
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if refusal.is_none() && client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            // MQTT 3.1.1 section 3.1.3.1: a persistent session needs a client identifier.
            refusal = Some(refuse(
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                "a persistent session needs a client identifier",
            ));
        } else {
            client_id = format!("hub-{}", new_id());
            assigned = Some(client_id.clone());
        }
    }
    if let Some(out) = refusal {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        return None;
    }
    let session_expiry = match version {
        Version::V311 if persistent => mqtt.config.max_session_expiry,
        Version::V311 => 0,
        Version::V5 => connect
            .session_expiry
            .unwrap_or(0)
            .min(mqtt.config.max_session_expiry),
    };
    let send_maximum =
        usize::from(connect.receive_maximum.unwrap_or(u16::MAX)).clamp(1, SEND_MAXIMUM);
    let max_out_packet = connect
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);
    Some(ClientWithKeepAlive {
        keep_alive: connect.keep_alive,
        persistent,
        clean_start: connect.clean_start,
        assigned,
        client: Client {
            name: name.to_owned(),
            client_id,
            version,
            conn: 0,
            mqtt,
            sender: app_channel(name, 1, 1).0,
            topics: Arc::new(TopicSet::default()),
            durable: None,
            next_seq: 0,
            replay_below: 0,
            staged: VecDeque::new(),
            reader: None,
            incoming: VecDeque::new(),
            received: HashSet::new(),
            in_flight: HashMap::new(),
            unacked_seqs: BTreeSet::new(),
            handled_seq: None,
            acked_seq: None,
            incoming_bytes: 0,
            next_pid: 0,
            send_maximum,
            max_out_packet,
            aliases: HashMap::new(),
            requests: HashMap::new(),
            will: connect.will,
            session_expiry,
            clean_subscription: None,
            out: Vec::new(),
            torn: false,
        },
    })
}

/// A client whose CONNECT was accepted, before its CONNACK.
struct ClientWithKeepAlive {
    keep_alive: u16,
    persistent: bool,
    clean_start: bool,
    assigned: Option<String>,
    client: Client,
}

impl std::ops::Deref for ClientWithKeepAlive {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for ClientWithKeepAlive {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl ClientWithKeepAlive {
    /// Takes or makes the session, registers its subscriptions, queues the CONNACK.
    fn start(&mut self) -> Result<AppReceiver, String> {
        let mqtt = self.client.mqtt.clone();
        let (sender, rx) = app_channel(self.client.name.clone(), CLIENT_QUEUE, CLIENT_QUEUE_BYTES);
        self.client.conn = sender.id();
        self.client.sender = sender.clone();
        let id = self.client.client_id.clone();
        let present = if self.persistent {
            let (durable, present) = mqtt.sessions.attach(
                Kind::Mqtt,
                &id,
                self.clean_start,
                None,
                self.client.session_expiry,
                &sender,
            )?;
            // A clean session of the same client is taken over too.
            if let Some(old) = lock(&mqtt.live).remove(&id) {
                old.cut_off(TAKEN_OVER.into());
            }
            durable.topics.set_owner(self.client.conn);
            self.client.topics = durable.topics.clone();
            self.client.next_seq = durable.queue.first();
            self.client.acked_seq = durable.queue.first().checked_sub(1);
            self.client.replay_below = durable.sent_below();
            self.client.durable = Some(durable);
            present
        } else {
            if mqtt.sessions.contains(Kind::Mqtt, &id) {
                // A clean session replaces a persistent one (MQTT 3.1.1 section 3.1.2.4).
                let (old, _) = mqtt
                    .sessions
                    .attach(Kind::Mqtt, &id, true, None, 0, &sender)?;
                mqtt.sessions.detach(&old, self.client.conn, 0);
            }
            if let Some(old) = lock(&mqtt.live).insert(id.clone(), sender.clone()) {
                old.cut_off(TAKEN_OVER.into());
            }
            self.client.topics.set_owner(self.client.conn);
            let sub = mqtt.apps.local.add(
                Selector::Topics(self.client.topics.clone()),
                Sink::App(sender),
            );
            self.client.clean_subscription = Some(sub);
            false
        };
        let props = ConnackProps {
            session_expiry: (self.client.version == Version::V5)
                .then_some(self.client.session_expiry),
            receive_maximum: Some(RECEIVE_MAXIMUM),
            maximum_packet_size: Some(mqtt.config.max_packet_bytes as u32),
            assigned_client_id: self.assigned.clone(),
            topic_alias_maximum: Some(TOPIC_ALIAS_MAXIMUM),
            retain_available: Some(true),
            wildcard_available: Some(true),
            subscription_ids_available: Some(true),
            shared_available: Some(false),
            ..ConnackProps::default()
        };
        self.client.push(Packet::Connack(Connack {
            session_present: present,
            code: reason::SUCCESS,
            props,
        }));
        log::debug!(
            "MQTT client {} connected as {:?} ({:?}, {} session)",
            self.client.name,
            id,
            self.client.version,
            if self.persistent {
                "persistent"
            } else {
                "clean"
            }
        );
        Ok(rx)
    }
}

/// What woke the connection.
enum Wake {
    /// Bytes read, and whether the read filled all it asked for.
    Read(std::io::Result<(usize, bool)>),
    Deliver(Option<Out>),
    Stored,
    Accepted(Result<u64, String>),
    KeepAlive,
    Shutdown,
}

/// Never finishes.
async fn never<T>() -> T {
    std::future::pending().await
}

impl Client {
    /// Queues `packet`'s bytes for the next write.
    fn push(&mut self, packet: Packet) {
        if let Err(e) = encode(self.version, &packet, &mut self.out) {
            log::warn!("MQTT client {}: cannot encode a packet: {e}", self.name);
        }
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        stream.write_all(&self.out).await?;
        stream.flush().await?;
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Whether another QoS 1 or 2 delivery may go out now.
    fn may_send(&self) -> bool {
        self.in_flight.len() < self.send_maximum
    }

    /// The next staged delivery (retained messages for a new subscription, then what was read
    /// from the durable session's queue), reading a batch from the queue when none is staged.
    fn next_stored(&mut self) -> Result<Option<Out>, String> {
        if let Some(o) = self.staged.pop_front() {
            return Ok(Some(o));
        }
        let Some(durable) = &self.durable else {
            return Ok(None);
        };
        let visible = durable.queue.visible();
        if self.next_seq >= visible {
            return Ok(None);
        }
        if self
            .reader
            .as_ref()
            .is_none_or(|r| r.position() != self.next_seq)
        {
            self.reader = Some(
                durable
                    .queue
                    .reader(self.next_seq)
                    .map_err(|e| e.to_string())?,
            );
        }
        let mut batch = Vec::new();
        let reader = self.reader.as_mut().expect("set above");
        reader
            .read_limited(visible, 64, 1 << 20, &mut batch)
            .map_err(|e| e.to_string())?;
        for (seq, bytes) in batch {
            self.next_seq = seq + 1;
            match crate::sessions::decode_out(&bytes, seq) {
                Ok(o) => self.staged.push_back(o),
                Err(e) => {
                    log::warn!(
                        "MQTT client {}: a stored message is unreadable ({e}); skipped",
                        self.name
                    );
                    self.handled(Some(seq));
                }
            }
        }
        Ok(self.staged.pop_front())
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve<S>(
        &mut self,
        stream: &mut S,
        decoder: &mut Decoder,
        buf: &mut Vec<u8>,
        rx: &AppReceiver,
        keep_alive: u16,
        shutdown: &Shutdown,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // MQTT 5.0 section 3.1.2.10: one and a half times the keep-alive without a packet.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = grace.map(|g| Instant::now() + g);
        let mut busy = false;
        if let Err(e) = self.flush(stream).await {
            return End::Lost(e.to_string());
        }
        let mut turns: u32 = 0;
        loop {
            // Every event may be ready at once for a client that sends (or takes) without pause:
            // let the executor's other tasks (the other connections, the link) run now and then.
            turns = turns.wrapping_add(1);
            if turns % YIELD_EVERY == 0 {
                smol::future::yield_now().await;
            }
            let reading = self.incoming.len() < usize::from(RECEIVE_MAXIMUM)
                && self.incoming_bytes < crate::apps::IN_FLIGHT_BYTES;
            let sending = self.may_send();
            let durable = self.durable.clone();
            let has_stored = self.staged.front().is_some()
                || durable
                    .as_ref()
                    .is_some_and(|d| self.next_seq < d.queue.visible());
            let wake = {
                let read = async {
                    if reading {
                        Wake::Read(read_some(stream, decoder, buf, busy).await)
                    } else {
                        never().await
                    }
                };
                let deliver = async {
                    if sending {
                        Wake::Deliver(rx.recv().await)
                    } else {
                        never().await
                    }
                };
                let stored = async {
                    match &durable {
                        _ if sending && has_stored => Wake::Stored,
                        Some(d) if sending => {
                            d.queue.added().await;
                            Wake::Stored
                        }
                        _ => never().await,
                    }
                };
                let incoming = &mut self.incoming;
                let accepted = async {
                    match incoming.front_mut() {
                        Some(i) => Wake::Accepted((&mut i.accepted).await),
                        None => never().await,
                    }
                };
                let alive = async {
                    match deadline {
                        Some(at) => {
                            smol::Timer::at(at).await;
                            Wake::KeepAlive
                        }
                        None => never().await,
                    }
                };
                // Cut off (taken over, too slow) even while no delivery may go out.
                let taken = async {
                    rx.cut_off_wait().await;
                    Wake::Deliver(None)
                };
                let stop = async {
                    shutdown.wait().await;
                    Wake::Shutdown
                };
                accepted
                    .or(read)
                    .or(stored)
                    .or(deliver)
                    .or(alive)
                    .or(taken)
                    .or(stop)
                    .await
            };
            let step = match wake {
                Wake::Read(Ok((0, _))) => return End::Lost("the connection was closed".into()),
                Wake::Read(Err(e)) => return End::Lost(e.to_string()),
                Wake::Read(Ok((_, full))) => {
                    busy = full;
                    deadline = grace.map(|g| Instant::now() + g);
                    let handled = self.on_bytes(decoder, buf);
                    if buf.is_empty() && !busy {
                        // Quiet again: hold no buffer while waiting.
                        *buf = Vec::new();
                    }
                    handled
                }
                Wake::Deliver(None) => Err(cut_end(rx)),
                Wake::Deliver(Some(out)) => {
                    self.deliver(out);
                    // Whatever else is waiting goes out with the same write.
                    for _ in 1..WRITE_BATCH {
                        if !self.may_send() || self.out.len() >= WRITE_BYTES {
                            break;
                        }
                        match rx.try_recv() {
                            Some(o) => self.deliver(o),
                            None => break,
                        }
                    }
                    Ok(())
                }
                Wake::Stored => {
                    let mut result = Ok(());
                    for _ in 0..WRITE_BATCH {
                        if !self.may_send() || self.out.len() >= WRITE_BYTES {
                            break;
                        }
                        match self.next_stored() {
                            Ok(Some(o)) => self.deliver(o),
                            Ok(None) => break,
                            Err(e) => {
                                result = Err(End::Closed(
                                    reason::UNSPECIFIED_ERROR,
                                    format!("cannot read the session's queue: {e}"),
                                ));
                                break;
                            }
                        }
                    }
                    result
                }
                Wake::Accepted(outcome) => {
                    let first = self.incoming.pop_front().expect("awaited above");
                    let mut result = self.on_accepted(first, outcome);
                    // Others that are done answer in the same write, in order.
                    while result.is_ok() {
                        let Some(front) = self.incoming.front_mut() else {
                            break;
                        };
                        let Some(outcome) =
                            smol::future::block_on(smol::future::poll_once(&mut front.accepted))
                        else {
                            break;
                        };
                        let next = self.incoming.pop_front().expect("looked at above");
                        result = self.on_accepted(next, outcome);
                    }
                    result
                }
                Wake::KeepAlive => Err(keep_alive_end(keep_alive)),
                Wake::Shutdown => Err(shutdown_end()),
            };
            if let Err(end) = step {
                // What was queued before the end goes out if the client takes it soon.
                if timeout(Duration::from_secs(1), self.flush(stream))
                    .await
                    .is_none()
                {
                    self.torn = true;
                }
                return end;
            }
            // A client that reads nothing blocks this write: it is still cut off (taken over,
            // too slow), timed out by its keep-alive and closed for a shutdown meanwhile.
            let flushed = {
                let write = async { Ok(self.flush(stream).await) };
                let stalled = async {
                    let alive = async {
                        match deadline {
                            Some(at) => {
                                smol::Timer::at(at).await;
                                keep_alive_end(keep_alive)
                            }
                            None => never().await,
                        }
                    };
                    let taken = async {
                        rx.cut_off_wait().await;
                        cut_end(rx)
                    };
                    let stop = async {
                        shutdown.wait().await;
                        shutdown_end()
                    };
                    Err(alive.or(taken).or(stop).await)
                };
                write.or(stalled).await
            };
            match flushed {
                Err(stalled) => {
                    // The stream may end in the middle of a packet now: nothing more is written.
                    self.torn = true;
                    return stalled;
                }
                Ok(Err(e)) => return End::Lost(e.to_string()),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Handles every whole packet in `buf`.
    fn on_bytes(&mut self, decoder: &mut Decoder, buf: &mut Vec<u8>) -> Result<(), End> {
        let mut used = 0;
        let result = loop {
            match decoder.decode(&buf[used..]) {
                Ok(Some((packet, n))) => {
                    used += n;
                    if let Err(end) = self.on_packet(packet) {
                        break Err(end);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    log::debug!(
                        "undecodable bytes: {:02x?}",
                        &buf[used..buf.len().min(used + 32)]
                    );
                    let code = e.reason_code();
                    break Err(End::Closed(code, e.to_string()));
                }
            }
        };
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        result
    }

    fn on_packet(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Puback(a) => self.on_delivered(a.pid, false),
            Packet::Pubrec(a) => {
                if a.code >= 0x80 {
                    // The client refused it: it is done with it.
                    return self.on_delivered(a.pid, false);
                }
                self.push(Packet::Pubrel(PubAck {
                    pid: a.pid,
                    ..PubAck::default()
                }));
                Ok(())
            }
            Packet::Pubcomp(a) => self.on_delivered(a.pid, true),
            Packet::Pubrel(a) => {
                let known = self.received.remove(&a.pid);
                let code = if known || self.version == Version::V311 {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.push(Packet::Pubcomp(PubAck {
                    pid: a.pid,
                    code,
                    reason_string: None,
                }));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                let mut codes = Vec::with_capacity(u.filters.len());
                for f in &u.filters {
                    codes.push(if self.topics.remove(f) {
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    });
                }
                if let Some(d) = &self.durable {
                    d.save_topics();
                }
                self.push(Packet::Unsuback(FilterAck {
                    pid: u.pid,
                    codes,
                    reason_string: None,
                }));
                Ok(())
            }
            Packet::Pingreq => {
                self.push(Packet::Pingresp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.session_expiry {
                    if self.session_expiry == 0 && expiry > 0 {
                        // MQTT 5.0 section 3.14.2.2.2.
                        return Err(End::Closed(
                            reason::PROTOCOL_ERROR,
                            "a session expiry set in DISCONNECT after 0 in CONNECT".into(),
                        ));
                    }
                    self.session_expiry = expiry.min(self.mqtt.config.max_session_expiry);
                }
                Err(End::Disconnected(d.code == 0x04))
            }
            Packet::Connect(_) => Err(End::Closed(
                reason::PROTOCOL_ERROR,
                "a second CONNECT".into(),
            )),
            Packet::Auth(_) => Err(End::Closed(
                reason::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported".into(),
            )),
            other => Err(End::Closed(
                reason::PROTOCOL_ERROR,
                format!("a client does not send {}", packet_name(&other)),
            )),
        }
    }

    /// The client acknowledged the delivery with `pid` (PUBACK, PUBCOMP, or a refusing PUBREC).
    fn on_delivered(&mut self, pid: u16, _complete: bool) -> Result<(), End> {
        if let Some(Some(seq)) = self.in_flight.remove(&pid) {
            self.unacked_seqs.remove(&seq);
            self.release();
        }
        Ok(())
    }

    /// A delivery of the session queue's record `seq` (if from it) is out of the way: sent at
    /// QoS 0, expired, too large for the client, unreadable.
    fn handled(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.handled_seq = Some(seq);
            self.release();
        }
    }

    /// Acknowledges, in the session's queue, the records the client is done with: those before
    /// the first it has not acknowledged.
    fn release(&mut self) {
        let upto = match self.unacked_seqs.first() {
            Some(&first) => first.checked_sub(1),
            None => self.handled_seq,
        };
        let Some(seq) = upto.filter(|s| self.acked_seq.is_none_or(|a| a < *s)) else {
            return;
        };
        self.acked_seq = Some(seq);
        if let Some(d) = &self.durable {
            if let Err(e) = d.queue.ack(seq) {
                log::error!(
                    "MQTT client {}: cannot acknowledge in its session's queue: {e}",
                    self.name
                );
            }
        }
    }

    fn new_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            let pid = self.next_pid;
            if !self.in_flight.contains_key(&pid) {
                return pid;
            }
        }
    }

    /// Writes one delivery to the client (or, an answer to its request, publishes it to the
    /// request's response topic).
    fn deliver(&mut self, out: Out) {
        if out.answer {
            self.answer(out);
            return;
        }
        let now = now_millis();
        let msg = &out.msg;
        if crate::local::expired(msg, now) {
            self.handled(out.seq);
            return;
        }
        let mut props = PublishProps::default();
        if let Some(extra) = &msg.extra {
            props.payload_utf8 = extra.payload_utf8.then_some(true);
            if extra.expires_at != 0 {
                props.message_expiry = Some(((extra.expires_at - now).max(1000) / 1000) as u32);
            }
            props.content_type =
                (!extra.content_type.is_empty()).then(|| extra.content_type.clone());
            props.user = extra.user.clone();
            // Correlation Data goes with or without a Response Topic (MQTT 5.0 section
            // 3.3.2.3.6): the answers to a client's requests carry only the former.
            if !extra.response_topic.is_empty() {
                props.response_topic = Some(extra.response_topic.clone());
            }
            props.correlation_data =
                (!extra.correlation.is_empty()).then(|| Bytes::from(extra.correlation.clone()));
        }
        if msg.sync && props.response_topic.is_none() {
            // A hub sync request from the other side: answered by a publish to its own topic.
            props.response_topic = Some(format!("{RESPONSE_PREFIX}{}", msg.id));
            props.correlation_data = Some(Bytes::from(msg.id.clone().into_bytes()));
        }
        props.subscription_ids = out.sub_ids.clone();
        let qos = out.qos.min(2);
        let pid = (qos > 0).then(|| self.new_pid());
        let dup = out.seq.is_some_and(|s| s < self.replay_below);
        if let (Some(seq), Some(d)) = (out.seq, &self.durable) {
            d.sent(seq);
        }
        let publish = Publish {
            topic: msg.resource.clone(),
            qos,
            pid,
            retain: out.retain,
            dup: dup && qos > 0,
            payload: Bytes::from(msg.payload().into_owned()),
            props,
        };
        let before = self.out.len();
        self.push(Packet::Publish(publish));
        if self.out.len() - before > self.max_out_packet {
            // MQTT 5.0 section 3.1.2.11.4: never sent, as if delivered.
            self.out.truncate(before);
            self.handled(out.seq);
            return;
        }
        match pid {
            Some(pid) => {
                self.in_flight.insert(pid, out.seq);
                if let Some(seq) = out.seq {
                    self.unacked_seqs.insert(seq);
                    self.handled_seq = Some(seq);
                }
            }
            None => self.handled(out.seq),
        }
    }

    /// The answer to (or the timeout of) one of this client's requests: published to the
    /// request's response topic with its correlation data, on this hub.
    fn answer(&mut self, out: Out) {
        let Some((topic, correlation)) = self.requests.remove(&out.msg.parent_id) else {
            return;
        };
        let mut msg = Message {
            id: new_id(),
            timestamp: now_millis(),
            source: out.msg.source.clone(),
            group: out.msg.group.clone(),
            operation: out.msg.operation.clone(),
            resource: topic,
            content: out.msg.payload().into_owned(),
            qos: 1,
            raw: true,
            ..Message::default()
        };
        let mut extra = out.msg.extra.as_deref().cloned().unwrap_or_default();
        extra.response_topic.clear();
        extra.correlation = correlation.map(|c| c.to_vec()).unwrap_or_default();
        // Found by its subscribers through the correlation data alone.
        msg.extra = Some(Box::new(Extra {
            response_topic: String::new(),
            ..extra
        }));
        self.mqtt.apps.local.publish_local(&Arc::new(msg), 0);
    }

    /// A publish of the client: resolves its topic, hands it to this hub's subscribers and to
    /// the queue; its PUBACK or PUBREC follows once the queue has it.
    fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        let topic = match p.props.topic_alias {
            Some(0) => {
                return Err(End::Closed(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias 0".into(),
                ));
            }
            Some(a) if a > TOPIC_ALIAS_MAXIMUM => {
                return Err(End::Closed(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {a} is over the {TOPIC_ALIAS_MAXIMUM} granted"),
                ));
            }
            Some(a) if p.topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => t.clone(),
                None => {
                    return Err(End::Closed(
                        reason::PROTOCOL_ERROR,
                        format!("topic alias {a} was never set"),
                    ));
                }
            },
            Some(a) => {
                self.aliases.insert(a, p.topic.clone());
                p.topic.clone()
            }
            None => p.topic.clone(),
        };
        if let Err(why) = topic::check_name(&topic) {
            return Err(End::Closed(reason::TOPIC_NAME_INVALID, why.into()));
        }
        if p.qos == 2 {
            let pid = p.pid.unwrap_or(0);
            if self.received.contains(&pid) || self.incoming.iter().any(|i| i.pid == pid) {
                // A repeat of a QoS 2 publish not yet released: it is queued once (MQTT 5.0
                // section 4.3.3).
                if self.received.contains(&pid) {
                    self.push(Packet::Pubrec(PubAck {
                        pid,
                        ..PubAck::default()
                    }));
                }
                return Ok(());
            }
        }
        let accepted = self.publish(topic, p);
        match accepted {
            Ok(Some(incoming)) => {
                self.incoming_bytes += incoming.bytes;
                self.incoming.push_back(incoming);
            }
            Ok(None) => {}
            Err((pid, qos, why)) => {
                let incoming = Incoming {
                    pid,
                    qos,
                    bytes: 0,
                    accepted: Accepted::ready(Err(why)),
                };
                self.incoming.push_back(incoming);
            }
        }
        Ok(())
    }

    /// Publishes on this hub and towards the other one. `Ok(None)` for QoS 0.
    #[allow(clippy::type_complexity)]
    fn publish(
        &mut self,
        topic: String,
        p: Publish,
    ) -> Result<Option<Incoming>, (u16, u8, String)> {
        let pid = p.pid.unwrap_or(0);
        let qos = p.qos;
        let mut extra = Extra {
            expires_at: p
                .props
                .message_expiry
                .map_or(0, |s| now_millis() + i64::from(s) * 1000),
            content_type: p.props.content_type.clone().unwrap_or_default(),
            payload_utf8: p.props.payload_utf8 == Some(true),
            user: p.props.user.clone(),
            response_topic: p.props.response_topic.clone().unwrap_or_default(),
            correlation: p
                .props
                .correlation_data
                .as_ref()
                .map(|c| c.to_vec())
                .unwrap_or_default(),
        };
        let has_extra = extra != Extra::default();
        let mut msg = Message {
            id: new_id(),
            timestamp: now_millis(),
            source: self.client_id.chars().take(255).collect::<String>(),
            group: "user".into(),
            operation: "publish".into(),
            resource: topic,
            content: p.payload.to_vec(),
            qos,
            retain: p.retain,
            raw: true,
            extra: None,
            ..Message::default()
        };
        while msg.source.len() > crate::message::MAX_SHORT_FIELD {
            msg.source.pop();
        }
        if let Some(id) = msg.resource.strip_prefix(RESPONSE_PREFIX) {
            // An answer to a hub sync request: back to the requester, through the queue only.
            msg.parent_id = id.chars().take(255).collect();
            msg.operation = "response".into();
            msg.retain = false;
            msg.extra = has_extra.then(|| {
                extra.response_topic.clear();
                extra.correlation.clear();
                Box::new(extra)
            });
            return self.enqueue(msg, pid, qos);
        }
        let request = !extra.response_topic.is_empty();
        msg.extra = has_extra.then(|| Box::new(extra.clone()));
        // This hub's subscribers first (with the request's own response topic, as any broker
        // would), then the other hub.
        let shared = Arc::new(msg);
        self.mqtt.apps.local.publish_local(&shared, self.conn);
        let mut msg = Arc::try_unwrap(shared).unwrap_or_else(|m| (*m).clone());
        if let Route::Cloud(_) = self.mqtt.apps.route {
            if crate::message::split_node_resource(&msg.resource).is_err() {
                // Not addressed to a node: this hub's subscribers were all it was for.
                return Ok((qos > 0).then(|| Incoming {
                    pid,
                    qos,
                    bytes: 0,
                    accepted: Accepted::ready(Ok(0)),
                }));
            }
        }
        if request {
            if self.requests.len() >= MAX_REQUESTS {
                return Err((
                    pid,
                    qos,
                    format!("{MAX_REQUESTS} requests of this client are waiting for their answer"),
                ));
            }
            let local_id = new_id();
            let about = Message {
                id: local_id.clone(),
                resource: msg.resource.clone(),
                ..Message::default()
            };
            let wire = self
                .mqtt
                .apps
                .local
                .await_response(&about, self.sender.clone())
                .map_err(|e| (pid, qos, e))?;
            let response_topic = std::mem::take(&mut extra.response_topic);
            let correlation = p.props.correlation_data.clone();
            self.requests
                .insert(local_id, (response_topic, correlation));
            msg.id = wire;
            msg.sync = true;
            msg.retain = false;
            extra.correlation.clear();
            msg.extra = (extra != Extra::default()).then(|| Box::new(extra));
        } else if let Some(e) = msg.extra.as_deref_mut() {
            // Response topics of plain publishes mean nothing on the other hub.
            e.response_topic.clear();
            e.correlation.clear();
        }
        self.enqueue(msg, pid, qos)
    }

    fn enqueue(
        &mut self,
        msg: Message,
        pid: u16,
        qos: u8,
    ) -> Result<Option<Incoming>, (u16, u8, String)> {
        let (accepted, bytes) = self.mqtt.apps.publish(&msg).map_err(|e| (pid, qos, e))?;
        // QoS 0 too: no acknowledgement follows, but it counts against the bounds on what is on
        // its way into the queue, so a client publishing faster than the disk cannot grow them.
        Ok(Some(Incoming {
            pid,
            qos,
            bytes,
            accepted,
        }))
    }

    /// The queue's answer for the client's publish: PUBACK or PUBREC.
    fn on_accepted(&mut self, incoming: Incoming, outcome: Result<u64, String>) -> Result<(), End> {
        self.incoming_bytes -= incoming.bytes;
        if incoming.qos == 0 {
            if let Err(e) = outcome {
                log::debug!(
                    "MQTT client {}: a QoS 0 publish was not queued: {e}",
                    self.name
                );
            }
            return Ok(());
        }
        let code = match &outcome {
            Ok(_) => reason::SUCCESS,
            Err(why) => {
                log::warn!("MQTT client {}: a publish was not queued: {why}", self.name);
                if self.version == Version::V311 {
                    // MQTT 3.1.1 has no refusing PUBACK: the client must publish it again later.
                    return Err(End::Closed(reason::QUOTA_EXCEEDED, why.clone()));
                }
                reason::QUOTA_EXCEEDED
            }
        };
        let reason_string = outcome.err();
        let ack = PubAck {
            pid: incoming.pid,
            code,
            reason_string,
        };
        if incoming.qos == 2 {
            if code == reason::SUCCESS {
                self.received.insert(incoming.pid);
            }
            self.push(Packet::Pubrec(ack));
        } else {
            self.push(Packet::Puback(ack));
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: super::codec::Subscribe) -> Result<(), End> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in s.filters {
            if filter.starts_with("$share/") {
                codes.push(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
                continue;
            }
            if topic::check_filter(&filter).is_err() {
                codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let qos = opts.qos.min(2);
            let added = self.topics.add_within(
                TopicSub {
                    filter: filter.clone(),
                    qos,
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    id: s.subscription_id,
                },
                MAX_SUBSCRIPTIONS,
            );
            let Some(new) = added else {
                // Every publish on this hub is matched against every filter: a session's are
                // bounded (MQTT 5.0 reason 0x97 Quota exceeded; MQTT 3.1.1 0x80 Failure).
                codes.push(reason::QUOTA_EXCEEDED);
                continue;
            };
            if opts.retain_handling == 0 || (opts.retain_handling == 1 && new) {
                for m in self.mqtt.apps.local.retained.matching(&filter) {
                    let mut out = Out::shared(m.clone(), qos.min(m.qos));
                    out.retain = true;
                    out.sub_ids = s.subscription_id.into_iter().collect();
                    retained.push(out);
                }
            }
            codes.push(qos);
        }
        if let Some(d) = &self.durable {
            d.save_topics();
        }
        self.push(Packet::Suback(FilterAck {
            pid: s.pid,
            codes,
            reason_string: None,
        }));
        // Retained messages follow the SUBACK (MQTT 5.0 section 3.3.1.3), before what the
        // session's queue holds, within the client's Receive Maximum like any delivery.
        for out in retained.into_iter().rev() {
            self.staged.push_front(out);
        }
        Ok(())
    }

    /// Ends the connection: DISCONNECT with a reason (MQTT 5.0) when the hub closes it, the will
    /// unless the client disconnected cleanly, and the session kept or dropped.
    async fn finish<S>(&mut self, stream: &mut S, end: End, rx: &AppReceiver)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let publish_will = match &end {
            End::Disconnected(with_will) => *with_will,
            End::Lost(why) => {
                log::debug!("MQTT client {} ({:?}): {why}", self.name, self.client_id);
                true
            }
            End::Closed(code, why) => {
                log::info!(
                    "MQTT client {} ({:?}): closing: {why}",
                    self.name,
                    self.client_id
                );
                if self.version == Version::V5 && !self.torn {
                    self.out.clear();
                    self.push(Packet::Disconnect(Disconnect {
                        code: *code,
                        session_expiry: None,
                        reason_string: Some(why.chars().take(200).collect()),
                    }));
                    let _ = timeout(Duration::from_secs(1), self.flush(stream)).await;
                }
                *code != reason::SERVER_SHUTTING_DOWN
            }
        };
        let _ = timeout(Duration::from_secs(1), stream.close()).await;
        if let Some(will) = self.will.take().filter(|_| publish_will) {
            let p = Publish {
                topic: will.topic.clone(),
                qos: will.qos,
                pid: None,
                retain: will.retain,
                dup: false,
                payload: will.payload,
                props: will.props,
            };
            if topic::check_name(&p.topic).is_ok() {
                let qos = p.qos;
                // At the will's own QoS (MQTT 5.0 section 3.1.2.6), which is what its
                // subscribers get it at; nobody waits for the queue's answer.
                match self.publish(p.topic.clone(), p) {
                    Ok(incoming) => {
                        if let Some(Incoming { accepted, .. }) = incoming {
                            let name = self.name.clone();
                            smol::spawn(async move {
                                if let Err(e) = accepted.await {
                                    log::warn!("MQTT client {name}: its will was not queued: {e}");
                                }
                            })
                            .detach();
                        }
                        log::debug!(
                            "MQTT client {}: its will (QoS {qos}) was published",
                            self.name
                        )
                    }
                    Err((_, _, why)) => log::warn!(
                        "MQTT client {}: its will was not published: {why}",
                        self.name
                    ),
                }
            }
        }
        let local = &self.mqtt.apps.local;
        local.forget(&self.sender);
        rx.close();
        if let Some(id) = self.clean_subscription.take() {
            local.unsubscribe(id);
            let mut live = lock(&self.mqtt.live);
            if live
                .get(&self.client_id)
                .is_some_and(|c| c.id() == self.conn)
            {
                live.remove(&self.client_id);
            }
        }
        if let Some(d) = self.durable.take() {
            self.mqtt
                .sessions
                .detach(&d, self.conn, self.session_expiry);
        }
    }
}

/// The end of a connection whose delivery queue was closed: taken over, too slow, or gone.
fn cut_end(rx: &AppReceiver) -> End {
    match rx.cut_reason() {
        Some(why) if why == TAKEN_OVER => End::Closed(reason::SESSION_TAKEN_OVER, why),
        Some(why) => End::Closed(reason::QUOTA_EXCEEDED, why),
        None => End::Lost("the hub dropped the connection".into()),
    }
}

/// The end of a connection silent for 1.5 times its keep-alive of `keep_alive` seconds.
fn keep_alive_end(keep_alive: u16) -> End {
    End::Closed(
        reason::KEEP_ALIVE_TIMEOUT,
        format!("no packet within 1.5 times the keep-alive of {keep_alive}s"),
    )
}

fn shutdown_end() -> End {
    End::Closed(
        reason::SERVER_SHUTTING_DOWN,
        "the hub is shutting down".into(),
    )
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connack(_) => "CONNACK",
        Packet::Suback(_) => "SUBACK",
        Packet::Unsuback(_) => "UNSUBACK",
        Packet::Pingresp => "PINGRESP",
        _ => "this packet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f`'s future holds (an idle connection's task is mostly this).
    fn future_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn listeners_beyond_loopback_without_passwords_or_client_certificates_admit_anyone() {
        let any: SocketAddr = "0.0.0.0:8883".parse().unwrap();
        let lan: SocketAddr = "192.168.1.10:1883".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:1883".parse().unwrap();
        for local in [any, lan] {
            assert!(admits_anyone(local, false, false), "{local}");
            assert!(!admits_anyone(local, true, false), "{local} with passwords");
            assert!(
                !admits_anyone(local, false, true),
                "{local} with client certificates"
            );
        }
        for local in [loopback, v6_loopback] {
            assert!(!admits_anyone(local, false, false), "{local}");
        }
    }

    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(connection::<Async<std::net::TcpStream>>);
        assert!(size < 3 * 1024, "a connection's future is {size} bytes");
    }
}
