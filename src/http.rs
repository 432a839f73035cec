//! The operations endpoint (`metrics.listen`): Prometheus metrics and health checks over plain
//! HTTP/1.1, for a Prometheus server, a load balancer or an init system.
//!
//! - `GET /metrics`: [`crate::metrics::expose`], `text/plain; version=0.0.4`.
//! - `GET /healthz`: `200 ok` while the process serves requests at all.
//! - `GET /readyz`: `200` with one line saying why the hub is ready, or `503` with one line
//!   saying what it waits for; what "ready" means is the hub's own [`Ops::ready`] (README,
//!   "Operations").
//!
//! `HEAD` is answered like `GET` without the body; other methods get `405` with `Allow: GET,
//! HEAD` (RFC 9110 section 15.5.6), other paths `404`. Every response closes the connection
//! (RFC 9112 section 9.6, `Connection: close`). Requests are parsed by `httparse`; a request head
//! over [`MAX_HEAD`] bytes is answered `400`, one not complete within [`READ_TIMEOUT`] is closed.
//! Answers given before the request was read whole close gracefully, so the client gets them.
//! At most [`MAX_CONNECTIONS`] are served at once; when all are taken, a new connection takes
//! the place of the oldest one that has not sent its whole request head (so stalled clients
//! cannot keep a probe waiting), and waits in the listen backlog only while all of them are
//! being answered. A request target in absolute form (`http://host/readyz`, RFC 9112 section
//! 3.2.2) is answered for its path.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smol::Async;
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{Gather, Side};
use crate::shutdown::Shutdown;
use crate::transport::timeout;

/// The largest request head read, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head, and to take the response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// What the endpoint serves for one hub.
pub struct Ops {
    /// Which hub this is.
    pub side: Side,
    /// The hub's live metrics, added to [`crate::metrics::METRICS`] at each scrape.
    pub gather: Gather,
    /// Whether the hub is ready: `Ok(why)` or `Err(what it waits for)`, one line each.
    pub ready: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
}

/// Starts serving `ops` on `listen` (nothing when `None`); returns the bound address.
///
/// Errors: the address cannot be bound (one sentence naming it).
pub fn start(
    listen: Option<SocketAddr>,
    ops: Arc<Ops>,
    shutdown: Shutdown,
) -> Result<Option<SocketAddr>, String> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = Async::<TcpListener>::bind(addr)
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let local = listener.get_ref().local_addr().map_err(|e| e.to_string())?;
    if !local.ip().is_loopback() {
        log::info!("metrics and health listening on http://{local} (beyond this machine)");
    } else {
        log::info!("metrics and health listening on http://{local}");
    }
    smol::spawn(accept_loop(listener, ops, shutdown)).detach();
    Ok(Some(local))
}

/// One connection being served, as the accept loop sees it.
struct Conn {
    /// Whether it is idle: its request head is still being read (or it is lingering after an
    /// early answer). Such a connection makes room for a new one when all places are taken.
    idle: AtomicBool,
    /// Whether it is over.
    done: AtomicBool,
}

/// Accepts connections until `shutdown` and serves each in a task of its own, at most
/// [`MAX_CONNECTIONS`] at once. When all places are taken, a new connection takes the place of
/// the oldest idle one ([`Conn::idle`]), which is closed without an answer: connections that
/// send nothing, or a head a byte at a time, cannot keep a probe or a scrape waiting for
/// [`READ_TIMEOUT`]. Only when every place is answering a request does a new connection wait
/// (in the listen backlog) for one to finish.
async fn accept_loop(listener: Async<TcpListener>, ops: Arc<Ops>, shutdown: Shutdown) {
    // Each connection's task holds the receiver of its channel: dropping the sender here ends it.
    let mut serving: VecDeque<(Arc<Conn>, smol::channel::Sender<()>)> = VecDeque::new();
    // A token when some connection ended.
    let (ended, ends) = smol::channel::bounded::<()>(1);
    loop {
        let accepted = smol::future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log::debug!("metrics endpoint: accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            serving.retain(|(c, _)| !c.done.load(Ordering::Relaxed));
            if serving.len() < MAX_CONNECTIONS {
                break;
            }
            if let Some(i) = serving
                .iter()
                .position(|(c, _)| c.idle.load(Ordering::Relaxed))
            {
                serving.remove(i);
                log::debug!(
                    "metrics endpoint: closed a connection without a whole request to serve a new one"
                );
                break;
            }
            let token = smol::future::or(async { ends.recv().await.ok() }, async {
                shutdown.wait().await;
                None
            })
            .await;
            if token.is_none() {
                return;
            }
        }
        let conn = Arc::new(Conn {
            idle: AtomicBool::new(true),
            done: AtomicBool::new(false),
        });
        let (evict, evicted) = smol::channel::bounded::<()>(1);
        serving.push_back((conn.clone(), evict));
        let (ops, ended) = (ops.clone(), ended.clone());
        smol::spawn(async move {
            let served = async {
                let _ = timeout(READ_TIMEOUT, serve(stream, &ops, &conn.idle)).await;
            };
            let evicted = async {
                let _ = evicted.recv().await;
            };
            served.or(evicted).await;
            conn.done.store(true, Ordering::Relaxed);
            let _ = ended.try_send(());
        })
        .detach();
        // Let the new connection read its request before the next one is accepted.
        smol::future::yield_now().await;
    }
}

/// The path of a request target: origin-form (`/readyz?x`) as it is, absolute-form
/// (`http://host:port/readyz?x`, which RFC 9112 section 3.2.2 says a server must accept) less
/// its scheme and authority; the query is left out of both.
fn target_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            rest.find(['/', '?']).map_or("/", |i| match &rest[i..] {
                p if p.starts_with('/') => p,
                _ => "/",
            })
        }
        _ => target,
    };
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Answers one request on `stream`; `idle` is cleared once its head was read.
async fn serve(
    mut stream: Async<TcpStream>,
    ops: &Arc<Ops>,
    idle: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let (method, path) = loop {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                idle.store(false, Ordering::Relaxed);
                let method = req.method.unwrap_or("").to_owned();
                let path = target_path(req.path.unwrap_or("")).to_owned();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if len < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                let body = "request head too large\n";
                return answer_early(&mut stream, "400 Bad Request", "", body, idle).await;
            }
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return answer_early(&mut stream, "400 Bad Request", "", &body, idle).await;
            }
        }
    };
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        // RFC 9110 section 15.5.6: a 405 lists the methods the resource supports.
        let allow = "Allow: GET, HEAD\r\n";
        let body = "use GET\n";
        return answer_early(&mut stream, "405 Method Not Allowed", allow, body, idle).await;
    }
    match path.as_str() {
        "/metrics" => {
            let body = crate::metrics::expose(ops.side, &ops.gather);
            respond_with(&mut stream, "200 OK", EXPOSITION, &body, with_body).await
        }
        "/healthz" => respond(&mut stream, "200 OK", "ok\n", with_body).await,
        // Off the executor: readiness may write a probe file, and a slow disk must not stall
        // the links that share the executor.
        "/readyz" => match smol::unblock({
            let ops = ops.clone();
            move || (ops.ready)()
        })
        .await
        {
            Ok(why) => respond(&mut stream, "200 OK", &format!("ready: {why}\n"), with_body).await,
            Err(why) => {
                let body = format!("not ready: {why}\n");
                respond(&mut stream, "503 Service Unavailable", &body, with_body).await
            }
        },
        _ => {
            let body = "no such path; use /metrics, /healthz or /readyz\n";
            respond(&mut stream, "404 Not Found", body, with_body).await
        }
    }
}

/// How long an early answer ([`answer_early`]) goes on reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// How many bytes it reads at most.
const LINGER_BYTES: usize = 1 << 20;

/// Answers a request that was not read whole (a bad or oversized head, a method whose body is
/// not taken) and closes without losing the answer. Closing a socket with unread input makes the
/// kernel send a reset, which can destroy the answer before the client reads it; so, as RFC 9112
/// section 9.6 asks, the write side is shut first and the client's remaining bytes are read and
/// dropped until it closes, [`LINGER_BYTES`] were read or [`LINGER`] passed. While it lingers,
/// the connection is `idle` again: a new one may take its place.
async fn answer_early(
    stream: &mut Async<TcpStream>,
    status: &str,
    headers: &str,
    body: &str,
    idle: &AtomicBool,
) -> std::io::Result<()> {
    respond_with(
        stream,
        status,
        &format!("{headers}{PLAIN_TEXT}"),
        body,
        true,
    )
    .await?;
    stream.get_ref().shutdown(std::net::Shutdown::Write)?;
    idle.store(true, Ordering::Relaxed);
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Writes a plain-text response and flushes it.
async fn respond(
    stream: &mut Async<TcpStream>,
    status: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    respond_with(stream, status, PLAIN_TEXT, body, with_body).await
}

/// The content type of plain answers.
const PLAIN_TEXT: &str = "Content-Type: text/plain; charset=utf-8\r\n";
/// The content type of `/metrics`: Prometheus' text exposition format 0.0.4.
const EXPOSITION: &str = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n";

/// A response whose head holds `headers` (whole lines, each ending in CRLF, the content type
/// among them), with `Content-Length` and `Connection: close`.
async fn respond_with(
    stream: &mut Async<TcpStream>,
    status: &str,
    headers: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await
}

/// Tells systemd the hub is ready (`READY=1`, sd_notify(3)) and, when the unit sets
/// `WatchdogSec=`, keeps petting the watchdog (`WATCHDOG=1`) at half its interval from a task on
/// the hub's executor: a hub whose executor stalls stops petting and systemd restarts it. Does
/// nothing outside systemd (no `NOTIFY_SOCKET`).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("cannot tell systemd the hub is ready: {e}");
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let every = (interval / 2).max(Duration::from_millis(100));
        smol::spawn(async move {
            loop {
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                    log::warn!("cannot pet systemd's watchdog: {e}");
                }
                smol::Timer::after(every).await;
            }
        })
        .detach();
    }
}

/// Tells systemd the hub is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
