//! The session state machine: hello and welcome, heartbeats, deadlines, close.
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
//! Messages: each direction is a stream of sequence-numbered messages from the sender's durable
//! queue. Each side announces a receive window; the sender keeps at most the peer's window of
//! messages unacknowledged, and a receiver closes on a peer that sends more. The receiver
//! takes them strictly in order, drops repeats, and acknowledges cumulatively once the caller has
//! made them safe ([`Event::Commit`] → [`Session::committed`]), every quarter window or after
//! [`ACK_DELAY`]. HELLO and WELCOME carry each side's stream ids and positions, so after a
//! reconnect each sender resumes right after what the receiver already processed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::VERSION;
use super::frame::{CloseCode, Frame, FrameError, Hello, Welcome};

/// The longest a receiver waits before acknowledging messages that did not fill a quarter window.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// A side's durable stream positions, as stored by its queues.
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
    Hello(Hello),
    /// The link is open: the edge got WELCOME, or the cloud accepted the HELLO.
    Open,
    /// The session closed itself (deadline passed, protocol error); tell the peer with this code
    /// and close the transport.
    Close(CloseCode, String),
    /// The next message of the peer's stream, in order and not seen before: deliver it.
    Message {
        /// Its sequence number.
        seq: u64,
        /// The encoded message.
        payload: Vec<u8>,
    },
    /// The peer acknowledged every message of this side's stream up to this sequence number:
    /// the queue may drop them.
    Acked(u64),
    /// Make the receipt of every message up to this sequence number durable (with the peer's
    /// stream id, [`Session::inbound_stream`]), then call [`Session::committed`].
    Commit(u64),
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
    transmit: VecDeque<Frame>,
    events: VecDeque<Event>,
    /// What the edge said in HELLO (cloud), or what the cloud said in WELCOME (edge).
    peer_hello: Option<Hello>,
    peer_welcome: Option<Welcome>,
    /// This side's receive window: messages it takes ahead of its acknowledgements, announced to
    /// the peer (HELLO or WELCOME `window`) and enforced.
    window: u32,
    /// The peer's receive window: messages this side may send ahead of its acknowledgements.
    peer_window: u32,
    /// Edge: its stream positions, as put in HELLO.
    local: Streams,
    /// Sending: the next sequence number to send, and the highest acknowledged.
    out_next: u64,
    out_acked: u64,
    /// Receiving: the peer's stream id and the next sequence number expected from it.
    in_stream: u64,
    in_expected: u64,
    /// Receiving: messages delivered but not yet committed, the last committed sequence number,
    /// whether a commit is with the caller, and when the pending ones must be committed.
    in_uncommitted: u64,
    in_committed: u64,
    commit_pending: bool,
    commit_due: Option<Instant>,
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
        s.local = Streams {
            out_stream: hello.up_stream,
            out_first: hello.up_first,
            in_stream: hello.down_stream,
            in_seq: hello.down_seq,
        };
        s.transmit.push_back(Frame::Hello(hello));
        s
    }

    /// A cloud session, waiting for HELLO; `keepalive` is its deadline (`keepalive-interval`),
    /// `window` its receive window: the messages it takes ahead of its acknowledgements.
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
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            peer_hello: None,
            peer_welcome: None,
            window: window.max(1),
            peer_window: 1,
            local: Streams::default(),
            out_next: 1,
            out_acked: 0,
            in_stream: 0,
            in_expected: 1,
            in_uncommitted: 0,
            in_committed: 0,
            commit_pending: false,
            commit_due: None,
        }
    }

    /// Sets up both streams once the link opens: where this side resumes sending (`out_start`),
    /// which peer stream it receives and the first sequence number it expects from it.
    fn open_streams(
        &mut self,
        out_first: u64,
        out_start: u64,
        in_stream: u64,
        in_expected: u64,
        in_seq: u64,
    ) {
        self.out_next = out_start;
        self.out_acked = out_start - 1;
        if out_start > out_first {
            self.events.push_back(Event::Acked(out_start - 1));
        }
        self.in_expected = in_expected;
        self.in_committed = in_expected - 1;
        if in_stream != self.in_stream || in_expected - 1 != in_seq {
            // A new peer stream, or one that moved on while this side was away: record where.
            self.in_stream = in_stream;
            self.commit_pending = true;
            self.events.push_back(Event::Commit(in_expected - 1));
        }
        self.in_stream = in_stream;
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

    /// The edge's HELLO (cloud side), once received.
    pub fn hello(&self) -> Option<&Hello> {
        self.peer_hello.as_ref()
    }

    /// The cloud's WELCOME (edge side), once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.peer_welcome.as_ref()
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
            (_, State::Open, Frame::Message { seq, payload }) => self.receive(now, seq, payload),
            (_, State::Open, Frame::Ack(seq)) => {
                if seq >= self.out_next {
                    let why = format!("ACK of {seq}, but only {} sent", self.out_next - 1);
                    self.close(CloseCode::ProtocolError, why);
                } else if seq > self.out_acked {
                    self.out_acked = seq;
                    self.events.push_back(Event::Acked(seq));
                }
            }
            (_, _, Frame::Heartbeat)
                if self.state != State::Handshake || self.role == Role::Edge => {}
            (Role::Cloud, State::Handshake, Frame::Hello(h)) => {
                if h.version != VERSION {
                    let why = format!("edge speaks version {}, this cloud {VERSION}", h.version);
                    self.close(CloseCode::UnsupportedVersion, why);
                    return;
                }
                self.state = State::Deciding;
                self.peer_hello = Some(h.clone());
                self.events.push_back(Event::Hello(h));
            }
            (Role::Edge, State::Handshake, Frame::Welcome(w)) => {
                if w.version != VERSION {
                    let why = format!("cloud speaks version {}, this edge {VERSION}", w.version);
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
                let local = self.local;
                // The cloud processed our stream up to up_seq; we resume after it, never before
                // what we still hold. Saturating: up_seq comes off the wire.
                let out_start = w.up_seq.saturating_add(1).max(local.out_first);
                let in_expected = if w.down_stream == local.in_stream {
                    (local.in_seq + 1).max(w.down_first)
                } else {
                    w.down_first.max(1)
                };
                self.state = State::Open;
                self.events.push_back(Event::Open);
                self.in_stream = local.in_stream;
                self.open_streams(
                    local.out_first,
                    out_start,
                    w.down_stream,
                    in_expected,
                    local.in_seq,
                );
                self.peer_welcome = Some(w);
            }
            (_, state, frame) => {
                let why = format!("unexpected {} in state {state:?}", frame_name(&frame));
                self.close(CloseCode::ProtocolError, why);
            }
        }
    }

    /// Cloud: accepts the edge whose HELLO was reported, given the cloud's stream positions for
    /// this node; queues WELCOME and opens the link.
    pub fn accept(&mut self, now: Instant, local: Streams) {
        if self.state != State::Deciding {
            return;
        }
        let Some(h) = self.peer_hello.clone() else {
            return;
        };
        let heartbeat = (h.read_deadline / 3).max(MIN_HEARTBEAT);
        self.heartbeat = Some(heartbeat);
        self.peer_window = h.window.max(1);
        let in_expected = if h.up_stream == local.in_stream {
            (local.in_seq + 1).max(h.up_first)
        } else {
            h.up_first.max(1)
        };
        let out_start = if h.down_stream == local.out_stream {
            // Saturating: down_seq comes off the wire.
            h.down_seq.saturating_add(1).max(local.out_first)
        } else {
            local.out_first
        };
        self.transmit.push_back(Frame::Welcome(Welcome {
            version: VERSION,
            keepalive: self.deadline,
            heartbeat,
            window: self.window,
            down_stream: local.out_stream,
            down_first: local.out_first,
            up_seq: in_expected - 1,
        }));
        self.last_recv = now;
        self.state = State::Open;
        self.events.push_back(Event::Open);
        self.in_stream = local.in_stream;
        self.open_streams(
            local.out_first,
            out_start,
            h.up_stream,
            in_expected,
            local.in_seq,
        );
    }

    /// How many more messages may be sent now (the peer's window less what is unacknowledged).
    pub fn send_capacity(&self) -> u64 {
        if self.state != State::Open {
            return 0;
        }
        u64::from(self.peer_window).saturating_sub(self.out_next - 1 - self.out_acked)
    }

    /// The sequence number the next [`send_message`](Self::send_message) must carry.
    pub fn next_send_seq(&self) -> u64 {
        self.out_next
    }

    /// The highest sequence number the peer acknowledged.
    pub fn acked(&self) -> u64 {
        self.out_acked
    }

    /// Queues message `seq` (which must be [`next_send_seq`](Self::next_send_seq)) for sending.
    pub fn send_message(&mut self, seq: u64, payload: Vec<u8>) {
        debug_assert_eq!(seq, self.out_next, "messages are sent in sequence");
        if self.state != State::Open || seq != self.out_next {
            return;
        }
        self.out_next += 1;
        self.transmit.push_back(Frame::Message { seq, payload });
    }

    /// The id of the peer stream this side receives.
    pub fn inbound_stream(&self) -> u64 {
        self.in_stream
    }

    /// The caller made every message up to `seq` durable: acknowledge them to the peer.
    pub fn committed(&mut self, seq: u64) {
        self.commit_pending = false;
        if self.state == State::Closed {
            return;
        }
        self.in_committed = self.in_committed.max(seq);
        if seq > 0 {
            self.transmit.push_back(Frame::Ack(seq));
        }
        if self.in_uncommitted > 0 && self.commit_due.is_none() {
            self.commit_due = Some(self.last_recv + ACK_DELAY);
        }
    }

    fn ack_every(&self) -> u64 {
        (u64::from(self.window) / 4).max(1)
    }

    fn receive(&mut self, now: Instant, seq: u64, payload: Vec<u8>) {
        if seq < self.in_expected {
            // A retransmission of something already processed: acknowledge it again.
            if !self.commit_pending && self.in_committed > 0 {
                self.transmit.push_back(Frame::Ack(self.in_committed));
            }
            return;
        }
        if seq > self.in_expected {
            let why = format!("message {seq} when {} was expected", self.in_expected);
            self.close(CloseCode::ProtocolError, why);
            return;
        }
        if seq - self.in_committed > u64::from(self.window) {
            // This side announced how many it takes ahead of its acknowledgements; a peer that
            // sends more would make it hold more than it agreed to.
            let why = format!(
                "message {seq} with only {} acknowledged: over the window of {}",
                self.in_committed, self.window
            );
            self.close(CloseCode::ProtocolError, why);
            return;
        }
        let Some(next) = self.in_expected.checked_add(1) else {
            // The peer's first position was the last number there is: nothing can follow.
            self.close(
                CloseCode::ProtocolError,
                format!("message {seq} ends the sequence"),
            );
            return;
        };
        self.in_expected = next;
        self.in_uncommitted += 1;
        self.events.push_back(Event::Message { seq, payload });
        if self.commit_due.is_none() {
            self.commit_due = Some(now + ACK_DELAY);
        }
        if self.in_uncommitted >= self.ack_every() {
            self.request_commit();
        }
    }

    fn request_commit(&mut self) {
        if self.commit_pending || self.in_uncommitted == 0 {
            return;
        }
        self.commit_pending = true;
        self.in_uncommitted = 0;
        self.commit_due = None;
        self.events.push_back(Event::Commit(self.in_expected - 1));
    }

    /// Closes the session with `code`; reported once as [`Event::Close`].
    pub fn close(&mut self, code: CloseCode, detail: impl Into<String>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.transmit.clear();
        self.events.push_back(Event::Close(code, detail.into()));
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
        if self.commit_due.is_some_and(|due| now >= due) {
            if self.commit_pending {
                // Still with the caller; look again shortly.
                self.commit_due = Some(now + ACK_DELAY);
            } else {
                self.request_commit();
            }
        }
        if let Some(hb) = self.heartbeat {
            if self.transmit.is_empty() && now.saturating_duration_since(self.last_send) >= hb {
                self.transmit.push_back(Frame::Heartbeat);
            }
        }
        if let Some(probe) = self.probe_after() {
            if self.transmit.is_empty()
                && silent >= probe
                && now.saturating_duration_since(self.last_send) >= probe
            {
                self.transmit.push_back(Frame::Heartbeat);
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

    /// The next frame to send, if any. Sending counts as activity for the heartbeat timer.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Frame> {
        let f = self.transmit.pop_front()?;
        self.last_send = now;
        Some(f)
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
        Some(self.commit_due.map_or(next, |due| next.min(due)))
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
        Frame::Ack(_) => "ACK",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn hello(heartbeat: Duration, read_deadline: Duration) -> Hello {
        Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat,
            read_deadline,
            window: 16,
            up_stream: 1,
            up_first: 1,
            down_stream: 0,
            down_seq: 0,
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
            Streams {
                out_stream: 2,
                out_first: 1,
                in_stream: 0,
                in_seq: 0,
            },
        );
        assert_eq!(
            events(&mut cloud),
            vec![Event::Open, Event::Commit(0)],
            "a new edge stream is recorded"
        );
        cloud.committed(0);
        transfer(now, &mut cloud, &mut edge);
        assert_eq!(events(&mut edge), vec![Event::Open, Event::Commit(0)]);
        edge.committed(0);
        (edge, cloud)
    }

    #[test]
    fn handshake_opens_both() {
        let now = Instant::now();
        let (edge, cloud) = open_pair(now, 15 * S, 15 * S, 30 * S);
        assert!(edge.is_open() && cloud.is_open());
        assert_eq!(edge.welcome().unwrap().keepalive, 30 * S);
        assert_eq!(cloud.hello().unwrap().node_id, "n");
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
        fn streams(&self) -> Streams {
            Streams {
                out_stream: self.stream,
                out_first: self.acked + 1,
                in_stream: self.in_stream,
                in_seq: self.in_seq,
            }
        }
        /// Feeds the session from the queue and applies its events, as a hub's driver does.
        fn drive(&mut self, s: &mut Session) {
            loop {
                let mut progressed = false;
                while let Some(ev) = s.poll_event() {
                    progressed = true;
                    match ev {
                        Event::Message { seq, payload } => {
                            // A hub records what it delivered, and persists it at each commit
                            // and when the link ends.
                            self.delivered.push(payload);
                            (self.in_stream, self.in_seq) = (s.inbound_stream(), seq);
                        }
                        Event::Acked(seq) => self.acked = self.acked.max(seq),
                        Event::Commit(seq) => {
                            (self.in_stream, self.in_seq) = (s.inbound_stream(), seq);
                            s.committed(seq);
                        }
                        _ => {}
                    }
                }
                while s.send_capacity() > 0 && (s.next_send_seq() as usize) <= self.queue.len() {
                    let seq = s.next_send_seq();
                    s.send_message(seq, self.queue[seq as usize - 1].clone());
                    progressed = true;
                }
                if !progressed {
                    return;
                }
            }
        }
    }

    fn edge_hello(edge: &Store) -> Hello {
        let st = edge.streams();
        Hello {
            window: 8,
            up_stream: st.out_stream,
            up_first: st.out_first,
            down_stream: st.in_stream,
            down_seq: st.in_seq,
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
            Streams {
                out_stream: 2,
                out_first: 1,
                ..Streams::default()
            },
        );
        transfer(now, &mut c, &mut e);
        while e.poll_event().is_some() {}
        // The cloud announced a window of 3: the edge keeps at most 3 unacknowledged.
        assert_eq!(e.send_capacity(), 3);
        for seq in 1..=3 {
            e.send_message(seq, vec![seq as u8]);
        }
        assert_eq!(e.send_capacity(), 0);
        e.handle_frame(now, Frame::Ack(2));
        assert_eq!(e.send_capacity(), 2);
        assert_eq!(e.poll_event(), Some(Event::Acked(2)));
        e.handle_frame(now, Frame::Ack(9));
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
            c.accept(now, Streams::default());
            while c.poll_event().is_some() {}
            c.committed(0);
            c
        };
        let mut c = open_cloud();
        for seq in 1..=3 {
            c.handle_frame(
                now,
                Frame::Message {
                    seq,
                    payload: vec![1],
                },
            );
        }
        assert!(!c.is_closed(), "three within the window");
        let mut got = events(&mut c);
        got.retain(|e| matches!(e, Event::Commit(_)));
        assert_eq!(got, vec![Event::Commit(1)], "asked to commit, not yet done");
        // Not yet acknowledged (the commit is still with the caller): a fourth is over the window.
        c.handle_frame(
            now,
            Frame::Message {
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
                    seq,
                    payload: vec![1],
                },
            );
            while let Some(e) = c.poll_event() {
                if let Event::Commit(n) = e {
                    c.committed(n);
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
        e.send_message(1, b"one".to_vec());
        let one = e.poll_transmit(now).unwrap();
        c.handle_frame(now, one.clone());
        assert!(matches!(
            c.poll_event(),
            Some(Event::Message { seq: 1, .. })
        ));
        c.handle_frame(now, one);
        assert_eq!(c.poll_event(), None, "a repeat is not delivered twice");
        c.handle_frame(
            now,
            Frame::Message {
                seq: 3,
                payload: vec![],
            },
        );
        assert!(
            matches!(c.poll_event(), Some(Event::Close(CloseCode::ProtocolError, d)) if d.contains("3 when 2"))
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
                down_stream: 2,
                down_first: u64::MAX,
                up_seq: u64::MAX,
            }),
        );
        assert!(edge.is_open());
        assert_eq!(edge.next_send_seq(), u64::MAX);
        events(&mut edge);
        edge.handle_frame(
            now,
            Frame::Message {
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
                down_stream: 2,
                down_seq: u64::MAX,
                ..hello(S, 10 * S)
            }),
        );
        cloud.accept(
            now,
            Streams {
                out_stream: 2,
                out_first: 1,
                in_stream: 0,
                in_seq: 0,
            },
        );
        assert!(cloud.is_open());
        assert_eq!(cloud.next_send_seq(), u64::MAX);
    }

    #[test]
    fn acknowledgements_are_batched() {
        let now = Instant::now();
        let (mut e, mut c) = open_pair(now, S, 10 * S, 30 * S);
        // The cloud's window is 16: it asks for a commit every 4 messages.
        for seq in 1..=3 {
            e.send_message(seq, vec![]);
        }
        transfer(now, &mut e, &mut c);
        let ev = events(&mut c);
        assert_eq!(ev.len(), 3, "three deliveries, no commit yet: {ev:?}");
        e.send_message(4, vec![]);
        transfer(now, &mut e, &mut c);
        assert_eq!(events(&mut c).last(), Some(&Event::Commit(4)));
        c.committed(4);
        assert_eq!(c.poll_transmit(now), Some(Frame::Ack(4)));
        // A lone message is committed after ACK_DELAY.
        e.send_message(5, vec![]);
        transfer(now, &mut e, &mut c);
        events(&mut c);
        assert_eq!(c.poll_timeout(), Some(now + ACK_DELAY));
        c.handle_timeout(now + ACK_DELAY);
        assert_eq!(c.poll_event(), Some(Event::Commit(5)));
    }
}
