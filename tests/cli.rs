//! The multi-call binary: `hub <command>`, and the same binary linked as `cloudhub` / `edgehub`.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

fn write_configs(dir: &Path) -> (String, String) {
    let pki = common::dev_pki(dir);
    let p = |f: &str| pki.join(f).display().to_string();
    let cloud = dir.join("cloudhub.yaml");
    std::fs::write(
        &cloud,
        format!(
            "cloudhub:\n  protocol_quic: true\n  address: 127.0.0.1\n  ca: {}\n  cert: {}\n  key: {}\n",
            p("ca.crt"),
            p("server.crt"),
            p("server.key")
        ),
    )
    .unwrap();
    let edge = dir.join("edgehub.yaml");
    std::fs::write(
        &edge,
        format!(
            "quic:\n  url: localhost:10001\n  cafile: {}\n  certfile: {}\n  keyfile: {}\ncontroller:\n  protocol: quic\n  project-id: p\n  node-id: edge-node\n",
            p("ca.crt"),
            p("node-edge-node.crt"),
            p("node-edge-node.key")
        ),
    )
    .unwrap();
    (cloud.display().to_string(), edge.display().to_string())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn linked_names_act_as_their_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud_yaml, edge_yaml) = write_configs(tmp.path());
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let cloudhub = bin_dir.join("cloudhub");
    let edgehub = bin_dir.join("edgehub");
    symlink(common::hub_bin(), &cloudhub).unwrap();
    symlink(common::hub_bin(), &edgehub).unwrap();

    let help = common::run(&cloudhub, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let out = text(&help.stdout);
    assert!(
        out.starts_with("Usage: cloudhub [-c <config>] [--check]"),
        "{out}"
    );
    assert!(out.contains("Run the cloud hub"), "{out}");
    assert_eq!(
        out,
        text(&common::run(&common::hub_bin(), &["cloud", "--help"]).stdout)
            .replace("hub cloud", "cloudhub")
    );

    let help = common::run(&edgehub, &["--help"]);
    let out = text(&help.stdout);
    assert!(
        out.starts_with("Usage: edgehub [-c <config>] [--check]"),
        "{out}"
    );
    assert!(out.contains("Run the edge hub"), "{out}");

    let check = common::run(&cloudhub, &["--check", "-c", &cloud_yaml]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).starts_with("cloudhub: websocket on 127.0.0.1:10000"),
        "{}",
        text(&check.stdout)
    );
    assert!(text(&check.stdout).contains("quic on 127.0.0.1:10001"));

    let check = common::run(&edgehub, &["--check", "--config", &edge_yaml]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout)
            .starts_with("edgehub: node edge-node (project p) to quic localhost:10001")
    );

    // Each name reads its own kind of file: a cloud file is not an edge file.
    let wrong = common::run(&edgehub, &["--check", "-c", &cloud_yaml]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        text(&wrong.stderr).contains("unknown field `cloudhub`"),
        "{}",
        text(&wrong.stderr)
    );

    // A linked name takes no subcommand.
    let extra = common::run(&cloudhub, &["edge", "--check"]);
    assert_eq!(extra.status.code(), Some(2));
}

#[test]
fn other_names_read_the_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud_yaml, _) = write_configs(tmp.path());
    let renamed = tmp.path().join("hub-aarch64");
    symlink(common::hub_bin(), &renamed).unwrap();
    let check = common::run(&renamed, &["cloud", "--check", "-c", &cloud_yaml]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(text(&check.stdout).starts_with("cloudhub: "));

    let version = common::run(&renamed, &["--version"]);
    assert_eq!(
        text(&version.stdout),
        format!("hub {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_version_and_usage_errors() {
    let hub = common::hub_bin();
    let help = common::run(&hub, &["help"]);
    assert_eq!(help.status.code(), Some(0));
    for command in ["cloud", "edge", "certs"] {
        assert!(
            text(&help.stdout).contains(&format!("\n  {command} ")),
            "{}",
            text(&help.stdout)
        );
    }
    let help_cloud = common::run(&hub, &["help", "cloud"]);
    assert!(text(&help_cloud.stdout).starts_with("Usage: hub cloud"));

    assert_eq!(common::run(&hub, &["-V"]).status.code(), Some(0));

    for args in [
        &[][..],
        &["launch"][..],
        &["cloud", "--frobnicate"][..],
        &["certs", "--days", "many"][..],
    ] {
        let out = common::run(&hub, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!text(&out.stderr).is_empty(), "{args:?} says nothing");
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
    }
}

/// An endpoint that takes the TCP connection and never answers (a hub out of descriptors, or no
/// hub at all) does not hold a command forever: it gives up after `client::CONNECT_TIMEOUT` with
/// one line and status 1.
#[test]
fn commands_give_up_on_an_endpoint_that_never_answers() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let handles: Vec<_> = [
        vec!["nodes", "-u", &url],
        vec!["pub", "-u", &url, "-r", "x", "1"],
        vec!["req", "-u", &url, "-r", "x", "-t", "1", "1"],
    ]
    .into_iter()
    .map(|args| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run(&common::hub_bin(), &args)
        })
    })
    .collect();
    for h in handles {
        let out = h.join().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("did not answer within 10s"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert!(started.elapsed() < hub::client::CONNECT_TIMEOUT * 2);
    drop(silent);
}
