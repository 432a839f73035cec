//! Cluster mode left out of this build (cargo feature `cluster` off): the same names as the NATS
//! implementation, none of which can be made, so the cloud's calls into them are never reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cloud::Registry;
use crate::config::{ClusterConfig, Protocol};

/// Cluster mode, absent from this build.
pub enum Cluster {}

/// Never made in this build.
pub enum ClusterAdmission {}

/// Why the cluster refused a node (never, in this build).
#[derive(Debug)]
pub enum Refused {
    /// `node-limit` nodes are connected across the cluster.
    NodeLimit(usize),
    /// NATS did not answer.
    Unavailable(String),
}

/// A node held by another instance.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    /// The node id.
    pub node_id: String,
    /// The instance holding it.
    pub instance: String,
    /// Its transport, as that instance saw it.
    pub protocol: Option<Protocol>,
    /// Its address, as that instance saw it.
    pub address: String,
    /// When that instance admitted it.
    pub since: SystemTime,
}

impl Cluster {
    /// Fails: this build has no cluster mode.
    pub async fn start(
        _config: &ClusterConfig,
        _registry: Arc<Registry>,
        _limits: super::Limits,
    ) -> Result<Arc<Cluster>, String> {
        Err("this hub was built without cluster mode (cargo feature \"cluster\"); remove the cluster section or use a build that has it".into())
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        match *self {}
    }

    /// See the NATS implementation.
    pub async fn admit(
        &self,
        _node_id: &str,
        _local_id: u64,
        _protocol: Protocol,
        _peer: SocketAddr,
    ) -> Result<ClusterAdmission, Refused> {
        match *self {}
    }

    /// See the NATS implementation.
    pub fn has_room_for(&self, _node_id: &str) -> bool {
        match *self {}
    }

    /// See the NATS implementation.
    pub fn remote_nodes(&self) -> Vec<RemoteNode> {
        match *self {}
    }

    /// See the NATS implementation.
    pub async fn stop(&self) {
        match *self {}
    }

    /// See the NATS implementation.
    pub fn append(
        self: &Arc<Self>,
        _node_id: &str,
        _lane: crate::proto::frame::Lane,
        _record: Vec<u8>,
    ) -> std::future::Ready<Result<u64, String>> {
        match **self {}
    }

    /// See the NATS implementation.
    pub async fn node_lanes(
        self: &Arc<Self>,
        _node_id: &str,
    ) -> Result<Arc<dyn crate::exchange::SharedLanes>, String> {
        match **self {}
    }

    /// See the NATS implementation.
    pub fn holder(&self, _node_id: &str) -> Arc<smol::lock::Mutex<()>> {
        match *self {}
    }

    /// See the NATS implementation.
    pub fn deliver_up(self: &Arc<Self>, _local: Arc<crate::local::Local>) {
        match **self {}
    }

    /// See the NATS implementation.
    pub fn max_payload(&self) -> usize {
        match *self {}
    }
}
