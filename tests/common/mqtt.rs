//! MQTT clients that nobody in this project wrote, for the tests: paho-mqtt 2.x for Python
//! (driven through `tests/mqtt/driver.py`), Debian's `mosquitto_pub` / `mosquitto_sub`, and a raw
//! TCP peer for input no client library would send. `make test-deps` (`scripts/test-deps.sh`)
//! installs the first two; a test fails, naming what is missing, when they are not there.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};

/// How long any one wait on a client may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// The port of the plain MQTT listener a hub logged (`mqtt listening on 127.0.0.1:PORT`).
pub fn mqtt_port(hub: &Hub) -> u16 {
    let line = hub.first_line("mqtt listening on", WAIT, |l| {
        l.contains("mqtt listening on")
    });
    let addr = line.rsplit("mqtt listening on").next().unwrap().trim();
    let port = addr.rsplit(':').next().unwrap();
    port.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}

/// The port of the MQTT over TLS listener a hub logged (`mqtt listening on 127.0.0.1:PORT (TLS)`).
pub fn mqtt_tls_port(hub: &Hub) -> u16 {
    let line = hub.first_line("mqtt listening on ... (TLS)", WAIT, |l| {
        l.contains("mqtt listening on") && l.ends_with("(TLS)")
    });
    let addr = line.rsplit("mqtt listening on").next().unwrap();
    let addr = addr.trim().trim_end_matches("(TLS)").trim();
    addr.rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}

/// A python3 that imports paho-mqtt 2.x: `$HUB_TEST_PYTHON`, else the virtual environment
/// `scripts/test-deps.sh` makes under `target/`, else the `python3` on the PATH. Panics naming
/// the remedy when none does.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("HUB_TEST_PYTHON") {
            candidates.push(PathBuf::from(p));
        }
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mqtt-venv/bin/python3"));
        candidates.push(PathBuf::from("python3"));
        let check =
            "import sys, paho.mqtt as m; sys.exit(0 if m.__version__.startswith('2.') else 1)";
        for c in &candidates {
            let ok = Command::new(c)
                .args(["-c", check])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return c.clone();
            }
        }
        panic!(
            "no python3 with paho-mqtt 2.x (tried {candidates:?}): run `make test-deps` \
             (scripts/test-deps.sh) to install it"
        )
    })
}

/// Panics, naming the remedy, unless `mosquitto_pub` and `mosquitto_sub` are on the PATH.
pub fn require_mosquitto() {
    for tool in ["mosquitto_pub", "mosquitto_sub", "stdbuf"] {
        let found = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "{tool} is not installed: run `make test-deps` (scripts/test-deps.sh; Debian's \
             mosquitto-clients)"
        );
    }
}

/// One received MQTT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    pub response_topic: Option<String>,
    pub correlation: Option<String>,
}

impl Received {
    fn from_event(e: &Value) -> Received {
        Received {
            topic: e["topic"].as_str().unwrap().to_owned(),
            payload: e["payload"].as_str().unwrap_or("").to_owned(),
            qos: e["qos"].as_u64().unwrap() as u8,
            retain: e["retain"].as_bool().unwrap(),
            response_topic: e["response_topic"].as_str().map(str::to_owned),
            correlation: e["correlation"].as_str().map(str::to_owned),
        }
    }
}

/// A paho-mqtt client in its own Python process (tests/mqtt/driver.py).
pub struct Paho {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    /// Events read but not yet asked for.
    pending: VecDeque<Value>,
}

impl Paho {
    /// Starts a driver (no connection yet).
    pub fn spawn(name: &str) -> Paho {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/driver.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the paho driver");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("[paho {tag}] not an event: {line}");
                    continue;
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Paho {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            events,
            pending: VecDeque::new(),
        }
    }

    /// Starts a client and connects it with `options` (the driver's `connect` fields; `port`,
    /// `version` and `client_id` at least), expecting a successful CONNACK whose session-present
    /// flag is returned.
    pub fn connect(name: &str, options: Value) -> (Paho, bool) {
        let mut paho = Paho::spawn(name);
        let mut cmd = options;
        cmd["op"] = json!("connect");
        paho.send(cmd);
        let connack = paho.wait("CONNACK", |e| e["ev"] == "connack");
        assert_eq!(connack["rc"], 0, "{name}: connection refused: {connack}");
        let present = connack["session_present"].as_bool().unwrap();
        (paho, present)
    }

    /// A client with a clean session: MQTT `version` (3 or 5) on 127.0.0.1:`port`.
    pub fn clean(name: &str, port: u16, version: u8) -> Paho {
        Paho::connect(
            name,
            json!({"port": port, "version": version, "client_id": name, "clean": true}),
        )
        .0
    }

    /// Sends one command to the driver.
    pub fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("driver running");
        writeln!(stdin, "{cmd}").expect("write to the paho driver");
        stdin.flush().unwrap();
    }

    /// The first event (read before or now) for which `wanted` holds, leaving the others for
    /// later; panics after [`WAIT`], or on an error the driver reports.
    pub fn wait(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(what, WAIT, wanted)
            .unwrap_or_else(|| panic!("{}: no {what} within {WAIT:?}", self.name))
    }

    /// [`wait`](Self::wait), but `None` after `within`.
    pub fn wait_within(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e["ev"] == "error" => panic!("{}: driver error: {e}", self.name),
                Ok(e) if wanted(&e) => return Some(e),
                Ok(e) => self.pending.push_back(e),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: the driver ended while waiting for {what}", self.name)
                }
            }
        }
    }

    /// Subscribes to `topic` at `qos`; returns the granted code once the SUBACK arrived, which
    /// must not be a failure.
    pub fn subscribe(&mut self, topic: &str, qos: u8) -> u8 {
        self.send(json!({"op": "subscribe", "topic": topic, "qos": qos}));
        let suback = self.wait("SUBACK", |e| e["ev"] == "suback");
        let code = suback["codes"][0].as_u64().unwrap() as u8;
        assert!(
            code < 0x80,
            "{}: subscription to {topic} refused: {suback}",
            self.name
        );
        code
    }

    /// Publishes `payload` to `topic` and waits for its acknowledgement (PUBACK, PUBCOMP, or the
    /// write at QoS 0), which must be a success.
    pub fn publish(&mut self, topic: &str, payload: &str, qos: u8, retain: bool) {
        self.publish_with(
            json!({"topic": topic, "payload": payload, "qos": qos, "retain": retain}),
        );
    }

    /// Publishes with the driver's `publish` fields in `fields` and waits as
    /// [`publish`](Self::publish) does; panics at once if the connection is lost meanwhile.
    pub fn publish_with(&mut self, mut fields: Value) {
        let tag = format!("p{}", fields["payload"].as_str().unwrap_or(""));
        fields["op"] = json!("publish");
        fields["tag"] = json!(tag);
        self.send(fields);
        let acked = self.wait("acknowledgement", |e| {
            (e["ev"] == "acked" && e["tag"] == tag.as_str()) || e["ev"] == "lost"
        });
        assert_ne!(
            acked["ev"], "lost",
            "{}: the connection was lost before the acknowledgement of {tag}",
            self.name
        );
        assert!(
            acked["rc"].as_u64().unwrap() < 0x80,
            "{}: publication refused: {acked}",
            self.name
        );
    }

    /// Publishes `start..start + count` (as text) to `topic` without waiting.
    pub fn publish_range(&mut self, topic: &str, qos: u8, start: u64, count: u64) {
        self.send(
            json!({"op": "publish_range", "topic": topic, "qos": qos, "start": start, "count": count}),
        );
    }

    /// Waits until `n` publications were acknowledged; returns their numbers in the order
    /// the acknowledgements came.
    pub fn acked(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let e = self.wait("acknowledgement", |e| e["ev"] == "acked");
                assert!(
                    e["rc"].as_u64().unwrap() < 0x80,
                    "{}: refused: {e}",
                    self.name
                );
                e["tag"].as_str().unwrap().parse().unwrap()
            })
            .collect()
    }

    /// The acknowledgements that arrived up to now (or within `within`), without waiting for
    /// more: the numbers acknowledged.
    pub fn acked_so_far(&mut self, within: Duration) -> Vec<u64> {
        let mut got = Vec::new();
        while let Some(e) = self.wait_within("acknowledgement", within, |e| e["ev"] == "acked") {
            if e["rc"].as_u64().unwrap() < 0x80 {
                got.push(e["tag"].as_str().unwrap().parse().unwrap());
            }
        }
        got
    }

    /// The next `n` messages.
    pub fn messages(&mut self, n: usize) -> Vec<Received> {
        (0..n)
            .map(|i| {
                let e = self
                    .wait_within("message", WAIT, |e| e["ev"] == "message")
                    .unwrap_or_else(|| {
                        panic!("{}: {i} message(s) of {n} within {WAIT:?}", self.name)
                    });
                Received::from_event(&e)
            })
            .collect()
    }

    /// The next message as the driver reported it, v5 properties included (`user`,
    /// `content_type`, `payload_format`, `message_expiry`: see tests/mqtt/driver.py).
    pub fn message_event(&mut self) -> Value {
        self.wait("message", |e| e["ev"] == "message")
    }

    /// The next message.
    pub fn message(&mut self) -> Received {
        self.messages(1).pop().unwrap()
    }

    /// Messages until one satisfies `last` (included).
    pub fn messages_until(&mut self, mut last: impl FnMut(&Received) -> bool) -> Vec<Received> {
        let mut got = Vec::new();
        loop {
            let e = self
                .wait_within("message", WAIT, |e| e["ev"] == "message")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {} message(s) within {WAIT:?}, the last expected not among them; \
                         the last: {:?}",
                        self.name,
                        got.len(),
                        got.last()
                    )
                });
            let m = Received::from_event(&e);
            let done = last(&m);
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// Whether the connection ended without this side's DISCONNECT, within `within`; the
    /// reason code paho reported.
    pub fn lost_within(&mut self, within: Duration) -> Option<u64> {
        self.wait_within("loss of the connection", within, |e| e["ev"] == "lost")
            .map(|e| e["rc"].as_u64().unwrap_or(0))
    }

    /// Asserts that the connection is still up (no loss reported so far).
    pub fn assert_connected(&mut self) {
        if let Some(rc) = self.lost_within(Duration::ZERO) {
            panic!("{}: the connection was lost (reason {rc:#x})", self.name);
        }
    }

    /// A clean DISCONNECT; returns once paho closed the connection.
    pub fn disconnect(mut self) {
        self.send(json!({"op": "disconnect"}));
        self.wait("close", |e| e["ev"] == "closed");
        self.stdin = None;
        let _ = self.child.wait();
    }

    /// Kills the client's process: its socket closes without DISCONNECT.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end, at most [`WAIT`]; returns (success, stdout, stderr).
fn run_bounded(mut command: Command) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e} (run `make test-deps`)"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not end within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    (status.success(), stdout, reader.join().unwrap())
}

/// The mosquitto clients' name for MQTT `version` (3 or 5).
fn mosquitto_version(version: u8) -> &'static str {
    if version == 5 { "mqttv5" } else { "mqttv311" }
}

/// `mosquitto_pub` of one message; panics unless it exits 0, which for QoS 1 and 2 it does
/// only once the hub acknowledged the message. `payload` None sends an empty payload.
pub fn mosquitto_pub(
    port: u16,
    version: u8,
    topic: &str,
    qos: u8,
    payload: Option<&str>,
    retain: bool,
) {
    let (ok, out, err) = mosquitto_pub_with(&[], port, version, topic, qos, payload, retain);
    assert!(ok, "mosquitto_pub -t {topic} -q {qos} failed: {out}{err}");
}

/// [`mosquitto_pub`] with `extra` arguments (`-u`, `--cafile`, ...) before the others; returns
/// (exited 0, stdout, stderr) instead of panicking when it fails.
pub fn mosquitto_pub_with(
    extra: &[&str],
    port: u16,
    version: u8,
    topic: &str,
    qos: u8,
    payload: Option<&str>,
    retain: bool,
) -> (bool, String, String) {
    let mut command = Command::new("mosquitto_pub");
    command.args(extra);
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-V",
        mosquitto_version(version),
    ]);
    command.args(["-t", topic, "-q", &qos.to_string()]);
    match payload {
        Some(p) => command.args(["-m", p]),
        None => command.arg("-n"),
    };
    if retain {
        command.arg("-r");
    }
    run_bounded(command)
}

/// A `mosquitto_sub` process, subscribed.
pub struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub` on 127.0.0.1:`port` for `topic` at `qos`; returns once the SUBACK
    /// arrived (granting at most `qos`, no failure).
    pub fn start(port: u16, version: u8, topic: &str, qos: u8) -> MosquittoSub {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-V", mosquitto_version(version)])
            .args(["-t", topic, "-q", &qos.to_string(), "-F", "MSG %q %r %t %p"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto_sub (run `make test-deps`)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = MosquittoSub { child, lines };
        let granted = sub.next_line(|l| l.starts_with("Subscribed (mid:"), "its SUBACK");
        let code: u8 = granted.rsplit(' ').next().unwrap().trim().parse().unwrap();
        assert!(code <= qos, "mosquitto_sub -t {topic}: {granted}");
        sub
    }

    fn next_line(&mut self, wanted: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if wanted(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("mosquitto_sub: no {what} within {WAIT:?}"),
            }
        }
    }

    /// The next `n` messages as (qos, retain, topic, payload).
    pub fn messages(&mut self, n: usize) -> Vec<(u8, bool, String, String)> {
        (0..n)
            .map(|_| {
                let line = self.next_line(|l| l.starts_with("MSG "), "message");
                let mut parts = line.splitn(5, ' ').skip(1);
                let qos = parts.next().unwrap().parse().unwrap();
                let retain = parts.next().unwrap() == "1";
                let topic = parts.next().unwrap().to_owned();
                let payload = parts.next().unwrap_or("").to_owned();
                (qos, retain, topic, payload)
            })
            .collect()
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT over TCP, for packets no client library sends.

/// The variable byte integer of MQTT (the remaining length).
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A packet: `first` byte, then the remaining length and `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    p.extend(varint(body.len()));
    p.extend_from_slice(body);
    p
}

/// A CONNECT of MQTT `version` (4 = 3.1.1, 5), clean, keep-alive 60 s, for `client_id`.
pub fn connect_packet(version: u8, client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', version, 0x02, 0, 60];
    if version == 5 {
        body.push(0); // no properties
    }
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

/// Reads one packet: (first byte, body), or `None` at the end of the stream (or a reset).
pub fn read_packet(stream: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).ok()?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).ok()?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// A TCP connection to 127.0.0.1:`port` that sent a CONNECT of `version` and read a
/// successful CONNACK.
pub fn raw_client(port: u16, version: u8, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&connect_packet(version, client_id)).unwrap();
    let (first, body) = read_packet(&mut s).expect("a CONNACK");
    assert_eq!(first, 0x20, "CONNACK expected, got {first:#x} {body:?}");
    assert_eq!(body[1], 0, "connection refused: {body:?}");
    s
}

// ---------------------------------------------------------------------------------------------
// A cloud and one edge, both with MQTT listeners on 127.0.0.1:0.

/// A cloud and an edge (`edge-node`) connected to it, each with its MQTT port, restartable
/// after `kill -9` with the same state.
pub struct Hubs {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub cloud_spec: CloudSpec,
    pub cloud: Cloud,
    pub cloud_mqtt: u16,
    pub edge_spec: EdgeSpec,
    pub edge: Hub,
    /// The edge's application endpoint, `ws://127.0.0.1:PORT`.
    pub edge_apps: String,
    pub edge_mqtt: u16,
}

/// The node id of the edge in [`Hubs`].
pub const NODE: &str = "edge-node";

impl Hubs {
    /// Starts both over `proto` and waits until the edge is connected: the cloud as
    /// `cloud_spec` says, the edge with `edge_mqtt_extra` in its `mqtt:` section (lines
    /// indented by two spaces).
    pub fn start(proto: Proto, cloud_spec: CloudSpec, edge_mqtt_extra: &str) -> Hubs {
        let extra = edge_mqtt_extra.to_owned();
        Hubs::start_with(proto, cloud_spec, |edge| edge.mqtt_extra = extra)
    }

    /// [`start`](Self::start), with the edge's settings changed by `edge` first.
    pub fn start_with(
        proto: Proto,
        cloud_spec: CloudSpec,
        edge: impl FnOnce(&mut EdgeSpec),
    ) -> Hubs {
        let dir = tempfile::tempdir().unwrap();
        let pki = super::dev_pki(dir.path());
        let mut cloud_spec = cloud_spec;
        let cloud = super::start_cloud(dir.path(), &pki, &cloud_spec);
        (cloud_spec.ws_port, cloud_spec.quic_port) = (cloud.ws_port, cloud.quic_port);
        let cloud_mqtt = mqtt_port(&cloud.hub);
        let mut edge_spec = EdgeSpec::new(proto, &pki, NODE, cloud.port(proto));
        edge_spec.state = Some(dir.path().join("edge-state"));
        edge(&mut edge_spec);
        let mut hubs_edge = edge_spec.start(dir.path());
        let edge_apps = super::apps_url(&mut hubs_edge);
        let edge_mqtt = mqtt_port(&hubs_edge);
        hubs_edge.wait_for_within("connected to the cloud", WAIT);
        Hubs {
            dir,
            pki,
            cloud_spec,
            cloud,
            cloud_mqtt,
            edge_spec,
            edge: hubs_edge,
            edge_apps,
            edge_mqtt,
        }
    }

    /// `kill -9` of the edge, then the edge again with the same state, connected.
    pub fn kill9_and_restart_edge(&mut self) {
        self.edge.kill9();
        let mut edge = self.edge_spec.start(self.dir.path());
        self.edge_apps = super::apps_url(&mut edge);
        self.edge_mqtt = mqtt_port(&edge);
        edge.wait_for_within("connected to the cloud", WAIT);
        self.edge = edge;
    }

    /// `kill -9` of the cloud, then the cloud again on the same ports with the same state,
    /// with the edge connected to it again.
    pub fn kill9_and_restart_cloud(&mut self) {
        self.cloud.hub.kill9();
        self.cloud = super::start_cloud(self.dir.path(), &self.pki, &self.cloud_spec);
        self.cloud_mqtt = mqtt_port(&self.cloud.hub);
        self.cloud
            .hub
            .wait_for_within(&format!("node {NODE} connected"), WAIT);
    }
}
