//! A simulated edge/cloud link for property tests and the `session` fuzz target: two
//! [`Session`]s, each with a model of the durable state its hub keeps per lane (the outgoing
//! queue and the received stream's position, bookkept as `hub::exchange::Exchange` does), joined
//! by one pipe per lane and direction (as QUIC's streams are: frames of one lane never wait for
//! the other's) that may drop, duplicate, reorder or forge frames, under a fake clock. Messages
//! are short or longer than a `CHUNK`, so that they cross in pieces. Links end when a session
//! closes and a new one starts, as the hubs reconnect.
//!
//! Every choice (what happens next, how long, how many) comes from a [`Choices`], so the same
//! simulation runs from a seeded PRNG or from a fuzzer's input. [`Sim::step`] checks the
//! invariants after each operation and panics with a description when one breaks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hub::proto::frame::{CHUNK, Hello, HelloLane, LANES, Lane, Welcome, WelcomeLane};
use hub::proto::session::{ACK_DELAY, Streams, frame_lane};
use hub::proto::{CloseCode, Event, Frame, Session, VERSION};

/// Where the simulation's choices come from.
pub trait Choices {
    /// The next choice; `None` once there are no more.
    fn byte(&mut self) -> Option<u8>;

    /// A number below `n` (`n` at most 65536), or `None` once there are no more choices.
    fn below(&mut self, n: u32) -> Option<u32> {
        let hi = u32::from(self.byte()?);
        let lo = u32::from(self.byte()?);
        Some(((hi << 8) | lo) % n.max(1))
    }

    /// A sequence number or stream position, biased to the edges of the range.
    fn position(&mut self) -> Option<u64> {
        Some(match self.byte()? % 8 {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - 1,
            4 => u64::from(self.byte()?),
            5 => u64::from(u32::MAX) + u64::from(self.byte()?),
            _ => {
                let mut v = 0u64;
                for _ in 0..8 {
                    v = (v << 8) | u64::from(self.byte()?);
                }
                v
            }
        })
    }
}

/// Bounds one run from bytes, so a long input cannot make it slow.
const MAX_STEPS: usize = 4096;

/// Runs a simulation whose every choice is read from `data`, as the `session` fuzz target does:
/// the first byte says whether frames may be forged, then come the link parameters and the
/// operations. Without forged frames it ends by draining both queues over a faithful link.
pub fn run_bytes(data: &[u8]) {
    struct Input<'a>(&'a [u8]);
    impl Choices for Input<'_> {
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }
    }
    let mut input = Input(data);
    let Some(mode) = input.byte() else { return };
    let Some(config) = Config::choose(&mut input) else {
        return;
    };
    let (Some(up), Some(down)) = (input.byte(), input.byte()) else {
        return;
    };
    let streams = (1 + u64::from(up), 1 + u64::from(down));
    let mut sim = Sim::new(config, streams, mode & 1 == 1);
    for _ in 0..MAX_STEPS {
        if !sim.step(&mut input) {
            break;
        }
    }
    if !sim.forged {
        sim.drain();
    }
}

/// The most messages each side's applications submit in one run, so a run stays short.
const MAX_MESSAGES: usize = 400;

/// One hub's durable state on one lane and what its applications received, bookkept as
/// `Exchange` does.
#[derive(Debug)]
pub struct LaneSide {
    /// The outgoing queue's stream id and its messages (sequence number = index + 1).
    stream: u64,
    pub queue: Vec<Vec<u8>>,
    /// The highest sequence number the peer acknowledged (the queue holds the ones after it).
    pub acked: u64,
    /// The received stream and the last sequence number delivered from it (`Inbound`) …
    in_stream: u64,
    in_seq: u64,
    /// … and what was last saved of them, which is what an acknowledgement may cover.
    saved: (u64, u64),
    /// Messages handed to the applications, in order.
    pub delivered: Vec<Vec<u8>>,
}

/// One hub's durable state, per lane.
#[derive(Debug)]
pub struct Side {
    name: &'static str,
    pub lanes: [LaneSide; LANES],
}

impl Side {
    fn new(name: &'static str, stream: u64) -> Side {
        let lane = |stream| LaneSide {
            stream,
            queue: Vec::new(),
            acked: 0,
            in_stream: 0,
            in_seq: 0,
            saved: (0, 0),
            delivered: Vec::new(),
        };
        Side {
            name,
            lanes: [lane(stream << 16 | 0xaaaa), lane(stream)],
        }
    }

    fn streams(&self) -> [Streams; LANES] {
        self.lanes.each_ref().map(|l| Streams {
            out_stream: l.stream,
            out_first: l.acked + 1,
            in_stream: l.in_stream,
            in_seq: l.in_seq,
        })
    }

    /// Messages submitted, both lanes together.
    pub fn messages(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }

    /// The applications submit `n` messages on `lane`, some of them longer than a [`CHUNK`]
    /// (`long`), so that they cross in pieces.
    fn submit(&mut self, lane: Lane, n: usize, long: bool) {
        let l = &mut self.lanes[lane.index()];
        for _ in 0..n.min(MAX_MESSAGES - l.queue.len()) {
            let mut payload = format!("{}-{lane}-{}", self.name, l.queue.len() + 1).into_bytes();
            if long && l.queue.len() % 3 == 0 {
                payload.resize(2 * CHUNK + l.queue.len(), b'.');
            }
            l.queue.push(payload);
        }
    }

    fn save(&mut self) {
        for l in &mut self.lanes {
            l.saved = (l.in_stream, l.in_seq);
        }
    }
}

/// What one session has reported so far, to check the next report against.
#[derive(Debug, Default)]
struct Seen {
    hello: bool,
    open: bool,
    closed: bool,
    lanes: [SeenLane; LANES],
}

/// What one session has reported so far on one lane.
#[derive(Debug, Default)]
struct SeenLane {
    acked: u64,
    last_message: Option<u64>,
    last_sent: Option<u64>,
}

struct Link {
    edge: Session,
    cloud: Session,
    seen: [Seen; 2],
    /// Encoded frames in flight: edge to cloud, cloud to edge, each per lane.
    pipes: [[VecDeque<Vec<u8>>; LANES]; 2],
}

/// Link parameters, fixed for a run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub edge_window: u32,
    pub cloud_window: u32,
    pub heartbeat: Duration,
    pub read_deadline: Duration,
    pub keepalive: Duration,
}

impl Config {
    /// Parameters drawn from `c`: small windows (so they fill), deadlines of 1 to 30 s.
    pub fn choose(c: &mut impl Choices) -> Option<Config> {
        Some(Config {
            edge_window: 1 + c.below(16)?,
            cloud_window: 1 + c.below(16)?,
            heartbeat: Duration::from_millis(u64::from(50 + c.below(20_000)?)),
            read_deadline: Duration::from_millis(u64::from(1_000 + c.below(29_000)?)),
            keepalive: Duration::from_millis(u64::from(1_000 + c.below(29_000)?)),
        })
    }
}

const EDGE: usize = 0;
const CLOUD: usize = 1;

/// The simulated pair of hubs and the link between them.
pub struct Sim {
    config: Config,
    now: Instant,
    pub edge: Side,
    pub cloud: Side,
    link: Option<Link>,
    /// Whether operations may forge or garble frames.
    forgery: bool,
    /// Frames were forged or garbled: the sides' models may hold anything, so only the
    /// invariants of each session on its own are checked.
    pub forged: bool,
    /// How many links were opened, and how many frames crossed.
    pub links: u64,
    pub frames: u64,
}

impl Sim {
    /// Two hubs with empty queues; `streams` are their queues' stream ids. With `forgery`,
    /// operations may also put forged or garbled frames on the link.
    pub fn new(config: Config, streams: (u64, u64), forgery: bool) -> Sim {
        Sim {
            config,
            now: Instant::now(),
            edge: Side::new("up", streams.0),
            cloud: Side::new("down", streams.1),
            link: None,
            forgery,
            forged: false,
            links: 0,
            frames: 0,
        }
    }

    fn connect(&mut self) {
        let lanes = self.edge.streams().map(HelloLane::from);
        let hello = Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat: self.config.heartbeat,
            read_deadline: self.config.read_deadline,
            window: self.config.edge_window,
            lanes,
        };
        self.links += 1;
        self.link = Some(Link {
            edge: Session::edge(self.now, hello),
            cloud: Session::cloud(self.now, self.config.keepalive, self.config.cloud_window),
            seen: Default::default(),
            pipes: Default::default(),
        });
    }

    /// The link ends (a session closed, or the transport broke): both hubs record how far they
    /// got, as `Exchange::finish` does, and frames in flight are lost.
    fn disconnect(&mut self) {
        if self.link.take().is_some() {
            self.edge.save();
            self.cloud.save();
        }
    }

    /// Runs one operation chosen by `c`; returns `false` when the choices ran out.
    pub fn step(&mut self, c: &mut impl Choices) -> bool {
        let Some(op) = c.byte() else {
            return false;
        };
        if self.link.is_none() {
            self.connect();
        }
        let op = if self.forgery { op % 16 } else { op % 14 };
        let ok = match op {
            0..=3 => c.below(16).map(|n| {
                let lane = Lane::ALL[n as usize % LANES];
                self.deliver_lane(usize::from(op % 2), lane, n as usize / 2 + 1);
            }),
            4 | 5 => c
                .below(1_000)
                .map(|ms| self.run_for(Duration::from_millis(ms.into()))),
            6 | 7 => c.below(64).map(|n| {
                let side = if op == 6 {
                    &mut self.edge
                } else {
                    &mut self.cloud
                };
                let lane = Lane::ALL[n as usize % LANES];
                side.submit(lane, (n as usize / 2) % 8 + 1, n >= 48);
            }),
            8 => c.byte().map(|d| self.drop_frame(pipe_of(d))),
            9 => c.byte().map(|d| self.duplicate_frame(pipe_of(d))),
            10 => c.byte().map(|d| self.swap_frames(pipe_of(d))),
            11 => c
                .below(60_000)
                .map(|ms| self.stall(Duration::from_millis(ms.into()))),
            12 => {
                self.disconnect();
                Some(())
            }
            13 => c.byte().map(|d| self.close(usize::from(d % 2))),
            14 => self.forge_frame(c),
            _ => self.garble(c),
        };
        if ok.is_none() {
            return false;
        }
        self.process();
        self.check_models();
        true
    }

    /// Reconnects over a faithful link and runs it until both queues are delivered and
    /// acknowledged; panics if that does not happen within a generous bound.
    pub fn drain(&mut self) {
        self.disconnect();
        self.connect();
        let mut rounds = 0;
        loop {
            rounds += 1;
            self.now += Duration::from_millis(1);
            self.timeouts();
            self.process();
            let moved = self.deliver(EDGE, usize::MAX) + self.deliver(CLOUD, usize::MAX);
            self.check_models();
            let link = self.link.as_ref().expect("the drain link stays up");
            assert!(
                link.edge.is_open() || rounds < 10,
                "the drain link did not open"
            );
            let done = (0..LANES).all(|i| {
                let (e, c) = (&self.edge.lanes[i], &self.cloud.lanes[i]);
                e.delivered.len() == c.queue.len()
                    && c.delivered.len() == e.queue.len()
                    && e.acked as usize == e.queue.len()
                    && c.acked as usize == c.queue.len()
            });
            if done && moved == 0 {
                break;
            }
            assert!(
                rounds < 20 * (LANES * MAX_MESSAGES + 100),
                "no progress after {rounds} rounds: {} of {} up delivered, {} of {} down",
                self.cloud.messages(),
                self.edge.messages(),
                self.edge.messages(),
                self.cloud.messages()
            );
        }
        // Nothing more is owed: quiet for longer than the acknowledgement delay.
        for _ in 0..2 * ACK_DELAY.as_millis() {
            self.now += Duration::from_millis(1);
            self.timeouts();
            self.process();
            self.deliver(EDGE, usize::MAX);
            self.deliver(CLOUD, usize::MAX);
        }
        assert!(self.link.is_some(), "the drain link stays up");
        for lane in Lane::ALL {
            let (e, c) = (
                &self.edge.lanes[lane.index()],
                &self.cloud.lanes[lane.index()],
            );
            assert_eq!(c.delivered, e.queue, "edge to cloud, {lane} lane");
            assert_eq!(e.delivered, c.queue, "cloud to edge, {lane} lane");
        }
    }

    fn timeouts(&mut self) {
        if let Some(link) = &mut self.link {
            link.edge.handle_timeout(self.now);
            link.cloud.handle_timeout(self.now);
        }
        self.process();
    }

    /// Hands up to `n` frames from `from`'s pipes to the other session, the lanes in turn;
    /// returns how many.
    fn deliver(&mut self, from: usize, n: usize) -> usize {
        let mut moved = 0;
        loop {
            let before = moved;
            for lane in Lane::ALL {
                if moved < n {
                    moved += self.deliver_lane(from, lane, 1);
                }
            }
            if moved == before || moved >= n {
                return moved;
            }
        }
    }

    /// Hands up to `n` frames from `from`'s pipe of `lane` to the other session; returns how
    /// many.
    fn deliver_lane(&mut self, from: usize, lane: Lane, n: usize) -> usize {
        let mut moved = 0;
        while moved < n {
            let Some(link) = &mut self.link else { break };
            let Some(bytes) = link.pipes[from][lane.index()].pop_front() else {
                break;
            };
            let to = if from == EDGE {
                &mut link.cloud
            } else {
                &mut link.edge
            };
            to.handle_bytes(self.now, &bytes);
            moved += 1;
            self.frames += 1;
            self.process();
        }
        moved
    }

    /// Time passes on a working link: timers fire when due and frames cross at once.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(link) = &self.link {
            let next = [link.edge.poll_timeout(), link.cloud.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            self.now = self.now.max(next);
            self.timeouts();
            self.deliver(EDGE, usize::MAX);
            self.deliver(CLOUD, usize::MAX);
        }
        self.now = end;
        self.timeouts();
    }

    /// Time passes and nothing crosses: the link is blackholed.
    fn stall(&mut self, d: Duration) {
        self.now += d;
        self.timeouts();
    }

    fn pipe(&mut self, (from, lane): (usize, Lane)) -> Option<&mut VecDeque<Vec<u8>>> {
        self.link.as_mut().map(|l| &mut l.pipes[from][lane.index()])
    }

    fn drop_frame(&mut self, from: (usize, Lane)) {
        if let Some(p) = self.pipe(from) {
            p.pop_front();
        }
    }

    fn duplicate_frame(&mut self, from: (usize, Lane)) {
        if let Some(p) = self.pipe(from) {
            if let Some(f) = p.front().cloned() {
                p.push_front(f);
            }
        }
    }

    fn swap_frames(&mut self, from: (usize, Lane)) {
        if let Some(p) = self.pipe(from) {
            if p.len() >= 2 {
                p.swap(0, 1);
            }
        }
    }

    fn close(&mut self, side: usize) {
        if let Some(link) = &mut self.link {
            let s = if side == EDGE {
                &mut link.edge
            } else {
                &mut link.cloud
            };
            s.close(CloseCode::ShuttingDown, "stopping");
        }
    }

    /// Puts a well-formed frame with chosen fields at the head of a pipe.
    fn forge_frame(&mut self, c: &mut impl Choices) -> Option<()> {
        let from = pipe_of(c.byte()?);
        let lane = Lane::ALL[usize::from(c.byte()? % 2)];
        let frame = match c.byte()? % 6 {
            0 => Frame::Hello(Hello {
                version: if c.byte()? < 200 { VERSION } else { c.byte()? },
                project_id: "p".into(),
                node_id: "n".into(),
                heartbeat: Duration::from_millis(c.position()?),
                read_deadline: Duration::from_millis(c.position()?),
                window: c.position()? as u32,
                lanes: [
                    HelloLane {
                        up_stream: c.position()?,
                        up_first: c.position()?,
                        down_stream: c.position()?,
                        down_seq: c.position()?,
                    },
                    HelloLane {
                        up_stream: c.position()?,
                        up_first: c.position()?,
                        down_stream: c.position()?,
                        down_seq: c.position()?,
                    },
                ],
            }),
            1 => Frame::Welcome(Welcome {
                version: if c.byte()? < 200 { VERSION } else { c.byte()? },
                keepalive: Duration::from_millis(c.position()?),
                heartbeat: Duration::from_millis(c.position()?),
                window: c.position()? as u32,
                lanes: [
                    WelcomeLane {
                        down_stream: c.position()?,
                        down_first: c.position()?,
                        up_seq: c.position()?,
                    },
                    WelcomeLane {
                        down_stream: c.position()?,
                        down_first: c.position()?,
                        up_seq: c.position()?,
                    },
                ],
            }),
            2 => Frame::Heartbeat,
            3 => Frame::Message {
                lane,
                seq: c.position()?,
                payload: b"forged".to_vec(),
            },
            4 => Frame::Part {
                lane,
                seq: c.position()?,
                offset: c.position()? as u32,
                total: c.position()? as u32,
                payload: b"forged piece".to_vec(),
            },
            _ => Frame::Ack {
                lane,
                seq: c.position()?,
            },
        };
        self.forged = true;
        if let Some(p) = self.pipe(from) {
            p.push_front(frame.encode());
        }
        Some(())
    }

    /// Puts arbitrary bytes at the head of a pipe.
    fn garble(&mut self, c: &mut impl Choices) -> Option<()> {
        let from = pipe_of(c.byte()?);
        let len = c.byte()? % 48;
        let bytes = (0..len).map(|_| c.byte()).collect::<Option<Vec<u8>>>()?;
        self.forged = true;
        if let Some(p) = self.pipe(from) {
            p.push_front(bytes);
        }
        Some(())
    }

    /// Lets both hubs act on what their sessions reported, fills the windows and moves output
    /// into the pipes, until nothing more happens; ends the link if a session closed.
    fn process(&mut self) {
        let Some(link) = &mut self.link else { return };
        let forged = self.forged;
        loop {
            let mut progressed = false;
            let peer_windows = [self.config.cloud_window, self.config.edge_window];
            for who in [EDGE, CLOUD] {
                let (s, side, peer) = if who == EDGE {
                    (&mut link.edge, &mut self.edge, &self.cloud)
                } else {
                    (&mut link.cloud, &mut self.cloud, &self.edge)
                };
                let seen = &mut link.seen[who];
                while let Some(ev) = s.poll_event() {
                    progressed = true;
                    handle_event(self.now, s, side, peer, seen, ev, forged);
                }
                if seen.closed {
                    check_closed(self.now, s);
                    continue;
                }
                // Fill each lane's window from its queue, as `Exchange::fill` does.
                for lane in Lane::ALL {
                    let queue = &side.lanes[lane.index()].queue;
                    while s.send_capacity(lane) > 0
                        && s.next_send_seq(lane) <= queue.len() as u64
                        && s.next_send_seq(lane) > 0
                    {
                        let seq = s.next_send_seq(lane);
                        s.send_message(lane, seq, queue[seq as usize - 1].clone());
                        progressed = true;
                    }
                }
                check_session(s, seen, peer_windows[who], forged);
                let mut bulk_sent = false;
                while let Some(frame) = s.poll_transmit(self.now) {
                    progressed = true;
                    let lane = frame_lane(&frame);
                    // Every urgent frame is handed out before any bulk one.
                    assert!(
                        lane == Lane::Bulk || !bulk_sent,
                        "an urgent frame after a bulk one"
                    );
                    bulk_sent |= lane == Lane::Bulk;
                    check_frame(&frame, side, seen, forged);
                    link.pipes[who][lane.index()].push_back(frame.encode());
                }
            }
            if !progressed {
                break;
            }
        }
        if link.edge.is_closed() || link.cloud.is_closed() {
            self.disconnect();
        }
    }

    /// What each hub holds agrees with what the other sent, unless frames were forged.
    fn check_models(&self) {
        if self.forged {
            return;
        }
        for (rxs, txs) in [(&self.cloud, &self.edge), (&self.edge, &self.cloud)] {
            for lane in Lane::ALL {
                let (rx, tx) = (&rxs.lanes[lane.index()], &txs.lanes[lane.index()]);
                assert!(
                    tx.queue.starts_with(&rx.delivered),
                    "{} delivered {:?} on the {lane} lane, which is not the start of what {} sent",
                    rxs.name,
                    names(&rx.delivered),
                    txs.name
                );
                assert!(
                    tx.acked <= rx.saved.1 && tx.acked as usize <= tx.queue.len(),
                    "{} dropped up to {} from its {lane} queue of {}; {} saved only {}",
                    txs.name,
                    tx.acked,
                    tx.queue.len(),
                    rxs.name,
                    rx.saved.1
                );
            }
        }
    }
}

fn names(list: &[Vec<u8>]) -> Vec<String> {
    list.iter()
        .map(|p| String::from_utf8_lossy(&p[..p.len().min(24)]).into_owned())
        .collect()
}

/// A pipe chosen by a byte: the direction, and the lane.
fn pipe_of(d: u8) -> (usize, Lane) {
    (usize::from(d % 2), Lane::ALL[usize::from(d / 2 % 2)])
}

/// Acts on one event as the hubs do (`Exchange::handle`, the cloud's HELLO check), checking it
/// against what the session reported before.
fn handle_event(
    now: Instant,
    s: &mut Session,
    side: &mut Side,
    peer: &Side,
    seen: &mut Seen,
    ev: Event,
    forged: bool,
) {
    assert!(!seen.closed, "{ev:?} after the session closed");
    match ev {
        Event::Hello(_) => {
            assert!(
                !seen.hello && !seen.open && s.role() == hub::proto::Role::Cloud,
                "HELLO reported twice, late or on the edge"
            );
            seen.hello = true;
            s.accept(now, side.streams());
        }
        Event::Open => {
            assert!(!seen.open, "opened twice");
            seen.open = true;
        }
        Event::Close(..) => {
            seen.closed = true;
            assert!(s.is_closed());
        }
        Event::Message { lane, seq, payload } => {
            assert!(seen.open, "message {seq} before the link opened");
            let seen = &mut seen.lanes[lane.index()];
            if let Some(last) = seen.last_message {
                assert_eq!(seq, last + 1, "messages out of sequence");
            }
            seen.last_message = Some(seq);
            let (side, peer) = (&mut side.lanes[lane.index()], &peer.lanes[lane.index()]);
            if !forged {
                assert_eq!(
                    (s.inbound_stream(lane), seq),
                    (peer.stream, side.in_seq + 1),
                    "{lane}: the next message of the peer's stream"
                );
                assert_eq!(Some(&payload), peer.queue.get(seq as usize - 1));
            }
            side.in_stream = s.inbound_stream(lane);
            side.in_seq = seq;
            side.delivered.push(payload);
        }
        Event::Acked(lane, seq) => {
            assert!(seen.open, "ACK before the link opened");
            let seen = &mut seen.lanes[lane.index()];
            assert!(
                seq > seen.acked,
                "acknowledgement {seq} after {}",
                seen.acked
            );
            assert!(
                seq < s.next_send_seq(lane),
                "acknowledged {seq}, next to send is {}",
                s.next_send_seq(lane)
            );
            seen.acked = seq;
            let side = &mut side.lanes[lane.index()];
            side.acked = side.acked.max(seq);
        }
        Event::Commit(lane, seq) => {
            assert!(seen.open, "commit before the link opened");
            if let Some(last) = seen.lanes[lane.index()].last_message {
                assert_eq!(seq, last, "a commit covers exactly what was delivered");
            }
            let stream = s.inbound_stream(lane);
            let l = &mut side.lanes[lane.index()];
            if l.in_stream == stream {
                l.in_seq = l.in_seq.max(seq);
            } else {
                l.in_stream = stream;
                l.in_seq = seq;
            }
            l.saved = (l.in_stream, l.in_seq);
            s.committed(lane, seq);
        }
    }
}

/// The session's own bookkeeping is consistent.
fn check_session(s: &Session, seen: &Seen, peer_window: u32, forged: bool) {
    for lane in Lane::ALL {
        assert!(
            s.acked(lane) < s.next_send_seq(lane),
            "acked {} but next to send is {}",
            s.acked(lane),
            s.next_send_seq(lane)
        );
        assert!(s.acked(lane) >= seen.lanes[lane.index()].acked);
        if !forged && s.is_open() {
            let in_flight = s.next_send_seq(lane) - 1 - s.acked(lane);
            assert!(
                in_flight <= u64::from(peer_window),
                "{in_flight} unacknowledged on the {lane} lane, window {peer_window}"
            );
        }
    }
    assert!(
        s.is_closed() || s.poll_timeout().is_some(),
        "no timer while alive"
    );
}

/// A closed session stays closed and silent, whatever it is handed.
fn check_closed(now: Instant, s: &mut Session) {
    assert!(s.is_closed() && !s.is_open());
    s.handle_timeout(now + Duration::from_secs(3600));
    s.handle_frame(now, Frame::Heartbeat);
    s.handle_bytes(now, &[0xff]);
    s.committed(Lane::Bulk, 1);
    assert!(s.is_closed());
    assert_eq!(s.poll_transmit(now), None, "a closed session sends nothing");
    assert_eq!(
        s.poll_event(),
        None,
        "a closed session reports nothing more"
    );
    assert_eq!(s.poll_timeout(), None, "a closed session needs no timer");
}

/// Checks an outgoing frame: messages go out in sequence, and an acknowledgement never covers
/// what the hub has not saved.
fn check_frame(frame: &Frame, side: &Side, seen: &mut Seen, forged: bool) {
    match frame {
        Frame::Message { lane, seq, .. } => {
            let seen = &mut seen.lanes[lane.index()];
            if let Some(last) = seen.last_sent {
                assert_eq!(*seq, last + 1, "sent out of sequence");
            }
            seen.last_sent = Some(*seq);
        }
        Frame::Part {
            lane,
            seq,
            offset,
            total,
            payload,
        } => {
            let seen = &mut seen.lanes[lane.index()];
            let next = seen.last_sent.map(|last| last + 1);
            assert!(
                next.is_none_or(|n| n == *seq),
                "a piece of {seq} when {next:?} is next"
            );
            if *offset as usize + payload.len() == *total as usize {
                seen.last_sent = Some(*seq);
            }
        }
        Frame::Ack { lane, seq } if !forged => {
            let saved = side.lanes[lane.index()].saved.1;
            assert!(
                *seq <= saved,
                "{} acknowledged {seq} on the {lane} lane having saved only {saved}",
                side.name
            );
        }
        _ => {}
    }
}
