//! Messages end to end between real `hub cloud` and `hub edge` processes: order in both
//! directions, requests and their errors, no accepted message lost when either hub is killed, nodes
//! that connect late, and full queues.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as WsMessage;
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto, Relay};
use hub::client::{self, Connection};
use hub::message::Message;
use smol::stream::StreamExt;

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// How long any one wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// Runs `fut` to completion, failing the test if it takes longer than [`WAIT`].
fn block<T>(what: &str, fut: impl Future<Output = T>) -> T {
    smol::block_on(hub::transport::timeout(WAIT, fut))
        .unwrap_or_else(|| panic!("{what}: not done within {WAIT:?}"))
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A message from a test application, with an id and timestamp.
fn message(resource: &str, content: &str) -> Message {
    let mut m = Message {
        source: "test".into(),
        group: "user".into(),
        operation: "update".into(),
        resource: resource.into(),
        content: content.as_bytes().to_vec(),
        ..Message::default()
    };
    m.fill_header();
    m
}

fn is_hub_notice(m: &Message) -> bool {
    m.source == "hub" && m.group == "hub"
}

/// The content of `m` as a number (the tests' sequence numbers), or `None`.
fn number(m: &Message) -> Option<u64> {
    std::str::from_utf8(&m.content).ok()?.trim().parse().ok()
}

/// Connects to the endpoint at `url` subscribed to resources starting with `prefix`; returns
/// once the hub has the subscription in place.
fn subscribe(url: &str, prefix: &str) -> Connection {
    block("subscribe", async {
        let mut ws = client::connect(url, &format!("/?resource={prefix}"))
            .await
            .unwrap();
        // The hub reads what an application sends only after registering its subscription: the
        // error notice for this non-message proves the subscription is there.
        ws.send(WsMessage::text("not a message")).await.unwrap();
        match client::next(&mut ws).await {
            Some(Ok(m))
                if is_hub_notice(&m) && m.operation == "error" && m.parent_id.is_empty() => {}
            other => panic!("expected the hub's error notice first, got {other:?}"),
        }
        ws
    })
}

/// Reads messages (skipping the hub's notices) until `n` arrived.
fn receive(ws: &mut Connection, n: usize) -> Vec<Message> {
    receive_until(ws, |got| got.len() == n)
}

/// Reads messages (skipping the hub's notices) until `done` holds for those received.
fn receive_until(ws: &mut Connection, mut done: impl FnMut(&[Message]) -> bool) -> Vec<Message> {
    let mut got = Vec::new();
    let finished = smol::block_on(hub::transport::timeout(WAIT, async {
        while !done(&got) {
            match client::next(ws).await {
                Some(Ok(m)) if is_hub_notice(&m) => {}
                Some(Ok(m)) => got.push(m),
                other => return Err(format!("the subscription ended: {other:?}")),
            }
        }
        Ok(())
    }));
    match finished {
        Some(Ok(())) => got,
        Some(Err(e)) => panic!("{e} after {} message(s)", got.len()),
        None => panic!(
            "received {} message(s) within {WAIT:?}, not all that were expected; last: {:?}",
            got.len(),
            got.last().map(Message::to_json)
        ),
    }
}

/// Publishes `n` messages to `resource` at `url`, pipelined, with contents `0..n`; returns
/// (accepted, refused).
fn publish_numbers(url: &str, resource: &str, n: u64) -> (u64, u64) {
    block("publish", async {
        let ws = client::connect(url, "/").await.unwrap();
        let lines: String = (0..n).map(|i| format!("{i}\n")).collect();
        client::publish_lines(ws, message(resource, "null"), smol::io::Cursor::new(lines))
            .await
            .unwrap()
    })
}

/// Publishes `msgs` on `ws` without waiting between them; returns each one's outcome (its
/// notice) in order, as far as notices arrived before the connection ended. `progress` is called
/// with the number accepted so far after each acceptance.
async fn publish_tracked(
    ws: Connection,
    msgs: &[Message],
    mut progress: impl FnMut(usize),
) -> Vec<Result<(), String>> {
    let (mut tx, mut rx) = ws.split();
    let send = async move {
        for m in msgs {
            if tx.send(WsMessage::text(m.to_json())).await.is_err() {
                break;
            }
        }
        tx
    };
    let notices = async {
        let mut results = Vec::with_capacity(msgs.len());
        let mut accepted = 0;
        while results.len() < msgs.len() {
            let text = match rx.next().await {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            };
            let m = Message::from_json(&text).unwrap();
            let id = &msgs[results.len()].id;
            assert!(
                client::is_notice(&m, id),
                "expected the notice for {id}, got {text}"
            );
            if m.operation == "accepted" {
                accepted += 1;
                results.push(Ok(()));
                progress(accepted);
            } else {
                results.push(Err(client::notice_error(&m)));
            }
        }
        results
    };
    smol::future::zip(send, notices).await.1
}

/// Publishes `msg` at `url`, again while the queue is full, until it is accepted.
fn publish_when_room(url: &str, msg: &Message) {
    eventually("room in the queue", || {
        block("publish", async {
            let mut ws = client::connect(url, "/").await.unwrap();
            match client::publish(&mut ws, msg).await {
                Ok(()) => true,
                Err(e) if e.contains("queue full") => false,
                Err(e) => panic!("refused: {e}"),
            }
        })
    });
}

/// Answers the first `n` requests arriving on `ws` with their own content (`parent_msg_id` the
/// request's id, the request's resource); returns the requests once the hub accepted every
/// answer.
fn spawn_responder(mut ws: Connection, n: usize) -> std::thread::JoinHandle<Vec<Message>> {
    std::thread::spawn(move || {
        block("answer requests", async {
            let mut requests = Vec::new();
            let mut answers = Vec::new();
            let mut accepted = 0;
            while requests.len() < n || accepted < answers.len() {
                let m = client::next(&mut ws).await.expect("open").unwrap();
                if is_hub_notice(&m) {
                    assert!(
                        answers.contains(&m.parent_id) && m.operation == "accepted",
                        "{}",
                        m.to_json()
                    );
                    accepted += 1;
                    continue;
                }
                assert!(m.sync, "not a request: {}", m.to_json());
                let mut answer = Message {
                    parent_id: m.id.clone(),
                    source: "responder".into(),
                    group: m.group.clone(),
                    operation: "response".into(),
                    resource: m.resource.clone(),
                    content: m.content.clone(),
                    ..Message::default()
                };
                answer.fill_header();
                ws.send(WsMessage::text(answer.to_json())).await.unwrap();
                answers.push(answer.id);
                requests.push(m);
            }
            requests
        })
    })
}

/// A sync request to `resource` with `content`.
fn request(resource: &str, content: &str) -> Message {
    Message {
        sync: true,
        ..message(resource, content)
    }
}

/// Sends `req` from a new connection to `url`; the answer or the error.
fn ask(url: &str, req: &Message) -> Result<Message, String> {
    block("request", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        client::request(&mut ws, req, WAIT).await
    })
}

/// Starts an edge as `spec` says and returns it with its application endpoint.
fn start_edge(spec: &EdgeSpec, dir: &Path) -> (Hub, String) {
    let mut edge = spec.start(dir);
    let apps = common::apps_url(&mut edge);
    (edge, apps)
}

/// An edge whose link to the cloud is held back by a blackholed relay until
/// [`release`](HeldEdge::release), so that its applications can subscribe first.
struct HeldEdge {
    hub: Hub,
    apps: String,
    relay: Relay,
}

impl HeldEdge {
    fn start(dir: &Path, pki: &Path, proto: Proto, node: &str, cloud_port: u16) -> HeldEdge {
        let relay = Relay::start(proto, cloud_port);
        relay.blackhole(true);
        let mut spec = EdgeSpec::new(proto, pki, node, relay.port());
        spec.handshake_timeout = 2.0;
        let (hub, apps) = start_edge(&spec, dir);
        HeldEdge { hub, apps, relay }
    }

    /// Lets the link through and waits until it is up.
    fn release(&mut self) {
        self.relay.blackhole(false);
        self.hub.wait_for_within("connected to the cloud", WAIT);
    }
}

/// The cloud's `/nodes` list.
fn nodes(url: &str) -> Vec<serde_json::Value> {
    block("/nodes", async {
        let mut ws = client::connect(url, "/nodes").await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("no node list: {other:?}"),
            }
        }
    })
}

/// `node`'s row in the cloud's `/nodes` list.
fn node_row(url: &str, node: &str) -> serde_json::Value {
    nodes(url)
        .into_iter()
        .find(|r| r["node_id"] == node)
        .unwrap_or(serde_json::Value::Null)
}

/// Checks that `got` are messages to `resource` with contents `0..n`, in order.
fn assert_numbers_in_order(got: &[Message], resource: &str, n: u64) {
    assert_eq!(got.len() as u64, n);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.resource, resource, "message {i}: {}", m.to_json());
        assert_eq!(number(m), Some(i as u64), "message {i}: {}", m.to_json());
    }
}

/// Publishes a marker to `resource` at `url` and checks that it is the next message `sub` gets
/// (nothing more of what came before, no repeats).
fn assert_next_is_marker(url: &str, resource: &str, sub: &mut Connection) {
    let marker = message(resource, "\"marker\"");
    block("publish the marker", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        client::publish(&mut ws, &marker).await.unwrap();
    });
    let next = receive(sub, 1);
    assert_eq!(next[0].id, marker.id, "got {}", next[0].to_json());
}

/// Starts an edge for `edge-node` over `proto` and waits until it is connected to `cloud`.
fn start_connected_edge(dir: &Path, pki: &Path, proto: Proto, cloud: &Cloud) -> (Hub, String) {
    let spec = EdgeSpec::new(proto, pki, "edge-node", cloud.port(proto));
    let (mut edge, apps) = start_edge(&spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);
    (edge, apps)
}

#[test]
fn both_directions_keep_order() {
    const N: u64 = 10_000;
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);

        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/up");
        let mut at_edge = subscribe(&edge_apps, "down");
        let started = Instant::now();
        let up = {
            let url = edge_apps.clone();
            std::thread::spawn(move || publish_numbers(&url, "up/readings", N))
        };
        let down = {
            let url = cloud.apps.clone();
            std::thread::spawn(move || publish_numbers(&url, "node/edge-node/down/cmd", N))
        };
        let from_edge = std::thread::spawn(move || (receive(&mut at_cloud, N as usize), at_cloud));
        let from_cloud = receive(&mut at_edge, N as usize);
        let (from_edge, mut at_cloud) = from_edge.join().unwrap();
        assert_eq!(up.join().unwrap(), (N, 0), "{proto:?}: edge publishes");
        assert_eq!(down.join().unwrap(), (N, 0), "{proto:?}: cloud publishes");
        assert_numbers_in_order(&from_edge, "node/edge-node/up/readings", N);
        assert_numbers_in_order(&from_cloud, "down/cmd", N);
        // Nothing more, no repeats.
        assert_next_is_marker(&edge_apps, "up/readings", &mut at_cloud);
        assert_next_is_marker(&cloud.apps, "node/edge-node/down/cmd", &mut at_edge);
        eprintln!(
            "{proto:?}: {N} messages each way in {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn request_response_and_timeouts() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        {
            let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
            let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
            // Nobody on the cloud subscribed to what an edge application asks.
            let err = ask(&edge_apps, &request("nobody/here", "1")).unwrap_err();
            assert!(
                err.contains("no application subscribed"),
                "{proto:?}: {err}"
            );

            let mut watcher = subscribe(&cloud.apps, "node/");

            // A cloud application asks the edge's application.
            let responder = spawn_responder(subscribe(&edge_apps, "ping"), 3);
            let mut asked = Vec::new();
            for i in 0..3 {
                let req = request("node/edge-node/ping/x", &format!("{{\"n\":{i}}}"));
                let answer = ask(&cloud.apps, &req)
                    .unwrap_or_else(|e| panic!("{proto:?}: request {i} failed: {e}"));
                assert_eq!(answer.parent_id, req.id, "{}", answer.to_json());
                assert_eq!(answer.content, req.content, "{}", answer.to_json());
                assert_eq!(answer.operation, "response");
                assert_eq!(answer.resource, "node/edge-node/ping/x");
                asked.push(req);
            }
            let seen = responder.join().unwrap();
            for (req, seen) in asked.iter().zip(&seen) {
                assert_eq!(seen.id, req.id);
                assert_eq!(seen.resource, "ping/x", "without the node prefix");
                assert_eq!(seen.content, req.content);
            }
            // The answers went to the askers only: the watcher of everything from the node sees
            // the next message from the edge and nothing before it.
            let edge_pub = edge_apps.clone();
            block("publish", async move {
                let mut ws = client::connect(&edge_pub, "/").await.unwrap();
                client::publish(&mut ws, &message("marker", "\"after the answers\""))
                    .await
                    .unwrap();
            });
            let watched = receive(&mut watcher, 1);
            assert_eq!(
                watched[0].resource,
                "node/edge-node/marker",
                "the watcher got {}",
                watched[0].to_json()
            );

            // Nobody on the edge subscribed to the resource.
            let err = ask(&cloud.apps, &request("node/edge-node/nobody/here", "1")).unwrap_err();
            assert!(
                err.contains("no application subscribed"),
                "{proto:?}: {err}"
            );

            // An edge application asks a cloud application.
            let responder = spawn_responder(subscribe(&cloud.apps, "node/edge-node/ask"), 1);
            let req = request("ask/temp", "\"what temperature?\"");
            let answer = ask(&edge_apps, &req).unwrap_or_else(|e| panic!("{proto:?}: {e}"));
            assert_eq!(answer.parent_id, req.id, "{}", answer.to_json());
            assert_eq!(answer.content, req.content);
            assert_eq!(answer.resource, "ask/temp", "{}", answer.to_json());
            let seen = responder.join().unwrap();
            assert_eq!(seen[0].resource, "node/edge-node/ask/temp");
        }

        // An edge application that never answers, with a one-second request timeout.
        let spec = CloudSpec {
            apps_extra: "  request-timeout: 1\n".into(),
            state: "cloud-state-timeout".into(),
            ..CloudSpec::default()
        };
        let cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
        let mut silent = subscribe(&edge_apps, "ping");
        let req = request("node/edge-node/ping", "\"anyone?\"");
        let asked = Instant::now();
        let err = ask(&cloud.apps, &req).unwrap_err();
        let took = asked.elapsed();
        assert!(err.contains("no response within 1.0s"), "{proto:?}: {err}");
        assert!(took >= Duration::from_millis(900), "{err} after {took:?}");
        let got = receive(&mut silent, 1);
        assert!(got[0].sync && got[0].id == req.id, "{}", got[0].to_json());
    }
}

/// Streams messages into an edge and kills it once `kill_after` were accepted; after a restart
/// with the same outbox the cloud must get every accepted one, once, in order.
fn kill_edge_while_streaming(
    dir: &Path,
    spec: &EdgeSpec,
    at_cloud: &mut Connection,
    round: u64,
    kill_after: usize,
) {
    const SENT: u64 = 20_000;
    let base = round * 100_000;
    let (mut edge, apps) = start_edge(spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);

    let msgs: Vec<Message> = (0..SENT)
        .map(|i| message("stream", &(base + i).to_string()))
        .collect();
    let (reached, at_kill_point) = mpsc::channel();
    let publisher = std::thread::spawn(move || {
        block("publish", async {
            let ws = client::connect(&apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |accepted| {
                if accepted == kill_after {
                    let _ = reached.send(());
                }
            })
            .await
        })
    });
    at_kill_point
        .recv_timeout(WAIT)
        .expect("the kill point was reached");
    edge.kill9();
    let results = publisher.join().unwrap();
    assert!(
        results.iter().all(Result::is_ok),
        "refusals: {:?}",
        results.iter().find(|r| r.is_err())
    );
    let accepted = results.len() as u64;
    assert!(accepted >= kill_after as u64);

    let (mut edge, apps) = start_edge(spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);
    let marker = format!("\"end of round {round}\"");
    block("publish", async {
        let mut ws = client::connect(&apps, "/").await.unwrap();
        client::publish(&mut ws, &message("stream", &marker))
            .await
            .unwrap();
    });
    let got = receive_until(at_cloud, |got| {
        got.last().is_some_and(|m| m.content == marker.as_bytes())
    });
    let numbers: Vec<u64> = got[..got.len() - 1]
        .iter()
        .map(|m| {
            assert_eq!(m.resource, "node/edge-node/stream");
            number(m).unwrap_or_else(|| panic!("{}", m.to_json()))
        })
        .collect();
    for pair in numbers.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{:?} round {round}: {} arrived after {} ({} received, {accepted} accepted)",
            spec.proto,
            pair[1],
            pair[0],
            numbers.len()
        );
    }
    assert!(
        numbers.iter().all(|n| (base..base + SENT).contains(n)),
        "{numbers:?}"
    );
    eprintln!(
        "{:?} round {round}: killed the edge after {accepted} accepted; {} arrived",
        spec.proto,
        numbers.len()
    );
    // Strictly increasing, so the first `accepted` are all of them exactly when each is there.
    let lost: Vec<u64> = (base..base + accepted)
        .filter(|n| numbers.binary_search(n).is_err())
        .collect();
    assert!(
        lost.is_empty(),
        "{:?} round {round}: {} accepted message(s) lost, first {:?} ({} received, {accepted} accepted)",
        spec.proto,
        lost.len(),
        &lost[..lost.len().min(10)],
        numbers.len()
    );
}

#[test]
fn killed_edge_loses_no_accepted_message() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        spec.state = Some(tmp.path().join("edge-outbox"));
        for (round, kill_after) in [(1, 2_000), (2, 300), (3, 9_000)] {
            kill_edge_while_streaming(tmp.path(), &spec, &mut at_cloud, round, kill_after);
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

#[test]
fn offline_node_gets_messages_when_it_connects() {
    const N: u64 = 20;
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    for (proto, node) in [(Proto::Websocket, "node-1"), (Proto::Quic, "node-2")] {
        assert!(
            node_row(&cloud.apps, node).is_null(),
            "{node} never connected"
        );
        let resource = format!("node/{node}/config/x");
        assert_eq!(publish_numbers(&cloud.apps, &resource, N), (N, 0));
        let mut edge = HeldEdge::start(tmp.path(), &pki, proto, node, cloud.port(proto));
        let mut sub = subscribe(&edge.apps, "config/");
        edge.release();
        let got = receive(&mut sub, N as usize);
        assert_numbers_in_order(&got, "config/x", N);
    }
}

#[test]
fn full_outbox_refuses_and_keeps_what_it_accepted() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let spec = CloudSpec {
            queues_extra: "  max-messages: 20\n".into(),
            ..CloudSpec::default()
        };
        let cloud = common::start_cloud(tmp.path(), &pki, &spec);

        // The edge's outbox: 50 at most, and nothing drains while the link is blackholed.
        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
        let relay = Relay::start(proto, cloud.port(proto));
        relay.blackhole(true);
        let mut edge_spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
        edge_spec.outbox_extra = "  max-messages: 50\n".into();
        edge_spec.state = Some(tmp.path().join("edge-outbox"));
        let (mut edge, apps) = start_edge(&edge_spec, tmp.path());
        let msgs: Vec<Message> = (0..60).map(|i| message("full", &i.to_string())).collect();
        let results = block("publish", async {
            let ws = client::connect(&apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |_| {}).await
        });
        assert_eq!(results.len(), 60);
        assert!(results[..50].iter().all(Result::is_ok), "{results:?}");
        for r in &results[50..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("queue full"), "{proto:?}: {e}");
        }
        edge.kill9();
        drop(relay);

        // Restarted with the same outbox and a working link: the 50 arrive, and only they.
        edge_spec.port = cloud.port(proto);
        let (_edge, apps) = start_edge(&edge_spec, tmp.path());
        let got = receive(&mut at_cloud, 50);
        assert_numbers_in_order(&got, "node/edge-node/full", 50);
        publish_when_room(&apps, &message("full", "\"room again\""));
        let next = receive(&mut at_cloud, 1);
        assert_eq!(next[0].content, b"\"room again\"", "{}", next[0].to_json());

        // The cloud's queue for an offline node: 20 at most.
        let msgs: Vec<Message> = (0..25)
            .map(|i| message("node/node-1/full", &i.to_string()))
            .collect();
        let results = block("publish", async {
            let ws = client::connect(&cloud.apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |_| {}).await
        });
        assert_eq!(results.len(), 25);
        assert!(results[..20].iter().all(Result::is_ok), "{results:?}");
        for r in &results[20..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("queue full"), "{proto:?}: {e}");
        }
        assert_eq!(node_row(&cloud.apps, "node-1")["queued"], 20);
        let mut edge = HeldEdge::start(tmp.path(), &pki, proto, "node-1", cloud.port(proto));
        let mut sub = subscribe(&edge.apps, "full");
        edge.release();
        let got = receive(&mut sub, 20);
        assert_numbers_in_order(&got, "full", 20);
        publish_when_room(&cloud.apps, &message("node/node-1/full", "\"room again\""));
        let next = receive(&mut sub, 1);
        assert_eq!(next[0].content, b"\"room again\"", "{}", next[0].to_json());
    }
}
