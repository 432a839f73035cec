//! The cloud-to-node queues in JetStream (docs/cluster.md section 4): one stream, `HUB_DOWN`,
//! with a subject per node and lane, `hub.down.{node key}.{u|b}`. Each message carries its
//! sequence number in the link's numbering (`Hub-Seq`: 1, 2, 3, … per lane, no gaps), kept
//! contiguous across instances by appending with `Nats-Expected-Last-Subject-Sequence` = the
//! JetStream sequence of the lane's previous message. Acknowledged messages are purged.
//!
//! Every call runs on the NATS runtime and is awaited from the smol side.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream::DirectGetErrorKind};
use bytes::Bytes;

use super::nats::Cluster;
use super::{DOWN_STREAM, node_key};
use crate::proto::frame::Lane;

/// The header with a message's sequence number in its lane, as the link numbers it.
pub const HUB_SEQ: &str = "Hub-Seq";

/// How many times one append retries after other instances appended first.
const APPEND_ATTEMPTS: usize = 64;

/// Creates or opens [`DOWN_STREAM`]: file storage, `replicas`, at most `lane_messages` per
/// subject with new messages refused beyond (`discard_new_per_subject`), direct get, and every
/// stored message republished to `hub.live.down.…` for the instance holding the node.
pub(super) async fn stream(
    js: &jetstream::Context,
    lane_messages: u64,
    replicas: usize,
) -> Result<jetstream::stream::Stream, String> {
    let config = jetstream::stream::Config {
        name: DOWN_STREAM.into(),
        description: Some("hub: the cloud-to-node queues, one subject per node and lane".into()),
        subjects: vec!["hub.down.>".into()],
        max_messages_per_subject: lane_messages.min(i64::MAX as u64) as i64,
        discard: jetstream::stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_direct: true,
        republish: Some(jetstream::stream::Republish {
            source: "hub.down.>".into(),
            destination: "hub.live.down.>".into(),
            headers_only: false,
        }),
        ..Default::default()
    };
    super::nats::open_stream(js, config)
        .await
        .map_err(|e| format!("cannot create the JetStream stream {DOWN_STREAM}: {e}"))
}

/// What an instance knows of one lane: its last message (link and JetStream sequence), and the
/// JetStream sequence of messages it read, to purge up to them. Behind an async mutex: one
/// append or read of the lane at a time on this instance.
#[derive(Default)]
pub struct LaneState {
    inner: tokio::sync::Mutex<Tail>,
    /// The lane's `down_stream` id once known (it never changes).
    stream: std::sync::OnceLock<u64>,
}

#[derive(Default)]
struct Tail {
    /// The lane's last message as last seen: (`Hub-Seq`, JetStream sequence); `None` before
    /// it was looked up.
    last: Option<(u64, u64)>,
    /// `Hub-Seq` -> JetStream sequence of the messages read and not yet purged.
    read: BTreeMap<u64, u64>,
}

/// One lane of one node's cloud-to-node queue; see the module docs.
#[derive(Clone)]
pub struct DownLane {
    cluster: Arc<Cluster>,
    node_id: String,
    lane: Lane,
    subject: String,
    state: Arc<LaneState>,
}

pub(super) fn lane_token(lane: Lane) -> &'static str {
    match lane {
        Lane::Urgent => "u",
        Lane::Bulk => "b",
    }
}

pub(super) fn hub_seq(headers: &HeaderMap) -> Result<u64, String> {
    headers
        .get(HUB_SEQ)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| format!("a message without a readable {HUB_SEQ} header"))
}

impl DownLane {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        node_id: &str,
        lane: Lane,
        state: Arc<LaneState>,
    ) -> DownLane {
        DownLane {
            subject: format!("hub.down.{}.{}", node_key(node_id), lane_token(lane)),
            cluster,
            node_id: node_id.to_owned(),
            lane,
            state,
        }
    }

    /// The lane.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Runs `work` on the NATS runtime and waits for it.
    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        self.cluster
            .rt
            .spawn(work)
            .await
            .map_err(|e| format!("NATS runtime: {e}"))?
    }

    /// The lane's `down_stream` id: a random non-zero number drawn by the first instance that
    /// asks, kept in the positions bucket, the same on every instance.
    pub async fn stream_id(&self) -> Result<u64, String> {
        let me = self.clone();
        self.run(async move { me.stream_id_here().await }).await
    }

    /// [`stream_id`](Self::stream_id), on the NATS runtime.
    pub(super) async fn stream_id_here(&self) -> Result<u64, String> {
        if let Some(&id) = self.state.stream.get() {
            return Ok(id);
        }
        let key = format!("{}.{}.down", node_key(&self.node_id), lane_token(self.lane));
        let kv = &self.cluster.positions;
        let read = || async {
            let value = kv.get(&key).await.map_err(|e| format!("NATS: {e}"))?;
            value
                .map(|v| {
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| format!("unreadable stream id for {key}"))
                })
                .transpose()
        };
        // Drawn by the first instance that asks: the others read it.
        let id = match read().await? {
            Some(id) => id,
            None => {
                let drawn = random_id();
                match kv.create(&key, drawn.to_string().into()).await {
                    Ok(_) => drawn,
                    Err(_) => read()
                        .await?
                        .ok_or_else(|| format!("no stream id for {key}"))?,
                }
            }
        };
        Ok(*self.state.stream.get_or_init(|| id))
    }

    /// Appends `record` (an encoded message) and returns its `Hub-Seq`, once JetStream has
    /// stored it (on a quorum of the stream's replicas). Refused when the lane holds
    /// `queues.max-messages` ("queue full").
    pub async fn append(&self, record: Vec<u8>) -> Result<u64, String> {
        let payload = Bytes::from(record);
        let me = self.clone();
        self.run(async move { me.append_here(payload).await }).await
    }

    /// [`append`](Self::append), on the NATS runtime.
    pub(super) async fn append_here(&self, payload: Bytes) -> Result<u64, String> {
        let mut tail = self.state.inner.lock().await;
        for _ in 0..APPEND_ATTEMPTS {
            let (last_hub, last_js) = match tail.last {
                Some(t) => t,
                None => self.last().await?,
            };
            let next = last_hub + 1;
            let mut headers = HeaderMap::new();
            headers.insert(HUB_SEQ, next.to_string().as_str());
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_js.to_string().as_str(),
            );
            let ack = async {
                self.cluster
                    .js
                    .publish_with_headers(self.subject.clone(), headers, payload.clone())
                    .await?
                    .await
            }
            .await;
            match ack {
                Ok(ack) => {
                    tail.last = Some((next, ack.sequence));
                    return Ok(next);
                }
                // Another instance appended first: look again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    tail.last = None;
                }
                Err(e) if e.to_string().contains("maximum messages per subject") => {
                    return Err(format!(
                        "queue full (node {}, {} lane)",
                        self.node_id,
                        lane_token(self.lane)
                    ));
                }
                Err(e) => return Err(format!("NATS: {e}")),
            }
        }
        Err(format!(
            "node {}: {APPEND_ATTEMPTS} appends in a row lost to other instances",
            self.node_id
        ))
    }

    /// The lane's last message: (`Hub-Seq`, JetStream sequence); for a lane that holds none,
    /// (the `Hub-Seq` acknowledged last, 0): (0, 0) for a lane never written. The last purge
    /// leaves the lane's last message (see [`ack`](Self::ack)), so the numbering normally
    /// comes from the stream; should the lane be emptied anyway (an operator's purge), it
    /// still goes on from the acknowledged position and never starts over, which would
    /// have the node drop the new messages as repeats.
    async fn last(&self) -> Result<(u64, u64), String> {
        match self
            .cluster
            .down
            .direct_get_last_for_subject(self.subject.clone())
            .await
        {
            Ok(m) => Ok((hub_seq(&m.headers)?, m.sequence)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((self.acked().await?, 0)),
            Err(e) => Err(format!("NATS: {e}")),
        }
    }

    /// The `Hub-Seq` of the first message the lane holds that is not acknowledged, and of the
    /// last one: (first, last); first = last + 1 when none is waiting.
    pub async fn bounds(&self) -> Result<(u64, u64), String> {
        let me = self.clone();
        self.run(async move { me.bounds_here().await }).await
    }

    /// [`bounds`](Self::bounds), on the NATS runtime.
    pub(super) async fn bounds_here(&self) -> Result<(u64, u64), String> {
        let (last, _) = self.last().await?;
        let first = match self
            .cluster
            .down
            .direct_get_next_for_subject(self.subject.clone(), Some(1))
            .await
        {
            Ok(m) => hub_seq(&m.headers)?,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => last + 1,
            Err(e) => return Err(format!("NATS: {e}")),
        };
        // The lane's last message is kept after it is acknowledged, to hold the numbering.
        let acked = self.acked().await?;
        Ok((first.max(acked + 1), last))
    }

    /// The `Hub-Seq` acknowledged last (0: none), from the positions bucket.
    async fn acked(&self) -> Result<u64, String> {
        let key = format!(
            "{}.{}.acked",
            node_key(&self.node_id),
            lane_token(self.lane)
        );
        match self.cluster.positions.get(&key).await {
            Ok(Some(v)) => Ok(std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)),
            Ok(None) => Ok(0),
            Err(e) => Err(format!("NATS: {e}")),
        }
    }

    /// Up to `max` messages from `Hub-Seq` `from` on, in order: (`Hub-Seq`, record).
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Bytes)>, String> {
        let me = self.clone();
        self.run(async move { me.read_here(from, max).await }).await
    }

    /// [`read`](Self::read), on the NATS runtime.
    pub(super) async fn read_here(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, String> {
        let mut tail = self.state.inner.lock().await;
        // Start after the last message read below `from`, if one is known.
        let mut js = tail
            .read
            .range(..from)
            .next_back()
            .map_or(1, |(_, js)| js + 1);
        let mut out = Vec::new();
        while out.len() < max {
            let m = match self
                .cluster
                .down
                .direct_get_next_for_subject(self.subject.clone(), Some(js))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(format!("NATS: {e}")),
            };
            let seq = hub_seq(&m.headers)?;
            js = m.sequence + 1;
            tail.read.insert(seq, m.sequence);
            if seq >= from {
                out.push((seq, m.payload));
            }
        }
        Ok(out)
    }

    /// Records that message `seq` (`Hub-Seq`) is at JetStream sequence `js`: read from its
    /// republished copy rather than by [`read`](Self::read), it can be purged all the same.
    pub(super) async fn note_read(&self, seq: u64, js: u64) {
        self.state.inner.lock().await.read.insert(seq, js);
    }

    /// The node acknowledged every message up to `Hub-Seq` `upto`: they are purged from the
    /// stream, except the lane's last message, which holds the numbering for the next append
    /// (it counts as acknowledged through the positions bucket).
    pub async fn ack(&self, upto: u64) -> Result<(), String> {
        let me = self.clone();
        self.run(async move { me.ack_here(upto).await }).await
    }

    /// [`ack`](Self::ack), on the NATS runtime.
    pub(super) async fn ack_here(&self, upto: u64) -> Result<(), String> {
        let mut tail = self.state.inner.lock().await;
        let key = format!(
            "{}.{}.acked",
            node_key(&self.node_id),
            lane_token(self.lane)
        );
        self.cluster
            .positions
            .put(&key, upto.to_string().into())
            .await
            .map_err(|e| format!("NATS: {e}"))?;
        let Some(&js) = tail.read.get(&upto) else {
            return Ok(()); // never read here: nothing known to purge
        };
        // JetStream reads a purge "up to sequence 1" as a purge without a bound (all of the
        // subject): with the message to keep first in the stream, there is nothing below it.
        if js <= 1 {
            tail.read = tail.read.split_off(&upto);
            return Ok(());
        }
        self.cluster
            .down
            .purge()
            .filter(self.subject.clone())
            .sequence(js)
            .await
            .map_err(|e| format!("NATS: {e}"))?;
        tail.read = tail.read.split_off(&upto);
        Ok(())
    }
}

/// A random non-zero u64.
fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b).max(1)
}
