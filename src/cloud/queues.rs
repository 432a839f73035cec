//! The cloud's durable state per node: the queue of messages for it (kept while it is offline)
//! and what was received from it.
//!
//! Layout under `queues.dir`: `nodes/{node-id}/` holds the node's [`LaneStores`]: `out/` (the
//! bulk lane's queue) and `in.state`, `urgent-out/` and `urgent-in.state`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cluster::Cluster;
use crate::config::{QueueConfig, valid_id};
use crate::exchange::LaneStores;

/// Where the cloud keeps its nodes' queues and receive positions: on this process's disk (the
/// single cloud), or in the cluster's NATS JetStream (cluster mode, docs/cluster.md).
#[derive(Clone)]
pub enum CloudQueues {
    /// Under `queues.dir`.
    Disk(Arc<NodeQueues>),
    /// In JetStream, shared by every instance.
    Cluster(Arc<Cluster>),
}

/// Every node's streams, opened on first use.
pub struct NodeQueues {
    dir: PathBuf,
    config: QueueConfig,
    nodes: Mutex<HashMap<String, Arc<LaneStores>>>,
}

impl NodeQueues {
    /// Opens the queues of every node that has one under `config.dir`.
    pub fn open(config: &QueueConfig) -> Result<Arc<NodeQueues>, String> {
        let dir = config.dir.join("nodes");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let queues = Arc::new(NodeQueues {
            dir: dir.clone(),
            config: config.clone(),
            nodes: Mutex::new(HashMap::new()),
        });
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            // Followed through a symlink: a queue folder moved elsewhere and linked back is
            // still the node's queue.
            let is_dir = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
            match name.to_str().map(|n| (n, valid_id(n))) {
                Some((node, Ok(()))) if is_dir => {
                    queues.node(node)?;
                }
                Some((_, Ok(()))) => log::warn!(
                    "ignoring {}: not a node's queue (not a folder)",
                    entry.path().display()
                ),
                // Not made by this hub (or by an older one that took other spellings): left
                // alone, and said once, rather than read as some node's queue.
                Some((_, Err(why))) => log::warn!(
                    "ignoring {}: not a node's queue (node id {why})",
                    entry.path().display()
                ),
                None => log::warn!(
                    "ignoring {}: not a node's queue (the name is not UTF-8)",
                    entry.path().display()
                ),
            }
        }
        Ok(queues)
    }

    /// The streams of `node_id` if they are open already (every key here passed
    /// [`valid_id`], so a hit needs no check of its own).
    pub fn open_already(&self, node_id: &str) -> Option<Arc<LaneStores>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(node_id).cloned()
    }

    /// The streams of `node_id`, opening them if needed.
    pub fn node(&self, node_id: &str) -> Result<Arc<LaneStores>, String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(node_id) {
            return Ok(n.clone());
        }
        valid_id(node_id).map_err(|p| format!("node id {p}"))?;
        let base = self.dir.join(node_id);
        let streams = Arc::new(
            LaneStores::open(&base, &self.config).map_err(|e| format!("node {node_id}: {e}"))?,
        );
        nodes.insert(node_id.to_owned(), streams.clone());
        Ok(streams)
    }

    /// Closes the files of `node_id`'s queue and receive state if nothing is queued for it and
    /// nothing else uses them (its link ended); they are opened again when needed.
    pub fn release(&self, node_id: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let idle = nodes.get(node_id).is_some_and(|n| {
            Arc::strong_count(n) == 1
                && n.out.iter().all(|q| Arc::strong_count(q) == 1)
                && n.inbound.iter().all(|i| Arc::strong_count(i) == 1)
                && n.is_empty()
        });
        if idle {
            nodes.remove(node_id);
        }
    }

    /// Calls `f` with each node that has open queues (every node connected, and every node with
    /// messages queued for it), in no particular order.
    pub fn each(&self, mut f: impl FnMut(&str, &LaneStores)) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for (id, stores) in nodes.iter() {
            f(id, stores);
        }
    }

    /// Messages queued per node, for every node with a queue.
    pub fn queued(&self) -> Vec<(String, u64)> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<(String, u64)> =
            nodes.iter().map(|(k, v)| (k.clone(), v.len())).collect();
        list.sort();
        list
    }
}
