//! WebSocket transport: async-tungstenite over futures-rustls over smol's `Async<TcpStream>`.
//! Each WebSocket binary message carries one frame; the hub close code travels as WebSocket close
//! code `4000 + code`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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

use super::{Inbound, Link, LinkError, Outbound, deliver, dial, io_link_error, timeout};
use crate::config::{Endpoint, Protocol};
use crate::proto::{CloseCode, FrameError, MAX_FRAME, WS_SUBPROTOCOL};

/// The TLS stream the edge's WebSocket runs on.
pub type ClientStream = futures_rustls::client::TlsStream<Async<TcpStream>>;
/// The TLS stream the cloud's WebSocket runs on.
pub type ServerStream = futures_rustls::server::TlsStream<Async<TcpStream>>;

/// What one read from the TLS stream asks for. tungstenite zero-fills this much of its read
/// buffer before every read, so with its default (128 KiB) every idle connection kept 128 KiB
/// resident; a larger frame still gets a buffer of its own size, read in steps of this.
pub const READ_BUFFER: usize = 8 * 1024;

/// WebSocket limits: no message or frame over [`MAX_FRAME`]; reads of [`READ_BUFFER`].
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(READ_BUFFER)
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

/// Turns an upgraded WebSocket into a [`Link`], spawning its reader and writer tasks.
pub fn spawn_link<S>(ws: WebSocketStream<S>, peer: SocketAddr, write_deadline: Duration) -> Link
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (link, tasks) = Link::new(Protocol::Websocket, peer);
    let (mut tx, mut rx) = ws.split();
    let inbound = tasks.inbound.clone();
    let reader_inbound = tasks.inbound.clone();
    let budget = tasks.budget.clone();
    tasks.spawn_reader(async move {
        loop {
            let item = match rx.next().await {
                Some(Ok(Message::Binary(b))) => Inbound::Frame(b.to_vec()),
                Some(Ok(Message::Close(frame))) => Inbound::Closed(closed(frame)),
                Some(Ok(Message::Text(_))) => Inbound::Closed(LinkError::Frame(FrameError::Text)),
                Some(Ok(_)) => continue, // ping, pong: answered by tungstenite
                Some(Err(e)) => Inbound::Closed(link_error(e)),
                None => Inbound::Closed(LinkError::Eof),
            };
            if !deliver(&reader_inbound, &budget, item).await {
                return;
            }
        }
    });

    let outbound = tasks.outbound;
    let done = tasks.writer_done;
    smol::spawn(async move {
        while let Ok(out) = outbound.recv().await {
            match out {
                Outbound::Frame(f) => {
                    // Everything already waiting goes out with it, in one flush.
                    let mut close = None;
                    let batch = async {
                        tx.feed(Message::binary(f.encode())).await?;
                        while let Ok(more) = outbound.try_recv() {
                            match more {
                                Outbound::Frame(f) => tx.feed(Message::binary(f.encode())).await?,
                                Outbound::Close(code) => {
                                    close = Some(code);
                                    break;
                                }
                            }
                        }
                        tx.flush().await
                    };
                    let err = match timeout(write_deadline, batch).await {
                        Some(Ok(())) => match close {
                            None => continue,
                            Some(code) => {
                                let _ = timeout(write_deadline, tx.close(Some(close_frame(code))))
                                    .await;
                                break;
                            }
                        },
                        Some(Err(e)) => link_error(e),
                        None => LinkError::WriteTimeout(write_deadline),
                    };
                    let _ = inbound.send(Inbound::Closed(err)).await;
                    break;
                }
                Outbound::Close(code) => {
                    let _ = timeout(write_deadline, tx.close(Some(close_frame(code)))).await;
                    break;
                }
            }
        }
        let _ = done.try_send(());
    })
    .detach();
    link
}

/// Opens a TCP connection to `endpoint` with `TCP_NODELAY`, racing every address the host
/// resolves to ([`dial::race`]) within `limit`. The error names each address tried and why it
/// failed.
pub async fn tcp_connect(endpoint: &Endpoint, limit: Duration) -> Result<Async<TcpStream>, String> {
    let addrs = dial::resolve(&endpoint.host, endpoint.port).await?;
    let (stream, _) = dial::race(&addrs, dial::ATTEMPT_DELAY, limit, |addr| async move {
        let s = Async::<TcpStream>::connect(addr)
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        s.get_ref()
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        Ok::<_, String>(s)
    })
    .await
    .map_err(|failed| failed.to_string())?;
    Ok(stream)
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// Connects to the cloud at `endpoint` (every address it resolves to, see [`tcp_connect`]), runs
/// TLS with `tls` and upgrades `path` to a WebSocket speaking the hub subprotocol, all within
/// `limit`. A refusal before the upgrade comes back as its HTTP status and reason; a refusal of
/// this side's certificate (a TLS alert, or HTTP 403: the certificate is not the node in the
/// path) as [`LinkError::CertificateRefused`].
pub async fn connect(
    endpoint: &Endpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<(WebSocketStream<ClientStream>, SocketAddr), LinkError> {
    let started = std::time::Instant::now();
    let tcp = tcp_connect(endpoint, limit).await.map_err(LinkError::Io)?;
    let peer = tcp
        .get_ref()
        .peer_addr()
        .map_err(|e| LinkError::Io(e.to_string()))?;
    let rest = limit.saturating_sub(started.elapsed());
    timeout(rest, upgrade(endpoint, path, tls, tcp, peer))
        .await
        .unwrap_or_else(|| {
            Err(LinkError::Io(format!(
                "{peer}: no TLS handshake and upgrade within handshake-timeout ({limit:?})"
            )))
        })
        .map(|ws| (ws, peer))
}

/// TLS and the WebSocket upgrade on a connected socket.
async fn upgrade(
    endpoint: &Endpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    tcp: Async<TcpStream>,
    peer: SocketAddr,
) -> Result<WebSocketStream<ClientStream>, LinkError> {
    let stream = TlsConnector::from(tls)
        .connect(server_name(&endpoint.host).map_err(LinkError::Io)?, tcp)
        .await
        .map_err(|e| io_link_error(&format!("TLS with {peer}"), &e))?;
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
            let why = format!("refused by the cloud: {status} {body} ({peer})");
            // 403 is the cloud's answer to a certificate that is not the node in the path.
            Err(if status == 403 {
                LinkError::CertificateRefused(why)
            } else {
                LinkError::Io(why)
            })
        }
        Err(tungstenite::Error::Io(e)) => {
            Err(io_link_error(&format!("WebSocket upgrade with {peer}"), &e))
        }
        Err(e) => Err(LinkError::Io(format!("WebSocket upgrade with {peer}: {e}"))),
    }
}
