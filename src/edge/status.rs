//! What `hub status` shows of a gateway's link to the cloud: the edge's `/status` answer on its
//! application endpoint (docs/api.md, "Status (edge)").
//!
//! The edge's loop reports each step ([`Status::connecting`], [`Status::opened`],
//! [`Status::ended`]); the link's own figures (round trip, messages in flight) are read from its
//! [`Live`] and the outbox's length from the outbox when asked, so nothing is copied per message.
//!
//! What is queued *down* (in the cloud's queue for this node) is not known to the edge: the
//! protocol tells it where the cloud's queue starts, not where it ends. The cloud's `hub nodes`
//! shows it (QUEUED). The edge shows what it can know of that direction: messages received from
//! the cloud and not yet acknowledged to it (`in_flight_down`), which the cloud still holds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::Protocol;
use crate::exchange::LaneStores;
use crate::metrics::Cause;
use crate::transport::Live;

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling the cloud, or waiting for its WELCOME.
    Connecting,
    /// The link is open.
    Open,
    /// Between links: waiting before the next attempt, or stopped.
    Offline,
}

impl LinkState {
    /// As `/status` and `hub status` name it.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Open => "open",
            LinkState::Offline => "offline",
        }
    }
}

/// Why the link last ended (or an attempt failed), and when.
#[derive(Debug, Clone)]
struct LastError {
    cause: Cause,
    text: String,
    at: SystemTime,
}

#[derive(Debug)]
struct State {
    link: LinkState,
    protocol: Protocol,
    /// What the edge dials: `wss://HOST:PORT/PATH` or QUIC's `HOST:PORT`.
    cloud: String,
    /// The address the open link reached.
    peer: Option<SocketAddr>,
    up_since: Option<SystemTime>,
    live: Option<Arc<Live>>,
    last_error: Option<LastError>,
    reconnects: u64,
}

/// The link's state as `hub status` shows it; shared by the edge's loop and its application
/// endpoint.
#[derive(Debug)]
pub struct Status {
    node_id: String,
    project_id: String,
    state: Mutex<State>,
}

impl Status {
    /// Connecting over `protocol` for node `node_id` of `project_id`, nothing else known yet.
    pub fn new(node_id: &str, project_id: &str, protocol: Protocol) -> Arc<Status> {
        Arc::new(Status {
            node_id: node_id.to_owned(),
            project_id: project_id.to_owned(),
            state: Mutex::new(State {
                link: LinkState::Connecting,
                protocol,
                cloud: String::new(),
                peer: None,
                up_since: None,
                live: None,
                last_error: None,
                reconnects: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection attempt to `cloud` over `protocol` begins.
    pub fn connecting(&self, protocol: Protocol, cloud: String) {
        let mut s = self.lock();
        s.link = LinkState::Connecting;
        s.protocol = protocol;
        s.cloud = cloud;
        s.peer = None;
        s.up_since = None;
        s.live = None;
    }

    /// The link to `peer` is open; `live` are its figures.
    pub fn opened(&self, peer: SocketAddr, live: Arc<Live>) {
        let mut s = self.lock();
        s.link = LinkState::Open;
        s.peer = Some(peer);
        s.up_since = Some(SystemTime::now());
        s.live = Some(live);
    }

    /// The link ended, or the attempt failed, for `cause` (`text` as logged): counted as a
    /// reconnect. `None`: the edge is stopping.
    pub fn ended(&self, why: Option<(Cause, &str)>) {
        let mut s = self.lock();
        s.link = LinkState::Offline;
        s.up_since = None;
        s.live = None;
        if let Some((cause, text)) = why {
            s.reconnects += 1;
            s.last_error = Some(LastError {
                cause,
                text: text.to_owned(),
                at: SystemTime::now(),
            });
        }
    }

    /// The `/status` answer: one JSON object (docs/api.md, "Status (edge)"), with the outbox's
    /// messages (`queued_up`) read from `outbox` now.
    pub fn json(&self, outbox: &LaneStores) -> String {
        let s = self.lock();
        let ms = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64)
        };
        let live = s.live.as_deref();
        serde_json::json!({
            "node_id": self.node_id,
            "project_id": self.project_id,
            "link": s.link.name(),
            "protocol": s.protocol.name(),
            "cloud": s.cloud,
            "address": s.peer.map(|p| p.to_string()),
            "up_since": s.up_since.and_then(ms),
            "rtt_ms": live
                .and_then(Live::rtt)
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            "queued_up": outbox.len(),
            "in_flight_up": live.map_or(0, Live::in_flight),
            "in_flight_down": live.map_or(0, Live::received_unacknowledged),
            "last_cause": s.last_error.as_ref().map(|e| e.cause.label()),
            "last_error": s.last_error.as_ref().map(|e| e.text.as_str()),
            "last_error_at": s.last_error.as_ref().and_then(|e| ms(e.at)),
            "reconnects": s.reconnects,
        })
        .to_string()
    }
}
