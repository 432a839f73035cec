//! Crashes and network faults between real `hub cloud` and `hub edge` processes: either hub
//! killed with `kill -9` at random points of a stream, a link blackholed past both deadlines, and
//! a link flapping for a minute. Every accepted message must reach the application on the other
//! side exactly once and in order.
//!
//! The kill points and cut lengths come from a seed printed at the start of each test;
//! `HUB_FAULT_SEED=N` replays one.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::apps::*;
use common::{Cloud, CloudSpec, EdgeSpec, Proto, Relay, Rng};
use hub::client::{self, Connection};
use hub::message::Message;

/// Kill rounds per protocol and hub.
const ROUNDS: u64 = 5;

/// The generator for kill points and cut lengths: seeded from `HUB_FAULT_SEED`, else from the
/// clock; prints the seed for replaying.
fn rng_from_env(test: &str) -> Rng {
    let seed = std::env::var("HUB_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: HUB_FAULT_SEED={seed}");
    Rng(seed)
}

/// Messages published per kill round.
const SENT: u64 = 20_000;

/// Publishes `SENT` numbered messages (from `base`) to `resource` at `apps`, pipelined, and
/// returns once `kill_after` were accepted, with a handle giving every outcome when the
/// publisher's connection ends.
fn stream_until(
    apps: &str,
    resource: &str,
    base: u64,
    kill_after: u64,
) -> std::thread::JoinHandle<Vec<Result<(), String>>> {
    let msgs: Vec<Message> = (0..SENT)
        .map(|i| message(resource, &(base + i).to_string()))
        .collect();
    let (reached, at_kill_point) = mpsc::channel();
    let apps = apps.to_owned();
    let publisher = std::thread::spawn(move || {
        block("publish", async {
            let ws = client::connect(&apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |accepted| {
                if accepted as u64 == kill_after {
                    let _ = reached.send(());
                }
            })
            .await
        })
    });
    at_kill_point
        .recv_timeout(WAIT)
        .expect("the kill point was reached");
    publisher
}

/// The number of messages the publisher got accepted; every outcome it saw must be acceptance.
fn accepted(results: &[Result<(), String>], kill_after: u64) -> u64 {
    assert!(
        results.iter().all(Result::is_ok),
        "refusals: {:?}",
        results.iter().find(|r| r.is_err())
    );
    let accepted = results.len() as u64;
    assert!(accepted >= kill_after);
    accepted
}

/// Publishes a marker to `resource` at `apps` and returns what `sub` received before it.
fn until_marker(what: &str, apps: &str, resource: &str, sub: &mut Connection) -> Vec<Message> {
    let marker = format!("\"end of {what}\"");
    block("publish the marker", async {
        let mut ws = client::connect(apps, "/").await.unwrap();
        client::publish(&mut ws, &message(resource, &marker))
            .await
            .unwrap();
    });
    let mut got = receive_until(sub, |got| {
        got.last().is_some_and(|m| m.content == marker.as_bytes())
    });
    got.pop();
    got
}

/// Reads `sub` up to a marker published after the round and checks that what came before it are
/// numbers from `base .. base + SENT`, strictly increasing (so in order and without repeats), and
/// that every one of the `accepted` first is there.
fn check_round(
    what: &str,
    apps: &str,
    resource: &str,
    sub: &mut Connection,
    base: u64,
    accepted: u64,
) -> usize {
    let numbers: Vec<u64> = until_marker(what, apps, resource, sub)
        .iter()
        .map(|m| number(m).unwrap_or_else(|| panic!("{what}: {}", m.to_json())))
        .collect();
    for pair in numbers.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what}: {} arrived after {} ({} received, {accepted} accepted)",
            pair[1],
            pair[0],
            numbers.len()
        );
    }
    assert!(
        numbers.iter().all(|n| (base..base + SENT).contains(n)),
        "{what}: numbers from another round: {numbers:?}"
    );
    // Strictly increasing, so the first `accepted` are all there exactly when each is found.
    let lost: Vec<u64> = (base..base + accepted)
        .filter(|n| numbers.binary_search(n).is_err())
        .collect();
    assert!(
        lost.is_empty(),
        "{what}: {} accepted message(s) lost, first {:?} ({} received, {accepted} accepted)",
        lost.len(),
        &lost[..lost.len().min(10)],
        numbers.len()
    );
    eprintln!(
        "{what}: {accepted} accepted, {} delivered (any beyond those accepted were stored, but their notices died with the hub), 0 lost, 0 repeated",
        numbers.len()
    );
    numbers.len()
}

#[test]
fn killed_edge_loses_no_accepted_message() {
    let mut rng = rng_from_env("killed_edge_loses_no_accepted_message");
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        spec.state = Some(tmp.path().join("edge-outbox"));
        for round in 1..=ROUNDS {
            let base = round * 100_000;
            let kill_after = 1 + rng.below(SENT * 3 / 4 - 1);
            let (mut edge, apps) = start_edge(&spec, tmp.path());
            edge.wait_for_within("connected to the cloud", WAIT);
            let publisher = stream_until(&apps, "stream", base, kill_after);
            edge.kill9();
            let accepted = accepted(&publisher.join().unwrap(), kill_after);

            let (mut edge, apps) = start_edge(&spec, tmp.path());
            edge.wait_for_within("connected to the cloud", WAIT);
            check_round(
                &format!("{proto:?} edge killed, round {round} (after {kill_after} accepted)"),
                &apps,
                "stream",
                &mut at_cloud,
                base,
                accepted,
            );
        }
    }
}

/// Starts a cloud on the ports of `spec` (any free ones if 0).
fn restart_cloud(dir: &Path, pki: &Path, spec: &mut CloudSpec) -> Cloud {
    let cloud = common::start_cloud(dir, pki, spec);
    (spec.ws_port, spec.quic_port) = (cloud.ws_port, cloud.quic_port);
    cloud
}

#[test]
fn killed_cloud_loses_no_message_queued_for_a_node() {
    let mut rng = rng_from_env("killed_cloud_loses_no_message_queued_for_a_node");
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut spec = CloudSpec::default();
        let mut cloud = restart_cloud(tmp.path(), &pki, &mut spec);
        let (mut edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
        let mut at_edge = subscribe(&edge_apps, "stream");
        for round in 1..=ROUNDS {
            let base = round * 100_000;
            let kill_after = 1 + rng.below(SENT * 3 / 4 - 1);
            let publisher = stream_until(&cloud.apps, "node/edge-node/stream", base, kill_after);
            cloud.hub.kill9();
            let accepted = accepted(&publisher.join().unwrap(), kill_after);

            cloud = restart_cloud(tmp.path(), &pki, &mut spec);
            edge.wait_for_within("connected to the cloud", WAIT);
            check_round(
                &format!("{proto:?} cloud killed, round {round} (after {kill_after} accepted)"),
                &cloud.apps,
                "node/edge-node/stream",
                &mut at_edge,
                base,
                accepted,
            );
        }
    }
}

#[test]
fn killed_cloud_keeps_queued_messages() {
    const N: u64 = 500;
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    // node-1 will come over WebSocket, node-2 over QUIC; neither is connected yet.
    for node in ["node-1", "node-2"] {
        let resource = format!("node/{node}/cmd");
        assert_eq!(publish_numbers(&cloud.apps, &resource, N), (N, 0));
        assert_eq!(node_row(&cloud.apps, node)["queued"], N);
    }
    cloud.hub.kill9();

    let mut edges = [
        HeldEdge::start(tmp.path(), &pki, Proto::Websocket, "node-1", cloud.ws_port),
        HeldEdge::start(tmp.path(), &pki, Proto::Quic, "node-2", cloud.quic_port),
    ];
    let mut subs: Vec<Connection> = edges.iter().map(|e| subscribe(&e.apps, "cmd")).collect();
    let spec = CloudSpec {
        ws_port: cloud.ws_port,
        quic_port: cloud.quic_port,
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(tmp.path(), &pki, &spec);
    for node in ["node-1", "node-2"] {
        let row = node_row(&cloud.apps, node);
        assert_eq!(row["queued"], N, "after the restart: {row}");
        assert!(row["protocol"].is_null(), "not connected yet: {row}");
    }
    for (edge, sub) in edges.iter_mut().zip(&mut subs) {
        edge.release();
        let got = receive(sub, N as usize);
        assert_numbers_in_order(&got, "cmd", N);
    }
    for (node, sub) in ["node-1", "node-2"].into_iter().zip(&mut subs) {
        assert_next_is_marker(&cloud.apps, &format!("node/{node}/cmd"), sub);
    }
    for (node, proto) in [("node-1", "websocket"), ("node-2", "quic")] {
        eventually(&format!("{node}'s queue drained"), || {
            let row = node_row(&cloud.apps, node);
            row["queued"] == 0 && row["protocol"] == proto
        });
    }
}

/// Publishes numbers `0, 1, 2, …` to `resource` at `apps` in small paced batches until `stop`;
/// returns how many were accepted (all must be).
fn trickle(apps: String, resource: String, stop: Arc<AtomicBool>) -> u64 {
    const BATCH: u64 = 20;
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let lines: String = (next..next + BATCH).map(|i| format!("{i}\n")).collect();
        let (accepted, refused) = block("publish", async {
            let ws = client::connect(&apps, "/").await.unwrap();
            client::publish_lines(ws, message(&resource, "null"), smol::io::Cursor::new(lines))
                .await
                .unwrap()
        });
        assert_eq!((accepted, refused), (BATCH, 0), "{resource}");
        next += BATCH;
        std::thread::sleep(Duration::from_millis(100));
    }
    next
}

/// Reads `sub` until the marker published to `resource` at `apps` arrives and checks that the
/// messages before it are exactly `0 .. n`, in order.
fn drained_exactly(what: &str, apps: &str, resource: &str, sub: &mut Connection, n: u64) {
    let got = until_marker(what, apps, resource, sub);
    let numbers: Vec<Option<u64>> = got.iter().map(number).collect();
    let expected: Vec<Option<u64>> = (0..n).map(Some).collect();
    if numbers != expected {
        let first_bad = numbers
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(numbers.len().min(expected.len()));
        panic!(
            "{what}: {} delivered for {n} accepted; first difference at {first_bad}: {:?}",
            numbers.len(),
            &numbers[first_bad..numbers.len().min(first_bad + 5)]
        );
    }
    eprintln!("{what}: {n} accepted, {n} delivered in order, 0 lost, 0 repeated");
}

/// Edge and cloud with a relay between them that `cut`s and restores the link: first one long
/// blackhole past both deadlines (both sides must notice within them), then a minute of flapping.
/// Messages flow both ways all along and every one arrives once, in order.
fn flap(proto: Proto, seed_rng: &mut Rng) {
    const KEEPALIVE: f64 = 3.0;
    const READ_DEADLINE: f64 = 2.0;
    let mut rng = Rng(seed_rng.next());
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(
        tmp.path(),
        &pki,
        &CloudSpec {
            keepalive: KEEPALIVE,
            ..CloudSpec::default()
        },
    );
    let relay = Relay::start(proto, cloud.port(proto));
    let mut spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
    (spec.heartbeat, spec.read_deadline, spec.handshake_timeout) = (0.5, READ_DEADLINE, 1.0);
    (spec.backoff_initial, spec.backoff_max) = (0.1, 0.5);
    let (mut edge, edge_apps) = start_edge(&spec, tmp.path());
    edge.wait_for_within("connected to the cloud", WAIT);
    cloud.hub.wait_for("node edge-node connected");
    let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/up");
    let mut at_edge = subscribe(&edge_apps, "down");

    let stop = Arc::new(AtomicBool::new(false));
    let up = {
        let (apps, stop) = (edge_apps.clone(), stop.clone());
        std::thread::spawn(move || trickle(apps, "up/flap".into(), stop))
    };
    let down = {
        let (apps, stop) = (cloud.apps.clone(), stop.clone());
        std::thread::spawn(move || trickle(apps, "node/edge-node/down/flap".into(), stop))
    };

    // One long cut: each side declares the link dead within its own deadline (plus scheduling
    // slack), while both applications keep publishing into the queues.
    relay.blackhole(true);
    let cut = Instant::now();
    let lost = edge.wait_for("link to the cloud lost");
    let edge_noticed = cut.elapsed();
    let dropped = cloud.hub.wait_for("node edge-node disconnected");
    let cloud_noticed = cut.elapsed();
    assert!(lost.contains("heartbeat timeout"), "{lost}");
    assert!(dropped.contains("heartbeat timeout"), "{dropped}");
    let slack = Duration::from_millis(1500);
    assert!(
        edge_noticed < Duration::from_secs_f64(READ_DEADLINE) + slack,
        "{proto:?}: the edge noticed after {edge_noticed:?}"
    );
    assert!(
        cloud_noticed < Duration::from_secs_f64(KEEPALIVE) + slack,
        "{proto:?}: the cloud noticed after {cloud_noticed:?}"
    );
    relay.blackhole(false);
    edge.wait_for_within("connected to the cloud", WAIT);

    // A minute of flapping: cuts of 0.2 to 3 s (some past the edge's deadline, most not), each
    // followed by 0.5 to 3 s of a working link.
    let flapping = Instant::now();
    let mut cuts = 0;
    while flapping.elapsed() < Duration::from_secs(60) {
        relay.blackhole(true);
        std::thread::sleep(rng.secs(0.2, 3.0));
        relay.blackhole(false);
        cuts += 1;
        std::thread::sleep(rng.secs(0.5, 3.0));
    }
    stop.store(true, Ordering::Relaxed);
    let sent_up = up.join().unwrap();
    let sent_down = down.join().unwrap();
    let reconnects = edge.lines_with("connected to the cloud").len() - 1;
    eprintln!("{proto:?}: {cuts} cuts in a minute, {reconnects} reconnects");
    assert!(
        reconnects >= 2,
        "{proto:?}: the flapping never dropped the link ({reconnects} reconnects)"
    );

    drained_exactly(
        &format!("{proto:?} flapping, edge to cloud"),
        &edge_apps,
        "up/flap",
        &mut at_cloud,
        sent_up,
    );
    drained_exactly(
        &format!("{proto:?} flapping, cloud to edge"),
        &cloud.apps,
        "node/edge-node/down/flap",
        &mut at_edge,
        sent_down,
    );
}

#[test]
fn blackholed_and_flapping_links_lose_nothing() {
    let mut rng = rng_from_env("blackholed_and_flapping_links_lose_nothing");
    let seeds = [Rng(rng.next()), Rng(rng.next())];
    let runs: Vec<_> = BOTH
        .into_iter()
        .zip(seeds)
        .map(|(proto, mut r)| std::thread::spawn(move || flap(proto, &mut r)))
        .collect();
    for run in runs {
        if let Err(panic) = run.join() {
            std::panic::resume_unwind(panic);
        }
    }
}
