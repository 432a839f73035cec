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

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::SinkExt;
use smol::Async;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::StreamExt;

use crate::config::AppsConfig;
use crate::local::{Filter, Local};
use crate::message::{Message, split_node_resource};
use crate::queue::Queue;
use crate::shutdown::Shutdown;

/// Messages waiting for one application before it counts as too slow and is disconnected.
const APP_QUEUE: usize = 65536;
/// Publishes of one application awaiting their notice before the hub stops reading from it.
const IN_FLIGHT: usize = 4096;
/// Messages to one application written with one flush at most.
const WRITE_BATCH: usize = 256;

/// Where this hub sends what its applications publish.
pub enum Route {
    /// Edge: everything goes into the outbox, for the cloud.
    Edge(Arc<Queue>),
    /// Cloud: `node/{node-id}/…` goes into that node's queue, without the prefix.
    Cloud(Arc<crate::cloud::NodeQueues>),
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
}

type Accepted = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

impl Apps {
    /// Puts an application's message on its way; the future finishes once it is durable (for a
    /// request or a response: once it is written).
    fn publish(&self, msg: &mut Message) -> Result<Accepted, String> {
        let queue = match &self.route {
            Route::Edge(outbox) => outbox.clone(),
            Route::Cloud(queues) => {
                let (node, rest) = split_node_resource(&msg.resource)?;
                let queue = queues.out(node)?;
                msg.resource = rest.to_owned();
                queue
            }
        };
        let bytes = msg.encode().map_err(|e| e.to_string())?;
        if bytes.len() > self.max_message_bytes {
            return Err(format!(
                "message of {} bytes is over the {}-byte limit (apps.max-message-bytes)",
                bytes.len(),
                self.max_message_bytes
            ));
        }
        // Requests and responses are written but not synced on their own: they are useless after
        // a restart, which ends the requester's connection and its wait.
        let durable = !msg.sync && msg.parent_id.is_empty();
        Ok(Box::pin(queue.submit_with(vec![bytes], durable)))
    }
}

/// Serves the endpoint on the configured TCP address and unix socket until `shutdown`.
/// Returns the TCP address actually bound (the port may have been 0).
pub fn start(
    config: &AppsConfig,
    apps: Arc<Apps>,
    shutdown: Shutdown,
) -> Result<Option<SocketAddr>, String> {
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
        let (apps, shutdown) = (apps.clone(), shutdown.clone());
        smol::spawn(async move {
            let accept = || async {
                let (stream, _) = listener.accept().await?;
                let _ = stream.get_ref().set_nodelay(true);
                Ok(stream)
            };
            accept_loop(accept, apps, shutdown).await
        })
        .detach();
    }
    if let Some(path) = &config.unix {
        let listener = bind_unix(path)?;
        log::info!("apps listening on unix:{}", path.display());
        smol::spawn(async move {
            let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
            accept_loop(accept, apps, shutdown).await
        })
        .detach();
    }
    Ok(bound)
}

/// Serves each connection `accept` yields, until `shutdown`.
async fn accept_loop<S, F, Fut>(mut accept: F, apps: Arc<Apps>, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    loop {
        let accepted = async { Some(accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => smol::spawn(connection(stream, apps.clone())).detach(),
            Some(Err(e)) => {
                // Out of file descriptors, most likely: pause rather than spin.
                log::warn!("application accept failed: {e}");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
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

async fn connection<S>(stream: S, apps: Arc<Apps>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = Arc::new(Mutex::new(Target::default()));
    let seen = target.clone();
    let has_nodes = apps.nodes.is_some();
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let path = req.uri().path().to_owned();
        if path != "/" && !(path == "/nodes" && has_nodes) {
            let mut err = ErrorResponse::new(Some(format!("no such path {path}; use / or /nodes")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let mut t = seen.lock().unwrap_or_else(|e| e.into_inner());
        t.filter = parse_query(req.uri().query());
        t.path = path;
        Ok(resp)
    };
    let config = WebSocketConfig::default().read_buffer_size(crate::transport::ws::READ_BUFFER);
    let ws = match async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            log::debug!("application upgrade failed: {e}");
            return;
        }
    };
    let Target { path, filter } =
        std::mem::take(&mut *target.lock().unwrap_or_else(|e| e.into_inner()));
    if path == "/nodes" {
        let mut ws = ws;
        let list = apps.nodes.as_ref().map(|f| f()).unwrap_or_default();
        let _ = ws.send(WsMessage::text(list)).await;
        let _ = ws.close(None).await;
        return;
    }
    session(ws, filter, apps).await;
}

async fn session<S>(ws: WebSocketStream<S>, filter: Option<Filter>, apps: Arc<Apps>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let (out, out_rx) = smol::channel::bounded::<String>(APP_QUEUE);
    let subscription = filter.map(|f| apps.local.subscribe(f, out.clone()));

    // Writer: everything for this application, in order. Whatever is waiting goes out with one
    // flush (one write for many notices or messages, not one each).
    let writer = smol::spawn(async move {
        'open: while let Ok(text) = out_rx.recv().await {
            if tx.feed(WsMessage::text(text)).await.is_err() {
                break;
            }
            for _ in 1..WRITE_BATCH {
                let Ok(text) = out_rx.try_recv() else { break };
                if tx.feed(WsMessage::text(text)).await.is_err() {
                    break 'open;
                }
            }
            if tx.flush().await.is_err() {
                break;
            }
        }
        let _ = tx.close(None).await;
    });

    // Notices: each publish is answered in order, once durable.
    let (pending, pending_rx) = smol::channel::bounded::<(Message, Accepted)>(IN_FLIGHT);
    let notices_out = out.clone();
    let notices = smol::spawn(async move {
        while let Ok((about, accepted)) = pending_rx.recv().await {
            let notice = match accepted.await {
                Ok(_) => Message::notice(&about, "accepted", None),
                Err(e) => Message::notice(&about, "error", Some(&e)),
            };
            if notices_out.send(notice.to_json()).await.is_err() {
                break;
            }
        }
    });

    while let Some(Ok(frame)) = rx.next().await {
        let parsed = match &frame {
            WsMessage::Text(t) => Message::from_json(t.as_str()),
            WsMessage::Binary(b) => Message::from_json(&String::from_utf8_lossy(b)),
            WsMessage::Close(_) => break,
            _ => continue,
        };
        let mut msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                let _ = out
                    .send(
                        Message::notice(&Message::default(), "error", Some(&e.to_string()))
                            .to_json(),
                    )
                    .await;
                continue;
            }
        };
        msg.fill_header();
        // What a notice needs of the message: its id and resource (not a copy of its content).
        let about = Message {
            id: msg.id.clone(),
            resource: msg.resource.clone(),
            ..Message::default()
        };
        match apps.publish(&mut msg) {
            Ok(accepted) => {
                if msg.sync {
                    apps.local.await_response(&about, out.clone());
                }
                if pending.send((about, accepted)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = out
                    .send(Message::notice(&about, "error", Some(&e)).to_json())
                    .await;
            }
        }
        if out.is_closed() {
            break; // cut off as too slow
        }
    }
    if let Some(id) = subscription {
        apps.local.unsubscribe(id);
    }
    apps.local.forget(&out);
    drop(pending);
    let _ = notices.await;
    drop(out);
    let _ = writer.await;
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
}
