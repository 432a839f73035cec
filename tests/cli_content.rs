//! Content given to `hub pub` and `hub req` on the command line or on standard input arrives as
//! the user wrote it: negative numbers are content, not unknown options; a JSON number keeps its
//! JSON text (`1e400` stays a number, as from an application); every bad input line is refused
//! on its own with its line number while the others are published.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::apps::*;
use common::{CloudSpec, Proto};

fn hub(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(common::hub_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn command_line_content_keeps_its_json_text() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);
    let mut sub = subscribe(&edge_apps, "num");

    let to = "node/edge-node/num";
    // (the words after the resource, the content that must arrive)
    let cases: [(&[&str], &str); 9] = [
        (&["-5"], "-5"),
        (&["-3.5"], "-3.5"),
        (&["1e400"], "1e400"),
        (&["-1E+400"], "-1E+400"),
        (
            &["123456789012345678901234567890"],
            "123456789012345678901234567890",
        ),
        (&["1.50"], "1.50"),
        (&["--", "-x"], r#""-x""#),
        (&["--", "-7"], "-7"),
        (&["plain text"], r#""plain text""#),
    ];
    for (words, _) in &cases {
        let mut args = vec!["pub", "-u", &cloud.apps, "-r", to];
        args.extend_from_slice(words);
        let out = hub(&args, b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{words:?}: {}",
            text(&out.stderr)
        );
    }
    // The number before the options, too.
    let out = hub(&["pub", "-2", "-u", &cloud.apps, "-r", to], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let got = receive(&mut sub, cases.len() + 1);
    for (m, (words, want)) in got.iter().zip(&cases) {
        assert_eq!(text(&m.content), *want, "{words:?}");
        // The application sees the number itself in the message's JSON.
        assert!(
            m.to_json().ends_with(&format!(r#""content":{want}}}"#)),
            "{}",
            m.to_json()
        );
    }
    assert_eq!(text(&got[cases.len()].content), "-2");

    // `hub req` and `hub sub --reply` read content the same way.
    let responder = std::thread::spawn({
        let edge_apps = edge_apps.clone();
        move || {
            hub(
                &[
                    "sub", "-u", &edge_apps, "-r", "ask", "-n", "1", "--reply", "-1e400",
                ],
                b"",
            )
        }
    });
    let mut answer = None;
    eventually("hub sub answers", || {
        let out = hub(
            &["req", "-u", &cloud.apps, "-r", "node/edge-node/ask", "-7"],
            b"",
        );
        let stderr = text(&out.stderr);
        if stderr.contains("no application subscribed") {
            return false;
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        answer = Some(text(&out.stdout));
        true
    });
    let answer = answer.unwrap();
    assert!(answer.contains(r#""content":-1e400}"#), "{answer}");
    let asked = responder.join().unwrap();
    assert!(
        text(&asked.stdout).contains(r#""content":-7}"#),
        "{}",
        text(&asked.stdout)
    );

    // A word that starts with '-' and is no number is an unknown option; the error says how to
    // give it as content.
    let out = hub(&["pub", "-u", &cloud.apps, "-r", to, "-x"], b"");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Unrecognized argument: -x"), "{stderr}");
    assert!(stderr.contains("put `--` before it"), "{stderr}");
}

#[test]
fn stdin_refuses_each_bad_line_and_publishes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        apps_extra: "  max-message-bytes: 300\n".into(),
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, Proto::Quic, &cloud);
    let mut sub = subscribe(&edge_apps, "lines");

    let mut input = b"c1\n\xff\xfe\x00binary\nc2\r\n".to_vec();
    input.extend_from_slice(format!("\"{}\"\n", "x".repeat(400)).as_bytes());
    input.extend_from_slice(b"\nc3\n-4\n");
    let out = hub(
        &[
            "pub",
            "-u",
            &cloud.apps,
            "-r",
            "node/edge-node/lines",
            "--stdin",
        ],
        &input,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(stdout, "4 accepted, 2 refused\n", "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let refusals: Vec<&str> = stderr.lines().collect();
    assert_eq!(refusals.len(), 2, "{stderr}");
    assert!(
        refusals[0].starts_with("line 2: refused: not UTF-8 text (byte 0xff at column 1)"),
        "{stderr}"
    );
    assert!(
        refusals[1].starts_with("line 4: refused: message of ")
            && refusals[1].contains("over the 300-byte limit"),
        "{stderr}"
    );

    let got = receive(&mut sub, 4);
    let contents: Vec<String> = got.iter().map(|m| text(&m.content)).collect();
    assert_eq!(contents, [r#""c1""#, r#""c2""#, r#""c3""#, "-4"]);
}

/// A line too big for the endpoint itself (past `apps.max-message-bytes` and the room it leaves
/// for the JSON) makes the hub close the connection with 1009 and its reason: the command says
/// so, rather than only that some lines went unconfirmed.
#[test]
fn the_hubs_reason_for_closing_reaches_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        apps_extra: "  max-message-bytes: 300\n".into(),
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let input = format!("\"{}\"\n1\n", "x".repeat(200_000));
    let out = hub(
        &[
            "pub",
            "-u",
            &cloud.apps,
            "-r",
            "node/edge-node/big",
            "--stdin",
        ],
        input.as_bytes(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("0 accepted"), "{stdout}");
    assert!(
        stderr.contains("the hub closed the connection: 1009 message too big"),
        "{stderr}"
    );
}

/// `hub sub --session NAME`: a durable subscription. What arrives while no subscriber of the
/// name is connected is kept by the hub and printed first by the next `hub sub` of the name.
#[test]
fn hub_sub_with_a_session_gets_what_arrived_while_it_was_away() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, edge_apps) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);
    let sub = |n: &str| {
        // `timeout`: a subscriber that never gets its messages fails the test rather than hangs.
        Command::new("timeout")
            .arg("20")
            .arg(common::hub_bin())
            .args([
                "sub",
                "-u",
                &edge_apps,
                "-r",
                "away",
                "--session",
                "s1",
                "-n",
                n,
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // A subscriber that takes nothing and leaves: the session exists once the hub wrote it.
    assert_eq!(sub("0").status.code(), Some(0));
    let session_file = || find(tmp.path(), "sessions/ws-s1/session.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !session_file() {
        assert!(std::time::Instant::now() < deadline, "no session was kept");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Away: three arrive.
    for n in 0..3 {
        let p = hub(
            &[
                "pub",
                "-u",
                &cloud.apps,
                "-r",
                "node/edge-node/away/x",
                &n.to_string(),
            ],
            b"",
        );
        assert_eq!(p.status.code(), Some(0), "{}", text(&p.stderr));
    }
    let back = sub("3");
    let contents: Vec<String> = text(&back.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["content"].to_string())
        .collect();
    assert_eq!(contents, ["0", "1", "2"], "{}", text(&back.stderr));
}

/// Whether a file whose path ends with `tail` is under `dir`.
fn find(dir: &std::path::Path, tail: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let path = e.path();
            path.ends_with(tail) || (path.is_dir() && find(&path, tail))
        })
}
