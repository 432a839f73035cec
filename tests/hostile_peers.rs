//! Hostile and broken peers on a real cloud: garbage, truncated, oversized and out-of-place frames
//! over WebSocket and QUIC with valid client certificates, a QUIC stream flood, and floods of
//! stalled handshakes. Each is refused with a reason in the cloud's log while a well-behaved edge
//! keeps carrying messages both ways.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as WsMessage;
use common::apps::{block, is_hub_notice, message, publish_tracked};
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use hub::client::{self, Connection};
use hub::proto::VERSION;
use hub::proto::frame::{Frame, encode_len_prefixed};
use smol::io::AsyncWriteExt;
use smol::stream::StreamExt;

/// The cloud's keepalive-interval in these tests: the bound on a silent or stalled peer.
const KEEPALIVE: f64 = 2.0;
/// How long any one wait may take before a test fails.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The well-behaved edge and the messages it keeps carrying.

/// A cloud and one well-behaved edge (`node-1`) connected to it, with messages flowing both ways.
struct Bench {
    proto: Proto,
    tmp: tempfile::TempDir,
    pki: PathBuf,
    cloud: Cloud,
    edge: Hub,
    flow: Flow,
}

impl Bench {
    fn start(proto: Proto, spec: CloudSpec) -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let mut edge = EdgeSpec::new(proto, &pki, "node-1", cloud.port(proto)).start(tmp.path());
        let edge_apps = common::apps_url(&mut edge);
        edge.wait_for(&format!("connected to the cloud over {}", proto.name()));
        cloud.hub.wait_for("node node-1 connected");
        let flow = Flow::start(&cloud.apps, &edge_apps, "node-1");
        flow.advance("before the attacks", 3);
        Bench {
            proto,
            tmp,
            pki,
            cloud,
            edge,
            flow,
        }
    }

    fn port(&self, proto: Proto) -> u16 {
        self.cloud.port(proto)
    }

    /// Waits for the cloud's line ending the connection from `peer`, and checks it names `why`.
    fn refused(&self, peer: SocketAddr, why: &[&str]) -> String {
        let line = wait_for_peer(&self.cloud.hub, self.proto, peer);
        assert!(
            why.iter().any(|w| line.contains(w)),
            "expected one of {why:?} in: {line}"
        );
        line
    }

    /// Checks that messages flowed both ways since the last check and still do, and that the
    /// edge never lost its link.
    fn still_serving(&self, after: &str) {
        self.flow.advance(after, 2);
        assert!(
            self.edge.lines_with("link to the cloud lost").is_empty(),
            "the well-behaved edge lost its link: {:?}",
            self.edge.lines_with("lost")
        );
        assert!(
            self.cloud
                .hub
                .lines_with("node node-1 disconnected")
                .is_empty(),
            "{:?}",
            self.cloud.hub.lines_with("node node-1 disconnected")
        );
    }

    fn finish(self) -> (u64, Duration) {
        self.flow.finish()
    }
}

/// Whether `line` mentions `addr` as a whole (not as the prefix of a longer port).
fn mentions(line: &str, addr: SocketAddr) -> bool {
    let needle = addr.to_string();
    line.match_indices(&needle).any(|(i, _)| {
        !line[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// The cloud's line saying a connection from `peer` was refused or ended.
fn wait_for_peer(hub: &Hub, proto: Proto, peer: SocketAddr) -> String {
    hub.first_line(&format!("about {peer}"), WAIT, |l| {
        mentions(l, peer)
            && l.contains(proto.name())
            && (l.contains("refused ") || l.contains("disconnected"))
    })
}

/// The first log line of `hub` containing `needle`, waiting for it if there is none yet.
fn logged(hub: &Hub, needle: &str) -> String {
    hub.first_line(&format!("with {needle:?}"), WAIT, |l| l.contains(needle))
}

/// Connects to the application endpoint at `url` subscribed to `prefix`, once the subscription is
/// in place.
async fn subscribe(url: &str, prefix: &str) -> Connection {
    let mut ws = client::connect(url, &format!("/?resource={prefix}"))
        .await
        .unwrap();
    // The hub reads what an application sends only after registering its subscription.
    ws.send(WsMessage::text("not a message")).await.unwrap();
    match client::next(&mut ws).await {
        Some(Ok(m)) if is_hub_notice(&m) && m.operation == "error" => {}
        other => panic!("expected the hub's error notice first, got {other:?}"),
    }
    ws
}

/// The next non-notice message's number on `ws`.
async fn next_number(ws: &mut Connection) -> Result<u64, String> {
    loop {
        match client::next(ws).await {
            Some(Ok(m)) if is_hub_notice(&m) => {}
            Some(Ok(m)) => {
                return std::str::from_utf8(&m.content)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("not a number: {}", m.to_json()));
            }
            other => return Err(format!("subscription ended: {other:?}")),
        }
    }
}

/// Messages published continuously both ways (edge application to cloud application and back)
/// by a background thread; each must arrive, in order, before the next goes out.
struct Flow {
    delivered: Arc<AtomicU64>,
    worst: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Flow {
    fn start(cloud_apps: &str, edge_apps: &str, node: &str) -> Flow {
        let delivered = Arc::new(AtomicU64::new(0));
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let stop = Arc::new(AtomicBool::new(false));
        let (cloud_apps, edge_apps, node) =
            (cloud_apps.to_owned(), edge_apps.to_owned(), node.to_owned());
        let (d, w, s) = (delivered.clone(), worst.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            smol::block_on(async {
                let mut at_cloud = subscribe(&cloud_apps, &format!("node/{node}/up")).await;
                let mut at_edge = subscribe(&edge_apps, "down").await;
                let mut cloud_pub = client::connect(&cloud_apps, "/").await?;
                let mut edge_pub = client::connect(&edge_apps, "/").await?;
                let mut n = 0;
                while !s.load(Ordering::SeqCst) {
                    let round = Instant::now();
                    let step = async {
                        client::publish(&mut edge_pub, &message("up", &n.to_string()))
                            .await
                            .map_err(|e| format!("publishing {n} at the edge: {e}"))?;
                        let down = message(&format!("node/{node}/down"), &n.to_string());
                        client::publish(&mut cloud_pub, &down)
                            .await
                            .map_err(|e| format!("publishing {n} at the cloud: {e}"))?;
                        for (side, ws) in [("cloud", &mut at_cloud), ("edge", &mut at_edge)] {
                            let got = next_number(ws)
                                .await
                                .map_err(|e| format!("receiving {n} at the {side}: {e}"))?;
                            if got != n {
                                return Err(format!("the {side} app got {got}, expected {n}"));
                            }
                        }
                        Ok::<_, String>(())
                    };
                    match hub::transport::timeout(Duration::from_secs(10), step).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Err(format!("message {n} stalled for 10s")),
                    }
                    let took = round.elapsed();
                    {
                        let mut worst = w.lock().unwrap();
                        *worst = (*worst).max(took);
                    }
                    n += 1;
                    d.store(n, Ordering::SeqCst);
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Ok(())
            })
        });
        Flow {
            delivered,
            worst,
            stop,
            thread,
        }
    }

    /// Waits until `n` more messages went each way.
    fn advance(&self, what: &str, n: u64) {
        let target = self.delivered.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + WAIT;
        while self.delivered.load(Ordering::SeqCst) < target {
            assert!(
                !self.thread.is_finished(),
                "{what}: the message flow stopped"
            );
            assert!(
                Instant::now() < deadline,
                "{what}: messages stopped flowing"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the flow; returns how many messages went each way and the slowest round trip.
    fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("message flow: {e}"));
        (
            self.delivered.load(Ordering::SeqCst),
            *self.worst.lock().unwrap(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Raw peers with valid certificates.

fn hello(node: &str, version: u8) -> Frame {
    common::raw_hello("proj", node, version)
}

/// A MESSAGE frame of the urgent lane with sequence number 1 (it travels on the control stream).
fn message_frame() -> Frame {
    Frame::Message {
        lane: hub::proto::frame::Lane::Urgent,
        seq: 1,
        payload: message("up", "0").encode().unwrap(),
    }
}

/// `n` bytes from a fixed xorshift sequence.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn node_creds(pki: &Path, node: &str) -> hub::tls::Credentials {
    let (crt, key) = hub::pki::node_files(node);
    hub::tls::Credentials::load(&pki.join(crt), &pki.join(key)).unwrap()
}

type RawWs = async_tungstenite::WebSocketStream<hub::transport::ws::ClientStream>;

/// A WebSocket upgraded at `/proj/edge-node/events` with `edge-node`'s certificate; its local
/// address.
async fn ws_peer(port: u16, pki: &Path) -> (RawWs, SocketAddr) {
    let tls = hub::tls::client_config(
        &pki.join("ca.crt"),
        &node_creds(pki, "edge-node"),
        b"http/1.1",
        false,
    )
    .unwrap();
    let ep = hub::config::Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let (ws, _) = hub::transport::ws::connect(
        &ep,
        "/proj/edge-node/events",
        Arc::new(tls),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let local = ws.get_ref().get_ref().0.get_ref().local_addr().unwrap();
    (ws, local)
}

/// A TLS connection with `edge-node`'s certificate, before any HTTP; its local address.
async fn tls_peer(port: u16, pki: &Path) -> (hub::transport::ws::ClientStream, SocketAddr) {
    let tls = hub::tls::client_config(
        &pki.join("ca.crt"),
        &node_creds(pki, "edge-node"),
        b"http/1.1",
        false,
    )
    .unwrap();
    let tcp = smol::Async::<std::net::TcpStream>::connect(([127, 0, 0, 1], port))
        .await
        .unwrap();
    let local = tcp.get_ref().local_addr().unwrap();
    let stream = futures_rustls::TlsConnector::from(Arc::new(tls))
        .connect(hub::transport::ws::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    (stream, local)
}

/// How a raw WebSocket ended, as its peer saw it: the close code, or the error.
async fn ws_end(ws: &mut RawWs) -> String {
    let end = hub::transport::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    return format!("close {} {}", u16::from(f.code), f.reason);
                }
                Some(Ok(WsMessage::Close(None))) => return "close without a code".into(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("error {e}"),
                None => return "ended".into(),
            }
        }
    })
    .await;
    end.unwrap_or_else(|| panic!("the cloud kept a hostile WebSocket open for {WAIT:?}"))
}

/// A raw QUIC peer with `edge-node`'s certificate.
struct QuicPeer {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    _recv: quinn::RecvStream,
    /// The address the cloud sees.
    addr: SocketAddr,
}

/// Connects over QUIC and sends `first` on the control stream.
async fn quic_peer(port: u16, pki: &Path, first: &[u8]) -> QuicPeer {
    let tls = hub::tls::client_config(
        &pki.join("ca.crt"),
        &node_creds(pki, "edge-node"),
        hub::proto::ALPN,
        false,
    )
    .unwrap();
    let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
    let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], endpoint.local_addr().unwrap().port()));
    let cloud = SocketAddr::from(([127, 0, 0, 1], port));
    let (conn, send, recv, _) =
        hub::transport::quic::connect(&endpoint, config, cloud, "127.0.0.1", first)
            .await
            .unwrap();
    QuicPeer {
        _endpoint: endpoint,
        conn,
        send,
        _recv: recv,
        addr,
    }
}

/// How a raw QUIC connection ended: the application close code and reason, or the error.
async fn quic_end(conn: &quinn::Connection) -> String {
    let end = hub::transport::timeout(WAIT, conn.closed())
        .await
        .unwrap_or_else(|| panic!("the cloud kept a hostile QUIC connection open for {WAIT:?}"));
    match end {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "close {} {}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        other => format!("error {other}"),
    }
}

fn len_prefixed(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_len_prefixed(frame, &mut out);
    out
}

/// A masked client WebSocket frame header for a binary message of `len` bytes (mask key zero, so
/// the payload goes as it is).
fn ws_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xffff => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

// ---------------------------------------------------------------------------------------------
// Frame-level attacks.

#[test]
fn hostile_websocket_peers_are_refused_while_an_edge_keeps_flowing() {
    let mut bench = Bench::start(
        Proto::Websocket,
        CloudSpec {
            keepalive: KEEPALIVE,
            ..CloudSpec::default()
        },
    );
    let (port, pki) = (bench.port(Proto::Websocket), bench.pki.clone());
    let protocol_error = "close 4005 protocol error";

    // Random binary WebSocket messages instead of frames.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", ws.send(WsMessage::binary(garbage(7, 300)))).unwrap();
    let line = bench.refused(peer, &["protocol error: unknown frame type"]);
    assert!(line.contains("refused websocket connection") && line.contains("node edge-node"));
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("random binary messages");

    // Random bytes on the TLS stream after the upgrade: not even WebSocket framing.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", async {
        let s = ws.get_mut();
        s.write_all(&garbage(11, 4096)).await.unwrap();
        s.flush().await.unwrap();
    });
    bench.refused(
        peer,
        &["WebSocket protocol error: Encountered invalid opcode"],
    );
    bench.still_serving("random bytes after the upgrade");

    // Random bytes instead of the HTTP upgrade request.
    let (mut tls, peer) = block("connect", tls_peer(port, &pki));
    block("send", async {
        tls.write_all(&garbage(13, 2048)).await.unwrap();
        tls.flush().await.unwrap();
    });
    bench.refused(
        peer,
        &["WebSocket upgrade: WebSocket protocol error: httparse error"],
    );
    drop(tls);
    bench.still_serving("random bytes instead of the upgrade");

    // A truncated frame (HELLO cut short) in a whole WebSocket message.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    let cut = hello("edge-node", VERSION).encode()[..9].to_vec();
    block("send", ws.send(WsMessage::binary(cut))).unwrap();
    bench.refused(peer, &["protocol error: truncated frame"]);
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("truncated frame");

    // A WebSocket frame cut short, then silence: dropped after keepalive-interval.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    let at = Instant::now();
    block("send", async {
        let s = ws.get_mut();
        s.write_all(&ws_header(100)).await.unwrap();
        s.write_all(&[1; 10]).await.unwrap();
        s.flush().await.unwrap();
    });
    bench.flow.advance("during a stalled half frame", 5);
    bench.refused(peer, &["heartbeat timeout: no HELLO for 2.0s"]);
    assert!(
        at.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        at.elapsed()
    );
    bench.still_serving("a half frame then silence");

    // A WebSocket frame cut short, then the connection closed.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", async {
        let s = ws.get_mut();
        s.write_all(&ws_header(100)).await.unwrap();
        s.write_all(&[1; 10]).await.unwrap();
        s.close().await.unwrap();
    });
    drop(ws);
    bench.refused(
        peer,
        &[
            "Connection reset without closing handshake",
            "connection ended",
        ],
    );
    bench.still_serving("a half frame then close");

    // A WebSocket frame announcing 2^40 bytes.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", async {
        let s = ws.get_mut();
        s.write_all(&ws_header(1 << 40)).await.unwrap();
        s.write_all(&[1; 64]).await.unwrap();
        s.flush().await.unwrap();
    });
    bench.refused(peer, &["oversized frame"]);
    bench.still_serving("oversized length");

    // A whole WebSocket message just over the frame limit (the cloud may cut it off midway).
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    let _ = block(
        "send",
        ws.send(WsMessage::binary(vec![0x10; hub::proto::MAX_FRAME + 1])),
    );
    let line = bench.refused(peer, &["oversized frame"]);
    assert!(line.contains("16777216"), "{line}");
    bench.still_serving("oversized message");

    // HELLO of the previous protocol version, as an edge not yet upgraded sends.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block(
        "send",
        ws.send(WsMessage::binary(hello("edge-node", 1).encode())),
    )
    .unwrap();
    bench.refused(
        peer,
        &["unsupported protocol version: edge speaks version 1, this cloud 2: upgrade the edge"],
    );
    assert_eq!(
        block("end", ws_end(&mut ws)),
        "close 4009 unsupported protocol version"
    );
    bench.still_serving("unknown version");

    // An unknown frame type.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", ws.send(WsMessage::binary(vec![0x7f, 1, 2, 3]))).unwrap();
    bench.refused(peer, &["protocol error: unknown frame type 0x7f"]);
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("unknown frame type");

    // HELLO naming another node than the certificate and the URL.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block(
        "send",
        ws.send(WsMessage::binary(hello("node-2", VERSION).encode())),
    )
    .unwrap();
    bench.refused(
        peer,
        &["identity mismatch: HELLO names proj/node-2 but the URL proj/edge-node"],
    );
    assert_eq!(
        block("end", ws_end(&mut ws)),
        "close 4004 identity mismatch"
    );
    assert!(
        bench
            .cloud
            .hub
            .lines_with("node node-2 connected")
            .is_empty()
    );
    bench.still_serving("HELLO for another node");

    // A MESSAGE before HELLO.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", ws.send(WsMessage::binary(message_frame().encode()))).unwrap();
    bench.refused(
        peer,
        &["protocol error: unexpected MESSAGE in state Handshake"],
    );
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("data before HELLO");

    // A second HELLO on an open link.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block(
        "send",
        ws.send(WsMessage::binary(hello("edge-node", VERSION).encode())),
    )
    .unwrap();
    bench
        .cloud
        .hub
        .wait_for("node edge-node connected over websocket");
    block(
        "send",
        ws.send(WsMessage::binary(hello("edge-node", VERSION).encode())),
    )
    .unwrap();
    let line = bench.refused(peer, &["protocol error: unexpected HELLO in state Open"]);
    assert!(line.contains("node edge-node disconnected"), "{line}");
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("a second HELLO");

    // A text message on the binary protocol.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block("send", ws.send(WsMessage::text("{\"hello\": 1}"))).unwrap();
    bench.refused(peer, &["protocol error: text message on a binary protocol"]);
    assert_eq!(block("end", ws_end(&mut ws)), protocol_error);
    bench.still_serving("a text message");

    // WebSocket pings are not hub traffic (docs/protocol.md §1.1): a peer that says HELLO and
    // then only pings is dropped after keepalive-interval like a silent one.
    let (mut ws, peer) = block("connect", ws_peer(port, &pki));
    block(
        "send",
        ws.send(WsMessage::binary(hello("edge-node", VERSION).encode())),
    )
    .unwrap();
    bench
        .cloud
        .hub
        .wait_for("node edge-node connected over websocket");
    let at = Instant::now();
    let end = block("pings until the end", async {
        loop {
            let next = hub::transport::timeout(Duration::from_millis(200), ws.next()).await;
            match next {
                None => ws.send(WsMessage::Ping(vec![1].into())).await.unwrap(),
                Some(Some(Ok(WsMessage::Close(Some(f))))) => {
                    return format!("close {} {}", u16::from(f.code), f.reason);
                }
                Some(Some(Ok(_))) => {}
                Some(other) => return format!("{other:?}"),
            }
        }
    });
    assert_eq!(end, "close 4007 heartbeat timeout");
    assert!(
        at.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        at.elapsed()
    );
    bench.refused(peer, &["heartbeat timeout: nothing received for 2."]);
    bench.still_serving("pings only");

    let (delivered, worst) = bench.finish();
    eprintln!("websocket attacks: {delivered} messages each way, slowest round {worst:?}");
}

#[test]
fn hostile_quic_peers_are_refused_while_an_edge_keeps_flowing() {
    let mut bench = Bench::start(
        Proto::Quic,
        CloudSpec {
            keepalive: KEEPALIVE,
            ..CloudSpec::default()
        },
    );
    let (port, pki) = (bench.port(Proto::Quic), bench.pki.clone());
    let protocol_error = "close 5 protocol error";

    // Random bytes on the control stream; their first four read as a length over the limit.
    let junk = garbage(5, 4096);
    let announced = u32::from_be_bytes(junk[..4].try_into().unwrap());
    assert!(announced as usize > hub::proto::MAX_FRAME, "{announced}");
    let peer = block("connect", quic_peer(port, &pki, &junk));
    bench.refused(
        peer.addr,
        &[&format!(
            "oversized frame: frame of {announced} bytes is over the 16777216-byte limit"
        )],
    );
    assert_eq!(
        block("end", quic_end(&peer.conn)),
        "close 6 oversized frame"
    );
    bench.still_serving("random bytes");

    // Random bytes behind a plausible length: a frame of an unknown type.
    let mut junk = 300u32.to_be_bytes().to_vec();
    junk.extend(garbage(7, 300));
    let peer = block("connect", quic_peer(port, &pki, &junk));
    bench.refused(peer.addr, &["protocol error: unknown frame type"]);
    assert_eq!(block("end", quic_end(&peer.conn)), protocol_error);
    bench.still_serving("random frame");

    // A length of 100 and ten bytes, then silence: dropped after keepalive-interval.
    let mut cut = 100u32.to_be_bytes().to_vec();
    cut.extend([1; 10]);
    let at = Instant::now();
    let peer = block("connect", quic_peer(port, &pki, &cut));
    bench.flow.advance("during a stalled half frame", 5);
    bench.refused(peer.addr, &["heartbeat timeout: no HELLO for 2.0s"]);
    assert!(
        at.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        at.elapsed()
    );
    assert_eq!(
        block("end", quic_end(&peer.conn)),
        "close 7 heartbeat timeout"
    );
    bench.still_serving("a half frame then silence");

    // The same, then the stream finished.
    let mut peer = block("connect", quic_peer(port, &pki, &cut));
    peer.send.finish().unwrap();
    bench.refused(peer.addr, &["connection ended"]);
    bench.still_serving("a half frame then the end of the stream");

    // A length field of 2^32 - 1.
    let peer = block("connect", quic_peer(port, &pki, &[0xff; 8]));
    bench.refused(
        peer.addr,
        &["oversized frame: frame of 4294967295 bytes is over the 16777216-byte limit"],
    );
    assert_eq!(
        block("end", quic_end(&peer.conn)),
        "close 6 oversized frame"
    );
    bench.still_serving("oversized length");

    // A length of zero.
    let peer = block("connect", quic_peer(port, &pki, &[0; 4]));
    bench.refused(peer.addr, &["protocol error: empty frame"]);
    bench.still_serving("empty frame");

    // HELLO of the previous protocol version, as an edge not yet upgraded sends.
    let peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&hello("edge-node", 1))),
    );
    bench.refused(
        peer.addr,
        &["unsupported protocol version: edge speaks version 1, this cloud 2: upgrade the edge"],
    );
    assert_eq!(
        block("end", quic_end(&peer.conn)),
        "close 9 unsupported protocol version"
    );
    bench.still_serving("unknown version");

    // An unknown frame type.
    let peer = block("connect", quic_peer(port, &pki, &[0, 0, 0, 2, 0x7f, 0]));
    bench.refused(peer.addr, &["protocol error: unknown frame type 0x7f"]);
    assert_eq!(block("end", quic_end(&peer.conn)), protocol_error);
    bench.still_serving("unknown frame type");

    // HELLO naming another node than the certificate.
    let peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&hello("node-2", VERSION))),
    );
    let line = bench.refused(peer.addr, &["identity mismatch: certificate (CN=edge-node"]);
    assert!(line.contains("is not node node-2"), "{line}");
    assert_eq!(
        block("end", quic_end(&peer.conn)),
        "close 4 identity mismatch"
    );
    assert!(
        bench
            .cloud
            .hub
            .lines_with("node node-2 connected")
            .is_empty()
    );
    bench.still_serving("HELLO for another node");

    // A MESSAGE before HELLO.
    let peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&message_frame())),
    );
    bench.refused(
        peer.addr,
        &["protocol error: unexpected MESSAGE in state Handshake"],
    );
    assert_eq!(block("end", quic_end(&peer.conn)), protocol_error);
    bench.still_serving("data before HELLO");

    // A second HELLO on an open link.
    let mut peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&hello("edge-node", VERSION))),
    );
    bench
        .cloud
        .hub
        .wait_for("node edge-node connected over quic");
    block(
        "send",
        peer.send
            .write_all(&len_prefixed(&hello("edge-node", VERSION))),
    )
    .unwrap();
    let line = bench.refused(
        peer.addr,
        &["protocol error: unexpected HELLO in state Open"],
    );
    assert!(line.contains("node edge-node disconnected"), "{line}");
    assert_eq!(block("end", quic_end(&peer.conn)), protocol_error);
    bench.still_serving("a second HELLO");

    // Another ALPN: the TLS handshake itself fails with no_application_protocol, carried as QUIC
    // transport close 0x178 (docs/protocol.md §1.2), not as a hub close code.
    let end = block("a connection with another ALPN", async {
        let tls = hub::tls::client_config(
            &pki.join("ca.crt"),
            &node_creds(&pki, "edge-node"),
            b"h3",
            false,
        )
        .unwrap();
        let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
        let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
        let cloud = SocketAddr::from(([127, 0, 0, 1], port));
        match endpoint
            .connect_with(config, cloud, "127.0.0.1")
            .unwrap()
            .await
        {
            Ok(_) => panic!("a connection with ALPN h3"),
            Err(quinn::ConnectionError::ConnectionClosed(c)) => u64::from(c.error_code),
            Err(other) => panic!("{other}"),
        }
    });
    assert_eq!(
        end, 0x178,
        "CRYPTO_ERROR with alert 120 (no_application_protocol)"
    );
    bench.still_serving("another ALPN");

    // A connection that never opens its control stream: closed after keepalive-interval with
    // code 7, as a silent link is (docs/protocol.md §3).
    let end = block("a connection without streams", async {
        let tls = hub::tls::client_config(
            &pki.join("ca.crt"),
            &node_creds(&pki, "edge-node"),
            hub::proto::ALPN,
            false,
        )
        .unwrap();
        let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
        let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
        let cloud = SocketAddr::from(([127, 0, 0, 1], port));
        let conn = endpoint
            .connect_with(config, cloud, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        quic_end(&conn).await
    });
    assert_eq!(end, "close 7 heartbeat timeout");
    logged(&bench.cloud.hub, "no control stream within 2.0s");
    bench.still_serving("no stream");

    let (delivered, worst) = bench.finish();
    eprintln!("quic attacks: {delivered} messages each way, slowest round {worst:?}");
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Total bytes written to `streams`, round robin in 256 KiB chunks, until a write stays blocked
/// (flow control) or `cap` bytes went out.
async fn pump(streams: &mut [(quinn::SendStream, quinn::RecvStream)], cap: usize) -> usize {
    let chunk = vec![0x5a; 256 * 1024];
    let mut total = 0;
    while total < cap {
        for (s, _) in streams.iter_mut() {
            match hub::transport::timeout(Duration::from_millis(300), s.write_all(&chunk)).await {
                Some(Ok(())) => total += chunk.len(),
                _ => return total,
            }
        }
    }
    total
}

#[test]
fn quic_streams_beyond_the_protocols_are_refused() {
    let mut bench = Bench::start(
        Proto::Quic,
        CloudSpec {
            keepalive: KEEPALIVE,
            max_streams: 100,
            ..CloudSpec::default()
        },
    );
    let (port, pki) = (bench.port(Proto::Quic), bench.pki.clone());
    let before = rss_kib(bench.cloud.hub.pid());

    // A second stream that is not the bulk lane's (it does not start with the lane's number).
    let peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&hello("edge-node", VERSION))),
    );
    bench
        .cloud
        .hub
        .wait_for("node edge-node connected over quic");
    let (mut streams, _) = block("open a stream", async {
        let (mut s, r) = peer.conn.open_bi().await.unwrap();
        s.write_all(b"x").await.unwrap();
        (vec![(s, r)], ())
    });
    let _ = block("flood", pump(&mut streams, 16 << 20));
    bench.refused(
        peer.addr,
        &["protocol error: a frame or stream where the protocol has none (QUIC)"],
    );
    assert_eq!(block("end", quic_end(&peer.conn)), "close 5 protocol error");
    drop(streams);

    // The bulk stream as the protocol opens it, then a third one with data on it.
    let peer = block(
        "connect",
        quic_peer(port, &pki, &len_prefixed(&hello("edge-node", VERSION))),
    );
    let (mut streams, _) = block("open streams", async {
        let (mut bulk, r) = peer.conn.open_bi().await.unwrap();
        bulk.write_all(&[hub::transport::quic::BULK_PREFACE])
            .await
            .unwrap();
        let (mut third, r3) = peer.conn.open_bi().await.unwrap();
        third.write_all(b"x").await.unwrap();
        (vec![(bulk, r), (third, r3)], ())
    });
    let written = block("flood", pump(&mut streams, 64 << 20));
    bench.refused(
        peer.addr,
        &["protocol error: a frame or stream where the protocol has none (QUIC)"],
    );
    assert_eq!(block("end", quic_end(&peer.conn)), "close 5 protocol error");
    let after = rss_kib(bench.cloud.hub.pid());
    eprintln!(
        "{} KiB taken by the cloud's flow control before it closed; cloud RSS {before} KiB -> {after} KiB",
        written / 1024
    );
    assert!(
        after < before + 24 * 1024,
        "the cloud buffers what a node sends on streams it never reads: {before} KiB -> {after} KiB after {} KiB",
        written / 1024
    );
    bench.still_serving("streams beyond the protocol's");
    drop(streams);
    let (delivered, worst) = bench.finish();
    eprintln!("quic extra streams: {delivered} messages each way, slowest round {worst:?}");
}

// ---------------------------------------------------------------------------------------------
// Floods of stalled handshakes.

/// How many descriptors process `pid` holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The first bytes of a TLS ClientHello: a record header announcing 512 bytes, then 40 of them.
fn half_client_hello() -> Vec<u8> {
    let mut b = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    b.extend(garbage(17, 29));
    b
}

/// QUIC clients kept alive (and silent) for as long as a test needs them.
struct Clients {
    _endpoint: quinn::Endpoint,
    _connecting: Vec<quinn::Connecting>,
}

/// Starts `n` real QUIC handshakes to 127.0.0.1:`port` and abandons each after its first
/// flight: a local relay forwards each connection's first Initial datagram from a UDP socket of
/// its own and never answers. Returns those sockets (the sources the cloud sees) and what keeps
/// the clients alive.
fn half_quic_handshakes(port: u16, pki: &Path, n: usize) -> (Vec<std::net::UdpSocket>, Clients) {
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let tls = hub::tls::client_config(
        &pki.join("ca.crt"),
        &node_creds(pki, "edge-node"),
        hub::proto::ALPN,
        false,
    )
    .unwrap();
    let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
    let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
    let mut connecting: Vec<quinn::Connecting> = Vec::with_capacity(n);
    let cloud = SocketAddr::from(([127, 0, 0, 1], port));
    let mut seen = std::collections::HashSet::new();
    let mut sources = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while sources.len() < n {
        assert!(Instant::now() < deadline, "only {} Initials", sources.len());
        // A few connections ahead of the relay at a time: hundreds of Initials at once overflow
        // its socket's buffer, and the retransmissions (PTO backoff) come too slowly.
        while connecting.len() < n && connecting.len() < sources.len() + 16 {
            let c = endpoint.connect_with(config.clone(), relay_addr, "127.0.0.1");
            connecting.push(c.unwrap());
        }
        let Ok((len, _)) = relay.recv_from(&mut buf) else {
            continue;
        };
        let d = &buf[..len];
        // A long-header Initial: flags, version (4), DCID length, DCID.
        if len < 7 || d[0] & 0xb0 != 0x80 || d[5] as usize + 6 > len {
            continue;
        }
        let dcid = d[6..6 + d[5] as usize].to_vec();
        if seen.insert(dcid) {
            let source = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            source.send_to(d, cloud).unwrap();
            sources.push(source);
            // Paced, so the cloud's socket buffer does not drop them.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let clients = Clients {
        _endpoint: endpoint,
        _connecting: connecting,
    };
    (sources, clients)
}

/// What the cloud answered a QUIC source: a Retry (it kept no state), its first flight (it
/// started a handshake), or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Retry,
    Flight,
    Nothing,
}

fn answer(source: &std::net::UdpSocket) -> Answer {
    source.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut seen = Answer::Nothing;
    while let Ok((n, _)) = source.recv_from(&mut buf) {
        // Long header packet types: 0xc0 Initial, 0xe0 Handshake, 0xf0 Retry.
        match buf[..n].first().map(|b| b & 0xf0) {
            Some(0xf0) => return Answer::Retry,
            Some(0xc0 | 0xe0) => seen = Answer::Flight,
            _ => {}
        }
    }
    seen
}

/// 200 UDP sources sending one datagram each that is no QUIC Initial.
fn udp_noise(port: u16) -> Vec<std::net::UdpSocket> {
    (0..200)
        .map(|i| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut d = garbage(100 + i, 1200);
            d[0] = if i % 2 == 0 {
                0x40 | (d[0] & 0x3f)
            } else {
                0xc0 | (d[0] & 0x3f)
            };
            s.send_to(&d, ("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            s
        })
        .collect()
}

/// `n` TCP connections to 127.0.0.1:`port`: even ones say nothing, odd ones send part of a
/// ClientHello.
fn stalled_tcp(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            if i % 2 == 1 {
                let _ = s.write_all(&half_client_hello());
            }
            s
        })
        .collect()
}

/// A second well-behaved edge, `node-2` over QUIC, with its own message flow, on `bench`'s cloud.
fn quic_edge(bench: &Bench) -> (Hub, Flow) {
    let port = bench.port(Proto::Quic);
    let mut edge = EdgeSpec::new(Proto::Quic, &bench.pki, "node-2", port).start(bench.tmp.path());
    let apps = common::apps_url(&mut edge);
    edge.wait_for("connected to the cloud over quic");
    let flow = Flow::start(&bench.cloud.apps, &apps, "node-2");
    flow.advance("before the flood", 3);
    (edge, flow)
}

#[test]
fn stalled_handshakes_are_dropped_after_keepalive_while_edges_keep_flowing() {
    let bench = Bench::start(
        Proto::Websocket,
        CloudSpec {
            keepalive: KEEPALIVE,
            ..CloudSpec::default()
        },
    );
    let (tmp, pki) = (bench.tmp.path().to_owned(), bench.pki.clone());
    let (ws_port, quic_port) = (bench.port(Proto::Websocket), bench.port(Proto::Quic));
    let (quic_edge, quic_flow) = quic_edge(&bench);
    let pid = bench.cloud.hub.pid();
    let fds_before = open_fds(pid);

    let started = Instant::now();
    let stalled = stalled_tcp(ws_port, 200);
    let mut pending_fds = 0;
    while pending_fds < fds_before + 200 && started.elapsed() < Duration::from_millis(1500) {
        pending_fds = pending_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcp_took = started.elapsed();
    let noise = udp_noise(quic_port);
    let quic_started = Instant::now();
    let (half, clients) = half_quic_handshakes(quic_port, &pki, 100);
    eprintln!(
        "200 stalled TCP connections in {tcp_took:?} (cloud descriptors {fds_before} -> {pending_fds}), 100 QUIC first flights in {:?}",
        quic_started.elapsed()
    );

    // Meanwhile both edges keep carrying messages, and new nodes get in over both transports.
    bench.flow.advance("during the flood", 5);
    quic_flow.advance("during the flood", 5);
    let joining = Instant::now();
    let mut late_ws = EdgeSpec::new(Proto::Websocket, &pki, "node-3", ws_port).start(&tmp);
    let mut late_quic = EdgeSpec::new(Proto::Quic, &pki, "other-node", quic_port).start(&tmp);
    late_ws.wait_for_within(
        "connected to the cloud over websocket",
        Duration::from_secs(5),
    );
    late_quic.wait_for_within("connected to the cloud over quic", Duration::from_secs(5));
    let joined = joining.elapsed();
    assert!(
        joined < Duration::from_secs_f64(KEEPALIVE),
        "new nodes waited {joined:?} behind stalled handshakes"
    );

    // Every stalled handshake is dropped with its reason after keepalive-interval.
    let no_handshake = "no handshake within 2.0s";
    for s in &stalled {
        let peer = s.local_addr().unwrap();
        let line = wait_for_peer(&bench.cloud.hub, Proto::Websocket, peer);
        assert!(
            line.contains(&format!(
                "refused websocket connection from {peer}: {no_handshake}"
            )),
            "{line}"
        );
    }
    for s in &half {
        let peer = s.local_addr().unwrap();
        let line = wait_for_peer(&bench.cloud.hub, Proto::Quic, peer);
        assert!(
            line.contains(&format!(
                "refused quic connection from {peer}: {no_handshake}"
            )),
            "{line}"
        );
    }
    for (what, since) in [("tcp", started), ("quic", quic_started)] {
        let took = since.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "stalled {what} handshakes dropped after {took:?} for a {KEEPALIVE}s keepalive-interval"
        );
    }
    // Datagrams that are no Initial make no connection at all.
    for s in &noise {
        let peer = s.local_addr().unwrap();
        let said: Vec<String> = bench
            .cloud
            .hub
            .lines_with(&peer.to_string())
            .into_iter()
            .filter(|l| mentions(l, peer) && l.contains("quic"))
            .collect();
        assert!(said.is_empty(), "{said:?}");
    }
    // The descriptors the flood held are released.
    let fds_after = open_fds(pid);
    assert!(
        pending_fds >= fds_before + 100,
        "the flood did not reach the cloud: {fds_before} -> {pending_fds}"
    );
    assert!(
        fds_after <= fds_before + 10,
        "descriptors held after the flood: {fds_before} -> {fds_after}"
    );

    bench.still_serving("the flood");
    quic_flow.advance("after the flood", 2);
    assert!(quic_edge.lines_with("link to the cloud lost").is_empty());
    drop((stalled, noise, half, clients));
    let (quic_n, quic_worst) = quic_flow.finish();
    let (ws_n, ws_worst) = bench.finish();
    eprintln!(
        "stalled handshakes: websocket edge {ws_n} messages each way (slowest {ws_worst:?}), quic edge {quic_n} (slowest {quic_worst:?}); new nodes joined in {joined:?}"
    );
}

#[test]
fn pending_handshakes_are_capped_while_edges_keep_flowing() {
    use hub::cloud::{MAX_PENDING_HANDSHAKES, QUIC_RETRY_ABOVE};
    // Nothing stalled expires during this test: what bounds the flood is the cap alone.
    let bench = Bench::start(
        Proto::Websocket,
        CloudSpec {
            keepalive: 60.0,
            ..CloudSpec::default()
        },
    );
    let (tmp, pki) = (bench.tmp.path().to_owned(), bench.pki.clone());
    let (ws_port, quic_port) = (bench.port(Proto::Websocket), bench.port(Proto::Quic));
    let (quic_edge, quic_flow) = quic_edge(&bench);
    let pid = bench.cloud.hub.pid();
    let fds_before = open_fds(pid);

    // QUIC: more abandoned first flights than the cloud keeps state for without a Retry.
    let quic_started = Instant::now();
    let extra = 100;
    let (half, clients) = half_quic_handshakes(quic_port, &pki, QUIC_RETRY_ABOVE + extra);
    let quic_took = quic_started.elapsed();
    // A new QUIC node gets in meanwhile, through a Retry.
    let mut late_quic = EdgeSpec::new(Proto::Quic, &pki, "other-node", quic_port).start(&tmp);
    late_quic.wait_for_within("connected to the cloud over quic", Duration::from_secs(10));
    let answers: Vec<Answer> = half.iter().map(answer).collect();
    let retried = answers.iter().filter(|a| **a == Answer::Retry).count();
    let started_hs = answers.iter().filter(|a| **a == Answer::Flight).count();
    eprintln!(
        "{} QUIC first flights in {quic_took:?}: {started_hs} handshakes started, {retried} answered with a Retry",
        half.len()
    );
    assert!(
        started_hs <= QUIC_RETRY_ABOVE,
        "{started_hs} handshakes started"
    );
    assert!(retried >= extra / 2, "{answers:?}");
    let retry_line = logged(&bench.cloud.hub, "to prove its address (Retry)");
    assert!(
        retry_line.contains(&format!(
            ": {QUIC_RETRY_ABOVE} handshakes in progress (limit {MAX_PENDING_HANDSHAKES}, QUIC Retry above {QUIC_RETRY_ABOVE})"
        )),
        "{retry_line}"
    );
    bench.flow.advance("during the QUIC flood", 3);
    quic_flow.advance("during the QUIC flood", 3);

    // WebSocket: more stalled connections than the cap; those beyond it are closed at once.
    let over = 76;
    let started = Instant::now();
    let stalled = stalled_tcp(ws_port, MAX_PENDING_HANDSHAKES + over);
    let tcp_took = started.elapsed();
    let shed = logged(&bench.cloud.hub, "closed websocket connection from");
    assert!(
        shed.contains(&format!(
            "at once: {MAX_PENDING_HANDSHAKES} handshakes in progress (limit {MAX_PENDING_HANDSHAKES},"
        )),
        "{shed}"
    );
    let closed = std::sync::atomic::AtomicUsize::new(0);
    let deadline = Instant::now() + WAIT;
    let mut peak_fds = 0;
    while closed.load(Ordering::SeqCst) < over {
        assert!(
            Instant::now() < deadline,
            "only {} of {} stalled connections closed",
            closed.load(Ordering::SeqCst),
            stalled.len()
        );
        peak_fds = peak_fds.max(open_fds(pid));
        let n = stalled
            .iter()
            .filter(|s| {
                use std::io::Read;
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 16];
                match (&**s).read(&mut b) {
                    Ok(0) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    Ok(_) => false,
                }
            })
            .count();
        closed.store(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{} stalled TCP connections in {tcp_took:?}: {} closed at once; cloud descriptors {fds_before}, at most {peak_fds}",
        stalled.len(),
        closed.load(Ordering::SeqCst)
    );
    assert!(
        peak_fds <= fds_before + MAX_PENDING_HANDSHAKES + 16,
        "the cloud held {peak_fds} descriptors (from {fds_before}) for a cap of {MAX_PENDING_HANDSHAKES}"
    );
    // None of this reached the established links.
    bench.still_serving("the floods");
    quic_flow.advance("after the floods", 3);
    assert!(quic_edge.lines_with("link to the cloud lost").is_empty());
    drop((stalled, half, clients));
    let (quic_n, quic_worst) = quic_flow.finish();
    let (ws_n, ws_worst) = bench.finish();
    eprintln!(
        "capped handshakes: websocket edge {ws_n} messages each way (slowest {ws_worst:?}), quic edge {quic_n} (slowest {quic_worst:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// A peer that announces a huge window and reads nothing.

/// A HELLO of `edge-node` announcing the largest window the frame can carry.
fn greedy_hello() -> Frame {
    match hello("edge-node", VERSION) {
        Frame::Hello(h) => Frame::Hello(hub::proto::frame::Hello {
            window: u32::MAX,
            ..h
        }),
        _ => unreachable!(),
    }
}

/// The highest resident memory of `pid` (KiB) seen every 50 ms until `line` is in the cloud's log.
fn peak_rss_until(bench: &Bench, line: &str) -> u64 {
    let (pid, deadline) = (bench.cloud.hub.pid(), Instant::now() + WAIT);
    let mut peak = 0;
    while bench.cloud.hub.lines_with(line).is_empty() {
        peak = peak.max(rss_kib(pid));
        assert!(Instant::now() < deadline, "no {line:?} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

#[test]
fn a_peer_announcing_a_huge_window_is_sent_what_the_link_has_room_for() {
    // 96 MiB queued for edge-node; a peer with its certificate announces a window of 2^32 - 1
    // messages and reads nothing. The cloud reads from the queue only what the link has room for,
    // so its memory grows by the transport's buffers, not by the queue.
    let bench = Bench::start(Proto::Quic, CloudSpec::default());
    let pki = bench.pki.clone();
    let content = format!("\"{}\"", "q".repeat(48 * 1024));
    let queued: Vec<_> = (0..2048)
        .map(|_| message("node/edge-node/bulk", &content))
        .collect();
    let outcomes = block("queue for edge-node", async {
        let ws = client::connect(&bench.cloud.apps, "/").await.unwrap();
        publish_tracked(ws, &queued, |_| {}).await
    });
    assert!(outcomes.iter().all(Result::is_ok), "queued: {outcomes:?}");

    for proto in [Proto::Websocket, Proto::Quic] {
        let before = rss_kib(bench.cloud.hub.pid());
        let port = bench.port(proto);
        let ended = format!("node edge-node disconnected ({}", proto.name());
        let peak = match proto {
            Proto::Websocket => {
                let (mut ws, _) = block("connect", ws_peer(port, &pki));
                block("hello", ws.send(WsMessage::binary(greedy_hello().encode()))).unwrap();
                let peak = peak_rss_until(&bench, &ended);
                drop(ws);
                peak
            }
            Proto::Quic => {
                let peer = block(
                    "connect",
                    quic_peer(port, &pki, &len_prefixed(&greedy_hello())),
                );
                let bulk = block("open the bulk stream", async {
                    let (mut s, r) = peer.conn.open_bi().await.unwrap();
                    s.write_all(&[hub::transport::quic::BULK_PREFACE])
                        .await
                        .unwrap();
                    (s, r)
                });
                let peak = peak_rss_until(&bench, &ended);
                drop((bulk, peer));
                peak
            }
        };
        let lines = bench.cloud.hub.lines_with(&ended);
        assert_eq!(lines.len(), 1, "{lines:?}");
        // Closed for the writes it blocks, or (a peer whose kernel still takes a trickle) for
        // sending nothing.
        assert!(
            ["write timeout", "heartbeat timeout"]
                .iter()
                .any(|why| lines[0].contains(why)),
            "{}",
            lines[0]
        );
        eprintln!(
            "{}: 96 MiB queued, a window of 2^32 - 1; cloud RSS {before} KiB, at most {peak} KiB until it closed the link: {}",
            proto.name(),
            lines[0]
        );
        assert!(
            peak < before + 32 * 1024,
            "the cloud read its queue into memory for a peer that reads nothing: {before} KiB -> {peak} KiB"
        );
    }
    bench.still_serving("a peer announcing a huge window");
    bench.finish();
}
