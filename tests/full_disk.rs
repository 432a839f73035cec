//! A full disk under the edge's outbox, with real `hub edge` and `hub cloud` processes: the edge
//! refuses cleanly while the disk is full, and once the cloud acknowledges what it accepted it
//! frees the space and records its position by itself, without an operator.
//!
//! The outbox lives on a 4 MiB tmpfs mounted in a private mount namespace (`unshare -m`), held
//! by a small process for the whole test; each `hub edge` enters that namespace with `nsenter`.
//! The mount is invisible outside the namespace and goes away with it, so nothing is left
//! mounted whatever happens to the test. Without mount namespaces (not root, or forbidden by a
//! sandbox) the test says so and skips.

mod common;

use std::path::Path;

use common::apps::*;
use common::small_fs::SmallFs;
use common::{EdgeSpec, Hub, Proto, Relay};
use hub::client;
use hub::message::Message;

/// The size of the filesystem under the outbox.
const FS_SIZE: &str = "4m";

/// Bytes of padding in each test message, so a few thousand fill the filesystem.
const PAD: usize = 1000;

/// A test message numbered `n`, about [`PAD`] bytes long.
fn numbered(n: u64) -> Message {
    message("readings", &format!("\"{n} {}\"", "x".repeat(PAD)))
}

/// The number in a message made by [`numbered`].
fn number_of(m: &Message) -> u64 {
    let text = std::str::from_utf8(&m.content).unwrap();
    text.trim_matches('"')
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered message: {}", m.to_json()))
}

/// Publishes the messages numbered `range` at `apps`, pipelined; returns the numbers accepted
/// and the reasons of the refusals.
fn publish_range(apps: &str, range: std::ops::Range<u64>) -> (Vec<u64>, Vec<String>) {
    let msgs: Vec<Message> = range.clone().map(numbered).collect();
    let results = block("publish", async {
        let ws = client::connect(apps, "/").await.unwrap();
        publish_tracked(ws, &msgs, |_| {}).await
    });
    assert_eq!(results.len(), msgs.len(), "an outcome for every message");
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (n, r) in range.zip(results) {
        match r {
            Ok(()) => accepted.push(n),
            Err(e) => refused.push(e),
        }
    }
    (accepted, refused)
}

/// Starts the edge in the namespace; returns it with its application endpoint.
fn start_edge(fs: &SmallFs, config: &Path) -> (Hub, String) {
    let mut edge = Hub::spawn("edge", fs.hub(&["edge", "-c", config.to_str().unwrap()]));
    let apps = common::apps_url(&mut edge);
    (edge, apps)
}

/// Restarts the edge (SIGTERM, then a new process) and returns the new one, once it logged
/// that it is starting, with its application endpoint.
fn restart_edge(edge: &mut Hub, fs: &SmallFs, config: &Path) -> (Hub, String) {
    assert!(edge.terminate().success(), "the edge exits cleanly");
    let (mut edge, apps) = start_edge(fs, config);
    edge.wait_for("starting");
    (edge, apps)
}

/// How many messages the edge reported waiting in its outbox when it started (0 when it did not
/// report any).
fn waiting_at_start(edge: &Hub) -> u64 {
    match edge.lines_with("message(s) waiting in the outbox").first() {
        None => 0,
        Some(line) => line
            .split_whitespace()
            .rev()
            .nth(5)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line:?}")),
    }
}

/// Receives `n` messages at `sub` and checks they are exactly `expected`, in order.
fn expect_in_order(sub: &mut client::Connection, expected: &[u64], what: &str) {
    let got: Vec<u64> = receive(sub, expected.len()).iter().map(number_of).collect();
    if got != expected {
        let first = got.iter().zip(expected).position(|(g, e)| g != e);
        panic!(
            "{what}: {} received, {} expected; first difference at index {first:?}",
            got.len(),
            expected.len()
        );
    }
}

#[test]
fn a_full_outbox_recovers_once_the_cloud_has_drained_it() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let Some(fs) = SmallFs::mount(&outbox, FS_SIZE) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(fs.dir.to_str().unwrap()),
        "the small filesystem is visible only inside its namespace"
    );

    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &common::CloudSpec::default());
    let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");
    // The cloud is out of reach until the relay lets the link through.
    let relay = Relay::start(Proto::Websocket, cloud.port(Proto::Websocket));
    relay.blackhole(true);
    let mut spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", relay.port());
    spec.handshake_timeout = 2.0;
    spec.state = Some(outbox.clone());
    let config = spec.write(tmp.path());
    let (mut edge1, apps) = start_edge(&fs, &config);

    // 1. Fill the outbox until the disk is full: every refusal says why, and the disk being
    //    full is what stopped it (the outbox's own limits are far away).
    //    A hundred at a time, so that the last ones fill what little room is left.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for from in (0..6000).step_by(100) {
        let (a, r) = publish_range(&apps, from..from + 100);
        accepted.extend(a);
        refused.extend(r);
    }
    eprintln!("{} accepted, {} refused", accepted.len(), refused.len());
    assert!(
        accepted.len() > 3000,
        "a 4 MiB disk holds a few thousand ({})",
        accepted.len()
    );
    assert!(!refused.is_empty(), "6 MB do not fit on a 4 MiB disk");
    for reason in &refused {
        assert!(
            reason.contains("No space left on device"),
            "refused for another reason: {reason}"
        );
    }

    // 2. A restart on the full disk keeps everything accepted.
    let (mut edge2, apps) = restart_edge(&mut edge1, &fs, &config);
    assert_eq!(waiting_at_start(&edge2), accepted.len() as u64);

    // 3. The cloud comes within reach: everything accepted arrives, once, in order.
    relay.blackhole(false);
    edge2.wait_for_within("connected to the cloud", WAIT);
    expect_in_order(&mut at_cloud, &accepted, "the backlog");

    // 4. The acknowledged messages free the disk by themselves: new messages are accepted.
    edge2.wait_for_within("the disk has room again", WAIT);
    let (fresh, refused) = publish_range(&apps, 10_000..10_200);
    assert!(
        refused.is_empty(),
        "{} of 200 refused after the drain: {:?}",
        refused.len(),
        refused.first()
    );
    expect_in_order(&mut at_cloud, &fresh, "after the drain");

    // 5. And after a restart too.
    let (mut edge3, apps) = restart_edge(&mut edge2, &fs, &config);
    edge3.wait_for_within("connected to the cloud", WAIT);
    let (fresh, refused) = publish_range(&apps, 20_000..20_020);
    assert!(
        refused.is_empty(),
        "{} of 20 refused after a restart: {:?}",
        refused.len(),
        refused.first()
    );
    expect_in_order(&mut at_cloud, &fresh, "after a restart");
    assert_next_is_marker(&apps, "readings", &mut at_cloud);

    // 6. What the cloud acknowledged is recorded: once the edge has connected again (which
    //    brings every acknowledgement the link may have cut off), a restart finds nothing
    //    waiting to be sent again.
    let (mut edge4, _) = restart_edge(&mut edge3, &fs, &config);
    edge4.wait_for_within("connected to the cloud", WAIT);
    let (mut edge5, apps) = restart_edge(&mut edge4, &fs, &config);
    assert_eq!(
        waiting_at_start(&edge5),
        0,
        "acknowledged messages are not sent again"
    );
    edge5.wait_for_within("connected to the cloud", WAIT);
    assert_next_is_marker(&apps, "readings", &mut at_cloud);

    // Each process logged the full disk once (the first filled it, the second started on it),
    // and the second logged its end once; the later ones never saw it full.
    let count = |hub: &Hub, needle: &str| hub.lines_with(needle).len();
    assert_eq!(count(&edge1, "the disk is full"), 1);
    assert_eq!(count(&edge2, "the disk is full"), 1);
    assert_eq!(count(&edge2, "the disk has room again"), 1);
    for later in [&edge3, &edge4, &edge5] {
        assert_eq!(count(later, "the disk is full"), 0);
    }
    drop(fs);
}
