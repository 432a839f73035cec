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
use async_tungstenite::tungstenite::error::Error as WsError;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use smol::Async;
use smol::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader};
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
    timeout(CONNECT_TIMEOUT, open(url, path))
        .await
        .unwrap_or_else(|| {
            Err(format!(
                "the application endpoint {url} did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })
}

/// How long [`connect`] waits for the endpoint to connect and upgrade: a hub that accepts and
/// never answers (one out of descriptors, or not a hub at all) must not hold a command forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn open(url: &str, path: &str) -> Result<Connection, String> {
    let (stream, request) = if let Some(sock) = url.strip_prefix("unix:") {
        let s = Async::<UnixStream>::connect(sock)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        (Stream::Unix(s), format!("ws://localhost{path}"))
    } else if let Some(addr) = url.strip_prefix("ws://") {
        let addr = addr.trim_end_matches('/');
        let s = tcp_connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        s.get_ref().set_nodelay(true).map_err(|e| e.to_string())?;
        (Stream::Tcp(s), format!("ws://{addr}{path}"))
    } else {
        return Err(format!("{url:?} is not ws://HOST:PORT or unix:PATH"));
    };
    async_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            // The hub says why it refused (e.g. 503: apps.max-connections reached).
            WsError::Http(resp) => {
                let why = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .filter(|b| !b.is_empty())
                    .map(|b| format!(": {b}"))
                    .unwrap_or_default();
                format!(
                    "the application endpoint {url} refused the connection: {}{why}",
                    resp.status()
                )
            }
            e => format!("cannot open the application endpoint {url}: {e}"),
        })
}

/// The hub's close code and reason when it closed the connection for a cause (anything but a
/// normal close), as one line for the user.
fn closed_for_a_cause(frame: Option<&CloseFrame>) -> Option<String> {
    let f = frame.filter(|f| f.code != CloseCode::Normal)?;
    Some(format!(
        "the hub closed the connection: {} {}",
        u16::from(f.code),
        f.reason
    ))
}

/// The next message from the hub; `None` when the connection ended normally, an error with the
/// hub's close code and reason when it closed the connection for a cause (RFC 6455 section 7.4:
/// 1008 for an application too slow to read, 1009 for a message too big, see `docs/api.md`).
pub async fn next(ws: &mut Connection) -> Option<Result<Message, String>> {
    loop {
        return match ws.next().await? {
            Ok(WsMessage::Text(t)) => Some(Message::from_json(&t).map_err(|e| e.to_string())),
            Ok(WsMessage::Close(f)) => closed_for_a_cause(f.as_ref()).map(Err),
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

/// Content given on the command line or read from a line: when `text` is JSON, its JSON text
/// unchanged (less surrounding whitespace), so that `-5`, `1.50` or `1e400` arrive exactly as
/// written, the way an application's content does (JSON is checked for syntax only; a number's
/// size is not limited); anything else becomes a JSON string.
pub fn content_arg(text: &str) -> Vec<u8> {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(raw) => raw.get().trim().as_bytes().to_vec(),
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

/// The longest line [`publish_input`] reads: the link's frame limit
/// ([`MAX_FRAME`](crate::proto::MAX_FRAME)), which no hub accepts a message beyond. Longer lines
/// are refused without being held in memory.
pub const MAX_LINE: usize = crate::proto::MAX_FRAME;

/// What became of the lines [`publish_input`] read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LineTotals {
    /// Lines the hub accepted (in its durable queue).
    pub accepted: u64,
    /// Lines refused, by the hub (over its size limit, queue full, ...) or before sending (not
    /// UTF-8, longer than [`MAX_LINE`]).
    pub refused: u64,
    /// Lines sent whose notice never came (the connection ended first).
    pub unconfirmed: u64,
    /// Why reading or sending stopped before the end of the input, if it did.
    pub stopped: Option<String>,
}

impl LineTotals {
    /// Whether every line was accepted and the whole input read.
    pub fn all_accepted(&self) -> bool {
        self.refused == 0 && self.unconfirmed == 0 && self.stopped.is_none()
    }
}

impl std::fmt::Display for LineTotals {
    /// `N accepted`, then `, N refused` and `, N unconfirmed` when there are any.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} accepted", self.accepted)?;
        if self.refused > 0 {
            write!(f, ", {} refused", self.refused)?;
        }
        if self.unconfirmed > 0 {
            write!(f, ", {} unconfirmed", self.unconfirmed)?;
        }
        Ok(())
    }
}

/// Reads the next line of `input` into `line`, without its `\n` (or `\r\n`), keeping at most
/// `max` bytes. Returns `None` at the end of the input, else `Some(length)` with the line's full
/// length, which exceeds `max` when the line was cut (the rest of it is read and dropped).
async fn read_line<R: AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<usize>> {
    line.clear();
    let mut length = 0usize;
    let mut any = false;
    loop {
        // `poll_fill_buf` once per chunk (futures-lite's `fill_buf` polls twice and panics when
        // the second poll of a reader at its end is pending).
        let (used, end) = std::future::poll_fn(|cx| {
            let chunk = match Pin::new(&mut *input).poll_fill_buf(cx) {
                Poll::Ready(Ok(chunk)) => chunk,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if chunk.is_empty() {
                return Poll::Ready(Ok((0, true)));
            }
            any = true;
            let (part, used, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], i + 1, true),
                None => (chunk, chunk.len(), false),
            };
            length += part.len();
            if length <= max {
                line.extend_from_slice(part);
            }
            Poll::Ready(Ok((used, end)))
        })
        .await?;
        Pin::new(&mut *input).consume(used);
        if end {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if length <= max && line.last() == Some(&b'\r') {
        line.pop();
        length -= 1;
    }
    Ok(Some(length))
}

/// Why a line is refused before it is sent: not UTF-8 (naming the first bad byte and its
/// column) or longer than `max` bytes.
fn refuse_line(line: &[u8], length: usize, max: usize) -> Result<&str, String> {
    if length > max {
        return Err(format!(
            "{length} bytes, over the {max}-byte limit of any message"
        ));
    }
    std::str::from_utf8(line).map_err(|e| {
        let at = e.valid_up_to();
        format!(
            "not UTF-8 text (byte 0x{:02x} at column {})",
            line[at],
            at + 1
        )
    })
}

/// Publishes one message per line of `input` (each line is content, see [`content_arg`];
/// blank lines are skipped), pipelined. Every bad line is refused on its own, with its line
/// number on standard error (`line 2: refused: not UTF-8 text ...`), and the rest continue:
/// lines that are not UTF-8 or longer than [`MAX_LINE`] are refused here, the hub refuses what
/// it cannot take (its notice names why). Returns the totals; the connection is closed at the
/// end.
pub async fn publish_input<R: AsyncRead + Unpin>(
    ws: Connection,
    template: Message,
    input: R,
) -> LineTotals {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let (mut tx, mut rx) = ws.split();
    // How many were sent, once all were (u64::MAX until then).
    let total = Arc::new(AtomicU64::new(u64::MAX));
    // The line number of each message awaiting its notice.
    let lines_of: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let known = total.clone();
    let pending = lines_of.clone();
    let counter = smol::spawn(async move {
        let (mut accepted, mut refused, mut closed) = (0u64, 0u64, None);
        while accepted + refused < known.load(Ordering::SeqCst) {
            let Some(item) = rx.next().await else { break };
            let t = match item {
                Ok(WsMessage::Text(t)) => t,
                Ok(WsMessage::Close(f)) => {
                    closed = closed_for_a_cause(f.as_ref());
                    break;
                }
                Err(_) => break,
                Ok(_) => continue,
            };
            let Ok(m) = Message::from_json(&t) else {
                continue;
            };
            if !(m.source == "hub" && m.group == "hub") {
                continue;
            }
            let line = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&m.parent_id);
            match m.operation.as_str() {
                "accepted" => accepted += 1,
                "error" => {
                    refused += 1;
                    let at = line.map_or_else(|| "a line".to_owned(), |n| format!("line {n}"));
                    crate::console::warn(format_args!(
                        "{at}: refused: {} (msg_id {})",
                        notice_error(&m),
                        m.parent_id
                    ));
                }
                _ => {}
            }
        }
        (accepted, refused, closed)
    });

    let mut totals = LineTotals::default();
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let (mut number, mut sent) = (0u64, 0u64);
    loop {
        let length = match read_line(&mut input, &mut line, MAX_LINE).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                totals.stopped = Some(format!("cannot read line {}: {e}", number + 1));
                break;
            }
        };
        number += 1;
        let text = match refuse_line(&line, length, MAX_LINE) {
            Ok(text) => text,
            Err(why) => {
                totals.refused += 1;
                crate::console::warn(format_args!("line {number}: refused: {why}"));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let mut msg = Message {
            id: String::new(),
            timestamp: 0,
            content: content_arg(text),
            ..template.clone()
        };
        msg.fill_header();
        lines_of
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg.id.clone(), number);
        if let Err(e) = tx.send(WsMessage::text(msg.to_json())).await {
            totals.stopped = Some(format!("cannot send line {number}: {e}"));
            break;
        }
        sent += 1;
    }
    total.store(sent, Ordering::SeqCst);
    if sent > 0 {
        // Wake the counter in case every notice already arrived.
        let _ = tx.send(WsMessage::Ping(Vec::new().into())).await;
    }
    let (accepted, refused, closed) = if sent > 0 {
        counter.await
    } else {
        (0, 0, None)
    };
    let _ = tx.close(None).await;
    totals.accepted = accepted;
    totals.refused += refused;
    totals.unconfirmed = sent.saturating_sub(accepted + refused);
    if closed.is_some() {
        // The hub's own reason explains the rest (a send that failed after it closed, lines left
        // unconfirmed) better than what this side saw of it.
        totals.stopped = closed;
    } else if totals.unconfirmed > 0 && totals.stopped.is_none() {
        totals.stopped = Some("the hub closed the connection before confirming every line".into());
    }
    totals
}

/// [`publish_input`] for callers that only count: `Ok((accepted, refused))` once every line was
/// read and each one's fate is known, else the reason it stopped.
pub async fn publish_lines<R: AsyncRead + Unpin>(
    ws: Connection,
    template: Message,
    input: R,
) -> Result<(u64, u64), String> {
    let totals = publish_input(ws, template, input).await;
    match totals.stopped {
        Some(why) => Err(why),
        None => Ok((totals.accepted, totals.refused)),
    }
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

/// Connects to the first address of `addr` (`HOST:PORT`) that takes the connection, without
/// blocking, so that [`CONNECT_TIMEOUT`] bounds it.
async fn tcp_connect(addr: &str) -> io::Result<Async<TcpStream>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for a in smol::net::resolve(addr).await? {
        match Async::<TcpStream>::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
