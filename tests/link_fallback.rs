//! QUIC that falls back: an edge configured for QUIC whose UDP gets no answer (here a relay in
//! front of the cloud's QUIC port that drops every datagram) and that also has a `websocket`
//! section falls back to WebSocket after `controller.fallback-after` unanswered attempts, says
//! so, and carries messages; it probes QUIC every `controller.quic-probe-interval` and, once QUIC
//! gets through, moves the link back to QUIC with nothing lost and order kept.

mod common;

use std::io::Write;

use common::{CloudSpec, EdgeSpec, Proto, Relay};

#[test]
fn quic_falls_back_to_websocket_and_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::link_pki(dir);
    let mut cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    // UDP blocked: every datagram to the QUIC port is dropped.
    let relay = Relay::start(Proto::Quic, cloud.quic_port);
    relay.blackhole(true);
    let mut spec = EdgeSpec::new(Proto::Quic, &pki, "edge-node", relay.port());
    spec.handshake_timeout = 10.0;
    spec.controller_extra = "  fallback-after: 2\n  quic-probe-interval: 1\n".into();
    let file = spec.write(dir);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    writeln!(
        f,
        "websocket:\n  url: wss://127.0.0.1:{}/proj/edge-node/events",
        cloud.ws_port
    )
    .unwrap();
    drop(f);
    let mut edge = common::Hub::start("edge", &["edge", "-c", file.to_str().unwrap()]);
    let apps = common::apps_url(&mut edge);
    let warning = edge.wait_for("falling back to WebSocket");
    assert!(
        warning.contains("WARN") && warning.contains("no answer in 2 attempt(s)"),
        "one warning naming why: {warning}"
    );
    edge.wait_for("connected to the cloud over websocket");

    let mut sub = common::apps::subscribe(&cloud.apps, "node/edge-node/fb");
    const N: u64 = 200;
    assert_eq!(common::apps::publish_numbers(&apps, "fb", N), (N, 0));
    let mut got = common::apps::receive(&mut sub, N as usize);

    // QUIC gets through again: the probe sees it and the link moves back.
    relay.blackhole(false);
    edge.wait_for("QUIC answers again");
    edge.wait_for("to move to QUIC");
    edge.wait_for("connected to the cloud over quic");
    // The numbers go on from N: publish 2N and expect N..2N after what arrived.
    let (accepted, refused) = common::apps::publish_numbers(&apps, "fb", 2 * N);
    assert_eq!((accepted, refused), (2 * N, 0));
    let more = common::apps::receive(&mut sub, 2 * N as usize);
    got.extend(more);
    // 0..N over WebSocket, then 0..2N over QUIC: each run whole and in order, nothing lost.
    common::apps::assert_numbers_in_order(&got[..N as usize], "node/edge-node/fb", N);
    common::apps::assert_numbers_in_order(&got[N as usize..], "node/edge-node/fb", 2 * N);
    cloud.hub.terminate();
}
