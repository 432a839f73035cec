//! The MQTT listeners of both hubs, end to end, with clients nobody in this project wrote:
//! Debian's `mosquitto_pub` / `mosquitto_sub`, paho-mqtt 2.x (MQTT 3.1.1 and 5.0, driven through
//! `tests/mqtt/driver.py`), raw TCP for packets no library sends, and the WebSocket API beside
//! them. A real cloud and a real edge each time, with the dev PKI; their MQTT ports come from the
//! `mqtt listening on ...` log lines. `make test-deps` installs the clients; without them these
//! tests fail, naming what is missing.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use async_tungstenite::tungstenite::Message as WsMessage;
use common::apps;
use common::mqtt::{self, Hubs, MosquittoSub, NODE, Paho, Received};
use common::{CloudSpec, Proto};
use hub::client;
use serde_json::json;

/// The cloud's topic for the edge's topic `t`.
fn up(t: &str) -> String {
    format!("node/{NODE}/{t}")
}

fn hubs() -> Hubs {
    Hubs::start(Proto::Websocket, CloudSpec::default(), "")
}

/// Checks that `got` are messages on `topic` with payloads `0..n` in order, at `qos`.
fn assert_in_order(got: &[Received], topic: &str, n: u64, qos: u8) {
    assert_eq!(got.len() as u64, n);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            (m.topic.as_str(), m.payload.as_str(), m.qos),
            (topic, i.to_string().as_str(), qos),
            "message {i}"
        );
    }
}

/// Numbers received (`got`, repeats allowed) checked against those acknowledged to the publisher:
/// every acknowledged number is there, and the first arrivals come in increasing order.
fn assert_acked_arrived_in_order(got: &[Received], acked: &[u64]) {
    let mut seen = BTreeSet::new();
    let mut last = None;
    for m in got {
        let n: u64 = m.payload.parse().unwrap();
        if seen.insert(n) {
            assert!(
                last.is_none_or(|l| n > l),
                "{n} arrived for the first time after {last:?}: out of order"
            );
            last = Some(n);
        }
    }
    let missing: Vec<u64> = acked
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged to the publisher but never delivered: {missing:?}"
    );
}

#[test]
fn mosquitto_clients_publish_and_subscribe_across_the_link_at_every_qos() {
    mqtt::require_mosquitto();
    let h = hubs();
    for qos in 0..=2u8 {
        // Gateway -> cloud: mosquitto_pub on the edge, mosquitto_sub on the cloud.
        let topic = format!("mosq/up/{qos}");
        let mut sub = MosquittoSub::start(h.cloud_mqtt, 3, &up(&topic), 2);
        for i in 0..3 {
            mqtt::mosquitto_pub(
                h.edge_mqtt,
                5,
                &topic,
                qos,
                Some(&format!("up {qos} {i}")),
                false,
            );
        }
        let got = sub.messages(3);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(*m, (qos, false, up(&topic), format!("up {qos} {i}")));
        }

        // Cloud -> gateway: mosquitto_pub to node/{node}/T on the cloud, mosquitto_sub on T at
        // the edge.
        let topic = format!("mosq/down/{qos}");
        let mut sub = MosquittoSub::start(h.edge_mqtt, 5, &topic, 2);
        for i in 0..3 {
            mqtt::mosquitto_pub(
                h.cloud_mqtt,
                3,
                &up(&topic),
                qos,
                Some(&format!("down {qos} {i}")),
                false,
            );
        }
        let got = sub.messages(3);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(*m, (qos, false, topic.clone(), format!("down {qos} {i}")));
        }
    }
}

#[test]
fn paho_v311_and_v5_streams_arrive_once_each_in_order_both_ways() {
    const N: u64 = 300;
    let h = hubs();
    for version in [3u8, 5] {
        for qos in [1u8, 2] {
            for upward in [true, false] {
                let topic = format!(
                    "paho/{version}/{qos}/{}",
                    if upward { "up" } else { "down" }
                );
                let (pub_port, pub_topic, sub_port, sub_topic) = if upward {
                    (h.edge_mqtt, topic.clone(), h.cloud_mqtt, up(&topic))
                } else {
                    (h.cloud_mqtt, up(&topic), h.edge_mqtt, topic.clone())
                };
                let name = format!("v{version}-q{qos}-{}", if upward { "up" } else { "down" });
                let mut sub = Paho::clean(&format!("sub-{name}"), sub_port, version);
                sub.subscribe(&sub_topic, qos);
                let mut publisher = Paho::clean(&format!("pub-{name}"), pub_port, version);
                publisher.publish_range(&pub_topic, qos, 0, N);
                let acked = publisher.acked(N as usize);
                assert_eq!(acked.len() as u64, N);
                assert_in_order(&sub.messages(N as usize), &sub_topic, N, qos);
                // Nothing repeated after the stream: the next message is a marker sent after it.
                publisher.publish(&pub_topic, "end", qos, false);
                assert_eq!(
                    sub.message().payload,
                    "end",
                    "{name}: a message arrived twice"
                );
                publisher.disconnect();
                sub.disconnect();
            }
        }
    }
}

/// Persistent sessions (3.1.1 clean_session=0, 5.0 clean_start=0 with a session expiry) whose
/// hub is killed with `kill -9` while they are away: on return each gets every message
/// acknowledged to the publisher, once, in order.
fn persistent_sessions_survive(kill_edge: bool) {
    const N: u64 = 40;
    let mut h = hubs();
    let side = if kill_edge { "edge" } else { "cloud" };
    let topic = format!("session/{side}");
    // The subscribers live on the hub that is killed; the publisher on the other one.
    let (sub_topic, pub_topic) = if kill_edge {
        (topic.clone(), up(&topic))
    } else {
        (up(&topic), topic.clone())
    };
    let sub_port = |h: &Hubs| if kill_edge { h.edge_mqtt } else { h.cloud_mqtt };
    let pub_port = if kill_edge { h.cloud_mqtt } else { h.edge_mqtt };
    let options = |version: u8, port: u16| {
        let id = format!("keep-v{version}-{side}");
        if version == 5 {
            json!({"port": port, "version": 5, "client_id": id, "clean": false, "expiry": 3600})
        } else {
            json!({"port": port, "version": 3, "client_id": id, "clean": false})
        }
    };
    for version in [3u8, 5] {
        let (mut sub, _) =
            Paho::connect(&format!("keep-v{version}"), options(version, sub_port(&h)));
        sub.subscribe(&sub_topic, 1);
        sub.disconnect();
    }
    // A witness stays connected: once it has every message, the hub has routed them all.
    let mut witness = Paho::clean("witness", sub_port(&h), 5);
    witness.subscribe(&sub_topic, 1);
    let mut publisher = Paho::clean("publisher", pub_port, 5);
    publisher.publish_range(&pub_topic, 1, 0, N);
    let acked = publisher.acked(N as usize);
    assert_eq!(acked, (0..N).collect::<Vec<_>>());
    assert_in_order(&witness.messages(N as usize), &sub_topic, N, 1);
    drop(witness);

    if kill_edge {
        h.kill9_and_restart_edge();
    } else {
        h.kill9_and_restart_cloud();
    }

    let mut subs: Vec<Paho> = [3u8, 5]
        .into_iter()
        .map(|version| {
            let (sub, present) = Paho::connect(
                &format!("keep-v{version} again"),
                options(version, sub_port(&h)),
            );
            assert!(
                present,
                "v{version}: the session did not survive kill -9 of the {side}"
            );
            sub
        })
        .collect();
    for sub in &mut subs {
        assert_in_order(&sub.messages(N as usize), &sub_topic, N, 1);
    }
    // The subscriptions survived too, and nothing comes twice: next is a new marker.
    let mut marker = Paho::clean(
        "marker",
        if kill_edge { h.cloud_mqtt } else { h.edge_mqtt },
        5,
    );
    marker.publish(&pub_topic, "marker", 1, false);
    for sub in subs {
        assert_eq!(sub_next(sub), "marker");
    }
}

/// The payload of the next message `sub` gets, then a clean DISCONNECT.
fn sub_next(mut sub: Paho) -> String {
    let payload = sub.message().payload;
    sub.disconnect();
    payload
}

#[test]
fn persistent_sessions_survive_kill9_of_the_edge() {
    persistent_sessions_survive(true);
}

#[test]
fn persistent_sessions_survive_kill9_of_the_cloud() {
    persistent_sessions_survive(false);
}

/// A QoS 1 stream whose publisher's hub is killed with `kill -9` in the middle: every message
/// that hub acknowledged arrives on the other side after its restart, in order.
fn acknowledged_messages_survive_kill9_mid_stream(kill_edge: bool) {
    const N: u64 = 5000;
    const BEFORE_KILL: usize = 500;
    let mut h = hubs();
    let topic = format!("stream/{}", if kill_edge { "up" } else { "down" });
    let (pub_port, pub_topic, sub_port, sub_topic) = if kill_edge {
        (h.edge_mqtt, topic.clone(), h.cloud_mqtt, up(&topic))
    } else {
        (h.cloud_mqtt, up(&topic), h.edge_mqtt, topic.clone())
    };
    let mut sub = Paho::clean("stream-sub", sub_port, 5);
    sub.subscribe(&sub_topic, 1);
    let mut publisher = Paho::clean("stream-pub", pub_port, 3);
    publisher.publish_range(&pub_topic, 1, 0, N);
    let mut acked = publisher.acked(BEFORE_KILL);
    if kill_edge {
        h.edge.kill9();
    } else {
        h.cloud.hub.kill9();
    }
    // Everything acknowledged before the loss was reported comes before the report.
    publisher
        .lost_within(mqtt::WAIT)
        .expect("the publisher saw its hub go");
    acked.extend(publisher.acked_so_far(Duration::ZERO));
    assert!(
        (acked.len() as u64) < N,
        "the hub was killed after acknowledging the whole stream: nothing tested"
    );
    if kill_edge {
        h.kill9_and_restart_edge();
    } else {
        // The edge's subscriber stays connected: the cloud comes back on the same ports.
        h.kill9_and_restart_cloud();
    }
    let all: BTreeSet<u64> = acked.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let got = sub.messages_until(|m| {
        seen.insert(m.payload.parse::<u64>().unwrap());
        all.is_subset(&seen)
    });
    assert_acked_arrived_in_order(&got, &acked);
}

#[test]
fn acknowledged_messages_survive_kill9_of_the_edge_mid_stream() {
    acknowledged_messages_survive_kill9_mid_stream(true);
}

#[test]
fn acknowledged_messages_survive_kill9_of_the_cloud_mid_stream() {
    acknowledged_messages_survive_kill9_mid_stream(false);
}

#[test]
fn retained_messages_reach_later_subscribers_until_an_empty_one_clears_them() {
    mqtt::require_mosquitto();
    let h = hubs();
    let topic = "retained/setpoint";
    let mut witness = Paho::clean("witness", h.cloud_mqtt, 5);
    witness.subscribe(&up(topic), 1);
    mqtt::mosquitto_pub(h.edge_mqtt, 3, topic, 1, Some("21.5"), true);
    let live = witness.message();
    assert_eq!(live.payload, "21.5");

    // A later subscriber in the cloud gets it at once, flagged as retained.
    for version in [3u8, 5] {
        let mut later = Paho::clean(&format!("later-v{version}"), h.cloud_mqtt, version);
        later.subscribe(&up(topic), 1);
        let m = later.message();
        assert_eq!(
            (m.topic.as_str(), m.payload.as_str(), m.retain),
            (up(topic).as_str(), "21.5", true),
            "v{version}"
        );
        later.disconnect();
    }
    let mut sub = MosquittoSub::start(h.cloud_mqtt, 5, &up(topic), 1);
    assert_eq!(sub.messages(1)[0], (1, true, up(topic), "21.5".to_owned()));

    // An empty retained payload clears it: a subscriber after that gets only what comes next.
    mqtt::mosquitto_pub(h.edge_mqtt, 5, topic, 1, None, true);
    assert_eq!(
        witness.message().payload,
        "",
        "the clearing message passes on"
    );
    let mut after = Paho::clean("after-clear", h.cloud_mqtt, 5);
    after.subscribe(&up(topic), 1);
    mqtt::mosquitto_pub(h.edge_mqtt, 5, topic, 1, Some("next"), false);
    let m = after.message();
    assert_eq!(
        (m.payload.as_str(), m.retain),
        ("next", false),
        "the retained message was not cleared"
    );
}

#[test]
fn a_will_goes_out_when_the_connection_is_lost_not_after_a_disconnect() {
    let h = hubs();
    let topic = "wills/status";
    let mut witness = Paho::clean("witness", h.cloud_mqtt, 5);
    witness.subscribe(&up(topic), 1);
    let will = |payload: &str| json!({"topic": topic, "payload": payload, "qos": 1});
    for version in [3u8, 5] {
        let (polite, _) = Paho::connect(
            &format!("polite-v{version}"),
            json!({"port": h.edge_mqtt, "version": version, "client_id": format!("polite-v{version}"),
                   "will": will(&format!("polite v{version} gone"))}),
        );
        let (crashing, _) = Paho::connect(
            &format!("crashing-v{version}"),
            json!({"port": h.edge_mqtt, "version": version, "client_id": format!("crashing-v{version}"),
                   "will": will(&format!("crashing v{version} gone"))}),
        );
        // The polite client disconnects first: a will of its would come before the other one.
        polite.disconnect();
        crashing.kill();
        assert_eq!(
            witness.message().payload,
            format!("crashing v{version} gone"),
            "v{version}: the first will to arrive"
        );
    }
    // And the polite clients' wills never come: the next message is a marker.
    let mut marker = Paho::clean("marker", h.edge_mqtt, 3);
    marker.publish(topic, "marker", 1, false);
    assert_eq!(
        witness.message().payload,
        "marker",
        "a will after a clean DISCONNECT"
    );
}

#[test]
fn mqtt5_requests_and_websocket_requests_answer_each_other() {
    // Both hubs give up on a request after 2 s.
    let h = Hubs::start_with(
        Proto::Quic,
        CloudSpec {
            apps_extra: "  request-timeout: 2\n".into(),
            ..CloudSpec::default()
        },
        |edge| edge.apps_extra = "  request-timeout: 2\n".into(),
    );

    // An MQTT 5 request from the edge, answered by a WebSocket application in the cloud.
    let responder = apps::subscribe(&h.cloud.apps, &up("svc/echo"));
    let answering = apps::spawn_responder(responder, 1);
    let mut requester = Paho::clean("requester", h.edge_mqtt, 5);
    requester.subscribe("replies/requester", 1);
    requester.publish_with(json!({
        "topic": "svc/echo", "payload": "{\"n\":1}", "qos": 1,
        "response_topic": "replies/requester", "correlation": "corr-1",
    }));
    let answer = requester.message();
    assert_eq!(
        (
            answer.topic.as_str(),
            answer.payload.as_str(),
            answer.correlation.as_deref()
        ),
        ("replies/requester", "{\"n\":1}", Some("corr-1")),
    );
    let requests = answering.join().unwrap();
    assert_eq!(requests[0].resource, up("svc/echo"));
    assert!(requests[0].sync);

    // A WebSocket request from the cloud, answered by a paho v5 responder on the edge.
    let mut mqtt_responder = Paho::clean("mqtt-responder", h.edge_mqtt, 5);
    mqtt_responder.subscribe("svc/mq", 1);
    let req = apps::request(&up("svc/mq"), "{\"q\":\"temperature\"}");
    let asking = {
        let (url, req) = (h.cloud.apps.clone(), req.clone());
        std::thread::spawn(move || apps::ask(&url, &req))
    };
    let got = mqtt_responder.message();
    assert_eq!(got.topic, "svc/mq");
    assert_eq!(got.payload, "{\"q\":\"temperature\"}");
    let response_topic = got.response_topic.clone().expect("a Response Topic");
    assert!(
        response_topic.starts_with("$hub/response/"),
        "response topic {response_topic}"
    );
    let correlation = got.correlation.clone().expect("Correlation Data");
    mqtt_responder.publish_with(json!({
        "topic": response_topic, "payload": "{\"celsius\":21.5}", "qos": 1,
        "correlation": correlation,
    }));
    let answer = asking.join().unwrap().expect("the answer");
    assert_eq!(answer.parent_id, req.id);
    assert_eq!(answer.content, b"{\"celsius\":21.5}");

    // An MQTT request nobody answers: the API's error is published to its response topic.
    let mut ignoring = apps::subscribe(&h.cloud.apps, &up("svc/void"));
    requester.subscribe("replies/void", 1);
    requester.publish_with(json!({
        "topic": "svc/void", "payload": "1", "qos": 1,
        "response_topic": "replies/void", "correlation": "corr-2",
    }));
    assert!(apps::receive(&mut ignoring, 1)[0].sync);
    let error = requester.message();
    assert_eq!(
        (error.topic.as_str(), error.correlation.as_deref()),
        ("replies/void", Some("corr-2"))
    );
    assert!(error.payload.contains("no response within"), "{error:?}");

    // A WebSocket request an MQTT subscriber does not answer: the API's timeout error.
    let mut silent = Paho::clean("silent", h.edge_mqtt, 5);
    silent.subscribe("svc/silent", 1);
    let err = apps::ask(&h.cloud.apps, &apps::request(&up("svc/silent"), "1"))
        .expect_err("an unanswered request");
    assert!(err.contains("no response within"), "{err}");
    assert!(silent.message().response_topic.is_some());
}

#[test]
fn malformed_and_oversized_packets_end_only_their_own_connection() {
    const N: u64 = 1000;
    let h = Hubs::start(
        Proto::Websocket,
        CloudSpec::default(),
        "  max-packet-bytes: 65536\n",
    );
    let mut sub = Paho::clean("flow-sub", h.cloud_mqtt, 5);
    sub.subscribe(&up("flow"), 1);
    let mut publisher = Paho::clean("flow-pub", h.edge_mqtt, 3);
    publisher.publish_range("flow", 1, 0, N);

    // A PUBLISH with both QoS bits set is malformed (MQTT 5.0 3.3.1.2, 3.1.1 3.3.1-4).
    for version in [5u8, 4] {
        let mut raw = mqtt::raw_client(h.edge_mqtt, version, &format!("malformed-{version}"));
        let mut body = vec![0, 1, b'x', 0, 1];
        if version == 5 {
            body.push(0);
        }
        raw.write_all(&mqtt::packet(0x36, &body)).unwrap();
        if version == 5 {
            let disconnect = mqtt::read_packet(&mut raw).expect("a DISCONNECT");
            assert_eq!(disconnect.0, 0xe0, "DISCONNECT expected: {disconnect:?}");
            assert_eq!(disconnect.1.first(), Some(&0x81), "reason Malformed Packet");
        }
        assert_eq!(
            mqtt::read_packet(&mut raw),
            None,
            "v{version}: closed after it"
        );
    }

    // A PUBLISH larger than mqtt.max-packet-bytes.
    for version in [5u8, 4] {
        let mut raw = mqtt::raw_client(h.edge_mqtt, version, &format!("oversized-{version}"));
        let mut body = vec![0, 1, b'x'];
        if version == 5 {
            body.push(0);
        }
        body.resize(200_000, b'.');
        let packet = mqtt::packet(0x30, &body);
        let mut writer = raw.try_clone().unwrap();
        // Written from another thread: the hub may close before reading it all.
        let writing = std::thread::spawn(move || {
            let _ = writer.write_all(&packet);
        });
        if version == 5 {
            let disconnect = mqtt::read_packet(&mut raw).expect("a DISCONNECT");
            assert_eq!(disconnect.0, 0xe0, "DISCONNECT expected: {disconnect:?}");
            assert_eq!(disconnect.1.first(), Some(&0x95), "reason Packet too large");
        }
        assert_eq!(
            mqtt::read_packet(&mut raw),
            None,
            "v{version}: closed after it"
        );
        writing.join().unwrap();
    }

    // The stream went on throughout, on the same connections.
    publisher.publish_range("flow", 1, N, N);
    assert_eq!(publisher.acked(2 * N as usize).len() as u64, 2 * N);
    assert_in_order(&sub.messages(2 * N as usize), &up("flow"), 2 * N, 1);
    publisher.assert_connected();
    sub.assert_connected();
}

#[test]
fn mqtt_clients_and_websocket_applications_see_each_others_messages() {
    let h = hubs();
    // Upward: an MQTT publisher at the edge; an MQTT and a WebSocket subscriber in the cloud.
    let mut ws_cloud = apps::subscribe(&h.cloud.apps, &up("mixed/"));
    let mut mqtt_cloud = Paho::clean("cloud-sub", h.cloud_mqtt, 5);
    mqtt_cloud.subscribe(&up("mixed/up"), 1);
    let mut edge_pub = Paho::clean("edge-pub", h.edge_mqtt, 3);
    edge_pub.publish("mixed/up", "{\"celsius\":21.5}", 1, false);
    edge_pub.publish("mixed/up", "not json", 1, false);
    let got = apps::receive(&mut ws_cloud, 2);
    assert_eq!(got[0].resource, up("mixed/up"));
    assert_eq!(
        got[0].content, b"{\"celsius\":21.5}",
        "JSON payload as JSON content"
    );
    assert_eq!(
        got[1].content, b"\"not json\"",
        "other payloads as a JSON string"
    );
    let got = mqtt_cloud.messages(2);
    assert_eq!(got[0].payload, "{\"celsius\":21.5}");
    assert_eq!(got[1].payload, "not json");

    // On one hub an MQTT publish reaches its WebSocket subscribers as a broker's would: at the
    // edge, and in the cloud for a topic that addresses no node.
    let mut ws_local = apps::subscribe(&h.edge_apps, "mixed/local");
    edge_pub.publish("mixed/local", "1", 1, false);
    assert_eq!(apps::number(&apps::receive(&mut ws_local, 1)[0]), Some(1));
    let mut ws_cloud_local = apps::subscribe(&h.cloud.apps, "mixed/cloud");
    let mut cloud_pub = Paho::clean("cloud-pub", h.cloud_mqtt, 5);
    cloud_pub.publish("mixed/cloud", "2", 1, false);
    assert_eq!(
        apps::number(&apps::receive(&mut ws_cloud_local, 1)[0]),
        Some(2)
    );

    // Downward: a WebSocket application in the cloud; MQTT and WebSocket subscribers on the edge.
    let mut ws_edge = apps::subscribe(&h.edge_apps, "mixed/down");
    let mut mqtt_edge = Paho::clean("edge-sub", h.edge_mqtt, 5);
    mqtt_edge.subscribe("mixed/down", 1);
    let command = apps::message(&up("mixed/down"), "{\"on\":true}");
    apps::block("publish", async {
        let mut ws = client::connect(&h.cloud.apps, "/").await.unwrap();
        client::publish(&mut ws, &command).await.unwrap();
    });
    assert_eq!(mqtt_edge.message().payload, "{\"on\":true}");
    let got = apps::receive(&mut ws_edge, 1);
    assert_eq!(
        (got[0].resource.as_str(), got[0].content.as_slice()),
        ("mixed/down", &b"{\"on\":true}"[..])
    );

    // And an MQTT publisher in the cloud reaches the WebSocket application on the edge.
    cloud_pub.publish(&up("mixed/down"), "7", 1, false);
    let got = apps::receive(&mut ws_edge, 1);
    assert_eq!(apps::number(&got[0]), Some(7));
    assert_eq!(mqtt_edge.message().payload, "7");
}

#[test]
fn websocket_durable_subscriptions_survive_kill9_of_the_edge() {
    const N: u64 = 50;
    let mut h = hubs();
    let path = "/?resource=durable/&session=dashboard";
    // The first time: the error notice for a non-message proves the subscription is in place;
    // then the application goes away.
    apps::block("durable subscription", async {
        let mut ws = client::connect(&h.edge_apps, path).await.unwrap();
        ws.send(WsMessage::text("not a message")).await.unwrap();
        match client::next(&mut ws).await {
            Some(Ok(m)) if apps::is_hub_notice(&m) && m.operation == "error" => {}
            other => panic!("expected the hub's error notice first, got {other:?}"),
        }
        ws.close(None).await.unwrap();
    });
    // A plain subscriber as witness that the edge has them all.
    let mut witness = apps::subscribe(&h.edge_apps, "durable/");
    let resource = up("durable/x");
    assert_eq!(apps::publish_numbers(&h.cloud.apps, &resource, N), (N, 0));
    apps::assert_numbers_in_order(&apps::receive(&mut witness, N as usize), "durable/x", N);
    drop(witness);

    h.kill9_and_restart_edge();

    // Back with the same session: what arrived meanwhile comes first, then what is new.
    let mut ws = apps::block(
        "durable subscription again",
        client::connect(&h.edge_apps, path),
    )
    .unwrap();
    apps::assert_numbers_in_order(&apps::receive(&mut ws, N as usize), "durable/x", N);
    // Once each: the next message is a marker published now.
    apps::assert_next_is_marker(&h.cloud.apps, &resource, &mut ws);
}
