//! Configuration: the seed's examples parse unchanged, every invalid fixture is refused with its
//! key named (by the library and by `--check`, exit 2, one line), and defaults are KubeEdge's.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hub::config::{CloudConfig, EdgeConfig, Protocol};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// What a fixture expects: its first line `# expect: TEXT` names the key the error must mention.
fn expected_key(text: &str, file: &Path) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no '# expect: KEY' first line", file.display()))
        .trim()
        .to_owned()
}

fn load(kind: &str, file: &Path, text: &str, root: &Path) -> Result<String, String> {
    let default_ca = root.join("ca/rootCA.crt");
    match kind {
        "cloud" => CloudConfig::from_yaml(file, text).map(|c| c.summary()),
        _ => EdgeConfig::from_yaml(file, text, &default_ca).map(|c| c.summary()),
    }
    .map_err(|e| e.to_string())
}

#[test]
fn fixture_folders_valid_and_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::kubeedge_layout(root);
    let bin = common::hub_bin();
    let mut seen = Vec::new();
    for kind in ["cloud", "edge"] {
        for (folder, valid) in [("valid", true), ("invalid", false)] {
            let files = yaml_files(&Path::new(FIXTURES).join(kind).join(folder));
            assert!(
                !files.is_empty(),
                "no fixtures in {kind}/{folder}: the walk checked nothing"
            );
            for fixture in files {
                let name = fixture.file_name().unwrap().to_str().unwrap().to_owned();
                let text = common::relocate(&std::fs::read_to_string(&fixture).unwrap(), root);
                // The relocated copy is what the binary reads.
                let file = root.join(format!("{kind}-{folder}-{name}"));
                std::fs::write(&file, &text).unwrap();
                let result = load(kind, &file, &text, root);
                let out = common::run(&bin, &[kind, "--check", "-c", file.to_str().unwrap()]);
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if valid {
                    let summary = result.unwrap_or_else(|e| panic!("{kind}/valid/{name}: {e}"));
                    assert!(summary.starts_with(&format!("{kind}hub: ")), "{summary}");
                    // Without any cafile the edge falls back to /etc/kubeedge/ca/rootCA.crt, which
                    // the library call above pointed at the test CA; the binary cannot be.
                    if kind == "cloud" || text.contains("cafile:") {
                        assert_eq!(out.status.code(), Some(0), "{kind}/valid/{name}: {stderr}");
                        assert_eq!(stdout.lines().count(), 1, "{stdout}");
                        assert!(stdout.starts_with(&format!("{kind}hub: ")), "{stdout}");
                    }
                } else {
                    let key = expected_key(&text, &fixture);
                    let err = match result {
                        Ok(s) => panic!("{kind}/invalid/{name} was accepted: {s}"),
                        Err(e) => e,
                    };
                    assert!(
                        err.contains(&key),
                        "{kind}/invalid/{name}: {err:?} does not name {key}"
                    );
                    assert!(
                        err.starts_with(file.to_str().unwrap()),
                        "{err:?} does not name the file"
                    );
                    assert_eq!(
                        out.status.code(),
                        Some(2),
                        "{kind}/invalid/{name}: {stderr}"
                    );
                    assert_eq!(stderr.lines().count(), 1, "{kind}/invalid/{name}: {stderr}");
                    assert!(stderr.contains(&key), "{stderr}");
                    assert!(!stderr.contains("panicked"), "{stderr}");
                }
                seen.push(format!("{kind}/{folder}/{name}"));
            }
        }
    }
    let seeds = seen.iter().filter(|s| s.contains("/valid/seed-")).count();
    assert_eq!(
        seeds, 5,
        "the seed's three cloud and two edge examples: {seen:?}"
    );
}

fn fixture(kind: &str, name: &str, root: &Path) -> String {
    let text =
        std::fs::read_to_string(Path::new(FIXTURES).join(kind).join("valid").join(name)).unwrap();
    common::relocate(&text, root)
}

#[test]
fn seed_cloud_values_are_taken() {
    let tmp = tempfile::tempdir().unwrap();
    common::kubeedge_layout(tmp.path());
    let f = Path::new("controller.yaml");
    let both = CloudConfig::from_yaml(
        f,
        &fixture("cloud", "seed-websocket-and-quic.yaml", tmp.path()),
    )
    .unwrap();
    assert_eq!(both.websocket, Some("0.0.0.0:10000".parse().unwrap()));
    assert_eq!(both.quic, Some("0.0.0.0:10001".parse().unwrap()));
    assert_eq!(both.node_limit, 10);
    assert_eq!(
        both.max_incoming_streams, 10000,
        "an empty max_incomingstreams means the default"
    );
    assert_eq!(both.keepalive_interval, Duration::from_secs(30));
    assert_eq!(both.write_timeout, Duration::from_secs(30));
    let ws = CloudConfig::from_yaml(f, &fixture("cloud", "seed-websocket-only.yaml", tmp.path()))
        .unwrap();
    assert!(ws.websocket.is_some() && ws.quic.is_none());
    let quic =
        CloudConfig::from_yaml(f, &fixture("cloud", "seed-quic-only.yaml", tmp.path())).unwrap();
    assert!(quic.websocket.is_none() && quic.quic.is_some());
}

#[test]
fn cloud_defaults_follow_kubeedge() {
    let tmp = tempfile::tempdir().unwrap();
    common::kubeedge_layout(tmp.path());
    let c = CloudConfig::from_yaml(
        Path::new("c.yaml"),
        &fixture("cloud", "minimal.yaml", tmp.path()),
    )
    .unwrap();
    assert_eq!(c.websocket, Some("0.0.0.0:10000".parse().unwrap()));
    assert_eq!(c.quic, None, "protocol_quic defaults to false");
    assert_eq!(c.max_incoming_streams, 10000);
    assert_eq!(c.keepalive_interval, Duration::from_secs(30));
    assert_eq!(c.write_timeout, Duration::from_secs(30));
    assert_eq!(c.node_limit, 1000);
    let free = CloudConfig::from_yaml(
        Path::new("c.yaml"),
        &fixture("cloud", "any-free-ports.yaml", tmp.path()),
    )
    .unwrap();
    assert_eq!(free.websocket, Some("[::1]:0".parse().unwrap()));
    assert_eq!(free.keepalive_interval, Duration::from_millis(500));
}

#[test]
fn seed_edge_values_and_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::kubeedge_layout(root);
    let default_ca = root.join("ca/rootCA.crt");
    let f = Path::new("edge.yaml");
    let ws = EdgeConfig::from_yaml(
        f,
        &fixture("edge", "seed-websocket.yaml", root),
        &default_ca,
    )
    .unwrap();
    assert_eq!(ws.protocol, Protocol::Websocket);
    assert_eq!(
        (ws.endpoint.host.as_str(), ws.endpoint.port),
        ("0.0.0.0", 10000)
    );
    assert_eq!(
        ws.websocket_path(),
        "/e632aba927ea4ac2b575ec1603d56f10/edge-node/events"
    );
    assert_eq!(
        ws.ca, default_ca,
        "no cafile anywhere: KubeEdge's default CA path"
    );
    assert_eq!(ws.heartbeat, Duration::from_secs(15));
    assert_eq!(ws.handshake_timeout, Duration::from_secs(30));
    assert_eq!(ws.read_deadline, Duration::from_secs(15));
    assert!(
        ws.placement.is_none(),
        "placement: false ignores placement-url"
    );
    let refresh = ws.refresh.unwrap();
    assert_eq!(refresh.path, Path::new("/var/IEF/secret"));
    assert_eq!(
        refresh.interval,
        Duration::from_secs(600),
        "refresh-ak-sk-interval is in minutes"
    );

    let quic =
        EdgeConfig::from_yaml(f, &fixture("edge", "seed-quic.yaml", root), &default_ca).unwrap();
    assert_eq!(quic.protocol, Protocol::Quic);
    assert_eq!(
        (quic.endpoint.host.as_str(), quic.endpoint.port),
        ("127.0.0.1", 10001)
    );

    let placed = EdgeConfig::from_yaml(
        f,
        &fixture("edge", "websocket-cafile-and-placement.yaml", root),
        Path::new("/nonexistent"),
    )
    .unwrap();
    assert_eq!(placed.node_id, "42", "a numeric node-id is read as text");
    assert_eq!(
        (placed.endpoint.host.as_str(), placed.endpoint.port),
        ("::1", 10000)
    );
    let url = placed.placement.unwrap();
    assert_eq!(
        (url.endpoint.host.as_str(), url.endpoint.port),
        ("placement.example", 7444)
    );
    assert_eq!(url.path, "/v1/placement_external/message_queue");

    let from_quic = EdgeConfig::from_yaml(
        f,
        &fixture("edge", "websocket-ca-from-quic-section.yaml", root),
        Path::new("/nonexistent"),
    )
    .unwrap();
    assert_eq!(
        from_quic.ca, default_ca,
        "websocket falls back to quic.cafile"
    );
    assert_eq!(
        from_quic.endpoint.port, 443,
        "wss:// without a port means 443"
    );
}

#[test]
fn edge_without_any_ca_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::kubeedge_layout(root);
    let text = fixture("edge", "seed-websocket.yaml", root);
    let err = EdgeConfig::from_yaml(
        Path::new("edge.yaml"),
        &text,
        &root.join("absent/rootCA.crt"),
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("websocket.cafile"), "{err}");
    assert!(
        err.to_string().contains("no CA to verify the cloud with"),
        "{err}"
    );

    let quic = fixture("edge", "seed-quic.yaml", root).replace("  cafile:", "  # cafile:");
    let err = EdgeConfig::from_yaml(
        Path::new("edge.yaml"),
        &quic,
        &root.join("absent/rootCA.crt"),
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("quic.cafile"), "{err}");
}

#[test]
fn missing_config_file_is_one_line_exit_2() {
    let out = common::run(
        &common::hub_bin(),
        &["edge", "--check", "-c", "/nonexistent/edgehub.yaml"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("/nonexistent/edgehub.yaml: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn shipped_configs_check() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::dev_pki(tmp.path());
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for (name, kind) in [
        ("cloudhub.yaml", "cloud"),
        ("edgehub.yaml", "edge"),
        ("edgehub-quic.yaml", "edge"),
    ] {
        let text = std::fs::read_to_string(configs.join(name)).unwrap();
        assert!(
            text.contains("/etc/hub/pki/"),
            "{name} points at the installed PKI"
        );
        let text = text.replace("/etc/hub/pki/", &format!("{}/", pki.display()));
        let file = Path::new(name);
        let summary = match kind {
            "cloud" => CloudConfig::from_yaml(file, &text).map(|c| c.summary()),
            _ => EdgeConfig::from_yaml(file, &text, Path::new("/nonexistent")).map(|c| c.summary()),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(summary.starts_with(&format!("{kind}hub: ")), "{summary}");
    }
}

#[test]
fn hub_sections_take_effect() {
    let tmp = tempfile::tempdir().unwrap();
    common::kubeedge_layout(tmp.path());
    let text = fixture("edge", "hub-sections.yaml", tmp.path());
    let e = EdgeConfig::from_yaml(Path::new("e.yaml"), &text, Path::new("/nonexistent")).unwrap();
    assert_eq!(e.apps.listen, None);
    assert_eq!(
        e.apps.unix.as_deref(),
        Some(Path::new("/run/hub/edge.sock"))
    );
    assert_eq!(e.apps.request_timeout, Duration::from_millis(2500));
    assert_eq!(
        (e.apps.max_connections, e.apps.upgrade_timeout),
        (64, Duration::from_secs(2))
    );
    assert_eq!(
        (e.outbox.max_messages, e.outbox.max_bytes, e.outbox.window),
        (1000, 10 << 20, 32)
    );
    assert_eq!(e.outbox.fsync, hub::store::Fsync::Periodic);
    assert_eq!(e.congestion, hub::config::Congestion::Bbr);
    assert_eq!(e.fast_attempts_for, Duration::from_secs(300));
    // Defaults: loopback endpoints, safe fsync, the largest window.
    let c = CloudConfig::from_yaml(
        Path::new("c.yaml"),
        &fixture("cloud", "minimal.yaml", tmp.path()),
    )
    .unwrap();
    assert_eq!(c.apps.listen, Some("127.0.0.1:10050".parse().unwrap()));
    assert_eq!(c.apps.max_message_bytes, 1 << 20);
    assert_eq!(
        (c.apps.max_connections, c.apps.upgrade_timeout),
        (1024, Duration::from_secs(10))
    );
    assert_eq!(c.queues.dir, Path::new("/var/lib/hub/cloud"));
    assert_eq!(c.queues.fsync, hub::store::Fsync::Always);
    assert_eq!((c.queues.max_messages, c.queues.window), (100_000, 65536));
    assert_eq!(c.quic_congestion, hub::config::Congestion::Bbr);
    let s = EdgeConfig::from_yaml(
        Path::new("e.yaml"),
        &fixture("edge", "seed-quic.yaml", tmp.path()),
        Path::new("/x"),
    )
    .unwrap();
    assert_eq!(s.apps.listen, Some("127.0.0.1:10060".parse().unwrap()));
    assert_eq!(s.outbox.dir, Path::new("/var/lib/hub/edge"));
    assert_eq!(s.congestion, hub::config::Congestion::Bbr);
    assert_eq!(s.fast_attempts_for, Duration::from_secs(60));
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::dev_pki(tmp.path());
    let p = |f: &str| pki.join(f).display().to_string();
    let files = [
        (
            "cloud",
            format!(
                "cloudhub:\r\n  ca: {}\r\n  cert: {}\r\n  key: {}\r\n",
                p("ca.crt"),
                p("server.crt"),
                p("server.key")
            ),
        ),
        (
            "edge",
            format!(
                "quic:\n  url: localhost:10001\n  cafile: {}\n  certfile: {}\n  keyfile: {}\ncontroller:\n  protocol: quic\n  project-id: p\n  node-id: edge-node\n",
                p("ca.crt"),
                p("node-edge-node.crt"),
                p("node-edge-node.key")
            ),
        ),
    ];
    for (kind, text) in files {
        // What Notepad saves: a UTF-8 byte-order mark first.
        let file = tmp.path().join(format!("{kind}hub.yaml"));
        std::fs::write(&file, format!("\u{feff}{text}")).unwrap();
        let out = common::run(
            &common::hub_bin(),
            &[kind, "--check", "-c", file.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{kind}: {stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("{kind}hub: ")),
            "{kind}"
        );
    }
    let text = format!(
        "\u{feff}cloudhub:\n  ca: {}\n  cert: {}\n  key: {}\n",
        p("ca.crt"),
        p("server.crt"),
        p("server.key")
    );
    CloudConfig::from_yaml(Path::new("c.yaml"), &text).unwrap();

    // Certificates and keys saved the same way (with CRLF too) read as they are without the mark;
    // the mark must not hide a chain's first certificate.
    let marked = |f: &str| {
        let plain = std::fs::read_to_string(pki.join(f)).unwrap();
        let path = tmp.path().join(format!("marked-{f}"));
        std::fs::write(&path, format!("\u{feff}{}", plain.replace('\n', "\r\n"))).unwrap();
        path
    };
    let (ca, cert, key) = (marked("ca.crt"), marked("server.crt"), marked("server.key"));
    assert_eq!(
        hub::tls::load_certs(&cert).unwrap(),
        hub::tls::load_certs(&pki.join("server.crt")).unwrap()
    );
    let text = format!(
        "cloudhub:\n  ca: {}\n  cert: {}\n  key: {}\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    CloudConfig::from_yaml(Path::new("c.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));

    // Not UTF-8 at all: said so, with the place.
    let file = tmp.path().join("utf16.yaml");
    std::fs::write(&file, b"\xff\xfec\x00l\x00").unwrap();
    let err = CloudConfig::load(&file).unwrap_err().to_string();
    assert!(
        err.ends_with("the file is UTF-16 text; save it as UTF-8"),
        "{err}"
    );
    std::fs::write(&file, b"cloudhub:\n  ca: \xe9t\xe9.crt\n").unwrap();
    let err = CloudConfig::load(&file).unwrap_err().to_string();
    assert!(
        err.ends_with("not UTF-8 text (byte 0xe9 on line 2)"),
        "{err}"
    );
}

#[test]
fn relative_paths_are_read_from_the_files_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc/hub");
    std::fs::create_dir_all(&etc).unwrap();
    common::dev_pki(&etc);
    let cloud = etc.join("cloudhub.yaml");
    std::fs::write(
        &cloud,
        "cloudhub:\n  ca: pki/ca.crt\n  cert: ./pki/server.crt\n  key: pki/server.key\napps:\n  unix: run/cloud.sock\nqueues:\n  dir: state\n",
    )
    .unwrap();
    let edge = etc.join("edgehub.yaml");
    std::fs::write(
        &edge,
        "websocket:\n  url: wss://localhost:10000/p/edge-node/events\n  certfile: pki/node-edge-node.crt\n  keyfile: pki/node-edge-node.key\nquic:\n  cafile: pki/ca.crt\ncontroller:\n  project-id: p\n  node-id: edge-node\n  auth-info-files-path: secret\napps:\n  unix: edge.sock\noutbox:\n  dir: ../../var/outbox\n",
    )
    .unwrap();

    let c = CloudConfig::load(&cloud).unwrap();
    assert_eq!(c.ca, etc.join("pki/ca.crt"));
    assert_eq!(c.cert, etc.join("pki/server.crt"));
    assert_eq!(c.key, etc.join("pki/server.key"));
    assert_eq!(c.apps.unix, Some(etc.join("run/cloud.sock")));
    assert_eq!(c.queues.dir, etc.join("state"));
    let e = EdgeConfig::load(&edge).unwrap();
    assert_eq!(e.ca, etc.join("pki/ca.crt"));
    assert_eq!(e.cert, etc.join("pki/node-edge-node.crt"));
    assert_eq!(e.key, etc.join("pki/node-edge-node.key"));
    assert_eq!(e.refresh.unwrap().path, etc.join("secret"));
    assert_eq!(e.apps.unix, Some(etc.join("edge.sock")));
    assert_eq!(e.outbox.dir, etc.join("../../var/outbox"));

    // The binary, started elsewhere (systemd starts it in /), with the file named absolutely or
    // relatively to where it starts.
    let check = |cwd: &Path, kind: &str, file: &str| {
        Command::new(common::hub_bin())
            .args([kind, "--check", "-c", file])
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    for (cwd, prefix) in [
        (Path::new("/"), etc.to_str().unwrap()),
        (tmp.path(), "etc/hub"),
    ] {
        for kind in ["cloud", "edge"] {
            let out = check(cwd, kind, &format!("{prefix}/{kind}hub.yaml"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{kind} from {cwd:?}: {stderr}");
        }
        let out = check(cwd, "edge", &format!("{prefix}/edgehub.yaml"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("ca {}/pki/ca.crt", etc.display())),
            "{stdout}"
        );
    }

    // Running from /, the hub makes its socket and its queues beside the file.
    std::fs::write(
        &cloud,
        "cloudhub:\n  port: 0\n  address: 127.0.0.1\n  ca: pki/ca.crt\n  cert: pki/server.crt\n  key: pki/server.key\napps:\n  listen: 127.0.0.1:0\n  unix: run/cloud.sock\nqueues:\n  dir: state\n",
    )
    .unwrap();
    let mut hub = Command::new(common::hub_bin())
        .args(["cloud", "-c", cloud.to_str().unwrap()])
        .current_dir("/")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = hub.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = format!("apps listening on unix:{}/run/cloud.sock", etc.display());
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(common::PATIENCE) {
            Ok(line) if line.contains(&want) => break,
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = hub.kill();
                panic!("no {want:?}; log:\n{}", log.join("\n"));
            }
        }
    }
    assert!(etc.join("run/cloud.sock").exists());
    assert!(etc.join("state").is_dir(), "queues beside the file");
    hub.kill().unwrap();
    hub.wait().unwrap();

    // An error about a file names the full path that was tried.
    std::fs::write(
        &cloud,
        "cloudhub:\n  ca: pki/missing.crt\n  cert: pki/server.crt\n  key: pki/server.key\n",
    )
    .unwrap();
    let out = check(tmp.path(), "cloud", "etc/hub/cloudhub.yaml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {}/pki/missing.crt", etc.display())),
        "{stderr}"
    );
}

#[test]
fn quic_congestion_takes_each_controller_on_both_sides() {
    use hub::config::Congestion;
    let tmp = tempfile::tempdir().unwrap();
    common::kubeedge_layout(tmp.path());
    let cloud = fixture("cloud", "minimal.yaml", tmp.path());
    let edge = fixture("edge", "seed-quic.yaml", tmp.path());
    let with_cloud = |v: &str| {
        CloudConfig::from_yaml(
            Path::new("c.yaml"),
            &format!("{cloud}  quic-congestion: {v}\n"),
        )
    };
    let with_edge = |v: &str| {
        EdgeConfig::from_yaml(
            Path::new("e.yaml"),
            &edge.replace("  keyfile:", &format!("  congestion: {v}\n  keyfile:")),
            Path::new("/x"),
        )
    };
    for (name, want) in [
        ("cubic", Congestion::Cubic),
        ("newreno", Congestion::NewReno),
        ("bbr", Congestion::Bbr),
    ] {
        let c = with_cloud(name).unwrap();
        assert_eq!((c.quic_congestion, c.quic_congestion.name()), (want, name));
        let e = with_edge(name).unwrap();
        assert_eq!((e.congestion, e.congestion.name()), (want, name));
    }
    for bad in ["vegas", "NewReno", "\"\""] {
        let e = with_cloud(bad).unwrap_err().to_string();
        assert!(
            e.contains("cloudhub.quic-congestion") && e.contains("cubic, newreno or bbr"),
            "{bad}: {e}"
        );
        let e = with_edge(bad).unwrap_err().to_string();
        assert!(
            e.contains("quic.congestion") && e.contains("cubic, newreno or bbr"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn metrics_section_is_off_by_default_and_takes_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    common::kubeedge_layout(tmp.path());
    let minimal = fixture("cloud", "minimal.yaml", tmp.path());
    let c = CloudConfig::from_yaml(Path::new("c.yaml"), &minimal).unwrap();
    assert_eq!(c.metrics.listen, None, "no metrics section: no endpoint");
    assert!(!c.metrics.per_node);
    let on = format!("{minimal}metrics:\n  listen: 127.0.0.1:9100\n  per-node: true\n");
    let c = CloudConfig::from_yaml(Path::new("c.yaml"), &on).unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
    assert!(c.metrics.per_node);
    let off = format!("{minimal}metrics:\n  listen: \"off\"\n");
    let c = CloudConfig::from_yaml(Path::new("c.yaml"), &off).unwrap();
    assert_eq!(c.metrics.listen, None, "listen: off");
    let empty = format!("{minimal}metrics:\n  listen:\n");
    let c = CloudConfig::from_yaml(Path::new("c.yaml"), &empty).unwrap();
    assert_eq!(c.metrics.listen, None, "an empty value is the default, off");

    let seed = fixture("edge", "seed-quic.yaml", tmp.path());
    let e = EdgeConfig::from_yaml(Path::new("e.yaml"), &seed, Path::new("/x")).unwrap();
    assert_eq!(e.metrics.listen, None);
    let on = format!("{seed}metrics:\n  listen: \"[::1]:0\"\n");
    let e = EdgeConfig::from_yaml(Path::new("e.yaml"), &on, Path::new("/x")).unwrap();
    assert_eq!(e.metrics.listen, Some("[::1]:0".parse().unwrap()));
}

#[test]
fn shipped_configs_serve_metrics_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::dev_pki(tmp.path());
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let read = |name: &str| {
        std::fs::read_to_string(configs.join(name))
            .unwrap()
            .replace("/etc/hub/pki/", &format!("{}/", pki.display()))
    };
    let c = CloudConfig::from_yaml(Path::new("cloudhub.yaml"), &read("cloudhub.yaml")).unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:10051".parse().unwrap()));
    assert!(!c.metrics.per_node, "per-node series are an opt-in");
    for name in ["edgehub.yaml", "edgehub-quic.yaml"] {
        let e = EdgeConfig::from_yaml(Path::new(name), &read(name), Path::new("/x")).unwrap();
        assert_eq!(
            e.metrics.listen,
            Some("127.0.0.1:10061".parse().unwrap()),
            "{name}"
        );
    }
}
