//! The node registry: who is connected, the node limit, and replacement of a node's older
//! connection by its newer one. It keeps `hub_nodes_connected{protocol}`, each connected node's
//! live link figures ([`Live`]), and per node, connected or not, why its last link ended
//! ([`LastEnd`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::signal::{Latch, RaiseOnDrop};

use crate::config::Protocol;
use crate::metrics::{Cause, METRICS};
use crate::transport::Live;

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
    /// How many times since the cloud started a connection of this node that had itself
    /// replaced another was replaced in turn, from another address, within [`CONFLICT_WINDOW`]
    /// of being admitted: two gateways using one identity (a copied configuration, a stolen
    /// certificate) take turns like that.
    pub conflicts: u64,
    /// The link's live figures: round trip, messages in flight.
    pub live: Arc<Live>,
    /// Why the node's link before this one ended, if one did since the cloud started.
    pub last_end: Option<LastEnd>,
}

/// Why a node's link ended, as the cloud saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEnd {
    /// The cause.
    pub cause: Cause,
    /// What the cloud logged about it (at most 160 characters: `DETAIL_CHARS`).
    pub detail: String,
    /// When.
    pub at: SystemTime,
}

/// The longest [`LastEnd::detail`] kept, in characters: the peer's close reason is part of it.
pub const DETAIL_CHARS: usize = 160;

/// [`LastEnd`]s kept for nodes that are not connected, at least: beyond this (or twice
/// `node-limit`, if more) the oldest of them are forgotten.
pub const LAST_ENDS_KEPT: usize = 1024;

/// How soon a replacement must follow a replacement to count as an identity conflict (see
/// [`NodeInfo::conflicts`]). One replacement alone is what a gateway that restarted or moved to
/// another network does while the cloud still holds its dead link; it is the pushed-out gateway
/// coming back, replacing its replacer, that shows two of them.
pub const CONFLICT_WINDOW: Duration = Duration::from_secs(60);

/// A connected node, keyed by its id: what [`NodeInfo`] says of its link, without the id (the
/// key) and the history (kept apart, connected or not), so each of thousands of entries holds
/// only what is its own.
struct Entry {
    id: u64,
    admitted: Instant,
    /// Whether this connection replaced another when it was admitted.
    replaced_another: bool,
    protocol: Protocol,
    peer: SocketAddr,
    since: SystemTime,
    live: Arc<Live>,
    /// Dropped when a newer connection replaces this one, which raises its [`Admission`]'s latch.
    _replace: RaiseOnDrop,
}

/// Connected nodes, bounded by `node-limit`.
pub struct Registry {
    limit: usize,
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Entry>,
    /// [`NodeInfo::conflicts`] of every node that had one, connected or not.
    conflicts: HashMap<String, u64>,
    /// Why each node's last link ended, connected or not; bounded (see [`LAST_ENDS_KEPT`]).
    last_ends: HashMap<String, LastEnd>,
}

/// A node's place in the registry; dropping it removes the node (unless a newer connection
/// already replaced it).
pub struct Admission {
    registry: Arc<Registry>,
    node_id: String,
    id: u64,
    replaced: Arc<Latch>,
}

impl Admission {
    /// This connection ended for `cause` (`detail` as logged): kept as the node's last end.
    pub fn ended(&self, cause: Cause, detail: &str) {
        let detail: String = detail.chars().take(DETAIL_CHARS).collect();
        let end = LastEnd {
            cause,
            detail,
            at: SystemTime::now(),
        };
        let keep = self.registry.limit.saturating_mul(2).max(LAST_ENDS_KEPT);
        let mut state = self.registry.lock();
        let State {
            nodes, last_ends, ..
        } = &mut *state;
        if last_ends.len() >= keep && !last_ends.contains_key(&self.node_id) {
            // Forget the oldest ends of nodes that are away, down to half the bound: sorting
            // once per `keep / 2` new nodes costs little per node.
            let mut away: Vec<(SystemTime, String)> = last_ends
                .iter()
                .filter(|(id, _)| !nodes.contains_key(*id))
                .map(|(id, e)| (e.at, id.clone()))
                .collect();
            away.sort_unstable();
            let excess = last_ends.len().saturating_sub(keep / 2);
            for (_, id) in away.into_iter().take(excess) {
                last_ends.remove(&id);
            }
        }
        last_ends.insert(self.node_id.clone(), end);
    }

    /// Finishes when a newer connection for the same node replaced this one.
    pub async fn replaced(&self) {
        self.replaced.wait().await;
    }

    /// Whether a newer connection for the same node replaced this one.
    pub fn is_replaced(&self) -> bool {
        self.replaced.is_raised()
    }

    /// This admission's id, unique within the process (see [`Registry::evict`]).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let nodes = &mut self.registry.lock().nodes;
        if nodes.get(&self.node_id).is_some_and(|e| e.id == self.id) {
            if let Some(e) = nodes.remove(&self.node_id) {
                METRICS.nodes_connected[e.protocol as usize].dec();
            }
        }
    }
}

impl Registry {
    /// The most nodes admitted at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty registry admitting at most `limit` nodes.
    pub fn new(limit: usize) -> Arc<Registry> {
        Arc::new(Registry {
            limit,
            next_id: AtomicU64::new(1),
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node_id` would be admitted now: it is connected already (and would be replaced),
    /// or there is room.
    pub fn has_room_for(&self, node_id: &str) -> bool {
        let nodes = &self.lock().nodes;
        nodes.contains_key(node_id) || nodes.len() < self.limit
    }

    /// Admits `node_id`, replacing its current connection if it has one; `None` when the node
    /// limit is reached. `live` are the link's figures, listed with the node.
    pub fn admit(
        self: &Arc<Self>,
        node_id: &str,
        protocol: Protocol,
        peer: SocketAddr,
        live: Arc<Live>,
    ) -> Option<Admission> {
        let mut state = self.lock();
        let State {
            nodes, conflicts, ..
        } = &mut *state;
        if !nodes.contains_key(node_id) && nodes.len() >= self.limit {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Latch::new());
        let now = Instant::now();
        let replacing = nodes.get(node_id);
        if let Some(old) = replacing {
            let up = now.saturating_duration_since(old.admitted);
            if old.replaced_another && old.peer != peer && up < CONFLICT_WINDOW {
                let n = conflicts.entry(node_id.to_owned()).or_default();
                *n += 1;
                log::warn!(
                    "node {node_id}: a connection from {peer} replaces the one from {} that connected {:.1}s ago, itself a replacement ({n} time(s) so far); two gateways may be using this node's identity (a copied configuration or a stolen certificate), or the gateway is restarting in a loop",
                    old.peer,
                    up.as_secs_f64()
                );
            }
        }
        if let Some(old) = replacing {
            METRICS.nodes_connected[old.protocol as usize].dec();
        }
        METRICS.nodes_connected[protocol as usize].inc();
        // Replacing the entry drops the old one's sender, which tells its connection.
        nodes.insert(
            node_id.to_owned(),
            Entry {
                id,
                admitted: now,
                replaced_another: replacing.is_some(),
                protocol,
                peer,
                since: SystemTime::now(),
                live,
                _replace: RaiseOnDrop(replaced.clone()),
            },
        );
        Some(Admission {
            registry: self.clone(),
            node_id: node_id.to_owned(),
            id,
            replaced,
        })
    }

    /// Removes admission `id` of `node_id` if it is still the node's current one, which tells its
    /// connection it was replaced (as [`admit`](Self::admit) does): cluster mode's replacement by
    /// a newer connection on another instance. Returns whether it was removed.
    pub fn evict(&self, node_id: &str, id: u64) -> bool {
        let nodes = &mut self.lock().nodes;
        if nodes.get(node_id).is_none_or(|e| e.id != id) {
            return false;
        }
        if let Some(e) = nodes.remove(node_id) {
            METRICS.nodes_connected[e.protocol as usize].dec();
        }
        true
    }

    /// The connected nodes, sorted by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let state = self.lock();
        let mut list: Vec<NodeInfo> = state
            .nodes
            .iter()
            .map(|(id, e)| NodeInfo {
                node_id: id.clone(),
                protocol: e.protocol,
                peer: e.peer,
                since: e.since,
                conflicts: state.conflicts.get(id).copied().unwrap_or(0),
                live: e.live.clone(),
                last_end: state.last_ends.get(id).cloned(),
            })
            .collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    /// [`NodeInfo::conflicts`] of `node_id`, connected or not.
    pub fn conflicts(&self, node_id: &str) -> u64 {
        self.lock().conflicts.get(node_id).copied().unwrap_or(0)
    }

    /// [`NodeInfo::conflicts`] and [`NodeInfo::last_end`] of each of `ids`, connected or not,
    /// under one lock.
    pub fn history<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(u64, Option<LastEnd>)> {
        let state = self.lock();
        ids.into_iter()
            .map(|id| {
                (
                    state.conflicts.get(id).copied().unwrap_or(0),
                    state.last_ends.get(id).cloned(),
                )
            })
            .collect()
    }

    /// How many nodes are connected.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
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
        let a = r
            .admit("a", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        let _b = r
            .admit("b", Protocol::Websocket, addr(), Arc::default())
            .unwrap();
        assert!(
            r.admit("c", Protocol::Quic, addr(), Arc::default())
                .is_none(),
            "over the limit"
        );
        assert!(!r.has_room_for("c") && r.has_room_for("a"));

        let a2 = r
            .admit("a", Protocol::Websocket, addr(), Arc::default())
            .expect("a node may replace itself at the limit");
        smol::block_on(a.replaced()); // finishes: a was replaced
        drop(a); // the old connection ending does not remove the new one
        assert_eq!(r.len(), 2);
        assert_eq!(r.nodes()[0].protocol, Protocol::Websocket);
        assert_eq!(r.nodes()[0].conflicts, 0, "the same address reconnecting");
        let elsewhere: SocketAddr = "127.0.0.2:2".parse().unwrap();
        let a3 = r
            .admit("a", Protocol::Quic, elsewhere, Arc::default())
            .unwrap();
        assert_eq!(r.nodes()[0].conflicts, 1, "another address, seconds later");
        drop(a2);
        drop(a3);
        assert_eq!(r.len(), 1, "a left");
        assert_eq!(r.conflicts("a"), 1, "kept while the node is away");
        let a4 = r
            .admit("a", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        assert_eq!(r.nodes()[0].conflicts, 1, "and when it is back");
        drop(a4);

        // A gateway that restarts (or moves) while the cloud holds its dead link replaces it
        // once: no conflict. The pushed-out one coming back, replacing its replacer, is one.
        let r = Registry::new(10);
        let _z = r
            .admit("z", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        let _z2 = r
            .admit("z", Protocol::Quic, elsewhere, Arc::default())
            .unwrap();
        assert_eq!(r.nodes()[0].conflicts, 0, "one replacement");
        let _z3 = r
            .admit("z", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        assert_eq!(r.nodes()[0].conflicts, 1, "the first gateway is back");
        assert_eq!(r.len(), 1);
        assert!(
            r.admit("c", Protocol::Quic, addr(), Arc::default())
                .is_some()
        );
    }

    #[test]
    fn the_last_end_is_kept_per_node_and_bounded() {
        let r = Registry::new(2);
        let a = r
            .admit("a", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        a.ended(Cause::ReadDeadline, "timeout: nothing received for 10.0s");
        drop(a);
        let a = r
            .admit("a", Protocol::Quic, addr(), Arc::default())
            .unwrap();
        let listed = r.nodes()[0]
            .last_end
            .clone()
            .expect("kept across connections");
        assert_eq!(listed.cause, Cause::ReadDeadline);
        assert_eq!(listed.detail, "timeout: nothing received for 10.0s");
        a.ended(Cause::Closed, &"x".repeat(1000));
        assert_eq!(
            r.history(["a"])[0].1.as_ref().unwrap().detail.len(),
            DETAIL_CHARS
        );

        // Many nodes come and go: the ends of those away are forgotten oldest first, the
        // connected node's is kept.
        for i in 0..3 * LAST_ENDS_KEPT {
            let id = format!("n{i}");
            let n = r.admit(&id, Protocol::Websocket, addr(), Arc::default());
            n.expect("room for one more")
                .ended(Cause::ConnectionLost, "");
        }
        let kept = r.lock().last_ends.len();
        assert!(kept <= LAST_ENDS_KEPT, "{kept}");
        let newest = format!("n{}", 3 * LAST_ENDS_KEPT - 1);
        let h = r.history(["a", "n0", newest.as_str()]);
        assert!(h[0].1.is_some(), "connected: kept");
        assert!(h[1].1.is_none(), "the oldest forgotten");
        assert!(h[2].1.is_some(), "the newest kept");
    }
}
