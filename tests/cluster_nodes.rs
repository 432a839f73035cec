//! The shared node registry of cluster mode, with real cloud instances on one real `nats-server`:
//! every instance lists every node and where it is, a node moving to another instance replaces
//! its link on the first, `node-limit` holds across the cluster (also for admissions racing on
//! two instances), and a dead instance's nodes stop being listed within a bounded time.
#![cfg(feature = "cluster")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::apps::{eventually, node_row, nodes};
use common::nats::Nats;
use common::{Cloud, CloudSpec, EdgeSpec, Proto};
use hub::cloud::Registry;
use hub::cluster::{Cluster, LIVE_FOR, Limits, Refused};
use hub::config::{ClusterConfig, Protocol};

fn instance(
    dir: &std::path::Path,
    pki: &std::path::Path,
    nats: &Nats,
    name: &str,
    limit: usize,
) -> Cloud {
    let spec = CloudSpec {
        node_limit: limit,
        state: format!("state-{name}"),
        extra: format!("cluster:\n  nats: {}\n  instance: {name}\n", nats.url()),
        ..CloudSpec::default()
    };
    let mut cloud = common::start_cloud(dir, pki, &spec);
    cloud
        .hub
        .wait_for(&format!("cluster: instance {name} joined"));
    cloud
}

#[test]
fn every_instance_lists_every_node_and_where_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let nats = Nats::start(tmp.path(), "n1");
    let a = instance(tmp.path(), &pki, &nats, "cloud-a", 10);
    let b = instance(tmp.path(), &pki, &nats, "cloud-b", 10);
    let mut one = EdgeSpec::new(Proto::Quic, &pki, "node-1", a.quic_port).start(tmp.path());
    one.wait_for("connected to the cloud");
    let mut two = EdgeSpec::new(Proto::Websocket, &pki, "node-2", b.ws_port).start(tmp.path());
    two.wait_for("connected to the cloud");
    for cloud in [&a, &b] {
        eventually("both nodes listed", || {
            let rows = nodes(&cloud.apps);
            rows.len() == 2 && rows.iter().all(|r| r["instance"].is_string())
        });
        let rows = nodes(&cloud.apps);
        assert_eq!(rows[0]["node_id"], "node-1", "{rows:?}");
        assert_eq!(rows[0]["instance"], "cloud-a");
        assert_eq!(rows[0]["protocol"], "quic");
        assert_eq!(rows[1]["node_id"], "node-2");
        assert_eq!(rows[1]["instance"], "cloud-b");
        assert_eq!(rows[1]["protocol"], "websocket");
        for r in &rows {
            assert!(
                r["address"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{r}"
            );
            assert!(r["since"].as_u64().unwrap() > 0, "{r}");
        }
    }
    // `hub nodes` prints the instance column.
    let out = common::run(&common::hub_bin(), &["nodes", "-u", &b.apps]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("INSTANCE"), "{text}");
    assert!(
        lines[1].starts_with("node-1") && lines[1].contains("cloud-a"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("node-2") && lines[2].contains("cloud-b"),
        "{text}"
    );
}

#[test]
fn a_node_that_moves_to_another_instance_replaces_its_link_there() {
    for proto in [Proto::Websocket, Proto::Quic] {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let nats = Nats::start(tmp.path(), "n1");
        let mut a = instance(tmp.path(), &pki, &nats, "cloud-a", 10);
        let b = instance(tmp.path(), &pki, &nats, "cloud-b", 10);
        let mut spec = EdgeSpec::new(proto, &pki, "node-1", a.port(proto));
        // The pushed-out edge waits before retrying, so the test sees one replacement.
        spec.backoff_initial = 30.0;
        spec.backoff_max = 30.0;
        let mut old = spec.start(tmp.path());
        old.wait_for("connected to the cloud");
        a.hub.wait_for("node node-1 connected");

        spec.port = b.port(proto);
        let mut new = spec.start(tmp.path());
        new.wait_for("connected to the cloud");
        let lost = old.wait_for("link to the cloud lost");
        assert!(
            lost.ends_with("closed by the peer: replaced by a newer connection"),
            "{lost}"
        );
        let logged = a.hub.wait_for("node node-1 disconnected");
        assert!(
            logged.ends_with("replaced by a newer connection"),
            "{logged}"
        );
        eventually("node-1 listed at cloud-b on cloud-a", || {
            node_row(&a.apps, "node-1")["instance"] == "cloud-b"
        });
        assert_eq!(node_row(&b.apps, "node-1")["instance"], "cloud-b");
        assert!(new.lines_with("link to the cloud lost").is_empty());
    }
}

#[test]
fn node_limit_holds_across_the_cluster_and_a_dead_instance_frees_its_share() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let nats = Nats::start(tmp.path(), "n1");
    let mut a = instance(tmp.path(), &pki, &nats, "cloud-a", 1);
    let mut b = instance(tmp.path(), &pki, &nats, "cloud-b", 1);
    let mut one = EdgeSpec::new(Proto::Quic, &pki, "node-1", a.quic_port).start(tmp.path());
    one.wait_for("connected to the cloud");

    let mut two = EdgeSpec::new(Proto::Quic, &pki, "node-2", b.quic_port).start(tmp.path());
    let refused = two.wait_for("cannot connect to the cloud");
    assert!(refused.contains("node limit reached"), "{refused}");
    let logged = b.hub.wait_for("refused quic connection from");
    assert!(
        logged.contains("node-2") && logged.contains("1 nodes connected across the cluster"),
        "{logged}"
    );
    two.wait_for("cannot connect to the cloud"); // and again: it keeps being refused
    // Over WebSocket the refusal comes before the upgrade, as HTTP 503, as on a single cloud.
    let mut ws = EdgeSpec::new(Proto::Websocket, &pki, "node-3", b.ws_port).start(tmp.path());
    let refused = ws.wait_for("cannot connect to the cloud");
    assert!(
        refused.contains("503") && refused.contains("node limit reached"),
        "{refused}"
    );
    drop(ws);

    // cloud-a dies with node-1 on it: within LIVE_FOR it is no longer listed, and node-2 (still
    // retrying) gets its place on cloud-b.
    a.hub.kill9();
    let killed = Instant::now();
    eventually("node-1 gone from cloud-b's list", || {
        node_row(&b.apps, "node-1").is_null()
    });
    let gone = killed.elapsed();
    // The bound: LIVE_FOR after cloud-a's last refresh (at most a heartbeat before the kill),
    // plus the list requests' time on a loaded machine.
    assert!(gone < LIVE_FOR + Duration::from_secs(2), "{gone:?}");
    two.wait_for("connected to the cloud");
    b.hub.wait_for("node node-2 connected");
    assert_eq!(node_row(&b.apps, "node-2")["instance"], "cloud-b");
    drop(one);
}

/// The one NATS server restarts (same store): the instances' liveness entries outlive it, so an
/// instance that dies afterwards still stops being listed within a bounded time.
#[test]
fn after_a_nats_restart_a_dead_instance_still_drops_out() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut nats = Nats::start(tmp.path(), "n1");
    let a = instance(tmp.path(), &pki, &nats, "cloud-a", 10);
    let mut b = instance(tmp.path(), &pki, &nats, "cloud-b", 10);
    let mut one = EdgeSpec::new(Proto::Websocket, &pki, "node-1", b.ws_port).start(tmp.path());
    one.wait_for("connected to the cloud");
    eventually("node-1 listed on cloud-a", || {
        !node_row(&a.apps, "node-1").is_null()
    });
    nats.kill9();
    nats.restart();
    b.hub.wait_for("cluster: NATS connected");
    b.hub.kill9();
    let killed = Instant::now();
    eventually("node-1 gone from cloud-a's list", || {
        node_row(&a.apps, "node-1").is_null()
    });
    let gone = killed.elapsed();
    assert!(gone < LIVE_FOR + Duration::from_secs(5), "{gone:?}");
    drop(one);
}

/// Admissions of different nodes racing on four instances with `node-limit` 3, in five rounds:
/// exactly three get in each round, whatever the interleaving (each admission is a
/// compare-and-set over the whole registry bucket; an instance's own admissions go one at a
/// time, so four race at any moment).
#[test]
fn racing_admissions_on_four_instances_hold_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let config = |name: &str| ClusterConfig {
        servers: vec![nats.url()],
        instance: name.into(),
        tls_ca: None,
        tls_client: None,
        credentials: None,
    };
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    smol::block_on(async {
        let limit = 3;
        let limits = Limits {
            nodes: limit,
            lane_messages: 100,
        };
        let mut instances: Vec<Arc<Cluster>> = Vec::new();
        for name in ["race-a", "race-b", "race-c", "race-d"] {
            let c = Cluster::start(&config(name), Registry::new(100), limits).await;
            instances.push(c.unwrap());
        }
        let listed = |all: &[Arc<Cluster>]| -> usize {
            // Each node is listed as remote by the three instances that do not hold it.
            all.iter().map(|c| c.remote_nodes().len()).sum()
        };
        for round in 0..5u64 {
            let tasks: Vec<_> = (0..24u64)
                .map(|i| {
                    let c = instances[(i % 4) as usize].clone();
                    smol::spawn(async move {
                        let node = format!("racer-{round}-{i}");
                        c.admit(&node, round * 100 + i, Protocol::Quic, peer).await
                    })
                })
                .collect();
            let mut admitted = Vec::new();
            let mut refused = 0;
            for t in tasks {
                match t.await {
                    Ok(entry) => admitted.push(entry),
                    Err(Refused::NodeLimit(3)) => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            assert_eq!(admitted.len(), limit, "admitted in round {round}");
            assert_eq!(refused, 24 - limit);
            let deadline = Instant::now() + Duration::from_secs(10);
            while listed(&instances) != 3 * limit {
                assert!(Instant::now() < deadline, "{}", listed(&instances));
                smol::Timer::after(Duration::from_millis(20)).await;
            }
            // The round's nodes leave; every instance sees the registry empty again.
            drop(admitted);
            while listed(&instances) != 0 {
                assert!(Instant::now() < deadline, "{}", listed(&instances));
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        }
    });
}

/// On a three-server NATS cluster (buckets replicated on all three), the registry survives the
/// loss of the server an instance is connected to: the instance moves to another server, nodes
/// stay listed on both instances, and new admissions and node-limit keep working.
#[test]
fn the_registry_survives_a_nats_server_of_three_dying() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut servers = common::nats::cluster3(tmp.path());
    // Each instance is given every server, its own first.
    let urls = |first: usize| -> String {
        (0..3)
            .map(|i| format!("    - {}\n", servers[(first + i) % 3].url()))
            .collect()
    };
    let start = |name: &str, first: usize| {
        let spec = CloudSpec {
            node_limit: 2,
            state: format!("state-{name}"),
            extra: format!("cluster:\n  nats:\n{}  instance: {name}\n", urls(first)),
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let joined = cloud
            .hub
            .wait_for(&format!("cluster: instance {name} joined"));
        assert!(joined.contains("buckets on 3 server(s)"), "{joined}");
        // "(NATS server nK 2.9.10, ...": the server it is connected to.
        let server = joined.split("NATS server n").nth(1).unwrap();
        let k: usize = server[..1].parse().unwrap();
        (cloud, k - 1)
    };
    let (mut a, a_server) = start("cloud-a", 0);
    let (b, _) = start("cloud-b", 1);
    let mut one = EdgeSpec::new(Proto::Quic, &pki, "node-1", a.quic_port).start(tmp.path());
    one.wait_for("connected to the cloud");

    // cloud-a's server dies: cloud-a reconnects to another; the registry is still there.
    servers[a_server].kill9();
    a.hub.wait_for("cluster: NATS disconnected");
    a.hub.wait_for("cluster: NATS connected");
    let mut two = EdgeSpec::new(Proto::Quic, &pki, "node-2", b.quic_port).start(tmp.path());
    two.wait_for("connected to the cloud");
    for cloud in [&a, &b] {
        eventually("both nodes listed on both instances", || {
            let rows = nodes(&cloud.apps);
            rows.len() == 2 && rows[0]["instance"] == "cloud-a" && rows[1]["instance"] == "cloud-b"
        });
    }
    // node-limit (2) still holds, through the two surviving servers.
    let mut three = EdgeSpec::new(Proto::Quic, &pki, "node-3", a.quic_port).start(tmp.path());
    let refused = three.wait_for("cannot connect to the cloud");
    assert!(refused.contains("node limit reached"), "{refused}");
    assert!(one.lines_with("link to the cloud lost").is_empty());
}
