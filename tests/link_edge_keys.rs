//! The seed's remaining edge keys, live: handshake-timeout, placement (placement-url), and
//! certificate rotation (auth-info-files-path + refresh-ak-sk-interval).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{CloudSpec, EdgeSpec, Proto, Relay};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

#[test]
fn handshake_timeout_bounds_a_stalled_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    // A TCP listener that accepts and never answers, and a UDP socket that never answers.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (proto, port) in [
        (Proto::Websocket, tcp.local_addr().unwrap().port()),
        (Proto::Quic, udp.local_addr().unwrap().port()),
    ] {
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", port);
        spec.handshake_timeout = 1.0;
        let started = Instant::now();
        let mut edge = spec.start(tmp.path());
        let line = edge.wait_for("cannot connect to the cloud");
        let took = started.elapsed();
        assert!(
            line.contains(&format!(
                "127.0.0.1:{port}: no answer within handshake-timeout (1s)"
            )) || line.contains(&format!(
                "127.0.0.1:{port}: no TLS handshake and upgrade within handshake-timeout (1s)"
            )),
            "the line names the address that did not answer: {line}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
}

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn placement_names_the_cloud_and_its_failure_falls_back_to_the_configured_url() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    for proto in BOTH {
        let port = cloud.port(proto);
        let answer = match proto {
            Proto::Websocket => format!("wss://127.0.0.1:{port}/proj/edge-node/events"),
            Proto::Quic => format!("127.0.0.1:{port}"),
        };
        let placement = common::placement::Placement::start(&pki, answer);
        // The configured URL points nowhere: only placement can lead the edge to the cloud.
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", closed_port());
        spec.controller_extra = format!(
            "  placement: true\n  placement-url: https://127.0.0.1:{}/v1/placement_external/message_queue\n",
            placement.port
        );
        let mut edge = spec.start(tmp.path());
        let said = edge.wait_for("placement at https://127.0.0.1");
        assert!(
            said.contains(&format!("says the cloud is at 127.0.0.1:{port}")),
            "{said}"
        );
        edge.wait_for(&format!(
            "connected to the cloud over {} at 127.0.0.1:{port}",
            proto.name()
        ));
        cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
        let asked = placement.clients.lock().unwrap().clone();
        assert!(
            asked[0].starts_with("CN=edge-node")
                && asked[0].contains("GET /v1/placement_external/message_queue HTTP/1.1"),
            "the edge presents its certificate: {asked:?}"
        );
        drop(edge);

        // Placement down: the configured URL is used.
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", port);
        spec.controller_extra = format!(
            "  placement: true\n  placement-url: https://127.0.0.1:{}/v1/placement\n",
            closed_port()
        );
        let mut edge = spec.start(tmp.path());
        let failed = edge.wait_for("placement at https://127.0.0.1");
        assert!(
            failed.contains("failed") && failed.contains(&format!("using 127.0.0.1:{port}")),
            "{failed}"
        );
        edge.wait_for(&format!(
            "connected to the cloud over {} at 127.0.0.1:{port}",
            proto.name()
        ));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn rotated_certificate_is_used_from_the_next_connection_on() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // One CA in memory, so a second certificate for the same node can be issued later.
        let ca = hub::pki::Authority::new(1).unwrap();
        let pki = dir.join("pki");
        std::fs::create_dir(&pki).unwrap();
        let (ca_pem, _) = ca.pem();
        let (server_crt, server_key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
        let (old_crt, old_key) = ca.issue_node("edge-node").unwrap();
        for (name, text) in [
            ("ca.crt", &ca_pem),
            ("server.crt", &server_crt),
            ("server.key", &server_key),
            ("node-edge-node.crt", &old_crt),
            ("node-edge-node.key", &old_key),
        ] {
            std::fs::write(pki.join(name), text).unwrap();
        }
        let auth = dir.join("auth");
        std::fs::create_dir(&auth).unwrap();

        let mut cloud = common::start_cloud(
            dir,
            &pki,
            &CloudSpec {
                keepalive: 2.0,
                ..CloudSpec::default()
            },
        );
        let relay = Relay::start(proto, cloud.port(proto));
        let mut spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
        (spec.heartbeat, spec.read_deadline, spec.handshake_timeout) = (0.3, 1.0, 1.0);
        spec.controller_extra = format!(
            "  refresh-ak-sk-interval: 0.005\n  auth-info-files-path: {}\n",
            auth.display()
        );
        let mut edge = spec.start(dir);
        edge.wait_for("connected to the cloud");
        let first = cloud.hub.wait_for("node edge-node connected");
        let old_serial = hub::tls::Credentials::load(
            &pki.join("node-edge-node.crt"),
            &pki.join("node-edge-node.key"),
        )
        .unwrap()
        .identity()
        .unwrap()
        .serial;
        assert!(first.contains(&format!("serial {old_serial}")), "{first}");

        // A pair whose key belongs to another certificate is refused and the old one kept.
        let (_, stray_key) = ca.issue_node("edge-node").unwrap();
        let (new_crt, new_key) = ca.issue_node("edge-node").unwrap();
        write_atomically(&auth.join("tls.key"), &stray_key);
        write_atomically(&auth.join("tls.crt"), &new_crt);
        let refused = edge.wait_for("node credentials not rotated");
        assert!(
            refused.contains("does not belong to the certificate"),
            "{refused}"
        );

        write_atomically(&auth.join("tls.key"), &new_key);
        let rotated = edge.wait_for("node credentials rotated");
        let new_serial = hub::tls::CertIdentity::from_der(
            &rustls::pki_types::CertificateDer::from_pem_slice(new_crt.as_bytes()).unwrap(),
        )
        .unwrap()
        .serial;
        assert_ne!(new_serial, old_serial);
        assert!(
            rotated.contains(&format!("serial {new_serial}")),
            "{rotated}"
        );
        assert!(
            edge.lines_with("link to the cloud lost").is_empty(),
            "rotation alone does not drop the link"
        );

        // Force a reconnect: the cloud now sees the new certificate.
        relay.blackhole(true);
        edge.wait_for("link to the cloud lost");
        relay.blackhole(false);
        let back = edge.wait_for("connected to the cloud");
        if proto == Proto::Quic {
            assert!(
                back.contains("(1-RTT, "),
                "no resumption of a session made with the old certificate: {back}"
            );
        }
        let again = cloud
            .hub
            .wait_for(&format!("node edge-node connected over {}", proto.name()));
        assert!(again.contains(&format!("serial {new_serial}")), "{again}");
    }
}

use rustls::pki_types::pem::PemObject;
