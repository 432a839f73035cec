//! Applications of the hubs for the tests: publishing, subscribing, requests and the cloud's
//! node list, through the application endpoints with [`hub::client`].

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Cloud, EdgeSpec, Hub, Proto, Relay};
use async_tungstenite::tungstenite::Message as WsMessage;
use hub::client::{self, Connection};
use hub::message::Message;
use smol::stream::StreamExt;

pub const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// How long any one wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs `fut` to completion, failing the test if it takes longer than [`WAIT`].
pub fn block<T>(what: &str, fut: impl Future<Output = T>) -> T {
    smol::block_on(hub::transport::timeout(WAIT, fut))
        .unwrap_or_else(|| panic!("{what}: not done within {WAIT:?}"))
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A message from a test application, with an id and timestamp.
pub fn message(resource: &str, content: &str) -> Message {
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

pub fn is_hub_notice(m: &Message) -> bool {
    m.source == "hub" && m.group == "hub"
}

/// The content of `m` as a number (the tests' sequence numbers), or `None`.
pub fn number(m: &Message) -> Option<u64> {
    std::str::from_utf8(&m.content).ok()?.trim().parse().ok()
}

/// Connects to the endpoint at `url` subscribed to resources starting with `prefix`; returns
/// once the hub has the subscription in place.
pub fn subscribe(url: &str, prefix: &str) -> Connection {
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
pub fn receive(ws: &mut Connection, n: usize) -> Vec<Message> {
    receive_until(ws, |got| got.len() == n)
}

/// Reads messages (skipping the hub's notices) until `done` holds for those received.
pub fn receive_until(
    ws: &mut Connection,
    mut done: impl FnMut(&[Message]) -> bool,
) -> Vec<Message> {
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
pub fn publish_numbers(url: &str, resource: &str, n: u64) -> (u64, u64) {
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
pub async fn publish_tracked(
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
pub fn publish_when_room(url: &str, msg: &Message) {
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
pub fn spawn_responder(mut ws: Connection, n: usize) -> std::thread::JoinHandle<Vec<Message>> {
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
pub fn request(resource: &str, content: &str) -> Message {
    Message {
        sync: true,
        ..message(resource, content)
    }
}

/// Sends `req` from a new connection to `url`; the answer or the error.
pub fn ask(url: &str, req: &Message) -> Result<Message, String> {
    block("request", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        client::request(&mut ws, req, WAIT).await
    })
}

/// Starts an edge as `spec` says and returns it with its application endpoint.
pub fn start_edge(spec: &EdgeSpec, dir: &Path) -> (Hub, String) {
    let mut edge = spec.start(dir);
    let apps = super::apps_url(&mut edge);
    (edge, apps)
}

/// An edge whose link to the cloud is held back by a blackholed relay until
/// [`release`](HeldEdge::release), so that its applications can subscribe first.
pub struct HeldEdge {
    pub hub: Hub,
    pub apps: String,
    pub relay: Relay,
}

impl HeldEdge {
    pub fn start(dir: &Path, pki: &Path, proto: Proto, node: &str, cloud_port: u16) -> HeldEdge {
        let relay = Relay::start(proto, cloud_port);
        relay.blackhole(true);
        let mut spec = EdgeSpec::new(proto, pki, node, relay.port());
        spec.handshake_timeout = 2.0;
        let (hub, apps) = start_edge(&spec, dir);
        HeldEdge { hub, apps, relay }
    }

    /// Lets the link through and waits until it is up.
    pub fn release(&mut self) {
        self.relay.blackhole(false);
        self.hub.wait_for_within("connected to the cloud", WAIT);
    }
}

/// The cloud's `/nodes` list.
pub fn nodes(url: &str) -> Vec<serde_json::Value> {
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
pub fn node_row(url: &str, node: &str) -> serde_json::Value {
    nodes(url)
        .into_iter()
        .find(|r| r["node_id"] == node)
        .unwrap_or(serde_json::Value::Null)
}

/// Checks that `got` are messages to `resource` with contents `0..n`, in order.
pub fn assert_numbers_in_order(got: &[Message], resource: &str, n: u64) {
    assert_eq!(got.len() as u64, n);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.resource, resource, "message {i}: {}", m.to_json());
        assert_eq!(number(m), Some(i as u64), "message {i}: {}", m.to_json());
    }
}

/// Publishes a marker to `resource` at `url` and checks that it is the next message `sub` gets
/// (nothing more of what came before, no repeats).
pub fn assert_next_is_marker(url: &str, resource: &str, sub: &mut Connection) {
    let marker = message(resource, "\"marker\"");
    block("publish the marker", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        client::publish(&mut ws, &marker).await.unwrap();
    });
    let next = receive(sub, 1);
    assert_eq!(next[0].id, marker.id, "got {}", next[0].to_json());
}

/// Starts an edge for `edge-node` over `proto` and waits until it is connected to `cloud`.
pub fn start_connected_edge(dir: &Path, pki: &Path, proto: Proto, cloud: &Cloud) -> (Hub, String) {
    let spec = EdgeSpec::new(proto, pki, "edge-node", cloud.port(proto));
    let (mut edge, apps) = start_edge(&spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);
    (edge, apps)
}
