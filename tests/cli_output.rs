//! When the reader of a command's output goes away (`hub sub | head -n 1`), the command ends
//! quietly with status 0: no endless writing into a closed pipe, no panic. A standard error
//! that is gone does not turn a failure into a panic either.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::apps::*;
use common::{CloudSpec, PATIENCE, Proto};
use hub::client;

/// A standard output (or error) whose reader is already gone: writing to it fails with `EPIPE`,
/// as it does after `head` exited.
fn gone() -> Stdio {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    Stdio::from(OwnedFd::from(ours))
}

fn hub_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::hub_bin());
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// Runs `hub args` with its standard output gone.
fn without_stdout(args: &[&str]) -> Output {
    hub_cmd(args)
        .stdout(gone())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet_success(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    assert!(stderr.is_empty(), "{args:?} said: {stderr}");
}

#[test]
fn sub_ends_when_its_reader_goes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);

    // `hub sub -r ask --echo | head -n 1`, with this test as `head`.
    let mut sub = hub_cmd(&["sub", "-u", &edge_apps, "-r", "ask", "--echo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A request is answered once `hub sub` has subscribed; until then the edge says nobody is.
    eventually("hub sub subscribed", || {
        match ask(&cloud.apps, &request("node/edge-node/ask", "1")) {
            Ok(answer) => {
                assert_eq!(answer.content, b"1");
                true
            }
            Err(e) if e.contains("no application subscribed") => false,
            Err(e) => panic!("{e}"),
        }
    });
    let mut head = BufReader::new(sub.stdout.take().unwrap());
    let mut first = String::new();
    head.read_line(&mut first).unwrap();
    assert!(first.contains(r#""resource":"ask""#), "{first}");
    drop(head); // `head -n 1` exits

    // More messages keep coming; the command must not keep writing them to nowhere.
    block("publish more", async {
        let mut ws = client::connect(&cloud.apps, "/").await.unwrap();
        for i in 0..3 {
            client::publish(&mut ws, &message("node/edge-node/ask", &i.to_string()))
                .await
                .unwrap();
        }
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = sub.kill();
            panic!("hub sub still runs {PATIENCE:?} after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut sub.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "hub sub said: {stderr}");
}

#[test]
fn every_command_ends_quietly_without_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, Proto::Quic, &cloud);
    let responder = spawn_responder(subscribe(&edge_apps, "ask"), 1);

    let cloud_yaml = tmp.path().join("check.yaml");
    std::fs::write(
        &cloud_yaml,
        format!(
            "cloudhub:\n  ca: {0}/ca.crt\n  cert: {0}/server.crt\n  key: {0}/server.key\n",
            pki.display()
        ),
    )
    .unwrap();
    let certs = tmp.path().join("more-pki");
    let commands: Vec<Vec<&str>> = vec![
        vec!["--version"],
        vec!["help"],
        vec!["pub", "--help"],
        vec!["cloud", "--check", "-c", cloud_yaml.to_str().unwrap()],
        vec![
            "certs",
            "--dir",
            certs.to_str().unwrap(),
            "--node",
            "node-9",
        ],
        vec!["pub", "-u", &cloud.apps, "-r", "node/edge-node/t", "1"],
        vec!["req", "-u", &cloud.apps, "-r", "node/edge-node/ask", "2"],
        vec!["nodes", "-u", &cloud.apps],
        vec!["nodes", "-u", &cloud.apps, "--json"],
    ];
    for args in &commands {
        let out = without_stdout(args);
        assert_quiet_success(args, &out);
    }
    assert!(certs.join("node-node-9.crt").exists(), "certs did its work");
    assert_eq!(responder.join().unwrap().len(), 1, "req asked");

    // `--stdin`: the totals cannot be printed, the lines were published all the same.
    let mut child = hub_cmd(&[
        "pub",
        "-u",
        &cloud.apps,
        "-r",
        "node/edge-node/t",
        "--stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(gone())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"1\n2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_quiet_success(&["pub", "--stdin"], &out);
}

#[test]
fn a_failure_without_stderr_is_still_a_plain_failure() {
    // Nothing listens on port 1; the error cannot be told, the status still says it.
    for args in [
        &["pub", "-u", "ws://127.0.0.1:1", "-r", "t", "1"][..],
        &["cloud", "--check", "-c", "/nonexistent/cloudhub.yaml"][..],
        &["pub", "-r"][..],
    ] {
        let out = hub_cmd(args)
            .stdout(gone())
            .stderr(gone())
            .output()
            .unwrap();
        let code = out.status.code();
        assert!(matches!(code, Some(1 | 2)), "{args:?}: {code:?}");
    }
    // And with standard error there, the failure is one line, not a panic.
    let out = hub_cmd(&["pub", "-u", "ws://127.0.0.1:1", "-r", "t", "1"])
        .stdout(gone())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("hub: cannot connect to ws://127.0.0.1:1"),
        "{stderr}"
    );
}
