//! Cluster mode: several `hub cloud` instances sharing their state in NATS JetStream
//! (docs/cluster.md). Configured by the cloud file's `cluster:` section; without it the cloud is
//! the single process it always was and nothing here runs.
//!
//! The NATS client (`async-nats`) needs tokio: it runs on a runtime of its own, one thread
//! (`hub-nats`, current-thread scheduler), inside the cloud process. The smol side hands it work
//! with `Handle::spawn` and awaits the `JoinHandle`, which is an ordinary future. The cargo
//! feature `cluster` (on by default) brings the client in; a build without it (the gateway
//! release builds) refuses a `cluster:` section with one sentence.

#[cfg(feature = "cluster")]
mod down;
#[cfg(feature = "cluster")]
mod link;
#[cfg(feature = "cluster")]
mod nats;
#[cfg(feature = "cluster")]
mod up;
#[cfg(feature = "cluster")]
pub use down::DownLane;
#[cfg(feature = "cluster")]
pub use nats::{Cluster, ClusterAdmission, Refused, RemoteNode};

#[cfg(not(feature = "cluster"))]
mod off;
#[cfg(not(feature = "cluster"))]
pub use off::{Cluster, ClusterAdmission, Refused, RemoteNode};

use std::time::Duration;

/// How often each instance refreshes its liveness entry in the `hub_instances` bucket.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// An instance whose liveness entry was last refreshed longer ago than this is taken for dead:
/// its nodes are no longer listed, no longer count towards `node-limit`, and any instance may
/// admit them. Three heartbeats, so one lost or late refresh does not end an instance.
pub const LIVE_FOR: Duration = Duration::from_secs(3);

/// The JetStream key-value bucket of connected nodes: key = node id (with `.` written `=`, see
/// [`node_key`]), value = a JSON [`record`](nats) naming the instance that holds it.
pub const NODES_BUCKET: &str = "hub_nodes";

/// The JetStream key-value bucket of live instances: key = instance name, refreshed every
/// [`HEARTBEAT`]; entries older than [`LIVE_FOR`] expire.
pub const INSTANCES_BUCKET: &str = "hub_instances";

/// The JetStream key-value bucket of the node queues' stream ids and receive positions
/// (docs/cluster.md section 3): key `{node key}.{lane}.down` = the lane's `down_stream` id.
pub const POSITIONS_BUCKET: &str = "hub_positions";

/// The JetStream stream of the cloud-to-node queues: subject `hub.down.{node key}.{lane}`
/// (lane `u` or `b`), one message per queued message (docs/cluster.md section 3).
pub const DOWN_STREAM: &str = "HUB_DOWN";

/// The JetStream stream of what nodes sent: subject `hub.up.{node key}.{lane}`, one message per
/// message received, stored before the node's link acknowledges it (docs/cluster.md section 5).
pub const UP_STREAM: &str = "HUB_UP";

/// What the cluster holds to: `node-limit` and `queues.max-messages`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `node-limit`: nodes connected across the cluster.
    pub nodes: usize,
    /// `queues.max-messages`: messages queued per node and lane (the stream's per-subject
    /// limit, fixed by the instance that creates the stream).
    pub lane_messages: u64,
}

/// The key of `node_id` in [`NODES_BUCKET`]: the id with each `.` written `=` (ids never hold
/// `=`), since a `.` separates subject tokens and an id may hold `..`.
pub fn node_key(node_id: &str) -> String {
    node_id.replace('.', "=")
}

/// The node id of a [`NODES_BUCKET`] key (the inverse of [`node_key`]).
pub fn key_node(key: &str) -> String {
    key.replace('=', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_are_one_subject_token_and_map_back() {
        for id in ["edge-7", "a.b", "a..b", "x_y.z"] {
            let key = node_key(id);
            assert!(!key.contains('.'), "{key}");
            assert_eq!(key_node(&key), id);
        }
    }
}
