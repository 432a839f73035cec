//! The MQTT front-end: an MQTT 3.1.1 / 5.0 listener over the same routing core as the WebSocket
//! application API (see `docs/mqtt.md`).

pub mod auth;
pub mod codec;
pub mod server;
pub mod topic;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::apps::Apps;
use crate::config::{MqttConfig, QueueConfig};
use crate::local::Local;
use crate::sessions::Sessions;
use crate::shutdown::Shutdown;

/// The routing core's state kept beside a hub's queues in `dir`: local delivery with the
/// retained messages (`_retained`) and the durable sessions (`_sessions/`, each queue with the
/// limits of `mqtt.max-session-*` and `queue`'s fsync policy). Open it before the link starts
/// delivering, so durable sessions miss nothing.
///
/// Errors: the files cannot be read or made.
pub fn open_core(
    dir: &Path,
    request_timeout: Duration,
    mqtt: &MqttConfig,
    queue: &QueueConfig,
) -> Result<(Arc<Local>, Arc<Sessions>), String> {
    let retained = crate::retained::Retained::open(&dir.join("_retained"))?;
    let local = Arc::new(Local::with_retained(request_timeout, retained));
    let session_queue = QueueConfig {
        dir: dir.join("_sessions"),
        max_messages: mqtt.max_session_messages,
        max_bytes: mqtt.max_session_bytes,
        ..queue.clone()
    };
    let sessions = Sessions::open(&dir.join("_sessions"), session_queue, local.clone())?;
    Ok((local, sessions))
}

/// Starts the MQTT listener(s) over `apps` (see [`server::start`]); returns the plain address
/// bound, if any.
///
/// Errors: the password file cannot be read, an address cannot be bound.
pub fn start(
    config: &MqttConfig,
    apps: Arc<Apps>,
    sessions: Arc<Sessions>,
    shutdown: Shutdown,
) -> Result<Option<std::net::SocketAddr>, String> {
    if config.listen.is_none() && config.tls_listen.is_none() {
        return Ok(None);
    }
    let mqtt = server::Mqtt::new(apps, sessions, config)?;
    server::start(mqtt, shutdown)
}
