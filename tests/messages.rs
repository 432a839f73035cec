//! Messages end to end between real `hub cloud` and `hub edge` processes: order in both
//! directions, requests and their errors, nodes that connect late, and full queues. Crashes and
//! network faults are in `faults.rs`.

mod common;

use std::time::{Duration, Instant};

use common::apps::*;
use common::{CloudSpec, EdgeSpec, Proto, Relay};
use hub::client;
use hub::message::Message;

#[test]
fn both_directions_keep_order() {
    const N: u64 = 10_000;
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);

        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/up");
        let mut at_edge = subscribe(&edge_apps, "down");
        let started = Instant::now();
        let up = {
            let url = edge_apps.clone();
            std::thread::spawn(move || publish_numbers(&url, "up/readings", N))
        };
        let down = {
            let url = cloud.apps.clone();
            std::thread::spawn(move || publish_numbers(&url, "node/edge-node/down/cmd", N))
        };
        let from_edge = std::thread::spawn(move || (receive(&mut at_cloud, N as usize), at_cloud));
        let from_cloud = receive(&mut at_edge, N as usize);
        let (from_edge, mut at_cloud) = from_edge.join().unwrap();
        assert_eq!(up.join().unwrap(), (N, 0), "{proto:?}: edge publishes");
        assert_eq!(down.join().unwrap(), (N, 0), "{proto:?}: cloud publishes");
        assert_numbers_in_order(&from_edge, "node/edge-node/up/readings", N);
        assert_numbers_in_order(&from_cloud, "down/cmd", N);
        // Nothing more, no repeats.
        assert_next_is_marker(&edge_apps, "up/readings", &mut at_cloud);
        assert_next_is_marker(&cloud.apps, "node/edge-node/down/cmd", &mut at_edge);
        eprintln!(
            "{proto:?}: {N} messages each way in {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn request_response_and_timeouts() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        {
            let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
            let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
            // Nobody on the cloud subscribed to what an edge application asks.
            let err = ask(&edge_apps, &request("nobody/here", "1")).unwrap_err();
            assert!(
                err.contains("no application subscribed"),
                "{proto:?}: {err}"
            );

            let mut watcher = subscribe(&cloud.apps, "node/");

            // A cloud application asks the edge's application.
            let responder = spawn_responder(subscribe(&edge_apps, "ping"), 3);
            let mut asked = Vec::new();
            for i in 0..3 {
                let req = request("node/edge-node/ping/x", &format!("{{\"n\":{i}}}"));
                let answer = ask(&cloud.apps, &req)
                    .unwrap_or_else(|e| panic!("{proto:?}: request {i} failed: {e}"));
                assert_eq!(answer.parent_id, req.id, "{}", answer.to_json());
                assert_eq!(answer.content, req.content, "{}", answer.to_json());
                assert_eq!(answer.operation, "response");
                assert_eq!(answer.resource, "node/edge-node/ping/x");
                asked.push(req);
            }
            let seen = responder.join().unwrap();
            for (req, seen) in asked.iter().zip(&seen) {
                // A request travels under an id its hub made, so that requests of different
                // applications never share one; the answer is mapped back to the asker's id.
                assert_ne!(seen.id, req.id);
                assert_eq!(seen.resource, "ping/x", "without the node prefix");
                assert_eq!(seen.content, req.content);
            }
            // The answers went to the askers only: the watcher of everything from the node sees
            // the next message from the edge and nothing before it.
            let edge_pub = edge_apps.clone();
            block("publish", async move {
                let mut ws = client::connect(&edge_pub, "/").await.unwrap();
                client::publish(&mut ws, &message("marker", "\"after the answers\""))
                    .await
                    .unwrap();
            });
            let watched = receive(&mut watcher, 1);
            assert_eq!(
                watched[0].resource,
                "node/edge-node/marker",
                "the watcher got {}",
                watched[0].to_json()
            );

            // Nobody on the edge subscribed to the resource.
            let err = ask(&cloud.apps, &request("node/edge-node/nobody/here", "1")).unwrap_err();
            assert!(
                err.contains("no application subscribed"),
                "{proto:?}: {err}"
            );

            // An edge application asks a cloud application.
            let responder = spawn_responder(subscribe(&cloud.apps, "node/edge-node/ask"), 1);
            let req = request("ask/temp", "\"what temperature?\"");
            let answer = ask(&edge_apps, &req).unwrap_or_else(|e| panic!("{proto:?}: {e}"));
            assert_eq!(answer.parent_id, req.id, "{}", answer.to_json());
            assert_eq!(answer.content, req.content);
            assert_eq!(answer.resource, "ask/temp", "{}", answer.to_json());
            let seen = responder.join().unwrap();
            assert_eq!(seen[0].resource, "node/edge-node/ask/temp");
        }

        // An edge application that never answers, with a one-second request timeout.
        let spec = CloudSpec {
            apps_extra: "  request-timeout: 1\n".into(),
            state: "cloud-state-timeout".into(),
            ..CloudSpec::default()
        };
        let cloud = common::start_cloud(tmp.path(), &pki, &spec);
        let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
        let mut silent = subscribe(&edge_apps, "ping");
        let req = request("node/edge-node/ping", "\"anyone?\"");
        let asked = Instant::now();
        let err = ask(&cloud.apps, &req).unwrap_err();
        let took = asked.elapsed();
        assert!(err.contains("no response within 1.0s"), "{proto:?}: {err}");
        assert!(took >= Duration::from_millis(900), "{err} after {took:?}");
        let got = receive(&mut silent, 1);
        assert!(
            got[0].sync && got[0].content == req.content,
            "{}",
            got[0].to_json()
        );
    }
}

#[test]
fn offline_node_gets_messages_when_it_connects() {
    const N: u64 = 20;
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    for (proto, node) in [(Proto::Websocket, "node-1"), (Proto::Quic, "node-2")] {
        assert!(
            node_row(&cloud.apps, node).is_null(),
            "{node} never connected"
        );
        let resource = format!("node/{node}/config/x");
        assert_eq!(publish_numbers(&cloud.apps, &resource, N), (N, 0));
        let mut edge = HeldEdge::start(tmp.path(), &pki, proto, node, cloud.port(proto));
        let mut sub = subscribe(&edge.apps, "config/");
        edge.release();
        let got = receive(&mut sub, N as usize);
        assert_numbers_in_order(&got, "config/x", N);
    }
}

#[test]
fn full_outbox_refuses_and_keeps_what_it_accepted() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let spec = CloudSpec {
            queues_extra: "  max-messages: 20\n".into(),
            ..CloudSpec::default()
        };
        let cloud = common::start_cloud(tmp.path(), &pki, &spec);

        // The edge's outbox: 50 at most, and nothing drains while the link is blackholed.
        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
        let relay = Relay::start(proto, cloud.port(proto));
        relay.blackhole(true);
        let mut edge_spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
        edge_spec.outbox_extra = "  max-messages: 50\n".into();
        edge_spec.state = Some(tmp.path().join("edge-outbox"));
        let (mut edge, apps) = start_edge(&edge_spec, tmp.path());
        let msgs: Vec<Message> = (0..60).map(|i| message("full", &i.to_string())).collect();
        let results = block("publish", async {
            let ws = client::connect(&apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |_| {}).await
        });
        assert_eq!(results.len(), 60);
        assert!(results[..50].iter().all(Result::is_ok), "{results:?}");
        for r in &results[50..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("queue full"), "{proto:?}: {e}");
        }
        edge.kill9();
        drop(relay);

        // Restarted with the same outbox and a working link: the 50 arrive, and only they.
        edge_spec.port = cloud.port(proto);
        let (_edge, apps) = start_edge(&edge_spec, tmp.path());
        let got = receive(&mut at_cloud, 50);
        assert_numbers_in_order(&got, "node/edge-node/full", 50);
        publish_when_room(&apps, &message("full", "\"room again\""));
        let next = receive(&mut at_cloud, 1);
        assert_eq!(next[0].content, b"\"room again\"", "{}", next[0].to_json());

        // The cloud's queue for an offline node: 20 at most.
        let msgs: Vec<Message> = (0..25)
            .map(|i| message("node/node-1/full", &i.to_string()))
            .collect();
        let results = block("publish", async {
            let ws = client::connect(&cloud.apps, "/").await.unwrap();
            publish_tracked(ws, &msgs, |_| {}).await
        });
        assert_eq!(results.len(), 25);
        assert!(results[..20].iter().all(Result::is_ok), "{results:?}");
        for r in &results[20..] {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("queue full"), "{proto:?}: {e}");
        }
        assert_eq!(node_row(&cloud.apps, "node-1")["queued"], 20);
        let mut edge = HeldEdge::start(tmp.path(), &pki, proto, "node-1", cloud.port(proto));
        let mut sub = subscribe(&edge.apps, "full");
        edge.release();
        let got = receive(&mut sub, 20);
        assert_numbers_in_order(&got, "full", 20);
        publish_when_room(&cloud.apps, &message("node/node-1/full", "\"room again\""));
        let next = receive(&mut sub, 1);
        assert_eq!(next[0].content, b"\"room again\"", "{}", next[0].to_json());
    }
}

/// A message of about 1 MiB (the applications' limit) each way over each transport, between
/// small ones: the link's buffers are sized for idle nodes (a 4 KiB WebSocket read buffer, queues
/// allocated as frames arrive) and must still carry it whole and in order.
#[test]
fn a_message_of_a_mebibyte_crosses_each_way() {
    // A JSON string under the default `apps.max-message-bytes` (1 MiB) with the envelope; not a
    // repeating pattern of the read size, so a piece out of place shows.
    let big: String = std::iter::once('"')
        .chain((0..1_000_000u32).map(|i| char::from(b'a' + (i % 23) as u8)))
        .chain(std::iter::once('"'))
        .collect();
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let pki = common::link_pki(tmp.path());
        let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
        let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, proto, &cloud);
        let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/up");
        let mut at_edge = subscribe(&edge_apps, "down");
        for (url, resource) in [
            (&edge_apps, "up/big"),
            (&cloud.apps, "node/edge-node/down/big"),
        ] {
            let msgs: Vec<Message> = ["1", big.as_str(), "2"]
                .into_iter()
                .map(|content| message(resource, content))
                .collect();
            let results = block("publish", async {
                let ws = client::connect(url, "/").await.unwrap();
                publish_tracked(ws, &msgs, |_| {}).await
            });
            assert!(
                results.len() == 3 && results.iter().all(Result::is_ok),
                "{proto:?}: {results:?}"
            );
        }
        for (sub, resource) in [
            (&mut at_cloud, "node/edge-node/up/big"),
            (&mut at_edge, "down/big"),
        ] {
            let got = receive(sub, 3);
            let contents: Vec<&[u8]> = got.iter().map(|m| m.content.as_slice()).collect();
            assert!(got.iter().all(|m| m.resource == resource), "{proto:?}");
            assert_eq!(contents[0], b"1", "{proto:?}");
            assert_eq!(contents[1].len(), big.len(), "{proto:?}: {resource}");
            assert!(
                contents[1] == big.as_bytes(),
                "{proto:?}: {resource} arrived changed"
            );
            assert_eq!(contents[2], b"2", "{proto:?}");
        }
    }
}
