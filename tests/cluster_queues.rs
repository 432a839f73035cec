//! The cloud-to-node queues in JetStream (docs/cluster.md section 4), through the library
//! against a real `nats-server`: two instances appending to one node's lane number its messages
//! without gaps, acknowledged messages are purged while the numbering holds, a full lane is
//! refused, and a lane's stream id is the same on every instance.
#![cfg(feature = "cluster")]

mod common;

use std::sync::Arc;

use common::nats::Nats;
use hub::cloud::Registry;
use hub::cluster::{Cluster, Limits};
use hub::config::ClusterConfig;
use hub::proto::frame::Lane;

fn start(nats: &Nats, name: &str, lane_messages: u64) -> Arc<Cluster> {
    let config = ClusterConfig {
        servers: vec![nats.url()],
        instance: name.into(),
        tls_ca: None,
        tls_client: None,
        credentials: None,
    };
    let limits = Limits {
        nodes: 100_000,
        lane_messages,
    };
    smol::block_on(Cluster::start(&config, Registry::new(100), limits)).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn appends_from_two_instances_are_numbered_without_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 1000);
    let b = start(&nats, "cloud-b", 1000);
    let per_writer = 40;
    smol::block_on(async {
        let mut tasks = Vec::new();
        for (name, c) in [("a", &a), ("b", &b)] {
            let lane = c.down_lane("node.1", Lane::Bulk);
            tasks.push(smol::spawn(async move {
                for i in 0..per_writer {
                    lane.append(format!("{name}-{i:03}").into_bytes())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
    // A third instance, with nothing cached, reads the lane back.
    let c = start(&nats, "cloud-c", 1000);
    let got = smol::block_on(c.down_lane("node.1", Lane::Bulk).read(1, 1000)).unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=2 * per_writer).collect::<Vec<u64>>());
    for writer in ["a", "b"] {
        let mine: Vec<String> = got
            .iter()
            .map(|(_, m)| text(m))
            .filter(|m| m.starts_with(writer))
            .collect();
        let expected: Vec<String> = (0..per_writer)
            .map(|i| format!("{writer}-{i:03}"))
            .collect();
        assert_eq!(mine, expected, "each writer's messages once, in its order");
    }
}

#[test]
fn acknowledged_messages_are_purged_and_the_numbering_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 1000);
    let lane = a.down_lane("edge-7", Lane::Urgent);
    smol::block_on(async {
        for i in 1..=10 {
            assert_eq!(lane.append(format!("m{i}").into_bytes()).await.unwrap(), i);
        }
        assert_eq!(lane.bounds().await.unwrap(), (1, 10));
        let read = lane.read(1, 100).await.unwrap();
        assert_eq!(read.len(), 10);
        lane.ack(6).await.unwrap();
        assert_eq!(lane.bounds().await.unwrap(), (7, 10));
        let rest = lane.read(7, 100).await.unwrap();
        assert_eq!(
            rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        assert_eq!(text(&rest[0].1), "m7");
        // Everything acknowledged: the lane is empty, and the next message is number 11.
        let _ = lane.read(1, 100).await.unwrap();
        lane.ack(10).await.unwrap();
        assert_eq!(lane.bounds().await.unwrap(), (11, 10));
    });
    // Another instance sees the same: the purged messages are gone from the stream, and its
    // first append continues the numbering.
    let b = start(&nats, "cloud-b", 1000);
    let other = b.down_lane("edge-7", Lane::Urgent);
    smol::block_on(async {
        assert_eq!(other.bounds().await.unwrap(), (11, 10));
        let held = other.read(1, 100).await.unwrap();
        assert_eq!(
            held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [10],
            "only the last acknowledged message is kept (it holds the numbering)"
        );
        assert_eq!(other.append(b"m11".to_vec()).await.unwrap(), 11);
        assert_eq!(other.bounds().await.unwrap(), (11, 11));
    });
}

#[test]
fn the_first_message_of_the_stream_outlives_its_acknowledgement() {
    // A lane whose last message is the stream's very first (JetStream sequence 1): JetStream
    // reads a purge "below sequence 1" as a purge of the whole subject, which would take the
    // message that holds the numbering, and the next append would be numbered 1 again (and
    // dropped by the node as a repeat).
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 1000);
    let b = start(&nats, "cloud-b", 1000);
    let lane = a.down_lane("edge-1", Lane::Bulk);
    smol::block_on(async {
        assert_eq!(lane.append(b"m1".to_vec()).await.unwrap(), 1);
        assert_eq!(lane.read(1, 10).await.unwrap().len(), 1);
        lane.ack(1).await.unwrap();
        // Another instance, with nothing cached, numbers on.
        let other = b.down_lane("edge-1", Lane::Bulk);
        assert_eq!(other.bounds().await.unwrap(), (2, 1));
        assert_eq!(other.append(b"m2".to_vec()).await.unwrap(), 2);
    });
}

#[test]
fn a_full_lane_is_refused_and_the_other_lane_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 5);
    smol::block_on(async {
        let bulk = a.down_lane("edge-7", Lane::Bulk);
        for i in 1..=5 {
            assert_eq!(bulk.append(vec![b'x']).await.unwrap(), i);
        }
        let full = bulk.append(vec![b'x']).await.unwrap_err();
        assert!(full.contains("queue full"), "{full}");
        let urgent = a.down_lane("edge-7", Lane::Urgent);
        assert_eq!(urgent.append(vec![b'y']).await.unwrap(), 1);
        // What was accepted is all there, and the refused message is not.
        let held = bulk.read(1, 100).await.unwrap();
        assert_eq!(held.len(), 5);
    });
}

#[test]
fn a_lane_has_one_stream_id_on_every_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 100);
    let b = start(&nats, "cloud-b", 100);
    smol::block_on(async {
        let ids = futures_util::future::join_all([
            a.down_lane("edge-7", Lane::Bulk).stream_id(),
            b.down_lane("edge-7", Lane::Bulk).stream_id(),
        ])
        .await;
        let (x, y) = (ids[0].clone().unwrap(), ids[1].clone().unwrap());
        assert_ne!(x, 0);
        assert_eq!(x, y);
        assert_eq!(
            b.down_lane("edge-7", Lane::Bulk).stream_id().await.unwrap(),
            x
        );
        let urgent = a
            .down_lane("edge-7", Lane::Urgent)
            .stream_id()
            .await
            .unwrap();
        assert_ne!(urgent, x, "each lane has its own");
    });
}

/// Figures, not a check (run with `--ignored --nocapture`): the cost of the registry and of the
/// cloud-to-node store on a local nats-server. Each figure is a NATS round trip or more per
/// operation, so it depends on the machine and its load.
#[test]
#[ignore]
fn figures() {
    use std::net::SocketAddr;
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(tmp.path(), "n1");
    let a = start(&nats, "cloud-a", 1_000_000);
    let b = start(&nats, "cloud-b", 1_000_000);
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let n = 300u64;
    smol::block_on(async {
        let t = Instant::now();
        let mut held = Vec::new();
        for i in 0..n {
            let node = format!("seq-{i}");
            held.push(
                a.admit(&node, i, hub::config::Protocol::Quic, peer)
                    .await
                    .unwrap(),
            );
        }
        let e = t.elapsed();
        println!(
            "registry: {n} admissions in a row on one instance: {:.2} ms each ({:.0}/s)",
            e.as_secs_f64() * 1e3 / n as f64,
            n as f64 / e.as_secs_f64()
        );
        drop(held);

        let t = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let c = if i % 2 == 0 { a.clone() } else { b.clone() };
                smol::spawn(async move {
                    let node = format!("race-{i}");
                    c.admit(&node, 1000 + i, hub::config::Protocol::Quic, peer)
                        .await
                })
            })
            .collect();
        let mut ok = Vec::new();
        for task in tasks {
            ok.push(task.await.unwrap());
        }
        let e = t.elapsed();
        println!(
            "registry: {n} admissions at once on two instances: {:.2} s in all ({:.0}/s)",
            e.as_secs_f64(),
            n as f64 / e.as_secs_f64()
        );
        drop(ok);

        let record = vec![b'x'; 200];
        let lane = a.down_lane("fig-1", Lane::Bulk);
        let t = Instant::now();
        for _ in 0..n {
            lane.append(record.clone()).await.unwrap();
        }
        let e = t.elapsed();
        println!(
            "down lane: {n} appends of 200 bytes in a row, one instance: {:.2} ms each ({:.0}/s)",
            e.as_secs_f64() * 1e3 / n as f64,
            n as f64 / e.as_secs_f64()
        );

        let t = Instant::now();
        let tasks: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|c| {
                let record = record.clone();
                smol::spawn(async move {
                    let lane = c.down_lane("fig-2", Lane::Bulk);
                    for _ in 0..n / 2 {
                        lane.append(record.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let e = t.elapsed();
        println!(
            "down lane: {n} appends to one lane from two instances at once: {:.0}/s",
            n as f64 / e.as_secs_f64()
        );

        let lanes = 8;
        let t = Instant::now();
        let tasks: Vec<_> = (0..lanes)
            .map(|l| {
                let lane = a.down_lane(&format!("fig-many-{l}"), Lane::Bulk);
                let record = record.clone();
                smol::spawn(async move {
                    for _ in 0..n / lanes {
                        lane.append(record.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let e = t.elapsed();
        println!(
            "down lane: {n} appends spread over {lanes} lanes at once, one instance: {:.0}/s",
            n as f64 / e.as_secs_f64()
        );

        let t = Instant::now();
        let got = lane.read(1, n as usize).await.unwrap();
        let e = t.elapsed();
        assert_eq!(got.len() as u64, n);
        println!(
            "down lane: reading {n} messages back (direct get, one at a time): {:.0}/s",
            n as f64 / e.as_secs_f64()
        );
    });
}
