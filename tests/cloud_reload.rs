//! The cloud re-reads its credentials (`ca`, `cert`, `key`) on SIGHUP and when the files change:
//! new handshakes get the new set, connected nodes keep their links, a broken set is refused and
//! the old one kept.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::apps::{block, message, node_row, nodes, receive, subscribe};
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto, start_cloud};
use hub::pki::Authority;
use hub::tls::{CertIdentity, Credentials};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// The node certificate the probes present (never admitted: they send no HELLO).
const PROBE: &str = "probe";

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn serial_of_pem(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertIdentity::from_der(&der).unwrap().serial
}

/// A PKI folder from `ca`: `ca.crt`, `server.crt`/`.key` for 127.0.0.1, and a certificate for
/// each of `nodes` and for [`PROBE`].
fn pki(dir: &Path, ca: &Authority, nodes: &[&str]) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.crt"), ca.pem().0).unwrap();
    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    std::fs::write(pki.join("server.crt"), crt).unwrap();
    std::fs::write(pki.join("server.key"), key).unwrap();
    for node in nodes.iter().chain([&PROBE]) {
        issue_node(ca, &pki, node);
    }
    pki
}

fn issue_node(ca: &Authority, pki: &Path, node: &str) {
    let (crt, key) = ca.issue_node(node).unwrap();
    let (crt_name, key_name) = hub::pki::node_files(node);
    std::fs::write(pki.join(crt_name), crt).unwrap();
    std::fs::write(pki.join(key_name), key).unwrap();
}

fn probe_creds(pki: &Path) -> Credentials {
    let (crt, key) = hub::pki::node_files(PROBE);
    Credentials::load(&pki.join(crt), &pki.join(key)).unwrap()
}

/// The serial of the certificate the cloud serves to a new connection over `proto`, read by a
/// TLS client of its own (a new one each time, so nothing is resumed).
fn served_serial(cloud: &Cloud, proto: Proto, pki: &Path) -> String {
    let ca = pki.join("ca.crt");
    let creds = probe_creds(pki);
    let port = cloud.port(proto);
    let leaf = match proto {
        Proto::Websocket => return tcp_served_serial(port, pki),
        Proto::Quic => block("QUIC probe", async {
            let tls = hub::tls::client_config(&ca, &creds, hub::proto::ALPN, false).unwrap();
            let config = hub::transport::quic::client_config(tls, Duration::from_secs(10)).unwrap();
            let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let conn = endpoint
                .connect_with(config, addr, "127.0.0.1")
                .unwrap()
                .await
                .unwrap();
            let certs = conn
                .peer_identity()
                .unwrap()
                .downcast::<Vec<CertificateDer<'static>>>()
                .unwrap();
            conn.close(0u32.into(), b"probe");
            certs[0].clone()
        }),
    };
    CertIdentity::from_der(&leaf).unwrap().serial
}

/// The serial of the certificate served over TLS on TCP `port`.
fn tcp_served_serial(port: u16, pki: &Path) -> String {
    let config =
        hub::tls::client_config(&pki.join("ca.crt"), &probe_creds(pki), b"http/1.1", false)
            .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    let leaf = tls.peer_certificates().unwrap()[0].clone();
    CertIdentity::from_der(&leaf).unwrap().serial
}

fn assert_served(cloud: &Cloud, pki: &Path, serial: &str, when: &str) {
    for proto in BOTH {
        assert_eq!(
            served_serial(cloud, proto, pki),
            serial,
            "{when}: the certificate served over {}",
            proto.name()
        );
    }
}

/// Issues a new server certificate and key from `ca` and puts them in place of the old ones
/// (each file renamed over its predecessor); returns the new serial.
fn replace_server_pair(ca: &Authority, pki: &Path) -> String {
    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    write_atomically(&pki.join("server.key"), &key);
    write_atomically(&pki.join("server.crt"), &crt);
    serial_of_pem(&crt)
}

/// A connected edge, with an application subscribed to `down` on it.
struct Edge {
    node: String,
    hub: Hub,
    sub: hub::client::Connection,
}

fn connected_edge(dir: &Path, pki: &Path, cloud: &mut Cloud, proto: Proto, node: &str) -> Edge {
    let spec = EdgeSpec::new(proto, pki, node, cloud.port(proto));
    let (mut hub, apps) = common::apps::start_edge(&spec, dir);
    hub.wait_for("connected to the cloud");
    cloud
        .hub
        .wait_for(&format!("node {node} connected over {}", proto.name()));
    let sub = subscribe(&apps, "down");
    Edge {
        node: node.to_owned(),
        hub,
        sub,
    }
}

/// When each connected node's link began, from the cloud's `/nodes`.
fn since(cloud: &Cloud) -> BTreeMap<String, u64> {
    nodes(&cloud.apps)
        .into_iter()
        .filter_map(|r| Some((r["node_id"].as_str()?.to_owned(), r["since"].as_u64()?)))
        .collect()
}

/// Each edge still has the link it had at `before`: a message from a cloud application reaches
/// its application, the cloud admitted it once and never lost it, the edge connected once.
fn assert_links_kept(cloud: &Cloud, edges: &mut [Edge], before: &BTreeMap<String, u64>) {
    for edge in edges.iter_mut() {
        let text = format!("\"after the reload {}\"", edge.node);
        let msg = message(&format!("node/{}/down/check", edge.node), &text);
        block("publish to the node", async {
            let mut ws = hub::client::connect(&cloud.apps, "/").await.unwrap();
            hub::client::publish(&mut ws, &msg).await.unwrap();
        });
        let got = receive(&mut edge.sub, 1);
        assert_eq!(got[0].id, msg.id, "{}: {}", edge.node, got[0].to_json());
        let node = &edge.node;
        let row = node_row(&cloud.apps, node);
        assert_eq!(
            row["since"].as_u64(),
            before.get(node).copied(),
            "{node}: the cloud's link began at the same time: {row}"
        );
        assert_eq!(
            cloud
                .hub
                .lines_with(&format!("node {node} connected"))
                .len(),
            1,
            "{node} was admitted once"
        );
        assert!(
            cloud
                .hub
                .lines_with(&format!("node {node} disconnected"))
                .is_empty(),
            "{node} never lost its link"
        );
        assert_eq!(
            edge.hub.lines_with("connected to the cloud").len(),
            1,
            "{node}: the edge connected once"
        );
    }
}

/// A cloud with nodes `node-1` over WebSocket and `node-2` over QUIC connected.
fn cloud_with_nodes(dir: &Path) -> (Authority, PathBuf, Cloud, Vec<Edge>) {
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &["node-1", "node-2", "node-3"]);
    let mut cloud = start_cloud(dir, &pki, &CloudSpec::default());
    let edges = vec![
        connected_edge(dir, &pki, &mut cloud, Proto::Websocket, "node-1"),
        connected_edge(dir, &pki, &mut cloud, Proto::Quic, "node-2"),
    ];
    (ca, pki, cloud, edges)
}

#[test]
fn on_sighup_new_connections_get_the_new_certificate_and_nodes_keep_their_links() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, pki, mut cloud, mut edges) = cloud_with_nodes(dir);
    let old = serial_of_pem(&std::fs::read_to_string(pki.join("server.crt")).unwrap());
    assert_served(&cloud, &pki, &old, "at start");

    // A SIGHUP with nothing changed neither stops the cloud nor changes anything.
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials re-read (SIGHUP)");
    assert!(line.contains("unchanged") && line.contains(&old), "{line}");

    let before = since(&cloud);
    assert_eq!(before.len(), 2, "{before:?}");
    let new = replace_server_pair(&ca, &pki);
    assert_ne!(new, old);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("reloaded credentials (SIGHUP)");
    assert!(line.contains(&new), "{line}");
    assert!(line.contains("valid until"), "{line}");

    assert_served(&cloud, &pki, &new, "after the reload");
    assert_links_kept(&cloud, &mut edges, &before);
    // And a new node connects with the new certificate.
    connected_edge(dir, &pki, &mut cloud, Proto::Quic, "node-3");
    assert!(cloud.hub.terminate().success(), "a clean stop after it all");
}

#[test]
fn a_changed_file_alone_is_picked_up_also_through_a_swapped_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &["node-1", "node-2"]);
    // The cloud's cert and key are reached through `..data`, a symlink to a folder, as in a
    // mounted Kubernetes secret.
    let v1 = pki.join("v1");
    std::fs::create_dir(&v1).unwrap();
    for f in ["server.crt", "server.key"] {
        std::fs::rename(pki.join(f), v1.join(f)).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(f), pki.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("v1", pki.join("..data")).unwrap();
    let mut cloud = start_cloud(dir, &pki, &CloudSpec::default());
    let mut edges = vec![
        connected_edge(dir, &pki, &mut cloud, Proto::Websocket, "node-1"),
        connected_edge(dir, &pki, &mut cloud, Proto::Quic, "node-2"),
    ];
    let before = since(&cloud);

    // First the files themselves are replaced...
    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    write_atomically(&v1.join("server.key"), &key);
    write_atomically(&v1.join("server.crt"), &crt);
    let line = cloud
        .hub
        .wait_for("reloaded credentials (cert, key changed)");
    assert!(line.contains(&serial_of_pem(&crt)), "{line}");
    assert_served(
        &cloud,
        &pki,
        &serial_of_pem(&crt),
        "after the files changed",
    );

    // ...then the symlink is pointed at a new folder, as Kubernetes and certbot do.
    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let v2 = pki.join("v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("server.crt"), &crt).unwrap();
    std::fs::write(v2.join("server.key"), &key).unwrap();
    std::os::unix::fs::symlink("v2", pki.join("..data_tmp")).unwrap();
    std::fs::rename(pki.join("..data_tmp"), pki.join("..data")).unwrap();
    let line = cloud
        .hub
        .wait_for("reloaded credentials (cert, key changed)");
    assert!(line.contains(&serial_of_pem(&crt)), "{line}");
    assert_served(&cloud, &pki, &serial_of_pem(&crt), "after the symlink swap");

    assert_links_kept(&cloud, &mut edges, &before);
    assert!(
        cloud.hub.lines_with("credentials not reloaded").is_empty(),
        "no half-written set was tried"
    );
}

#[test]
fn a_node_of_a_new_ca_is_refused_until_the_ca_bundle_has_that_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, pki, mut cloud, mut edges) = cloud_with_nodes(dir);
    let before = since(&cloud);
    let new_ca = Authority::new(1).unwrap();
    issue_node(&new_ca, &pki, "node-3");
    issue_node(&new_ca, &pki, "node-4");

    // Both keep trying; the cloud refuses both for their issuer.
    let mut newcomers = Vec::new();
    for (proto, node) in [(Proto::Websocket, "node-3"), (Proto::Quic, "node-4")] {
        let mut spec = EdgeSpec::new(proto, &pki, node, cloud.port(proto));
        spec.backoff_max = 0.5;
        newcomers.push(spec.start(dir));
        cloud.hub.first_line(
            &format!("refusing {node} for its issuer"),
            common::PATIENCE,
            |l| {
                l.contains(&format!("refused {} connection", proto.name()))
                    && l.contains("UnknownIssuer")
            },
        );
    }

    let original = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let bundle = format!("{original}{}", new_ca.pem().0);
    write_atomically(&pki.join("ca.crt"), &bundle);
    let line = cloud.hub.wait_for("reloaded credentials (ca changed)");
    assert!(line.contains("2 CA certificate(s)"), "{line}");
    assert!(!line.contains("taken out"), "{line}");
    for wanted in [
        "node node-3 connected over websocket",
        "node node-4 connected over quic",
    ] {
        cloud
            .hub
            .first_line(wanted, common::PATIENCE, |l| l.contains(wanted));
    }
    for edge in &mut newcomers {
        edge.wait_for("connected to the cloud");
    }
    assert_links_kept(&cloud, &mut edges, &before);

    // Taking the new CA out again keeps the links of its nodes, but says that TLS sessions are
    // forgotten (they were verified against it).
    write_atomically(&pki.join("ca.crt"), &original);
    let line = cloud.hub.wait_for("reloaded credentials (ca changed)");
    assert!(line.contains("1 CA certificate(s)"), "{line}");
    assert!(line.contains("a CA was taken out"), "{line}");
    assert!(cloud.hub.lines_with("node node-3 disconnected").is_empty());
}

#[test]
fn a_broken_set_is_refused_with_one_line_and_the_old_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &["node-1", "node-2", "node-3"]);
    let mut cloud = start_cloud(dir, &pki, &CloudSpec::default());
    let ops = common::http::ops_addr(&mut cloud.hub);
    let reloads = |result: &str| {
        common::http::scrape(
            ops,
            "hub_credential_reloads_total",
            &format!("result=\"{result}\""),
        )
    };
    let expiry =
        || common::http::scrape(ops, "hub_tls_certificate_not_after_timestamp_seconds", "");
    let started = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        expiry() > started,
        "the served certificate expires in the future"
    );
    let old = serial_of_pem(&std::fs::read_to_string(pki.join("server.crt")).unwrap());
    let _node1 = connected_edge(dir, &pki, &mut cloud, Proto::Websocket, "node-1");

    // A new certificate beside the old key (a half-done rotation), applied by SIGHUP.
    let (crt, _) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    write_atomically(&pki.join("server.crt"), &crt);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials not reloaded (SIGHUP)");
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains("server.key") && line.contains("does not belong"),
        "{line}"
    );
    assert!(line.contains(&old), "names what is still served: {line}");
    assert_served(&cloud, &pki, &old, "after a key that does not match");
    let _node2 = connected_edge(dir, &pki, &mut cloud, Proto::Quic, "node-2");

    // A certificate file that is not PEM, found by polling.
    write_atomically(
        &pki.join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let line = cloud
        .hub
        .wait_for("credentials not reloaded (cert changed)");
    assert!(
        line.contains("server.crt") && line.contains("PEM"),
        "{line}"
    );
    assert_served(&cloud, &pki, &old, "after a garbage certificate");
    let _node3 = connected_edge(dir, &pki, &mut cloud, Proto::Websocket, "node-3");

    // A matching pair whose certificate has expired.
    let now = time::OffsetDateTime::now_utc();
    let (crt, key) = ca
        .issue_server_valid(
            &["127.0.0.1".into()],
            now - time::Duration::days(2),
            now - time::Duration::days(1),
        )
        .unwrap();
    write_atomically(&pki.join("server.key"), &key);
    write_atomically(&pki.join("server.crt"), &crt);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials not reloaded (SIGHUP)");
    assert!(
        line.contains("server.crt") && line.contains("expired on"),
        "{line}"
    );
    assert_served(&cloud, &pki, &old, "after an expired certificate");
    assert_eq!((reloads("refused"), reloads("reloaded")), (3.0, 0.0));
    assert!(expiry() > started, "still the old certificate's expiry");

    // A good set again: taken, and each broken set was reported once (polls in between).
    let new = replace_server_pair(&ca, &pki);
    let line = cloud
        .hub
        .wait_for("reloaded credentials (cert, key changed)");
    assert!(line.contains(&new), "{line}");
    assert_served(&cloud, &pki, &new, "after a good set");
    assert_eq!(cloud.hub.lines_with("credentials not reloaded").len(), 3);
    assert_eq!((reloads("refused"), reloads("reloaded")), (3.0, 1.0));
    assert!(cloud.hub.lines_with("disconnected").is_empty());
}

/// The bar: rotating the cloud's certificate with 1,000 nodes connected (500 over each
/// transport, from `hub-bench scale`) drops none of them.
#[test]
fn rotating_the_certificate_under_a_thousand_nodes_drops_none() {
    const NODES: usize = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let names: Vec<String> = (0..NODES).map(|i| format!("sim-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = pki(dir, &ca, &refs);
    let spec = CloudSpec {
        node_limit: 2 * NODES,
        keepalive: 60.0,
        ..CloudSpec::default()
    };
    let mut cloud = start_cloud(dir, &pki, &spec);

    let mut bench = Command::new(env!("CARGO_BIN_EXE_hub-bench"))
        .args(["scale", "--websocket"])
        .arg(format!("127.0.0.1:{}", cloud.ws_port))
        .arg("--quic")
        .arg(format!("127.0.0.1:{}", cloud.quic_port))
        .arg("--pki")
        .arg(&pki)
        .args(["--nodes", &NODES.to_string(), "--until-stdin-ends"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(bench.stdout.take().unwrap()).lines();
    let connected = out.next().unwrap().unwrap();
    eprintln!("hub-bench: {connected}");
    assert!(
        connected.starts_with(&format!("connected {NODES} of {NODES} nodes")),
        "{connected}"
    );
    let before = since(&cloud);
    assert_eq!(before.len(), NODES);

    let new = replace_server_pair(&ca, &pki);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("reloaded credentials (SIGHUP)");
    assert!(line.contains(&new), "{line}");
    assert_served(&cloud, &pki, &new, "after the reload");

    // Every node keeps the link it had.
    assert_eq!(
        since(&cloud),
        before,
        "the same links, begun at the same times"
    );
    assert!(cloud.hub.lines_with("disconnected").is_empty());
    let mut stdin = bench.stdin.take().unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let after = out.next().unwrap().unwrap();
    eprintln!("hub-bench: {after}");
    assert!(bench.wait().unwrap().success());
    assert!(
        after.ends_with(&format!("{NODES} still connected, 0 lost")),
        "{after}"
    );
}

/// Opens a QUIC link as `node` with `config` (whose TLS sessions carry over from one call to the
/// next), says HELLO, waits for the cloud's answer and closes; returns how the handshake went.
fn quic_link_once(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    port: u16,
    node: &str,
) -> Result<hub::transport::quic::Handshake, String> {
    block("a QUIC link", async {
        let mut first = Vec::new();
        let hello = common::raw_hello("proj", node, hub::proto::VERSION);
        hub::proto::frame::encode_len_prefixed(&hello, &mut first);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let (conn, _send, mut recv, how) =
            hub::transport::quic::connect(endpoint, config.clone(), addr, "127.0.0.1", &first)
                .await
                .map_err(|e| e.to_string())?;
        // The answer's length: the handshake and its session tickets are through.
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        Ok(how)
    })
}

fn quic_client(pki: &Path, node: &str) -> quinn::ClientConfig {
    let (crt, key) = hub::pki::node_files(node);
    let creds = Credentials::load(&pki.join(crt), &pki.join(key)).unwrap();
    let tls = hub::tls::client_config(&pki.join("ca.crt"), &creds, hub::proto::ALPN, true).unwrap();
    hub::transport::quic::client_config(tls, Duration::from_secs(10)).unwrap()
}

#[test]
fn tls_sessions_outlive_a_certificate_reload_but_not_the_removal_of_their_ca() {
    use hub::transport::quic::Handshake;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &["node-1"]);
    let other_ca = Authority::new(1).unwrap();
    issue_node(&other_ca, &pki, "node-4");
    let original = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    write_atomically(
        &pki.join("ca.crt"),
        &format!("{original}{}", other_ca.pem().0),
    );
    let mut cloud = start_cloud(dir, &pki, &CloudSpec::default());
    let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
    let (node1, node4) = (quic_client(&pki, "node-1"), quic_client(&pki, "node-4"));
    for (config, node) in [(&node1, "node-1"), (&node4, "node-4")] {
        let how = quic_link_once(&endpoint, config, cloud.quic_port, node);
        assert_eq!(how, Ok(Handshake::OneRtt), "{node}: nothing to resume yet");
    }

    // A new certificate: the sessions stay, so nodes come back with 0-RTT.
    let new = replace_server_pair(&ca, &pki);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("reloaded credentials (SIGHUP)");
    assert!(line.contains(&new) && !line.contains("taken out"), "{line}");
    let how = quic_link_once(&endpoint, &node1, cloud.quic_port, "node-1");
    assert_eq!(
        how,
        Ok(Handshake::ZeroRtt),
        "node-1 resumes across the reload"
    );

    // node-4's CA taken out: its session must not let it in without its certificate checked.
    write_atomically(&pki.join("ca.crt"), &original);
    let line = cloud.hub.wait_for("reloaded credentials (ca changed)");
    assert!(line.contains("a CA was taken out"), "{line}");
    let refused = quic_link_once(&endpoint, &node4, cloud.quic_port, "node-4");
    assert!(refused.is_err(), "node-4 is refused: {refused:?}");
    let line = cloud.hub.wait_for("refused quic connection");
    assert!(line.contains("UnknownIssuer"), "for its issuer: {line}");
    // node-1 lost its session too, and is served after a full handshake.
    let how = quic_link_once(&endpoint, &node1, cloud.quic_port, "node-1");
    assert!(
        matches!(how, Ok(Handshake::ZeroRttRefused | Handshake::OneRtt)),
        "{how:?}"
    );
}

/// Opens a WebSocket link as `node` with `config` (whose TLS sessions carry over from one call
/// to the next) and closes it once upgraded (the cloud's session tickets come before its answer
/// to the upgrade); returns whether the TLS session was resumed.
fn ws_link_once(config: &Arc<rustls::ClientConfig>, port: u16, node: &str) -> Result<bool, String> {
    block("a WebSocket link", async {
        let endpoint = hub::config::Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        let path = format!("/proj/{node}/events");
        let (ws, _) =
            hub::transport::ws::connect(&endpoint, &path, config.clone(), Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
        let kind = ws.get_ref().get_ref().1.handshake_kind();
        Ok(kind == Some(rustls::HandshakeKind::Resumed))
    })
}

fn ws_client(pki: &Path, node: &str) -> Arc<rustls::ClientConfig> {
    let (crt, key) = hub::pki::node_files(node);
    let creds = Credentials::load(&pki.join(crt), &pki.join(key)).unwrap();
    Arc::new(hub::tls::client_config(&pki.join("ca.crt"), &creds, b"http/1.1", false).unwrap())
}

#[test]
fn websocket_tls_sessions_outlive_a_certificate_reload_but_not_the_removal_of_their_ca() {
    // WebSocket's sessions travel in their tickets (the cloud stores none): the key that seals
    // them is what a reload keeps, or replaces when a CA is taken out.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &["node-1"]);
    let other_ca = Authority::new(1).unwrap();
    issue_node(&other_ca, &pki, "node-4");
    let original = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    write_atomically(
        &pki.join("ca.crt"),
        &format!("{original}{}", other_ca.pem().0),
    );
    let mut cloud = start_cloud(dir, &pki, &CloudSpec::default());
    let (node1, node4) = (ws_client(&pki, "node-1"), ws_client(&pki, "node-4"));
    for (config, node) in [(&node1, "node-1"), (&node4, "node-4")] {
        let resumed = ws_link_once(config, cloud.ws_port, node);
        assert_eq!(resumed, Ok(false), "{node}: nothing to resume yet");
        let resumed = ws_link_once(config, cloud.ws_port, node);
        assert_eq!(resumed, Ok(true), "{node}: resumes its session");
    }

    // A new certificate: the sessions stay.
    let new = replace_server_pair(&ca, &pki);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("reloaded credentials (SIGHUP)");
    assert!(line.contains(&new) && !line.contains("taken out"), "{line}");
    let resumed = ws_link_once(&node1, cloud.ws_port, "node-1");
    assert_eq!(resumed, Ok(true), "node-1 resumes across the reload");

    // node-4's CA taken out: its session must not let it in without its certificate checked.
    write_atomically(&pki.join("ca.crt"), &original);
    let line = cloud.hub.wait_for("reloaded credentials (ca changed)");
    assert!(line.contains("a CA was taken out"), "{line}");
    let refused = ws_link_once(&node4, cloud.ws_port, "node-4");
    assert!(refused.is_err(), "node-4 is refused: {refused:?}");
    let line = cloud.hub.wait_for("refused websocket connection");
    assert!(line.contains("UnknownIssuer"), "for its issuer: {line}");
    // node-1 lost its session too, and is served after a full handshake.
    let resumed = ws_link_once(&node1, cloud.ws_port, "node-1");
    assert_eq!(resumed, Ok(false), "node-1 makes a full handshake");
}

#[test]
fn the_mqtt_tls_listener_serves_a_renewed_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Authority::new(1).unwrap();
    let pki = pki(dir, &ca, &[]);
    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let (mqtt_crt, mqtt_key) = (pki.join("mqtt.crt"), pki.join("mqtt.key"));
    std::fs::write(&mqtt_crt, &crt).unwrap();
    std::fs::write(&mqtt_key, &key).unwrap();
    let spec = CloudSpec {
        mqtt_extra: format!(
            "  tls-listen: 127.0.0.1:0\n  tls-cert: {}\n  tls-key: {}\n",
            mqtt_crt.display(),
            mqtt_key.display()
        ),
        ..CloudSpec::default()
    };
    let mut cloud = start_cloud(dir, &pki, &spec);
    let line = cloud
        .hub
        .first_line("the MQTT TLS listener", common::PATIENCE, |l| {
            l.contains("mqtt listening on") && l.ends_with("(TLS)")
        });
    let port: u16 = line
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches(" (TLS)")
        .parse()
        .unwrap();
    assert_eq!(tcp_served_serial(port, &pki), serial_of_pem(&crt));

    let (crt, key) = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    write_atomically(&mqtt_key, &key);
    write_atomically(&mqtt_crt, &crt);
    cloud.hub.wait_for("mqtt TLS listener: reloaded");
    assert_eq!(
        tcp_served_serial(port, &pki),
        serial_of_pem(&crt),
        "the renewed one"
    );

    write_atomically(&mqtt_key, "not a key\n");
    let line = cloud
        .hub
        .wait_for("mqtt TLS listener: credentials not reloaded");
    assert!(line.contains("mqtt.key"), "{line}");
    assert_eq!(
        tcp_served_serial(port, &pki),
        serial_of_pem(&crt),
        "still the last good one"
    );
}
