//! Every address a host name resolves to is tried, on both transports: an edge whose `url` names
//! `localhost`, resolving to `::1` first, reaches a cloud that listens on 127.0.0.1 only, also
//! when something on `::1` accepts TCP and then hangs up or stays silent (an attempt is TCP, TLS
//! and the upgrade, not the TCP connect alone); the same for placement.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::hosts::{private_hosts_available, start_edge_logging, start_edge_with_hosts};
use common::{CloudSpec, EdgeSpec, Proto};
use hub::transport::dial::Limit;

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

#[test]
fn localhost_resolving_to_ipv6_first_reaches_a_cloud_on_ipv4() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir, "::1") {
        // The dialling itself is covered by quic_dial_races_past_an_address_that_never_answers
        // and the unit tests of transport::dial.
        eprintln!("skipped: `unshare -rm` with a bind mount is not permitted here");
        return;
    }
    // A Debian-style hosts file: localhost is both; getaddrinfo sorts ::1 first (RFC 6724).
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n").unwrap();
    let pki = common::link_pki(dir);
    let mut cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    for proto in BOTH {
        let port = cloud.port(proto);
        let spec = EdgeSpec::new(proto, &pki, "edge-node", port);
        let file = spec.write(dir);
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}")),
        )
        .unwrap();
        let mut edge = start_edge_with_hosts(&format!("edge {}", proto.name()), &file, &hosts);
        edge.wait_for(&format!("to localhost:{port}"));
        let connected = edge.wait_for("connected to the cloud");
        assert!(
            connected.contains(&format!(
                "connected to the cloud over {} at 127.0.0.1:{port}",
                proto.name()
            )),
            "the log names the address that answered: {connected}"
        );
        cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
        edge.terminate();
    }
}

/// A QUIC client bound to 127.0.0.1 whose datagrams nobody answers.
fn blackhole() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[test]
fn quic_dial_races_past_an_address_that_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let good: SocketAddr = format!("127.0.0.1:{}", cloud.quic_port).parse().unwrap();
    let (_silent, silent) = blackhole();
    let (_silent2, silent2) = blackhole();
    let creds = hub::tls::Credentials::load(
        &pki.join("node-edge-node.crt"),
        &pki.join("node-edge-node.key"),
    )
    .unwrap();
    let tls = hub::tls::client_config(&pki.join("ca.crt"), &creds, hub::proto::ALPN, true).unwrap();
    let config = hub::transport::quic::client_config(tls, Duration::from_secs(10)).unwrap();
    smol::block_on(async {
        let mut endpoints = hub::transport::quic::ClientEndpoints::default();
        // The answering address comes second: it is tried once the first stayed silent for the
        // attempt delay, and wins.
        let started = Instant::now();
        let (conn, ..) = hub::transport::quic::dial(
            &mut endpoints,
            &config,
            &[silent, good, silent2],
            "localhost",
            &[],
            Limit::new(Duration::from_secs(10)),
            &mut hub::transport::dial::Pacer::default(),
        )
        .await
        .expect("the second address answers");
        let took = started.elapsed();
        assert_eq!(conn.remote_address(), good);
        assert!(
            took >= hub::transport::dial::ATTEMPT_DELAY.mul_f64(0.75)
                && took < Duration::from_secs(5),
            "the second address is tried after the attempt delay (75-100 %), not after a timeout: {took:?}"
        );
        conn.close(0u32.into(), b"");

        // Nothing answers: the error names every address tried.
        let err = hub::transport::quic::dial(
            &mut endpoints,
            &config,
            &[silent, silent2],
            "localhost",
            &[],
            Limit::new(Duration::from_millis(800)),
            &mut hub::transport::dial::Pacer::default(),
        )
        .await
        .expect_err("nobody answers");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "{silent}: no answer within handshake-timeout (800ms)"
            )) && text.contains(&format!(
                "{silent2}: no answer within handshake-timeout (800ms)"
            )),
            "{text}"
        );
    });
}

/// What a listener on `[::1]` does with the connections it accepts.
#[derive(Debug, Clone, Copy)]
enum Impostor {
    /// Closes each at once: the TLS handshake ends with EOF.
    HangsUp,
    /// Keeps each open and says nothing.
    Silent,
}

/// A TCP listener on `[::1]:port` behaving as `kind`; each connection it accepts is reported on
/// the receiver. `None` when this machine has no `::1`.
fn impostor_on_ipv6(port: u16, kind: Impostor) -> Option<Receiver<SocketAddr>> {
    let listener = TcpListener::bind(("::1", port)).ok()?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut kept: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = tx.send(stream.peer_addr().unwrap());
            match kind {
                Impostor::HangsUp => drop(stream),
                Impostor::Silent => kept.push(stream),
            }
        }
    });
    Some(rx)
}

/// A Debian-style hosts file in `dir`: localhost is both, and getaddrinfo sorts ::1 first.
fn localhost_hosts(dir: &Path) -> std::path::PathBuf {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n").unwrap();
    hosts
}

/// An edge configuration of `spec` whose URL names `localhost` instead of 127.0.0.1.
fn via_localhost(spec: &EdgeSpec, dir: &Path) -> std::path::PathBuf {
    let file = spec.write(dir);
    let text = std::fs::read_to_string(&file).unwrap();
    let port = spec.port;
    std::fs::write(
        &file,
        text.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}")),
    )
    .unwrap();
    file
}

/// The handshake-timeout of the edges below: long, so that getting through within a fraction
/// of it shows the race moved on from `::1` by itself rather than after a failed whole attempt.
const HANDSHAKE_TIMEOUT: f64 = 10.0;

/// A WebSocket edge whose `localhost` URL resolves to `[::1]` (where `kind` listens on the
/// cloud's port) before 127.0.0.1 (the cloud) connects to the cloud on its first attempt, well
/// within handshake-timeout; then, reconnecting, it tries 127.0.0.1 first (the address that
/// answered last). Returns nothing when the machine lacks what the test needs.
fn websocket_edge_passes(kind: Impostor) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir, "::1") {
        eprintln!("skipped: `unshare -rm` with a bind mount is not permitted here");
        return;
    }
    let hosts = localhost_hosts(dir);
    let pki = common::link_pki(dir);
    let mut cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    let port = cloud.ws_port;
    let Some(impostor) = impostor_on_ipv6(port, kind) else {
        eprintln!("skipped: no ::1 here");
        return;
    };
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", port);
    spec.handshake_timeout = HANDSHAKE_TIMEOUT;
    let file = via_localhost(&spec, dir);
    let started = Instant::now();
    let mut edge = start_edge_logging(
        &format!("edge {kind:?}"),
        &file,
        &hosts,
        "info,hub::transport::dial=debug",
    );
    let connected = edge.wait_for_within(
        "connected to the cloud",
        Duration::from_secs_f64(HANDSHAKE_TIMEOUT),
    );
    let took = started.elapsed();
    assert!(
        connected.contains(&format!(
            "connected to the cloud over websocket at 127.0.0.1:{port}"
        )),
        "{connected}"
    );
    assert!(
        edge.lines_with("cannot connect").is_empty(),
        "the first attempt connects: {:?}",
        edge.lines_with("cannot connect")
    );
    assert!(
        took < Duration::from_secs_f64(HANDSHAKE_TIMEOUT / 2.0),
        "well within handshake-timeout: {took:?}"
    );
    // ::1 was tried first and did accept the TCP connection.
    let from = impostor
        .recv_timeout(Duration::from_secs(5))
        .expect("the edge tried [::1] first");
    assert!(from.is_ipv6(), "{from}");
    assert_eq!(
        edge.first_line("trying", Duration::from_secs(1), |l| l.contains("trying")),
        edge.lines_with(&format!("trying [::1]:{port}"))[0],
        "[::1] first"
    );
    if let Impostor::HangsUp = kind {
        let failed = edge.first_line("about [::1]'s failure", Duration::from_secs(1), |l| {
            l.contains(&format!("[::1]:{port}: failed:"))
        });
        assert!(failed.contains("TLS"), "{failed}");
    }
    cloud
        .hub
        .wait_for("node edge-node connected over websocket");

    // Another connection with the same identity replaces this one: the reconnect starts with
    // 127.0.0.1, which answered last.
    let mut other = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", port).start(dir);
    other.wait_for("connected to the cloud");
    edge.wait_for("replaced");
    edge.wait_for("connected to the cloud");
    // Every line so far: the first attempt after the replacement.
    let log = edge.lines_with("");
    let replaced = log.iter().position(|l| l.contains("replaced")).unwrap();
    let first = log[replaced..]
        .iter()
        .find(|l| l.contains("trying"))
        .expect("a reconnect");
    assert!(
        first.contains(&format!("trying 127.0.0.1:{port} (1 of 2)")),
        "the last good address first: {first}"
    );
    other.terminate();
    edge.terminate();
}

#[test]
fn websocket_edge_passes_an_address_that_hangs_up_after_tcp() {
    websocket_edge_passes(Impostor::HangsUp);
}

#[test]
fn websocket_edge_passes_an_address_that_stays_silent_after_tcp() {
    websocket_edge_passes(Impostor::Silent);
}

#[test]
fn the_clouds_refusal_is_final_and_names_the_address_left_unfinished() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir, "::1") {
        eprintln!("skipped: `unshare -rm` with a bind mount is not permitted here");
        return;
    }
    let hosts = localhost_hosts(dir);
    let pki = common::link_pki(dir);
    let cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    let port = cloud.ws_port;
    let Some(_impostor) = impostor_on_ipv6(port, Impostor::Silent) else {
        eprintln!("skipped: no ::1 here");
        return;
    };
    // node-1's certificate claiming node-2: the cloud answers 403 on 127.0.0.1 while [::1] is
    // still silent. The answer ends the dial at once rather than waiting out handshake-timeout
    // on [::1].
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "node-2", port);
    (spec.cert, spec.key) = (pki.join("node-node-1.crt"), pki.join("node-node-1.key"));
    spec.handshake_timeout = HANDSHAKE_TIMEOUT;
    let file = via_localhost(&spec, dir);
    let started = Instant::now();
    let mut edge = start_edge_with_hosts("edge refused", &file, &hosts);
    let refused = edge.wait_for_within(
        "cannot connect to the cloud",
        Duration::from_secs_f64(HANDSHAKE_TIMEOUT),
    );
    let took = started.elapsed();
    assert!(
        refused.contains("refused by the cloud: 403 identity mismatch")
            && refused.contains(&format!(
                "(127.0.0.1:{port}); also tried [::1]:{port}: not finished, abandoned"
            )),
        "{refused}"
    );
    assert!(
        took < Duration::from_secs_f64(HANDSHAKE_TIMEOUT / 2.0),
        "not after handshake-timeout: {took:?}"
    );
}

#[test]
fn placement_passes_an_address_that_accepts_tcp_and_hangs_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir, "::1") {
        eprintln!("skipped: `unshare -rm` with a bind mount is not permitted here");
        return;
    }
    let hosts = localhost_hosts(dir);
    let pki = common::link_pki(dir);
    let cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    let port = cloud.ws_port;
    let placement = common::placement::Placement::start(
        &pki,
        format!("wss://127.0.0.1:{port}/proj/edge-node/events"),
    )
    .port;
    let Some(impostor) = impostor_on_ipv6(placement, Impostor::HangsUp) else {
        eprintln!("skipped: no ::1 here");
        return;
    };
    // The configured URL points nowhere: only placement can lead the edge to the cloud.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", nowhere);
    spec.handshake_timeout = HANDSHAKE_TIMEOUT;
    spec.controller_extra =
        format!("  placement: true\n  placement-url: https://localhost:{placement}/v1/placement\n");
    let file = spec.write(dir);
    let mut edge = start_edge_with_hosts("edge placement", &file, &hosts);
    let said = edge.wait_for(&format!("placement at https://localhost:{placement}"));
    assert!(
        said.contains(&format!("says the cloud is at 127.0.0.1:{port}")),
        "{said}"
    );
    impostor
        .recv_timeout(Duration::from_secs(5))
        .expect("the edge asked [::1] first");
    edge.wait_for(&format!(
        "connected to the cloud over websocket at 127.0.0.1:{port}"
    ));
}
