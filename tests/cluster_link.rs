//! Cluster mode end to end (docs/cluster.md sections 4 to 7), with real cloud instances on real
//! `nats-server`s and real edges: an application on any instance reaches a node held by another
//! and gets every node's messages; sync requests cross instances; a node's queue waits in
//! JetStream (not on an instance's disk) while the node is away; and killing the instance that
//! holds a node under traffic, or a NATS server of three, loses and repeats nothing that was
//! accepted.
#![cfg(feature = "cluster")]

mod common;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as WsMessage;
use common::apps::{
    WAIT, ask, assert_next_is_marker, assert_numbers_in_order, block, message, number,
    publish_numbers, receive, request, spawn_responder, start_edge, subscribe,
};
use common::hosts::{private_hosts_available, start_edge_with_hosts};
use common::mqtt::{Paho, mqtt_port};
use common::nats::Nats;
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use hub::client::{self, Connection};
use hub::message::Message;
use smol::stream::StreamExt;

/// A cloud instance named `name` in the cluster whose NATS servers are `nats` (YAML: one URL,
/// or an indented list), its link listeners on `address` and the given ports (0: any free one).
fn instance(
    dir: &Path,
    pki: &Path,
    nats: &str,
    name: &str,
    address: &str,
    ports: (u16, u16),
) -> Cloud {
    let spec = CloudSpec {
        name: name.into(),
        address: address.into(),
        ws_port: ports.0,
        quic_port: ports.1,
        state: format!("state-{name}"),
        extra: format!("cluster:\n  nats: {nats}\n  instance: {name}\n"),
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(dir, pki, &spec);
    cloud
        .hub
        .wait_for(&format!("cluster: instance {name} joined"));
    cloud
}

/// Two instances, `cloud-a` and `cloud-b`, on 127.0.0.1 and one `nats-server`.
fn two_instances(dir: &Path, pki: &Path, nats: &Nats) -> (Cloud, Cloud) {
    let a = instance(dir, pki, &nats.url(), "cloud-a", "127.0.0.1", (0, 0));
    let b = instance(dir, pki, &nats.url(), "cloud-b", "127.0.0.1", (0, 0));
    (a, b)
}

/// Starts an edge for `node` over `proto` towards `cloud` and waits until the cloud holds its
/// link; returns it with its application endpoint.
fn edge_on(dir: &Path, pki: &Path, proto: Proto, node: &str, cloud: &mut Cloud) -> (Hub, String) {
    let spec = EdgeSpec::new(proto, pki, node, cloud.port(proto));
    let (mut edge, apps) = start_edge(&spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);
    cloud.hub.wait_for(&format!("node {node} connected"));
    (edge, apps)
}

/// One `nats-server`, cloud-a and cloud-b, and node-1's edge connected to cloud-a over
/// WebSocket; dropping it stops them all.
struct Pair {
    _tmp: tempfile::TempDir,
    _nats: Nats,
    _a: Cloud,
    b: Cloud,
    edge: Hub,
    edge_apps: String,
}

impl Pair {
    fn start() -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = common::link_pki(dir);
        let nats = Nats::start(dir, "n1");
        let (mut a, b) = two_instances(dir, &pki, &nats);
        let (edge, edge_apps) = edge_on(dir, &pki, Proto::Websocket, "node-1", &mut a);
        Pair {
            _tmp: tmp,
            _nats: nats,
            _a: a,
            b,
            edge,
            edge_apps,
        }
    }
}

#[test]
fn an_application_on_either_instance_reaches_a_node_held_by_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::link_pki(dir);
    let nats = Nats::start(dir, "n1");
    let (mut a, b) = two_instances(dir, &pki, &nats);
    let n = 200;
    for (proto, node) in [(Proto::Websocket, "node-1"), (Proto::Quic, "node-2")] {
        let (_edge, edge_apps) = edge_on(dir, &pki, proto, node, &mut a);

        // Down: an application on cloud-b publishes to the node held by cloud-a.
        let mut down = subscribe(&edge_apps, "down");
        let resource = format!("node/{node}/down");
        assert_eq!(publish_numbers(&b.apps, &resource, n), (n, 0), "{proto:?}");
        assert_numbers_in_order(&receive(&mut down, n as usize), "down", n);
        assert_next_is_marker(&b.apps, &resource, &mut down);

        // Up: the node's messages reach subscribed applications on both instances.
        let up = format!("node/{node}/up");
        let mut on_b = subscribe(&b.apps, &up);
        let mut on_a = subscribe(&a.apps, &up);
        assert_eq!(publish_numbers(&edge_apps, "up", n), (n, 0), "{proto:?}");
        for sub in [&mut on_b, &mut on_a] {
            assert_numbers_in_order(&receive(sub, n as usize), &up, n);
        }
        // Once each: the next message both get is a marker published after the numbers.
        let marker = message("up", "\"marker\"");
        block("publish the marker", async {
            let mut ws = client::connect(&edge_apps, "/").await.unwrap();
            client::publish(&mut ws, &marker).await.unwrap();
        });
        for sub in [&mut on_b, &mut on_a] {
            let next = receive(sub, 1);
            assert_eq!(next[0].id, marker.id, "{proto:?}: {}", next[0].to_json());
        }
    }
}

#[test]
fn messages_as_large_as_allowed_cross_the_cluster_both_ways() {
    // A message of nearly apps.max-message-bytes (1 MiB) is stored alone in a NATS message with
    // hub's headers; smaller ones around it go in batches. All arrive, in order, whole.
    let pair = Pair::start();
    let (b, edge_apps) = (&pair.b, pair.edge_apps.as_str());
    // Encoded, 8 bytes under the 1 MiB limit: beyond NATS' default max_payload once hub's
    // headers are added (the servers here allow 8 MB, as the README's does).
    let encoded = |content: &str| message("node/node-1/big", content).encode().unwrap().len();
    let probe = encoded("\"\"");
    let big = format!("\"{}\"", "x".repeat((1 << 20) - 8 - probe));
    assert_eq!(encoded(&big), (1 << 20) - 8);
    let sizes = [big.as_str(), "\"small\"", big.as_str(), "\"last\""];
    let send = |url: &str, resource: &str| {
        block("publish", async {
            let mut ws = client::connect(url, "/").await.unwrap();
            for content in sizes {
                client::publish(&mut ws, &message(resource, content))
                    .await
                    .unwrap();
            }
        })
    };
    let mut down = subscribe(edge_apps, "big");
    send(&b.apps, "node/node-1/big");
    let got = receive(&mut down, sizes.len());
    let mut on_b = subscribe(&b.apps, "node/node-1/big");
    send(edge_apps, "big");
    let got_up = receive(&mut on_b, sizes.len());
    for got in [got, got_up] {
        let contents: Vec<&[u8]> = got.iter().map(|m| &m.content[..]).collect();
        let expected: Vec<&[u8]> = sizes.iter().map(|c| c.as_bytes()).collect();
        assert!(
            contents == expected,
            "sizes {:?}",
            contents.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn mqtt_clients_on_another_instance_reach_the_node_both_ways() {
    // Paho clients on cloud-b's MQTT listener, the node held by cloud-a: a QoS 1 publication to
    // the node is acknowledged (stored by the cluster) and reaches the node's MQTT subscriber;
    // the node's publications reach the subscriber on cloud-b.
    let pair = Pair::start();
    let (b, edge) = (&pair.b, &pair.edge);
    let (cloud_mqtt, edge_mqtt) = (mqtt_port(&b.hub), mqtt_port(edge));
    let mut cloud_sub = Paho::clean("cloud-sub", cloud_mqtt, 5);
    cloud_sub.subscribe("node/node-1/sensors/#", 1);
    let mut edge_sub = Paho::clean("edge-sub", edge_mqtt, 5);
    edge_sub.subscribe("cmd/#", 1);

    let mut cloud_pub = Paho::clean("cloud-pub", cloud_mqtt, 5);
    cloud_pub.publish("node/node-1/cmd/valve", "open", 1, false);
    let m = edge_sub.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("cmd/valve", "open")
    );

    let mut edge_pub = Paho::clean("edge-pub", edge_mqtt, 3);
    edge_pub.publish("sensors/door", "closed", 1, false);
    let m = cloud_sub.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("node/node-1/sensors/door", "closed")
    );
}

#[test]
fn sync_requests_cross_instances() {
    let pair = Pair::start();
    let (b, edge_apps) = (&pair.b, pair.edge_apps.as_str());
    let responder = spawn_responder(subscribe(edge_apps, "ask"), 1);

    let req = request("node/node-1/ask", "{\"question\":42}");
    let answer = ask(&b.apps, &req).expect("the answer, on cloud-b");
    assert_eq!(answer.parent_id, req.id, "{}", answer.to_json());
    assert_eq!(answer.source, "responder");
    assert_eq!(answer.operation, "response");
    assert_eq!(answer.resource, "node/node-1/ask");
    assert_eq!(answer.content, b"{\"question\":42}");
    let asked = responder.join().unwrap();
    assert_eq!(asked[0].resource, "ask");
    assert!(asked[0].sync);
}

/// The files under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        found.push(p.clone());
        if p.is_dir() {
            found.extend(files_under(&p));
        }
    }
    found
}

#[test]
fn a_queue_waits_in_jetstream_for_its_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::link_pki(dir);
    let nats = Nats::start(dir, "n1");
    let (a, mut b) = two_instances(dir, &pki, &nats);
    // node-1 has never connected anywhere.
    let n = 100;
    assert_eq!(publish_numbers(&a.apps, "node/node-1/down", n), (n, 0));

    // It then connects to cloud-b, with an application subscribed before the link is up.
    let mut held = common::apps::HeldEdge::start(dir, &pki, Proto::Websocket, "node-1", b.ws_port);
    let mut down = subscribe(&held.apps, "down");
    held.release();
    b.hub.wait_for("node node-1 connected");
    assert_numbers_in_order(&receive(&mut down, n as usize), "down", n);
    assert_next_is_marker(&a.apps, "node/node-1/down", &mut down);

    // The queue was in JetStream only: no instance wrote one on its disk.
    for name in ["cloud-a", "cloud-b"] {
        let nodes = dir.join(format!("state-{name}")).join("nodes");
        let found = files_under(&nodes);
        assert!(found.is_empty(), "{name} wrote a node queue: {found:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic under failures: numbered messages published continuously in both directions, and
// what each side received, counted.

/// What a publisher sent, by content number.
#[derive(Debug, Default)]
struct Sent {
    sent: u64,
    accepted: Vec<u64>,
    refused: Vec<u64>,
    /// Sent, and the connection ended (or the notice did not come within `WAIT`) before its
    /// notice.
    unconfirmed: Vec<u64>,
    /// The first refusal's reason.
    first_refusal: Option<String>,
}

/// Publishes messages to `resource` at `url` with contents 0, 1, 2, … keeping at most `window`
/// waiting for their notice, until `stop` is set; then waits for the last notices.
fn spawn_publisher(url: &str, resource: &str, window: usize, stop: Arc<AtomicBool>) -> Publisher {
    let (url, resource) = (url.to_owned(), resource.to_owned());
    let progress: Arc<Progress> = Arc::default();
    let shown = progress.clone();
    let thread = std::thread::spawn(move || {
        smol::block_on(async move {
            let ws = client::connect(&url, "/").await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let mut out = Sent::default();
            let mut waiting: VecDeque<(u64, String)> = VecDeque::new();
            'run: loop {
                while waiting.len() < window && !stop.load(Ordering::SeqCst) {
                    let m = message(&resource, &out.sent.to_string());
                    if tx.send(WsMessage::text(m.to_json())).await.is_err() {
                        break 'run;
                    }
                    waiting.push_back((out.sent, m.id));
                    out.sent += 1;
                    progress.sent.fetch_add(1, Ordering::SeqCst);
                }
                if waiting.is_empty() {
                    break;
                }
                let text = match hub::transport::timeout(WAIT, rx.next()).await {
                    Some(Some(Ok(WsMessage::Text(t)))) => t,
                    Some(Some(Ok(_))) => continue,
                    _ => break,
                };
                let m = Message::from_json(&text).unwrap();
                let (n, id) = waiting.pop_front().unwrap();
                assert!(client::is_notice(&m, &id), "not the notice of {n}: {text}");
                if m.operation == "accepted" {
                    out.accepted.push(n);
                    progress.accepted.fetch_add(1, Ordering::SeqCst);
                } else {
                    progress.refused.fetch_add(1, Ordering::SeqCst);
                    out.first_refusal
                        .get_or_insert_with(|| client::notice_error(&m));
                    out.refused.push(n);
                }
            }
            out.unconfirmed = waiting.into_iter().map(|(n, _)| n).collect();
            out
        })
    });
    Publisher {
        progress: shown,
        thread,
    }
}

/// A publisher's counts so far.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A running [`spawn_publisher`].
struct Publisher {
    progress: Arc<Progress>,
    thread: JoinHandle<Sent>,
}

impl Publisher {
    /// Waits for the publisher to stop (once told to) and its last notices.
    fn join(self) -> Sent {
        self.thread.join().unwrap()
    }
}

/// The content that ends a subscriber's reading.
const END: &str = "\"end\"";

/// A subscription whose numbered messages are collected by a thread of its own until the
/// [`END`] marker arrives.
struct Collector {
    seen: Arc<Mutex<Vec<u64>>>,
    thread: JoinHandle<Result<(), String>>,
}

impl Collector {
    /// Subscribes at `url` to `prefix` (in place when this returns) and collects.
    fn start(url: &str, prefix: &str) -> Collector {
        let mut ws: Connection = subscribe(url, prefix);
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let sink = seen.clone();
        let thread = std::thread::spawn(move || {
            smol::block_on(async move {
                loop {
                    let m = match hub::transport::timeout(WAIT, client::next(&mut ws)).await {
                        None => return Err(format!("nothing within {WAIT:?}")),
                        Some(None) => return Err("the subscription ended".into()),
                        Some(Some(Err(e))) => return Err(e),
                        Some(Some(Ok(m))) => m,
                    };
                    if m.content == END.as_bytes() {
                        return Ok(());
                    }
                    if let Some(n) = number(&m) {
                        sink.lock().unwrap().push(n);
                    }
                }
            })
        });
        Collector { seen, thread }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `count` reaches `n`, fed by `from`; fails the test after [`WAIT`], with both
    /// sides' counts and what `context` says (the hubs' own figures).
    fn wait_for(&self, what: &str, n: usize, from: &Publisher, context: impl Fn() -> String) {
        let deadline = Instant::now() + WAIT;
        while self.count() < n {
            if Instant::now() >= deadline {
                panic!(
                    "{what}: {} received of {n} within {WAIT:?}; the publisher: {:?}; {}",
                    self.count(),
                    from.progress,
                    context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the end marker (or the thread's failure); every number received.
    fn finish(self) -> (Vec<u64>, Result<(), String>) {
        let ended = self.thread.join().unwrap();
        let seen = self.seen.lock().unwrap().clone();
        (seen, ended)
    }
}

/// The node's row in the list of the cloud instance at `cloud` and the edge's `/status` at
/// `edge`, for a failure's message.
fn figures(cloud: &str, edge: &str) -> String {
    let status = block("/status", async {
        let mut ws = client::connect(edge, "/status").await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => return format!("no status: {other:?}"),
            }
        }
    });
    format!(
        "the node's row at {cloud}: {}; the edge's status: {status}",
        common::apps::node_row(cloud, "node-1")
    )
}

/// Publishes the end marker to `resource` at `url`.
fn publish_end(url: &str, resource: &str) {
    block("publish the end marker", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        client::publish(&mut ws, &message(resource, END)).await
    })
    .unwrap_or_else(|e| panic!("the end marker to {resource} at {url}: {e}"));
}

/// One direction's figures.
#[derive(Debug)]
struct Tally {
    sent: u64,
    accepted: usize,
    refused: usize,
    unconfirmed: usize,
    /// Distinct messages delivered.
    delivered: usize,
    /// Deliveries of a content already delivered.
    repeated: usize,
    /// Accepted and never delivered.
    lost: usize,
    /// The first of those (at most 20).
    lost_first: Vec<u64>,
    /// First deliveries of a content lower than one delivered before it.
    out_of_order: usize,
    /// Of the unconfirmed, those delivered anyway.
    unconfirmed_delivered: usize,
    /// Of the refused, those delivered anyway.
    refused_delivered: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, accepted {}, refused {} (of which delivered {}), unconfirmed {} (of which \
             delivered {}), \
             delivered {}, repeated {}, lost {} {:?}, out of order {}",
            self.sent,
            self.accepted,
            self.refused,
            self.refused_delivered,
            self.unconfirmed,
            self.unconfirmed_delivered,
            self.delivered,
            self.repeated,
            self.lost,
            self.lost_first,
            self.out_of_order
        )
    }
}

/// Stops both directions' publishers, sends each direction's end marker (to `ends`: endpoint,
/// resource) and waits for it; each direction's tally, whether its marker arrived, and what
/// was sent. Each lane keeps its order, so once a marker arrives nothing sent before it is
/// still on its way, repeats included.
fn end_traffic(
    stop: &AtomicBool,
    directions: [(Publisher, Collector); 2],
    ends: [(&str, &str); 2],
) -> [(Tally, Result<(), String>, Sent); 2] {
    stop.store(true, Ordering::SeqCst);
    let [(down_pub, down_sub), (up_pub, up_sub)] = directions;
    let sent = [down_pub.join(), up_pub.join()];
    for (url, resource) in ends {
        publish_end(url, resource);
    }
    let [down_sent, up_sent] = sent;
    let (down_seen, down_end) = down_sub.finish();
    let (up_seen, up_end) = up_sub.finish();
    [
        (tally(&down_sent, &down_seen), down_end, down_sent),
        (tally(&up_sent, &up_seen), up_end, up_sent),
    ]
}

fn tally(sent: &Sent, seen: &[u64]) -> Tally {
    let mut distinct = HashSet::new();
    let mut repeated = 0;
    let mut out_of_order = 0;
    let mut highest: Option<u64> = None;
    for &n in seen {
        if !distinct.insert(n) {
            repeated += 1;
            continue;
        }
        if highest.is_some_and(|h| n < h) {
            out_of_order += 1;
        }
        highest = highest.max(Some(n));
    }
    let lost: Vec<u64> = sent
        .accepted
        .iter()
        .filter(|n| !distinct.contains(n))
        .copied()
        .collect();
    Tally {
        sent: sent.sent,
        accepted: sent.accepted.len(),
        refused: sent.refused.len(),
        unconfirmed: sent.unconfirmed.len(),
        delivered: distinct.len(),
        repeated,
        lost: lost.len(),
        lost_first: lost.iter().take(20).copied().collect(),
        out_of_order,
        refused_delivered: sent.refused.iter().filter(|n| distinct.contains(n)).count(),
        unconfirmed_delivered: sent
            .unconfirmed
            .iter()
            .filter(|n| distinct.contains(n))
            .count(),
    }
}

/// The headline failover: cloud-a on 127.0.0.1 and cloud-b on 127.0.0.2 (same ports), the edge
/// dialling `localhost`, which its private hosts file resolves to both. An application on the
/// instance not holding the node publishes to it continuously, the edge's application publishes
/// up continuously; the instance holding the node is killed (SIGKILL) mid-traffic, the edge
/// moves to the other, traffic goes on, and in the end every accepted message was delivered
/// once, in order, in both directions.
fn failover_under_traffic(proto: Proto) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir, "127.0.0.2") {
        eprintln!("skipped: `unshare -rm` with a bind mount is not permitted here");
        return;
    }
    let pki = common::link_pki(dir);
    let nats = Nats::start(dir, "n1");
    let a = instance(dir, &pki, &nats.url(), "cloud-a", "127.0.0.1", (0, 0));
    let ports = (a.ws_port, a.quic_port);
    let b = instance(dir, &pki, &nats.url(), "cloud-b", "127.0.0.2", ports);
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 localhost\n").unwrap();
    let port = a.port(proto);
    let spec = EdgeSpec::new(proto, &pki, "node-1", port);
    let file = spec.write(dir);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}")),
    )
    .unwrap();
    let mut edge = start_edge_with_hosts(&format!("edge {}", proto.name()), &file, &hosts);
    let edge_apps = common::apps_url(&mut edge);
    let connected = edge.wait_for_within("connected to the cloud", WAIT);
    // Whichever address answered first holds the node; the applications are on the other.
    let (mut holder, mut other, holder_name, other_address) = if connected.contains("at 127.0.0.1:")
    {
        (a, b, "cloud-a", "127.0.0.2")
    } else {
        (b, a, "cloud-b", "127.0.0.1")
    };
    holder.hub.wait_for("node node-1 connected");
    eprintln!(
        "{}: the node is on {holder_name}; the applications on the instance at {other_address}",
        proto.name(),
    );

    let down_sub = Collector::start(&edge_apps, "down");
    let up_sub = Collector::start(&other.apps, "node/node-1/up");
    let other_apps = other.apps.clone();
    let figures = || figures(&other_apps, &edge_apps);
    let stop = Arc::new(AtomicBool::new(false));
    let down_pub = spawn_publisher(&other.apps, "node/node-1/down", 8, stop.clone());
    let up_pub = spawn_publisher(&edge_apps, "up", 8, stop.clone());

    let before = 500;
    down_sub.wait_for("down traffic before the kill", before, &down_pub, figures);
    up_sub.wait_for("up traffic before the kill", before, &up_pub, figures);
    holder.hub.kill9();
    let at_kill = (down_sub.count(), up_sub.count());
    let moved = edge.wait_for_within(
        &format!("connected to the cloud over {}", proto.name()),
        WAIT,
    );
    assert!(
        moved.contains(&format!("at {other_address}:{port}")),
        "the edge moved to the other instance: {moved}"
    );
    other.hub.wait_for("node node-1 connected");
    let after = 500;
    down_sub.wait_for(
        "down traffic after the move",
        at_kill.0 + after,
        &down_pub,
        figures,
    );
    up_sub.wait_for(
        "up traffic after the move",
        at_kill.1 + after,
        &up_pub,
        figures,
    );
    let [(down, down_end, down_sent), (up, up_end, up_sent)] = end_traffic(
        &stop,
        [(down_pub, down_sub), (up_pub, up_sub)],
        [(&other.apps, "node/node-1/down"), (&edge_apps, "up")],
    );
    eprintln!(
        "failover over {}: down (cloud application to edge): {down}",
        proto.name()
    );
    eprintln!(
        "failover over {}: up (edge application to cloud): {up}",
        proto.name()
    );
    for (what, t, end, sent) in [
        ("down", &down, &down_end, &down_sent),
        ("up", &up, &up_end, &up_sent),
    ] {
        assert_eq!(end, &Ok(()), "{what}: the end marker arrived");
        assert_eq!(t.lost, 0, "{what}: {t:?}");
        assert_eq!(t.repeated, 0, "{what}: {t:?}");
        assert_eq!(t.out_of_order, 0, "{what}: {t:?}");
        assert_eq!(t.refused, 0, "{what}: {t:?} {:?}", sent.first_refusal);
    }
    drop(edge);
}

#[test]
fn killing_an_instance_under_traffic_loses_and_repeats_nothing() {
    failover_under_traffic(Proto::Websocket);
}

#[test]
fn killing_an_instance_under_quic_traffic_loses_and_repeats_nothing() {
    failover_under_traffic(Proto::Quic);
}

/// Two instances on a three-server NATS cluster, each given every server (its own first): a
/// NATS server dies while messages flow both ways between an application on cloud-b and the
/// edge's application through cloud-a; every message either side accepted is delivered. (While
/// the streams elect new leaders, publishing may be refused: those are counted apart.)
#[test]
fn a_nats_server_of_three_dying_under_traffic_loses_nothing_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::link_pki(dir);
    let mut servers = common::nats::cluster3(dir);
    let urls = |first: usize| -> String {
        let list: String = (0..3)
            .map(|i| format!("    - {}\n", servers[(first + i) % 3].url()))
            .collect();
        format!("\n{}", list.trim_end())
    };
    let mut a = instance(dir, &pki, &urls(0), "cloud-a", "127.0.0.1", (0, 0));
    let joined = a
        .hub
        .lines_with("cluster: instance cloud-a joined")
        .remove(0);
    // "(NATS server nK 2.9.10, ...": the server cloud-a is connected to.
    let k: usize = joined.split("NATS server n").nth(1).unwrap()[..1]
        .parse()
        .unwrap();
    let b = instance(dir, &pki, &urls(1), "cloud-b", "127.0.0.1", (0, 0));
    let (_edge, edge_apps) = edge_on(dir, &pki, Proto::Websocket, "node-1", &mut a);

    let down_sub = Collector::start(&edge_apps, "down");
    let up_sub = Collector::start(&b.apps, "node/node-1/up");
    let figures = || figures(&a.apps, &edge_apps);
    let stop = Arc::new(AtomicBool::new(false));
    let down_pub = spawn_publisher(&b.apps, "node/node-1/down", 4, stop.clone());
    let up_pub = spawn_publisher(&edge_apps, "up", 4, stop.clone());
    down_sub.wait_for("down traffic before the kill", 20, &down_pub, figures);
    up_sub.wait_for("up traffic before the kill", 20, &up_pub, figures);
    servers[k - 1].kill9();
    let at_kill = (down_sub.count(), up_sub.count());
    eprintln!("NATS server n{k} killed after {at_kill:?} deliveries (down, up)");
    a.hub.wait_for("cluster: NATS disconnected");
    a.hub.wait_for("cluster: NATS connected");
    down_sub.wait_for(
        "down traffic after the kill",
        at_kill.0 + 20,
        &down_pub,
        figures,
    );
    up_sub.wait_for(
        "up traffic after the kill",
        at_kill.1 + 20,
        &up_pub,
        figures,
    );
    let [(down, down_end, down_sent), (up, up_end, up_sent)] = end_traffic(
        &stop,
        [(down_pub, down_sub), (up_pub, up_sub)],
        [(&b.apps, "node/node-1/down"), (&edge_apps, "up")],
    );
    eprintln!(
        "NATS server n{k} killed: down: {down} (first refusal {:?})",
        down_sent.first_refusal
    );
    eprintln!(
        "NATS server n{k} killed: up: {up} (first refusal {:?})",
        up_sent.first_refusal
    );
    for (what, t, end) in [("down", &down, &down_end), ("up", &up, &up_end)] {
        assert_eq!(end, &Ok(()), "{what}: the end marker arrived");
        assert_eq!(t.lost, 0, "{what}: {t:?}");
    }
}
