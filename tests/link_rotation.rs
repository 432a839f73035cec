//! Certificate rotation (auth-info-files-path + refresh-ak-sk-interval) checks a pair before it
//! adopts it, and goes back to the last pair that worked when the cloud refuses a new one.

mod common;

use std::path::{Path, PathBuf};

use common::{CloudSpec, EdgeSpec, Hub, Proto, Relay};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn serial(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    hub::tls::CertIdentity::from_der(&der).unwrap().serial
}

/// Drops `crt` and `key` into the rotation folder `auth`; while the certificate is missing the
/// edge reads its configured files, so it never sees a new key beside an old certificate.
fn drop_pair(auth: &Path, (crt, key): &(String, String)) {
    let _ = std::fs::remove_file(auth.join("tls.crt"));
    write_atomically(&auth.join("tls.key"), key);
    write_atomically(&auth.join("tls.crt"), crt);
}

/// A test folder: the PKI files written from `files`, an empty rotation folder.
fn layout(dir: &Path, files: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let pki = dir.join("pki");
    std::fs::create_dir(&pki).unwrap();
    for (name, text) in files {
        std::fs::write(pki.join(name), text).unwrap();
    }
    let auth = dir.join("auth");
    std::fs::create_dir(&auth).unwrap();
    (pki, auth)
}

fn rotating_edge(proto: Proto, pki: &Path, auth: &Path, port: u16) -> EdgeSpec {
    let mut spec = EdgeSpec::new(proto, pki, "edge-node", port);
    (spec.heartbeat, spec.read_deadline, spec.handshake_timeout) = (0.3, 1.0, 2.0);
    spec.controller_extra = format!(
        "  refresh-ak-sk-interval: 0.005\n  auth-info-files-path: {}\n",
        auth.display()
    );
    spec
}

/// Waits for the cloud to log node edge-node connected over `proto` and returns the line.
fn node_connected(cloud: &mut Hub, proto: Proto) -> String {
    cloud.wait_for(&format!("node edge-node connected over {}", proto.name()))
}

#[test]
fn pairs_that_cannot_work_are_not_adopted() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = hub::pki::Authority::new(1).unwrap();
        let (ca_pem, _) = ca.pem();
        let (server_crt, server_key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
        let good = ca.issue_node("edge-node").unwrap();
        let (pki, auth) = layout(
            dir,
            &[
                ("ca.crt", &ca_pem),
                ("server.crt", &server_crt),
                ("server.key", &server_key),
                ("node-edge-node.crt", &good.0),
                ("node-edge-node.key", &good.1),
            ],
        );
        let mut spec = CloudSpec {
            keepalive: 2.0,
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(dir, &pki, &spec);
        (spec.ws_port, spec.quic_port) = (cloud.ws_port, cloud.quic_port);
        let mut edge = rotating_edge(proto, &pki, &auth, cloud.port(proto)).start(dir);
        edge.wait_for("connected to the cloud");
        let first = node_connected(&mut cloud.hub, proto);
        assert!(
            first.contains(&format!("serial {}", serial(&good.0))),
            "{first}"
        );

        // The cloud goes down; pairs for the right node that the cloud would refuse arrive.
        cloud.hub.kill9();
        let now = OffsetDateTime::now_utc();
        let expired = ca
            .issue_node_valid(
                "edge-node",
                now - Duration::days(2),
                now - Duration::days(1),
            )
            .unwrap();
        drop_pair(&auth, &expired);
        let line = edge.wait_for("node credentials not rotated");
        assert!(line.contains("expired on"), "{line}");

        let early = ca
            .issue_node_valid(
                "edge-node",
                now + Duration::days(1),
                now + Duration::days(2),
            )
            .unwrap();
        drop_pair(&auth, &early);
        let line = edge.wait_for("node credentials not rotated");
        assert!(line.contains("is not valid before"), "{line}");

        let stranger = hub::pki::Authority::new(1).unwrap();
        drop_pair(&auth, &stranger.issue_node("edge-node").unwrap());
        let line = edge.wait_for("node credentials not rotated");
        assert!(
            line.contains("does not verify against the CA in") && line.contains("UnknownIssuer"),
            "{line}"
        );

        drop_pair(&auth, &ca.issue_node("other-node").unwrap());
        let line = edge.wait_for("node credentials not rotated");
        assert!(line.contains("not node edge-node"), "{line}");

        // The cloud is back: the edge connects with the pair that works.
        cloud = common::start_cloud(dir, &pki, &spec);
        edge.wait_for(&format!("connected to the cloud over {}", proto.name()));
        let again = node_connected(&mut cloud.hub, proto);
        assert!(
            again.contains(&format!("serial {}", serial(&good.0))),
            "{again}"
        );
        assert!(
            edge.lines_with("node credentials rotated").is_empty(),
            "no pair was adopted"
        );
        let complaints = edge.lines_with("node credentials not rotated").len();
        assert_eq!(
            complaints, 4,
            "each pair is reported once, not every interval"
        );

        // A good pair is still adopted.
        let next = ca.issue_node("edge-node").unwrap();
        drop_pair(&auth, &next);
        let rotated = edge.wait_for("node credentials rotated");
        assert!(
            rotated.contains(&format!("serial {}", serial(&next.0))),
            "{rotated}"
        );
    }
}

#[test]
fn a_pair_the_cloud_refuses_gives_way_to_the_last_pair_that_worked() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // The cloud's server certificate and the node certificates come from different CAs, so
        // the edge (which trusts the server's CA) cannot tell which CA the cloud accepts nodes
        // from: a pair from a third CA passes its checks and is adopted.
        let server_ca = hub::pki::Authority::new(1).unwrap();
        let node_ca = hub::pki::Authority::new(1).unwrap();
        let stranger = hub::pki::Authority::new(1).unwrap();
        let (server_crt, server_key) = server_ca.issue_server(&["127.0.0.1".into()]).unwrap();
        let good = node_ca.issue_node("edge-node").unwrap();
        let (pki, auth) = layout(
            dir,
            &[
                ("ca.crt", &node_ca.pem().0),
                ("server-ca.crt", &server_ca.pem().0),
                ("server.crt", &server_crt),
                ("server.key", &server_key),
                ("node-edge-node.crt", &good.0),
                ("node-edge-node.key", &good.1),
            ],
        );
        let mut cloud = common::start_cloud(
            dir,
            &pki,
            &CloudSpec {
                keepalive: 2.0,
                ..CloudSpec::default()
            },
        );
        let relay = Relay::start(proto, cloud.port(proto));
        let mut spec = rotating_edge(proto, &pki, &auth, relay.port());
        spec.ca = pki.join("server-ca.crt");
        let mut edge = spec.start(dir);
        edge.wait_for("connected to the cloud");
        node_connected(&mut cloud.hub, proto);

        let refused = stranger.issue_node("edge-node").unwrap();
        drop_pair(&auth, &refused);
        let rotated = edge.wait_for("node credentials rotated");
        assert!(
            rotated.contains(&format!("serial {}", serial(&refused.0))),
            "{rotated}"
        );

        // The next connection presents the new pair; the cloud refuses it.
        relay.blackhole(true);
        edge.wait_for("link to the cloud lost");
        relay.blackhole(false);
        let back = edge.wait_for("going back to");
        assert!(
            back.contains("the cloud refused node certificate")
                && back.contains(&format!("serial {}", serial(&refused.0)))
                // WebSocket: the TLS alert; QUIC: the cloud's reason.
                && (back.contains("UnknownCA") || back.contains("UnknownIssuer"))
                && back.contains(&format!("serial {}", serial(&good.0)))
                && back.contains("the last pair that worked"),
            "{back}"
        );
        edge.wait_for(&format!("connected to the cloud over {}", proto.name()));
        let again = node_connected(&mut cloud.hub, proto);
        assert!(
            again.contains(&format!("serial {}", serial(&good.0))),
            "{again}"
        );
        assert_eq!(
            edge.lines_with("node credentials rotated").len(),
            1,
            "the refused pair, still in the folder, is not adopted again"
        );
    }
}
