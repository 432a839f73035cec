//! The lanes of a node held by this instance, kept in JetStream ([`SharedLanes`] for the
//! cloud's `Exchange`; docs/cluster.md sections 4 and 5).
//!
//! Cloud to node: a task on the NATS runtime reads the node's `HUB_DOWN` subjects ahead of the
//! link into a bounded cache, woken by each message the stream republishes to
//! `hub.live.down.{key}.{lane}` (taken as it is when it is the next one, read from the stream
//! otherwise); what the node acknowledges is purged. Node to cloud: what the node sends is
//! stored in `HUB_UP` in batches, each stored only if the lane's last message is the one this
//! instance knows (so a lane never has a gap, and what another instance stored meanwhile is not
//! stored twice), and counts as stored when JetStream acknowledges it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;

use super::down::{BATCH_BYTES, BATCH_RECORDS, DownLane, records};
use super::nats::Cluster;
use super::node_key;
use crate::exchange::SharedLanes;
use crate::proto::frame::{LANES, Lane};
use crate::proto::session::Streams;
use crate::signal::Token;

/// Messages read ahead of the link per lane at most …
const AHEAD_MESSAGES: usize = 1024;
/// … and their bytes (one message is always read, whatever its size).
const AHEAD_BYTES: usize = 8 << 20;
/// Messages read from the stream per request.
const READ_BATCH: usize = 128;
/// How often the lanes are read again even when no republished message came (one may have
/// been lost on its way: republishing is not itself acknowledged).
const READ_AGAIN: Duration = Duration::from_secs(1);

/// One lane's messages read ahead, and the positions around them.
#[derive(Default)]
struct Ahead {
    cache: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    /// The next `Hub-Seq` to read into the cache.
    next: u64,
    /// The highest `Hub-Seq` the lane is known to have issued.
    issued: u64,
    /// Acknowledged by the node, and purged from the stream.
    acked: u64,
    purged: u64,
}

struct State {
    ahead: [Ahead; LANES],
    /// Per lane: the node's stream and the last sequence number JetStream confirmed storing.
    stored: [(u64, u64); LANES],
    failure: Option<String>,
}

/// What the link's side and the tasks on the NATS runtime share.
struct Inner {
    state: Mutex<State>,
    token: Token,
    /// Wakes the reading task: room was made or an acknowledgement is to be purged.
    wake: tokio::sync::Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, why: String) {
        self.lock().failure.get_or_insert(why);
        self.token.notify();
    }
}

/// A message from the node on its way into `HUB_UP`.
struct Up {
    lane: Lane,
    stream: u64,
    seq: u64,
    payload: Bytes,
}

/// The lanes of one node while this instance holds its link.
pub struct NodeLanes {
    start: [Streams; LANES],
    inner: Arc<Inner>,
    up: tokio::sync::mpsc::UnboundedSender<Up>,
    reading: tokio::task::AbortHandle,
}

impl Drop for NodeLanes {
    fn drop(&mut self) {
        // What was handed to the publishing task is still stored: it ends once its channel is
        // empty and closed.
        self.reading.abort();
    }
}

impl NodeLanes {
    /// Opens `node_id`'s lanes: reads their stream ids and positions (what is waiting for the
    /// node, what was stored from it) and starts reading ahead. Errors: NATS did not answer.
    pub async fn open(cluster: &Arc<Cluster>, node_id: &str) -> Result<Arc<NodeLanes>, String> {
        let cluster = cluster.clone();
        let node = node_id.to_owned();
        let rt = cluster.rt.clone();
        rt.spawn(async move { NodeLanes::open_here(cluster, node).await })
            .await
            .map_err(|e| format!("NATS runtime: {e}"))?
    }

    async fn open_here(cluster: Arc<Cluster>, node_id: String) -> Result<Arc<NodeLanes>, String> {
        use futures_util::future::{try_join, try_join3};
        let lane_start = |lane: Lane| {
            let down = cluster.down_lane(&node_id, lane);
            let (cluster, node_id) = (cluster.clone(), node_id.clone());
            async move {
                let ((first, last), out_stream, (in_stream, in_seq, in_js)) = try_join3(
                    down.bounds_here(),
                    down.stream_id_here(),
                    super::up::position(&cluster, &node_id, lane),
                )
                .await?;
                let streams = Streams {
                    out_stream,
                    out_first: first,
                    in_stream,
                    in_seq,
                };
                let ahead = Ahead {
                    next: first,
                    issued: last,
                    acked: first - 1,
                    purged: first - 1,
                    ..Ahead::default()
                };
                Ok::<_, String>((down, streams, ahead, in_js))
            }
        };
        let [urgent, bulk] = Lane::ALL;
        let (u, b) = try_join(lane_start(urgent), lane_start(bulk)).await?;
        let mut lanes = [u, b];
        lanes.sort_by_key(|(d, ..)| d.lane().index());
        let [
            (down_0, start_0, ahead_0, js_0),
            (down_1, start_1, ahead_1, js_1),
        ] = lanes;
        let start = [start_0, start_1];
        let up_last = [(start_0, js_0), (start_1, js_1)].map(|(s, js)| UpLast {
            stream: s.in_stream,
            seq: s.in_seq,
            js,
        });
        let stored = start.map(|s| (s.in_stream, s.in_seq));
        let ahead = [ahead_0, ahead_1];
        let down = [down_0, down_1];
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ahead,
                stored,
                failure: None,
            }),
            token: Token::new(),
            wake: tokio::sync::Notify::new(),
        });
        let live = cluster
            .js
            .client()
            .subscribe(format!("hub.live.down.{}.*", node_key(&node_id)))
            .await
            .map_err(|e| format!("NATS: {e}"))?;
        let reading = tokio::spawn(read_ahead(inner.clone(), down, live)).abort_handle();
        let (up, queued) = tokio::sync::mpsc::unbounded_channel();
        let storing = Storing {
            cluster: cluster.clone(),
            node_id: node_id.clone(),
            inner: inner.clone(),
            last: up_last,
        };
        tokio::spawn(storing.run(queued));
        Ok(Arc::new(NodeLanes {
            start,
            inner,
            up,
            reading,
        }))
    }
}

/// The last message of one of the node's lanes in `HUB_UP`, as this instance knows it.
#[derive(Debug, Clone, Copy)]
struct UpLast {
    /// Its `Hub-Stream` and the `Hub-Seq` of its last record.
    stream: u64,
    seq: u64,
    /// Its JetStream sequence (0: the lane holds none).
    js: u64,
}

/// Stores what the node sends in `HUB_UP`, lane by lane, in order.
struct Storing {
    cluster: Arc<Cluster>,
    node_id: String,
    inner: Arc<Inner>,
    last: [UpLast; LANES],
}

impl Storing {
    /// Takes what waits, as batches per lane (the urgent lane first), and stores each batch
    /// before the next; ends when the link's side is gone and nothing waits, or at the first
    /// store that fails (the link is then closed, and the edge sends the rest again).
    async fn run(mut self, mut queued: tokio::sync::mpsc::UnboundedReceiver<Up>) {
        let mut waiting: [Vec<Up>; LANES] = Default::default();
        while let Some(first) = queued.recv().await {
            waiting[first.lane.index()].push(first);
            while let Ok(up) = queued.try_recv() {
                waiting[up.lane.index()].push(up);
            }
            for lane in Lane::ALL {
                let mut ups = std::mem::take(&mut waiting[lane.index()]);
                while !ups.is_empty() {
                    let rest = split_batch(&mut ups);
                    if let Err(e) = self.store(lane, &ups).await {
                        self.inner.fail(format!(
                            "the cluster did not store message {} on the {lane} lane: {e}",
                            ups[0].seq
                        ));
                        return;
                    }
                    ups = rest;
                }
            }
        }
    }

    /// Stores `ups` (one stream, consecutive) as one JetStream message, with
    /// `Nats-Expected-Last-Subject-Sequence` set to the lane's last message: the lane stays
    /// contiguous whatever else writes to it. A message stored meanwhile by another instance
    /// (the one that held the node before) is read, and what it already holds is not stored
    /// again. Errors: NATS refused the store or did not confirm it in time.
    async fn store(&mut self, lane: Lane, ups: &[Up]) -> Result<(), String> {
        let i = lane.index();
        let subject = super::up::subject(&self.node_id, lane);
        let mut from = 0;
        let started = std::time::Instant::now();
        for _ in 0..super::down::APPEND_ATTEMPTS {
            let last = self.last[i];
            // What the lane holds already (sent again after a move) is not stored twice.
            while from < ups.len() && ups[from].stream == last.stream && ups[from].seq <= last.seq {
                from += 1;
            }
            let batch = &ups[from..];
            let Some(first) = batch.first() else {
                self.stored(lane, ups);
                return Ok(());
            };
            let payload = super::down::frame(batch.iter().map(|u| &u.payload));
            let headers = super::up::headers(first.stream, first.seq, batch.len(), last.js);
            let stored = tokio::time::timeout(super::nats::STORE_TIMEOUT, async {
                self.cluster
                    .js
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await?
                    .await
            })
            .await
            .map_err(|_| "no confirmation in time".to_owned())?;
            match stored {
                Ok(ack) => {
                    let end = &batch[batch.len() - 1];
                    self.last[i] = UpLast {
                        stream: end.stream,
                        seq: end.seq,
                        js: ack.sequence,
                    };
                    self.stored(lane, ups);
                    return Ok(());
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    let (stream, seq, js) =
                        super::up::position(&self.cluster, &self.node_id, lane).await?;
                    self.last[i] = UpLast { stream, seq, js };
                }
                // Not stored: the stream has no leader (NATS elects one after losing a server).
                Err(e)
                    if super::down::not_stored(&e)
                        && started.elapsed() < super::nats::STORE_TIMEOUT =>
                {
                    tokio::time::sleep(super::down::LEADERLESS_RETRY).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("appends in a row lost to other instances".into())
    }

    /// `ups` are all stored: the link may acknowledge them.
    fn stored(&self, lane: Lane, ups: &[Up]) {
        if let Some(end) = ups.last() {
            self.inner.lock().stored[lane.index()] = (end.stream, end.seq);
            self.inner.token.notify();
        }
    }
}

/// Leaves in `ups` the first batch (one stream, at most [`BATCH_RECORDS`] records and
/// [`BATCH_BYTES`] bytes, at least one record) and returns the rest.
fn split_batch(ups: &mut Vec<Up>) -> Vec<Up> {
    let mut bytes = 0;
    let end = ups
        .iter()
        .enumerate()
        .position(|(n, u)| {
            bytes += 4 + u.payload.len();
            n > 0 && (n >= BATCH_RECORDS || bytes > BATCH_BYTES || u.stream != ups[0].stream)
        })
        .unwrap_or(ups.len());
    ups.split_off(end)
}

/// Keeps each lane's cache filled from `HUB_DOWN` and purges what the node acknowledged.
async fn read_ahead(inner: Arc<Inner>, down: [DownLane; LANES], mut live: async_nats::Subscriber) {
    use futures_util::FutureExt;
    use futures_util::future::{Either, select};
    // Whether a lane may hold more than the cache has: read from the stream (at the start,
    // after room was made, after a republished message that was not the next one, and every
    // READ_AGAIN).
    let mut unread = [true; LANES];
    loop {
        for lane in Lane::ALL {
            let i = lane.index();
            let acked = {
                let s = inner.lock();
                (s.ahead[i].acked > s.ahead[i].purged).then_some(s.ahead[i].acked)
            };
            if let Some(upto) = acked {
                match timeout(down[i].ack_here(upto)).await {
                    Ok(()) => inner.lock().ahead[i].purged = upto,
                    Err(e) => log::warn!("cluster: cannot purge acknowledged messages: {e}"),
                }
            }
            while unread[i] {
                let Some((from, room)) = inner.lock().ahead[i].room() else {
                    break;
                };
                let read = match timeout(down[i].read_here(from, room.min(READ_BATCH))).await {
                    Ok(r) => r,
                    Err(e) => {
                        log::warn!("cluster: cannot read a node's queue: {e}");
                        break;
                    }
                };
                if read.is_empty() {
                    unread[i] = false;
                    break;
                }
                let mut s = inner.lock();
                let a = &mut s.ahead[i];
                // The lane's first message is past where reading started: what came before
                // was acknowledged and purged, and the positions read at the link's start came
                // from a replica that was behind (direct get may be answered by any). Read on
                // from what the lane holds.
                if read.first().is_some_and(|(seq, _)| *seq > a.next) && a.cache.is_empty() {
                    a.next = read[0].0;
                }
                let mut taken = false;
                for (seq, payload) in read {
                    taken |= a.take(seq, &payload);
                }
                drop(s);
                if !taken {
                    // Nothing follows on from the cache: read again when woken, not at once.
                    unread[i] = false;
                    break;
                }
                inner.token.notify();
            }
        }
        // Wait for a republished message, room in a cache or an acknowledgement to purge.
        let woken = select(
            live.next(),
            select(
                Box::pin(inner.wake.notified()),
                Box::pin(tokio::time::sleep(READ_AGAIN)),
            ),
        )
        .await;
        let mut message = match woken {
            Either::Left((Some(m), _)) => Some(m),
            Either::Left((None, _)) => {
                inner.fail("the cluster's subscription for the node ended".into());
                return;
            }
            Either::Right(_) => {
                unread = [true; LANES];
                None
            }
        };
        // Every republished message waiting now, the next of its lane taken as it is.
        while let Some(m) = message {
            let lane = match m.subject.as_str().rsplit('.').next() {
                Some("u") => Lane::Urgent,
                Some("b") => Lane::Bulk,
                _ => Lane::Bulk,
            };
            let i = lane.index();
            // The records it holds, and its JetStream sequence.
            let held = m.headers.as_ref().and_then(|h| {
                let js = h.get("Nats-Sequence")?.as_str().parse::<u64>().ok()?;
                Some((records(h, &m.payload).ok()?, js))
            });
            let taken = match &held {
                Some((records, _)) if !records.is_empty() => {
                    let mut s = inner.lock();
                    let a = &mut s.ahead[i];
                    let (last, _) = records[records.len() - 1];
                    a.issued = a.issued.max(last);
                    // Taken whole or not at all: a part would leave the rest to be read again.
                    let fits = !unread[i] && a.room().is_some() && records[0].0 == a.next;
                    if fits {
                        for (seq, payload) in records {
                            a.take(*seq, payload);
                        }
                    }
                    fits
                }
                _ => false,
            };
            match held {
                Some((records, js)) if taken => {
                    let (first, last) = (records[0].0, records[records.len() - 1].0);
                    let _ = timeout(async {
                        down[i].note_read(first, last, js).await;
                        Ok(())
                    })
                    .await;
                    inner.token.notify();
                }
                _ => unread[i] = true,
            }
            message = live.next().now_or_never().flatten();
        }
    }
}

/// `work`, given up after [`STORE_TIMEOUT`](super::nats::STORE_TIMEOUT): a request NATS
/// never answers (its connection was lost under it) must not hold the lane.
async fn timeout<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(super::nats::STORE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("NATS did not answer in time".into()))
}

impl Ahead {
    /// The next `Hub-Seq` to read and how many messages the cache has room for; `None` when
    /// it is full.
    fn room(&self) -> Option<(u64, usize)> {
        let full = self.cache.len() >= AHEAD_MESSAGES
            || (self.bytes >= AHEAD_BYTES && !self.cache.is_empty());
        (!full).then(|| (self.next, AHEAD_MESSAGES - self.cache.len()))
    }

    /// Puts message `seq` in the cache if it is the next one; whether it was.
    fn take(&mut self, seq: u64, payload: &[u8]) -> bool {
        if seq != self.next {
            return false;
        }
        self.bytes += payload.len();
        self.cache.push_back((seq, payload.to_vec()));
        self.next = seq + 1;
        self.issued = self.issued.max(seq);
        true
    }
}

impl SharedLanes for NodeLanes {
    fn streams(&self) -> [Streams; LANES] {
        self.start
    }

    fn visible(&self, lane: Lane) -> u64 {
        self.inner.lock().ahead[lane.index()].next
    }

    fn read(
        &self,
        lane: Lane,
        from: u64,
        max: usize,
        budget: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> usize {
        let mut s = self.inner.lock();
        let a = &mut s.ahead[lane.index()];
        let was_full = a.room().is_none();
        // What the link resumes after is dropped: the node has it.
        while a.cache.front().is_some_and(|(seq, _)| *seq < from) {
            let (_, p) = a.cache.pop_front().expect("checked");
            a.bytes -= p.len();
        }
        // The lane holds nothing numbered `from` any more, while the link resumes there (its
        // start was read from a replica that was behind): the link is closed, and the next
        // one starts from what the lane holds.
        let gone = match a.cache.front() {
            Some((seq, _)) => *seq > from,
            None => a.next > from,
        };
        if gone {
            s.failure.get_or_insert_with(|| {
                format!("the {lane} lane no longer holds message {from}, where the link resumed")
            });
            drop(s);
            self.inner.token.notify();
            return 0;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < max {
            let Some((_, p)) = a.cache.front() else { break };
            if n > 0 && bytes + p.len() > budget {
                break;
            }
            let (seq, p) = a.cache.pop_front().expect("checked");
            a.bytes -= p.len();
            bytes += p.len();
            out.push((seq, p));
            n += 1;
        }
        if was_full && a.room().is_some() {
            drop(s);
            self.inner.wake.notify_one();
        }
        n
    }

    fn ack(&self, lane: Lane, seq: u64) -> Result<(), String> {
        let mut s = self.inner.lock();
        let a = &mut s.ahead[lane.index()];
        // The node has everything up to `seq`: what was read ahead of it goes, and reading goes
        // on after it (the node may resume beyond where the lane's positions, read at the
        // link's start, said it was).
        let mut changed = false;
        while a.cache.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, p) = a.cache.pop_front().expect("checked");
            a.bytes -= p.len();
            changed = true;
        }
        if a.next <= seq {
            a.next = seq + 1;
            changed = true;
        }
        // What the node acknowledged beyond what this instance saw the lane issue (its view may
        // lag behind the stream's) is taken up to what it saw: nothing unseen is purged.
        let seq = seq.min(a.issued);
        if seq > a.acked {
            a.acked = seq;
            changed = true;
        }
        drop(s);
        if changed {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    fn store(&self, lane: Lane, stream: u64, seq: u64, payload: Vec<u8>) {
        {
            let mut s = self.inner.lock();
            let stored = &mut s.stored[lane.index()];
            if stored.0 != stream {
                // A new stream of the node's: its numbers start over.
                *stored = (stream, 0);
            }
        }
        let up = Up {
            lane,
            stream,
            seq,
            payload: Bytes::from(payload),
        };
        if self.up.send(up).is_err() {
            self.inner
                .fail("the cluster's publishing task ended".to_owned());
        }
    }

    fn stored(&self, lane: Lane) -> u64 {
        self.inner.lock().stored[lane.index()].1
    }

    fn failure(&self) -> Option<String> {
        self.inner.lock().failure.clone()
    }

    fn token(&self) -> &Token {
        &self.inner.token
    }
}
