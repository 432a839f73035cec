//! Every address a host name resolves to is tried, on both transports: an edge whose `url` names
//! `localhost`, resolving to `::1` first, reaches a cloud that listens on 127.0.0.1 only.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{CloudSpec, EdgeSpec, Hub, Proto};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// Whether this machine lets an unprivileged process give a child its own `/etc/hosts` (a user
/// and mount namespace, `unshare -rm`).
fn private_hosts_available(dir: &Path) -> bool {
    let hosts = dir.join("probe-hosts");
    std::fs::write(&hosts, "::1 probe-only-name\n").unwrap();
    Command::new("unshare")
        .args([
            "-rm",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && getent hosts probe-only-name",
        ])
        .arg(&hosts)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the edge configured in `file` with `hosts` as its `/etc/hosts`.
fn start_edge_with_hosts(name: &str, file: &Path, hosts: &Path) -> Hub {
    let mut command = Command::new("unshare");
    command
        .args([
            "-rm",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(hosts)
        .arg(common::hub_bin())
        .args(["edge", "-c"])
        .arg(file);
    Hub::spawn(name, command)
}

#[test]
fn localhost_resolving_to_ipv6_first_reaches_a_cloud_on_ipv4() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !private_hosts_available(dir) {
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
            Duration::from_secs(10),
        )
        .await
        .expect("the second address answers");
        let took = started.elapsed();
        assert_eq!(conn.remote_address(), good);
        assert!(
            took >= hub::transport::dial::ATTEMPT_DELAY && took < Duration::from_secs(5),
            "the second address is tried after the attempt delay, not after a timeout: {took:?}"
        );
        conn.close(0u32.into(), b"");

        // Nothing answers: the error names every address tried.
        let err = hub::transport::quic::dial(
            &mut endpoints,
            &config,
            &[silent, silent2],
            "localhost",
            &[],
            Duration::from_millis(800),
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
