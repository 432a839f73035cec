//! QUIC transport: quinn on smol. The edge opens one bidirectional control stream and sends
//! frames on it behind a 4-byte length; the hub close code is the QUIC application error code.
//! Reconnects within one process resume the TLS session and send HELLO as 0-RTT data.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectionError, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, IdleTimeout,
    ReadError, RecvStream, SendStream, TransportConfig, VarInt,
};

use super::{Inbound, Link, LinkError, Outbound, Outgoing, Reader, dial, timeout};
use crate::config::{Congestion, Protocol};
use crate::proto::frame::Lane;
use crate::proto::frame::{StreamDecoder, encode_len_prefixed};
use crate::proto::{CloseCode, Frame, FrameError};
use crate::signal::{Latch, RaiseOnDrop};
use smol::future::FutureExt;

/// Bidirectional streams the edge lets the cloud open towards it: none, since the edge opens both
/// of the protocol's streams.
const EDGE_MAX_STREAMS: u32 = 0;

/// Bytes a peer may send on one stream ahead of what this side has read (QUIC's
/// `initial_max_stream_data`): 8 MiB. A lost packet holds up everything behind it on its stream
/// until the retransmission arrives, about one round trip later, and meanwhile the sender keeps
/// sending into the window: so the window must hold about two round trips of the path, not one.
/// Measured over the emulated WAN of `scripts/bench-loss.sh` with 16 KiB messages, 4 MiB held a
/// 200 ms path at 16 MB/s (the window over the round trip and the grant's delay) and a 50 ms path
/// with 1 % loss at 32 MB/s; 8 MiB carried 31 and 42 MB/s there, 16 MiB not much more
/// (docs/benchmarks.md).
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;

/// What the urgent lane may have in flight on top of a full bulk stream window: 1 MiB.
const URGENT_HEADROOM: u32 = 1 << 20;

/// Bytes a peer may send on all streams of a connection together ahead of what this side has
/// read (QUIC's `initial_max_data`): one full stream window for the bulk lane plus
/// [`URGENT_HEADROOM`] for the urgent lane, so a bulk lane this side leaves unread never takes the
/// urgent lane's credit. This is the most a node can make the cloud buffer, however many streams
/// it opens: 9 MiB.
pub const RECEIVE_WINDOW: u32 = STREAM_RECEIVE_WINDOW + URGENT_HEADROOM;

/// Bytes of this side's writes quinn keeps until the peer acknowledges them, all streams of a
/// connection together: as much as the peer's connection window lets through, so a full path is
/// never held back by the sender's buffer (quinn's default is 10 MB).
pub const SEND_WINDOW: u64 = RECEIVE_WINDOW as u64;

/// The kernel buffer asked for on each QUIC UDP socket, both directions (`SO_RCVBUF`,
/// `SO_SNDBUF`): 4 MiB, so a burst of a full path is not dropped at the socket, where a drop looks
/// like loss to the congestion controller. Linux grants at most `net.core.rmem_max` /
/// `net.core.wmem_max` (often 208 KiB by default); a smaller grant is logged, not an error.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The most concurrent streams granted to a peer, whatever `max_incomingstreams` says: 4. The
/// protocol uses two per connection (its lanes, urgent and bulk), and a peer that opens a third
/// is closed on (so there is room to see one); KubeEdge's default of 10,000 is sized for a stream
/// per message, and quinn sets up the state of every allowed stream when a connection starts
/// (about 55 bytes each): 10,000 would cost about 550 KB per node, 100 cost 5.4 KB, 4 cost 220
/// bytes.
pub const MAX_GRANTED_STREAMS: u32 = 4;

/// QUIC transport settings: `max_streams` (at most [`MAX_GRANTED_STREAMS`]) concurrent
/// bidirectional streams for the peer (the protocol opens no unidirectional ones, so none are
/// allowed, nor unreliable datagrams), an idle timeout of `idle`, no QUIC keep-alives (the
/// session's heartbeats keep the link busy), the congestion controller `congestion`.
///
/// Flow control: [`STREAM_RECEIVE_WINDOW`] per stream, [`RECEIVE_WINDOW`] per connection however
/// many streams the peer opens, and [`SEND_WINDOW`] of this side's unacknowledged writes
/// (docs/protocol.md section 8).
pub fn transport_config(
    max_streams: u32,
    idle: Duration,
    congestion: Congestion,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    match congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    let granted = max_streams.min(MAX_GRANTED_STREAMS);
    t.max_concurrent_bidi_streams(VarInt::from_u32(granted));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    t.max_idle_timeout(IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(None);
    t
}

/// Asks the kernel for [`SOCKET_BUFFER`] bytes of receive and send buffer on `socket`; logs
/// (at debug) what it granted when that is less.
fn size_socket_buffers(socket: &UdpSocket) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => state,
        Err(e) => {
            log::debug!("UDP socket buffers left as they are: {e}");
            return;
        }
    };
    let _ = state.set_recv_buffer_size(socket.into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size(socket.into(), SOCKET_BUFFER);
    // Linux reports twice what it grants (it counts its bookkeeping).
    let recv = state.recv_buffer_size(socket.into()).unwrap_or(0) / 2;
    let send = state.send_buffer_size(socket.into()).unwrap_or(0) / 2;
    if recv < SOCKET_BUFFER || send < SOCKET_BUFFER {
        log::debug!(
            "UDP socket buffers: {recv} bytes to receive, {send} to send (asked for {SOCKET_BUFFER}; \
             raise net.core.rmem_max / wmem_max for more)"
        );
    }
}

/// The keys of the cloud's QUIC endpoint that must be the same after a restart, derived from a
/// secret the cloud keeps (its private key) with HKDF-SHA256 (RFC 5869), one label each:
///
/// - the stateless reset key (RFC 9000 section 10.3): a restarted cloud answers packets of the
///   connections it lost with resets the edges recognise, so they reconnect at once instead of
///   after their read deadline;
/// - the address validation token key (RFC 9000 section 8.1): NEW_TOKEN tokens handed out before
///   a restart still spare their edges a Retry round trip after it.
///
/// Neither key reveals anything about the secret. Several cloud instances with the same key
/// derive the same keys, as resets behind one address require.
pub struct RestartKeys {
    reset: ring::hmac::Key,
    token: ring::hkdf::Prk,
}

impl RestartKeys {
    /// Derives the keys from `secret` (the DER of the cloud's private key).
    pub fn derive(secret: &[u8]) -> RestartKeys {
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"hub/1 quic endpoint").extract(secret);
        let mut reset = [0u8; 64];
        expand(&prk, b"stateless reset", &mut reset);
        let mut token = [0u8; 32];
        expand(&prk, b"address validation token", &mut token);
        RestartKeys {
            reset: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset),
            token: ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token),
        }
    }
}

/// Fills `out` with HKDF-Expand of `prk` for `label`.
fn expand(prk: &ring::hkdf::Prk, label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let info = [label];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of at most 64 bytes");
}

/// Connection ids of the cloud's endpoint: 8 random bytes, all accepted as possibly its own.
/// quinn's default generator hashes its ids with a key drawn anew by each process and drops the
/// packets whose id fails that check before it would answer them, so a restarted cloud would never
/// send the stateless resets that tell edges their connection is gone.
struct ServerCids(ring::rand::SystemRandom);

impl ConnectionIdGenerator for ServerCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&self.0, &mut id)
            .expect("the operating system's random source works");
        ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The cloud's QUIC endpoint bound to `addr`, with the keys that survive a restart from `keys`
/// and connection ids a restarted cloud still answers with a stateless reset.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: TransportConfig,
    keys: RestartKeys,
) -> Result<Endpoint, String> {
    server_endpoint_with_config(addr, tls, transport, keys).map(|(endpoint, _)| endpoint)
}

/// [`server_endpoint`], also returning the server configuration it was given: the template that
/// [`with_tls`] turns into the configuration for new credentials.
pub fn server_endpoint_with_config(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: TransportConfig,
    keys: RestartKeys,
) -> Result<(Endpoint, quinn::ServerConfig), String> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC TLS setup: {e}"))?;
    let mut config = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(keys.token));
    config.transport_config(Arc::new(transport));
    let socket = UdpSocket::bind(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
    size_socket_buffers(&socket);
    let mut endpoint = EndpointConfig::new(Arc::new(keys.reset));
    endpoint.cid_generator(|| Box::new(ServerCids(ring::rand::SystemRandom::new())));
    let ep = Endpoint::new(
        endpoint,
        Some(config.clone()),
        socket,
        Arc::new(quinn::SmolRuntime),
    )
    .map_err(|e| format!("QUIC endpoint on {addr}: {e}"))?;
    Ok((ep, config))
}

/// `template` (a server configuration from [`server_endpoint_with_config`]) with `tls` as its
/// TLS configuration, for [`Endpoint::set_server_config`] when the cloud's credentials change.
///
/// Everything else is the template's and must stay: the transport settings; the address
/// validation token key and the log of NEW_TOKEN tokens already used ([`RestartKeys`]), so Retry
/// and NEW_TOKEN tokens handed out before still validate and cannot be replayed. (The stateless
/// reset key and the connection id generator belong to the endpoint, which is not replaced.)
///
/// Errors: `tls` is not usable for QUIC (not TLS 1.3 only, or a partial early data size).
pub fn with_tls(
    template: &quinn::ServerConfig,
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, String> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC TLS setup: {e}"))?;
    let mut config = template.clone();
    config.crypto = Arc::new(crypto);
    Ok(config)
}

/// A client QUIC endpoint on an unspecified address of the IPv6 or IPv4 family.
pub fn client_endpoint(ipv6: bool) -> Result<Endpoint, String> {
    let bind: SocketAddr = if ipv6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot bind UDP {bind}: {e}"))?;
    size_socket_buffers(&socket);
    Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::SmolRuntime),
    )
    .map_err(|e| format!("QUIC endpoint: {e}"))
}

/// The edge's quinn client configuration from a rustls one (which must allow early data for 0-RTT),
/// with the default congestion controller ([`Congestion::default`]).
pub fn client_config(
    tls: rustls::ClientConfig,
    idle: Duration,
) -> Result<quinn::ClientConfig, String> {
    client_config_with(tls, idle, Congestion::default())
}

/// [`client_config`] with the congestion controller `congestion`.
pub fn client_config_with(
    tls: rustls::ClientConfig,
    idle: Duration,
    congestion: Congestion,
) -> Result<quinn::ClientConfig, String> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| format!("QUIC TLS setup: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let transport = transport_config(EDGE_MAX_STREAMS, idle, congestion);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Closes every connection of `endpoint` with "shutting down" and waits at most `linger` for the
/// peers to be told.
pub async fn close_endpoint(endpoint: &Endpoint, linger: Duration) {
    let code = crate::proto::CloseCode::ShuttingDown;
    endpoint.close(VarInt::from(code.code()), code.reason().as_bytes());
    let _ = timeout(linger, endpoint.wait_idle()).await;
}

/// How the edge's QUIC handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A resumed session; HELLO went out as 0-RTT data and the cloud took it.
    ZeroRtt,
    /// A resumed session, but the cloud refused 0-RTT (for example after a restart); HELLO was
    /// sent again after the handshake.
    ZeroRttRefused,
    /// A full handshake (no session to resume).
    OneRtt,
}

impl Handshake {
    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Handshake::ZeroRtt => "0-RTT",
            Handshake::ZeroRttRefused => "0-RTT refused, 1-RTT",
            Handshake::OneRtt => "1-RTT",
        }
    }
}

/// The edge's QUIC endpoints, one per address family, each bound when first needed and kept for
/// the life of the process. (TLS sessions to resume live in the client configuration, so they
/// are shared by both.)
#[derive(Default)]
pub struct ClientEndpoints {
    v4: Option<Endpoint>,
    v6: Option<Endpoint>,
}

impl ClientEndpoints {
    /// The endpoint for `addr`'s family, bound now if it is not yet.
    pub fn for_addr(&mut self, addr: SocketAddr) -> Result<Endpoint, String> {
        let slot = if addr.is_ipv6() {
            &mut self.v6
        } else {
            &mut self.v4
        };
        if slot.is_none() {
            *slot = Some(client_endpoint(addr.is_ipv6())?);
        }
        Ok(slot.clone().expect("set above"))
    }

    /// Closes every endpoint at once (see [`close_endpoint`]).
    pub async fn close(&self, linger: Duration) {
        let close = |ep: &Option<Endpoint>| {
            let ep = ep.clone();
            async move {
                if let Some(ep) = ep {
                    close_endpoint(&ep, linger).await;
                }
            }
        };
        smol::future::zip(close(&self.v4), close(&self.v6)).await;
    }
}

/// Connects to the cloud at the first of `addrs` that answers, racing them the happy-eyeballs
/// way ([`dial::race`]) within `limit` (which resolving them may have used part of), each
/// attempt as [`connect`], at the pace of `pacer`: fresh QUIC connections (new Initials) beside
/// attempts that stay silent, at most `limit.attempts`. Returns the connection of the first to succeed; the
/// error names each address tried. A refusal of this side's certificate is the cloud's own
/// answer and ends the dial at once ([`LinkError::is_final`]), as
/// [`LinkError::CertificateRefused`]; when nothing answered at all it is
/// [`LinkError::NoAnswer`].
pub async fn dial(
    endpoints: &mut ClientEndpoints,
    config: &quinn::ClientConfig,
    addrs: &[SocketAddr],
    server_name: &str,
    first: &[u8],
    limit: dial::Limit,
    pacer: &mut dial::Pacer,
) -> Result<(quinn::Connection, SendStream, RecvStream, Handshake), LinkError> {
    let bound: Vec<(SocketAddr, Result<Endpoint, String>)> =
        addrs.iter().map(|a| (*a, endpoints.for_addr(*a))).collect();
    let raced = dial::race(addrs, pacer, limit, LinkError::verdict, |addr| {
        let endpoint = bound
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, e)| e.clone())
            .expect("every address has its endpoint");
        let config = config.clone();
        async move {
            let endpoint = endpoint.map_err(LinkError::Io)?;
            connect(&endpoint, config, addr, server_name, first).await
        }
    })
    .await;
    raced
        .map(|(connected, _)| connected)
        .map_err(LinkError::from_race)
}

/// Connects to the cloud at `addr` and opens the control stream, sending `first` (HELLO,
/// length-prefixed) as early as the handshake allows: in 0-RTT data when a session can be resumed.
pub async fn connect(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    first: &[u8],
) -> Result<(quinn::Connection, SendStream, RecvStream, Handshake), LinkError> {
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| LinkError::Io(format!("QUIC connect to {addr}: {e}")))?;
    let failed =
        |e: &dyn std::fmt::Display| LinkError::Io(format!("QUIC handshake with {addr}: {e}"));
    let lost = |e: &ConnectionError| match connection_error(e) {
        LinkError::CertificateRefused(_) => {
            LinkError::CertificateRefused(format!("QUIC handshake with {addr}: {e}"))
        }
        // quinn gave up waiting: nothing came back.
        _ if matches!(e, ConnectionError::TimedOut) => {
            LinkError::NoAnswer(format!("QUIC handshake with {addr}: {e}"))
        }
        _ => failed(e),
    };
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            // Written in 0-RTT; lost if the cloud refuses it.
            let _ = send.write_all(first).await;
            if accepted.await {
                return Ok((conn, send, recv, Handshake::ZeroRtt));
            }
            if let Some(e) = conn.close_reason() {
                return Err(lost(&e));
            }
            let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(first).await.map_err(|e| failed(&e))?;
            Ok((conn, send, recv, Handshake::ZeroRttRefused))
        }
        Err(connecting) => {
            let conn = connecting.await.map_err(|e| lost(&e))?;
            let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(first).await.map_err(|e| failed(&e))?;
            Ok((conn, send, recv, Handshake::OneRtt))
        }
    }
}

fn connection_error(e: &ConnectionError) -> LinkError {
    match e {
        ConnectionError::ApplicationClosed(close) => {
            let raw = close.error_code.into_inner();
            match u16::try_from(raw)
                .ok()
                .and_then(crate::proto::CloseCode::from_code)
            {
                Some(code) => LinkError::Closed(code),
                // The peer's words go into a log line: quoted, so they cannot forge lines.
                None => LinkError::ClosedOther(format!(
                    "QUIC application close {raw} {:?}",
                    String::from_utf8_lossy(&close.reason)
                )),
            }
        }
        ConnectionError::ConnectionClosed(close) => {
            // A TLS alert travels as CRYPTO_ERROR 0x100 + alert (RFC 9001 section 4.8).
            let code = u64::from(close.error_code);
            let alert = code
                .checked_sub(0x100)
                .and_then(|a| u8::try_from(a).ok())
                .map(rustls::AlertDescription::from);
            let why = format!("QUIC: {e}");
            if alert.is_some_and(crate::tls::is_certificate_alert) {
                LinkError::CertificateRefused(why)
            } else {
                LinkError::Io(why)
            }
        }
        ConnectionError::TimedOut => LinkError::Io("QUIC idle timeout".into()),
        ConnectionError::LocallyClosed => LinkError::Eof,
        other => LinkError::Io(format!("QUIC: {other}")),
    }
}

fn read_error(e: ReadError, bulk: bool) -> LinkError {
    let stream = if bulk { "bulk" } else { "control" };
    match e {
        ReadError::ConnectionLost(c) => connection_error(&c),
        other => LinkError::Io(format!("QUIC {stream} stream: {other}")),
    }
}

/// Which side opens the bulk lane's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkStream {
    /// The edge: it opens the stream and sends [`BULK_PREFACE`] on it first.
    Open,
    /// The cloud: it accepts the next stream the edge opens, which must start with
    /// [`BULK_PREFACE`].
    Accept,
}

/// The first byte of the bulk lane's stream: the lane's number.
pub const BULK_PREFACE: u8 = 1;

/// The most bytes taken from quinn in one read when the next frame needs fewer: 64 KiB.
const READ_CHUNK: usize = 64 << 10;

/// Reads length-prefixed frames from `recv` and hands them to the session task until the stream
/// or the link ends. On the bulk stream (`bulk`), anything but a message or a piece of one of the
/// bulk lane is a protocol error.
async fn read_frames(
    mut recv: RecvStream,
    tasks: Reader,
    bulk: bool,
    mut first: Option<RaiseOnDrop>,
) {
    let mut decoder = StreamDecoder::default();
    loop {
        let item = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let ok = !bulk || super::wire_lane(&frame) == Lane::Bulk;
                    break if ok {
                        Inbound::Frame(frame)
                    } else {
                        Inbound::Closed(LinkError::Frame(FrameError::WrongStream))
                    };
                }
                Err(e) => break Inbound::Closed(LinkError::Frame(e)),
                Ok(None) => {}
            }
            // quinn's own chunks (each at most one received STREAM frame's data, so about a
            // packet), never less than the decoder wants: frames of a few hundred bytes are
            // taken a packet at a time rather than a length prefix and a frame at a time, and
            // the decoder holds at most one chunk beyond the frame it completes.
            match recv
                .read_chunk(decoder.wanted().max(READ_CHUNK), true)
                .await
            {
                Ok(Some(chunk)) => decoder.push(&chunk.bytes),
                Ok(None) => break Inbound::Closed(LinkError::Eof),
                Err(e) => break Inbound::Closed(read_error(e, bulk)),
            }
        };
        if !tasks.deliver(item).await {
            return;
        }
        // The first frame is with the session: the bulk stream's reader may start.
        drop(first.take());
    }
}

/// Writes the frames of one lane to `send` until the link closes; on the control stream
/// (`control`), a close request closes the connection. A write blocked past `write_deadline`, or a
/// lost connection, is reported to the session task.
async fn write_frames(
    conn: &quinn::Connection,
    send: &mut SendStream,
    lane: Lane,
    outgoing: &Outgoing,
    report: &Reader,
    write_deadline: Duration,
    mut held: Option<Outbound>,
) {
    let mut buf = Vec::new();
    loop {
        let out = match held.take() {
            Some(out) => out,
            None => match outgoing.next_of(lane).await {
                Some(out) => out,
                None => return,
            },
        };
        let close = match batch(out, outgoing, lane, &mut buf) {
            Batch::Write(close) => close,
            Batch::Close(code) => {
                conn.close(VarInt::from(code.code()), code.reason().as_bytes());
                return;
            }
            Batch::Nothing => continue,
        };
        // Boxed, as is the report: the writer of an idle lane waits for its next frame in a
        // task of its own size, not one sized for a write (460 bytes).
        let err = match Box::pin(timeout(write_deadline, send.write_all(&buf))).await {
            Some(Ok(())) => match close {
                None => continue,
                Some(code) => {
                    conn.close(VarInt::from(code.code()), code.reason().as_bytes());
                    return;
                }
            },
            Some(Err(quinn::WriteError::ConnectionLost(c))) => connection_error(&c),
            Some(Err(e)) => LinkError::Io(format!("QUIC {lane} stream: {e}")),
            None => LinkError::WriteTimeout(write_deadline),
        };
        Box::pin(report.deliver(Inbound::Closed(err))).await;
        return;
    }
}

/// What [`write_frames`] does with the item it took.
enum Batch {
    /// Write what is in the buffer, then close the connection with the code, if any.
    Write(Option<CloseCode>),
    /// Close the connection with this code.
    Close(CloseCode),
    /// Nothing to write.
    Nothing,
}

/// Encodes `out` and everything already waiting on `lane` after it (up to 1 MiB) into `buf`,
/// for one write; a close request ends the batch.
fn batch(out: Outbound, outgoing: &Outgoing, lane: Lane, buf: &mut Vec<u8>) -> Batch {
    let f = match out {
        Outbound::Frame(f) => Frame::from(f),
        Outbound::Close(code) => return Batch::Close(code),
        // QUIC's round trip is quinn's estimate; a ping is never queued here.
        Outbound::Ping => return Batch::Nothing,
    };
    buf.clear();
    encode_len_prefixed(&f, buf);
    while buf.len() < 1 << 20 {
        match outgoing.try_next_of(lane) {
            Some(Outbound::Frame(f)) => encode_len_prefixed(&Frame::from(f), buf),
            Some(Outbound::Ping) => {}
            Some(Outbound::Close(code)) => return Batch::Write(Some(code)),
            None => break,
        }
    }
    Batch::Write(None)
}

/// Turns an open connection and its control stream into a [`Link`], spawning its reader and
/// writer tasks: the control stream carries the urgent lane and every frame that is not a
/// message; the bulk lane gets a second bidirectional stream, which the edge opens
/// ([`BulkStream`]). Frames of the bulk stream are handed on only after the first frame of the
/// control stream (HELLO or WELCOME), so the session never sees a bulk message before the link
/// is open. The control stream is sent with a higher priority, so its frames go ahead of bulk
/// data waiting in the connection.
pub fn spawn_link(
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    write_deadline: Duration,
    bulk: BulkStream,
) -> Link {
    let (mut link, tasks) = Link::new(Protocol::Quic, conn.remote_address());
    link.quic = Some(conn.clone());
    if log::log_enabled!(log::Level::Debug) {
        smol::spawn(log_stats(conn.clone(), tasks.alive.clone())).detach();
    }
    let first = Arc::new(Latch::new());
    let first_tx = RaiseOnDrop(first.clone());
    let control_reader = tasks.reader();
    tasks.spawn_reader(read_frames(recv, control_reader, false, Some(first_tx)));
    let outgoing = Arc::new(tasks.outgoing());
    let report = tasks.reader();
    let done = tasks.writer_done.clone();
    let control_conn = conn.clone();
    let control_out = outgoing.clone();
    let control_report = report.clone();
    let mut send = send;
    let _ = send.set_priority(1);
    smol::spawn(async move {
        let out = &control_out;
        write_frames(
            &control_conn,
            &mut send,
            Lane::Urgent,
            out,
            &control_report,
            write_deadline,
            None,
        )
        .await;
        done.notify();
    })
    .detach();

    let bulk_reader = tasks.reader();
    let alive = tasks.alive.clone();
    let alive_for_tasks = tasks.alive.clone();
    super::spawn_while(alive, async move {
        // Cloud: a bulk frame that waits for the edge's bulk stream longer than the write
        // deadline is a blocked write, as one the edge stopped reading would be.
        let mut held = None;
        // Boxed: the stream's setup is freed once done, rather than kept in the task as long
        // as the link lasts.
        let streams = Box::pin(async {
            Some(match bulk {
                BulkStream::Open => match conn.open_bi().await {
                    Ok((mut send, recv)) => match send.write_all(&[BULK_PREFACE]).await {
                        Ok(()) => Ok((send, recv)),
                        Err(quinn::WriteError::ConnectionLost(c)) => Err(connection_error(&c)),
                        Err(e) => Err(LinkError::Io(format!("QUIC bulk stream: {e}"))),
                    },
                    Err(e) => Err(connection_error(&e)),
                },
                BulkStream::Accept => {
                    let accepted = accept_bulk(&conn);
                    let mut accepted = std::pin::pin!(accepted);
                    let first = async { Err(outgoing.next_of(Lane::Bulk).await) };
                    match async { Ok(accepted.as_mut().await) }.or(first).await {
                        Ok(streams) => streams,
                        Err(None) => return None,
                        Err(Some(out)) => {
                            held = Some(out);
                            timeout(write_deadline, accepted)
                                .await
                                .unwrap_or(Err(LinkError::WriteTimeout(write_deadline)))
                        }
                    }
                }
            })
        })
        .await;
        let (mut send, recv) = match streams {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                bulk_reader.deliver(Inbound::Closed(e)).await;
                return;
            }
        };
        if bulk == BulkStream::Accept {
            // The protocol uses two streams; a peer that opens more is told so.
            let extra = conn.clone();
            let report = bulk_reader.clone();
            super::spawn_while(alive_for_tasks.clone(), async move {
                if extra.accept_bi().await.is_ok() {
                    let e = LinkError::Frame(FrameError::WrongStream);
                    report.deliver(Inbound::Closed(e)).await;
                }
            });
        }
        let reader = bulk_reader.clone().closing_after_bulk();
        super::spawn_while(alive_for_tasks, async move {
            // Not before the control stream's first frame reached the session.
            first.wait().await;
            read_frames(recv, reader, true, None).await
        });
        write_frames(
            &conn,
            &mut send,
            Lane::Bulk,
            &outgoing,
            &report,
            write_deadline,
            held,
        )
        .await;
    });
    link
}

/// Logs the connection's path figures (quinn's [`quinn::ConnectionStats`]: round trip,
/// congestion window, packets sent and lost, congestion events, MTU) at trace level once a second
/// while it lives and at debug level when it closes or its link ends (`alive` closes), for reading
/// a WAN run's limits.
async fn log_stats(conn: quinn::Connection, alive: Arc<Latch>) {
    let line = |conn: &quinn::Connection, what: &str| {
        let s = conn.stats();
        let p = s.path;
        format!(
            "quic {what} {}: rtt {} ms (min {}), cwnd {} B, sent {} packets, lost {} ({} B), \
             congestion events {}, mtu {}, udp out {} datagrams in {} calls, udp in {} datagrams, \
             acks out {} in {}",
            conn.remote_address(),
            p.rtt.as_millis(),
            p.min_rtt.as_millis(),
            p.cwnd,
            p.sent_packets,
            p.lost_packets,
            p.lost_bytes,
            p.congestion_events,
            p.current_mtu,
            s.udp_tx.datagrams,
            s.udp_tx.ios,
            s.udp_rx.datagrams,
            s.frame_tx.acks,
            s.frame_rx.acks,
        )
    };
    let ended = async {
        smol::future::race(
            async {
                conn.closed().await;
            },
            async {
                alive.wait().await;
            },
        )
        .await
    };
    let mut ended = std::pin::pin!(ended);
    loop {
        let tick = async {
            smol::Timer::after(Duration::from_secs(1)).await;
            false
        };
        let over = async {
            ended.as_mut().await;
            true
        };
        if over.or(tick).await {
            break;
        }
        log::trace!("{}", line(&conn, "stats"));
    }
    log::debug!("{}", line(&conn, "closed"));
}

/// Cloud: accepts the edge's bulk stream and checks its preface; a stream that starts otherwise
/// is a protocol error ([`FrameError::WrongStream`]).
async fn accept_bulk(conn: &quinn::Connection) -> Result<(SendStream, RecvStream), LinkError> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| connection_error(&e))?;
    let mut preface = [0u8];
    recv.read_exact(&mut preface)
        .await
        .map_err(|e| LinkError::Io(format!("QUIC bulk stream: {e}")))?;
    if preface[0] != BULK_PREFACE {
        return Err(LinkError::Frame(FrameError::WrongStream));
    }
    Ok((send, recv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_depend_on_the_secret_only() {
        let tag = |k: &RestartKeys| {
            ring::hmac::sign(&k.reset, b"connection id")
                .as_ref()
                .to_vec()
        };
        let (a, a2, b) = (
            RestartKeys::derive(b"secret a"),
            RestartKeys::derive(b"secret a"),
            RestartKeys::derive(b"secret b"),
        );
        assert_eq!(
            tag(&a),
            tag(&a2),
            "the same secret gives the same reset key"
        );
        assert_ne!(tag(&a), tag(&b));
        let mut okm = [[0u8; 16]; 2];
        for (k, out) in [&a, &a2].into_iter().zip(&mut okm) {
            expand(&k.token, b"check", out);
        }
        assert_eq!(okm[0], okm[1], "the same secret gives the same token key");
    }
}
