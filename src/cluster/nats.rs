//! Cluster mode on NATS JetStream: the connection on its own tokio runtime, the buckets, this
//! instance's liveness and the shared node registry.
//!
//! Every instance keeps a mirror ([`View`]) of the two buckets, fed by a watcher each:
//! [`NODES_BUCKET`] (which instance holds which node) and [`INSTANCES_BUCKET`] (which instances
//! are alive). Admissions are compare-and-set over the whole node bucket: a put carries
//! `Nats-Expected-Last-Sequence` = the last revision the mirror has seen, so of two instances
//! admitting at once only one succeeds; the other catches up, counts again and retries. This is
//! what holds `node-limit` across the cluster, and what orders two connections of one node.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::down::DownLane;
use super::{
    HEARTBEAT, INSTANCES_BUCKET, LIVE_FOR, Limits, NODES_BUCKET, POSITIONS_BUCKET, key_node,
    node_key,
};
use crate::cloud::Registry;
use crate::config::{ClusterConfig, Protocol};
use crate::proto::frame::Lane;

/// How long connecting to NATS at start may take before the cloud gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JetStream API request may wait for its answer.
const JS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one admission may take (catching up, counting, compare-and-set attempts).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's entry in [`NODES_BUCKET`], as JSON (docs/cluster.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The instance holding the node.
    instance: String,
    /// That instance's run: its start time in milliseconds since the epoch, so entries left by
    /// an earlier run of the same instance name are told apart.
    run: u64,
    /// The admission's id within that run.
    admission: u64,
    /// `websocket` or `quic`.
    protocol: String,
    /// The node's address as the instance saw it.
    address: String,
    /// When the instance admitted it, in milliseconds since the epoch.
    since: u64,
}

/// One instance's entry in [`INSTANCES_BUCKET`], as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Alive {
    run: u64,
    started: u64,
}

/// A node held by another instance, as listed by `hub nodes`.
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

/// Why the cluster refused to admit a node.
#[derive(Debug)]
pub enum Refused {
    /// `node-limit` nodes (the number given) are connected across the cluster.
    NodeLimit(usize),
    /// NATS did not confirm the admission (the text says why).
    Unavailable(String),
}

/// The mirror of both buckets.
struct View {
    /// Every node entry: its record, its revision and when it arrived here.
    nodes: HashMap<String, (Record, u64, Instant)>,
    /// The highest revision of the node bucket seen.
    revision: u64,
    /// Whether the watcher has delivered every entry there was when it started.
    current: bool,
    /// Each instance's run and when its liveness entry was last refreshed (local clock).
    instances: HashMap<String, (u64, Instant)>,
    /// The nodes this instance holds: local admission id and the revision of its entry.
    held: HashMap<String, (u64, u64)>,
    /// Since when this instance's own refreshes have been succeeding without a break (see
    /// [`live`](Self::live)).
    reachable_since: Instant,
    /// Whether this instance's last refresh failed.
    unreachable: bool,
}

impl Default for View {
    fn default() -> View {
        View {
            nodes: HashMap::new(),
            revision: 0,
            current: false,
            instances: HashMap::new(),
            held: HashMap::new(),
            reachable_since: Instant::now(),
            unreachable: false,
        }
    }
}

impl View {
    /// Whether the entry `r` (arrived here at `arrived`) names an instance run that is alive:
    /// `me` (this instance and run) always is; another when its liveness entry was refreshed
    /// within [`LIVE_FOR`], or, not seen yet (it may have announced itself a moment before this
    /// mirror heard of it), when the entry itself is that recent.
    ///
    /// Only time during which this instance could write its own refreshes counts: while NATS
    /// cannot store them (it is electing a stream leader after losing a server, or this
    /// instance lost its connection) the others cannot either, and are not taken for dead. So
    /// an instance is listed at most [`LIVE_FOR`] after its last refresh once NATS works.
    fn live(&self, r: &Record, arrived: Instant, me: (&str, u64), now: Instant) -> bool {
        if r.instance == me.0 {
            return r.run == me.1;
        }
        let fresh = |since: Instant| {
            self.unreachable || now.duration_since(since.max(self.reachable_since)) < LIVE_FOR
        };
        match self.instances.get(&r.instance) {
            Some((run, seen)) if *run == r.run => fresh(*seen),
            Some((run, _)) if *run > r.run => false, // an earlier run of a restarted instance
            _ => fresh(arrived),
        }
    }

    /// This instance's own refresh succeeded (`true`) or failed.
    fn refreshed(&mut self, ok: bool, now: Instant) {
        if ok && self.unreachable {
            self.reachable_since = now;
        }
        self.unreachable = !ok;
    }
}

/// How long a store in JetStream may take, from handing it to the client to its
/// acknowledgement, before it counts as failed.
pub(super) const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// This instance's place in the cluster: the NATS connection and the mirrors.
pub struct Cluster {
    pub(super) rt: Handle,
    instance: String,
    run: u64,
    limit: usize,
    /// `queues.max-messages`: records waiting per node and lane at most.
    pub(super) lane_messages: u64,
    pub(super) js: jetstream::Context,
    nodes: kv::Store,
    instances: kv::Store,
    /// Stream ids and receive positions ([`POSITIONS_BUCKET`]).
    pub(super) positions: kv::Store,
    /// The cloud-to-node queues ([`DOWN_STREAM`](super::DOWN_STREAM)).
    pub(super) down: jetstream::stream::Stream,
    /// What nodes sent ([`UP_STREAM`](super::UP_STREAM)).
    pub(super) up: jetstream::stream::Stream,
    /// Per node held here: held by the link using its lanes, so that a link replacing another
    /// on this instance starts once the other let go (see `Exchange::open`).
    holders: Mutex<HashMap<String, std::sync::Weak<smol::lock::Mutex<()>>>>,
    /// The lanes this instance appended to or read, each with its tail (see [`DownLane`]).
    pub(super) lanes: Mutex<HashMap<(String, Lane), Arc<super::down::LaneState>>>,
    view: Arc<Mutex<View>>,
    /// Bumped whenever the node mirror changes.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped at every connection to NATS.
    reconnected: tokio::sync::watch::Receiver<u64>,
    /// Held by the admission in progress: an instance's admissions go one at a time, since
    /// each is a compare-and-set over the whole bucket and concurrent ones from one instance
    /// would only defeat each other.
    admitting: tokio::sync::Mutex<()>,
    registry: Arc<Registry>,
}

/// A node's entry in the shared registry, made by [`Cluster::admit`]; dropping it removes the
/// entry, unless another connection of the node replaced it since.
pub struct ClusterAdmission {
    cluster: Arc<Cluster>,
    node_id: String,
    admission: u64,
}

impl Drop for ClusterAdmission {
    fn drop(&mut self) {
        let mut view = self.cluster.lock();
        let Some(&(admission, revision)) = view.held.get(&self.node_id) else {
            return;
        };
        if admission != self.admission {
            return;
        }
        view.held.remove(&self.node_id);
        drop(view);
        let nodes = self.cluster.nodes.clone();
        let key = node_key(&self.node_id);
        // Deleted only if the entry is still this one (a newer admission elsewhere wins).
        self.cluster.rt.spawn(async move {
            if let Err(e) = nodes.delete_expect_revision(&key, Some(revision)).await {
                log::debug!("cluster: node entry {key} not removed: {e}");
            }
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This instance's name (`cluster.instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Starts the NATS runtime, connects (one attempt through the listed servers, at most
    /// [`CONNECT_TIMEOUT`]; then reconnecting for ever), creates or opens the buckets, announces
    /// this instance and waits until the node mirror is current. `registry` is told of nodes
    /// that a newer connection on another instance replaced. Errors are one sentence naming the
    /// servers.
    pub async fn start(
        config: &ClusterConfig,
        registry: Arc<Registry>,
        limits: Limits,
    ) -> Result<Arc<Cluster>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the NATS runtime: {e}"))?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("hub-nats".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("cannot start the NATS thread: {e}"))?;
        let config = config.clone();
        let servers = config.servers.join(", ");
        let task = handle.clone();
        let started = handle
            .spawn(async move { Cluster::connect(config, task, registry, limits).await })
            .await
            .map_err(|e| format!("NATS runtime: {e}"))?;
        started.map_err(|e| format!("cluster: {e} (NATS at {servers})"))
    }

    async fn connect(
        config: ClusterConfig,
        rt: Handle,
        registry: Arc<Registry>,
        limits: Limits,
    ) -> Result<Arc<Cluster>, String> {
        // Bumped at every (re)connection: the watchers then watch again at once, rather than
        // after their consumer's missed heartbeats (see [`next_or_reconnected`]).
        let (connected, reconnected) = tokio::sync::watch::channel(0u64);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("hub cloud {}", config.instance))
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(JS_TIMEOUT))
            .max_reconnects(None)
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            log::info!("cluster: NATS connected");
                            connected.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            log::warn!("cluster: NATS disconnected; reconnecting")
                        }
                        other => log::info!("cluster: NATS {other}"),
                    }
                }
            });
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &config.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(creds) = &config.credentials {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| format!("cannot read {}: {e}", creds.display()))?;
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(&config.servers[..]))
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to NATS within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot connect to NATS: {e}"))?;
        let info = client.server_info();
        // A bucket is replicated on up to three servers of a NATS cluster.
        let replicas = info.connect_urls.len().clamp(1, 3);
        let mut js = jetstream::new(client);
        // JetStream API requests (watches, stream lookups) give up after this and are tried
        // again: while NATS elects leaders after losing a server, an unanswered request would
        // otherwise hold a watcher for the client's default 10 s.
        js.set_timeout(JS_TIMEOUT);
        let nodes = bucket(
            &js,
            NODES_BUCKET,
            "hub: which cloud instance holds which node",
            Duration::ZERO,
            jetstream::stream::StorageType::File,
            replicas,
        )
        .await?;
        let instances = bucket(
            &js,
            INSTANCES_BUCKET,
            "hub: live cloud instances",
            LIVE_FOR,
            // On disk: a memory stream is gone after the NATS servers restart, and with it
            // the instances' liveness (a dead instance's nodes would stay listed for ever).
            jetstream::stream::StorageType::File,
            replicas,
        )
        .await?;
        let positions = bucket(
            &js,
            POSITIONS_BUCKET,
            "hub: stream ids and receive positions of the node queues",
            Duration::ZERO,
            jetstream::stream::StorageType::File,
            replicas,
        )
        .await?;
        let down = super::down::stream(&js, limits.lane_messages, replicas).await?;
        let up = super::up::stream(&js, replicas).await?;
        let run = now_ms();
        let (changed, _) = tokio::sync::watch::channel(0);
        let cluster = Arc::new(Cluster {
            rt,
            instance: config.instance.clone(),
            run,
            limit: limits.nodes,
            lane_messages: limits.lane_messages,
            js,
            nodes,
            instances,
            positions,
            down,
            up,
            holders: Mutex::default(),
            lanes: Mutex::default(),
            view: Arc::default(),
            changed,
            reconnected,
            admitting: tokio::sync::Mutex::new(()),
            registry,
        });
        name_is_free(&cluster.instances, &cluster.instance).await?;
        let alive = serde_json::to_vec(&Alive { run, started: run }).unwrap_or_default();
        cluster
            .instances
            .put(&cluster.instance, alive.clone().into())
            .await
            .map_err(|e| format!("cannot announce instance {}: {e}", cluster.instance))?;
        tokio::spawn(heartbeat(cluster.clone(), alive.into()));
        tokio::spawn(watch_instances(cluster.clone()));
        tokio::spawn(watch_nodes(cluster.clone()));
        let mut changed = cluster.changed.subscribe();
        let current = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while !cluster.lock().current {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if current.is_err() {
            return Err("the node registry did not load".into());
        }
        log::info!(
            "cluster: instance {} joined (NATS server {} {}, buckets on {replicas} server(s))",
            cluster.instance,
            info.server_name,
            info.version
        );
        Ok(cluster)
    }

    /// Enters node `node_id` (its local admission `local_id`) in the shared registry as held by
    /// this instance, replacing its entry on any other instance (which then closes that link
    /// with "replaced by a newer connection"). Refused when `node-limit` other live nodes are
    /// listed. Waits for NATS's acknowledgement, at most [`ADMIT_TIMEOUT`].
    pub async fn admit(
        self: &Arc<Self>,
        node_id: &str,
        local_id: u64,
        protocol: Protocol,
        peer: SocketAddr,
    ) -> Result<ClusterAdmission, Refused> {
        let record = Record {
            instance: self.instance.clone(),
            run: self.run,
            admission: local_id,
            protocol: protocol.name().into(),
            address: peer.to_string(),
            since: now_ms(),
        };
        let this = self.clone();
        let node = node_id.to_owned();
        let _revision = self
            .rt
            .spawn(async move {
                tokio::time::timeout(ADMIT_TIMEOUT, this.admit_cas(&node, &record))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Refused::Unavailable(format!(
                            "the cluster registry did not confirm within {}s",
                            ADMIT_TIMEOUT.as_secs()
                        )))
                    })
            })
            .await
            .map_err(|e| Refused::Unavailable(format!("NATS runtime: {e}")))??;
        Ok(ClusterAdmission {
            cluster: self.clone(),
            node_id: node_id.to_owned(),
            admission: local_id,
        })
    }

    /// The compare-and-set loop of [`admit`](Self::admit); runs on the NATS runtime.
    async fn admit_cas(&self, node_id: &str, record: &Record) -> Result<u64, Refused> {
        let key = node_key(node_id);
        let subject = format!("$KV.{NODES_BUCKET}.{key}");
        let payload: bytes::Bytes = serde_json::to_vec(record).unwrap_or_default().into();
        let _turn = self.admitting.lock().await;
        let mut changed = self.changed.subscribe();
        let mut expected_at_least = 0;
        loop {
            // Wait until the mirror has seen every write the last refusal told of.
            while self.lock().revision < expected_at_least {
                if changed.changed().await.is_err() {
                    return Err(Refused::Unavailable("the registry watcher stopped".into()));
                }
            }
            let (others, expected) = {
                let view = self.lock();
                let now = Instant::now();
                let me = (self.instance.as_str(), self.run);
                let others = view
                    .nodes
                    .iter()
                    .filter(|(id, (r, _, at))| *id != node_id && view.live(r, *at, me, now))
                    .count();
                (others, view.revision)
            };
            log::debug!(
                "cluster: admitting {node_id}: {others} other live node(s), registry at revision {expected}"
            );
            if others >= self.limit {
                return Err(Refused::NodeLimit(self.limit));
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
            let ack = async {
                self.js
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?
                    .await
            }
            .await;
            match ack {
                Ok(ack) => {
                    let mut view = self.lock();
                    view.held
                        .insert(node_id.to_owned(), (record.admission, ack.sequence));
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    // Another write came first: catch up with it and count again.
                    let last = self
                        .js
                        .get_stream(format!("KV_{NODES_BUCKET}"))
                        .await
                        .map_err(|e| Refused::Unavailable(e.to_string()))?
                        .get_info()
                        .await
                        .map_err(|e| Refused::Unavailable(e.to_string()))?
                        .state
                        .last_sequence;
                    expected_at_least = last.max(expected + 1);
                }
                Err(e) => return Err(Refused::Unavailable(format!("NATS: {e}"))),
            }
        }
    }

    /// Lane `lane` of `node_id`'s cloud-to-node queue in JetStream (docs/cluster.md section 4).
    /// Every handle of one lane on this instance shares its tail, so the instance's appends to a
    /// lane go one at a time.
    pub fn down_lane(self: &Arc<Self>, node_id: &str, lane: Lane) -> DownLane {
        let state = self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((node_id.to_owned(), lane))
            .or_default()
            .clone();
        DownLane::new(self.clone(), node_id, lane, state)
    }

    /// The largest message the NATS server takes, in bytes (its `max_payload`, headers
    /// included).
    pub fn max_payload(&self) -> usize {
        self.js.client().server_info().max_payload
    }

    /// Appends `record` (an encoded message for `node_id`) to its `lane` in JetStream; finishes
    /// with its sequence number once the cluster stored it. Errors: "queue full" at
    /// `queues.max-messages`, or NATS did not answer. The record takes its place in the lane's
    /// order when this is called.
    pub fn append(
        self: &Arc<Self>,
        node_id: &str,
        lane: Lane,
        record: Vec<u8>,
    ) -> impl Future<Output = Result<u64, String>> + Send + use<> {
        self.down_lane(node_id, lane).append(record)
    }

    /// The lanes of `node_id` while this instance holds its link, for the cloud's `Exchange`.
    /// Errors: NATS did not answer.
    pub async fn node_lanes(
        self: &Arc<Self>,
        node_id: &str,
    ) -> Result<Arc<dyn crate::exchange::SharedLanes>, String> {
        let lanes = super::link::NodeLanes::open(self, node_id).await?;
        Ok(lanes)
    }

    /// The holder of `node_id`'s lanes on this instance (see `Exchange::open_shared`).
    pub fn holder(&self, node_id: &str) -> Arc<smol::lock::Mutex<()>> {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = holders.get(node_id).and_then(|w| w.upgrade()) {
            return h;
        }
        holders.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(smol::lock::Mutex::new(()));
        holders.insert(node_id.to_owned(), Arc::downgrade(&h));
        h
    }

    /// Hands every message nodes send, on any instance, to this instance's applications
    /// (`local`), from now on, in `HUB_UP`'s order.
    pub fn deliver_up(self: &Arc<Self>, local: Arc<crate::local::Local>) {
        self.rt.spawn(super::up::feed(self.clone(), local));
    }

    /// Whether `node_id` would be admitted now as far as this instance's mirror knows: it is
    /// listed already (and would be replaced), or fewer than `node-limit` live nodes are. The
    /// WebSocket upgrade asks this so that it can refuse with HTTP 503 before upgrading; the
    /// admission itself decides (see [`admit`](Self::admit)).
    pub fn has_room_for(&self, node_id: &str) -> bool {
        let view = self.lock();
        let now = Instant::now();
        let me = (self.instance.as_str(), self.run);
        let live = |(r, _, at): &(Record, u64, Instant)| view.live(r, *at, me, now);
        if view.nodes.get(node_id).is_some_and(live) {
            return true;
        }
        view.nodes.values().filter(|e| live(e)).count() < self.limit
    }

    /// Nodes held by other live instances, sorted by id.
    pub fn remote_nodes(&self) -> Vec<RemoteNode> {
        let view = self.lock();
        let now = Instant::now();
        let me = (self.instance.as_str(), self.run);
        let mut list: Vec<RemoteNode> = view
            .nodes
            .iter()
            .filter(|(_, (r, _, at))| r.instance != self.instance && view.live(r, *at, me, now))
            .map(|(id, (r, _, _))| RemoteNode {
                node_id: id.clone(),
                instance: r.instance.clone(),
                protocol: match r.protocol.as_str() {
                    "websocket" => Some(Protocol::Websocket),
                    "quic" => Some(Protocol::Quic),
                    _ => None,
                },
                address: r.address.clone(),
                since: UNIX_EPOCH + Duration::from_millis(r.since),
            })
            .collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    /// Leaves the cluster at shutdown: removes this instance's liveness entry, so the others stop
    /// listing its nodes at once rather than after [`LIVE_FOR`].
    pub async fn stop(&self) {
        let instances = self.instances.clone();
        let name = self.instance.clone();
        let done = self.rt.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), instances.delete(&name)).await;
        });
        let _ = done.await;
    }

    /// Applies one node entry from the watcher; a node this instance holds that another
    /// connection took is evicted from the local registry.
    fn apply_node(&self, entry: kv::Entry) {
        let node_id = key_node(&entry.key);
        log::debug!(
            "cluster: node {node_id} {:?} at revision {}",
            entry.operation,
            entry.revision
        );
        let mut view = self.lock();
        view.revision = view.revision.max(entry.revision);
        if entry.seen_current || entry.delta == 0 {
            view.current = true;
        }
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Record>(&entry.value) {
                Ok(record) => {
                    let mine = record.instance == self.instance && record.run == self.run;
                    if let Some(&(admission, revision)) = view.held.get(&node_id) {
                        let same = mine && record.admission == admission;
                        if !same && entry.revision > revision {
                            view.held.remove(&node_id);
                            if !mine {
                                log::info!(
                                    "cluster: node {node_id} connected to instance {}",
                                    record.instance
                                );
                            }
                            self.registry.evict(&node_id, admission);
                        }
                    }
                    if record.instance == self.instance && record.run != self.run {
                        // Left by an earlier run of this instance: nobody holds it.
                        let nodes = self.nodes.clone();
                        let (key, rev) = (entry.key.clone(), entry.revision);
                        tokio::spawn(async move {
                            let _ = nodes.delete_expect_revision(&key, Some(rev)).await;
                        });
                    }
                    view.nodes
                        .insert(node_id, (record, entry.revision, Instant::now()));
                }
                Err(e) => log::warn!("cluster: unreadable entry for node {node_id}: {e}"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                view.nodes.remove(&node_id);
            }
        }
        let revision = view.revision;
        drop(view);
        self.changed.send_replace(revision);
    }
}

/// Opens key-value bucket `name` (history 1), creating its stream `KV_<name>` if absent with
/// entries kept for `max_age` (zero: for ever). The stream is made here rather than by the
/// client's `create_key_value`, which reads account fields that NATS 2.9 does not send; the
/// configuration is the one that call would make (docs/cluster.md).
/// Opens the stream `config` names, creating it if there is none. Instances starting together
/// race to create it: the loser is refused ("subjects overlap with an existing stream") and
/// opens the one the winner created.
pub(super) async fn open_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, String> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(e) => js.get_stream(&name).await.map_err(|_| e.to_string()),
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    storage: jetstream::stream::StorageType,
    replicas: usize,
) -> Result<kv::Store, String> {
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    open_stream(js, config)
        .await
        .map_err(|e| format!("cannot create the JetStream bucket {name}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open the JetStream bucket {name}: {e}"))
}

/// Fails when another live instance uses the name `instance` (two instances of one name would
/// take each other's nodes for leftovers of an earlier run). An entry of that name younger than
/// [`LIVE_FOR`] may also be this instance's own, from before a crash: so it is taken for
/// another instance only if it is refreshed again within [`LIVE_FOR`].
async fn name_is_free(instances: &kv::Store, instance: &str) -> Result<(), String> {
    let held = instances
        .entry(instance)
        .await
        .map_err(|e| format!("cannot read the instances: {e}"))?;
    if !held.is_some_and(|e| e.operation == kv::Operation::Put) {
        return Ok(());
    }
    let mut refreshes = instances
        .watch(instance)
        .await
        .map_err(|e| format!("cannot watch the instances: {e}"))?;
    match tokio::time::timeout(LIVE_FOR, refreshes.next()).await {
        Ok(Some(Ok(e))) if e.operation == kv::Operation::Put => Err(format!(
            "another live cloud instance is named {instance}; give each instance its own cluster.instance"
        )),
        _ => Ok(()), // it was not refreshed: an earlier run of this instance, now gone
    }
}

/// Refreshes this instance's liveness entry every [`HEARTBEAT`].
async fn heartbeat(cluster: Arc<Cluster>, alive: bytes::Bytes) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let put = cluster
            .instances
            .put(&cluster.instance, alive.clone())
            .await;
        cluster.lock().refreshed(put.is_ok(), Instant::now());
        if let Err(e) = put {
            log::warn!("cluster: cannot refresh instance {}: {e}", cluster.instance);
        }
    }
}

/// Keeps [`View::instances`] current, watching again after any interruption.
async fn watch_instances(cluster: Arc<Cluster>) {
    let mut reconnected = cluster.reconnected.clone();
    loop {
        reconnected.borrow_and_update();
        // Every live instance first (the last entry of each key), then each refresh.
        match cluster.instances.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Next::Item(Some(entry)) =
                    next_or_reconnected(&mut watch, &mut reconnected).await
                {
                    let Ok(entry) = entry else { break };
                    let mut view = cluster.lock();
                    match entry.operation {
                        kv::Operation::Put => {
                            let Ok(alive) = serde_json::from_slice::<Alive>(&entry.value) else {
                                continue;
                            };
                            // Refreshed when the server stored it, as far as this clock can tell.
                            let age = SystemTime::now()
                                .duration_since(entry.created.into())
                                .unwrap_or_default()
                                .min(LIVE_FOR);
                            let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                            view.instances.insert(entry.key, (alive.run, seen));
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            view.instances.remove(&entry.key);
                        }
                    }
                }
            }
            Err(e) => log::warn!("cluster: cannot watch the instances: {e}"),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Keeps the node mirror current, watching again from the last revision after any interruption.
async fn watch_nodes(cluster: Arc<Cluster>) {
    let mut reconnected = cluster.reconnected.clone();
    loop {
        reconnected.borrow_and_update();
        let from = cluster.lock().revision;
        let watch = if from == 0 {
            // Every entry there is (the last of each key), then each change.
            cluster.nodes.watch_with_history(">").await
        } else {
            cluster.nodes.watch_all_from_revision(from + 1).await
        };
        match watch {
            Ok(mut watch) => {
                // An empty bucket delivers nothing: the mirror is current at once.
                if from == 0 && cluster.nodes.status().await.is_ok_and(|s| s.values() == 0) {
                    cluster.lock().current = true;
                    cluster.changed.send_replace(0);
                }
                while let Next::Item(Some(entry)) =
                    next_or_reconnected(&mut watch, &mut reconnected).await
                {
                    match entry {
                        Ok(entry) => cluster.apply_node(entry),
                        Err(e) => {
                            log::warn!("cluster: node registry watch: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => log::warn!("cluster: cannot watch the node registry: {e}"),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// What a watcher waits for next: an entry (or the end of the watch), or a new connection to
/// NATS, after which it watches again from where it was.
enum Next<T> {
    Item(Option<T>),
    Reconnected,
}

/// The next item of `watch`, unless NATS was connected again first.
async fn next_or_reconnected<S: futures_util::Stream + Unpin>(
    watch: &mut S,
    reconnected: &mut tokio::sync::watch::Receiver<u64>,
) -> Next<S::Item> {
    let changed = std::pin::pin!(reconnected.changed());
    match futures_util::future::select(watch.next(), changed).await {
        futures_util::future::Either::Left((item, _)) => Next::Item(item),
        futures_util::future::Either::Right(_) => Next::Reconnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(instance: &str, run: u64) -> Record {
        Record {
            instance: instance.into(),
            run,
            admission: 1,
            protocol: "quic".into(),
            address: "127.0.0.1:1".into(),
            since: 0,
        }
    }

    #[test]
    fn an_instance_is_dead_after_live_for_of_time_this_one_could_write() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let me = ("me", 7);
        let mut view = View {
            reachable_since: t0,
            ..View::default()
        };
        view.instances.insert("a".into(), (1, t0));
        let a = record("a", 1);
        assert!(view.live(&a, t0, me, at(2.9)));
        assert!(!view.live(&a, t0, me, at(3.1)), "3 s without a refresh");

        // NATS could not store refreshes from 1 s to 5 s (a leader election): that time does
        // not count against "a", whose refreshes failed as well.
        view.refreshed(false, at(1.0));
        assert!(
            view.live(&a, t0, me, at(4.0)),
            "while this one cannot write either"
        );
        view.refreshed(true, at(5.0));
        assert!(view.live(&a, t0, me, at(7.9)));
        assert!(
            !view.live(&a, t0, me, at(8.1)),
            "3 s of working NATS without a refresh"
        );

        // Earlier runs are dead, this instance's own entries of this run alive, an instance not
        // seen yet alive while its entry is recent.
        assert!(!view.live(&record("a", 0), at(8.0), me, at(8.1)));
        assert!(view.live(&record("me", 7), t0, me, at(100.0)));
        assert!(!view.live(&record("me", 6), at(8.0), me, at(8.1)));
        assert!(view.live(&record("b", 1), at(8.0), me, at(9.0)));
        assert!(!view.live(&record("b", 1), at(8.0), me, at(11.1)));
    }
}
