//! The node registry: who is connected, the node limit, and replacement of a node's older
//! connection by its newer one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use smol::channel::{Receiver, Sender};

use crate::config::Protocol;

/// One connected node, as listed by the registry.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: String,
    /// The transport it is connected over.
    pub protocol: Protocol,
    /// Its address.
    pub peer: SocketAddr,
    /// When this connection was admitted.
    pub since: SystemTime,
}

struct Entry {
    id: u64,
    info: NodeInfo,
    /// Dropped when a newer connection replaces this one.
    _replace: Sender<()>,
}

/// Connected nodes, bounded by `node-limit`.
pub struct Registry {
    limit: usize,
    next_id: AtomicU64,
    nodes: Mutex<HashMap<String, Entry>>,
}

/// A node's place in the registry; dropping it removes the node (unless a newer connection
/// already replaced it).
pub struct Admission {
    registry: Arc<Registry>,
    node_id: String,
    id: u64,
    replaced: Receiver<()>,
}

impl Admission {
    /// Finishes when a newer connection for the same node replaced this one.
    pub async fn replaced(&self) {
        let _ = self.replaced.recv().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut nodes = self.registry.lock();
        if nodes.get(&self.node_id).is_some_and(|e| e.id == self.id) {
            nodes.remove(&self.node_id);
        }
    }
}

impl Registry {
    /// An empty registry admitting at most `limit` nodes.
    pub fn new(limit: usize) -> Arc<Registry> {
        Arc::new(Registry {
            limit,
            next_id: AtomicU64::new(1),
            nodes: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node_id` would be admitted now: it is connected already (and would be replaced),
    /// or there is room.
    pub fn has_room_for(&self, node_id: &str) -> bool {
        let nodes = self.lock();
        nodes.contains_key(node_id) || nodes.len() < self.limit
    }

    /// Admits `node_id`, replacing its current connection if it has one; `None` when the node
    /// limit is reached.
    pub fn admit(
        self: &Arc<Self>,
        node_id: &str,
        protocol: Protocol,
        peer: SocketAddr,
    ) -> Option<Admission> {
        let mut nodes = self.lock();
        if !nodes.contains_key(node_id) && nodes.len() >= self.limit {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = smol::channel::bounded(1);
        let info = NodeInfo {
            node_id: node_id.to_owned(),
            protocol,
            peer,
            since: SystemTime::now(),
        };
        // Replacing the entry drops the old one's sender, which tells its connection.
        nodes.insert(
            node_id.to_owned(),
            Entry {
                id,
                info,
                _replace: tx,
            },
        );
        Some(Admission {
            registry: self.clone(),
            node_id: node_id.to_owned(),
            id,
            replaced: rx,
        })
    }

    /// The connected nodes, sorted by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut list: Vec<NodeInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    /// How many nodes are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no node is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn limit_replace_and_release() {
        let r = Registry::new(2);
        let a = r.admit("a", Protocol::Quic, addr()).unwrap();
        let _b = r.admit("b", Protocol::Websocket, addr()).unwrap();
        assert!(
            r.admit("c", Protocol::Quic, addr()).is_none(),
            "over the limit"
        );
        assert!(!r.has_room_for("c") && r.has_room_for("a"));

        let a2 = r
            .admit("a", Protocol::Websocket, addr())
            .expect("a node may replace itself at the limit");
        smol::block_on(a.replaced()); // finishes: a was replaced
        drop(a); // the old connection ending does not remove the new one
        assert_eq!(r.len(), 2);
        assert_eq!(r.nodes()[0].protocol, Protocol::Websocket);
        drop(a2);
        assert_eq!(r.len(), 1);
        assert!(r.admit("c", Protocol::Quic, addr()).is_some());
    }
}
