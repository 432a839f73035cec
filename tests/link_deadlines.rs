//! Deadlines on a real link: a silent node is dropped after keepalive-interval, a blackholed link
//! is noticed within read-deadline and comes back when the network does (over QUIC with 0-RTT),
//! and a restarted cloud sees its edges again within the backoff cap.

mod common;

use std::time::{Duration, Instant};

use common::{CloudSpec, EdgeSpec, Proto, Relay};
use hub::proto::frame::{Frame, encode_len_prefixed};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

fn hello(node: &str) -> Frame {
    common::raw_hello("proj", node, hub::proto::VERSION)
}

/// A raw node connection made with the hub's own transport code, after its HELLO.
enum Raw {
    Websocket(Box<async_tungstenite::WebSocketStream<hub::transport::ws::ClientStream>>),
    Quic(
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
}

/// Connects as `edge-node` over `proto` and says HELLO.
async fn raw_node(proto: Proto, port: u16, pki: &std::path::Path) -> Raw {
    let creds = hub::tls::Credentials::load(
        &pki.join("node-edge-node.crt"),
        &pki.join("node-edge-node.key"),
    )
    .unwrap();
    let ca = pki.join("ca.crt");
    match proto {
        Proto::Websocket => {
            let tls = hub::tls::client_config(&ca, &creds, b"http/1.1", false).unwrap();
            let ep = hub::config::Endpoint {
                host: "127.0.0.1".into(),
                port,
            };
            let (mut ws, _) = hub::transport::ws::connect(
                &ep,
                "/proj/edge-node/events",
                std::sync::Arc::new(tls),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            ws.send(async_tungstenite::tungstenite::Message::binary(
                hello("edge-node").encode(),
            ))
            .await
            .unwrap();
            Raw::Websocket(Box::new(ws))
        }
        Proto::Quic => {
            let tls = hub::tls::client_config(&ca, &creds, hub::proto::ALPN, false).unwrap();
            let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
            let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
            let mut first = Vec::new();
            encode_len_prefixed(&hello("edge-node"), &mut first);
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let (conn, send, recv, _) =
                hub::transport::quic::connect(&endpoint, config, addr, "127.0.0.1", &first)
                    .await
                    .unwrap();
            Raw::Quic(endpoint, conn, send, recv)
        }
    }
}

/// Connects as `edge-node`, says HELLO, then says nothing more (but keeps the connection open
/// and keeps reading) until `hold` has passed.
fn silent_node(proto: Proto, port: u16, pki: &std::path::Path, hold: Duration) {
    smol::block_on(async {
        let raw = raw_node(proto, port, pki).await;
        let _ = hub::transport::timeout(hold, async move {
            match raw {
                Raw::Websocket(mut ws) => {
                    use smol::stream::StreamExt;
                    while let Some(Ok(_)) = ws.next().await {}
                }
                Raw::Quic(_endpoint, _conn, _send, mut recv) => {
                    let mut buf = [0u8; 1024];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                }
            }
        })
        .await;
    });
}

#[test]
fn silent_node_is_dropped_after_keepalive_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        keepalive: 1.0,
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    for proto in BOTH {
        let port = cloud.port(proto);
        let p = pki.clone();
        let client =
            std::thread::spawn(move || silent_node(proto, port, &p, Duration::from_secs(10)));
        let connected = cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
        let at = Instant::now();
        let dropped = cloud.hub.wait_for("node edge-node disconnected");
        let took = at.elapsed();
        assert!(
            dropped.ends_with("heartbeat timeout: nothing received for 1.0s"),
            "{dropped}"
        );
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(3),
            "dropped after {took:?} ({connected})"
        );
        client.join().unwrap();
    }
}

#[test]
fn blackholed_link_is_noticed_within_read_deadline_and_restored() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(
            tmp.path(),
            &pki,
            &CloudSpec {
                keepalive: 2.0,
                ..CloudSpec::default()
            },
        );
        let relay = Relay::start(proto, cloud.port(proto));
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
        (spec.heartbeat, spec.read_deadline, spec.handshake_timeout) = (0.5, 1.5, 1.0);
        let mut edge = spec.start(tmp.path());
        let first = edge.wait_for("connected to the cloud");
        if proto == Proto::Quic {
            assert!(
                first.contains("(1-RTT, "),
                "a first connection has nothing to resume: {first}"
            );
        }

        relay.blackhole(true);
        let cut = Instant::now();
        let lost = edge.wait_for("link to the cloud lost");
        let noticed = cut.elapsed();
        assert!(
            lost.contains("heartbeat timeout: nothing received for 1.5s"),
            "{lost}"
        );
        assert!(
            noticed < Duration::from_millis(2500),
            "the edge took {noticed:?} for a 1.5s read-deadline"
        );
        let dropped = cloud.hub.wait_for("node edge-node disconnected");
        assert!(dropped.contains("heartbeat timeout"), "{dropped}");
        // While the network is gone, attempts fail on handshake-timeout and are retried.
        let failed = edge.wait_for("cannot connect to the cloud");
        assert!(failed.contains("handshake-timeout"), "{failed}");

        relay.blackhole(false);
        let back = edge.wait_for("connected to the cloud");
        if proto == Proto::Quic {
            // Every attempt made during the outage took one of the session tickets the cloud
            // handed out (a ticket is used once), so after a long outage the reconnect may be a
            // full handshake (one more round trip).
            assert!(
                back.contains("(0-RTT") || back.contains("(1-RTT"),
                "a reconnect to the same cloud: {back}"
            );
        }
        cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
    }
}

#[test]
fn edge_comes_back_after_a_cloud_restart_within_the_backoff_cap() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        (spec.read_deadline, spec.backoff_max) = (1.0, 1.0);
        let mut edge = spec.start(tmp.path());
        edge.wait_for("connected to the cloud");
        let (ws_port, quic_port) = (cloud.ws_port, cloud.quic_port);
        cloud.hub.kill9();
        edge.wait_for("link to the cloud lost");
        // The edge keeps trying (and failing) while the cloud is down: after the backoff when
        // refused (TCP), at once when nothing comes back (QUIC).
        edge.wait_for("reconnecting ");

        let spec = CloudSpec {
            ws_port,
            quic_port,
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let up = Instant::now();
        let back = edge.wait_for("connected to the cloud");
        let took = up.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{took:?} for a 1s backoff cap"
        );
        if proto == Proto::Quic {
            assert!(
                back.contains("(0-RTT refused, 1-RTT, "),
                "a restarted cloud has no session to resume: {back}"
            );
        }
        cloud.hub.wait_for("node edge-node connected");
    }
}

/// Connects as `edge-node`, says HELLO, then never reads again until told to stop.
fn stalled_reader(
    proto: Proto,
    port: u16,
    pki: &std::path::Path,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let _held = smol::block_on(raw_node(proto, port, pki));
    let _ = stop.recv_timeout(Duration::from_secs(60));
}

#[test]
fn a_node_that_stops_reading_is_dropped_after_write_timeout() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let spec = CloudSpec {
            keepalive: 60.0,
            write_timeout: 1.0,
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let (stop, stopped) = std::sync::mpsc::channel();
        let port = cloud.port(proto);
        let p = pki.clone();
        let client = std::thread::spawn(move || stalled_reader(proto, port, &p, stopped));
        cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));

        // 40 messages of 400 kB: far more than socket buffers and QUIC flow control take.
        let big = format!("\"{}\"", "x".repeat(400_000));
        let lines: String = (0..40).map(|_| format!("{big}\n")).collect();
        let template = hub::message::Message {
            resource: "node/edge-node/bulk".into(),
            ..Default::default()
        };
        let (accepted, refused) = smol::block_on(async {
            let ws = hub::client::connect(&cloud.apps, "/").await.unwrap();
            hub::client::publish_lines(ws, template, smol::io::Cursor::new(lines.into_bytes()))
                .await
                .unwrap()
        });
        assert_eq!((accepted, refused), (40, 0));
        let dropped = cloud.hub.wait_for("node edge-node disconnected");
        assert!(
            dropped.contains("write timeout: writes blocked for 1.0s"),
            "{dropped}"
        );
        stop.send(()).unwrap();
        client.join().unwrap();
        // Nothing was lost: the messages wait in the node's queue.
        let nodes = smol::block_on(async {
            let mut ws = hub::client::connect(&cloud.apps, "/nodes").await.unwrap();
            use smol::stream::StreamExt;
            match ws.next().await {
                Some(Ok(async_tungstenite::tungstenite::Message::Text(t))) => t.to_string(),
                other => panic!("{other:?}"),
            }
        });
        assert!(nodes.contains("\"queued\":40"), "{nodes}");
    }
}

/// A stand-in cloud that accepts one edge, answers its HELLO with WELCOME and then never reads
/// again until told to stop. Returns its port.
fn stalled_cloud(proto: Proto, pki: &std::path::Path, stop: std::sync::mpsc::Receiver<()>) -> u16 {
    use hub::proto::frame::Welcome;
    let welcome = Frame::Welcome(Welcome {
        version: hub::proto::VERSION,
        keepalive: Duration::from_secs(60),
        heartbeat: Duration::from_secs(1),
        window: 256,
        lanes: [7, 8].map(|down_stream| hub::proto::frame::WelcomeLane {
            down_stream,
            down_first: 1,
            up_seq: 0,
        }),
    });
    let (ca, cert, key) = (
        pki.join("ca.crt"),
        pki.join("server.crt"),
        pki.join("server.key"),
    );
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        smol::block_on(async {
            let _held: Box<dyn std::any::Any> = match proto {
                Proto::Websocket => {
                    let tls =
                        hub::tls::server_config(&ca, &cert, &key, b"http/1.1", false).unwrap();
                    let listener =
                        smol::Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
                    port_tx
                        .send(listener.get_ref().local_addr().unwrap().port())
                        .unwrap();
                    let (tcp, _) = listener.accept().await.unwrap();
                    let stream = futures_rustls::TlsAcceptor::from(std::sync::Arc::new(tls))
                        .accept(tcp)
                        .await
                        .unwrap();
                    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
                    let callback = |_: &async_tungstenite::tungstenite::handshake::server::Request,
                                    mut resp: async_tungstenite::tungstenite::handshake::server::Response| {
                        resp.headers_mut().insert("Sec-WebSocket-Protocol", hub::proto::WS_SUBPROTOCOL.parse().unwrap());
                        Ok(resp)
                    };
                    let mut ws = async_tungstenite::accept_hdr_async(stream, callback)
                        .await
                        .unwrap();
                    use smol::stream::StreamExt;
                    let _hello = ws.next().await;
                    ws.send(async_tungstenite::tungstenite::Message::binary(
                        welcome.encode(),
                    ))
                    .await
                    .unwrap();
                    Box::new(ws)
                }
                Proto::Quic => {
                    let tls =
                        hub::tls::server_config(&ca, &cert, &key, hub::proto::ALPN, false).unwrap();
                    let transport = hub::transport::quic::transport_config(
                        100,
                        Duration::from_secs(60),
                        hub::config::Congestion::Cubic,
                    );
                    let endpoint = hub::transport::quic::server_endpoint(
                        "127.0.0.1:0".parse().unwrap(),
                        tls,
                        transport,
                        hub::transport::quic::RestartKeys::derive(b"test"),
                    )
                    .unwrap();
                    port_tx.send(endpoint.local_addr().unwrap().port()).unwrap();
                    let conn = endpoint.accept().await.unwrap().await.unwrap();
                    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                    let mut hello = [0u8; 64];
                    let _ = recv.read(&mut hello).await;
                    let mut out = Vec::new();
                    encode_len_prefixed(&welcome, &mut out);
                    send.write_all(&out).await.unwrap();
                    Box::new((endpoint, conn, send, recv))
                }
            };
            let _ = stop.recv_timeout(Duration::from_secs(60));
        });
    });
    port_rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn an_edge_whose_writes_stall_drops_the_link_after_write_deadline() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let (stop, stopped) = std::sync::mpsc::channel();
        let port = stalled_cloud(proto, &pki, stopped);
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", port);
        spec.read_deadline = 30.0;
        spec.backoff_initial = 30.0;
        spec.backoff_max = 30.0;
        let file = spec.write(tmp.path());
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("write-deadline: 5", "write-deadline: 1");
        std::fs::write(&file, text).unwrap();
        let mut edge = common::Hub::start("edge", &["edge", "-c", file.to_str().unwrap()]);
        let apps = common::apps_url(&mut edge);
        edge.wait_for("connected to the cloud");

        // 16 MB for a cloud that reads nothing: far more than socket buffers or QUIC flow control.
        let big = format!("\"{}\"", "x".repeat(400_000));
        let lines: String = (0..40).map(|_| format!("{big}\n")).collect();
        let template = hub::message::Message {
            resource: "bulk".into(),
            ..Default::default()
        };
        let (accepted, _) = smol::block_on(async {
            let ws = hub::client::connect(&apps, "/").await.unwrap();
            hub::client::publish_lines(ws, template, smol::io::Cursor::new(lines.into_bytes()))
                .await
                .unwrap()
        });
        assert_eq!(accepted, 40);
        let lost = edge.wait_for("link to the cloud lost");
        assert!(
            lost.contains("write timeout: writes blocked for 1.0s (write-deadline)"),
            "{lost}"
        );
        let _ = stop.send(());
    }
}
