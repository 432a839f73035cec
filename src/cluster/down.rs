//! The cloud-to-node queues in JetStream (docs/cluster.md section 4): one stream, `HUB_DOWN`,
//! with a subject per node and lane, `hub.down.{node key}.{u|b}`. Each message carries its
//! sequence number in the link's numbering (`Hub-Seq`: 1, 2, 3, … per lane, no gaps), kept
//! contiguous across instances by appending with `Nats-Expected-Last-Subject-Sequence` = the
//! JetStream sequence of the lane's previous message. Acknowledged messages are purged.
//!
//! Appends that wait for their turn on one lane go together: one JetStream message then holds
//! several records (`Hub-Count` of them, numbered from `Hub-Seq` on), each as a 4-byte
//! big-endian length and the encoded message. A JetStream message without `Hub-Count` holds one
//! record, the encoded message itself, as a plain NATS client appends it.
//!
//! Every call runs on the NATS runtime and is awaited from the smol side.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream::DirectGetErrorKind};
use bytes::Bytes;

use super::nats::Cluster;
use super::{DOWN_STREAM, node_key};
use crate::proto::frame::Lane;

/// The header with a message's sequence number in its lane, as the link numbers it.
pub const HUB_SEQ: &str = "Hub-Seq";

/// The header with the number of records a JetStream message holds (absent: one).
pub const HUB_COUNT: &str = "Hub-Count";

/// How many times one append retries after other instances appended first.
pub(super) const APPEND_ATTEMPTS: usize = 64;

/// Records in one JetStream message at most …
pub(super) const BATCH_RECORDS: usize = 1024;
/// … and bytes, below the server's `max_payload` (1 MiB by default) with room for the headers.
pub(super) const BATCH_BYTES: usize = 512 << 10;

/// How long a store refused for want of a stream leader waits before it is tried again (for at
/// most [`STORE_TIMEOUT`](super::nats::STORE_TIMEOUT) in all).
pub(super) const LEADERLESS_RETRY: Duration = Duration::from_millis(200);

/// Whether a refused publish was certainly not stored because the stream had no leader to take
/// it (no responders, or "no stream found" while NATS elects one): it may be tried again as it
/// is.
pub(super) fn not_stored(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.kind() == PublishErrorKind::StreamNotFound || e.to_string().contains("no stream found")
}

/// An append waiting for its turn: the record and who waits for its sequence number.
type Waiting = (Bytes, tokio::sync::oneshot::Sender<Result<u64, String>>);

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
        // One more than the lane's limit: the acknowledged message kept to hold the numbering.
        max_messages_per_subject: lane_messages.saturating_add(1).min(i64::MAX as u64) as i64,
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
    /// The appends waiting for their turn, taken in order by the lane's appending task
    /// (started on first use).
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Waiting>>>,
    /// The lane's `down_stream` id once known (it never changes).
    stream: std::sync::OnceLock<u64>,
}

#[derive(Default)]
struct Tail {
    /// The lane's last message as last seen: (`Hub-Seq`, JetStream sequence); `None` before
    /// it was looked up.
    last: Option<(u64, u64)>,
    /// The JetStream messages read and not yet purged: first `Hub-Seq` -> (JetStream
    /// sequence, last `Hub-Seq`).
    read: BTreeMap<u64, (u64, u64)>,
    /// The `Hub-Seq` acknowledged last, as last looked up (it only grows).
    acked: u64,
}

/// The payload of a JetStream message holding `records`: the record itself when there is one
/// (no `Hub-Count`), else each as a 4-byte big-endian length and its bytes.
pub(super) fn frame<'a>(records: impl ExactSizeIterator<Item = &'a Bytes> + Clone) -> Bytes {
    if records.len() == 1 {
        return records.clone().next().cloned().unwrap_or_default();
    }
    let mut p = Vec::with_capacity(records.clone().map(|r| 4 + r.len()).sum());
    for r in records {
        p.extend_from_slice(&(r.len() as u32).to_be_bytes());
        p.extend_from_slice(r);
    }
    Bytes::from(p)
}

/// The `Hub-Seq` of the last record a JetStream message of the lane holds.
pub(super) fn last_hub_seq(headers: &HeaderMap) -> Result<u64, String> {
    let count = match headers.get(HUB_COUNT) {
        None => 1,
        Some(c) => c
            .as_str()
            .parse::<u64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("an unreadable {HUB_COUNT} header"))?,
    };
    hub_seq(headers)?
        .checked_add(count - 1)
        .ok_or_else(|| format!("a {HUB_COUNT} header beyond the numbering"))
}

/// The records of one JetStream message of the lane: (`Hub-Seq`, encoded message), in order.
/// Errors: the headers or the framing are not what hub writes.
pub(super) fn records(headers: &HeaderMap, payload: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
    let first = hub_seq(headers)?;
    let Some(count) = headers.get(HUB_COUNT) else {
        return Ok(vec![(first, payload.clone())]);
    };
    let count: u64 = count
        .as_str()
        .parse()
        .map_err(|_| format!("an unreadable {HUB_COUNT} header"))?;
    if first.checked_add(count).is_none() {
        return Err(format!("a {HUB_COUNT} header beyond the numbering"));
    }
    let mut out = Vec::with_capacity(count.min(BATCH_RECORDS as u64) as usize);
    let mut at = 0usize;
    for i in 0..count {
        let len = payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| format!("a batch of {count} records cut short"))?;
        let record = payload
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| format!("a batch of {count} records cut short"))?;
        out.push((first + i, payload.slice_ref(record)));
        at += 4 + len;
    }
    Ok(out)
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
    /// stored it (on a quorum of the stream's replicas). The record takes its place in the
    /// lane's order when this is called, not when the future is first polled. Refused when the
    /// lane holds `queues.max-messages` ("queue full").
    pub fn append(&self, record: Vec<u8>) -> impl Future<Output = Result<u64, String>> + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = (Bytes::from(record), tx);
        let sent = {
            let mut queue = self.state.queue.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queue.get_or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                self.cluster.rt.spawn(appending(self.clone(), rx));
                tx
            });
            queue.send(waiting).is_ok()
        };
        async move {
            if !sent {
                return Err("the cluster's appending task ended".to_owned());
            }
            rx.await
                .unwrap_or_else(|_| Err("the cluster's appending task ended".to_owned()))
        }
    }

    /// Appends `records` in one JetStream message; returns the `Hub-Seq` of the first. Runs on
    /// the NATS runtime. Errors: "queue full" when the lane has no room for all of them (the
    /// caller sends no more than there is room for), or NATS did not store them.
    async fn append_here(&self, records: &[Bytes]) -> Result<u64, String> {
        let payload = frame(records.iter());
        let count = records.len() as u64;
        let started = std::time::Instant::now();
        let mut tail = self.state.inner.lock().await;
        for _ in 0..APPEND_ATTEMPTS {
            let (last_hub, last_js) = match tail.last {
                Some(t) => t,
                None => self.last().await?,
            };
            let next = last_hub + 1;
            let mut headers = HeaderMap::new();
            headers.insert(HUB_SEQ, next.to_string().as_str());
            if count > 1 {
                headers.insert(HUB_COUNT, count.to_string().as_str());
            }
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_js.to_string().as_str(),
            );
            let ack = tokio::time::timeout(super::nats::STORE_TIMEOUT, async {
                self.cluster
                    .js
                    .publish_with_headers(self.subject.clone(), headers, payload.clone())
                    .await?
                    .await
            })
            .await;
            let Ok(ack) = ack else {
                // Stored or not: the next append looks again.
                tail.last = None;
                return Err("NATS: no confirmation in time".to_owned());
            };
            match ack {
                Ok(ack) => {
                    tail.last = Some((next + count - 1, ack.sequence));
                    return Ok(next);
                }
                // Another instance appended first: look again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    tail.last = None;
                }
                Err(e) if e.to_string().contains("maximum messages per subject") => {
                    return Err(self.full());
                }
                // Not stored: the stream has no leader (NATS elects one after losing a server).
                Err(e) if not_stored(&e) && started.elapsed() < super::nats::STORE_TIMEOUT => {
                    tokio::time::sleep(LEADERLESS_RETRY).await;
                }
                Err(e) => {
                    tail.last = None;
                    return Err(format!("NATS: {e}"));
                }
            }
        }
        Err(format!(
            "node {}: {APPEND_ATTEMPTS} appends in a row lost to other instances",
            self.node_id
        ))
    }

    fn full(&self) -> String {
        format!(
            "queue full (node {}, {} lane)",
            self.node_id,
            lane_token(self.lane)
        )
    }

    /// How many more records the lane takes (`queues.max-messages` less those waiting), as far
    /// as this instance knows; the acknowledged position is looked up again when the lane seems
    /// full. Runs on the NATS runtime.
    async fn room_here(&self) -> Result<u64, String> {
        let limit = self.cluster.lane_messages;
        let (last, cached) = {
            let mut tail = self.state.inner.lock().await;
            if tail.last.is_none() {
                tail.last = Some(self.last().await?);
            }
            (tail.last.map_or(0, |(h, _)| h), tail.acked)
        };
        let room = |acked: u64| limit.saturating_sub(last.saturating_sub(acked));
        if room(cached) > BATCH_RECORDS as u64 {
            return Ok(room(cached));
        }
        let acked = self.acked().await?;
        let mut tail = self.state.inner.lock().await;
        tail.acked = tail.acked.max(acked);
        Ok(room(tail.acked))
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
            Ok(m) => Ok((last_hub_seq(&m.headers)?, m.sequence)),
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

    /// Records `upto` as the lane's acknowledged position, unless a higher one is there already:
    /// the position never goes back (an instance that held the node before may acknowledge late).
    async fn raise_acked(&self, upto: u64) -> Result<(), String> {
        let key = format!(
            "{}.{}.acked",
            node_key(&self.node_id),
            lane_token(self.lane)
        );
        let kv = &self.cluster.positions;
        let value = || upto.to_string().into();
        for _ in 0..APPEND_ATTEMPTS {
            let entry = kv.entry(&key).await.map_err(|e| format!("NATS: {e}"))?;
            let stored = match entry {
                Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                    let held = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0);
                    if held >= upto {
                        return Ok(());
                    }
                    kv.update(&key, value(), e.revision).await.is_ok()
                }
                _ => kv.create(&key, value()).await.is_ok(),
            };
            if stored {
                return Ok(());
            }
        }
        Err(format!("the acknowledged position of {key} kept changing"))
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
        // Start at the message holding `from - 1` (after it, if it ends there), if one is known.
        let mut js = tail
            .read
            .range(..from)
            .next_back()
            .map_or(1, |(_, &(js, last))| if last < from { js + 1 } else { js });
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
            let records = records(&m.headers, &m.payload)?;
            js = m.sequence + 1;
            if let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) {
                tail.read.insert(*first, (m.sequence, *last));
            }
            out.extend(records.into_iter().filter(|(seq, _)| *seq >= from));
        }
        Ok(out)
    }

    /// Records that the message holding `Hub-Seq` `first` to `last` is at JetStream sequence
    /// `js`: read from its republished copy rather than by [`read`](Self::read), it can be
    /// purged all the same.
    pub(super) async fn note_read(&self, first: u64, last: u64, js: u64) {
        self.state.inner.lock().await.read.insert(first, (js, last));
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
        self.raise_acked(upto).await?;
        tail.acked = tail.acked.max(upto);
        // The message holding `upto`, which is kept: it holds the numbering when it is the
        // lane's last, and messages not yet acknowledged when it is a batch.
        let Some((first, js)) = tail
            .read
            .range(..=upto)
            .next_back()
            .filter(|(_, (_, last))| *last >= upto)
            .map(|(&first, &(js, _))| (first, js))
        else {
            return Ok(()); // never read here: nothing known to purge
        };
        // JetStream reads a purge "up to sequence 1" as a purge without a bound (all of the
        // subject): with the message to keep first in the stream, there is nothing below it.
        if js > 1 {
            self.cluster
                .down
                .purge()
                .filter(self.subject.clone())
                .sequence(js)
                .await
                .map_err(|e| format!("NATS: {e}"))?;
        }
        tail.read = tail.read.split_off(&first);
        Ok(())
    }
}

/// The appending task of one lane: takes the appends waiting, in order, as many as fit in one
/// JetStream message and in the lane, and answers each once they are stored.
async fn appending(lane: DownLane, mut queue: tokio::sync::mpsc::UnboundedReceiver<Waiting>) {
    let mut batch: Vec<Waiting> = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        let mut bytes = batch[0].0.len();
        while batch.len() < BATCH_RECORDS {
            match queue.try_recv() {
                Ok(w) if bytes + 4 + w.0.len() <= BATCH_BYTES => {
                    bytes += 4 + w.0.len();
                    batch.push(w);
                }
                Ok(w) => {
                    // Over the size: first in the next batch.
                    lane.append_batch(std::mem::take(&mut batch)).await;
                    batch.push(w);
                    bytes = batch[0].0.len();
                }
                Err(_) => break,
            }
        }
        lane.append_batch(std::mem::take(&mut batch)).await;
    }
}

impl DownLane {
    /// Appends `batch` (as many as the lane has room for, the rest refused as "queue full")
    /// and answers each waiting append.
    async fn append_batch(&self, mut batch: Vec<Waiting>) {
        let room = match self.room_here().await {
            Ok(r) => r,
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let refused = batch.split_off((room as usize).min(batch.len()));
        for (_, tx) in refused {
            let _ = tx.send(Err(self.full()));
        }
        if batch.is_empty() {
            return;
        }
        let records: Vec<Bytes> = batch.iter().map(|(r, _)| r.clone()).collect();
        match self.append_here(&records).await {
            Ok(first) => {
                for (i, (_, tx)) in batch.into_iter().enumerate() {
                    let _ = tx.send(Ok(first + i as u64));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A random non-zero u64.
fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b).max(1)
}
