//! The link: mutual TLS and node identity on both transports, handshakes that cannot block other
//! nodes, and SIGTERM on either side.

mod common;

use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use std::path::Path;
use std::time::Duration;

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Cloud) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    (tmp, pki, cloud)
}

#[test]
fn accepted_node_is_logged_with_its_identity() {
    let (tmp, pki, mut cloud) = setup();
    for proto in BOTH {
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        let line = cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
        assert!(
            line.contains("CN=edge-node") && line.contains("serial "),
            "{line}"
        );
        edge.wait_for(&format!("connected to the cloud over {}", proto.name()));
        drop(edge);
        cloud.hub.wait_for("node edge-node disconnected");
    }
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let (tmp, _pki, mut cloud) = setup();
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    let foreign = common::link_pki(&stranger);
    for proto in BOTH {
        let mut spec = EdgeSpec::new(proto, &foreign, "edge-node", cloud.port(proto));
        spec.ca = tmp.path().join("pki/ca.crt"); // the edge trusts the cloud; the cloud does not trust it
        let mut edge = spec.start(tmp.path());
        let refused = cloud
            .hub
            .wait_for(&format!("refused {} connection from", proto.name()));
        assert!(
            refused.contains("invalid peer certificate: UnknownIssuer"),
            "{refused}"
        );
        edge.wait_for("cannot connect to the cloud");
        assert!(cloud.hub.lines_with("node edge-node connected").is_empty());
    }
}

#[test]
fn edge_refuses_a_cloud_from_another_ca() {
    let (tmp, pki, mut cloud) = setup();
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    let foreign = common::link_pki(&stranger);
    for proto in BOTH {
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        spec.ca = foreign.join("ca.crt");
        let mut edge = spec.start(tmp.path());
        let line = edge.wait_for("cannot connect to the cloud");
        assert!(
            line.contains("UnknownIssuer") || line.contains("invalid peer certificate"),
            "{line}"
        );
        cloud
            .hub
            .wait_for(&format!("refused {} connection from", proto.name()));
    }
}

#[test]
fn certificate_of_node_a_cannot_claim_node_b() {
    let (tmp, pki, mut cloud) = setup();
    for proto in BOTH {
        let mut spec = EdgeSpec::new(proto, &pki, "node-2", cloud.port(proto));
        (spec.cert, spec.key) = (pki.join("node-node-1.crt"), pki.join("node-node-1.key"));
        let mut edge = spec.start(tmp.path());
        let refused = cloud
            .hub
            .wait_for(&format!("refused {} connection from", proto.name()));
        assert!(
            refused.contains("identity mismatch") && refused.contains("node-2"),
            "{refused}"
        );
        let seen = match proto {
            Proto::Websocket => edge.wait_for("refused by the cloud: 403 identity mismatch"),
            Proto::Quic => edge.wait_for("closed by the peer: identity mismatch"),
        };
        assert!(!seen.is_empty());
        assert!(cloud.hub.lines_with("node node-2 connected").is_empty());
    }
}

/// A TLS client without a certificate, over either transport.
fn connect_without_certificate(proto: Proto, port: u16, ca: &Path) -> Result<(), String> {
    let roots = hub::tls::load_roots(ca).unwrap();
    let alpn: &[u8] = match proto {
        Proto::Websocket => b"http/1.1",
        Proto::Quic => hub::proto::ALPN,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(hub::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let ep = hub::config::Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    smol::block_on(async {
        match proto {
            Proto::Websocket => hub::transport::ws::connect(
                &ep,
                "/proj/edge-node/events",
                std::sync::Arc::new(config),
                Duration::from_secs(10),
            )
            .await
            .map(drop)
            .map_err(String::from),
            Proto::Quic => {
                let endpoint = hub::transport::quic::client_endpoint(false)?;
                let qc = hub::transport::quic::client_config(config, Duration::from_secs(5))?;
                let (conn, _s, mut r, _) = hub::transport::quic::connect(
                    &endpoint,
                    qc,
                    format!("127.0.0.1:{port}").parse().unwrap(),
                    "127.0.0.1",
                    &[0, 0, 0, 1, 3],
                )
                .await?;
                // A QUIC client learns of the refusal once the cloud processes its certificate.
                let mut buf = [0u8; 16];
                let read = r.read(&mut buf).await;
                Err(format!("{read:?} {:?}", conn.close_reason()))
            }
        }
    })
}

#[test]
fn client_without_certificate_is_refused() {
    let (tmp, pki, mut cloud) = setup();
    for proto in BOTH {
        let result = connect_without_certificate(proto, cloud.port(proto), &pki.join("ca.crt"));
        let err = result.expect_err("a client without a certificate got through");
        assert!(
            err.contains("CertificateRequired")
                || err.contains("certificate")
                || err.contains("closed"),
            "{err}"
        );
        let refused = cloud
            .hub
            .wait_for(&format!("refused {} connection from", proto.name()));
        assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    }
    drop(tmp);
}

#[test]
fn silent_tcp_and_udp_peers_do_not_block_other_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        keepalive: 30.0,
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    // Ten TCP connections that never speak, and a QUIC client that sends one garbage datagram.
    let silent: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", cloud.ws_port)).unwrap())
        .collect();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0xc3; 1200], ("127.0.0.1", cloud.quic_port))
        .unwrap();
    for proto in BOTH {
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        edge.wait_for_within(
            &format!("connected to the cloud over {}", proto.name()),
            Duration::from_secs(10),
        );
        cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
    }
    drop(silent);
}

#[test]
fn sigterm_on_the_edge_closes_with_shutting_down() {
    let (tmp, pki, mut cloud) = setup();
    for proto in BOTH {
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        edge.wait_for("connected to the cloud");
        let status = edge.terminate();
        assert_eq!(status.code(), Some(0), "edge exit status");
        let line = cloud
            .hub
            .wait_for(&format!("node edge-node disconnected ({}", proto.name()));
        assert!(
            line.ends_with("closed by the peer: shutting down"),
            "{line}"
        );
    }
}

#[test]
fn sigterm_on_the_cloud_closes_with_shutting_down() {
    for proto in BOTH {
        let (tmp, pki, mut cloud) = setup();
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        edge.wait_for("connected to the cloud");
        cloud.hub.wait_for("node edge-node connected");
        let status = cloud.hub.terminate();
        assert_eq!(status.code(), Some(0), "cloud exit status");
        let line = edge.wait_for("link to the cloud lost");
        assert!(
            line.ends_with("closed by the peer: shutting down"),
            "{line}"
        );
        let _: &Hub = &edge;
    }
}
