//! The operations endpoint's health side on real `hub cloud` and `hub edge` processes: `/healthz`
//! and `/readyz` and what readiness means on each hub (an edge is ready while applications can
//! hand it messages, link or no link; a hub whose queue folder stops taking writes is not), the
//! endpoint's answers to odd requests, and the systemd notifications (READY=1 once the listeners
//! are bound, WATCHDOG=1 while the hub runs, STOPPING=1 on SIGTERM).
//!
//! The full-disk cases mount a 4 MiB tmpfs in a private mount namespace (`unshare -m`, as
//! tests/full_disk.rs does), held by a small process for the test's length; the hub enters it
//! with `nsenter`. Where mount namespaces are unavailable (not root, or a sandbox forbids them)
//! those cases print why and skip.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::apps::*;
use common::http::{get, ops_addr, request, scrape};
use common::small_fs::SmallFs;
use common::{CloudSpec, EdgeSpec, Hub, PATIENCE, Proto};

/// `/readyz` until its status is `status`, at most [`WAIT`]: the body then.
fn ready_becomes(addr: SocketAddr, status: u16, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, body) = get(addr, "/readyz");
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still {got} ({body:?}) after {WAIT:?}, not {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn healthz_and_readyz_answer_on_both_hubs() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let cloud_ops = ops_addr(&mut cloud.hub);
    let spec = EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port);
    let (mut edge, _) = start_edge(&spec, tmp.path());
    let edge_ops = ops_addr(&mut edge);
    edge.wait_for("connected to the cloud");

    for (what, addr) in [("cloud", cloud_ops), ("edge", edge_ops)] {
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()), "{what}");
        let (status, body) = get(addr, "/readyz");
        assert_eq!(status, 200, "{what}: {body}");
        assert!(body.starts_with("ready: "), "{what}: {body:?}");
    }
    assert_eq!(
        get(cloud_ops, "/readyz").1,
        "ready: listening, and the queues take writes\n"
    );
}

#[test]
fn an_offline_edge_is_ready_until_its_outbox_is_full_and_again_once_drained() {
    const MAX: u64 = 5;
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut spec = CloudSpec::default();
    let mut cloud = common::start_cloud(tmp.path(), &pki, &spec);
    (spec.ws_port, spec.quic_port) = (cloud.ws_port, cloud.quic_port);
    let mut espec = EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port);
    espec.outbox_extra = format!("  max-messages: {MAX}\n");
    let (mut edge, apps) = start_edge(&espec, tmp.path());
    let ops = ops_addr(&mut edge);
    edge.wait_for("connected to the cloud");
    assert_eq!(get(ops, "/readyz").0, 200, "connected");

    // The cloud goes away: applications can still hand messages over, into the outbox.
    assert!(cloud.hub.terminate().success());
    edge.wait_for("link to the cloud lost");
    let (status, body) = get(ops, "/readyz");
    assert_eq!(status, 200, "offline with room in the outbox: {body}");
    assert!(
        body.contains("offline; the outbox takes messages"),
        "{body:?}"
    );

    // Until the outbox is full.
    assert_eq!(publish_numbers(&apps, "readings", MAX + 3), (MAX, 3));
    let (status, body) = get(ops, "/readyz");
    assert_eq!(status, 503, "offline with a full outbox: {body}");
    assert!(
        body.starts_with("not ready: ") && body.contains("the outbox is full"),
        "the body says why: {body:?}"
    );
    let (status, body) = request(ops, "HEAD /readyz HTTP/1.1\r\nHost: hub\r\n\r\n");
    assert_eq!((status, body.as_str()), (503, ""), "HEAD answers as GET");
    assert_eq!(get(ops, "/healthz").0, 200, "not ready is not unhealthy");

    // The cloud returns (same ports) and takes the backlog: ready again, the outbox empty.
    let _cloud = common::start_cloud(tmp.path(), &pki, &spec);
    edge.wait_for_within("connected to the cloud", WAIT);
    ready_becomes(ops, 200, "after the cloud returned");
    eventually("the outbox drained", || {
        scrape(ops, "hub_queue_messages", "lane=\"bulk\"") == 0.0
    });
    assert_eq!(get(ops, "/readyz").0, 200);
}

/// Sends `raw` and reads until the server closes: the status line and headers, and the body.
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(raw).unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).unwrap_or_else(|e| {
        let start = String::from_utf8_lossy(&raw[..raw.len().min(40)]);
        panic!("the answer to {start:?}: {e}")
    });
    let text = String::from_utf8(text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn the_endpoint_answers_odd_requests_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let mut cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let ops = ops_addr(&mut cloud.hub);
    // Clients that connect and say nothing hold no one else up.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(ops).unwrap()).collect();

    let (head, body) = raw_exchange(ops, b"HEAD /metrics HTTP/1.1\r\nHost: hub\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.is_empty(), "HEAD has no body: {body:?}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 1000, "HEAD gives the length GET would: {head}");

    let (status, body) = get(ops, "/no-such-path");
    assert_eq!(status, 404);
    assert!(body.contains("/metrics, /healthz or /readyz"), "{body:?}");
    assert_eq!(
        get(ops, "/metrics?debug=1").0,
        200,
        "a query string is ignored"
    );

    // Methods other than GET and HEAD, the first with a body the endpoint does not read: the
    // answer arrives all the same.
    let body = "x".repeat(64 * 1024);
    for (method, body) in [
        ("POST", body.as_str()),
        ("PUT", ""),
        ("DELETE", ""),
        ("OPTIONS", ""),
    ] {
        let raw = format!(
            "{method} /metrics HTTP/1.1\r\nHost: hub\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (head, _) = raw_exchange(ops, raw.as_bytes());
        assert!(head.starts_with("HTTP/1.1 405 "), "{method}: {head}");
        assert!(
            head.lines().any(|l| l == "Allow: GET, HEAD"),
            "{method}: a 405 names the methods allowed (RFC 9110 section 15.5.6): {head}"
        );
    }

    // A request head over 8 KiB: refused with 400, the answer readable whole by the client.
    let mut oversized = b"GET /metrics HTTP/1.1\r\nHost: hub\r\nX-Padding: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 64 * 1024));
    oversized.extend(b"\r\n\r\n");
    let (head, body) = raw_exchange(ops, &oversized);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(body, "request head too large\n");

    // Garbage: a TLS ClientHello's first bytes, then 32 KiB of binary.
    let mut garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    garbage.extend((0..32 * 1024u32).map(|i| (i * 7 % 251) as u8));
    let (head, body) = raw_exchange(ops, &garbage);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(body.starts_with("bad request"), "{body:?}");

    // A client that sends half a head and hangs up gets nothing and costs nothing.
    let mut half = TcpStream::connect(ops).unwrap();
    half.write_all(b"GET /metr").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    half.set_read_timeout(Some(PATIENCE)).unwrap();
    half.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // Still serving, with the idle clients still connected.
    assert_eq!(get(ops, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(ops, "/readyz").0, 200);
    drop(idle);
    assert_eq!(get(ops, "/metrics").0, 200);
}

// ---------------------------------------------------------------------------------------------
// A folder that stops taking writes.

/// The size of the filesystem under the queue folder.
const FS_SIZE: &str = "4m";

/// A cloud configuration in `dir` with both transports on free ports, its queues in `queues`,
/// every endpoint on 127.0.0.1:0.
fn cloud_config(dir: &Path, pki: &Path, queues: &Path) -> PathBuf {
    let file = dir.join("cloud.yaml");
    std::fs::write(
        &file,
        format!(
            "cloudhub:\n  protocol_websocket: true\n  port: 0\n  protocol_quic: true\n  \
             quic_port: 0\n  address: 127.0.0.1\n  ca: {}\n  cert: {}\n  key: {}\n\
             apps:\n  listen: 127.0.0.1:0\nmqtt:\n  listen: 127.0.0.1:0\nqueues:\n  dir: {}\n\
             metrics:\n  listen: 127.0.0.1:0\n",
            pki.join("ca.crt").display(),
            pki.join("server.crt").display(),
            pki.join("server.key").display(),
            queues.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_cloud_whose_queue_folder_stops_taking_writes_is_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let queues = tmp.path().join("queues");
    std::fs::create_dir(&queues).unwrap();
    let Some(fs) = SmallFs::mount(&queues, FS_SIZE) else {
        return;
    };
    let pki = common::link_pki(tmp.path());
    let config = cloud_config(tmp.path(), &pki, &queues);
    let mut cloud = Hub::spawn(
        "cloud",
        fs.command(
            &common::hub_bin(),
            &["cloud", "-c", config.to_str().unwrap()],
        ),
    );
    let ops = ops_addr(&mut cloud);
    assert_eq!(get(ops, "/readyz").0, 200);

    fs.fill();
    let (status, body) = get(ops, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("does not take writes") && body.contains("No space left on device"),
        "the body says why: {body:?}"
    );
    assert_eq!(get(ops, "/healthz").0, 200, "full is not unhealthy");

    fs.free();
    assert_eq!(get(ops, "/readyz").0, 200, "room again");
}

#[test]
fn an_edge_whose_outbox_folder_stops_taking_writes_is_not_ready_even_with_the_link_open() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let Some(fs) = SmallFs::mount(&outbox, FS_SIZE) else {
        return;
    };
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port);
    spec.state = Some(outbox.clone());
    let config = spec.write(tmp.path());
    let mut edge = Hub::spawn(
        "edge",
        fs.command(
            &common::hub_bin(),
            &["edge", "-c", config.to_str().unwrap()],
        ),
    );
    let ops = ops_addr(&mut edge);
    edge.wait_for("connected to the cloud");
    assert_eq!(get(ops, "/readyz").0, 200);

    // Applications cannot hand messages over, link or no link: not ready.
    fs.fill();
    let (status, body) = get(ops, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("does not take writes") && body.contains("No space left on device"),
        "the body says why: {body:?}"
    );

    fs.free();
    assert_eq!(get(ops, "/readyz").0, 200, "room again");
}

// ---------------------------------------------------------------------------------------------
// systemd notifications.

/// The watchdog interval given to the hub, in microseconds (sd_notify(3), `WATCHDOG_USEC`).
const WATCHDOG_USEC: u64 = 200_000;

/// What arrived on the test's socket, in arrival order.
#[derive(Debug)]
enum Event {
    /// Bytes the hub wrote to its stderr (its log).
    Log(String),
    /// A notification datagram (`READY=1`, `WATCHDOG=1`, `STOPPING=1`).
    Notify(String, Instant),
}

/// A hub whose notifications (`NOTIFY_SOCKET`) and log (stderr) arrive on one datagram socket
/// the test binds: the socket's queue keeps the order in which the hub sent them, so "READY=1
/// after the listeners were logged" is checked exactly, whatever the scheduling.
struct Notified {
    child: Child,
    socket: UnixDatagram,
    log_path: PathBuf,
    events: Vec<Event>,
}

impl Notified {
    fn start(dir: &Path, args: &[&str]) -> Notified {
        let notify_path = dir.join("notify.sock");
        let log_path = dir.join("log.sock");
        let socket = UnixDatagram::bind(&notify_path).unwrap();
        let log = UnixDatagram::bind(&log_path).unwrap();
        log.connect(&notify_path).unwrap();
        let child = Command::new(common::hub_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(log)))
            .spawn()
            .unwrap();
        Notified {
            child,
            socket,
            log_path,
            events: Vec::new(),
        }
    }

    /// Receives until `done` holds for the events so far; panics after [`PATIENCE`] naming
    /// `what`.
    fn until(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 64 * 1024];
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not within {PATIENCE:?}; {:#?}",
                self.events
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if from.as_pathname() == Some(self.log_path.as_path()) {
                eprint!("[hub] {text}");
                self.events.push(Event::Log(text));
            } else {
                self.events.push(Event::Notify(text, Instant::now()));
            }
        }
    }

    /// The log text received before the first notification equal to `state`.
    fn log_before(&self, state: &str) -> String {
        let mut log = String::new();
        for e in &self.events {
            match e {
                Event::Log(t) => log.push_str(t),
                Event::Notify(t, _) if t.trim() == state => return log,
                Event::Notify(..) => {}
            }
        }
        panic!("no {state}: {:#?}", self.events)
    }

    /// The notifications received so far.
    fn notifications(&self) -> Vec<(&str, Instant)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Notify(t, at) => Some((t.trim(), *at)),
                Event::Log(_) => None,
            })
            .collect()
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(events: &[Event], state: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Notify(t, _) if t.trim() == state))
        .count()
}

/// READY=1 only after every listener in `listeners` was logged; then WATCHDOG=1 well within
/// the interval; STOPPING=1 on SIGTERM, before the hub's last line, and exit 0.
fn notifies_systemd(dir: &Path, args: &[&str], listeners: &[&str]) {
    let mut hub = Notified::start(dir, args);
    hub.until("READY=1", |e| count(e, "READY=1") == 1);
    let before = hub.log_before("READY=1");
    for listener in listeners {
        assert!(
            before.contains(listener),
            "READY=1 came before the log said {listener:?}; the log until then:\n{before}"
        );
    }
    assert_eq!(
        hub.notifications()[0].0,
        "READY=1",
        "READY=1 is the first notification"
    );

    const PETS: usize = 10;
    hub.until("WATCHDOG=1 pets", |e| count(e, "WATCHDOG=1") >= PETS);
    let pets: Vec<Instant> = hub
        .notifications()
        .into_iter()
        .filter(|(t, _)| *t == "WATCHDOG=1")
        .map(|(_, at)| at)
        .collect();
    let mean = (pets[PETS - 1] - pets[0]) / (PETS as u32 - 1);
    assert!(
        mean < Duration::from_micros(WATCHDOG_USEC),
        "pets every {mean:?} on average; systemd wants one every {WATCHDOG_USEC} µs"
    );

    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(hub.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    hub.until("STOPPING=1 and the last log line", |e| {
        count(e, "STOPPING=1") == 1
            && matches!(e.last(), Some(Event::Log(t)) if t.contains("stopped"))
    });
    let status = hub.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let stopping = hub
        .events
        .iter()
        .position(|e| matches!(e, Event::Notify(t, _) if t.trim() == "STOPPING=1"))
        .unwrap();
    assert!(
        hub.events[..stopping]
            .iter()
            .all(|e| !matches!(e, Event::Log(t) if t.contains("INFO") && t.ends_with("stopped\n"))),
        "STOPPING=1 before the hub's last line"
    );
}

#[test]
fn the_cloud_tells_systemd_ready_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let config = cloud_config(tmp.path(), &pki, &tmp.path().join("queues"));
    notifies_systemd(
        tmp.path(),
        &["cloud", "-c", config.to_str().unwrap()],
        &[
            "websocket listening on",
            "quic listening on",
            "apps listening on",
            "mqtt listening on",
            "metrics and health listening on",
        ],
    );
}

#[test]
fn the_edge_tells_systemd_ready_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    // No cloud: an edge is ready once applications can hand it messages, link or no link.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let config = EdgeSpec::new(Proto::Websocket, &pki, "node-1", port).write(tmp.path());
    notifies_systemd(
        tmp.path(),
        &["edge", "-c", config.to_str().unwrap()],
        &[
            "apps listening on",
            "mqtt listening on",
            "metrics and health listening on",
        ],
    );
}

#[test]
fn the_shipped_units_wait_for_readiness_and_keep_a_watchdog() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for unit in ["cloudhub.service", "edgehub.service"] {
        let text = std::fs::read_to_string(configs.join(unit)).unwrap();
        let service = text.split("[Service]").nth(1).unwrap();
        let lines: Vec<&str> = service.lines().map(str::trim).collect();
        for want in ["Type=notify", "WatchdogSec=30s", "NotifyAccess=main"] {
            assert!(lines.contains(&want), "{unit}: no {want}");
        }
    }
    let cloud = std::fs::read_to_string(configs.join("cloudhub.service")).unwrap();
    assert!(
        cloud
            .lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "cloudhub.service reloads with SIGHUP"
    );
}
