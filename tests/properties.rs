//! Property tests over random inputs from a seeded PRNG: the frame codec round-trips every kind of
//! frame at its boundary sizes; an edge and a cloud session joined by a link that drops,
//! duplicates, reorders and stalls frames, reconnecting whenever a session closes, deliver every
//! message exactly once and in order (`properties/sim.rs`, shared with the `session` fuzz
//! target); and so do two hubs' real exchanges, queues and receive state on disk over such a
//! link, where the exchange also drops messages whose id it saw before.
//!
//! Each test prints its seed; `HUB_PROPTEST_SEED=N` replays from it and `HUB_PROPTEST_CASES=N`
//! changes how many cases run. A failing case prints the seed that replays it alone.

mod common;
#[path = "properties/sim.rs"]
mod sim;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub::config::QueueConfig;
use hub::exchange::{Exchange, LaneStores};
use hub::local::{AppReceiver, Filter, Local, app_channel};
use hub::message::Message;
use hub::proto::frame::{
    CHUNK, Hello, HelloLane, LANES, Lane, StreamDecoder, Welcome, WelcomeLane, encode_len_prefixed,
};
use hub::proto::{Event, Frame, FrameError, MAX_FRAME, Session, VERSION};
use hub::store::Fsync;

use common::Rng;
use sim::{Choices, Config, Sim};

impl Choices for Rng {
    fn byte(&mut self) -> Option<u8> {
        Some(self.next() as u8)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

/// Runs `cases` cases (or `HUB_PROPTEST_CASES`), each from its own seed; case `i` of seed `s`
/// is case 0 of seed `s + i`, so a failing case replays alone.
fn run_cases(test: &'static str, cases: u64, mut case: impl FnMut(&mut Rng)) -> u64 {
    let seed = env_u64("HUB_PROPTEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    });
    let cases = env_u64("HUB_PROPTEST_CASES").unwrap_or(cases);
    eprintln!("{test}: {cases} cases from HUB_PROPTEST_SEED={seed}");
    for i in 0..cases {
        let case_seed = seed.wrapping_add(i);
        let guard = Replay(test, case_seed);
        case(&mut Rng(case_seed));
        std::mem::forget(guard);
    }
    cases
}

/// Says how to replay a case when it panics.
struct Replay(&'static str, u64);

impl Drop for Replay {
    fn drop(&mut self) {
        eprintln!(
            "{} failed; replay with HUB_PROPTEST_SEED={} HUB_PROPTEST_CASES=1",
            self.0, self.1
        );
    }
}

/// A value at the edges of the u64 range, or anywhere.
fn position(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => rng.below(1000),
        _ => rng.next(),
    }
}

/// A whole number of milliseconds that fits the wire's u32.
fn millis(rng: &mut Rng) -> Duration {
    let ms = match rng.below(4) {
        0 => 0,
        1 => u32::MAX,
        _ => rng.next() as u32,
    };
    Duration::from_millis(ms.into())
}

/// A string of at most 255 bytes (the wire's limit), often exactly at a boundary, with
/// multi-byte characters.
fn str8(rng: &mut Rng) -> String {
    let target = match rng.below(4) {
        0 => 0,
        1 => 255,
        2 => 254,
        _ => rng.below(256) as usize,
    };
    let mut s = String::new();
    loop {
        let c = ['a', '-', 'é', '€', '𝄞'][rng.below(5) as usize];
        if s.len() + c.len_utf8() > target {
            // Pad with one-byte characters to land exactly on the target.
            while s.len() < target {
                s.push('z');
            }
            return s;
        }
        s.push(c);
    }
}

fn random_frame(rng: &mut Rng) -> Frame {
    match rng.below(5) {
        0 => Frame::Hello(Hello {
            version: rng.next() as u8,
            project_id: str8(rng),
            node_id: str8(rng),
            heartbeat: millis(rng),
            read_deadline: millis(rng),
            window: position(rng) as u32,
            lanes: [(); LANES].map(|()| HelloLane {
                up_stream: position(rng),
                up_first: position(rng),
                down_stream: position(rng),
                down_seq: position(rng),
            }),
        }),
        1 => Frame::Welcome(Welcome {
            version: rng.next() as u8,
            keepalive: millis(rng),
            heartbeat: millis(rng),
            window: position(rng) as u32,
            lanes: [(); LANES].map(|()| WelcomeLane {
                down_stream: position(rng),
                down_first: position(rng),
                up_seq: position(rng),
            }),
        }),
        2 => Frame::Heartbeat,
        3 => {
            let len = match rng.below(4) {
                0 => 0,
                1 => 1,
                _ => rng.below(4096) as usize,
            };
            let lane = Lane::ALL[rng.below(2) as usize];
            let (seq, payload) = (position(rng), (0..len).map(|_| rng.next() as u8).collect());
            if rng.below(2) == 0 {
                Frame::Message { lane, seq, payload }
            } else {
                Frame::Part {
                    lane,
                    seq,
                    offset: rng.next() as u32,
                    total: rng.next() as u32,
                    payload,
                }
            }
        }
        _ => Frame::Ack {
            lane: Lane::ALL[rng.below(2) as usize],
            seq: position(rng),
        },
    }
}

/// The encoded size each kind must have, from `docs/protocol.md`.
fn documented_len(frame: &Frame) -> usize {
    match frame {
        Frame::Hello(h) => 10 + 1 + h.project_id.len() + 1 + h.node_id.len() + 4 + 2 * 32,
        Frame::Welcome(_) => 14 + 2 * 24,
        Frame::Heartbeat => 1,
        Frame::Message { payload, .. } => 10 + payload.len(),
        Frame::Part { payload, .. } => 18 + payload.len(),
        Frame::Ack { .. } => 10,
    }
}

#[test]
fn frames_round_trip() {
    let mut kinds = [0usize; 6];
    let cases = run_cases("frames_round_trip", 20_000, |rng| {
        let frame = random_frame(rng);
        kinds[match frame {
            Frame::Hello(_) => 0,
            Frame::Welcome(_) => 1,
            Frame::Heartbeat => 2,
            Frame::Message { .. } => 3,
            Frame::Part { .. } => 4,
            Frame::Ack { .. } => 5,
        }] += 1;
        let bytes = frame.encode();
        assert_eq!(bytes.len(), documented_len(&frame), "{frame:?}");
        // Another version's HELLO or WELCOME is read no further than its version number.
        let frame = match frame {
            Frame::Hello(h) if h.version != VERSION => match Frame::decode(&bytes) {
                Ok(Frame::Hello(got)) => {
                    assert_eq!((got.version, got.node_id.as_str()), (h.version, ""));
                    return;
                }
                other => panic!("{other:?}"),
            },
            Frame::Welcome(w) if w.version != VERSION => match Frame::decode(&bytes) {
                Ok(Frame::Welcome(got)) => {
                    assert_eq!((got.version, got.window), (w.version, 0));
                    return;
                }
                other => panic!("{other:?}"),
            },
            f => f,
        };
        assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));

        // A frame cut short is refused; a message's payload may be any length, so only a cut
        // inside its sequence number is.
        let whole = match frame {
            Frame::Message { .. } => 10,
            Frame::Part { .. } => 18,
            _ => bytes.len(),
        };
        let cut = rng.below(whole as u64) as usize;
        let want = if cut == 0 {
            FrameError::Empty
        } else {
            FrameError::Truncated
        };
        assert_eq!(
            Frame::decode(&bytes[..cut]),
            Err(want),
            "{frame:?} cut at {cut}"
        );

        // HELLO and WELCOME ignore fields a later version appends.
        if matches!(frame, Frame::Hello(_) | Frame::Welcome(_)) {
            let mut longer = bytes.clone();
            longer.extend((0..rng.below(16)).map(|_| rng.next() as u8));
            assert_eq!(Frame::decode(&longer), Ok(frame.clone()));
        }
    });
    assert!(
        cases < 50 || kinds.iter().all(|&n| n > 0),
        "every kind was tried: {kinds:?}"
    );
}

#[test]
fn length_prefixed_frames_survive_any_split() {
    run_cases("length_prefixed_frames_survive_any_split", 2000, |rng| {
        // Of this version: another version's HELLO or WELCOME is read no further than its number.
        let frames: Vec<Frame> = (0..1 + rng.below(8))
            .map(|_| match random_frame(rng) {
                Frame::Hello(h) => Frame::Hello(Hello {
                    version: VERSION,
                    ..h
                }),
                Frame::Welcome(w) => Frame::Welcome(Welcome {
                    version: VERSION,
                    ..w
                }),
                f => f,
            })
            .collect();
        let mut wire = Vec::new();
        for f in &frames {
            encode_len_prefixed(f, &mut wire);
        }
        let mut d = StreamDecoder::default();
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            // Read at most what the decoder asks for, as the QUIC transport does.
            let n = (1 + rng.below(64) as usize)
                .min(d.wanted())
                .min(wire.len() - at);
            d.push(&wire[at..at + n]);
            at += n;
            while let Some(bytes) = d.next_frame().expect("valid stream") {
                got.push(Frame::decode(&bytes).expect("valid frame"));
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.pending(), 0);
    });
}

#[test]
fn the_size_limit_is_exact() {
    let at_limit = Frame::Message {
        lane: Lane::Bulk,
        seq: 1,
        payload: vec![7; MAX_FRAME - 10],
    };
    let bytes = at_limit.encode();
    assert_eq!(bytes.len(), MAX_FRAME);
    assert_eq!(Frame::decode(&bytes), Ok(at_limit.clone()));
    let mut over = bytes;
    over.push(0);
    assert_eq!(
        Frame::decode(&over),
        Err(FrameError::Oversized(MAX_FRAME + 1))
    );

    let mut d = StreamDecoder::default();
    let mut wire = Vec::new();
    encode_len_prefixed(&at_limit, &mut wire);
    d.push(&wire);
    assert_eq!(
        d.next_frame().map(|f| f.map(|f| f.len())),
        Ok(Some(MAX_FRAME))
    );
    let mut d = StreamDecoder::default();
    d.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
    assert_eq!(d.next_frame(), Err(FrameError::Oversized(MAX_FRAME + 1)));
}

/// Runs one simulated pair of hubs for `ops` random operations.
fn simulate(rng: &mut Rng, ops: usize, forgery: bool) -> Sim {
    let config = Config::choose(rng).expect("a PRNG never runs out");
    let streams = (1 + rng.below(1 << 40), 1 + rng.below(1 << 40));
    let mut sim = Sim::new(config, streams, forgery);
    for _ in 0..ops {
        assert!(sim.step(rng));
    }
    sim
}

#[test]
fn lossy_links_deliver_every_message_once_in_order() {
    let (mut links, mut frames, mut messages) = (0, 0, 0);
    let cases = run_cases(
        "lossy_links_deliver_every_message_once_in_order",
        1500,
        |rng| {
            let ops = 20 + rng.below(300) as usize;
            let mut sim = simulate(rng, ops, false);
            sim.drain();
            links += sim.links;
            frames += sim.frames;
            messages += sim.edge.messages() + sim.cloud.messages();
        },
    );
    eprintln!("{links} links, {frames} frames, {messages} messages");
    assert!(frames > 0 && messages > 0, "the cases carried traffic");
    assert!(
        cases < 50 || links > 2 * cases,
        "links were cut and made again: {links} links in {cases} cases"
    );
}

#[test]
fn forged_and_garbled_frames_never_break_a_session() {
    let mut forged = 0;
    let cases = run_cases(
        "forged_and_garbled_frames_never_break_a_session",
        1500,
        |rng| {
            let ops = 20 + rng.below(300) as usize;
            let sim = simulate(rng, ops, true);
            forged += u64::from(sim.forged);
        },
    );
    assert!(
        cases < 50 || forged > cases / 2,
        "frames were forged in {forged} of {cases} cases"
    );
}

/// Inputs with which the `session` fuzz target once failed, replayed through the same
/// simulation.
#[test]
fn fuzzer_finds_stay_fixed() {
    // A forged WELCOME whose up_seq is u64::MAX: the edge overflowed computing where to resume.
    sim::run_bytes(&[
        0x7f, 0x00, 0x45, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x87, 0x45, 0x18, 0xe7, 0xe7, 0x3c,
        0x10, 0x2e, 0x87, 0xe7, 0x00, 0x00, 0x00, 0x00, 0x7d, 0x52, 0x52, 0x1a, 0x21, 0x34, 0x2b,
    ]);
}

/// One hub as its link sees it: the real durable outgoing queue and receive state on disk, the
/// local applications, and what one subscribed application received.
struct Hub {
    stores: LaneStores,
    local: Arc<Local>,
    app: AppReceiver,
    prefix: Option<String>,
    /// Ids of the messages its applications published, in order (an id may repeat: ids are the
    /// applications' choice, and a repeated id is still a message of its own).
    published: Vec<String>,
    /// Ids its subscribed application received, in order.
    received: Vec<String>,
}

impl Hub {
    fn open(dir: &Path, name: &str, prefix: Option<&str>) -> Hub {
        let config = QueueConfig {
            dir: dir.join(name),
            max_messages: 100_000,
            max_bytes: 1 << 30,
            fsync: Fsync::Never,
            window: 16,
        };
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        let (tx, app) = app_channel("test", 1 << 20, 1 << 30);
        local.subscribe(Filter::default(), tx);
        Hub {
            stores: LaneStores::open(&config.dir, &config).expect("queues"),
            local,
            app,
            prefix: prefix.map(str::to_owned),
            published: Vec::new(),
            received: Vec::new(),
        }
    }

    fn exchange(&self) -> Exchange {
        smol::block_on(Exchange::open(
            &self.stores,
            self.local.clone(),
            self.prefix.clone(),
        ))
    }

    /// Publishes one to six messages; one in eight repeats the id of an earlier one, one in
    /// four is urgent (its id then starts with `u:`), one in sixteen is longer than a CHUNK.
    fn publish(&mut self, rng: &mut Rng, tag: &str) {
        for _ in 0..1 + rng.below(6) {
            let urgent = rng.below(4) == 0;
            let mut id = if !self.published.is_empty() && rng.below(8) == 0 {
                let earlier = &self.published[rng.below(self.published.len() as u64) as usize];
                earlier.trim_start_matches("u:").to_owned()
            } else {
                format!("{tag}-{}", self.published.len())
            };
            if urgent {
                id = format!("u:{id}");
            }
            let content = if rng.below(16) == 0 {
                format!("\"{}\"", "x".repeat(CHUNK + 10)).into_bytes()
            } else {
                b"1".to_vec()
            };
            let msg = Message {
                id: id.clone(),
                urgent,
                resource: "r".into(),
                content,
                ..Message::default()
            };
            let queue = self.stores.queue_for(&msg);
            smol::block_on(queue.append(vec![msg.encode().expect("encodes")])).expect("appended");
            self.published.push(id);
        }
    }

    /// The ids published (or received) on `lane`, in order.
    fn of_lane(ids: &[String], lane: Lane) -> Vec<&String> {
        ids.iter()
            .filter(|id| id.starts_with("u:") == (lane == Lane::Urgent))
            .collect()
    }

    fn take_received(&mut self) {
        while let Some(out) = self.app.try_recv() {
            let msg = Message::from_json(&out.into_json()).expect("a message's JSON");
            self.received.push(msg.id);
        }
    }
}

struct ExchangeLink {
    edge: (Session, Exchange),
    cloud: (Session, Exchange),
    /// Encoded frames in flight: edge to cloud, cloud to edge.
    pipes: [VecDeque<Vec<u8>>; 2],
}

impl ExchangeLink {
    fn connect(now: Instant, edge: &Hub, cloud: &Hub) -> ExchangeLink {
        let ex = edge.exchange();
        let lanes = ex.streams().map(HelloLane::from);
        let hello = Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat: Duration::from_secs(1),
            read_deadline: Duration::from_secs(5),
            window: 16,
            lanes,
        };
        ExchangeLink {
            edge: (Session::edge(now, hello), ex),
            cloud: (
                Session::cloud(now, Duration::from_secs(5), 16),
                cloud.exchange(),
            ),
            pipes: Default::default(),
        }
    }

    /// Runs both hubs' side of the link as their drivers do: session events through the exchange,
    /// the window topped up from the queue, output into the pipes. Returns whether the link is
    /// still up.
    fn pump(&mut self, now: Instant) -> bool {
        loop {
            let mut progressed = false;
            for (who, (s, ex)) in [&mut self.edge, &mut self.cloud].into_iter().enumerate() {
                while let Some(ev) = s.poll_event() {
                    progressed = true;
                    if let Some(Event::Hello(_)) = ex.handle(s, ev) {
                        s.accept(now, ex.streams());
                    }
                }
                ex.fill(s, |_| usize::MAX);
                while let Some(f) = s.poll_transmit(now) {
                    progressed = true;
                    self.pipes[who].push_back(f.encode());
                }
            }
            if !progressed {
                break;
            }
        }
        !self.edge.0.is_closed() && !self.cloud.0.is_closed()
    }

    fn deliver(&mut self, now: Instant, from: usize, n: usize) {
        for _ in 0..n {
            let Some(bytes) = self.pipes[from].pop_front() else {
                return;
            };
            let to = if from == 0 {
                &mut self.cloud.0
            } else {
                &mut self.edge.0
            };
            to.handle_bytes(now, &bytes);
        }
    }

    /// The link ends: both hubs record what they delivered.
    fn finish(mut self) {
        self.edge.1.finish();
        self.cloud.1.finish();
    }
}

#[test]
fn exchanges_over_a_lossy_link_deliver_each_message_once_in_order() {
    run_cases(
        "exchanges_over_a_lossy_link_deliver_each_message_once_in_order",
        40,
        |rng| {
            let tmp = tempfile::tempdir().expect("temporary folder");
            let mut edge = Hub::open(tmp.path(), "edge", None);
            let mut cloud = Hub::open(tmp.path(), "cloud", Some("node/n/"));
            let mut now = Instant::now();
            let mut link: Option<ExchangeLink> = None;
            let check = |edge: &mut Hub, cloud: &mut Hub| {
                edge.take_received();
                cloud.take_received();
                for (rx, tx) in [(&*cloud, &*edge), (&*edge, &*cloud)] {
                    // Every message once, in order on its lane: ids that repeat included, as the
                    // hubs tell messages apart by sequence number, not by the id an application
                    // chose.
                    for lane in Lane::ALL {
                        let (published, received) = (
                            Hub::of_lane(&tx.published, lane),
                            Hub::of_lane(&rx.received, lane),
                        );
                        assert!(
                            published.starts_with(&received),
                            "received {received:?}, published {published:?} on the {lane} lane"
                        );
                    }
                }
            };
            for _ in 0..50 + rng.below(250) {
                let l = link.get_or_insert_with(|| ExchangeLink::connect(now, &edge, &cloud));
                match rng.below(12) {
                    0..=4 => l.deliver(now, rng.below(2) as usize, 1 + rng.below(6) as usize),
                    5 => edge.publish(rng, "up"),
                    6 => cloud.publish(rng, "down"),
                    7 => {
                        l.pipes[rng.below(2) as usize].pop_front();
                    }
                    8 => {
                        let p = &mut l.pipes[rng.below(2) as usize];
                        if let Some(f) = p.front().cloned() {
                            p.push_front(f);
                        }
                    }
                    9 => {
                        let p = &mut l.pipes[rng.below(2) as usize];
                        if p.len() >= 2 {
                            p.swap(0, 1);
                        }
                    }
                    10 => {
                        now += Duration::from_millis(rng.below(3000));
                        l.edge.0.handle_timeout(now);
                        l.cloud.0.handle_timeout(now);
                    }
                    _ => {
                        if rng.below(3) == 0 {
                            link.take().expect("connected").finish();
                        }
                    }
                }
                if let Some(mut l) = link.take() {
                    if l.pump(now) {
                        link = Some(l);
                    } else {
                        l.finish();
                    }
                }
                check(&mut edge, &mut cloud);
            }

            // A faithful link from here on: everything arrives, once.
            if let Some(l) = link.take() {
                l.finish();
            }
            let mut l = ExchangeLink::connect(now, &edge, &cloud);
            for round in 0.. {
                now += Duration::from_millis(1);
                l.edge.0.handle_timeout(now);
                l.cloud.0.handle_timeout(now);
                assert!(l.pump(now), "the faithful link stays up");
                l.deliver(now, 0, usize::MAX);
                l.deliver(now, 1, usize::MAX);
                assert!(l.pump(now), "the faithful link stays up");
                check(&mut edge, &mut cloud);
                if edge.stores.is_empty()
                    && cloud.stores.is_empty()
                    && cloud.received.len() == edge.published.len()
                    && edge.received.len() == cloud.published.len()
                {
                    break;
                }
                assert!(round < 20_000, "the queues did not drain");
            }
            l.finish();
        },
    );
}
