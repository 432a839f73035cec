//! Cluster mode's foundations with a real `nats-server`: a cloud configured with `cluster.nats`
//! joins, creates its JetStream buckets, refuses to start in one sentence (exit 1) when NATS is
//! not there, and reconnects when NATS comes back.
#![cfg(feature = "cluster")]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::nats::Nats;
use common::{CloudSpec, EdgeSpec, Proto};

fn cluster_section(urls: &[String], instance: &str) -> String {
    let list: String = urls.iter().map(|u| format!("    - {u}\n")).collect();
    format!("cluster:\n  nats:\n{list}  instance: {instance}\n")
}

#[test]
fn a_cloud_joins_and_creates_its_buckets() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let nats = Nats::start(tmp.path(), "n1");
    let spec = CloudSpec {
        extra: cluster_section(&[nats.url()], "cloud-a"),
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let joined = cloud.hub.wait_for("cluster: instance cloud-a joined");
    assert!(joined.contains("NATS server n1 2.9"), "{joined}");
    // The node registry is a file-backed JetStream stream on the server.
    let stream = nats.store.join("jetstream/$G/streams/KV_hub_nodes");
    assert!(stream.is_dir(), "{} is missing", stream.display());
}

#[test]
fn no_nats_at_start_is_one_sentence_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let spec = CloudSpec {
        extra: cluster_section(std::slice::from_ref(&url), "cloud-a"),
        ..CloudSpec::default()
    };
    let file = tmp.path().join("cloud.yaml");
    // The listeners are not reached: the cloud gives up before them.
    let text = format!(
        "cloudhub:\n  port: 0\n  ca: {ca}\n  cert: {cert}\n  key: {key}\napps:\n  listen: 127.0.0.1:0\nqueues:\n  dir: {dir}\nmqtt:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\n{extra}",
        ca = pki.join("ca.crt").display(),
        cert = pki.join("server.crt").display(),
        key = pki.join("server.key").display(),
        dir = tmp.path().join("state").display(),
        extra = spec.extra,
    );
    std::fs::write(&file, text).unwrap();
    let mut hub = common::Hub::start("cloud", &["cloud", "-c", file.to_str().unwrap()]);
    let status = hub.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let errors = hub.lines_with(" ERROR ");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("cannot connect to NATS") && errors[0].contains(&url),
        "{errors:?}"
    );
    assert!(hub.lines_with("panicked").is_empty());
    assert!(hub.lines_with("listening on").is_empty());
}

#[test]
fn the_cloud_reconnects_when_nats_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut nats = Nats::start(tmp.path(), "n1");
    let spec = CloudSpec {
        extra: cluster_section(&[nats.url()], "cloud-a"),
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    cloud.hub.wait_for("cluster: instance cloud-a joined");
    nats.kill9();
    cloud.hub.wait_for("cluster: NATS disconnected");
    nats.restart();
    cloud.hub.wait_for("cluster: NATS connected");
    // The registry works again: a node is admitted through it and listed with its instance.
    let mut edge = EdgeSpec::new(Proto::Quic, &pki, "node-1", cloud.quic_port).start(tmp.path());
    edge.wait_for("connected to the cloud");
    let row = common::apps::node_row(&cloud.apps, "node-1");
    assert_eq!(row["instance"], "cloud-a", "{row}");
}

#[test]
fn two_live_instances_cannot_share_a_name_and_a_restart_can() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let nats = Nats::start(tmp.path(), "n1");
    let spec = |state: &str| CloudSpec {
        state: state.into(),
        extra: cluster_section(&[nats.url()], "cloud-a"),
        ..CloudSpec::default()
    };
    let mut first = common::start_cloud(tmp.path(), &pki, &spec("state-1"));
    first.hub.wait_for("cluster: instance cloud-a joined");

    // A second process with the same instance name: one sentence, exit 1.
    let file = tmp.path().join("second.yaml");
    let text = format!(
        "cloudhub:\n  port: 0\n  ca: {ca}\n  cert: {cert}\n  key: {key}\napps:\n  listen: 127.0.0.1:0\nqueues:\n  dir: {dir}\nmqtt:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\n{extra}",
        ca = pki.join("ca.crt").display(),
        cert = pki.join("server.crt").display(),
        key = pki.join("server.key").display(),
        dir = tmp.path().join("state-2").display(),
        extra = spec("").extra,
    );
    std::fs::write(&file, text).unwrap();
    let mut second = common::Hub::start("second", &["cloud", "-c", file.to_str().unwrap()]);
    assert_eq!(second.wait_exit(Duration::from_secs(20)).code(), Some(1));
    let errors = second.lines_with(" ERROR ");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("another live cloud instance is named cloud-a"),
        "{errors:?}"
    );

    // The first one dies with kill -9 and starts again at once, under its name: it waits for
    // its old entry to go unrefreshed, then joins.
    first.hub.kill9();
    let mut again = common::start_cloud(tmp.path(), &pki, &spec("state-1"));
    again.hub.wait_for("cluster: instance cloud-a joined");
}

/// `cluster.tls-ca`, `tls-cert` and `tls-key` against a nats-server that requires TLS and a
/// client certificate: with all three the cloud joins; without the client certificate, or
/// trusting another CA, it exits with status 1 and one line.
#[test]
fn tls_to_nats_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let nats = Nats::start_tls(tmp.path(), "n1", &pki);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let (crt, key) = hub::pki::node_files("node-1");
    let other = tmp.path().join("other");
    hub::pki::write(&hub::pki::PkiOptions {
        dir: other.clone(),
        nodes: vec!["x".into()],
        hosts: vec!["127.0.0.1".into()],
        days: 1,
        force: false,
    })
    .unwrap();
    let section = |ca: &std::path::Path, client: bool| {
        let mut s = format!(
            "cluster:\n  nats: {url}\n  instance: cloud-a\n  tls-ca: {}\n",
            ca.display()
        );
        if client {
            s += &format!(
                "  tls-cert: {}\n  tls-key: {}\n",
                pki.join(&crt).display(),
                pki.join(&key).display()
            );
        }
        s
    };
    let spec = CloudSpec {
        extra: section(&pki.join("ca.crt"), true),
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    cloud.hub.wait_for("cluster: instance cloud-a joined");
    drop(cloud);

    for (what, extra) in [
        ("no client certificate", section(&pki.join("ca.crt"), false)),
        ("another CA", section(&other.join("ca.crt"), true)),
    ] {
        let file = tmp.path().join(format!("{}.yaml", what.replace(' ', "-")));
        let text = format!(
            "cloudhub:\n  port: 0\n  ca: {ca}\n  cert: {cert}\n  key: {key}\napps:\n  listen: 127.0.0.1:0\nqueues:\n  dir: {dir}\nmqtt:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\n{extra}",
            ca = pki.join("ca.crt").display(),
            cert = pki.join("server.crt").display(),
            key = pki.join("server.key").display(),
            dir = tmp.path().join("state-refused").display(),
        );
        std::fs::write(&file, text).unwrap();
        let mut hub = common::Hub::start(what, &["cloud", "-c", file.to_str().unwrap()]);
        assert_eq!(
            hub.wait_exit(Duration::from_secs(20)).code(),
            Some(1),
            "{what}"
        );
        let errors = hub.lines_with(" ERROR ");
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert!(
            errors[0].contains("cannot connect to NATS") && errors[0].contains(&url),
            "{what}: {errors:?}"
        );
    }
}
