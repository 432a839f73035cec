//! Application connections are cheap and bounded: an idle one costs a real `hub edge` kilobytes,
//! not megabytes; beyond `apps.max-connections` (TCP and unix socket together) a new one is
//! refused with HTTP 503 and the reason while the others keep working; and a connection that
//! never completes its WebSocket upgrade is closed after `apps.upgrade-timeout`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as WsMessage;
use common::apps::*;
use common::{EdgeSpec, Hub, Proto};
use hub::client;

/// The process's resident memory now, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// An edge whose cloud is nowhere (it keeps trying to connect, which these tests do not need),
/// with `apps_extra` in its `apps` section.
fn edge(dir: &std::path::Path, apps_extra: &str) -> (Hub, String) {
    let pki = common::dev_pki(dir);
    // A port nothing listens on: the link is down throughout, the application endpoint is up.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", port);
    spec.apps_extra = apps_extra.to_owned();
    start_edge(&spec, dir)
}

/// `host:port` of the endpoint `url` (`ws://HOST:PORT`).
fn addr(url: &str) -> &str {
    url.strip_prefix("ws://").unwrap().trim_end_matches('/')
}

/// Sends an upgrade request for `/` on a new TCP connection to `url` and returns the connection
/// with the hub's answer: its status line and body (up to the end of the stream for a refusal).
fn upgrade(url: &str) -> (TcpStream, String, String) {
    let mut stream = TcpStream::connect(addr(url)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        addr(url)
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let mut body = String::new();
    if !status.starts_with("HTTP/1.1 101") {
        stream.read_to_string(&mut body).unwrap();
    }
    (stream, status, body)
}

#[test]
fn idle_connections_cost_kilobytes_each() {
    const N: usize = 200;
    let tmp = tempfile::tempdir().unwrap();
    let (edge, apps) = edge(tmp.path(), "");
    // One connection first, so that what any first connection sets up is not counted.
    let warm = subscribe(&apps, "warm/");
    let before = rss(edge.pid());
    // Each is subscribed and has had its first answer: its session is fully in place.
    let idle: Vec<_> = (0..N)
        .map(|i| subscribe(&apps, &format!("idle/{i}/")))
        .collect();
    let after = rss(edge.pid());
    let each = after.saturating_sub(before) / N;
    eprintln!(
        "{N} idle application connections: RSS {} -> {} KiB, {} bytes ({:.1} KiB) each",
        before / 1024,
        after / 1024,
        each,
        each as f64 / 1024.0
    );
    assert!(
        each < 64 * 1024,
        "an idle application connection costs the edge {each} bytes"
    );
    // They are still served: each of a few answers again.
    for mut ws in idle.into_iter().step_by(50) {
        block("an answer on an idle connection", async {
            ws.send(WsMessage::text("still there?")).await.unwrap();
            let m = client::next(&mut ws).await.unwrap().unwrap();
            assert!(
                is_hub_notice(&m) && m.operation == "error",
                "{}",
                m.to_json()
            );
        });
    }
    drop(warm);
}

#[test]
fn beyond_max_connections_a_connection_gets_503_and_the_others_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("apps.sock");
    let (mut edge, apps) = edge(
        tmp.path(),
        &format!("  max-connections: 3\n  unix: {}\n", sock.display()),
    );
    let unix = format!("unix:{}", sock.display());
    // Three open: two over TCP, one over the unix socket (one bound for both).
    let mut sub = subscribe(&apps, "x/");
    let (raw, status, _) = upgrade(&apps);
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut over_unix = block("connect over the unix socket", client::connect(&unix, "/"))
        .expect("the third connection is served");

    // A fourth is refused with 503 and the reason, over either listener.
    let started = Instant::now();
    let (_, status, body) = upgrade(&apps);
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert!(
        body.contains("too many application connections") && body.contains("apps.max-connections"),
        "{body}"
    );
    let Err(err) = block("refused over the unix socket", client::connect(&unix, "/")) else {
        panic!("a fourth connection over the unix socket was served");
    };
    assert!(
        err.contains("503") && err.contains("apps.max-connections"),
        "{err}"
    );
    edge.wait_for("refused 1 application connection(s) with 503");
    // Many more refusals make one log line per second at most.
    for _ in 0..20 {
        let (_, status, _) = upgrade(&apps);
        assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    }
    let lines = edge.lines_with("application connection(s) with 503").len();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        lines <= seconds + 1,
        "{lines} log lines about refusals in {seconds} s"
    );

    // The three open ones keep working.
    let accepted = |ws: &mut client::Connection, what: &str| {
        let msg = message("up/1", "1");
        block(what, client::publish(ws, &msg)).unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    accepted(&mut sub, "publish on the subscribed connection");
    accepted(&mut over_unix, "publish over the unix socket");

    // Once one closes, a new connection is served again.
    drop(raw);
    eventually("room for a new connection", || {
        let (_, status, _) = upgrade(&apps);
        status.starts_with("HTTP/1.1 101")
    });
}

#[test]
fn an_upgrade_that_never_completes_is_closed_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut edge, apps) = edge(tmp.path(), "  max-connections: 1\n  upgrade-timeout: 1\n");
    // A connection that sends half a request, and nothing more.
    let mut stalled = TcpStream::connect(addr(&apps)).unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    match stalled.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled connection was not closed within {WAIT:?}: {e}"),
    }
    let waited = started.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s timeout"
    );
    edge.wait_for("no WebSocket upgrade within 1.0s (apps.upgrade-timeout)");
    // Its place is free again: with max-connections 1, a new connection is served.
    let (_, status, _) = upgrade(&apps);
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
}

/// `edge`, started under `prlimit --nofile=SOFT:HARD`.
fn edge_with_open_files(dir: &std::path::Path, soft: u32, hard: u32) -> (Hub, String) {
    let pki = common::dev_pki(dir);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", port).write(dir);
    let mut command = std::process::Command::new("prlimit");
    command
        .arg(format!("--nofile={soft}:{hard}"))
        .arg(common::hub_bin())
        .args(["edge", "-c"])
        .arg(&config);
    let mut hub = Hub::spawn("edge", command);
    let url = common::apps_url(&mut hub);
    (hub, url)
}

/// The `Max open files` soft and hard limits of process `pid`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line.split_whitespace().skip(3);
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

/// A hub started with a low soft open-file limit raises it to the hard one; where even the hard
/// limit is below what `apps.max-connections` would take, it takes a quarter of the limit and says so,
/// refusing beyond that with 503 rather than running out of descriptors for its link and queues.
#[test]
fn application_connections_fit_in_the_open_file_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _) = edge_with_open_files(&tmp.path().join("raised"), 64, 4096);
    assert_eq!(
        open_file_limits(hub.pid()),
        ("4096".to_owned(), "4096".to_owned()),
        "the soft limit is raised to the hard one"
    );
    drop(hub);

    let (mut edge, apps) = edge_with_open_files(&tmp.path().join("low"), 64, 64);
    // Said at start, each before its endpoint listens: the MQTT listener starts after the
    // applications' one.
    edge.wait_for("mqtt listening on");
    let warned = edge.lines_with("but this process may open only 64 files");
    assert!(
        warned.len() == 2
            && warned
                .iter()
                .any(|w| w.contains("apps.max-connections is 1024") && w.contains("at most 16"))
            && warned
                .iter()
                .any(|w| w.contains("mqtt.max-connections is 1024") && w.contains("at most 8")),
        "a quarter for applications, an eighth for MQTT: {warned:?}"
    );
    let mut open = Vec::new();
    for i in 0..16 {
        let (stream, status, _) = upgrade(&apps);
        assert!(
            status.starts_with("HTTP/1.1 101"),
            "connection {i}: {status}"
        );
        open.push(stream);
    }
    for _ in 0..8 {
        let (_, status, body) = upgrade(&apps);
        assert!(status.starts_with("HTTP/1.1 503"), "{status}");
        assert!(body.contains("too many application connections"), "{body}");
    }
    assert!(edge.lines_with("Too many open files").is_empty());
}
