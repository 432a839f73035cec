//! Hostile MQTT clients and protocol corner cases against one cloud's MQTT listener: raw TCP
//! peers that send what no client library would, or never read what the hub writes. Each test
//! checks what the hub promises (`docs/mqtt.md`): bounded memory per connection, a stuck client
//! still cut off, reason codes, the bounds on what one client may make the hub keep.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::mqtt::{self, WAIT, packet, read_packet, varint};
use common::{Cloud, CloudSpec};

/// One cloud with its MQTT listener.
struct One {
    _dir: tempfile::TempDir,
    cloud: Cloud,
    port: u16,
}

fn cloud(mqtt_extra: &str) -> One {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::dev_pki(dir.path());
    let spec = CloudSpec {
        mqtt_extra: mqtt_extra.into(),
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(dir.path(), &pki, &spec);
    let port = mqtt::mqtt_port(&cloud.hub);
    One {
        _dir: dir,
        cloud,
        port,
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT, field by field.
#[derive(Clone)]
struct Connect {
    version: u8,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    /// v5 CONNECT properties, encoded.
    props: Vec<u8>,
    /// (topic, payload, qos)
    will: Option<(String, String, u8)>,
    user: Option<String>,
    password: Option<String>,
}

impl Connect {
    fn new(version: u8, client_id: &str) -> Connect {
        Connect {
            version,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            props: Vec::new(),
            will: None,
            user: None,
            password: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some((_, _, qos)) = &self.will {
            flags |= 0x04 | (qos << 3);
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.user.is_some() {
            flags |= 0x80;
        }
        let mut body = string(b"MQTT");
        body.push(self.version);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if self.version == 5 {
            body.extend(varint(self.props.len()));
            body.extend(&self.props);
        }
        body.extend(string(self.client_id.as_bytes()));
        if let Some((topic, payload, _)) = &self.will {
            if self.version == 5 {
                body.push(0);
            }
            body.extend(string(topic.as_bytes()));
            body.extend(string(payload.as_bytes()));
        }
        if let Some(u) = &self.user {
            body.extend(string(u.as_bytes()));
        }
        if let Some(p) = &self.password {
            body.extend(string(p.as_bytes()));
        }
        packet(0x10, &body)
    }
}

/// A raw client: a TCP connection (and a buffered reader of it) and the version it spoke in
/// its CONNECT.
struct Raw {
    s: TcpStream,
    r: BufReader<TcpStream>,
    version: u8,
}

impl Raw {
    /// Connects and returns the CONNACK's (flags, code).
    fn try_connect(port: u16, c: &Connect) -> (Raw, u8, u8) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&c.bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let (first, body) = read_packet(&mut r).expect("a CONNACK");
        assert_eq!(first, 0x20, "CONNACK expected, got {first:#x} {body:?}");
        let raw = Raw {
            s,
            r,
            version: c.version,
        };
        (raw, body[0], body[1])
    }

    fn connect(port: u16, c: &Connect) -> Raw {
        let (raw, _, code) = Raw::try_connect(port, c);
        assert_eq!(code, 0, "connection refused: {code:#x}");
        raw
    }

    fn clean(port: u16, version: u8, client_id: &str) -> Raw {
        Raw::connect(port, &Connect::new(version, client_id))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next packet; panics at the end of the stream.
    fn next(&mut self) -> (u8, Vec<u8>) {
        read_packet(&mut self.r).expect("a packet, not the end of the connection")
    }

    /// A PUBLISH of `payload` to `topic` at `qos` (`pid` for QoS > 0), with v5 `props`.
    fn publish_bytes(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        pid: u16,
        props: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic.as_bytes());
        if qos > 0 {
            body.extend(pid.to_be_bytes());
        }
        if self.version == 5 {
            body.extend(varint(props.len()));
            body.extend(props);
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, pid: u16) {
        let p = self.publish_bytes(topic, payload, qos, pid, &[]);
        self.send(&p);
    }

    /// SUBSCRIBE to `filters` (each with its options byte); returns the SUBACK's codes.
    fn subscribe(&mut self, pid: u16, filters: &[(String, u8)]) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        if self.version == 5 {
            body.push(0);
        }
        for (f, opts) in filters {
            body.extend(string(f.as_bytes()));
            body.push(*opts);
        }
        self.send(&packet(0x82, &body));
        loop {
            let (first, body) = self.next();
            if first == 0x90 {
                assert_eq!(
                    body[..2],
                    pid.to_be_bytes(),
                    "the SUBACK's packet identifier"
                );
                let skip = if self.version == 5 {
                    // Properties: a one-byte length, as the hub writes none that long.
                    3 + usize::from(body[2])
                } else {
                    2
                };
                return body[skip..].to_vec();
            }
        }
    }

    /// The next PUBLISH: (first byte, topic, packet identifier, payload), skipping other packets.
    fn next_publish(&mut self) -> (u8, String, Option<u16>, Vec<u8>) {
        loop {
            let (first, body) = self.next();
            if first >> 4 == 3 {
                return parse_publish(self.version, first, &body);
            }
        }
    }
}

fn parse_publish(version: u8, first: u8, body: &[u8]) -> (u8, String, Option<u16>, Vec<u8>) {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + len].to_vec()).unwrap();
    let mut at = 2 + len;
    let pid = (first & 0x06 != 0).then(|| {
        at += 2;
        u16::from_be_bytes([body[at - 2], body[at - 1]])
    });
    if version == 5 {
        // Properties: the varint length, then them.
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let b = body[at];
            at += 1;
            n |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += n;
    }
    (first, topic, pid, body[at..].to_vec())
}

/// A v5 property: Session Expiry Interval.
fn session_expiry(secs: u32) -> Vec<u8> {
    let mut p = vec![0x11];
    p.extend(secs.to_be_bytes());
    p
}

/// A PUBACK of `pid`.
fn puback(pid: u16) -> Vec<u8> {
    packet(0x40, &pid.to_be_bytes())
}

/// Publishes `payload` bytes at QoS 1 to `topic` from a thread until `stop` is set, each after
/// the PUBACK of the one before (so the hub's task for it never has input waiting long).
fn publish_until(
    port: u16,
    topic: &str,
    payload: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        let mut raw = Raw::clean(port, 5, "publisher");
        let p = raw.publish_bytes(&topic, &vec![b'x'; payload], 1, 1, &[]);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            raw.send(&p);
            assert_eq!(raw.next().0, 0x40, "PUBACK");
            sent += 1;
        }
        sent
    })
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_packet_size_announced_is_not_allocated_before_its_bytes_arrive() {
    const CONNS: usize = 256;
    let one = cloud("");
    let pid = one.cloud.hub.pid();
    let before = rss_kib(pid);
    // Each announces a CONNECT of 1 MiB - 1 (under mqtt.max-packet-bytes) and sends 1 byte of it.
    let conns: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", one.port)).unwrap();
            s.write_all(&[0x10, 0xff, 0xff, 0x3f, 0x00]).unwrap();
            s
        })
        .collect();
    // A round trip on another connection: the hub read what the others sent by then.
    let mut probe = Raw::clean(one.port, 5, "probe");
    probe.send(&packet(0xc0, &[]));
    assert_eq!(probe.next().0, 0xd0, "PINGRESP");
    let mut peak = rss_kib(pid);
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        peak = peak.max(rss_kib(pid));
    }
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 48 * 1024,
        "{CONNS} connections that sent 5 bytes each grew the hub by {grew} KiB"
    );
    drop(conns);
    // A packet that large still arrives whole when its bytes do.
    assert_eq!(probe.subscribe(1, &[("big".into(), 1)]), [1]);
    let payload: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    probe.publish("big", &payload, 1, 7);
    let (_, topic, _, got) = probe.next_publish();
    assert_eq!((topic.as_str(), got.len()), ("big", payload.len()));
    assert!(got == payload, "the payload changed on the way");
}

#[test]
fn a_subscriber_that_reads_nothing_is_cut_off_and_its_will_published() {
    let one = cloud("");
    let mut watcher = Raw::clean(one.port, 5, "watcher");
    assert_eq!(watcher.subscribe(1, &[("stuck/will".into(), 1)]), [1]);
    let mut c = Connect::new(5, "stuck");
    c.keep_alive = 2;
    c.will = Some(("stuck/will".into(), "gone".into(), 1));
    let mut stuck = Raw::connect(one.port, &c);
    assert_eq!(stuck.subscribe(1, &[("flood/#".into(), 0)]), [0]);
    // From now on it reads nothing and sends nothing: once the socket buffers are full, the
    // hub's write to it blocks. Its keep-alive (3 s) or its full delivery queue (16 MiB) ends it.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until(one.port, "flood/x", 256 * 1024, stop.clone());
    let started = Instant::now();
    let (_, topic, _, payload) = watcher.next_publish();
    stop.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("stuck/will", &b"gone"[..])
    );
    assert!(
        took < Duration::from_secs(15),
        "the will came {took:?} after the flood began"
    );
    publisher.join().unwrap();
    drop(stuck);
}

#[test]
fn a_will_is_published_at_its_own_qos() {
    let one = cloud("");
    let mut watcher = Raw::clean(one.port, 5, "watcher");
    assert_eq!(watcher.subscribe(1, &[("wills/#".into(), 2)]), [2]);
    for qos in [1u8, 2] {
        let mut c = Connect::new(5, &format!("dying-{qos}"));
        c.will = Some((format!("wills/{qos}"), "gone".into(), qos));
        let dying = Raw::connect(one.port, &c);
        drop(dying);
        let (first, topic, _, _) = watcher.next_publish();
        assert_eq!(topic, format!("wills/{qos}"));
        assert_eq!(
            (first >> 1) & 3,
            qos,
            "the will's QoS as its subscriber gets it"
        );
    }
}

#[test]
fn a_subscriber_holding_one_acknowledgement_back_still_gets_a_qos0_stream_quickly() {
    const N: usize = 50_000;
    let one = cloud("");
    let mut sub = Raw::clean(one.port, 5, "holder");
    assert_eq!(sub.subscribe(1, &[("hold/#".into(), 1)]), [1]);
    let mut publisher = Raw::clean(one.port, 5, "publisher");
    publisher.publish("hold/1", b"first", 1, 1);
    let (first, _, pid, _) = sub.next_publish();
    assert_eq!(((first >> 1) & 3, pid.is_some()), (1, true));
    // Never acknowledged. Then a QoS 0 stream (about 0.4 s in a debug build; 9 s when each
    // delivery looked at every one since the unacknowledged one).
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let p = publisher.publish_bytes("hold/0", b"m", 0, 0, &[]);
        let all: Vec<u8> = (0..N).flat_map(|_| p.iter().copied()).collect();
        publisher.send(&all);
        publisher
    });
    for i in 0..N {
        let (first, ..) = sub.next_publish();
        assert_eq!((first >> 1) & 3, 0, "message {i}");
    }
    let took = started.elapsed();
    let _publisher = writer.join().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "{N} QoS 0 messages behind one unacknowledged QoS 1 took {took:?}"
    );
}

#[test]
fn a_persistent_session_sends_again_from_its_first_unacknowledged_delivery() {
    let one = cloud("");
    let mut c = Connect::new(5, "keeper");
    c.clean = false;
    c.props = session_expiry(60);
    let mut sub = Raw::connect(one.port, &c);
    assert_eq!(sub.subscribe(1, &[("keep/#".into(), 1)]), [1]);
    let mut publisher = Raw::clean(one.port, 5, "publisher");
    for i in 0..3u16 {
        publisher.publish(&format!("keep/{i}"), b"m", 1, i + 1);
    }
    let mut pids = Vec::new();
    for i in 0..3 {
        let (_, topic, pid, _) = sub.next_publish();
        assert_eq!(topic, format!("keep/{i}"));
        pids.push(pid.unwrap());
    }
    // keep/1 and keep/2 acknowledged, keep/0 not.
    for pid in &pids[1..] {
        sub.send(&puback(*pid));
    }
    sub.send(&packet(0xe0, &[0]));
    drop(sub);

    let (mut sub, flags, code) = Raw::try_connect(one.port, &c);
    assert_eq!((flags & 1, code), (1, 0), "the session is present");
    for i in 0..3 {
        let (first, topic, pid, _) = sub.next_publish();
        assert_eq!(
            (topic, first & 0x08),
            (format!("keep/{i}"), 0x08),
            "sent again, DUP"
        );
        sub.send(&puback(pid.unwrap()));
    }
    publisher.publish("keep/3", b"m", 1, 4);
    let (_, topic, pid, _) = sub.next_publish();
    assert_eq!(topic, "keep/3");
    sub.send(&puback(pid.unwrap()));
    sub.send(&packet(0xe0, &[0]));
    drop(sub);

    // All acknowledged now: nothing is sent again.
    let (mut sub, flags, _) = Raw::try_connect(one.port, &c);
    assert_eq!(flags & 1, 1);
    publisher.publish("keep/4", b"m", 1, 5);
    let (_, topic, _, _) = sub.next_publish();
    assert_eq!(topic, "keep/4", "the first message after the reconnection");
}

#[test]
fn a_flooding_publisher_does_not_starve_other_connections() {
    let one = cloud("");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let port = one.port;
    let flooder = std::thread::spawn(move || {
        let mut raw = Raw::clean(port, 5, "flooder");
        let p = raw.publish_bytes("nobody/listens", b"m", 0, 0, &[]);
        let batch: Vec<u8> = (0..10_000).flat_map(|_| p.iter().copied()).collect();
        while !flag.load(Ordering::Relaxed) {
            if raw.s.write_all(&batch).is_err() {
                break;
            }
        }
    });
    // Pings for 2 s from another client meanwhile: each answered within a second (the hub ran
    // nothing else while the flooder's input never ran out: no PINGRESP within 30 s).
    let mut probe = Raw::clean(one.port, 5, "probe");
    let mut worst = Duration::ZERO;
    let begin = Instant::now();
    let mut n = 0;
    while begin.elapsed() < Duration::from_secs(2) {
        n += 1;
        let t = Instant::now();
        probe.send(&packet(0xc0, &[]));
        assert_eq!(probe.next().0, 0xd0, "PINGRESP");
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "a PINGRESP took {worst:?} (of {n}) while another client flooded the hub"
    );
}

/// A CONNECT naming a protocol level the hub does not speak is answered with CONNACK return code
/// 1, "unacceptable protocol version" (MQTT 3.1.1 section 3.1.2.2), then closed; a client of a
/// level it speaks still connects.
#[test]
fn an_unknown_protocol_level_is_answered_before_the_close() {
    let one = cloud("");
    let mut s = TcpStream::connect(("127.0.0.1", one.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut connect = mqtt::connect_packet(4, "level-6");
    connect[8] = 6; // the protocol level byte
    s.write_all(&connect).unwrap();
    let (first, body) = read_packet(&mut s).expect("a CONNACK before the close");
    assert_eq!((first, body), (0x20, vec![0, 1]));
    assert!(read_packet(&mut s).is_none(), "then the connection closes");
    drop(mqtt::raw_client(one.port, 4, "level-4"));
}

/// A client may send packets right after its CONNECT without waiting for the CONNACK (MQTT
/// 3.1.1 and 5.0 section 3.1.4): refused, it reads its CONNACK and then the end of the stream,
/// not a reset for the packets the hub left unread.
#[test]
fn a_refusal_reaches_a_client_that_sent_packets_behind_its_connect() {
    let one = cloud("");
    for round in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", one.port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut bytes = mqtt::connect_packet(4, "level-6");
        bytes[8] = 6; // the protocol level byte
        let publish = packet(0x30, &[string(b"readings"), vec![b'x'; 40]].concat());
        // About 220 KB: more than the hub reads before it answers.
        for _ in 0..4000 {
            bytes.extend_from_slice(&publish);
        }
        s.write_all(&bytes).unwrap();
        let answer = read_packet(&mut s);
        assert_eq!(answer, Some((0x20, vec![0, 1])), "round {round}");
        // Then the end of the stream. A reset instead, on a real network, can arrive before the
        // CONNACK and destroy it (and loses what the hub had not sent yet).
        let end = s.read(&mut [0u8; 1]);
        assert!(
            matches!(end, Ok(0)),
            "round {round}: the connection ends with {end:?}, not a clean end of stream"
        );
    }
}
