//! The application side of the local endpoint, behind `hub pub`, `hub sub`, `hub req` and
//! `hub nodes`: a WebSocket client over TCP (`ws://HOST:PORT`) or a unix socket (`unix:PATH`).

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message as WsMessage;
use smol::Async;
use smol::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use smol::stream::StreamExt;

use crate::message::Message;
use crate::transport::timeout;

/// A connection to a hub's application endpoint.
pub enum Stream {
    /// TCP.
    Tcp(Async<TcpStream>),
    /// A unix socket.
    Unix(Async<UnixStream>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
            Stream::Unix(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// An open application connection.
pub type Connection = WebSocketStream<Stream>;

/// Connects to the endpoint at `url` (`ws://HOST:PORT` or `unix:PATH`), requesting `path`
/// (with its query).
pub async fn connect(url: &str, path: &str) -> Result<Connection, String> {
    let (stream, request) = if let Some(sock) = url.strip_prefix("unix:") {
        let s = Async::<UnixStream>::connect(sock)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        (Stream::Unix(s), format!("ws://localhost{path}"))
    } else if let Some(addr) = url.strip_prefix("ws://") {
        let addr = addr.trim_end_matches('/');
        let s = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {url}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let s = Async::new(s).map_err(|e| e.to_string())?;
        (Stream::Tcp(s), format!("ws://{addr}{path}"))
    } else {
        return Err(format!("{url:?} is not ws://HOST:PORT or unix:PATH"));
    };
    async_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| format!("cannot open the application endpoint {url}: {e}"))
}

/// The next message from the hub; `None` when the connection ended.
pub async fn next(ws: &mut Connection) -> Option<Result<Message, String>> {
    loop {
        return match ws.next().await? {
            Ok(WsMessage::Text(t)) => Some(Message::from_json(&t).map_err(|e| e.to_string())),
            Ok(WsMessage::Close(_)) => None,
            Ok(_) => continue,
            Err(e) => Some(Err(e.to_string())),
        };
    }
}

/// Whether `m` is the hub's notice about message `id` (`accepted` or `error`).
pub fn is_notice(m: &Message, id: &str) -> bool {
    m.source == "hub"
        && m.group == "hub"
        && m.parent_id == id
        && matches!(m.operation.as_str(), "accepted" | "error")
}

/// The error text of an `error` notice.
pub fn notice_error(m: &Message) -> String {
    serde_json::from_slice::<serde_json::Value>(&m.content)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&m.content).into_owned())
}

/// Content given on the command line: JSON if it parses as JSON, else a JSON string.
pub fn content_arg(text: &str) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(_) => text.trim().as_bytes().to_vec(),
        Err(_) => serde_json::Value::String(text.to_owned())
            .to_string()
            .into_bytes(),
    }
}

/// Publishes `msg` and waits for its notice; `Ok` once the hub accepted it.
pub async fn publish(ws: &mut Connection, msg: &Message) -> Result<(), String> {
    ws.send(WsMessage::text(msg.to_json()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(m) = next(ws).await {
        let m = m?;
        if is_notice(&m, &msg.id) {
            return match m.operation.as_str() {
                "accepted" => Ok(()),
                _ => Err(notice_error(&m)),
            };
        }
    }
    Err("the hub closed the connection".into())
}

/// Publishes one message per line read from `input` (each line is content, see
/// [`content_arg`]), pipelined; returns (accepted, refused), printing each refusal to stderr.
pub async fn publish_lines<R: AsyncRead + Unpin>(
    ws: Connection,
    template: Message,
    input: R,
) -> Result<(u64, u64), String> {
    let (mut tx, mut rx) = ws.split();
    // How many were sent, once all were (u64::MAX until then).
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let known = total.clone();
    let counter = smol::spawn(async move {
        let (mut accepted, mut refused) = (0u64, 0u64);
        loop {
            if accepted + refused >= known.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let Some(item) = rx.next().await else { break };
            let Ok(WsMessage::Text(t)) = item else {
                if item.is_err() {
                    break;
                }
                continue;
            };
            let Ok(m) = Message::from_json(&t) else {
                continue;
            };
            if m.source == "hub" && m.group == "hub" {
                match m.operation.as_str() {
                    "accepted" => accepted += 1,
                    "error" => {
                        refused += 1;
                        eprintln!("refused {}: {}", m.parent_id, notice_error(&m));
                    }
                    _ => {}
                }
            }
        }
        (accepted, refused)
    });
    let mut lines = BufReader::new(input).lines();
    let mut sent = 0u64;
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let mut msg = Message {
            id: String::new(),
            timestamp: 0,
            content: content_arg(&line),
            ..template.clone()
        };
        msg.fill_header();
        tx.send(WsMessage::text(msg.to_json()))
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
    }
    total.store(sent, std::sync::atomic::Ordering::SeqCst);
    if sent == 0 {
        return Ok((0, 0));
    }
    // Wake the counter in case every notice already arrived.
    let _ = tx.send(WsMessage::Ping(Vec::new().into())).await;
    let result = counter.await;
    let _ = tx.close(None).await;
    Ok(result)
}

/// Sends sync request `msg` and waits at most `wait` for the answer: `Ok(response)`, or the
/// error (the hub's request timeout, no application subscribed, refused, …).
pub async fn request(
    ws: &mut Connection,
    msg: &Message,
    wait: Duration,
) -> Result<Message, String> {
    ws.send(WsMessage::text(msg.to_json()))
        .await
        .map_err(|e| e.to_string())?;
    let answer = async {
        while let Some(m) = next(ws).await {
            let m = m?;
            if m.parent_id != msg.id {
                continue;
            }
            if m.source == "hub" && m.group == "hub" {
                match m.operation.as_str() {
                    "accepted" => continue,
                    "error" => return Err(notice_error(&m)),
                    _ => {}
                }
            }
            return Ok(m);
        }
        Err("the hub closed the connection".into())
    };
    timeout(wait, answer)
        .await
        .unwrap_or_else(|| Err(format!("no answer within {:.1}s", wait.as_secs_f64())))
}
