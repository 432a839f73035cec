//! The session state machine: hello and welcome, heartbeats, deadlines, lanes, close.
//!
//! A [`Session`] is driven by its caller: [`Session::handle_frame`] for each frame that arrives,
//! [`Session::handle_timeout`] when the instant from [`Session::poll_timeout`] has passed, then
//! [`Session::poll_transmit`] and [`Session::poll_event`] until they return `None`. It never
//! reads a clock or a socket.
//!
//! Deadlines: each side declares the link dead when nothing arrived for its deadline (the edge's
//! `read-deadline`, the cloud's `keepalive-interval`). Each side sends a heartbeat when it has
//! been silent for its heartbeat interval; the intervals are chosen so the peer's deadline is met:
//! the edge sends at most every `keepalive / 2` whatever its `heartbeat` says, the cloud every
//! `read-deadline / 3` of the edge.
//!
//! Messages travel on [`Lane`]s, each an independent stream of sequence-numbered messages from
//! the sender's durable queue of that lane, in each direction. Each side announces a receive
//! window (per lane); the sender keeps at most the peer's window of messages unacknowledged on a
//! lane, and a receiver closes on a peer that sends more. The receiver takes each lane's messages
//! strictly in order, drops repeats, and acknowledges cumulatively once the caller has made them
//! safe ([`Event::Commit`] → [`Session::committed`]), after [`ACK_EVERY`] messages or
//! [`ACK_EVERY_BYTES`], or [`ACK_DELAY`] after the first unacknowledged one, whichever comes
//! first. HELLO and WELCOME carry each side's stream ids and positions per lane, so after a
//! reconnect each sender resumes right after what the receiver already processed.
//!
//! Frames are queued per lane: [`Session::poll_transmit`] hands out every urgent frame (and every
//! frame that is not a message) before any bulk one, and messages over [`CHUNK`] bytes are cut
//! into [`Frame::Part`]s, so that an urgent frame queued behind a large message waits for one piece
//! at most.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::{
    CHUNK, CloseCode, CompactFrame, Frame, FrameError, Hello, HelloLane, LANES, Lane, Welcome,
    WelcomeLane,
};
use super::{MAX_FRAME, VERSION};

/// The longest a receiver waits before acknowledging messages that did not reach
/// [`ACK_EVERY`] or [`ACK_EVERY_BYTES`].
pub const ACK_DELAY: Duration = Duration::from_millis(5);
/// A receiver acknowledges at least every this many messages on a lane (or every quarter of its
/// window, if that is fewer), whatever the window: a sender's window is never held up waiting for
/// a quarter of a large window.
pub const ACK_EVERY: u64 = 128;
/// … and at least every this many bytes of messages.
pub const ACK_EVERY_BYTES: usize = 256 << 10;

/// A side's durable stream positions on one lane, as stored by its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Streams {
    /// This side's outgoing queue: its stream id …
    pub out_stream: u64,
    /// … and the first sequence number it still holds (acknowledged + 1).
    pub out_first: u64,
    /// The peer stream this side last received from (0: none) …
    pub in_stream: u64,
    /// … and the last sequence number it processed from it.
    pub in_seq: u64,
}

impl From<Streams> for HelloLane {
    /// The edge's positions as HELLO carries them: its outgoing queue is the `up` stream, the
    /// stream it receives the `down` one.
    fn from(s: Streams) -> HelloLane {
        HelloLane {
            up_stream: s.out_stream,
            up_first: s.out_first,
            down_stream: s.in_stream,
            down_seq: s.in_seq,
        }
    }
}

/// Which end of the link a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway; speaks first.
    Edge,
    /// The cloud; answers.
    Cloud,
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Cloud only: the edge said HELLO. Check its identity and capacity, then call
    /// [`Session::accept`] or [`Session::close`].
    Hello(Box<Hello>),
    /// The link is open: the edge got WELCOME, or the cloud accepted the HELLO.
    Open,
    /// The session closed itself (deadline passed, protocol error); tell the peer with this code
    /// and close the transport.
    Close(CloseCode, String),
    /// The next message of the peer's stream on `lane`, in order and not seen before: deliver it.
    Message {
        /// Its lane.
        lane: Lane,
        /// Its sequence number.
        seq: u64,
        /// The encoded message.
        payload: Vec<u8>,
    },
    /// The peer acknowledged every message of this side's stream on the lane up to this
    /// sequence number: the queue may drop them.
    Acked(Lane, u64),
    /// Make the receipt of every message on the lane up to this sequence number durable (with
    /// the peer's stream id, [`Session::inbound_stream`]), then call [`Session::committed`].
    Commit(Lane, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Edge waiting for WELCOME, or cloud waiting for HELLO.
    Handshake,
    /// Cloud: HELLO reported, waiting for the caller's verdict.
    Deciding,
    Open,
    Closed,
}

/// One lane's sending and receiving state.
#[derive(Debug)]
struct LaneState {
    /// Edge: its stream positions, as put in HELLO.
    local: Streams,
    /// Sending: the next sequence number to send, and the highest acknowledged.
    out_next: u64,
    out_acked: u64,
    /// Frames of this lane waiting to be sent.
    transmit: VecDeque<CompactFrame>,
    /// Receiving: the peer's stream id and the next sequence number expected from it.
    in_stream: u64,
    in_expected: u64,
    /// Receiving: the leading pieces of message `in_expected`, if some came, and the length of
    /// the whole message.
    partial: Vec<u8>,
    partial_total: usize,
    /// Receiving: messages delivered but not yet committed (and their bytes), the last committed
    /// sequence number, whether a commit is with the caller, and when the pending ones must be
    /// committed.
    in_uncommitted: u64,
    in_uncommitted_bytes: usize,
    in_committed: u64,
    commit_pending: bool,
    commit_due: Option<Instant>,
}

impl LaneState {
    fn new() -> LaneState {
        LaneState {
            local: Streams::default(),
            out_next: 1,
            out_acked: 0,
            transmit: VecDeque::new(),
            in_stream: 0,
            in_expected: 1,
            partial: Vec::new(),
            partial_total: 0,
            in_uncommitted: 0,
            in_uncommitted_bytes: 0,
            in_committed: 0,
            commit_pending: false,
            commit_due: None,
        }
    }
}

/// One link's protocol state.
#[derive(Debug)]
pub struct Session {
    role: Role,
    state: State,
    /// Declare the link dead after this long without a frame.
    deadline: Duration,
    /// Send a heartbeat after this long without sending; set once the link is open.
    heartbeat: Option<Duration>,
    /// Edge: the heartbeat it asked for (shortened to the cloud's keepalive on WELCOME).
    /// Cloud: unused until HELLO tells it the edge's read deadline.
    wanted_heartbeat: Duration,
    last_recv: Instant,
    last_send: Instant,
    events: VecDeque<Event>,
    /// What the edge said in HELLO (cloud, until it is accepted: a cloud keeps a session per
    /// node, and nothing of the HELLO is read after WELCOME), or what the cloud said in WELCOME
    /// (edge). Boxed: one or the other, once per link, is no reason to widen every session.
    peer_hello: Option<Box<Hello>>,
    peer_welcome: Option<Box<Welcome>>,
    /// This side's receive window on each lane: messages it takes ahead of its
    /// acknowledgements, announced to the peer (HELLO or WELCOME `window`) and enforced.
    window: u32,
    /// The peer's receive window on each lane: messages this side may send ahead of its
    /// acknowledgements.
    peer_window: u32,
    lanes: [LaneState; LANES],
}

impl Session {
    /// An edge session: queues HELLO at once. `read_deadline` also bounds the wait for WELCOME.
    /// HELLO's window and stream fields describe the edge's queues.
    pub fn edge(now: Instant, hello: Hello) -> Session {
        let mut s = Session::new(
            Role::Edge,
            now,
            hello.read_deadline,
            hello.heartbeat,
            hello.window,
        );
        for (lane, h) in s.lanes.iter_mut().zip(&hello.lanes) {
            lane.local = Streams {
                out_stream: h.up_stream,
                out_first: h.up_first,
                in_stream: h.down_stream,
                in_seq: h.down_seq,
            };
        }
        s.lanes[0].transmit.push_back(Frame::Hello(hello).into());
        s
    }

    /// A cloud session, waiting for HELLO; `keepalive` is its deadline (`keepalive-interval`),
    /// `window` its receive window on each lane: the messages it takes ahead of its
    /// acknowledgements.
    pub fn cloud(now: Instant, keepalive: Duration, window: u32) -> Session {
        Session::new(Role::Cloud, now, keepalive, keepalive, window)
    }

    fn new(
        role: Role,
        now: Instant,
        deadline: Duration,
        heartbeat: Duration,
        window: u32,
    ) -> Session {
        Session {
            role,
            state: State::Handshake,
            deadline,
            heartbeat: None,
            wanted_heartbeat: heartbeat,
            last_recv: now,
            last_send: now,
            events: VecDeque::new(),
            peer_hello: None,
            peer_welcome: None,
            window: window.max(1),
            peer_window: 1,
            lanes: [LaneState::new(), LaneState::new()],
        }
    }

    /// Sets up one lane's streams once the link opens: where this side resumes sending
    /// (`out_start`), which peer stream it receives and the first sequence number it expects
    /// from it.
    fn open_lane(&mut self, lane: Lane, out_start: u64, in_stream: u64, in_expected: u64) {
        let l = &mut self.lanes[lane.index()];
        let local = l.local;
        l.out_next = out_start;
        l.out_acked = out_start - 1;
        if out_start > local.out_first {
            self.events.push_back(Event::Acked(lane, out_start - 1));
        }
        l.in_expected = in_expected;
        l.in_committed = in_expected - 1;
        if in_stream != local.in_stream || in_expected - 1 != local.in_seq {
            // A new peer stream, or one that moved on while this side was away: record where.
            l.commit_pending = true;
            self.events.push_back(Event::Commit(lane, in_expected - 1));
        }
        l.in_stream = in_stream;
    }

    /// Edge: the transport is connected (TCP, TLS and the upgrade, or the QUIC handshake) at
    /// `now`, so HELLO is on its way. The wait for WELCOME (at most `read_deadline`) and the
    /// heartbeat timer count from here, not from when the session was made: a connect may take
    /// up to `handshake-timeout`, which bounds it on its own (docs/protocol.md section 3,
    /// "Connecting"). Call it once, before the first [`handle_timeout`](Self::handle_timeout)
    /// after the connect; a session that is already open or closed is left as it is.
    pub fn connected(&mut self, now: Instant) {
        if self.state == State::Handshake {
            self.last_recv = now;
            self.last_send = now;
        }
    }

    /// Which end this session is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the link is open (WELCOME sent or received).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the session has closed; nothing more will be transmitted.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The edge's HELLO (cloud side), from its arrival until [`accept`](Self::accept).
    pub fn hello(&self) -> Option<&Hello> {
        self.peer_hello.as_deref()
    }

    /// The cloud's WELCOME (edge side), once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.peer_welcome.as_deref()
    }

    /// The interval at which this side sends heartbeats when idle, once open.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// Decodes and handles one frame's bytes. A bad frame closes the session
    /// ([`Event::Close`] with the matching code).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        match Frame::decode(bytes) {
            Ok(frame) => self.handle_frame(now, frame),
            Err(e) => self.fail(now, e),
        }
    }

    /// [`handle_bytes`](Self::handle_bytes) of bytes it may keep: a message's payload is
    /// `bytes` itself ([`Frame::decode_owned`]).
    pub fn handle_owned(&mut self, now: Instant, bytes: Vec<u8>) {
        match Frame::decode_owned(bytes) {
            Ok(frame) => self.handle_frame(now, frame),
            Err(e) => self.fail(now, e),
        }
    }

    /// Handles a decoding error found by the transport (for example an oversized length).
    pub fn fail(&mut self, _now: Instant, e: FrameError) {
        self.close(e.close_code(), e.to_string());
    }

    /// Handles one received frame.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if self.state == State::Closed {
            return;
        }
        self.last_recv = now;
        match (self.role, self.state, frame) {
            (_, State::Open, Frame::Message { lane, seq, payload }) => {
                self.receive(now, lane, seq, payload, None)
            }
            (
                _,
                State::Open,
                Frame::Part {
                    lane,
                    seq,
                    offset,
                    total,
                    payload,
                },
            ) => self.receive(now, lane, seq, payload, Some((offset, total))),
            (_, State::Open, Frame::Ack { lane, seq }) => {
                let l = &mut self.lanes[lane.index()];
                if seq >= l.out_next {
                    let why = format!(
                        "ACK of {seq} on the {lane} lane, but only {} sent",
                        l.out_next - 1
                    );
                    self.close(CloseCode::ProtocolError, why);
                } else if seq > l.out_acked {
                    l.out_acked = seq;
                    self.events.push_back(Event::Acked(lane, seq));
                }
            }
            (_, _, Frame::Heartbeat)
                if self.state != State::Handshake || self.role == Role::Edge => {}
            (Role::Cloud, State::Handshake, Frame::Hello(h)) => {
                if h.version != VERSION {
                    let why = format!(
                        "edge speaks version {}, this cloud {VERSION}: upgrade the edge",
                        h.version
                    );
                    self.close(CloseCode::UnsupportedVersion, why);
                    return;
                }
                self.state = State::Deciding;
                self.peer_hello = Some(Box::new(h.clone()));
                self.events.push_back(Event::Hello(Box::new(h)));
            }
            (Role::Edge, State::Handshake, Frame::Welcome(w)) => {
                if w.version != VERSION {
                    let why = format!(
                        "cloud speaks version {}, this edge {VERSION}: run the same version on both",
                        w.version
                    );
                    self.close(CloseCode::UnsupportedVersion, why);
                    return;
                }
                // Heartbeat often enough for the cloud's keepalive, whatever was configured.
                self.heartbeat = Some(
                    self.wanted_heartbeat
                        .min(w.keepalive / 2)
                        .max(MIN_HEARTBEAT),
                );
                self.peer_window = w.window.max(1);
                self.state = State::Open;
                self.events.push_back(Event::Open);
                for lane in Lane::ALL {
                    let local = self.lanes[lane.index()].local;
                    let wl = w.lanes[lane.index()];
                    // The cloud processed our stream up to up_seq; we resume after it, never
                    // before what we still hold. Saturating: up_seq comes off the wire.
                    let out_start = wl.up_seq.saturating_add(1).max(local.out_first);
                    let in_expected = if wl.down_stream == local.in_stream {
                        (local.in_seq + 1).max(wl.down_first)
                    } else {
                        wl.down_first.max(1)
                    };
                    self.open_lane(lane, out_start, wl.down_stream, in_expected);
                }
                self.peer_welcome = Some(Box::new(w));
            }
            (_, state, frame) => {
                let why = format!("unexpected {} in state {state:?}", frame_name(&frame));
                self.close(CloseCode::ProtocolError, why);
            }
        }
    }

    /// Cloud: accepts the edge whose HELLO was reported, given the cloud's stream positions for
    /// this node on each lane; queues WELCOME and opens the link.
    pub fn accept(&mut self, now: Instant, local: [Streams; LANES]) {
        if self.state != State::Deciding {
            return;
        }
        let Some(h) = self.peer_hello.take() else {
            return;
        };
        let heartbeat = (h.read_deadline / 3).max(MIN_HEARTBEAT);
        self.heartbeat = Some(heartbeat);
        self.peer_window = h.window.max(1);
        let mut lanes = [WelcomeLane::default(); LANES];
        let mut starts = [(0, 0); LANES];
        for lane in Lane::ALL {
            let (hl, ours): (HelloLane, Streams) = (h.lanes[lane.index()], local[lane.index()]);
            let in_expected = if hl.up_stream == ours.in_stream {
                (ours.in_seq + 1).max(hl.up_first)
            } else {
                hl.up_first.max(1)
            };
            let out_start = if hl.down_stream == ours.out_stream {
                // Saturating: down_seq comes off the wire.
                hl.down_seq.saturating_add(1).max(ours.out_first)
            } else {
                ours.out_first.max(1)
            };
            lanes[lane.index()] = WelcomeLane {
                down_stream: ours.out_stream,
                down_first: ours.out_first,
                up_seq: in_expected - 1,
            };
            starts[lane.index()] = (out_start, in_expected);
            self.lanes[lane.index()].local = ours;
        }
        let welcome = Frame::Welcome(Welcome {
            version: VERSION,
            keepalive: self.deadline,
            heartbeat,
            window: self.window,
            lanes,
        });
        self.lanes[0].transmit.push_back(welcome.into());
        self.last_recv = now;
        self.state = State::Open;
        self.events.push_back(Event::Open);
        for lane in Lane::ALL {
            let (out_start, in_expected) = starts[lane.index()];
            self.open_lane(
                lane,
                out_start,
                h.lanes[lane.index()].up_stream,
                in_expected,
            );
        }
    }

    /// How many more messages may be sent now on `lane` (the peer's window less what is
    /// unacknowledged).
    pub fn send_capacity(&self, lane: Lane) -> u64 {
        if self.state != State::Open {
            return 0;
        }
        let l = &self.lanes[lane.index()];
        u64::from(self.peer_window).saturating_sub(l.out_next - 1 - l.out_acked)
    }

    /// The sequence number the next [`send_message`](Self::send_message) on `lane` must carry.
    pub fn next_send_seq(&self, lane: Lane) -> u64 {
        self.lanes[lane.index()].out_next
    }

    /// The highest sequence number the peer acknowledged on `lane`.
    pub fn acked(&self, lane: Lane) -> u64 {
        self.lanes[lane.index()].out_acked
    }

    /// Messages unacknowledged on this link, both lanes together: sent and not yet acknowledged
    /// by the peer, and received and not yet acknowledged to it (not yet committed).
    pub fn unacknowledged(&self) -> (u64, u64) {
        self.lanes.iter().fold((0, 0), |(sent, received), l| {
            (
                sent + (l.out_next - 1).saturating_sub(l.out_acked),
                received + (l.in_expected - 1).saturating_sub(l.in_committed),
            )
        })
    }

    /// Queues message `seq` of `lane` (which must be [`next_send_seq`](Self::next_send_seq)) for
    /// sending, cut into [`Frame::Part`]s of [`CHUNK`] bytes if it is longer than one.
    pub fn send_message(&mut self, lane: Lane, seq: u64, payload: Vec<u8>) {
        let l = &mut self.lanes[lane.index()];
        debug_assert_eq!(seq, l.out_next, "messages are sent in sequence");
        if self.state != State::Open || seq != l.out_next {
            return;
        }
        l.out_next += 1;
        if payload.len() > CHUNK {
            // Messages are at most MAX_FRAME (16 MiB) long: offsets fit in a u32.
            let total = payload.len() as u32;
            for (i, piece) in payload.chunks(CHUNK).enumerate() {
                l.transmit.push_back(CompactFrame::Part {
                    lane,
                    seq,
                    offset: (i * CHUNK) as u32,
                    total,
                    payload: piece.to_vec(),
                });
            }
            return;
        }
        l.transmit
            .push_back(CompactFrame::Message { lane, seq, payload });
    }

    /// Bytes of messages queued on `lane` and not yet taken by [`poll_transmit`](Self::poll_transmit).
    pub fn queued_bytes(&self, lane: Lane) -> usize {
        self.lanes[lane.index()]
            .transmit
            .iter()
            .map(CompactFrame::payload_len)
            .sum()
    }

    /// The id of the peer stream this side receives on `lane`.
    pub fn inbound_stream(&self, lane: Lane) -> u64 {
        self.lanes[lane.index()].in_stream
    }

    /// The caller made every message of `lane` up to `seq` durable: acknowledge them to the peer.
    pub fn committed(&mut self, lane: Lane, seq: u64) {
        let last_recv = self.last_recv;
        let closed = self.state == State::Closed;
        let l = &mut self.lanes[lane.index()];
        l.commit_pending = false;
        if closed {
            return;
        }
        l.in_committed = l.in_committed.max(seq);
        if seq > 0 {
            self.lanes[0]
                .transmit
                .push_back(CompactFrame::Ack { lane, seq });
        }
        let l = &mut self.lanes[lane.index()];
        if l.in_uncommitted > 0 && l.commit_due.is_none() {
            l.commit_due = Some(last_recv + ACK_DELAY);
        }
    }

    fn ack_every(&self) -> u64 {
        (u64::from(self.window) / 4).clamp(1, ACK_EVERY)
    }

    /// Takes message `seq` of `lane`, or a piece of it (`piece`: its offset and the whole
    /// message's length).
    fn receive(
        &mut self,
        now: Instant,
        lane: Lane,
        seq: u64,
        payload: Vec<u8>,
        piece: Option<(u32, u32)>,
    ) {
        let window = self.window;
        let ack_every = self.ack_every();
        let l = &mut self.lanes[lane.index()];
        if seq < l.in_expected {
            // A retransmission of something already processed: acknowledge it again.
            if piece.is_none_or(|(offset, total)| offset as usize + payload.len() == total as usize)
                && !l.commit_pending
                && l.in_committed > 0
            {
                let seq = l.in_committed;
                self.lanes[0]
                    .transmit
                    .push_back(CompactFrame::Ack { lane, seq });
            }
            return;
        }
        if seq > l.in_expected {
            let why = format!(
                "message {seq} on the {lane} lane when {} was expected",
                l.in_expected
            );
            self.close(CloseCode::ProtocolError, why);
            return;
        }
        if seq - l.in_committed > u64::from(window) {
            // This side announced how many it takes ahead of its acknowledgements; a peer that
            // sends more would make it hold more than it agreed to.
            let why = format!(
                "message {seq} on the {lane} lane with only {} acknowledged: over the window of {window}",
                l.in_committed
            );
            self.close(CloseCode::ProtocolError, why);
            return;
        }
        let payload = match piece {
            None if !l.partial.is_empty() => {
                let why = format!(
                    "message {seq} on the {lane} lane whole, after pieces of it ({} of {} bytes)",
                    l.partial.len(),
                    l.partial_total
                );
                self.close(CloseCode::ProtocolError, why);
                return;
            }
            None => payload,
            Some((offset, total)) => {
                let (offset, total) = (offset as usize, total as usize);
                if total > MAX_FRAME {
                    let e = FrameError::Oversized(total);
                    self.close(
                        e.close_code(),
                        format!("message {seq} on the {lane} lane: {e}"),
                    );
                    return;
                }
                if l.partial.is_empty() {
                    // Checked against MAX_FRAME above: the whole message, in one allocation.
                    l.partial_total = total;
                    l.partial.reserve_exact(total);
                }
                if offset < l.partial.len() {
                    return; // a piece taken already
                }
                if offset > l.partial.len()
                    || total != l.partial_total
                    || offset + payload.len() > total
                {
                    let why = format!(
                        "piece of message {seq} on the {lane} lane at {offset} of {total} bytes, with {} of {} taken",
                        l.partial.len(),
                        l.partial_total
                    );
                    self.close(CloseCode::ProtocolError, why);
                    return;
                }
                l.partial.extend_from_slice(&payload);
                if l.partial.len() < total {
                    return;
                }
                std::mem::take(&mut l.partial)
            }
        };
        let Some(next) = l.in_expected.checked_add(1) else {
            // The peer's first position was the last number there is: nothing can follow.
            self.close(
                CloseCode::ProtocolError,
                format!("message {seq} ends the sequence"),
            );
            return;
        };
        l.in_expected = next;
        l.in_uncommitted += 1;
        l.in_uncommitted_bytes += payload.len();
        self.events.push_back(Event::Message { lane, seq, payload });
        if l.commit_due.is_none() {
            l.commit_due = Some(now + ACK_DELAY);
        }
        if l.in_uncommitted >= ack_every || l.in_uncommitted_bytes >= ACK_EVERY_BYTES {
            self.request_commit(lane);
        }
    }

    fn request_commit(&mut self, lane: Lane) {
        let l = &mut self.lanes[lane.index()];
        if l.commit_pending || l.in_uncommitted == 0 {
            return;
        }
        l.commit_pending = true;
        l.in_uncommitted = 0;
        l.in_uncommitted_bytes = 0;
        l.commit_due = None;
        self.events
            .push_back(Event::Commit(lane, l.in_expected - 1));
    }

    /// Closes the session with `code`; reported once as [`Event::Close`].
    pub fn close(&mut self, code: CloseCode, detail: impl Into<String>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        for l in &mut self.lanes {
            l.transmit.clear();
            l.partial = Vec::new();
        }
        self.events.push_back(Event::Close(code, detail.into()));
    }

    fn nothing_to_send(&self) -> bool {
        self.lanes.iter().all(|l| l.transmit.is_empty())
    }

    /// Handles the passing of time: deadlines and heartbeats. Call when `now` reaches
    /// [`poll_timeout`](Self::poll_timeout), or any time earlier (it is idempotent).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.deadline {
            let what = match (self.role, self.state) {
                (Role::Edge, State::Handshake) => "no WELCOME",
                (Role::Cloud, State::Handshake) => "no HELLO",
                _ => "nothing received",
            };
            self.close(
                CloseCode::Timeout,
                format!("{what} for {:.1}s", silent.as_secs_f64()),
            );
            return;
        }
        for lane in Lane::ALL {
            let l = &mut self.lanes[lane.index()];
            if l.commit_due.is_some_and(|due| now >= due) {
                if l.commit_pending {
                    // Still with the caller; look again shortly.
                    l.commit_due = Some(now + ACK_DELAY);
                } else {
                    self.request_commit(lane);
                }
            }
        }
        if let Some(hb) = self.heartbeat {
            if self.nothing_to_send() && now.saturating_duration_since(self.last_send) >= hb {
                self.lanes[0].transmit.push_back(CompactFrame::Heartbeat);
            }
        }
        if let Some(probe) = self.probe_after() {
            if self.nothing_to_send()
                && silent >= probe
                && now.saturating_duration_since(self.last_send) >= probe
            {
                self.lanes[0].transmit.push_back(CompactFrame::Heartbeat);
            }
        }
    }

    /// Edge, once open: how long without a frame from the cloud before the edge sends a
    /// heartbeat of its own, whatever its heartbeat interval. The cloud sends one every third of
    /// the edge's read deadline, so this silence means one went missing; the edge's probe then
    /// meets the cloud if the path is fine, or draws a QUIC stateless reset (RFC 9000 section
    /// 10.3) or a TCP reset from a cloud that restarted, and the edge reconnects at once instead
    /// of after its whole read deadline.
    fn probe_after(&self) -> Option<Duration> {
        if self.role != Role::Edge || self.state != State::Open {
            return None;
        }
        let cloud_heartbeat = (self.deadline / 3).max(MIN_HEARTBEAT);
        Some(cloud_heartbeat + cloud_heartbeat / 10)
    }

    /// The next frame to send, if any: urgent ones (every frame that is not a bulk message) before
    /// bulk ones. Sending counts as activity for the heartbeat timer.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Frame> {
        let f = self.lanes.iter_mut().find_map(|l| l.transmit.pop_front())?;
        self.last_send = now;
        Some(f.into())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let dead = self.last_recv + self.deadline;
        let mut next = match self.heartbeat {
            Some(hb) => dead.min(self.last_send + hb),
            None => dead,
        };
        if let Some(probe) = self.probe_after() {
            next = next.min(self.last_recv.max(self.last_send) + probe);
        }
        for l in &self.lanes {
            if let Some(due) = l.commit_due {
                next = next.min(due);
            }
        }
        Some(next)
    }
}

/// The lane a frame travels on: its own for a message or a piece of one, urgent for everything
/// else (HELLO, WELCOME, heartbeats, acknowledgements of either lane).
pub fn frame_lane(f: &Frame) -> Lane {
    match f {
        Frame::Message { lane, .. } | Frame::Part { lane, .. } => *lane,
        _ => Lane::Urgent,
    }
}

/// Heartbeats are never sent more often than this, whatever the deadlines.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "HELLO",
        Frame::Welcome(_) => "WELCOME",
        Frame::Heartbeat => "HEARTBEAT",
        Frame::Message { .. } => "MESSAGE",
        Frame::Part { .. } => "PART",
        Frame::Ack { .. } => "ACK",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Lane = Lane::Bulk;
    const U: Lane = Lane::Urgent;

    const S: Duration = Duration::from_secs(1);

    fn hello(heartbeat: Duration, read_deadline: Duration) -> Hello {
        Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat,
            read_deadline,
            window: 16,
            lanes: [HelloLane {
                up_stream: 1,
                up_first: 1,
                down_stream: 0,
                down_seq: 0,
            }; LANES],
        }
    }

    /// Moves every queued frame from `from` to `to`, as a lossless pipe would.
    fn transfer(now: Instant, from: &mut Session, to: &mut Session) -> usize {
        let mut n = 0;
        while let Some(f) = from.poll_transmit(now) {
            to.handle_bytes(now, &f.encode());
            n += 1;
        }
        n
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn open_pair(
        now: Instant,
        heartbeat: Duration,
        read_deadline: Duration,
        keepalive: Duration,
    ) -> (Session, Session) {
        let mut edge = Session::edge(now, hello(heartbeat, read_deadline));
        let mut cloud = Session::cloud(now, keepalive, 16);
        transfer(now, &mut edge, &mut cloud);
        assert!(matches!(events(&mut cloud)[..], [Event::Hello(_)]));
        cloud.accept(
            now,
            [Streams {
                out_stream: 2,
                out_first: 1,
                in_stream: 0,
                in_seq: 0,
            }; LANES],
        );
        assert_eq!(
            events(&mut cloud),
            vec![Event::Open, Event::Commit(U, 0), Event::Commit(B, 0)],
            "a new edge stream is recorded, on each lane"
        );
        cloud.committed(U, 0);
        cloud.committed(B, 0);
        transfer(now, &mut cloud, &mut edge);
        assert_eq!(
            events(&mut edge),
            vec![Event::Open, Event::Commit(U, 0), Event::Commit(B, 0)]
        );
        edge.committed(U, 0);
        edge.committed(B, 0);
        (edge, cloud)
    }

    #[test]
    fn an_open_sessions_queues_keep_narrow_slots() {
        // A queue keeps the slots it grew to (at least 4) while the node is idle: HELLO and
        // WELCOME, once per link, must not make every slot 152 bytes wide.
        fn slot<T>(_: &VecDeque<T>) -> usize {
            std::mem::size_of::<T>()
        }
        let now = Instant::now();
        let (edge, cloud) = open_pair(now, 15 * S, 15 * S, 30 * S);
        assert!(std::mem::size_of::<Frame>() >= 150);
        // Nor widen the session itself, one per node for as long as its link lasts.
        assert!(
            std::mem::size_of::<Session>() <= 512,
            "session: {}",
            std::mem::size_of::<Session>()
        );
        for s in [&edge, &cloud] {
            assert!(slot(&s.events) <= 48, "events: {}", slot(&s.events));
            for l in &s.lanes {
                assert!(slot(&l.transmit) <= 48, "transmit: {}", slot(&l.transmit));
            }
        }
    }

    #[test]
    fn handshake_opens_both() {
        let now = Instant::now();
        let (edge, cloud) = open_pair(now, 15 * S, 15 * S, 30 * S);
        assert!(edge.is_open() && cloud.is_open());
        assert_eq!(edge.welcome().unwrap().keepalive, 30 * S);
        assert!(cloud.hello().is_none(), "the HELLO is let go once accepted");
        assert_eq!(edge.heartbeat_interval(), Some(15 * S));
        assert_eq!(
            cloud.heartbeat_interval(),
            Some(5 * S),
            "a third of the edge's read deadline"
        );
    }

    #[test]
    fn heartbeats_keep_an_idle_link_alive() {
        let t0 = Instant::now();
        let (mut edge, mut cloud) = open_pair(t0, 15 * S, 15 * S, 30 * S);
        let mut now = t0;
        // Ten idle minutes, stepping to whichever timer is due first: nobody times out.
        while now < t0 + 600 * S {
            now = edge
                .poll_timeout()
                .unwrap()
                .min(cloud.poll_timeout().unwrap());
            edge.handle_timeout(now);
            cloud.handle_timeout(now);
            transfer(now, &mut edge, &mut cloud);
            transfer(now, &mut cloud, &mut edge);
            assert!(
                events(&mut edge).is_empty() && events(&mut cloud).is_empty(),
                "at {:?}",
                now - t0
            );
        }
    }

    #[test]
    fn edge_heartbeat_shortened_to_cloud_keepalive() {
        let now = Instant::now();
        let (edge, _) = open_pair(now, 60 * S, 15 * S, 10 * S);
        assert_eq!(edge.heartbeat_interval(), Some(5 * S));
    }

    #[test]
    fn silent_peer_is_declared_dead_at_the_deadline() {
        let t0 = Instant::now();
        let (mut edge, mut cloud) = open_pair(t0, 15 * S, 15 * S, 30 * S);
        // The edge goes silent (its frames are dropped); the cloud keeps heartbeating.
        let mut now;
        loop {
            now = cloud.poll_timeout().unwrap();
            cloud.handle_timeout(now);
            edge.handle_timeout(now);
            while edge.poll_transmit(now).is_some() {}
            transfer(now, &mut cloud, &mut edge);
            let ev = events(&mut cloud);
            if !ev.is_empty() {
                assert!(
                    matches!(&ev[..], [Event::Close(CloseCode::Timeout, _)]),
                    "{ev:?}"
                );
                break;
            }
        }
        assert_eq!(now - t0, 30 * S, "exactly at keepalive-interval");
        assert!(cloud.poll_transmit(now).is_none() && cloud.poll_timeout().is_none());
    }

    #[test]
    fn edge_notices_a_blackholed_link_within_read_deadline() {
        let t0 = Instant::now();
        let (mut edge, _cloud) = open_pair(t0, 5 * S, 15 * S, 30 * S);
        let closed_at = loop {
            let now = edge.poll_timeout().unwrap();
            edge.handle_timeout(now);
            while edge.poll_transmit(now).is_some() {} // lost
            if let Some(Event::Close(code, _)) = edge.poll_event() {
                assert_eq!(code, CloseCode::Timeout);
                break now;
            }
        };
        assert_eq!(closed_at - t0, 15 * S);
    }

    #[test]
    fn the_wait_for_welcome_counts_from_the_connect() {
        // The session is made (and HELLO polled, for QUIC's 0-RTT) before a connect that took
        // longer than the read deadline: the deadline starts when the transport is up.
        let t0 = Instant::now();
        let mut edge = Session::edge(t0, hello(15 * S, 3 * S));
        assert!(edge.poll_transmit(t0).is_some());
        let up = t0 + 20 * S;
        edge.connected(up);
        assert_eq!(edge.poll_timeout(), Some(up + 3 * S));
        edge.handle_timeout(up + S);
        assert!(
            edge.poll_event().is_none(),
            "not closed a second after the connect"
        );
        edge.handle_timeout(up + 3 * S);
        assert!(
            matches!(edge.poll_event(), Some(Event::Close(CloseCode::Timeout, d)) if d.contains("no WELCOME for 3.0s"))
        );
    }

    #[test]
    fn no_welcome_times_out() {
        let t0 = Instant::now();
        let mut edge = Session::edge(t0, hello(15 * S, 3 * S));
        assert!(edge.poll_transmit(t0).is_some());
        assert_eq!(edge.poll_timeout(), Some(t0 + 3 * S));
        edge.handle_timeout(t0 + 3 * S);
        assert!(
            matches!(edge.poll_event(), Some(Event::Close(CloseCode::Timeout, d)) if d.contains("no WELCOME"))
        );
    }

    #[test]
    fn out_of_place_frames_are_protocol_errors() {
        let now = Instant::now();
        let mut cloud = Session::cloud(now, 30 * S, 16);
        cloud.handle_frame(now, Frame::Heartbeat);
        assert!(matches!(
            cloud.poll_event(),
            Some(Event::Close(CloseCode::ProtocolError, _))
        ));

        let (mut edge, mut cloud) = open_pair(now, S, S, S);
        cloud.handle_frame(now, Frame::Hello(hello(S, S)));
        assert!(
            matches!(cloud.poll_event(), Some(Event::Close(CloseCode::ProtocolError, d)) if d.contains("HELLO"))
        );
        edge.handle_bytes(now, &[0x99]);
        assert!(
            matches!(edge.poll_event(), Some(Event::Close(CloseCode::ProtocolError, d)) if d.contains("0x99"))
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let now = Instant::now();
        let mut cloud = Session::cloud(now, 30 * S, 16);
        let mut h = hello(S, S);
        h.version = 9;
        cloud.handle_frame(now, Frame::Hello(h));
        assert!(matches!(
            cloud.poll_event(),
            Some(Event::Close(CloseCode::UnsupportedVersion, _))
        ));
    }

    #[test]
    fn close_is_reported_once_and_stops_output() {
        let now = Instant::now();
        let (mut edge, _) = open_pair(now, S, S, S);
        edge.close(CloseCode::ShuttingDown, "bye");
        edge.close(CloseCode::Timeout, "again");
        assert_eq!(
            events(&mut edge),
            vec![Event::Close(CloseCode::ShuttingDown, "bye".into())]
        );
        edge.handle_timeout(now + 100 * S);
        assert!(edge.poll_transmit(now).is_none() && edge.is_closed());
    }

    /// One side's durable state: a queue of payloads (index = seq - 1), what the peer
    /// acknowledged, and the received stream's id and position.
    struct Store {
        stream: u64,
        queue: Vec<Vec<u8>>,
        acked: u64,
        in_stream: u64,
        in_seq: u64,
        delivered: Vec<Vec<u8>>,
    }

    impl Store {
        fn new(stream: u64, n: usize, tag: &str) -> Store {
            Store {
                stream,
                queue: (0..n).map(|i| format!("{tag}{i}").into_bytes()).collect(),
                acked: 0,
                in_stream: 0,
                in_seq: 0,
                delivered: Vec::new(),
            }
        }
        /// Positions per lane: the urgent lane carries nothing here.
        fn streams(&self) -> [Streams; LANES] {
            [
                Streams {
                    out_stream: self.stream + 1000,
                    out_first: 1,
                    in_stream: 0,
                    in_seq: 0,
                },
                Streams {
                    out_stream: self.stream,
                    out_first: self.acked + 1,
                    in_stream: self.in_stream,
                    in_seq: self.in_seq,
                },
            ]
        }
        /// Feeds the session from the queue and applies its events, as a hub's driver does.
        fn drive(&mut self, s: &mut Session) {
            loop {
                let mut progressed = false;
                while let Some(ev) = s.poll_event() {
                    progressed = true;
                    match ev {
                        Event::Message { lane, seq, payload } if lane == B => {
                            // A hub records what it delivered, and persists it at each commit
                            // and when the link ends.
                            self.delivered.push(payload);
                            (self.in_stream, self.in_seq) = (s.inbound_stream(B), seq);
                        }
                        Event::Acked(B, seq) => self.acked = self.acked.max(seq),
                        Event::Commit(B, seq) => {
                            (self.in_stream, self.in_seq) = (s.inbound_stream(B), seq);
                            s.committed(B, seq);
                        }
                        Event::Commit(lane, seq) => s.committed(lane, seq),
                        _ => {}
                    }
                }
                while s.send_capacity(B) > 0 && (s.next_send_seq(B) as usize) <= self.queue.len() {
                    let seq = s.next_send_seq(B);
                    s.send_message(B, seq, self.queue[seq as usize - 1].clone());
                    progressed = true;
                }
                if !progressed {
                    return;
                }
            }
        }
    }

    fn edge_hello(edge: &Store) -> Hello {
        let lanes = edge.streams().map(HelloLane::from);
        Hello {
            window: 8,
            lanes,
            ..hello(S, 10 * S)
        }
    }

    /// Runs a link between the two stores until `frames` frames have crossed (or it goes
    /// quiet), dropping every `drop_every`-th frame's worth of progress by cutting the link
    /// there; returns whether it went quiet (all done).
    fn run_link(
        start: Instant,
        edge: &mut Store,
        cloud: &mut Store,
        cut_after: Option<usize>,
    ) -> bool {
        let mut now = start;
        let mut e = Session::edge(now, edge_hello(edge));
        let mut c = Session::cloud(now, 30 * S, 8);
        transfer(now, &mut e, &mut c);
        assert!(matches!(c.poll_event(), Some(Event::Hello(_))));
        c.accept(now, cloud.streams());
        let mut crossed = 0;
        let mut quiet = 0;
        loop {
            // Time moves on by a millisecond a round, so batched acknowledgements go out.
            now += Duration::from_millis(1);
            e.handle_timeout(now);
            c.handle_timeout(now);
            cloud.drive(&mut c);
            let n = transfer(now, &mut c, &mut e);
            edge.drive(&mut e);
            let m = transfer(now, &mut e, &mut c);
            crossed += n + m;
            if cut_after.is_some_and(|k| crossed >= k) {
                return false; // the link drops with frames in flight
            }
            quiet = if n + m == 0 { quiet + 1 } else { 0 };
            if quiet > 2 * ACK_DELAY.as_millis() as usize {
                assert!(e.is_open() && c.is_open());
                return true;
            }
        }
    }

    #[test]
    fn window_streams_both_ways_in_order() {
        let now = Instant::now();
        let mut edge = Store::new(11, 500, "up");
        let mut cloud = Store::new(22, 300, "down");
        assert!(run_link(now, &mut edge, &mut cloud, None));
        assert_eq!(cloud.delivered, edge.queue);
        assert_eq!(edge.delivered, cloud.queue);
        assert_eq!(
            (edge.acked, cloud.acked),
            (500, 300),
            "everything acknowledged"
        );
    }

    #[test]
    fn never_more_than_the_window_in_flight() {
        let now = Instant::now();
        let edge = Store::new(1, 100, "x");
        let mut e = Session::edge(now, edge_hello(&edge));
        let mut c = Session::cloud(now, 30 * S, 3);
        transfer(now, &mut e, &mut c);
        c.poll_event();
        c.accept(
            now,
            [Streams {
                out_stream: 2,
                out_first: 1,
                ..Streams::default()
            }; LANES],
        );
        transfer(now, &mut c, &mut e);
        while e.poll_event().is_some() {}
        // The cloud announced a window of 3: the edge keeps at most 3 unacknowledged.
        assert_eq!(e.send_capacity(B), 3);
        for seq in 1..=3 {
            e.send_message(B, seq, vec![seq as u8]);
        }
        assert_eq!(e.send_capacity(B), 0);
        e.handle_frame(now, Frame::Ack { lane: B, seq: 2 });
        assert_eq!(e.send_capacity(B), 2);
        assert_eq!(e.poll_event(), Some(Event::Acked(B, 2)));
        e.handle_frame(now, Frame::Ack { lane: B, seq: 9 });
        assert!(
            matches!(
                e.poll_event(),
                Some(Event::Close(CloseCode::ProtocolError, _))
            ),
            "ACK beyond what was sent"
        );
    }

    #[test]
    fn an_edge_that_misses_the_clouds_heartbeat_probes_at_once() {
        let now = Instant::now();
        // The edge heartbeats every 15 s; the cloud every second (a third of the 3 s deadline).
        let (mut edge, _cloud) = open_pair(now, 15 * S, 3 * S, 30 * S);
        while edge.poll_transmit(now).is_some() {}
        let probe = now + S + S / 10;
        assert_eq!(
            edge.poll_timeout(),
            Some(probe),
            "due when one cloud heartbeat is late"
        );
        edge.handle_timeout(probe - Duration::from_millis(1));
        assert_eq!(edge.poll_transmit(probe), None, "not before");
        edge.handle_timeout(probe);
        assert_eq!(edge.poll_transmit(probe), Some(Frame::Heartbeat));
        // Still nothing from the cloud: again after as long, until the read deadline.
        let again = probe + S + S / 10;
        assert_eq!(edge.poll_timeout(), Some(again));
        edge.handle_timeout(again);
        assert_eq!(edge.poll_transmit(again), Some(Frame::Heartbeat));
        // A frame from the cloud puts it off.
        edge.handle_frame(again, Frame::Heartbeat);
        assert_eq!(edge.poll_timeout(), Some(again + S + S / 10));
    }

    #[test]
    fn a_peer_sending_beyond_the_receive_window_is_closed_on() {
        let now = Instant::now();
        // The cloud's receive window is 3 (WELCOME window); the edge ignores it.
        let open_cloud = || {
            let mut c = Session::cloud(now, 30 * S, 3);
            c.handle_frame(now, Frame::Hello(hello(S, 10 * S)));
            c.poll_event();
            c.accept(now, [Streams::default(); LANES]);
            while c.poll_event().is_some() {}
            c.committed(U, 0);
            c.committed(B, 0);
            c
        };
        let mut c = open_cloud();
        for seq in 1..=3 {
            c.handle_frame(
                now,
                Frame::Message {
                    lane: B,
                    seq,
                    payload: vec![1],
                },
            );
        }
        assert!(!c.is_closed(), "three within the window");
        let mut got = events(&mut c);
        got.retain(|e| matches!(e, Event::Commit(..)));
        assert_eq!(
            got,
            vec![Event::Commit(B, 1)],
            "asked to commit, not yet done"
        );
        // Not yet acknowledged (the commit is still with the caller): a fourth is over the window.
        c.handle_frame(
            now,
            Frame::Message {
                lane: B,
                seq: 4,
                payload: vec![1],
            },
        );
        match events(&mut c).pop() {
            Some(Event::Close(CloseCode::ProtocolError, why)) => {
                assert!(why.contains("over the window of 3"), "{why}")
            }
            other => panic!("{other:?}"),
        }

        // Once acknowledged, the window moves on.
        let mut c = open_cloud();
        for seq in 1..=6 {
            c.handle_frame(
                now,
                Frame::Message {
                    lane: B,
                    seq,
                    payload: vec![1],
                },
            );
            while let Some(e) = c.poll_event() {
                if let Event::Commit(lane, n) = e {
                    c.committed(lane, n);
                }
            }
        }
        assert!(!c.is_closed(), "each acknowledged before the next");
    }

    #[test]
    fn reconnects_resume_without_loss_or_duplicates() {
        let now = Instant::now();
        let mut edge = Store::new(11, 1000, "up");
        let mut cloud = Store::new(22, 700, "down");
        // Cut the link again and again with frames in flight; durable state carries over.
        for k in [5, 17, 40, 3, 90, 1, 250] {
            assert!(!run_link(now, &mut edge, &mut cloud, Some(k)));
        }
        assert!(run_link(now, &mut edge, &mut cloud, None));
        assert_eq!(
            cloud.delivered, edge.queue,
            "edge to cloud: every message once, in order"
        );
        assert_eq!(
            edge.delivered, cloud.queue,
            "cloud to edge: every message once, in order"
        );
    }

    #[test]
    fn a_wiped_peer_stream_starts_over() {
        let now = Instant::now();
        let mut edge = Store::new(11, 10, "a");
        let mut cloud = Store::new(22, 0, "");
        assert!(run_link(now, &mut edge, &mut cloud, None));
        assert_eq!(cloud.delivered.len(), 10);
        // The gateway is reinstalled: a new outbox (new stream id) starting at seq 1 again.
        let mut fresh = Store::new(33, 4, "b");
        assert!(run_link(now, &mut fresh, &mut cloud, None));
        assert_eq!(
            cloud.delivered.len(),
            14,
            "the new stream's messages are not taken for repeats"
        );
        assert_eq!(cloud.in_stream, 33);
    }

    #[test]
    fn repeats_are_dropped_and_gaps_refused() {
        let now = Instant::now();
        let (mut e, mut c) = open_pair(now, S, 10 * S, 30 * S);
        e.send_message(B, 1, b"one".to_vec());
        let one = e.poll_transmit(now).unwrap();
        c.handle_frame(now, one.clone());
        assert!(matches!(
            c.poll_event(),
            Some(Event::Message {
                lane: B,
                seq: 1,
                ..
            })
        ));
        c.handle_frame(now, one);
        assert_eq!(c.poll_event(), None, "a repeat is not delivered twice");
        c.handle_frame(
            now,
            Frame::Message {
                lane: B,
                seq: 3,
                payload: vec![],
            },
        );
        assert!(
            matches!(c.poll_event(), Some(Event::Close(CloseCode::ProtocolError, d)) if d.contains("3 on the bulk lane when 2"))
        );
    }

    #[test]
    fn positions_at_the_end_of_the_range_do_not_overflow() {
        let now = Instant::now();
        // A WELCOME claiming the edge's stream was processed to the last number there is, and
        // starting the cloud's stream there.
        let mut edge = Session::edge(now, hello(S, 10 * S));
        edge.poll_transmit(now);
        edge.handle_frame(
            now,
            Frame::Welcome(Welcome {
                version: VERSION,
                keepalive: 30 * S,
                heartbeat: S,
                window: 16,
                lanes: [WelcomeLane {
                    down_stream: 2,
                    down_first: u64::MAX,
                    up_seq: u64::MAX,
                }; LANES],
            }),
        );
        assert!(edge.is_open());
        assert_eq!(edge.next_send_seq(B), u64::MAX);
        events(&mut edge);
        edge.handle_frame(
            now,
            Frame::Message {
                lane: B,
                seq: u64::MAX,
                payload: vec![],
            },
        );
        assert!(
            matches!(edge.poll_event(), Some(Event::Close(CloseCode::ProtocolError, d)) if d.contains("ends the sequence"))
        );

        // A HELLO claiming the cloud's stream was processed to the last number there is.
        let mut cloud = Session::cloud(now, 30 * S, 16);
        cloud.handle_frame(
            now,
            Frame::Hello(Hello {
                lanes: [HelloLane {
                    up_stream: 1,
                    up_first: 1,
                    down_stream: 2,
                    down_seq: u64::MAX,
                }; LANES],
                ..hello(S, 10 * S)
            }),
        );
        cloud.accept(
            now,
            [Streams {
                out_stream: 2,
                out_first: 1,
                in_stream: 0,
                in_seq: 0,
            }; LANES],
        );
        assert!(cloud.is_open());
        assert_eq!(cloud.next_send_seq(B), u64::MAX);
    }

    #[test]
    fn acknowledgements_are_batched() {
        let now = Instant::now();
        let (mut e, mut c) = open_pair(now, S, 10 * S, 30 * S);
        // The cloud's window is 16: it asks for a commit every 4 messages.
        for seq in 1..=3 {
            e.send_message(B, seq, vec![]);
        }
        transfer(now, &mut e, &mut c);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 3, "three deliveries, no commit yet: {ev:?}");
        e.send_message(B, 4, vec![]);
        transfer(now, &mut e, &mut c);
        assert_eq!(events(&mut c).last(), Some(&Event::Commit(B, 4)));
        c.committed(B, 4);
        assert_eq!(c.poll_transmit(now), Some(Frame::Ack { lane: B, seq: 4 }));
        // A lone message is committed after ACK_DELAY.
        e.send_message(B, 5, vec![]);
        transfer(now, &mut e, &mut c);
        events(&mut c);
        assert_eq!(c.poll_timeout(), Some(now + ACK_DELAY));
        c.handle_timeout(now + ACK_DELAY);
        assert_eq!(c.poll_event(), Some(Event::Commit(B, 5)));
    }

    #[test]
    fn an_urgent_message_overtakes_a_large_bulk_one_by_all_but_one_piece() {
        let now = Instant::now();
        let (mut e, mut c) = open_pair(now, S, 10 * S, 30 * S);
        // A bulk message of four pieces and a bit, then a request.
        let big: Vec<u8> = (0..4 * CHUNK + 10).map(|i| i as u8).collect();
        e.send_message(B, 1, big.clone());
        let first = e.poll_transmit(now).expect("the first piece");
        assert!(
            matches!(&first, Frame::Part { lane: B, seq: 1, offset: 0, payload, .. } if payload.len() == CHUNK)
        );
        e.send_message(U, 1, b"request".to_vec());
        // The request goes next, ahead of the other pieces.
        assert_eq!(
            e.poll_transmit(now),
            Some(Frame::Message {
                lane: U,
                seq: 1,
                payload: b"request".to_vec()
            })
        );
        let rest: Vec<Frame> = std::iter::from_fn(|| e.poll_transmit(now)).collect();
        assert_eq!(rest.len(), 4, "four more pieces");
        assert!(
            matches!(rest.last(), Some(Frame::Part { lane: B, seq: 1, payload, .. }) if payload.len() == 10)
        );
        // The receiver joins the pieces, whatever came between them.
        c.handle_frame(now, first);
        c.handle_frame(
            now,
            Frame::Message {
                lane: U,
                seq: 1,
                payload: b"request".to_vec(),
            },
        );
        for f in rest {
            c.handle_frame(now, f);
        }
        let got: Vec<(Lane, Vec<u8>)> = events(&mut c)
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Message { lane, payload, .. } => Some((lane, payload)),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![(U, b"request".to_vec()), (B, big)]);
    }

    #[test]
    fn pieces_repeated_are_dropped_and_missing_or_oversized_ones_refused() {
        let now = Instant::now();
        let piece = |offset: usize, total: usize| Frame::Part {
            lane: B,
            seq: 1,
            offset: offset as u32,
            total: total as u32,
            payload: vec![7; CHUNK],
        };
        let last = |len: usize| Frame::Part {
            lane: B,
            seq: 1,
            offset: 2 * CHUNK as u32,
            total: (2 * CHUNK + len) as u32,
            payload: vec![7; len],
        };
        let whole = Frame::Message {
            lane: B,
            seq: 1,
            payload: vec![7; 1],
        };
        // A repeated piece is dropped: the message is whole, once.
        let (_, mut c) = open_pair(now, S, 10 * S, 30 * S);
        for f in [
            piece(0, 2 * CHUNK + 1),
            piece(0, 2 * CHUNK + 1),
            piece(CHUNK, 2 * CHUNK + 1),
        ] {
            c.handle_frame(now, f);
        }
        c.handle_frame(now, last(1));
        let got: Vec<usize> = events(&mut c)
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Message { payload, .. } => Some(payload.len()),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![2 * CHUNK + 1]);
        // A missing piece, a message that ends short, one over the frame limit: refused.
        for (frames, code) in [
            (
                vec![piece(0, 3 * CHUNK), piece(2 * CHUNK, 3 * CHUNK)],
                CloseCode::ProtocolError,
            ),
            (
                vec![piece(0, 3 * CHUNK), whole.clone()],
                CloseCode::ProtocolError,
            ),
            (vec![piece(0, MAX_FRAME + 1)], CloseCode::Oversized),
        ] {
            let (_, mut c) = open_pair(now, S, 10 * S, 30 * S);
            for f in frames {
                c.handle_frame(now, f);
            }
            assert!(
                matches!(events(&mut c).pop(), Some(Event::Close(c2, _)) if c2 == code),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_large_window_is_acknowledged_every_ack_every_messages() {
        let now = Instant::now();
        let mut edge = Session::edge(now, hello(S, 10 * S));
        let mut cloud = Session::cloud(now, 30 * S, 65536);
        transfer(now, &mut edge, &mut cloud);
        events(&mut cloud);
        cloud.accept(now, [Streams::default(); LANES]);
        for ev in events(&mut cloud) {
            if let Event::Commit(lane, seq) = ev {
                cloud.committed(lane, seq);
            }
        }
        transfer(now, &mut cloud, &mut edge);
        for ev in events(&mut edge) {
            if let Event::Commit(lane, seq) = ev {
                edge.committed(lane, seq);
            }
        }
        assert_eq!(edge.send_capacity(B), 65536);
        for seq in 1..=ACK_EVERY {
            edge.send_message(B, seq, vec![1]);
        }
        transfer(now, &mut edge, &mut cloud);
        assert_eq!(
            events(&mut cloud).last(),
            Some(&Event::Commit(B, ACK_EVERY)),
            "not after a quarter of 65536"
        );
    }
}
