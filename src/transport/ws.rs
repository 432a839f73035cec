//! WebSocket transport: async-tungstenite over futures-rustls over smol's `Async<TcpStream>`.
//! Each WebSocket binary message carries one frame; the hub close code travels as WebSocket close
//! code `4000 + code`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{self, Message};
use futures_rustls::TlsConnector;
use futures_util::SinkExt;
use rustls::pki_types::ServerName;
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::StreamExt;

use super::{Inbound, Link, LinkError, Live, Outbound, dial, io_link_error, timeout};
use crate::config::{Endpoint, Protocol};
use crate::proto::{CloseCode, Frame, FrameError, MAX_FRAME, WS_SUBPROTOCOL};

/// The TLS stream the edge's WebSocket runs on.
pub type ClientStream = futures_rustls::client::TlsStream<Async<TcpStream>>;
/// The TLS stream the cloud's WebSocket runs on.
pub type ServerStream = futures_rustls::server::TlsStream<Async<TcpStream>>;

/// What one read from the TLS stream asks for on a local application's WebSocket: 4 KiB
/// (tungstenite zero-fills this much of its read buffer before every read, so every idle
/// connection keeps this much resident; with its default, 128 KiB).
pub const READ_BUFFER: usize = 4 * 1024;

/// What one read from the TLS stream asks for on a link: 1 KiB, resident in every idle
/// connection as [`READ_BUFFER`] is. A larger frame still gets a buffer of its own size, read in
/// steps of this (from the TLS layer's plaintext, not a system call each: rustls reads the socket
/// 4 KiB at a time whatever this is). 1 KiB holds 3 messages of 256 bytes; 4 KiB cost 3 KiB more
/// per idle WebSocket node (10,000 nodes: 29 MiB).
pub const LINK_READ_BUFFER: usize = 1024;

/// A link's WebSocket limits: no message or frame over [`MAX_FRAME`]; reads of
/// [`LINK_READ_BUFFER`].
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(LINK_READ_BUFFER)
}

/// The WebSocket close code carrying hub close code `code`.
pub fn ws_close_code(code: CloseCode) -> u16 {
    4000 + code.code()
}

fn link_error(e: tungstenite::Error) -> LinkError {
    match e {
        tungstenite::Error::Capacity(c) => LinkError::Frame(FrameError::Oversized(match c {
            tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
            _ => MAX_FRAME + 1,
        })),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => LinkError::Eof,
        other => LinkError::Io(other.to_string()),
    }
}

fn closed(frame: Option<CloseFrame>) -> LinkError {
    let Some(frame) = frame else {
        return LinkError::ClosedOther("no close code".into());
    };
    let raw = u16::from(frame.code);
    match raw.checked_sub(4000).and_then(CloseCode::from_code) {
        Some(code) => LinkError::Closed(code),
        // The peer's words go into a log line: quoted, so they cannot forge lines.
        None => {
            LinkError::ClosedOther(format!("WebSocket close {raw} {:?}", frame.reason.as_str()))
        }
    }
}

fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: WsCloseCode::from(ws_close_code(code)),
        reason: code.reason().into(),
    }
}

/// Round-trip samples of one WebSocket: the Ping last written carries the nanoseconds since the
/// link started (8 bytes, big-endian; never 0), and the Pong that echoes exactly that payload
/// records the time since as a sample. A Pong that echoes anything else (an older Ping, or one
/// the peer made up) is ignored.
struct Pings {
    start: Instant,
    /// The stamp of the Ping awaiting its Pong; 0 when none.
    pending: AtomicU64,
    live: Arc<Live>,
}

impl Pings {
    /// The payload of a Ping written now, remembered as the one awaiting its Pong.
    fn stamp(&self) -> [u8; 8] {
        let ns = u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.pending.store(ns, Ordering::Relaxed);
        ns.to_be_bytes()
    }

    /// A Pong with `payload` arrived: the sample, if it answers the pending Ping.
    fn pong(&self, payload: &[u8]) -> Option<Duration> {
        let ns = u64::from_be_bytes(payload.try_into().ok()?);
        self.pending
            .compare_exchange(ns, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .filter(|&ns| ns != 0)?;
        let rtt = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_nanos(ns));
        self.live.record_rtt(rtt);
        Some(rtt)
    }
}

/// Turns an upgraded WebSocket into a [`Link`], spawning its reader and writer tasks.
pub fn spawn_link<S>(ws: WebSocketStream<S>, peer: SocketAddr, write_deadline: Duration) -> Link
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (link, tasks) = Link::new(Protocol::Websocket, peer);
    let (mut tx, mut rx) = ws.split();
    // One connection carries both lanes: its end comes after the bulk frames read before it.
    let reader = tasks.reader().closing_after_bulk();
    let report = tasks.reader();
    let pings = Arc::new(Pings {
        start: Instant::now(),
        pending: AtomicU64::new(0),
        live: tasks.live.clone(),
    });
    let pinger = pings.clone();
    tasks.spawn_reader(async move {
        loop {
            let item = match rx.next().await {
                Some(Ok(Message::Binary(b))) => Inbound::Frame(b.to_vec()),
                Some(Ok(Message::Close(frame))) => Inbound::Closed(closed(frame)),
                Some(Ok(Message::Text(_))) => Inbound::Closed(LinkError::Frame(FrameError::Text)),
                Some(Ok(Message::Pong(payload))) => {
                    pings.pong(&payload);
                    continue;
                }
                Some(Ok(_)) => continue, // a ping: answered by tungstenite
                Some(Err(e)) => Inbound::Closed(link_error(e)),
                None => Inbound::Closed(LinkError::Eof),
            };
            if !reader.deliver(item).await {
                return;
            }
        }
    });

    let outgoing = tasks.outgoing();
    let done = tasks.writer_done;
    smol::spawn(async move {
        // One connection carries both lanes: each batch takes urgent frames first, and holds at
        // most WRITE_BATCH bytes plus one frame (a bulk message is cut into pieces of 64 KiB),
        // so an urgent frame waits for at most about one batch.
        while let Some(first) = outgoing.next().await {
            let mut close = None;
            let batch = async {
                let mut next = Some(first);
                let mut bytes = 0;
                while let Some(out) = next.take() {
                    match out {
                        Outbound::Frame(f) => {
                            let encoded = Frame::from(f).into_bytes();
                            bytes += encoded.len();
                            tx.feed(Message::binary(encoded)).await?;
                        }
                        Outbound::Close(code) => {
                            close = Some(code);
                            break;
                        }
                        Outbound::Ping => {
                            let stamp = pinger.stamp();
                            tx.feed(Message::Ping(stamp.to_vec().into())).await?;
                        }
                    }
                    if bytes < WRITE_BATCH {
                        next = outgoing.try_next();
                    }
                }
                tx.flush().await
            };
            // Boxed, as is the close: the writer of an idle link waits for its next frame in a
            // task of about 300 bytes rather than one sized for a batch (1.1 KiB).
            let err = match Box::pin(timeout(write_deadline, batch)).await {
                Some(Ok(())) => match close {
                    None => continue,
                    Some(code) => {
                        let closing = timeout(write_deadline, tx.close(Some(close_frame(code))));
                        let _ = Box::pin(closing).await;
                        break;
                    }
                },
                Some(Err(e)) => link_error(e),
                None => LinkError::WriteTimeout(write_deadline),
            };
            report.deliver(Inbound::Closed(err)).await;
            break;
        }
        done.notify();
    })
    .detach();
    link
}

/// Bytes a WebSocket writer feeds before it flushes them and looks for urgent frames again.
const WRITE_BATCH: usize = 64 << 10;

/// Opens a TCP connection to `addr` with `TCP_NODELAY`. Errors name the step ("TCP connect: …"),
/// not the address.
pub async fn tcp_connect(addr: SocketAddr) -> Result<Async<TcpStream>, String> {
    let s = Async::<TcpStream>::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    s.get_ref()
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    Ok(s)
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// Connects to the cloud at `endpoint` as [`dial`] does, without remembering which address
/// answered.
pub async fn connect(
    endpoint: &Endpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<(WebSocketStream<ClientStream>, SocketAddr), LinkError> {
    let limit = dial::Limit::new(limit);
    let mut pacer = dial::Pacer::default();
    dial(
        endpoint,
        path,
        tls,
        limit,
        &mut pacer,
        &mut dial::LastGood::default(),
    )
    .await
}

/// Connects to the cloud at `endpoint`: TCP, TLS with `tls`, and the upgrade of `path` to a
/// WebSocket speaking the hub subprotocol, all within `limit` (handshake-timeout, and at most
/// `limit.attempts` attempts). Every address the host resolves to is tried the happy-eyeballs
/// way at the pace of `pacer` ([`dial::race`]), the one in `last_good` first, with fresh TCP
/// connections beside attempts that stay silent; an attempt on one address is all three steps:
/// an address that accepts TCP and then fails or stalls the TLS handshake or the upgrade does
/// not keep the others from being tried. Returns the WebSocket and the address that answered
/// (remembered in `last_good`).
///
/// Errors name every address tried and why it failed. The cloud's own answers end the dial at
/// once ([`LinkError::is_final`]): a refusal of this side's certificate (a TLS alert, or HTTP
/// 403: the certificate is not the node in the path) as [`LinkError::CertificateRefused`], any
/// other HTTP status before the upgrade as [`LinkError::Refused`], each with the status and
/// reason; [`LinkError::NoAnswer`] when nothing answered at all; anything else is
/// [`LinkError::Io`].
pub async fn dial(
    endpoint: &Endpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    limit: dial::Limit,
    pacer: &mut dial::Pacer,
    last_good: &mut dial::LastGood,
) -> Result<(WebSocketStream<ClientStream>, SocketAddr), LinkError> {
    let name = server_name(&endpoint.host).map_err(LinkError::Io)?;
    let addrs = dial::resolve(&endpoint.host, endpoint.port, limit)
        .await
        .map_err(LinkError::Io)?;
    let addrs = last_good.order(endpoint, addrs);
    let raced = dial::race(&addrs, pacer, limit, LinkError::verdict, |addr| {
        let (tls, name) = (tls.clone(), name.clone());
        async move {
            let tcp = tcp_connect(addr).await.map_err(LinkError::Io)?;
            upgrade(endpoint, path, tls, name, tcp).await
        }
    })
    .await;
    match raced {
        Ok((ws, peer)) => {
            last_good.remember(endpoint, peer);
            Ok((ws, peer))
        }
        Err(failed) => Err(LinkError::from_race(failed)),
    }
}

/// TLS and the WebSocket upgrade on a connected socket. Errors name the step, not the address.
async fn upgrade(
    endpoint: &Endpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    tcp: Async<TcpStream>,
) -> Result<WebSocketStream<ClientStream>, LinkError> {
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| io_link_error("TLS", &e))?;
    let url = format!("wss://{endpoint}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| LinkError::Io(format!("bad WebSocket URL {url}: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        WS_SUBPROTOCOL.parse().expect("a valid header value"),
    );
    match async_tungstenite::client_async_with_config(request, stream, Some(config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            let status = resp.status().as_u16();
            let why = format!("refused by the cloud: {status} {body}");
            // 403 is the cloud's answer to a certificate that is not the node in the path.
            Err(if status == 403 {
                LinkError::CertificateRefused(why)
            } else {
                LinkError::Refused(why)
            })
        }
        Err(tungstenite::Error::Io(e)) => Err(io_link_error("WebSocket upgrade", &e)),
        Err(e) => Err(LinkError::Io(format!("WebSocket upgrade: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pong_of_the_pending_ping_is_a_sample() {
        let live = Arc::new(Live::default());
        let pings = Pings {
            start: Instant::now() - Duration::from_secs(1),
            pending: AtomicU64::new(0),
            live: live.clone(),
        };
        assert_eq!(pings.pong(&0u64.to_be_bytes()), None, "no ping pending");
        let first = pings.stamp();
        let second = pings.stamp();
        assert_eq!(pings.pong(&first), None, "an older ping's pong");
        assert_eq!(pings.pong(b"garbage"), None, "a payload no ping had");
        assert!(live.rtt().is_none());
        let rtt = pings.pong(&second).expect("the pending ping's pong");
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
        assert_eq!(live.rtt(), Some(rtt));
        assert_eq!(pings.pong(&second), None, "answered once");
    }
}
