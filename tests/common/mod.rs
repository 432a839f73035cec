//! Helpers shared by the integration tests: a generated PKI and the built binary.
#![allow(dead_code)]

pub mod apps;
pub mod hosts;
pub mod http;
pub mod mqtt;
pub mod nats;
pub mod placement;
pub mod small_fs;

/// SplitMix64: a small deterministic generator for the tests' random choices, replayable from
/// its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `lo` and `hi` seconds.
    pub fn secs(&mut self, lo: f64, hi: f64) -> std::time::Duration {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        std::time::Duration::from_secs_f64(lo + (hi - lo) * unit)
    }
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hub` binary cargo built for these tests.
pub fn hub_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hub"))
}

/// Runs the binary at `bin` with `args` and returns what it did.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the hub binary")
}

/// A fresh development PKI (nodes `edge-node` and `other-node`) written by `hub::pki`.
pub fn dev_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    hub::pki::write(&hub::pki::PkiOptions {
        dir: pki.clone(),
        nodes: vec!["edge-node".into(), "other-node".into()],
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        force: false,
    })
    .expect("write the dev PKI");
    pki
}

/// Lays a dev PKI out the way KubeEdge does under `root` (standing in for `/etc/kubeedge/`):
/// `ca/rootCA.crt`, `certs/edge.crt`, `certs/edge.key`, plus `certs/other.key` (a key that
/// belongs to no certificate there) and `certs/garbage.pem` (not PEM at all).
pub fn kubeedge_layout(root: &Path) {
    let pki = dev_pki(root);
    std::fs::create_dir_all(root.join("ca")).unwrap();
    std::fs::create_dir_all(root.join("certs")).unwrap();
    let copy = |from: &str, to: &str| std::fs::copy(pki.join(from), root.join(to)).unwrap();
    copy("ca.crt", "ca/rootCA.crt");
    copy("node-edge-node.crt", "certs/edge.crt");
    copy("node-edge-node.key", "certs/edge.key");
    copy("node-other-node.key", "certs/other.key");
    std::fs::write(root.join("certs/garbage.pem"), b"\x00\x01not pem at all\n").unwrap();
}

/// `text` with KubeEdge's `/etc/kubeedge/` replaced by `root`.
pub fn relocate(text: &str, root: &Path) -> String {
    text.replace("/etc/kubeedge/", &format!("{}/", root.display()))
}

// ---------------------------------------------------------------------------------------------
// Running hubs as real processes and reading their logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any expected log line may take to appear before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `hub` process whose log lines (stderr) are collected as they come.
pub struct Hub {
    pub name: String,
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    cursor: usize,
}

impl Hub {
    /// Starts the built binary with `args`, logging at `info`.
    pub fn start(name: &str, args: &[&str]) -> Hub {
        let mut command = Command::new(hub_bin());
        command.args(args);
        Hub::spawn(name, command)
    }

    /// Starts `command` (one that runs the built binary, possibly through a wrapper that execs
    /// it, such as `nsenter`), logging at `info` (or by `HUB_TEST_LOG`, a `RUST_LOG` filter with
    /// `info` in it, to look into a failure).
    pub fn spawn(name: &str, mut command: Command) -> Hub {
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("HUB_TEST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hub");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        Hub {
            name: name.to_owned(),
            child,
            log,
            cursor: 0,
        }
    }

    /// Waits for a log line containing `needle` after the last line a wait matched, and returns
    /// it; panics after `within`.
    pub fn wait_for_within(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(i) = guard[self.cursor..].iter().position(|l| l.contains(needle)) {
                self.cursor += i + 1;
                return guard[self.cursor - 1].clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "{}: no log line with {needle:?} within {within:?}; log:\n{}",
                    self.name,
                    guard.join("\n")
                );
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// [`wait_for_within`](Self::wait_for_within) with the default patience.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, PATIENCE)
    }

    /// The first log line (from the start, whatever earlier waits matched) for which `wanted`
    /// holds, waiting for it up to `within`; panics naming `what` after that.
    pub fn first_line(
        &self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(line) = guard.iter().find(|l| wanted(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "{}: no log line {what} within {within:?}; log:\n{}",
                    self.name,
                    guard.join("\n")
                );
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Every log line so far containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGKILL, then reaped.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The transports, as the configuration names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Websocket,
    Quic,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Websocket => "websocket",
            Proto::Quic => "quic",
        }
    }
}

/// A cloud's settings for a test; ports 0 means any free one.
#[derive(Debug, Clone)]
pub struct CloudSpec {
    /// The name its log lines are tagged with in the test's output.
    pub name: String,
    /// The address both link listeners bind (`cloudhub.address`).
    pub address: String,
    pub ws_port: u16,
    pub quic_port: u16,
    pub keepalive: f64,
    pub write_timeout: f64,
    pub node_limit: usize,
    pub max_streams: u32,
    /// The queues' folder, relative to the test's folder.
    pub state: String,
    /// Extra lines for the `apps:` and `queues:` sections (indented by two spaces).
    pub apps_extra: String,
    pub queues_extra: String,
    /// Extra lines for the `mqtt:` section (indented by two spaces), after `listen: 127.0.0.1:0`.
    pub mqtt_extra: String,
    /// Extra lines for the `metrics:` section (indented by two spaces), after
    /// `listen: 127.0.0.1:0`.
    pub metrics_extra: String,
    /// Extra top-level sections at the end of the file (`cluster:` and its keys).
    pub extra: String,
}

impl Default for CloudSpec {
    fn default() -> Self {
        CloudSpec {
            name: "cloud".into(),
            address: "127.0.0.1".into(),
            ws_port: 0,
            quic_port: 0,
            keepalive: 10.0,
            write_timeout: 5.0,
            node_limit: 100,
            max_streams: 100,
            state: "cloud-state".into(),
            apps_extra: String::new(),
            queues_extra: String::new(),
            mqtt_extra: String::new(),
            metrics_extra: String::new(),
            extra: String::new(),
        }
    }
}

/// A running cloud and the ports it listens on.
pub struct Cloud {
    pub hub: Hub,
    pub ws_port: u16,
    pub quic_port: u16,
    /// The application endpoint, `ws://127.0.0.1:PORT`.
    pub apps: String,
}

impl Cloud {
    /// The port for `proto`.
    pub fn port(&self, proto: Proto) -> u16 {
        match proto {
            Proto::Websocket => self.ws_port,
            Proto::Quic => self.quic_port,
        }
    }
}

fn port_from(line: &str) -> u16 {
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

/// Starts a cloud with both protocols on `spec.address` (127.0.0.1 unless set), using the dev
/// PKI in `pki`.
pub fn start_cloud(dir: &Path, pki: &Path, spec: &CloudSpec) -> Cloud {
    let file = dir.join(format!(
        "cloud-{}-{}.yaml",
        spec.ws_port,
        std::process::id()
    ));
    let file = unique(file);
    std::fs::write(
        &file,
        format!(
            "cloudhub:\n  protocol_websocket: true\n  port: {}\n  protocol_quic: true\n  quic_port: {}\n  max_incomingstreams: {}\n  address: {}\n  ca: {}\n  cert: {}\n  key: {}\n  keepalive-interval: {}\n  write-timeout: {}\n  node-limit: {}\napps:\n  listen: 127.0.0.1:0\n{}queues:\n  dir: {}\n{}mqtt:\n  listen: 127.0.0.1:0\n{}metrics:\n  listen: 127.0.0.1:0\n{}{}",
            spec.ws_port,
            spec.quic_port,
            spec.max_streams,
            spec.address,
            pki.join("ca.crt").display(),
            pki.join("server.crt").display(),
            pki.join("server.key").display(),
            spec.keepalive,
            spec.write_timeout,
            spec.node_limit,
            spec.apps_extra,
            dir.join(&spec.state).display(),
            spec.queues_extra,
            spec.mqtt_extra,
            spec.metrics_extra,
            spec.extra,
        ),
    )
    .unwrap();
    let mut hub = Hub::start(&spec.name, &["cloud", "-c", file.to_str().unwrap()]);
    let ws_port = port_from(&hub.wait_for("websocket listening on"));
    let quic_port = port_from(&hub.wait_for("quic listening on"));
    hub.cursor = 0;
    let apps = apps_url(&mut hub);
    hub.cursor = 0;
    Cloud {
        hub,
        ws_port,
        quic_port,
        apps,
    }
}

/// The application endpoint a hub logged.
pub fn apps_url(hub: &mut Hub) -> String {
    let line = hub.wait_for("apps listening on ws://");
    line[line.find("ws://").unwrap()..].trim().to_owned()
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    loop {
        let p = path.with_extension(format!("{n}.yaml"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// An edge's settings for a test.
#[derive(Debug, Clone)]
pub struct EdgeSpec {
    pub proto: Proto,
    pub node_id: String,
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub heartbeat: f64,
    pub read_deadline: f64,
    pub handshake_timeout: f64,
    pub backoff_initial: f64,
    pub backoff_max: f64,
    /// Extra lines for the controller section (indented by two spaces).
    pub controller_extra: String,
    /// The outbox folder; by default one of its own for each configuration written.
    pub state: Option<PathBuf>,
    /// Extra lines for the outbox and apps sections (indented by two spaces).
    pub outbox_extra: String,
    pub apps_extra: String,
    /// Extra lines for the `mqtt:` section (indented by two spaces), after `listen: 127.0.0.1:0`.
    pub mqtt_extra: String,
    /// Extra lines for the `metrics:` section (indented by two spaces), after
    /// `listen: 127.0.0.1:0`.
    pub metrics_extra: String,
}

impl EdgeSpec {
    /// An edge for node `node_id` of the dev PKI in `pki`, dialling 127.0.0.1:`port`.
    pub fn new(proto: Proto, pki: &Path, node_id: &str, port: u16) -> EdgeSpec {
        let (crt, key) = hub::pki::node_files(node_id);
        EdgeSpec {
            proto,
            node_id: node_id.to_owned(),
            port,
            cert: pki.join(crt),
            key: pki.join(key),
            ca: pki.join("ca.crt"),
            heartbeat: 1.0,
            read_deadline: 3.0,
            handshake_timeout: 5.0,
            backoff_initial: 0.2,
            backoff_max: 1.0,
            controller_extra: String::new(),
            state: None,
            outbox_extra: String::new(),
            apps_extra: String::new(),
            mqtt_extra: String::new(),
            metrics_extra: String::new(),
        }
    }

    /// Writes the edge configuration into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let url = match self.proto {
            Proto::Websocket => {
                format!("wss://127.0.0.1:{}/proj/{}/events", self.port, self.node_id)
            }
            Proto::Quic => format!("127.0.0.1:{}", self.port),
        };
        let file = unique(dir.join(format!("edge-{}-{}", self.node_id, self.proto.name())));
        let state = self
            .state
            .clone()
            .unwrap_or_else(|| file.with_extension("state"));
        std::fs::write(
            &file,
            format!(
                "{proto}:\n  url: {url}\n  cafile: {ca}\n  certfile: {cert}\n  keyfile: {key}\n  handshake-timeout: {hs}\n  write-deadline: 5\n  read-deadline: {rd}\ncontroller:\n  protocol: {proto}\n  heartbeat: {hb}\n  project-id: proj\n  node-id: {node}\n  backoff-initial: {binit}\n  backoff-max: {bmax}\n{extra}apps:\n  listen: 127.0.0.1:0\n{apps}outbox:\n  dir: {state}\n{outbox}mqtt:\n  listen: 127.0.0.1:0\n{mqtt}metrics:\n  listen: 127.0.0.1:0\n{metrics}",
                proto = self.proto.name(),
                ca = self.ca.display(),
                cert = self.cert.display(),
                key = self.key.display(),
                hs = self.handshake_timeout,
                rd = self.read_deadline,
                hb = self.heartbeat,
                node = self.node_id,
                binit = self.backoff_initial,
                bmax = self.backoff_max,
                extra = self.controller_extra,
                apps = self.apps_extra,
                state = state.display(),
                outbox = self.outbox_extra,
                mqtt = self.mqtt_extra,
                metrics = self.metrics_extra,
            ),
        )
        .unwrap();
        file
    }

    /// Writes the configuration and starts the edge.
    pub fn start(&self, dir: &Path) -> Hub {
        let file = self.write(dir);
        Hub::start(
            &format!("edge {} {}", self.node_id, self.proto.name()),
            &["edge", "-c", file.to_str().unwrap()],
        )
    }
}

/// A dev PKI with nodes `edge-node`, `other-node`, `node-1` … `node-3`.
pub fn link_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    hub::pki::write(&hub::pki::PkiOptions {
        dir: pki.clone(),
        nodes: ["edge-node", "other-node", "node-1", "node-2", "node-3"]
            .map(String::from)
            .to_vec(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        force: false,
    })
    .expect("write the dev PKI");
    pki
}

// ---------------------------------------------------------------------------------------------
// Relays between an edge and the cloud that can blackhole the link.

/// Shared switches of a relay.
#[derive(Default)]
struct RelayState {
    blackhole: AtomicBool,
    stopped: AtomicBool,
    target: Mutex<Option<SocketAddr>>,
    /// UDP only: upstream sockets per client; cleared to force new ones.
    generation: std::sync::atomic::AtomicU64,
}

/// A TCP relay on 127.0.0.1: forwards each connection to the target; while blackholed it reads
/// and drops every byte in both directions without closing anything.
pub struct TcpRelay {
    pub port: u16,
    state: Arc<RelayState>,
}

impl TcpRelay {
    pub fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(RelayState::default());
        *state.target.lock().unwrap() = Some(target);
        let s = state.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let target = s.target.lock().unwrap().unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pump(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            s.clone(),
                        );
                        pump(server, client, s.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpRelay { port, state }
    }

    /// Drops (true) or forwards (false) all traffic from now on.
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: Arc<RelayState>) {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if state.stopped.load(Ordering::Relaxed) {
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !state.blackhole.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        // A blackhole passes nothing on, not even the end of the stream.
        if !state.blackhole.load(Ordering::SeqCst) {
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    });
}

/// A UDP relay on 127.0.0.1: one upstream socket per client address; while blackholed every
/// datagram is dropped.
pub struct UdpRelay {
    pub port: u16,
    state: Arc<RelayState>,
}

impl UdpRelay {
    pub fn start(target: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = front.local_addr().unwrap().port();
        front
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let state = Arc::new(RelayState::default());
        *state.target.lock().unwrap() = Some(target);
        let s = state.clone();
        std::thread::spawn(move || {
            let mut upstreams: std::collections::HashMap<SocketAddr, (u64, UdpSocket)> =
                Default::default();
            let mut buf = vec![0u8; 65536];
            while !s.stopped.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if s.blackhole.load(Ordering::SeqCst) {
                    continue;
                }
                let generation = s.generation.load(Ordering::SeqCst);
                let up = upstreams
                    .entry(client)
                    .or_insert_with(|| (u64::MAX, UdpSocket::bind("127.0.0.1:0").unwrap()));
                if up.0 != generation {
                    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                    sock.connect(s.target.lock().unwrap().unwrap()).unwrap();
                    sock.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let back = sock.try_clone().unwrap();
                    let front = front.try_clone().unwrap();
                    let st = s.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        while !st.stopped.load(Ordering::Relaxed)
                            && st.generation.load(Ordering::SeqCst) == generation
                        {
                            if let Ok(n) = back.recv(&mut buf) {
                                if !st.blackhole.load(Ordering::SeqCst) {
                                    let _ = front.send_to(&buf[..n], client);
                                }
                            }
                        }
                    });
                    *up = (generation, sock);
                }
                let _ = up.1.send(&buf[..n]);
            }
        });
        UdpRelay { port, state }
    }

    /// Drops (true) or forwards (false) all datagrams from now on.
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }
}

/// A relay for `proto` in front of 127.0.0.1:`port`.
pub enum Relay {
    Tcp(TcpRelay),
    Udp(UdpRelay),
}

impl Relay {
    pub fn start(proto: Proto, port: u16) -> Relay {
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match proto {
            Proto::Websocket => Relay::Tcp(TcpRelay::start(target)),
            Proto::Quic => Relay::Udp(UdpRelay::start(target)),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Relay::Tcp(r) => r.port,
            Relay::Udp(r) => r.port,
        }
    }

    pub fn blackhole(&self, on: bool) {
        match self {
            Relay::Tcp(r) => r.blackhole(on),
            Relay::Udp(r) => r.blackhole(on),
        }
    }
}

/// A HELLO such as a raw test peer sends: `project`/`node`, protocol `version`, a 60 s heartbeat
/// and read deadline, window 16, a new outbox stream, nothing received yet.
pub fn raw_hello(project: &str, node: &str, version: u8) -> hub::proto::frame::Frame {
    hub::proto::frame::Frame::Hello(hub::proto::frame::Hello {
        version,
        project_id: project.into(),
        node_id: node.into(),
        heartbeat: Duration::from_secs(60),
        read_deadline: Duration::from_secs(60),
        window: 16,
        lanes: [1, 2].map(|up_stream| hub::proto::frame::HelloLane {
            up_stream,
            up_first: 1,
            down_stream: 0,
            down_seq: 0,
        }),
    })
}
