//! MQTT features `docs/mqtt.md` promises, each end to end through a real cloud and a real edge:
//! MQTT over TLS with client certificates, Mosquitto password files, MQTT 5 properties carried
//! across the link, message expiry in a persistent session, topic aliases, KubeEdge's `$hw/...`
//! device topics, and what the hub refuses (a 3.1.1 persistent session without a client
//! identifier, shared subscriptions, a session's 1025th topic filter). Clients are paho-mqtt
//! 2.x (tests/mqtt/driver.py), Debian's `mosquitto_pub`, and raw TCP for exact reason codes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::apps;
use common::mqtt::{self, Hubs, NODE, Paho, WAIT, packet, read_packet, varint};
use common::{CloudSpec, Proto};
use serde_json::{Value, json};

/// The cloud's topic for the edge's topic `t`.
fn up(t: &str) -> String {
    format!("node/{NODE}/{t}")
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT, for exact reason codes.

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT of MQTT `version` (4 = 3.1.1, 5) for `client_id`, keep-alive 60 s, no
/// properties, with a user name and a password when given.
fn connect_bytes(
    version: u8,
    client_id: &str,
    clean: bool,
    user: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    let mut flags = if clean { 0x02 } else { 0 };
    if user.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    let mut body = string(b"MQTT");
    body.extend([version, flags, 0, 60]);
    if version == 5 {
        body.push(0);
    }
    body.extend(string(client_id.as_bytes()));
    for field in [user, password].into_iter().flatten() {
        body.extend(string(field.as_bytes()));
    }
    packet(0x10, &body)
}

/// Sends `connect` to 127.0.0.1:`port`: the stream and the CONNACK's code (MQTT 5's reason
/// code, MQTT 3.1.1's return code).
fn try_connect(port: u16, connect: &[u8]) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(connect).unwrap();
    let (first, body) = read_packet(&mut s).expect("a CONNACK");
    assert_eq!(first, 0x20, "CONNACK expected, got {first:#x} {body:?}");
    (s, body[1])
}

/// A SUBSCRIBE (packet identifier `pid`) of `filters` at QoS 1; the SUBACK's codes.
fn subscribe(s: &mut TcpStream, version: u8, pid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if version == 5 {
        body.push(0);
    }
    for f in filters {
        body.extend(string(f.as_bytes()));
        body.push(1);
    }
    s.write_all(&packet(0x82, &body)).unwrap();
    loop {
        let (first, body) = read_packet(s).expect("a SUBACK");
        if first == 0x90 {
            assert_eq!(
                body[..2],
                pid.to_be_bytes(),
                "the SUBACK's packet identifier"
            );
            let at = if version == 5 {
                let (n, used) = read_varint(&body[2..]);
                2 + used + n
            } else {
                2
            };
            return body[at..].to_vec();
        }
    }
}

/// A variable byte integer at the start of `b`: (value, bytes used).
fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut n = 0;
    for (i, byte) in b.iter().enumerate() {
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    panic!("a truncated variable byte integer: {b:?}")
}

/// A v5 PUBLISH at QoS 1 (packet identifier `pid`) of `payload` to `topic` with the property
/// Topic Alias `alias`.
fn aliased_publish(topic: &str, alias: u16, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    body.extend(pid.to_be_bytes());
    let props = [0x23, (alias >> 8) as u8, alias as u8];
    body.extend(varint(props.len()));
    body.extend(props);
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// The v5 DISCONNECT the hub sends next (its reason code), then the end of the stream.
fn disconnect_reason(s: &mut TcpStream) -> u8 {
    let (first, body) = read_packet(s).expect("a DISCONNECT");
    assert_eq!(first, 0xe0, "DISCONNECT expected, got {first:#x} {body:?}");
    assert_eq!(
        read_packet(s),
        None,
        "the connection closed after the DISCONNECT"
    );
    body[0]
}

// ---------------------------------------------------------------------------------------------

/// The edge's `mqtt:` lines for MQTT over TLS with the dev PKI in `pki` (the server's
/// certificate, client certificates from its CA required).
fn tls_settings(pki: &Path) -> String {
    format!(
        "  tls-listen: 127.0.0.1:0\n  tls-cert: {}\n  tls-key: {}\n  tls-ca: {}\n",
        pki.join("server.crt").display(),
        pki.join("server.key").display(),
        pki.join("ca.crt").display(),
    )
}

#[test]
fn mqtt_over_tls_admits_only_clients_with_a_certificate_from_its_ca() {
    mqtt::require_mosquitto();
    let mut h = Hubs::start_with(Proto::Websocket, CloudSpec::default(), |edge| {
        edge.mqtt_extra = tls_settings(edge.ca.parent().unwrap());
    });
    let tls_port = mqtt::mqtt_tls_port(&h.edge);
    let path = |f: &str| h.pki.join(f).display().to_string();
    // A device's certificate: one the dev CA issued for client authentication.
    let (ca, cert, key) = (
        path("ca.crt"),
        path("node-other-node.crt"),
        path("node-other-node.key"),
    );
    let foreign = tempfile::tempdir().unwrap();
    let foreign_pki = common::dev_pki(foreign.path());
    let foreign_cert = foreign_pki
        .join("node-other-node.crt")
        .display()
        .to_string();
    let foreign_key = foreign_pki
        .join("node-other-node.key")
        .display()
        .to_string();

    let mut cloud_sub = Paho::clean("cloud-sub", h.cloud_mqtt, 5);
    cloud_sub.subscribe(&up("tls/up"), 1);

    // mosquitto_pub over TLS with the certificate, QoS 1: acknowledged, and in the cloud.
    for version in [3u8, 5] {
        let payload = format!("with a certificate v{version}");
        let (ok, out, err) = mqtt::mosquitto_pub_with(
            &["--cafile", &ca, "--cert", &cert, "--key", &key],
            tls_port,
            version,
            "tls/up",
            1,
            Some(&payload),
            false,
        );
        assert!(ok, "mosquitto_pub over TLS with a certificate: {out}{err}");
        let m = cloud_sub.message();
        assert_eq!((m.topic, m.payload), (up("tls/up"), payload));
    }

    // paho over TLS with the certificate subscribes at the edge and gets what the cloud sends.
    let (mut edge_sub, _) = Paho::connect(
        "edge-tls-sub",
        json!({"port": tls_port, "version": 5, "client_id": "edge-tls-sub", "clean": true,
               "tls": {"ca": ca, "cert": cert, "key": key}}),
    );
    edge_sub.subscribe("tls/down", 1);
    let mut cloud_pub = Paho::clean("cloud-pub", h.cloud_mqtt, 5);
    cloud_pub.publish(&up("tls/down"), "to the device", 1, false);
    let m = edge_sub.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("tls/down", "to the device")
    );

    // Without a certificate, or with one from another CA: no connection, nothing published.
    let refused: [(&str, Vec<&str>); 2] = [
        ("no certificate", vec!["--cafile", &ca]),
        (
            "another CA's certificate",
            vec![
                "--cafile",
                &ca,
                "--cert",
                &foreign_cert,
                "--key",
                &foreign_key,
            ],
        ),
    ];
    for (what, args) in &refused {
        let (ok, out, err) =
            mqtt::mosquitto_pub_with(args, tls_port, 5, "tls/up", 1, Some(what), false);
        assert!(
            !ok,
            "mosquitto_pub over TLS with {what} was let in: {out}{err}"
        );
    }
    let mut paho = Paho::spawn("no-certificate");
    paho.send(json!({"op": "connect", "port": tls_port, "version": 5,
                     "client_id": "no-certificate", "tls": {"ca": ca}}));
    let outcome = paho.wait("the outcome of the connection", |e| {
        ["connack", "connect_failed", "lost"].contains(&e["ev"].as_str().unwrap_or(""))
    });
    assert!(
        !(outcome["ev"] == "connack" && outcome["rc"] == 0),
        "paho over TLS without a certificate was let in: {outcome}"
    );
    drop(paho);
    // The hub saw each of the three fail in the handshake.
    for _ in 0..3 {
        h.edge.wait_for_within("TLS handshake failed", WAIT);
    }
    // The refused clients' messages never came: the next one in the cloud is a marker.
    let (ok, out, err) = mqtt::mosquitto_pub_with(
        &["--cafile", &ca, "--cert", &cert, "--key", &key],
        tls_port,
        5,
        "tls/up",
        1,
        Some("marker"),
        false,
    );
    assert!(ok, "{out}{err}");
    assert_eq!(cloud_sub.message().payload, "marker");
}

/// A `mosquitto_passwd` line for `user` with a `$7$` hash (PBKDF2-HMAC-SHA512, 101 iterations,
/// as Mosquitto 2 writes it).
fn pbkdf2_line(user: &str, password: &str) -> String {
    let salt = b"hub-test-salt";
    let mut hash = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        std::num::NonZeroU32::new(101).unwrap(),
        salt,
        password.as_bytes(),
        &mut hash,
    );
    format!(
        "{user}:$7$101${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

/// A `mosquitto_passwd` line for `user` with a `$6$` hash (SHA-512 of the password, then the
/// salt, as Mosquitto 1.x writes it).
fn sha512_line(user: &str, password: &str) -> String {
    let salt = b"old-salt";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(password.as_bytes());
    ctx.update(salt);
    format!(
        "{user}:$6${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(ctx.finish())
    )
}

#[test]
fn a_password_file_admits_its_users_with_their_passwords_only() {
    mqtt::require_mosquitto();
    let h = Hubs::start_with(Proto::Websocket, CloudSpec::default(), |edge| {
        let file = edge.ca.parent().unwrap().parent().unwrap().join("passwd");
        let text = format!(
            "{}\n{}\n",
            pbkdf2_line("dev-1", "s3cret"),
            sha512_line("old-dev", "0ld")
        );
        std::fs::write(&file, text).unwrap();
        // Mosquitto's own tool adds a user where it is installed (Debian's mosquitto).
        let added = std::process::Command::new("mosquitto_passwd")
            .args(["-b", file.to_str().unwrap(), "tool-user", "t00l"])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            eprintln!("mosquitto_passwd is not installed: the file has only the test's lines");
        }
        // A comment and an empty line (after the tool, which calls a comment corrupt).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"# devices of hall 2\n\n").unwrap();
        edge.mqtt_extra = format!("  password-file: {}\n", file.display());
    });
    let tool_user = std::fs::read_to_string(h.dir.path().join("passwd"))
        .unwrap()
        .contains("tool-user:$7$");
    let mut cloud_sub = Paho::clean("cloud-sub", h.cloud_mqtt, 5);
    cloud_sub.subscribe(&up("auth/#"), 1);

    // mosquitto_pub with the right password: acknowledged, and in the cloud.
    let (ok, out, err) = mqtt::mosquitto_pub_with(
        &["-u", "dev-1", "-P", "s3cret"],
        h.edge_mqtt,
        5,
        "auth/in",
        1,
        Some("right"),
        false,
    );
    assert!(ok, "mosquitto_pub with the right password: {out}{err}");
    assert_eq!(cloud_sub.message().payload, "right");
    // With a wrong one: refused.
    let (ok, out, err) = mqtt::mosquitto_pub_with(
        &["-u", "dev-1", "-P", "s3cre"],
        h.edge_mqtt,
        5,
        "auth/in",
        1,
        Some("wrong"),
        false,
    );
    assert!(
        !ok,
        "mosquitto_pub with a wrong password was let in: {out}{err}"
    );

    // Exact answers, both versions: MQTT 5 0x86, MQTT 3.1.1 return code 4.
    for version in [5u8, 4] {
        let bad = if version == 5 { 0x86 } else { 4 };
        let cases: [(&str, Option<&str>, Option<&str>, u8); 7] = [
            ("the right password", Some("dev-1"), Some("s3cret"), 0),
            ("a $6$ user's password", Some("old-dev"), Some("0ld"), 0),
            ("a wrong password", Some("dev-1"), Some("s3cre"), bad),
            (
                "another user's password",
                Some("old-dev"),
                Some("s3cret"),
                bad,
            ),
            ("an unknown user", Some("dev-2"), Some("s3cret"), bad),
            ("no user name", None, None, bad),
            ("a user name without a password", Some("dev-1"), None, bad),
        ];
        let tool_cases = [
            (
                "mosquitto_passwd's user",
                Some("tool-user"),
                Some("t00l"),
                0,
            ),
            (
                "mosquitto_passwd's user, wrong",
                Some("tool-user"),
                Some("t00"),
                bad,
            ),
        ];
        let tool_cases = if tool_user { &tool_cases[..] } else { &[] };
        for &(what, user, password, expected) in cases.iter().chain(tool_cases) {
            let connect = connect_bytes(version, "auth-client", true, user, password);
            let (mut s, code) = try_connect(h.edge_mqtt, &connect);
            assert_eq!(code, expected, "v{version}, {what}: CONNACK code");
            if expected != 0 {
                assert_eq!(
                    read_packet(&mut s),
                    None,
                    "v{version}, {what}: closed after it"
                );
            }
        }
    }
    // A refused CONNECT does not take over the session of its client identifier.
    let (mut owner, _) = Paho::connect(
        "owner",
        json!({"port": h.edge_mqtt, "version": 5, "client_id": "owned", "clean": true,
               "username": "dev-1", "password": "s3cret"}),
    );
    owner.subscribe("owned/x", 1);
    for version in [5u8, 4] {
        let connect = connect_bytes(version, "owned", true, Some("dev-1"), Some("guess"));
        let (mut s, code) = try_connect(h.edge_mqtt, &connect);
        assert_ne!(code, 0, "v{version}: a wrong password was let in");
        assert_eq!(read_packet(&mut s), None);
    }
    owner.publish("owned/x", "still here", 1, false);
    assert_eq!(owner.message().payload, "still here");
    owner.assert_connected();

    // Nothing from the refused clients: the next message in the cloud is a marker.
    let (mut raw, code) = try_connect(
        h.edge_mqtt,
        &connect_bytes(4, "marker", true, Some("old-dev"), Some("0ld")),
    );
    assert_eq!(code, 0);
    raw.write_all(&packet(
        0x32,
        &[&string(b"auth/in")[..], &[0, 1], b"marker"].concat(),
    ))
    .unwrap();
    assert_eq!(read_packet(&mut raw).map(|p| p.0), Some(0x40), "PUBACK");
    assert_eq!(cloud_sub.message().payload, "marker");
}

/// The v5 properties of a message event that are about its content.
fn content_props(e: &Value) -> (Value, Value, Value) {
    (
        e["user"].clone(),
        e["content_type"].clone(),
        e["payload_format"].clone(),
    )
}

#[test]
fn mqtt5_properties_cross_the_link_both_ways() {
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let mut cloud_sub = Paho::clean("cloud-sub", h.cloud_mqtt, 5);
    cloud_sub.subscribe(&up("props/up"), 1);
    let mut edge_sub = Paho::clean("edge-sub", h.edge_mqtt, 5);
    edge_sub.subscribe("props/down", 1);
    let mut edge_pub = Paho::clean("edge-pub", h.edge_mqtt, 5);
    let mut cloud_pub = Paho::clean("cloud-pub", h.cloud_mqtt, 5);

    // Repeated names, in an order no sorting would give.
    let user = json!([
        ["unit", "C"],
        ["sensor", "t1"],
        ["unit", "K"],
        ["a", "z"],
        ["sensor", "t0"]
    ]);
    edge_pub.publish_with(json!({
        "topic": "props/up", "payload": "{\"t\":21.5}", "qos": 1, "user": user,
        "content_type": "application/json", "payload_format": 1,
    }));
    let got = cloud_sub.message_event();
    assert_eq!(got["topic"], up("props/up"));
    assert_eq!(
        content_props(&got),
        (user.clone(), json!("application/json"), json!(1)),
        "upward: {got}"
    );

    let user = json!([["z", "1"], ["z", "0"], ["", "empty name"], ["k", ""]]);
    cloud_pub.publish_with(json!({
        "topic": up("props/down"), "payload": "on", "qos": 1, "user": user,
        "content_type": "text/plain; charset=utf-8", "payload_format": 1,
    }));
    let got = edge_sub.message_event();
    assert_eq!(got["topic"], "props/down");
    assert_eq!(
        content_props(&got),
        (user, json!("text/plain; charset=utf-8"), json!(1)),
        "downward: {got}"
    );

    // A message without them arrives without them (nothing left over from the last one).
    edge_pub.publish("props/up", "bare", 1, false);
    let got = cloud_sub.message_event();
    assert_eq!(got["payload"], "bare");
    assert_eq!(
        content_props(&got),
        (json!([]), Value::Null, Value::Null),
        "{got}"
    );
    // Payload format 0 (bytes) is the absence of the indicator.
    cloud_pub.publish_with(json!({
        "topic": up("props/down"), "payload": "bytes", "qos": 1, "payload_format": 0,
        "content_type": "application/octet-stream",
    }));
    let got = edge_sub.message_event();
    assert_eq!(got["payload"], "bytes");
    assert_eq!(
        content_props(&got),
        (json!([]), json!("application/octet-stream"), Value::Null),
        "{got}"
    );
}

#[test]
fn an_expired_message_is_not_delivered_to_a_returning_session_and_others_carry_what_remains() {
    const LONG: u64 = 3600;
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let topic = up("expiry/x");
    let options = json!({"port": h.cloud_mqtt, "version": 5, "client_id": "away",
                         "clean": false, "expiry": 3600});
    let (mut away, _) = Paho::connect("away", options.clone());
    away.subscribe(&topic, 1);
    away.disconnect();
    // A witness stays connected: once it has every message, the session's queue has them.
    let mut witness = Paho::clean("witness", h.cloud_mqtt, 5);
    witness.subscribe(&topic, 1);

    let mut edge_pub = Paho::clean("edge-pub", h.edge_mqtt, 5);
    // Retained, in both hubs: kept no longer than its second either.
    edge_pub.publish_with(
        json!({"topic": "expiry/kept", "payload": "retained", "qos": 1,
                                 "retain": true, "message_expiry": 1}),
    );
    let published = Instant::now();
    edge_pub.publish_with(
        json!({"topic": "expiry/x", "payload": "short", "qos": 1, "message_expiry": 1}),
    );
    edge_pub.publish("expiry/x", "lasting", 1, false);
    edge_pub.publish_with(
        json!({"topic": "expiry/x", "payload": "long", "qos": 1, "message_expiry": LONG}),
    );
    let seen: Vec<Value> = (0..3).map(|_| witness.message_event()).collect();
    assert_eq!(
        seen.iter()
            .map(|e| e["payload"].clone())
            .collect::<Vec<_>>(),
        [json!("short"), json!("lasting"), json!("long")]
    );
    let remaining = seen[0]["message_expiry"].as_u64();
    assert!(
        remaining.is_some_and(|r| r <= 1),
        "delivered at once, the short one carries at most its 1 s: {}",
        seen[0]
    );
    assert_eq!(seen[1]["message_expiry"], Value::Null, "{}", seen[1]);

    // What is tested is time passing: the short message's second.
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(published.elapsed()));

    for (port, topic) in [
        (h.edge_mqtt, "expiry/kept".to_owned()),
        (h.cloud_mqtt, up("expiry/kept")),
    ] {
        let mut late = Paho::clean("late", port, 5);
        late.subscribe(&topic, 1);
        edge_pub.publish("expiry/kept", "marker", 1, false);
        let m = late.message();
        assert_eq!(
            (m.payload.as_str(), m.retain),
            ("marker", false),
            "{topic}: an expired retained message went to a new subscription"
        );
        late.disconnect();
    }

    let (mut back, present) = Paho::connect("away again", options);
    assert!(present, "the session was kept");
    let first = back.message_event();
    assert_eq!(
        first["payload"], "lasting",
        "the first message after the expired one: {first}"
    );
    assert_eq!(first["message_expiry"], Value::Null, "{first}");
    let second = back.message_event();
    assert_eq!(second["payload"], "long");
    let remaining = second["message_expiry"]
        .as_u64()
        .expect("a Message Expiry Interval");
    assert!(
        (LONG - 60..LONG).contains(&remaining),
        "more than a second after publication, {remaining} s of {LONG} s remain"
    );
}

#[test]
fn topic_aliases_resolve_per_connection_and_one_over_the_maximum_is_refused() {
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let mut cloud_sub = Paho::clean("cloud-sub", h.cloud_mqtt, 5);
    cloud_sub.subscribe(&up("alias/#"), 1);

    // paho: set an alias with its topic, then the alias alone; two aliases; one set anew.
    let mut publisher = Paho::clean("aliaser", h.edge_mqtt, 5);
    let sends = [
        ("alias/one", 1, "1"),
        ("", 1, "2"),
        ("alias/two", 2, "3"),
        ("", 1, "4"),
        ("", 2, "5"),
        ("alias/three", 1, "6"),
        ("", 1, "7"),
        ("", 2, "8"),
    ];
    for (topic, alias, payload) in sends {
        publisher.publish_with(
            json!({"topic": topic, "payload": payload, "qos": 1, "topic_alias": alias}),
        );
    }
    let got: Vec<(String, String)> = cloud_sub
        .messages(sends.len())
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    let expected: Vec<(String, String)> = [
        "alias/one",
        "alias/one",
        "alias/two",
        "alias/one",
        "alias/two",
        "alias/three",
        "alias/three",
        "alias/two",
    ]
    .iter()
    .zip(1..)
    .map(|(t, n)| (up(t), n.to_string()))
    .collect();
    assert_eq!(got, expected);

    // Raw: the maximum (64) works; a mapping belongs to its connection; 65 and 0 are refused.
    let (mut raw, code) = try_connect(
        h.edge_mqtt,
        &connect_bytes(5, "raw-aliaser", true, None, None),
    );
    assert_eq!(code, 0);
    raw.write_all(&aliased_publish("alias/max", 64, 1, b"9"))
        .unwrap();
    raw.write_all(&aliased_publish("", 64, 2, b"10")).unwrap();
    for pid in [1u16, 2] {
        let (first, body) = read_packet(&mut raw).expect("a PUBACK");
        assert_eq!(
            (first, &body[..2]),
            (0x40, &pid.to_be_bytes()[..]),
            "PUBACK {body:?}"
        );
    }
    for payload in ["9", "10"] {
        let m = cloud_sub.message();
        assert_eq!((m.topic, m.payload.as_str()), (up("alias/max"), payload));
    }
    let cases: [(&str, u16, u8); 3] = [
        ("an alias over the maximum", 65, 0x94),
        ("alias 0", 0, 0x94),
        ("an alias another connection set", 1, 0x82),
    ];
    for (what, alias, expected) in cases {
        let (mut raw, _) = try_connect(
            h.edge_mqtt,
            &connect_bytes(5, "bad-alias", true, None, None),
        );
        raw.write_all(&aliased_publish("", alias, 1, b"x")).unwrap();
        assert_eq!(
            disconnect_reason(&mut raw),
            expected,
            "{what}: the DISCONNECT's reason"
        );
    }
    // With its topic, an alias over the maximum is refused all the same.
    let (mut raw, _) = try_connect(
        h.edge_mqtt,
        &connect_bytes(5, "bad-alias", true, None, None),
    );
    raw.write_all(&aliased_publish("alias/over", 65, 1, b"x"))
        .unwrap();
    assert_eq!(disconnect_reason(&mut raw), 0x94);
    // None of those reached the cloud.
    publisher.publish("alias/marker", "marker", 1, false);
    assert_eq!(cloud_sub.message().payload, "marker");
}

#[test]
fn kubeedge_device_topics_cross_the_link_and_dollar_topics_escape_leading_wildcards() {
    mqtt::require_mosquitto();
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let device = "$hw/events/device/d1/twin/update";
    // Looks like a device topic, but is not a `$` one: what leading wildcards do match.
    let marker = "hw/events/device/d1/twin/update";
    let twin = r#"{"event_id":"e1","timestamp":1700000000000,"twin":{"temperature":{"actual":{"value":"21.5"}}}}"#;

    // In the cloud the topic is node/{node}/$hw/...: it does not start with `$`.
    let mut cloud_twin = Paho::clean("cloud-twin", h.cloud_mqtt, 5);
    cloud_twin.subscribe("node/+/$hw/events/device/+/twin/update", 1);
    let mut cloud_all = Paho::clean("cloud-all", h.cloud_mqtt, 3);
    cloud_all.subscribe("#", 1);
    let mut cloud_app = apps::subscribe(&h.cloud.apps, &up("$hw/"));
    // At the edge `#` and `+/...` must not match `$hw/...`; `$hw/...` filters do.
    let mut edge_twin = Paho::clean("edge-twin", h.edge_mqtt, 3);
    edge_twin.subscribe("$hw/events/device/+/twin/update", 1);
    let mut edge_all = Paho::clean("edge-all", h.edge_mqtt, 5);
    edge_all.subscribe("#", 1);
    let mut edge_plus = Paho::clean("edge-plus", h.edge_mqtt, 5);
    edge_plus.subscribe("+/events/device/+/twin/update", 1);

    // A mapper publishes the twin update (retained), then the marker.
    mqtt::mosquitto_pub(h.edge_mqtt, 3, device, 1, Some(twin), true);
    mqtt::mosquitto_pub(h.edge_mqtt, 3, marker, 1, Some("marker"), false);

    let m = cloud_twin.message();
    assert_eq!((m.topic, m.payload.as_str()), (up(device), twin));
    let got = apps::receive(&mut cloud_app, 1);
    assert_eq!(got[0].resource, up(device));
    assert_eq!(got[0].content, twin.as_bytes(), "JSON as it is");
    let all: Vec<String> = cloud_all.messages(2).into_iter().map(|m| m.topic).collect();
    assert_eq!(
        all,
        [up(device), up(marker)],
        "cloud: # matches node/.../$hw/..."
    );

    let m = edge_twin.message();
    assert_eq!((m.topic.as_str(), m.payload.as_str()), (device, twin));
    assert_eq!(
        edge_all.message().topic,
        marker,
        "edge: # got the $hw topic (MQTT 5.0 section 4.7.2)"
    );
    assert_eq!(
        edge_plus.message().topic,
        marker,
        "edge: +/... got the $hw topic (MQTT 5.0 section 4.7.2)"
    );

    // Retained: a later `#` at the edge does not get it either; one in the cloud does.
    let mut edge_late = Paho::clean("edge-late", h.edge_mqtt, 5);
    edge_late.subscribe("#", 1);
    let mut cloud_late = Paho::clean("cloud-late", h.cloud_mqtt, 5);
    cloud_late.subscribe("#", 1);
    let m = cloud_late.message();
    assert_eq!(
        (m.topic, m.retain),
        (up(device), true),
        "cloud: retained, for #"
    );
    let mut edge_retained = Paho::clean("edge-retained", h.edge_mqtt, 5);
    edge_retained.subscribe("$hw/#", 1);
    let m = edge_retained.message();
    assert_eq!(
        (m.topic.as_str(), m.retain),
        (device, true),
        "edge: retained, for $hw/#"
    );
    edge_retained.publish("late-marker", "late", 1, false);
    assert_eq!(
        edge_late.message().topic,
        "late-marker",
        "edge: a new # got the retained $hw topic"
    );

    // And down: the cloud's twin delta reaches the mapper's subscription at the edge.
    let mut edge_delta = Paho::clean("edge-delta", h.edge_mqtt, 3);
    edge_delta.subscribe("$hw/events/device/+/twin/update/delta", 1);
    let mut cloud_pub = Paho::clean("cloud-pub", h.cloud_mqtt, 5);
    cloud_pub.publish(
        &up("$hw/events/device/d1/twin/update/delta"),
        "{\"delta\":1}",
        1,
        false,
    );
    let m = edge_delta.message();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("$hw/events/device/d1/twin/update/delta", "{\"delta\":1}")
    );
    edge_all.publish("after", "after", 1, false);
    let topics: Vec<String> = edge_all.messages(2).into_iter().map(|m| m.topic).collect();
    assert_eq!(
        topics,
        ["late-marker", "after"],
        "edge: # got the $hw delta"
    );
    assert_eq!(
        edge_late.message().topic,
        "after",
        "edge: # got the $hw delta"
    );
}

#[test]
fn refusals_a_persistent_session_without_id_shared_subscriptions_and_the_1025th_filter() {
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let port = h.edge_mqtt;

    // MQTT 3.1.1: a persistent session needs a client identifier (return code 2); a clean one
    // does not.
    let (mut s, code) = try_connect(port, &connect_bytes(4, "", false, None, None));
    assert_eq!(code, 2, "3.1.1, persistent, no client identifier");
    assert_eq!(read_packet(&mut s), None, "closed after the refusal");
    let (_s, code) = try_connect(port, &connect_bytes(4, "", true, None, None));
    assert_eq!(code, 0, "3.1.1, clean, no client identifier");

    // Shared subscriptions: 0x9E (MQTT 5), 0x80 (MQTT 3.1.1); the other filters in the same
    // SUBSCRIBE are granted.
    for (version, refused) in [(5u8, 0x9e), (4, 0x80)] {
        let (mut s, code) = try_connect(
            port,
            &connect_bytes(version, &format!("sharer-{version}"), true, None, None),
        );
        assert_eq!(code, 0);
        let filters = ["$share/g/t".to_owned(), "t".to_owned()];
        assert_eq!(
            subscribe(&mut s, version, 1, &filters),
            [refused, 1],
            "v{version}"
        );
    }

    // 1024 topic filters per session: the 1025th is refused (0x97 / 0x80); one already there
    // is still replaced; after an UNSUBSCRIBE there is room for one more.
    for (version, refused) in [(5u8, 0x97), (4, 0x80)] {
        let (mut s, code) = try_connect(
            port,
            &connect_bytes(version, &format!("many-{version}"), true, None, None),
        );
        assert_eq!(code, 0);
        let filters: Vec<String> = (0..1025).map(|i| format!("many/{i}")).collect();
        let codes = subscribe(&mut s, version, 1, &filters);
        assert_eq!(codes.len(), 1025);
        assert!(
            codes[..1024].iter().all(|&c| c == 1),
            "v{version}: the first 1024 granted"
        );
        assert_eq!(codes[1024], refused, "v{version}: the 1025th");
        assert_eq!(
            subscribe(&mut s, version, 2, &["many/more".into()]),
            [refused]
        );
        assert_eq!(
            subscribe(&mut s, version, 3, &["many/0".into()]),
            [1],
            "v{version}: again"
        );
        let mut body = 4u16.to_be_bytes().to_vec();
        if version == 5 {
            body.push(0);
        }
        body.extend(string(b"many/0"));
        s.write_all(&packet(0xa2, &body)).unwrap();
        let (first, _) = read_packet(&mut s).expect("an UNSUBACK");
        assert_eq!(first, 0xb0, "UNSUBACK");
        assert_eq!(
            subscribe(&mut s, version, 5, &["many/more".into()]),
            [1],
            "v{version}: room"
        );
    }
}

/// DUP (MQTT 3.1.1 section 3.3.1.1): a persistent session's message that never reached a
/// connection goes out without it, even when it waited for the client; one written to a
/// connection that ended before its PUBACK goes out again with it.
#[test]
fn dup_marks_only_what_may_have_been_written_before() {
    let h = Hubs::start(Proto::Websocket, CloudSpec::default(), "");
    let topic = up("dup/x");
    // A persistent 3.1.1 session (Clean Session 0), subscribed at QoS 1, then away.
    let persistent = |port| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(mqtt::WAIT)).unwrap();
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60];
        body.extend(3u16.to_be_bytes());
        body.extend_from_slice(b"dup");
        s.write_all(&mqtt::packet(0x10, &body)).unwrap();
        let (first, _) = mqtt::read_packet(&mut s).expect("a CONNACK");
        assert_eq!(first, 0x20);
        s
    };
    let mut s = persistent(h.cloud_mqtt);
    let mut sub = vec![0, 1];
    sub.extend((topic.len() as u16).to_be_bytes());
    sub.extend_from_slice(topic.as_bytes());
    sub.push(1);
    s.write_all(&mqtt::packet(0x82, &sub)).unwrap();
    assert_eq!(mqtt::read_packet(&mut s).expect("a SUBACK").0, 0x90);
    s.write_all(&[0xe0, 0]).unwrap();
    drop(s);

    let mut witness = Paho::clean("witness", h.cloud_mqtt, 5);
    witness.subscribe(&topic, 1);
    let mut edge_pub = Paho::clean("edge-pub", h.edge_mqtt, 5);
    edge_pub.publish("dup/x", "waited", 1, false);
    assert_eq!(
        witness.message().payload,
        "waited",
        "the session has it too"
    );

    // Back: the message comes without DUP; the connection ends before its PUBACK.
    let mut s = persistent(h.cloud_mqtt);
    let (first, _) = mqtt::read_packet(&mut s).expect("the waiting PUBLISH");
    assert_eq!(first & 0xf0, 0x30, "a PUBLISH: {first:#x}");
    assert_eq!(first & 0x08, 0, "never written before: no DUP ({first:#x})");
    drop(s);

    // Back again: the same message, now with DUP, and nothing once acknowledged.
    let mut s = persistent(h.cloud_mqtt);
    let (first, body) = mqtt::read_packet(&mut s).expect("the PUBLISH again");
    assert_eq!(first & 0xf0, 0x30, "a PUBLISH: {first:#x}");
    assert_eq!(first & 0x08, 0x08, "written before: DUP ({first:#x})");
    assert!(body.ends_with(b"waited"));
    let pid_at = 2 + topic.len();
    s.write_all(&mqtt::packet(0x40, &body[pid_at..pid_at + 2]))
        .unwrap();
    s.write_all(&[0xe0, 0]).unwrap();
}
