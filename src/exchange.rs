//! The messages of an open link: between the durable queues, the session and local delivery.
//!
//! Both hubs use it the same way: [`Exchange::streams`] goes into HELLO (edge) or
//! [`Session::accept`] (cloud); each session event goes through [`Exchange::handle`]; after each
//! round [`Exchange::fill`] tops each lane up from its outgoing queue, as far as the peer's window,
//! [`MAX_IN_FLIGHT_BYTES`] and the room the transport has for it allow.
//!
//! It feeds the link's traffic metrics ([`crate::metrics::METRICS`]): messages and their encoded
//! bytes per lane, received (each once: the session never passes a repeat on) and sent (resends
//! on a later link included), added up per round rather than per message; and the
//! acknowledgement round trip, sampled per lane with one message timed at a time
//! ([`AckSample`]).

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::QueueConfig;
use crate::local::{Delivery, Local};
use crate::message::{Message, MessageView};
use crate::metrics::METRICS;
use crate::proto::frame::{LANES, Lane};
use crate::proto::session::Streams;
use crate::proto::{CloseCode, Event, Session};
use crate::queue::Queue;
use crate::store::{Reader, RecvState};

/// The receiving half's state for one peer stream, kept across links.
///
/// Repeats are recognised by sequence number within the peer's stream, and by nothing else: a
/// `msg_id` is the choice of whichever application published the message, so two messages with
/// the same id are two messages, and both are delivered.
pub struct Inbound {
    /// The file, opened by the first save that changes what it holds: until then (an idle
    /// node's link) only its path is kept.
    file: InboundFile,
    /// The peer stream and the last sequence number delivered from it.
    stream: u64,
    delivered: u64,
}

enum InboundFile {
    /// Not open; holds `saved`, the value read at [`Inbound::open`].
    Closed {
        path: Box<Path>,
        saved: (u64, u64),
    },
    Open(Box<RecvState>),
}

impl Inbound {
    /// Loads the receive state stored at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<Mutex<Inbound>>> {
        let (stream, delivered) = RecvState::open(path)?.get();
        Ok(Arc::new(Mutex::new(Inbound {
            file: InboundFile::Closed {
                path: path.into(),
                saved: (stream, delivered),
            },
            stream,
            delivered,
        })))
    }

    fn save(&mut self) {
        let value = (self.stream, self.delivered);
        let state = match &mut self.file {
            InboundFile::Open(state) => state,
            InboundFile::Closed { saved, .. } if *saved == value => return,
            InboundFile::Closed { path, .. } => match RecvState::open(path) {
                Ok(state) => {
                    self.file = InboundFile::Open(Box::new(state));
                    let InboundFile::Open(state) = &mut self.file else {
                        unreachable!("set above")
                    };
                    state
                }
                Err(e) => {
                    log::error!("cannot record received messages: {e}");
                    return;
                }
            },
        };
        if let Err(e) = state.save(value.0, value.1, false) {
            log::error!("cannot record received messages: {e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lane a message travels on: urgent for a request (`header.sync`), a response (a
/// `header.parent_msg_id`) and what its application marked `header.urgent`; bulk otherwise.
pub fn lane_of(msg: &Message) -> Lane {
    lane_for(msg.sync, msg.urgent, &msg.parent_id)
}

/// [`lane_of`] from the fields it looks at: `header.sync`, `header.urgent` and
/// `header.parent_msg_id`.
pub fn lane_for(sync: bool, urgent: bool, parent_id: &str) -> Lane {
    if sync || urgent || !parent_id.is_empty() {
        Lane::Urgent
    } else {
        Lane::Bulk
    }
}

/// One side's durable state for its link to one peer, per lane: the queue of messages to send
/// and what was received. In `dir`: `out/` and `in.state` for the bulk lane (the layout of the
/// one-lane protocol, so queues written before lanes are kept), `urgent-out/` and
/// `urgent-in.state` for the urgent lane.
pub struct LaneStores {
    /// The outgoing queue of each lane ([`Lane::index`]).
    pub out: [Arc<Queue>; LANES],
    /// The receive state of each lane.
    pub inbound: [Arc<Mutex<Inbound>>; LANES],
    /// Held by the one [`Exchange`] using these stores (see [`Exchange::open`]).
    holder: Arc<smol::lock::Mutex<()>>,
}

impl LaneStores {
    /// Opens (or creates) the queues and receive states in `dir`, each queue with the limits of
    /// `config`. Errors name the file or folder that could not be opened.
    pub fn open(dir: &Path, config: &QueueConfig) -> Result<LaneStores, String> {
        let open = |lane: Lane| {
            let (queue, state) = match lane {
                Lane::Bulk => ("out", "in.state"),
                Lane::Urgent => ("urgent-out", "urgent-in.state"),
            };
            let path = dir.join(queue);
            let out = Queue::open(&path, config)
                .map_err(|e| format!("cannot open the queue in {}: {e}", path.display()))?;
            let path = dir.join(state);
            let inbound = Inbound::open(&path)
                .map_err(|e| format!("cannot open the receive state {}: {e}", path.display()))?;
            Ok::<_, String>((out, inbound))
        };
        let [urgent, bulk] = Lane::ALL.map(open);
        let ((urgent_out, urgent_in), (bulk_out, bulk_in)) = (urgent?, bulk?);
        Ok(LaneStores {
            out: [urgent_out, bulk_out],
            inbound: [urgent_in, bulk_in],
            holder: Arc::default(),
        })
    }

    /// The queue `msg` goes into ([`lane_of`]).
    pub fn queue_for(&self, msg: &Message) -> &Arc<Queue> {
        &self.out[lane_of(msg).index()]
    }

    /// Messages queued and not yet acknowledged, both lanes together.
    pub fn len(&self) -> u64 {
        self.out.iter().map(|q| q.len()).sum()
    }

    /// Whether no message is queued on either lane.
    pub fn is_empty(&self) -> bool {
        self.out.iter().all(|q| q.is_empty())
    }
}

/// A node's lanes kept by the cluster rather than on this process's disk (cluster mode,
/// docs/cluster.md sections 4 and 5): what the cloud's [`Exchange`] reads, acknowledges and
/// stores through when its node's queues are in NATS JetStream. Every call returns at once;
/// the work with NATS goes on elsewhere and [`token`](SharedLanes::token) tells of its progress.
pub trait SharedLanes: Send + Sync {
    /// This side's positions on each lane at the link's start, for [`Session::accept`].
    fn streams(&self) -> [Streams; LANES];
    /// One past the last message of `lane` that [`read`](SharedLanes::read) can give now.
    fn visible(&self, lane: Lane) -> u64;
    /// Appends to `out` the messages of `lane` from sequence number `from` on, in order: at
    /// most `max` of them and `budget` bytes (the first always). Returns how many.
    fn read(
        &self,
        lane: Lane,
        from: u64,
        max: usize,
        budget: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> usize;
    /// The peer processed every message of `lane` up to `seq`: they may go. Errors: a claim
    /// beyond what the lane ever held (a protocol error).
    fn ack(&self, lane: Lane, seq: u64) -> Result<(), String>;
    /// Stores message `seq` of the peer's stream `stream` on `lane`.
    fn store(&self, lane: Lane, stream: u64, seq: u64, payload: Vec<u8>);
    /// The last sequence number of `lane` whose store is confirmed: the peer may be told it
    /// was received ([`Session::committed`]).
    fn stored(&self, lane: Lane) -> u64;
    /// Why the lanes cannot go on (a store was refused), if so.
    fn failure(&self) -> Option<String>;
    /// Notified when there is more to read, a store is confirmed or a failure happened.
    fn token(&self) -> &crate::signal::Token;
}

/// Where one link's lanes are kept.
enum Lanes {
    /// On this process's disk.
    Disk {
        out: [Arc<Queue>; LANES],
        inbound: [Arc<Mutex<Inbound>>; LANES],
    },
    /// By the cluster; `commit` holds what the session asked to commit and waits for its store,
    /// `committed` what the peer was told.
    Shared {
        lanes: Arc<dyn SharedLanes>,
        commit: [Option<u64>; LANES],
        committed: [u64; LANES],
    },
}

/// Messages most sent per [`Exchange::fill`] round and lane.
const FILL_BATCH: usize = 512;
/// Payload bytes sent on one lane and not yet acknowledged at most (besides the window's count of
/// messages). It lets a path of 100 Mbit/s and 600 ms (7.5 MB in flight) stay full, and bounds what
/// a peer that stops acknowledging holds of this side's transport buffers (QUIC keeps sent data
/// until it is acknowledged). One message is always let through, whatever its size.
pub const MAX_IN_FLIGHT_BYTES: usize = 8 << 20;

/// One lane's sending state.
#[derive(Default)]
struct Sending {
    /// Boxed: most lanes of an idle node have none, and every exchange would carry its width.
    reader: Option<Box<Reader>>,
    /// Sent and unacknowledged: each message's sequence number and size, and their total.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    /// The message being timed to its acknowledgement.
    sample: AckSample,
    /// Received since the counters were last added to: messages and bytes.
    received: (u64, u64),
}

/// The acknowledgement round trip of one lane, sampled: one message timed at a time, the first
/// sent while none is; the acknowledgement that covers it ends the sample.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AckSample(Option<(u64, Instant)>);

impl AckSample {
    /// Message `seq` is sent at `now`: timed if no other is.
    pub fn sent(&mut self, seq: u64, now: Instant) {
        if self.0.is_none() {
            self.0 = Some((seq, now));
        }
    }

    /// The peer acknowledged every message up to `seq` at `now`: the round trip of the timed
    /// message if this covers it (and no message is timed any more).
    pub fn acked(&mut self, seq: u64, now: Instant) -> Option<Duration> {
        let (timed, at) = self.0?;
        if seq < timed {
            return None;
        }
        self.0 = None;
        Some(now.saturating_duration_since(at))
    }
}

/// One link's message traffic.
pub struct Exchange {
    lanes: Lanes,
    local: Arc<Local>,
    /// Cloud side: `node/{node-id}/`, put before the resource of every message from the node.
    prefix: Option<String>,
    sending: [Sending; LANES],
    batch: Vec<(u64, Vec<u8>)>,
    /// These stores are this exchange's alone until it is dropped.
    _holding: smol::lock::MutexGuardArc<()>,
}

impl Exchange {
    /// An exchange sending from `stores`' queues, receiving into their receive states and
    /// delivering to `local`.
    ///
    /// Waits until no other exchange uses `stores`: the link a newer one replaces must have
    /// delivered its last message and recorded its position before the newer link reads the
    /// positions it resumes from, or the newer link would deliver those messages again, after
    /// later ones.
    pub async fn open(stores: &LaneStores, local: Arc<Local>, prefix: Option<String>) -> Exchange {
        let holding = stores.holder.lock_arc().await;
        Exchange {
            lanes: Lanes::Disk {
                out: stores.out.clone(),
                inbound: stores.inbound.clone(),
            },
            local,
            prefix,
            sending: Default::default(),
            batch: Vec::new(),
            _holding: holding,
        }
    }

    /// An exchange over lanes the cluster keeps (cloud side, cluster mode). What the node sends
    /// is stored in `lanes` and reaches applications through the cluster, not through `local`;
    /// each receipt is committed to the node once its store is confirmed. `holding` is the
    /// node's holder on this instance (see [`open`](Self::open)).
    pub fn open_shared(
        lanes: Arc<dyn SharedLanes>,
        local: Arc<Local>,
        prefix: String,
        holding: smol::lock::MutexGuardArc<()>,
    ) -> Exchange {
        Exchange {
            lanes: Lanes::Shared {
                lanes,
                commit: [None; LANES],
                committed: [0; LANES],
            },
            local,
            prefix: Some(prefix),
            sending: Default::default(),
            batch: Vec::new(),
            _holding: holding,
        }
    }

    /// This side's stream positions on each lane, for HELLO or [`Session::accept`].
    pub fn streams(&self) -> [Streams; LANES] {
        match &self.lanes {
            Lanes::Disk { out, inbound } => Lane::ALL.map(|lane| {
                let inbound = lock(&inbound[lane.index()]);
                let out = &out[lane.index()];
                Streams {
                    out_stream: out.stream(),
                    out_first: out.first(),
                    in_stream: inbound.stream,
                    in_seq: inbound.delivered,
                }
            }),
            Lanes::Shared { lanes, .. } => lanes.streams(),
        }
    }

    /// Handles the message events of `session`; returns any other event for the caller.
    pub fn handle(&mut self, session: &mut Session, event: Event) -> Option<Event> {
        match event {
            Event::Message { lane, seq, payload } => {
                let received = &mut self.sending[lane.index()].received;
                received.0 += 1;
                received.1 += payload.len() as u64;
                let prefix = self.prefix.as_deref().unwrap_or("");
                let msg = match MessageView::decode(&payload, prefix) {
                    Ok(m) => m,
                    Err(e) => {
                        session.close(
                            CloseCode::ProtocolError,
                            format!("message {seq} on the {lane} lane: {e}"),
                        );
                        return None;
                    }
                };
                let inbound = match &self.lanes {
                    Lanes::Disk { inbound, .. } => inbound,
                    Lanes::Shared { lanes, .. } => {
                        // Delivered to the applications of every instance once stored.
                        lanes.store(lane, session.inbound_stream(lane), seq, payload);
                        return None;
                    }
                };
                {
                    // The session passes each sequence number once: a repeat never gets here.
                    let mut inbound = lock(&inbound[lane.index()]);
                    inbound.stream = session.inbound_stream(lane);
                    inbound.delivered = seq;
                }
                if let Delivery::Refused(mut reply) = self.local.deliver_view(msg) {
                    // The answer goes back under the resource the peer gave.
                    if let Some(prefix) = &self.prefix {
                        if reply.resource.starts_with(prefix.as_str()) {
                            reply.resource.drain(..prefix.len());
                        }
                    }
                    self.send_back(reply);
                }
                if self.local.wrote_durable() {
                    // A durable session keeps it: were the position recorded only at the next
                    // acknowledgement, a restart in between would have it sent and kept again.
                    lock(&inbound[lane.index()]).save();
                }
                None
            }
            Event::Acked(lane, seq) => {
                let sending = &mut self.sending[lane.index()];
                if let Some(rtt) = sending.sample.acked(seq, Instant::now()) {
                    METRICS.ack_round_trip.observe_duration(rtt);
                }
                while let Some(&(s, len)) = sending.in_flight.front() {
                    if s > seq {
                        break;
                    }
                    sending.in_flight.pop_front();
                    sending.in_flight_bytes -= len;
                }
                match &self.lanes {
                    Lanes::Disk { out, .. } => match out[lane.index()].ack(seq) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            session.close(CloseCode::ProtocolError, format!("{lane} lane: {e}"));
                        }
                        Err(e) => log::error!("cannot reclaim acknowledged messages: {e}"),
                    },
                    Lanes::Shared { lanes, .. } => {
                        if let Err(e) = lanes.ack(lane, seq) {
                            session.close(CloseCode::ProtocolError, format!("{lane} lane: {e}"));
                        }
                    }
                }
                None
            }
            Event::Commit(lane, seq) => {
                let inbound = match &mut self.lanes {
                    Lanes::Disk { inbound, .. } => inbound,
                    Lanes::Shared { commit, .. } => {
                        // Committed once the cluster confirms the store (see `fill`).
                        commit[lane.index()] = Some(seq);
                        self.commit_stored(session);
                        return None;
                    }
                };
                // What durable subscriptions were given must be durable before the peer is told
                // it may forget it.
                self.local.sync_durable();
                {
                    let mut inbound = lock(&inbound[lane.index()]);
                    let stream = session.inbound_stream(lane);
                    if inbound.stream == stream {
                        inbound.delivered = inbound.delivered.max(seq);
                    } else {
                        // A new peer stream (a reinstalled gateway, a wiped queue): its numbers
                        // start over, and the old stream's position means nothing for it.
                        inbound.stream = stream;
                        inbound.delivered = seq;
                    }
                    inbound.save();
                }
                session.committed(lane, seq);
                None
            }
            other => Some(other),
        }
    }

    /// Shared lanes: commits to the peer what the cluster confirmed storing, and closes the
    /// link if a store failed (the peer sends the rest again on its next link).
    fn commit_stored(&mut self, session: &mut Session) {
        let Lanes::Shared {
            lanes,
            commit,
            committed,
        } = &mut self.lanes
        else {
            return;
        };
        if let Some(why) = lanes.failure() {
            session.close(CloseCode::Unavailable, why);
            return;
        }
        for lane in Lane::ALL {
            let i = lane.index();
            // What is stored is acknowledged as it comes, not only once all the session asked
            // for is: the peer's window moves on meanwhile.
            if let Some(seq) = commit[i] {
                let upto = lanes.stored(lane).min(seq);
                if upto == seq {
                    commit[i] = None;
                }
                // All of it is always answered: the session asks for no more until it is.
                if upto > committed[i] || upto == seq {
                    committed[i] = committed[i].max(upto);
                    session.committed(lane, upto);
                }
            }
        }
    }

    /// Queues a hub-made answer (an error for a request nobody took) back to the peer, on the
    /// urgent lane like every answer.
    fn send_back(&self, reply: Message) {
        let Lanes::Disk { out, .. } = &self.lanes else {
            return;
        };
        match reply.encode() {
            Ok(bytes) => {
                let done = out[Lane::Urgent.index()].submit_with(vec![bytes], false);
                smol::spawn(async move {
                    if let Err(e) = done.await {
                        log::warn!("cannot answer a request nobody took: {e}");
                    }
                })
                .detach();
            }
            Err(e) => log::warn!("cannot answer a request nobody took: {e}"),
        }
    }

    /// Sends queued messages on every lane while the peer's window, [`MAX_IN_FLIGHT_BYTES`] and
    /// `room` allow: `room(lane)` is how many more bytes the transport takes on that lane now
    /// (what it already holds stays in the durable queue's place, not in memory twice).
    ///
    /// Also adds what was received and sent since the last call to the traffic counters, and
    /// (shared lanes) commits to the peer what the cluster stored since.
    pub fn fill(&mut self, session: &mut Session, room: impl Fn(Lane) -> usize) {
        self.commit_stored(session);
        for lane in Lane::ALL {
            let room = room(lane).saturating_sub(session.queued_bytes(lane));
            let (messages, bytes) = self.fill_lane(session, lane, room);
            let i = lane.index();
            if messages > 0 {
                METRICS.transmit_messages[i].add(messages);
                METRICS.transmit_bytes[i].add(bytes);
            }
            let received = std::mem::take(&mut self.sending[i].received);
            if received.0 > 0 {
                METRICS.receive_messages[i].add(received.0);
                METRICS.receive_bytes[i].add(received.1);
            }
        }
    }

    /// Sends what `lane` may; returns the messages sent and their bytes.
    fn fill_lane(&mut self, session: &mut Session, lane: Lane, mut room: usize) -> (u64, u64) {
        let sending = &mut self.sending[lane.index()];
        let mut sent = (0u64, 0u64);
        loop {
            let count = session.send_capacity(lane) as usize;
            let visible = match &self.lanes {
                Lanes::Disk { out, .. } => out[lane.index()].visible(),
                Lanes::Shared { lanes, .. } => lanes.visible(lane),
            };
            let budget = MAX_IN_FLIGHT_BYTES
                .saturating_sub(sending.in_flight_bytes)
                .min(room);
            let next = session.next_send_seq(lane);
            if count == 0 || budget == 0 || next >= visible {
                return sent;
            }
            self.batch.clear();
            let max = count.min(FILL_BATCH);
            match &self.lanes {
                Lanes::Shared { lanes, .. } => {
                    if lanes.read(lane, next, max, budget, &mut self.batch) == 0 {
                        return sent;
                    }
                }
                Lanes::Disk { out, .. } => {
                    let out = &out[lane.index()];
                    if sending.reader.as_ref().is_none_or(|r| r.position() != next) {
                        match out.reader(next) {
                            Ok(r) => sending.reader = Some(Box::new(r)),
                            Err(e) => {
                                session.close(
                                    CloseCode::ProtocolError,
                                    format!("cannot read the {lane} queue: {e}"),
                                );
                                return sent;
                            }
                        }
                    }
                    let reader = sending.reader.as_mut().expect("set above");
                    match reader.read_limited(visible, max, budget, &mut self.batch) {
                        Ok(0) => return sent,
                        Ok(_) => {}
                        Err(e) => {
                            log::error!("cannot read the {lane} queue: {e}");
                            sending.reader = None;
                            return sent;
                        }
                    }
                }
            }
            for (seq, payload) in self.batch.drain(..) {
                if seq != session.next_send_seq(lane) {
                    log::error!(
                        "{lane} queue returned message {seq}, expected {}",
                        session.next_send_seq(lane)
                    );
                    sending.reader = None;
                    return sent;
                }
                if sent.0 == 0 {
                    sending.sample.sent(seq, Instant::now());
                }
                sent.0 += 1;
                sent.1 += payload.len() as u64;
                sending.in_flight.push_back((seq, payload.len()));
                sending.in_flight_bytes += payload.len();
                room = room.saturating_sub(payload.len());
                session.send_message(lane, seq, payload);
            }
        }
    }

    /// Finishes when an outgoing queue has new messages (shared lanes: also when a store was
    /// confirmed or failed).
    pub async fn added(&self) {
        use smol::future::FutureExt;
        match &self.lanes {
            Lanes::Disk { out, .. } => {
                let [urgent, bulk] = out;
                urgent.added().or(bulk.added()).await
            }
            Lanes::Shared { lanes, .. } => lanes.token().wait().await,
        }
    }

    /// The link ended: record what was delivered, so the next link resumes after it, and count
    /// what was received since the last [`Exchange::fill`].
    pub fn finish(&mut self) {
        if let Lanes::Disk { inbound, .. } = &self.lanes {
            for inbound in inbound {
                lock(inbound).save();
            }
        }
        for lane in Lane::ALL {
            let (messages, bytes) = std::mem::take(&mut self.sending[lane.index()].received);
            METRICS.receive_messages[lane.index()].add(messages);
            METRICS.receive_bytes[lane.index()].add(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::VERSION;
    use crate::proto::frame::{Frame, Hello, HelloLane, MESSAGE_HEADER};
    use std::time::{Duration, Instant};

    fn hello(up_stream: u64) -> Hello {
        Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat: Duration::from_secs(1),
            read_deadline: Duration::from_secs(10),
            window: 64,
            // The urgent lane's stream is another than the bulk lane's.
            lanes: [up_stream << 32, up_stream].map(|up_stream| HelloLane {
                up_stream,
                up_first: 1,
                down_stream: 0,
                down_seq: 0,
            }),
        }
    }

    fn message(n: u8) -> Vec<u8> {
        message_with_id(n, &format!("m{n}"))
    }

    fn message_with_id(n: u8, id: &str) -> Vec<u8> {
        Message {
            id: id.to_owned(),
            resource: "r".into(),
            content: n.to_string().into_bytes(),
            ..Message::default()
        }
        .encode()
        .unwrap()
    }

    /// A cloud-side session for an edge whose outbox stream is `up_stream`, fed `count` messages.
    fn link(ex: &mut Exchange, up_stream: u64, count: u8) -> Session {
        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        s.handle_frame(now, Frame::Hello(hello(up_stream)));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        for seq in 1..=count {
            s.handle_frame(
                now,
                Frame::Message {
                    lane: Lane::Bulk,
                    seq: u64::from(seq),
                    payload: message(seq),
                },
            );
        }
        s.handle_timeout(now + Duration::from_secs(1));
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        s
    }

    /// The queues and receive states of both lanes in `dir` (at most 100 messages, window 64).
    fn stores(dir: &Path) -> LaneStores {
        let config = crate::config::QueueConfig {
            dir: dir.to_owned(),
            max_messages: 100,
            max_bytes: 1 << 30,
            fsync: crate::store::Fsync::Never,
            window: 64,
        };
        LaneStores::open(dir, &config).unwrap()
    }

    /// An exchange with its queues and receive states in `dir`.
    fn exchange(dir: &Path) -> (Exchange, LaneStores) {
        let stores = stores(dir);
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        (smol::block_on(Exchange::open(&stores, local, None)), stores)
    }

    #[test]
    fn one_message_per_lane_is_timed_to_its_acknowledgement() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = AckSample::default();
        assert_eq!(s.acked(5, ms(1)), None, "nothing timed");
        s.sent(3, ms(10));
        s.sent(4, ms(11)); // 3 is being timed: 4 is not
        assert_eq!(s.acked(2, ms(20)), None, "an ack short of it");
        assert_eq!(s.acked(4, ms(30)), Some(Duration::from_millis(20)));
        assert_eq!(s.acked(4, ms(31)), None, "observed once");
        s.sent(5, ms(40));
        assert_eq!(s.acked(9, ms(45)), Some(Duration::from_millis(5)));
        // A clock that went backwards gives zero, not a panic.
        s.sent(10, ms(50));
        assert_eq!(s.acked(10, ms(49)), Some(Duration::ZERO));
    }

    #[test]
    fn a_new_peer_stream_does_not_inherit_the_old_position() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, _) = exchange(tmp.path());
        let bulk = |ex: &Exchange| {
            let s = ex.streams()[Lane::Bulk.index()];
            (s.in_stream, s.in_seq)
        };

        link(&mut ex, 0xaaaa, 5);
        assert_eq!(bulk(&ex), (0xaaaa, 5));
        // The gateway is reinstalled: a new outbox stream, numbered from 1 again. Its first link
        // drops before any message arrives; the position recorded must be the new stream's.
        link(&mut ex, 0xbbbb, 0);
        assert_eq!(bulk(&ex), (0xbbbb, 0));
        let reopened = Inbound::open(&tmp.path().join("in.state")).unwrap();
        let state = lock(&reopened);
        assert_eq!(
            (state.stream, state.delivered),
            (0xbbbb, 0),
            "and that is what is on disk"
        );
    }

    #[test]
    fn a_link_that_moves_no_position_opens_no_receive_state() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, _) = exchange(tmp.path());
        link(&mut ex, 0xaaaa, 5);
        ex.finish();
        drop(ex);

        // The edge comes back with nothing new: the receive states stay closed (their paths and
        // the positions read at connect are all a node holds), through the link's end.
        let (mut ex, stores) = exchange(tmp.path());
        let closed = |stores: &LaneStores| {
            stores
                .inbound
                .iter()
                .all(|i| matches!(lock(i).file, InboundFile::Closed { .. }))
        };
        assert!(closed(&stores));
        let mut s = link(&mut ex, 0xaaaa, 0);
        s.handle_timeout(Instant::now() + Duration::from_secs(5));
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        ex.finish();
        assert!(closed(&stores), "nothing changed, nothing opened");
        assert_eq!(ex.streams()[Lane::Bulk.index()].in_seq, 5);

        // A message moves the position: the state is opened and written.
        link(&mut ex, 0xaaaa, 6);
        ex.finish();
        assert!(!closed(&stores));
        let reopened = Inbound::open(&tmp.path().join("in.state")).unwrap();
        let state = lock(&reopened);
        assert_eq!((state.stream, state.delivered), (0xaaaa, 6));
    }

    #[test]
    fn a_replacing_link_resumes_after_what_the_replaced_one_delivered() {
        // The cloud admits a node's new link while the old one may still be delivering what it
        // had read: the new exchange waits for the old to let go, so the position it resumes
        // from (its WELCOME) covers everything the old one delivered.
        let tmp = tempfile::tempdir().unwrap();
        let stores = stores(tmp.path());
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        let mut old = smol::block_on(Exchange::open(&stores, local.clone(), None));
        let mut new = Box::pin(Exchange::open(&stores, local, None));
        assert!(
            smol::block_on(smol::future::poll_once(&mut new)).is_none(),
            "opened while the old exchange holds the stores"
        );
        link(&mut old, 0xaaaa, 7);
        drop(old);
        let new = smol::block_on(new);
        let s = new.streams()[Lane::Bulk.index()];
        assert_eq!((s.in_stream, s.in_seq), (0xaaaa, 7));
    }

    #[test]
    fn messages_sharing_a_msg_id_are_all_delivered() {
        // Applications choose msg_ids; two of them (or one, twice) may choose the same. Only the
        // link's sequence numbers tell a repeat; three messages numbered 1, 2, 3 are three.
        let tmp = tempfile::tempdir().unwrap();
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        let (app, app_rx) = crate::local::app_channel("test", 16, 1 << 20);
        local.subscribe(crate::local::Filter::default(), app);
        let mut ex = smol::block_on(Exchange::open(&stores(tmp.path()), local, None));

        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        s.handle_frame(now, Frame::Hello(hello(0xaaaa)));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        for seq in 1..=3 {
            let payload = message_with_id(seq, "fixed-1");
            s.handle_frame(
                now,
                Frame::Message {
                    lane: Lane::Bulk,
                    seq: u64::from(seq),
                    payload,
                },
            );
        }
        // A retransmission of number 2 is a repeat, whatever its id.
        s.handle_frame(
            now,
            Frame::Message {
                lane: Lane::Bulk,
                seq: 2,
                payload: message_with_id(2, "other"),
            },
        );
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        let got: Vec<Message> = std::iter::from_fn(|| app_rx.try_recv())
            .map(|t| Message::from_json(&t.into_json()).unwrap())
            .collect();
        let contents: Vec<&[u8]> = got.iter().map(|m| &m.content[..]).collect();
        assert_eq!(contents, [&b"1"[..], b"2", b"3"]);
        assert!(got.iter().all(|m| m.id == "fixed-1"));
    }

    #[test]
    fn sent_messages_are_framed_in_their_own_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, stores) = exchange(tmp.path());
        let records = vec![message(1), message(2)];
        smol::block_on(stores.out[Lane::Bulk.index()].append(records.clone())).unwrap();
        let mut s = link(&mut ex, 0xaaaa, 0);
        ex.fill(&mut s, |_| usize::MAX);
        let mut sent = 0;
        while let Some(f) = s.poll_transmit(Instant::now()) {
            let Frame::Message { payload, .. } = &f else {
                continue;
            };
            // The queue's reader leaves room for the frame's header: sending copies nothing.
            assert!(payload.capacity() - payload.len() >= MESSAGE_HEADER);
            let at = payload.as_ptr();
            let expected = f.encode();
            let bytes = f.into_bytes();
            assert_eq!(bytes, expected);
            assert_eq!(bytes.as_ptr(), at, "framed in its own bytes");
            sent += 1;
        }
        assert_eq!(sent, records.len());
    }

    #[test]
    fn unacknowledged_bytes_are_bounded_as_well_as_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, stores) = exchange(tmp.path());
        let big = vec![7u8; 1 << 20];
        let bulk = &stores.out[Lane::Bulk.index()];
        smol::block_on(bulk.append(vec![big; 20])).unwrap();
        let b = Lane::Bulk;
        let unlimited = |_| usize::MAX;

        let mut s = link(&mut ex, 0xaaaa, 0);
        assert_eq!(s.send_capacity(b), 64, "the window would allow all twenty");
        ex.fill(&mut s, unlimited);
        let most = MAX_IN_FLIGHT_BYTES >> 20;
        assert_eq!(s.next_send_seq(b), 1 + most as u64, "8 MiB sent, no more");
        ex.fill(&mut s, unlimited);
        assert_eq!(
            s.next_send_seq(b),
            1 + most as u64,
            "still 8 MiB unacknowledged"
        );
        let now = Instant::now();
        s.handle_frame(now, Frame::Ack { lane: b, seq: 3 });
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        ex.fill(&mut s, unlimited);
        assert_eq!(
            s.next_send_seq(b),
            4 + most as u64,
            "three acknowledged, three more sent"
        );
    }

    #[test]
    fn no_more_is_read_than_the_transport_has_room_for() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, stores) = exchange(tmp.path());
        let b = Lane::Bulk;
        smol::block_on(stores.out[b.index()].append(vec![vec![1u8; 1000]; 50])).unwrap();
        let mut s = link(&mut ex, 0xaaaa, 0);
        // Room for 10 KB on the bulk lane: ten messages, then none while they wait.
        ex.fill(&mut s, |_| 10_000);
        assert_eq!(s.next_send_seq(b), 11);
        ex.fill(&mut s, |_| 10_000);
        assert_eq!(s.next_send_seq(b), 11, "the ten still wait in the session");
        while s.poll_transmit(Instant::now()).is_some() {}
        ex.fill(&mut s, |_| 10_000);
        assert_eq!(s.next_send_seq(b), 21, "taken: ten more");
    }

    #[test]
    fn a_peer_claiming_impossible_progress_is_closed_on() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut ex, stores) = exchange(tmp.path());
        let out = stores.out[Lane::Bulk.index()].clone();
        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        // The edge says it processed this queue's stream up to the last number there is.
        let mut hello = hello(0xaaaa);
        hello.lanes[Lane::Bulk.index()].down_stream = out.stream();
        hello.lanes[Lane::Bulk.index()].down_seq = u64::MAX - 1;
        s.handle_frame(now, Frame::Hello(hello));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        let mut closed = None;
        while let Some(ev) = s.poll_event() {
            if let Some(Event::Close(code, why)) = ex.handle(&mut s, ev) {
                closed = Some((code, why));
            }
        }
        let (code, why) = closed.expect("the link is closed");
        assert_eq!(code, CloseCode::ProtocolError);
        assert!(why.contains("claims to have processed"), "{why}");
        assert_eq!(out.first(), 1, "and the queue's numbering is untouched");
    }
}
