//! Hostile input against what operates a running hub: its credential files (re-read on SIGHUP
//! and when they change) and its operations endpoint (`metrics.listen`). Each case checks that
//! the hub keeps serving: nodes still connect, the endpoint still answers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{get, ops_addr, request};
use common::{CloudSpec, EdgeSpec, Proto, link_pki, start_cloud};

/// `ca` with `n` more self-signed CAs appended, each with a distinct name of some 90 bytes.
fn with_many_cas(ca: &Path, n: usize) -> String {
    let mut bundle = std::fs::read_to_string(ca).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    for i in 0..n {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("an unrelated certificate authority of a large organisation, number {i:05}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        bundle.push_str(&params.self_signed(&key).unwrap().pem());
    }
    bundle
}

/// A CA bundle of thousands of CAs, whose names no longer fit in a CertificateRequest, taken
/// on SIGHUP: nodes of the real CA still connect, over both transports, and the cloud lives on.
#[test]
fn a_ca_bundle_of_thousands_of_cas_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let pki = link_pki(dir.path());
    let mut cloud = start_cloud(dir.path(), &pki, &CloudSpec::default());
    let ops = ops_addr(&mut cloud.hub);
    let bundle = with_many_cas(&pki.join("ca.crt"), 2000);
    let tmp = pki.join("ca.crt.new");
    std::fs::write(&tmp, bundle).unwrap();
    std::fs::rename(&tmp, pki.join("ca.crt")).unwrap();
    cloud.hub.signal("HUP");
    cloud.hub.wait_for("2001 CA certificate(s)");
    for (node, proto) in [("node-1", Proto::Websocket), ("node-2", Proto::Quic)] {
        let _edge = EdgeSpec::new(proto, &pki, node, cloud.port(proto)).start(dir.path());
        cloud.hub.wait_for(&format!("node {node} connected over"));
    }
    assert_eq!(get(ops, "/healthz").0, 200);
}

/// The same bundle at start.
#[test]
fn a_cloud_started_with_thousands_of_cas_admits_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = link_pki(dir.path());
    let bundle = with_many_cas(&pki.join("ca.crt"), 2000);
    std::fs::write(pki.join("ca.crt"), bundle).unwrap();
    let mut cloud = start_cloud(dir.path(), &pki, &CloudSpec::default());
    let _edge = EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port).start(dir.path());
    cloud.hub.wait_for("node node-1 connected over");
}

/// A credential file replaced by a FIFO, by a device that never ends, or by one over the size
/// limit: each is refused with one line naming the file, and the cloud goes on serving (a read
/// of the FIFO would wait for a writer forever).
#[test]
fn credential_files_that_are_no_regular_files_or_too_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = link_pki(dir.path());
    let mut cloud = start_cloud(dir.path(), &pki, &CloudSpec::default());
    let ops = ops_addr(&mut cloud.hub);
    let ca = pki.join("ca.crt");
    let kept = std::fs::read(&ca).unwrap();
    // The edge's own copy: the cloud's is the one replaced.
    std::fs::write(pki.join("edge-ca.crt"), &kept).unwrap();

    std::fs::remove_file(&ca).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&ca)
        .status()
        .unwrap();
    assert!(made.success());
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials not reloaded (SIGHUP)");
    assert!(line.contains("ca.crt: not a regular file"), "{line}");
    assert_eq!(get(ops, "/healthz").0, 200);

    std::fs::remove_file(&ca).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &ca).unwrap();
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials not reloaded (SIGHUP)");
    assert!(line.contains("ca.crt: not a regular file"), "{line}");

    // 100 MB, sparse: nothing to write, and read as zeros.
    std::fs::remove_file(&ca).unwrap();
    let big = std::fs::File::create(&ca).unwrap();
    big.set_len(100_000_000).unwrap();
    drop(big);
    cloud.hub.signal("HUP");
    let line = cloud.hub.wait_for("credentials not reloaded (SIGHUP)");
    assert!(
        line.contains("ca.crt: 100000000 bytes, more than the 16777216"),
        "{line}"
    );
    assert_eq!(get(ops, "/healthz").0, 200);

    // The cloud still admits nodes, and takes the good file back.
    let mut edge = EdgeSpec::new(Proto::Websocket, &pki, "node-1", cloud.ws_port);
    edge.ca = pki.join("edge-ca.crt");
    let _edge = edge.start(dir.path());
    cloud.hub.wait_for("node node-1 connected over");
    std::fs::remove_file(&ca).unwrap();
    std::fs::write(&ca, kept).unwrap();
    cloud.hub.signal("HUP");
    cloud
        .hub
        .wait_for("credentials re-read (SIGHUP): unchanged");
}

/// Reads one whole response from `s` (the server closes after it): status and body.
fn response(s: &mut TcpStream) -> (u16, String) {
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// Opens `n` connections to `addr` that are accepted and then send `first` and nothing more.
fn hold(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(first).unwrap();
            s
        })
        .collect()
}

/// Connections that send nothing, or a request head that never ends, hold none of the
/// endpoint's places from a probe: with as many of them open as the endpoint serves at once,
/// `/readyz` is answered at once, not after they timed out (10 s).
#[test]
fn stalled_connections_do_not_keep_a_probe_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let pki = link_pki(dir.path());
    let mut cloud = start_cloud(dir.path(), &pki, &CloudSpec::default());
    let ops = ops_addr(&mut cloud.hub);
    for first in [&b""[..], b"GET /readyz HTTP/1.1\r\nHost: x\r\n"] {
        let held = hold(ops, hub::http::MAX_CONNECTIONS, first);
        let asked = Instant::now();
        let mut probe = TcpStream::connect(ops).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        probe
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, body) = response(&mut probe);
        let waited = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            waited < hub::http::READ_TIMEOUT / 2,
            "the probe waited {waited:?} behind {} stalled connections",
            held.len()
        );
        // The one it made room for is the oldest, closed without an answer.
        let mut oldest = &held[0];
        oldest
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 64];
        let read = oldest.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(asked.elapsed() < hub::http::READ_TIMEOUT / 2);
    }
}

/// A request in absolute form (RFC 9112 section 3.2.2: a server must accept it), as a proxy
/// sends it, is answered for its path.
#[test]
fn a_request_in_absolute_form_is_answered_for_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = link_pki(dir.path());
    let mut cloud = start_cloud(dir.path(), &pki, &CloudSpec::default());
    let ops = ops_addr(&mut cloud.hub);
    for target in [
        format!("http://{ops}/readyz"),
        format!("HTTP://{ops}/readyz?verbose=1"),
        "http://hub.example/healthz".to_owned(),
    ] {
        let (status, body) = request(
            ops,
            &format!("GET {target} HTTP/1.1\r\nHost: {ops}\r\n\r\n"),
        );
        assert_eq!(status, 200, "{target}: {body}");
    }
    let (status, _) = request(
        ops,
        &format!("GET http://{ops}/nothing HTTP/1.1\r\nHost: {ops}\r\n\r\n"),
    );
    assert_eq!(status, 404);
}
