//! The counters a cloud keeps about what it refuses, routes and writes, read from its real
//! metrics endpoint: refusals by reason over both transports, fdatasync and group-commit
//! histograms, messages with no subscriber, application connections by API.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::apps::{eventually, publish_numbers, start_edge, subscribe};
use common::http::{ops_addr, scrape};
use common::{CloudSpec, EdgeSpec, Proto};

#[test]
fn refusals_are_counted_by_reason_over_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        node_limit: 1,
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let ops = ops_addr(&mut cloud.hub);
    let refused = |reason: &str| {
        scrape(
            ops,
            "hub_node_refusals_total",
            &format!("reason=\"{reason}\""),
        )
    };
    for reason in ["node_limit", "identity", "tls", "protocol_error"] {
        assert_eq!(refused(reason), 0.0, "{reason} before anything happened");
    }

    let mut first =
        EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port).start(tmp.path());
    first.wait_for("connected to the cloud");
    for (n, proto) in [Proto::Websocket, Proto::Quic].into_iter().enumerate() {
        let mut over = EdgeSpec::new(proto, &pki, "node-2", cloud.port(proto)).start(tmp.path());
        over.wait_for("cannot connect to the cloud");
        eventually("the node limit refusal counted", || {
            refused("node_limit") >= (n + 1) as f64
        });
    }

    // node-3's edge presenting node-2's certificate.
    for (n, proto) in [Proto::Websocket, Proto::Quic].into_iter().enumerate() {
        let mut spec = EdgeSpec::new(proto, &pki, "node-3", cloud.port(proto));
        let (crt, key) = hub::pki::node_files("node-2");
        spec.cert = pki.join(crt);
        spec.key = pki.join(key);
        let mut liar = spec.start(tmp.path());
        liar.wait_for("cannot connect to the cloud");
        eventually("the identity refusal counted", || {
            refused("identity") >= (n + 1) as f64
        });
    }

    // Not TLS at all.
    let mut raw = TcpStream::connect(("127.0.0.1", cloud.ws_port)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    eventually("the TLS refusal counted", || refused("tls") >= 1.0);

    // The first node stayed throughout.
    assert!(first.lines_with("link to the cloud lost").is_empty());
}

#[test]
fn writes_routing_and_application_connections_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let cloud_ops = ops_addr(&mut cloud.hub);
    let spec = EdgeSpec::new(Proto::Quic, &pki, "node-1", cloud.quic_port);
    let (mut edge, edge_apps) = start_edge(&spec, tmp.path());
    let edge_ops = ops_addr(&mut edge);
    edge.wait_for("connected to the cloud");

    assert_eq!(
        scrape(cloud_ops, "hub_app_connections", "api=\"websocket\""),
        0.0
    );
    let sub = subscribe(&cloud.apps, "node/node-1/seen");
    assert_eq!(
        scrape(cloud_ops, "hub_app_connections", "api=\"websocket\""),
        1.0
    );

    // Two resources: one has a subscriber in the cloud, the other none.
    let fsyncs = scrape(edge_ops, "hub_queue_fsync_duration_seconds_count", "");
    let batches = scrape(edge_ops, "hub_queue_commit_batch_messages_count", "");
    assert_eq!(publish_numbers(&edge_apps, "seen", 20), (20, 0));
    assert_eq!(publish_numbers(&edge_apps, "unseen", 30), (30, 0));
    eventually("the cloud counted the messages nobody took", || {
        scrape(cloud_ops, "hub_messages_no_subscriber_total", "") == 30.0
    });
    assert!(
        scrape(edge_ops, "hub_queue_fsync_duration_seconds_count", "") > fsyncs,
        "the edge's outbox synced what it accepted"
    );
    let written = scrape(edge_ops, "hub_queue_commit_batch_messages_sum", "");
    assert!(
        written >= 50.0,
        "50 messages in group commits, got {written}"
    );
    assert!(scrape(edge_ops, "hub_queue_commit_batch_messages_count", "") > batches);

    drop(sub);
    eventually("the application connection counted out", || {
        scrape(cloud_ops, "hub_app_connections", "api=\"websocket\"") == 0.0
    });
    // Counted from the accept, before any CONNECT.
    let mqtt = TcpStream::connect(("127.0.0.1", common::mqtt::mqtt_port(&edge))).unwrap();
    eventually("the MQTT connection counted in", || {
        scrape(edge_ops, "hub_app_connections", "api=\"mqtt\"") == 1.0
    });
    drop(mqtt);
    eventually("the MQTT connection counted out", || {
        scrape(edge_ops, "hub_app_connections", "api=\"mqtt\"") == 0.0
    });
}
