//! The application endpoint's exposure: on a unix socket it is owner-only from the first moment
//! and carries messages like the TCP endpoint; a file in the socket's way is never removed.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::apps::*;
use common::{CloudSpec, EdgeSpec, Proto};
use hub::client;

#[test]
fn unix_socket_is_owner_only_and_carries_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    // The socket's folder does not exist yet: the hub makes it.
    let sock = tmp.path().join("run/hub/edge.sock");
    let mut spec = EdgeSpec::new(Proto::Quic, &pki, "edge-node", cloud.quic_port);
    spec.apps_extra = format!("  unix: {}\n", sock.display());
    let mut edge = spec.start(tmp.path());
    edge.wait_for(&format!("apps listening on unix:{}", sock.display()));
    edge.wait_for("connected to the cloud");

    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        sock.display()
    );
    let left: Vec<_> = std::fs::read_dir(sock.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["edge.sock"],
        "nothing else is left beside the socket"
    );

    let url = format!("unix:{}", sock.display());
    let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
    let mut at_edge = subscribe(&url, "down");
    block("publish over the unix socket", async {
        let mut ws = client::connect(&url, "/").await.unwrap();
        client::publish(&mut ws, &message("up", "1")).await.unwrap();
    });
    let got = receive(&mut at_cloud, 1);
    assert_eq!(got[0].resource, "node/edge-node/up");
    block("publish to the node", async {
        let mut ws = client::connect(&cloud.apps, "/").await.unwrap();
        client::publish(&mut ws, &message("node/edge-node/down", "2"))
            .await
            .unwrap();
    });
    let got = receive(&mut at_edge, 1);
    assert_eq!(
        (got[0].resource.as_str(), &got[0].content[..]),
        ("down", &b"2"[..])
    );

    // A restart takes the place of the socket its predecessor left behind.
    edge.kill9();
    let mut edge = spec.start(tmp.path());
    edge.wait_for(&format!("apps listening on unix:{}", sock.display()));
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_file_in_the_way_of_the_socket_is_kept_and_the_hub_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let path = tmp.path().join("edge.sock");
    std::fs::write(&path, "precious").unwrap();
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", 9);
    spec.apps_extra = format!("  unix: {}\n", path.display());
    let mut edge = spec.start(tmp.path());
    let status = edge.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let said = edge.lines_with("exists and is not a socket");
    assert_eq!(said.len(), 1, "one clear line");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn a_message_over_the_limit_is_refused_and_the_next_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", 9);
    spec.apps_extra = "  max-message-bytes: 1000\n".into();
    let mut edge = spec.start(tmp.path());
    let url = common::apps_url(&mut edge);
    block("publish", async {
        let mut ws = client::connect(&url, "/").await.unwrap();
        let big = message("big", &format!("\"{}\"", "x".repeat(2000)));
        let err = client::publish(&mut ws, &big).await.unwrap_err();
        assert!(err.contains("over the 1000-byte limit"), "{err}");
        client::publish(&mut ws, &message("small", "1"))
            .await
            .unwrap();
    });
}
