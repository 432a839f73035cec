//! One spelling of a node id everywhere. A certificate for `edge-node` claiming `EDGE-NODE`, ids
//! that are path segments (`.`, `..`), and resources naming such ids are refused with a reason,
//! never mapped onto some node's registry entry, queue or folder, over both transports and from
//! the application endpoint; a real edge then still finds its own queue untouched.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::apps::{block, message, subscribe};
use common::{CloudSpec, EdgeSpec, Proto};
use hub::proto::frame::encode_len_prefixed;

const WAIT: Duration = Duration::from_secs(20);

fn hello(project: &str, node: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_len_prefixed(
        &common::raw_hello(project, node, hub::proto::VERSION),
        &mut out,
    );
    out
}

fn edge_node_tls(pki: &Path, alpn: &[u8]) -> rustls::ClientConfig {
    let (crt, key) = hub::pki::node_files("edge-node");
    let creds = hub::tls::Credentials::load(&pki.join(crt), &pki.join(key)).unwrap();
    hub::tls::client_config(&pki.join("ca.crt"), &creds, alpn, false).unwrap()
}

/// Sends HELLO naming `node` over QUIC with `edge-node`'s certificate; how the cloud closed.
fn quic_hello_as(pki: &Path, port: u16, project: &str, node: &str) -> String {
    block("a QUIC HELLO", async {
        let tls = edge_node_tls(pki, hub::proto::ALPN);
        let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
        let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
        let cloud = SocketAddr::from(([127, 0, 0, 1], port));
        let first = hello(project, node);
        let (conn, _send, _recv, _) =
            hub::transport::quic::connect(&endpoint, config, cloud, "127.0.0.1", &first)
                .await
                .unwrap();
        let end = hub::transport::timeout(WAIT, conn.closed())
            .await
            .expect("the cloud closes a HELLO it refuses");
        match end {
            quinn::ConnectionError::ApplicationClosed(c) => format!(
                "close {} {}",
                c.error_code,
                String::from_utf8_lossy(&c.reason)
            ),
            other => format!("error {other}"),
        }
    })
}

/// Upgrades `path` over WebSocket with `edge-node`'s certificate; the cloud's refusal.
fn ws_upgrade(pki: &Path, port: u16, path: &str) -> String {
    block("a WebSocket upgrade", async {
        let tls = Arc::new(edge_node_tls(pki, b"http/1.1"));
        let ep = hub::config::Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        match hub::transport::ws::connect(&ep, path, tls, WAIT).await {
            Ok(_) => panic!("the cloud upgraded {path}"),
            Err(e) => e.to_string(),
        }
    })
}

#[test]
fn a_certificate_speaks_for_its_node_in_one_spelling_only() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());

    // A command waits for edge-node.
    let accepted = common::apps::publish_numbers(&cloud.apps, "node/edge-node/cmd", 1);
    assert_eq!(accepted, (1, 0));

    // edge-node's certificate, other spellings and path segments as the node id.
    for node in ["EDGE-NODE", "Edge-node", "..", ".", "edge-node."] {
        let end = quic_hello_as(&pki, cloud.quic_port, "proj", node);
        assert_eq!(end, "close 4 identity mismatch", "QUIC HELLO as {node:?}");
        let line = cloud.hub.wait_for("refused quic connection from");
        assert!(line.contains("HELLO's node id"), "{line}");
        assert!(line.contains(&format!("{node:?}")), "{line}");

        let refused = ws_upgrade(&pki, cloud.ws_port, &format!("/proj/{node}/events"));
        assert!(
            refused.starts_with("refused by the cloud: 404"),
            "{refused}"
        );
        assert!(refused.contains("node id"), "{refused}");
    }
    // The same for a project id, over both transports.
    let end = quic_hello_as(&pki, cloud.quic_port, "PROJ", "edge-node");
    assert_eq!(end, "close 4 identity mismatch");
    assert!(
        cloud
            .hub
            .wait_for("refused quic connection from")
            .contains("HELLO's project id \"PROJ\" has the upper-case letter 'P'")
    );
    let refused = ws_upgrade(&pki, cloud.ws_port, "/PROJ/edge-node/events");
    assert!(
        refused.contains("404") && refused.contains("project id"),
        "{refused}"
    );
    assert!(cloud.hub.lines_with("node EDGE").is_empty());
    assert!(cloud.hub.lines_with("connected over").is_empty());

    // None of them touched edge-node's queue: the real edge gets its command.
    let (mut edge, edge_apps) = common::apps::start_edge(
        &EdgeSpec::new(Proto::Quic, &pki, "edge-node", cloud.quic_port),
        tmp.path(),
    );
    let mut sub = subscribe(&edge_apps, "cmd");
    edge.wait_for("connected to the cloud over quic");
    let got = common::apps::receive(&mut sub, 1);
    assert_eq!(got[0].resource, "cmd");
    assert_eq!(common::apps::number(&got[0]), Some(0));
}

#[test]
fn resources_naming_no_node_are_refused_before_they_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let state = tmp.path().join("cloud-state");
    // A folder this hub would never make (an older hub took other spellings).
    std::fs::create_dir_all(state.join("nodes/Gw/out")).unwrap();
    // And a file with a node's name, which is no queue either.
    std::fs::write(state.join("nodes/stray"), b"x").unwrap();
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let mut ignored = cloud.hub.lines_with("not a node's queue");
    ignored.sort();
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(
        ignored
            .iter()
            .any(|l| l.contains("nodes/Gw") && l.contains("upper-case")),
        "{ignored:?}"
    );
    assert!(
        ignored
            .iter()
            .any(|l| l.contains("nodes/stray") && l.contains("not a folder")),
        "{ignored:?}"
    );

    let bin = common::hub_bin();
    for (resource, why) in [
        (
            "node/../cmd",
            "names no node: node id \"..\" must start and end",
        ),
        (
            "node/./cmd",
            "names no node: node id \".\" must start and end",
        ),
        ("node/Gw/cmd", "so write \"gw\""),
        ("node/EDGE-NODE/cmd", "upper-case"),
    ] {
        let out = common::run(&bin, &["pub", "-u", &cloud.apps, "-r", resource, "\"x\""]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{resource} was accepted");
        assert!(stderr.contains(why), "{resource}: {stderr}");
    }

    // Nothing was made for them: no folder beside or under nodes/, no node listed.
    let mut top: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && n != "lock")
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["nodes", "sessions"],
        "only the node queues and the durable sessions at the top"
    );
    let mut nodes: Vec<String> = std::fs::read_dir(state.join("nodes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["Gw", "stray"], "only what was there");
    assert!(common::apps::nodes(&cloud.apps).is_empty());

    // The same through an application's own connection: an error notice, never "accepted".
    let mut app = subscribe(&cloud.apps, "none/");
    block("publish", async {
        let msg = message("node/../cmd", "1");
        app.send(async_tungstenite::tungstenite::Message::text(msg.to_json()))
            .await
            .unwrap();
    });
    let notice = block("the notice", hub::client::next(&mut app))
        .expect("a notice")
        .expect("a message");
    assert_eq!(notice.operation, "error", "{}", notice.to_json());
    assert!(String::from_utf8_lossy(&notice.content).contains("names no node"));

    // After a restart there is still no node, and no node "out".
    cloud.hub.terminate();
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    assert!(common::apps::nodes(&cloud.apps).is_empty());
}
