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
//! Answers given before the request was read whole close gracefully, so the client gets them. At most [`MAX_CONNECTIONS`] are served at once;
//! the others wait in the listen backlog.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use smol::Async;
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
    smol::spawn(async move {
        // One item per connection being served; a full channel holds the accept loop back.
        let (serving, served) = smol::channel::bounded::<()>(MAX_CONNECTIONS);
        loop {
            let accepted = smol::future::or(async { Some(listener.accept().await) }, async {
                shutdown.wait().await;
                None
            })
            .await;
            let Some(accepted) = accepted else { break };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    log::debug!("metrics endpoint: accept failed: {e}");
                    smol::Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if serving.send(()).await.is_err() {
                break;
            }
            let (ops, served) = (ops.clone(), served.clone());
            smol::spawn(async move {
                let _ = timeout(READ_TIMEOUT, serve(stream, &ops)).await;
                let _ = served.try_recv();
            })
            .detach();
        }
    })
    .detach();
    Ok(Some(local))
}

/// Answers one request on `stream`.
async fn serve(mut stream: Async<TcpStream>, ops: &Ops) -> std::io::Result<()> {
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
                let method = req.method.unwrap_or("").to_owned();
                let path = req.path.unwrap_or("");
                let path = path.split_once('?').map_or(path, |(p, _)| p).to_owned();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if len < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                let body = "request head too large\n";
                return answer_early(&mut stream, "400 Bad Request", "", body).await;
            }
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return answer_early(&mut stream, "400 Bad Request", "", &body).await;
            }
        }
    };
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        // RFC 9110 section 15.5.6: a 405 lists the methods the resource supports.
        let allow = "Allow: GET, HEAD\r\n";
        return answer_early(&mut stream, "405 Method Not Allowed", allow, "use GET\n").await;
    }
    match path.as_str() {
        "/metrics" => {
            let body = crate::metrics::expose(ops.side, &ops.gather);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            if with_body {
                stream.write_all(body.as_bytes()).await?;
            }
            stream.flush().await
        }
        "/healthz" => respond(&mut stream, "200 OK", "ok\n", with_body).await,
        "/readyz" => match (ops.ready)() {
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
/// dropped until it closes, [`LINGER_BYTES`] were read or [`LINGER`] passed.
async fn answer_early(
    stream: &mut Async<TcpStream>,
    status: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_with(stream, status, headers, body, true).await?;
    stream.get_ref().shutdown(std::net::Shutdown::Write)?;
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
    respond_with(stream, status, "", body, with_body).await
}

/// [`respond`] with `headers` (whole lines, each ending in CRLF) added to the head.
async fn respond_with(
    stream: &mut Async<TcpStream>,
    status: &str,
    headers: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
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
