//! The lanes of a node held by this instance, kept in JetStream ([`SharedLanes`] for the
//! cloud's `Exchange`; docs/cluster.md sections 4 and 5).
//!
//! Cloud to node: a task on the NATS runtime reads the node's `HUB_DOWN` subjects ahead of the
//! link into a bounded cache, woken by each message the stream republishes to
//! `hub.live.down.{key}.{lane}` (taken as it is when it is the next one, read from the stream
//! otherwise); what the node acknowledges is purged. Node to cloud: each message is published
//! to `HUB_UP` with its `Nats-Msg-Id`, in order, and counts as stored when JetStream
//! acknowledges it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use futures_util::StreamExt;

use super::down::{DownLane, hub_seq};
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
                let ((first, last), out_stream, (in_stream, in_seq)) = try_join3(
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
                Ok::<_, String>((down, streams, ahead))
            }
        };
        let [urgent, bulk] = Lane::ALL;
        let (u, b) = try_join(lane_start(urgent), lane_start(bulk)).await?;
        let mut lanes = [u, b];
        lanes.sort_by_key(|(d, ..)| d.lane().index());
        let [(down_0, start_0, ahead_0), (down_1, start_1, ahead_1)] = lanes;
        let start = [start_0, start_1];
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
        let (acks, acked) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(publish(cluster.clone(), node_id.clone(), queued, acks));
        tokio::spawn(confirm(inner.clone(), acked));
        Ok(Arc::new(NodeLanes {
            start,
            inner,
            up,
            reading,
        }))
    }
}

/// Publishes the node's messages in order, handing each acknowledgement on to [`confirm`].
async fn publish(
    cluster: Arc<Cluster>,
    node_id: String,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Up>,
    acks: tokio::sync::mpsc::UnboundedSender<(Up, Result<PublishAckFuture, String>)>,
) {
    while let Some(up) = queued.recv().await {
        let headers = super::up::headers(&node_id, up.lane, up.stream, up.seq);
        let sent = cluster
            .js
            .publish_with_headers(
                super::up::subject(&node_id, up.lane),
                headers,
                up.payload.clone(),
            )
            .await
            .map_err(|e| e.to_string());
        if acks.send((up, sent)).is_err() {
            return;
        }
    }
}

/// Waits for each store's acknowledgement in turn and moves the lane's stored position.
async fn confirm(
    inner: Arc<Inner>,
    mut acked: tokio::sync::mpsc::UnboundedReceiver<(Up, Result<PublishAckFuture, String>)>,
) {
    while let Some((up, sent)) = acked.recv().await {
        let outcome = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                inner.lock().stored[up.lane.index()] = (up.stream, up.seq);
                inner.token.notify();
            }
            Err(e) => {
                inner.fail(format!(
                    "the cluster did not store message {} on the {} lane: {e}",
                    up.seq, up.lane
                ));
                return;
            }
        }
    }
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
                match down[i].ack_here(upto).await {
                    Ok(()) => inner.lock().ahead[i].purged = upto,
                    Err(e) => log::warn!("cluster: cannot purge acknowledged messages: {e}"),
                }
            }
            while unread[i] {
                let Some((from, room)) = inner.lock().ahead[i].room() else {
                    break;
                };
                let read = match down[i].read_here(from, room.min(READ_BATCH)).await {
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
                for (seq, payload) in read {
                    s.ahead[i].take(seq, &payload);
                }
                drop(s);
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
            Either::Left((None, _)) => return, // unsubscribed: the lanes are closed
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
            let numbers = m.headers.as_ref().and_then(|h| {
                let js = h.get("Nats-Sequence")?.as_str().parse::<u64>().ok()?;
                Some((hub_seq(h).ok()?, js))
            });
            let taken = numbers.is_some_and(|(seq, _)| {
                let mut s = inner.lock();
                let a = &mut s.ahead[i];
                a.issued = a.issued.max(seq);
                !unread[i] && a.room().is_some() && a.take(seq, &m.payload)
            });
            match (taken, numbers) {
                (true, Some((seq, js))) => {
                    down[i].note_read(seq, js).await;
                    inner.token.notify();
                }
                _ => unread[i] = true,
            }
            message = live.next().now_or_never().flatten();
        }
    }
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
        if seq > a.issued {
            return Err(format!(
                "the peer claims to have processed up to {seq}, beyond the {} this queue issued",
                a.issued
            ));
        }
        if seq > a.acked {
            a.acked = seq;
            drop(s);
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
