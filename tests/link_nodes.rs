//! Node registry on a real cloud: node-limit, replacement of a node's older connection, and the
//! QUIC stream bound.

mod common;

use std::time::Duration;

use common::{CloudSpec, EdgeSpec, Proto};

#[test]
fn node_limit_refuses_the_third_and_keeps_the_first_two() {
    for proto in [Proto::Websocket, Proto::Quic] {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let spec = CloudSpec {
            node_limit: 2,
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let port = cloud.port(proto);
        let mut first = EdgeSpec::new(proto, &pki, "node-1", port).start(tmp.path());
        first.wait_for("connected to the cloud");
        let mut second = EdgeSpec::new(proto, &pki, "node-2", port).start(tmp.path());
        second.wait_for("connected to the cloud");

        let mut third = EdgeSpec::new(proto, &pki, "node-3", port).start(tmp.path());
        let refused = third.wait_for("cannot connect to the cloud");
        assert!(refused.contains("node limit reached"), "{refused}");
        if proto == Proto::Websocket {
            assert!(
                refused.contains("503"),
                "an HTTP status before the upgrade: {refused}"
            );
        }
        let logged = cloud
            .hub
            .wait_for(&format!("refused {} connection from", proto.name()));
        assert!(
            logged.contains("node limit reached") && logged.contains("node-3"),
            "{logged}"
        );
        // The third keeps retrying and keeps being refused; the first two stay up throughout.
        third.wait_for("cannot connect to the cloud");
        assert!(
            first.lines_with("link to the cloud lost").is_empty(),
            "{:?}",
            first.lines_with("lost")
        );
        assert!(second.lines_with("link to the cloud lost").is_empty());
        assert!(
            cloud.hub.lines_with("disconnected").is_empty(),
            "{:?}",
            cloud.hub.lines_with("disconnected")
        );
        assert!(third.lines_with("connected to the cloud").is_empty());

        // When one leaves, the third gets in.
        drop(first);
        third.wait_for("connected to the cloud");
    }
}

#[test]
fn second_connection_for_a_node_replaces_the_first() {
    for proto in [Proto::Websocket, Proto::Quic] {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        // The replaced edge waits long enough before retrying for the test to see one replacement.
        spec.backoff_initial = 30.0;
        spec.backoff_max = 30.0;
        let mut old = spec.start(tmp.path());
        old.wait_for("connected to the cloud");
        let mut new = spec.start(tmp.path());
        new.wait_for("connected to the cloud");
        let lost = old.wait_for("link to the cloud lost");
        assert!(
            lost.ends_with("closed by the peer: replaced by a newer connection"),
            "{lost}"
        );
        let logged = cloud.hub.wait_for("node edge-node disconnected");
        assert!(
            logged.ends_with("replaced by a newer connection"),
            "{logged}"
        );
        assert!(new.lines_with("link to the cloud lost").is_empty());
    }
}

/// Two gateways configured with the same node id and certificate take turns replacing each
/// other: the cloud says so at warning level, with both addresses, and counts it per node.
#[test]
fn two_gateways_with_one_identity_are_reported() {
    for proto in [Proto::Websocket, Proto::Quic] {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        spec.backoff_initial = 0.2;
        spec.backoff_max = 0.5;
        let mut first = spec.start(tmp.path());
        first.wait_for("connected to the cloud");
        let _second = spec.start(tmp.path());
        for round in 1..=3 {
            let warned = cloud
                .hub
                .wait_for("two gateways may be using this node's identity");
            assert!(warned.contains(" WARN "), "{warned}");
            assert!(
                warned.contains(&format!("({round} time(s) so far)")),
                "{warned}"
            );
            // Both addresses: the newcomer's and the one it replaced.
            let addrs: Vec<&str> = warned.matches("127.0.0.1:").collect();
            assert_eq!(addrs.len(), 2, "{warned}");
        }
        let row = common::apps::node_row(&cloud.apps, "edge-node");
        assert!(row["conflicts"].as_u64().unwrap() >= 3, "{row}");
        // The gateway that was pushed out says so too, where its operator looks.
        let told = first.wait_for("replaced this one");
        assert!(
            told.contains(" WARN ") && told.contains("two gateways are using this node's identity"),
            "{told}"
        );
    }
}

/// A gateway killed and restarted at once replaces its own dead link, which the cloud still
/// holds: that is no identity conflict, on either transport.
#[test]
fn a_gateway_that_restarts_is_not_taken_for_two() {
    for proto in [Proto::Websocket, Proto::Quic] {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        let mut edge = spec.start(tmp.path());
        edge.wait_for("connected to the cloud");
        cloud.hub.wait_for("node edge-node connected");
        edge.kill9();
        let mut edge = spec.start(tmp.path());
        edge.wait_for("connected to the cloud");
        cloud.hub.wait_for("node edge-node connected");
        assert!(
            cloud.hub.lines_with("two gateways").is_empty(),
            "{:?}",
            cloud.hub.lines_with("two gateways")
        );
        let row = common::apps::node_row(&cloud.apps, "edge-node");
        assert_eq!(row["conflicts"], 0, "{row}");
    }
}

/// Connects to a cloud allowing `max_streams` as `edge-node` and returns how many streams it could
/// open in all (the control stream included), trying up to `try_up_to`.
fn streams_granted(max_streams: u32, try_up_to: usize) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        max_streams,
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let creds = hub::tls::Credentials::load(
        &pki.join("node-edge-node.crt"),
        &pki.join("node-edge-node.key"),
    )
    .unwrap();
    let tls =
        hub::tls::client_config(&pki.join("ca.crt"), &creds, hub::proto::ALPN, false).unwrap();
    let config = hub::transport::quic::client_config(tls, Duration::from_secs(10)).unwrap();
    let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
    let hello = hub::proto::Frame::Hello(hub::proto::frame::Hello {
        version: hub::proto::VERSION,
        project_id: "proj".into(),
        node_id: "edge-node".into(),
        heartbeat: Duration::from_secs(1),
        read_deadline: Duration::from_secs(10),
        window: 16,
        lanes: [1, 2].map(|up_stream| hub::proto::frame::HelloLane {
            up_stream,
            up_first: 1,
            down_stream: 0,
            down_seq: 0,
        }),
    });
    let mut first = Vec::new();
    hub::proto::frame::encode_len_prefixed(&hello, &mut first);
    let addr = format!("127.0.0.1:{}", cloud.quic_port).parse().unwrap();
    let opened = smol::block_on(async {
        let (conn, _send, _recv, _) =
            hub::transport::quic::connect(&endpoint, config, addr, "127.0.0.1", &first)
                .await
                .unwrap();
        // The control stream is the first; open more until one must wait for credit.
        let mut extra = Vec::new();
        while extra.len() + 1 < try_up_to {
            let wait = Duration::from_millis(if extra.is_empty() { 3000 } else { 500 });
            match hub::transport::timeout(wait, conn.open_bi()).await {
                Some(Ok((mut s, r))) => {
                    // The second is the bulk lane's; the others stay unannounced (a stream the
                    // protocol has no use for would be a protocol error), but count against the
                    // streams granted all the same.
                    if extra.is_empty() {
                        s.write_all(&[hub::transport::quic::BULK_PREFACE])
                            .await
                            .unwrap();
                    }
                    extra.push((s, r));
                }
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
        }
        extra.len() + 1
    });
    cloud.hub.wait_for("node edge-node connected over quic");
    opened
}

#[test]
fn quic_peer_cannot_open_more_than_max_incomingstreams() {
    assert_eq!(streams_granted(3, 10), 3, "max_incomingstreams: 3");
    // Beyond 4 the hub grants 4 (its protocol uses two streams; each allowed one costs state).
    assert_eq!(
        streams_granted(10_000, 150),
        hub::transport::quic::MAX_GRANTED_STREAMS as usize,
        "max_incomingstreams: 10000"
    );
    assert_eq!(hub::transport::quic::MAX_GRANTED_STREAMS, 4);
}

#[test]
fn two_hubs_cannot_share_a_state_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", 9);
    spec.state = Some(tmp.path().join("shared-outbox"));
    let mut first = spec.start(tmp.path());
    first.wait_for("apps listening on");
    let mut second = spec.start(tmp.path());
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let refused = second.wait_for("is in use by another hub process");
    assert!(refused.contains("shared-outbox"), "{refused}");
}
