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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::VERSION;
use super::frame::{CloseCode, Frame, FrameError, Hello, Welcome};

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
}

impl Session {
    /// An edge session: queues HELLO at once. `read_deadline` also bounds the wait for WELCOME.
    pub fn edge(now: Instant, hello: Hello) -> Session {
        let mut s = Session::new(Role::Edge, now, hello.read_deadline, hello.heartbeat);
        s.transmit.push_back(Frame::Hello(hello));
        s
    }

    /// A cloud session, waiting for HELLO; `keepalive` is its deadline (`keepalive-interval`).
    pub fn cloud(now: Instant, keepalive: Duration) -> Session {
        Session::new(Role::Cloud, now, keepalive, keepalive)
    }

    fn new(role: Role, now: Instant, deadline: Duration, heartbeat: Duration) -> Session {
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
                self.peer_welcome = Some(w);
                self.state = State::Open;
                self.events.push_back(Event::Open);
            }
            (_, state, frame) => {
                let why = format!("unexpected {} in state {state:?}", frame_name(&frame));
                self.close(CloseCode::ProtocolError, why);
            }
        }
    }

    /// Cloud: accepts the edge whose HELLO was reported; queues WELCOME and opens the link.
    pub fn accept(&mut self, now: Instant) {
        if self.state != State::Deciding {
            return;
        }
        let read_deadline = self
            .peer_hello
            .as_ref()
            .map_or(self.deadline, |h| h.read_deadline);
        let heartbeat = (read_deadline / 3).max(MIN_HEARTBEAT);
        self.heartbeat = Some(heartbeat);
        self.transmit.push_back(Frame::Welcome(Welcome {
            version: VERSION,
            keepalive: self.deadline,
            heartbeat,
        }));
        self.last_recv = now;
        self.state = State::Open;
        self.events.push_back(Event::Open);
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
        if let Some(hb) = self.heartbeat {
            if self.transmit.is_empty() && now.saturating_duration_since(self.last_send) >= hb {
                self.transmit.push_back(Frame::Heartbeat);
            }
        }
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
        Some(match self.heartbeat {
            Some(hb) => dead.min(self.last_send + hb),
            None => dead,
        })
    }
}

/// Heartbeats are never sent more often than this, whatever the deadlines.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "HELLO",
        Frame::Welcome(_) => "WELCOME",
        Frame::Heartbeat => "HEARTBEAT",
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
        let mut cloud = Session::cloud(now, keepalive);
        transfer(now, &mut edge, &mut cloud);
        assert!(matches!(events(&mut cloud)[..], [Event::Hello(_)]));
        cloud.accept(now);
        assert_eq!(events(&mut cloud), vec![Event::Open]);
        transfer(now, &mut cloud, &mut edge);
        assert_eq!(events(&mut edge), vec![Event::Open]);
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
        let mut cloud = Session::cloud(now, 30 * S);
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
        let mut cloud = Session::cloud(now, 30 * S);
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
}
