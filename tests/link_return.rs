//! Back within a round trip: an edge whose first connection attempts went into a blackhole (the
//! path is down: nothing answers, nothing is refused) connects as soon as the path returns, not
//! when the attempt pending during the outage gives up or retransmits. The old behaviour waited
//! out that attempt: over WebSocket the TLS ClientHello swallowed by the blackhole is never
//! answered, so until `handshake-timeout` (10 s here); over QUIC until the Initial's next
//! retransmission (about 1 s, 3 s, 7 s after the first), 3.5 s after the path returns here.
//! With fresh attempts beside the stalled one (at most a second apart during a long outage), the
//! edge is connected within about a second of the return.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{CloudSpec, EdgeSpec, Hub, Proto, Relay};

/// How long the path stays down after the edge starts: past QUIC's second Initial retransmission
/// (about 3 s), well before its third (about 7 s) and the handshake timeout (10 s).
const OUTAGE: Duration = Duration::from_millis(3500);
/// The bound after the path returns: the longest gap between fresh attempts (1 s) and a
/// loopback handshake on a loaded machine; the old code needs 3.5 s (QUIC) or 6.5 s (WebSocket)
/// more.
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// Starts a cloud and an edge in `dir` (handshake-timeout 10 s, then `tune`) whose path is down, queues one message
/// at `resource` after `outage`, restores the path, and waits for the edge to connect and the
/// message to reach a cloud application, within [`BACK_WITHIN`] of the restore. Returns the edge
/// (for its log) and how long after the restore the message arrived.
fn through_an_outage(
    dir: &Path,
    proto: Proto,
    outage: Duration,
    tune: impl FnOnce(&mut EdgeSpec),
    resource: &str,
) -> (Hub, Duration) {
    let pki = common::link_pki(dir);
    let mut cloud = common::start_cloud(dir, &pki, &CloudSpec::default());
    let relay = Relay::start(proto, cloud.port(proto));
    relay.blackhole(true);
    let mut spec = EdgeSpec::new(proto, &pki, "edge-node", relay.port());
    spec.handshake_timeout = 10.0;
    tune(&mut spec);
    let mut edge = spec.start(dir);
    let apps = common::apps_url(&mut edge);
    edge.wait_for("starting:");
    // The path is down: the first attempts go into the blackhole.
    std::thread::sleep(outage);
    let mut sub = common::apps::subscribe(&cloud.apps, &format!("node/edge-node/{resource}"));
    assert_eq!(
        common::apps::publish_numbers(&apps, resource, 1),
        (1, 0),
        "the outbox takes the message while the path is down"
    );
    assert!(
        edge.lines_with("connected to the cloud").is_empty(),
        "nothing got through the blackhole"
    );
    relay.blackhole(false);
    let returned = Instant::now();
    edge.wait_for_within("connected to the cloud", BACK_WITHIN);
    let got = common::apps::receive(&mut sub, 1);
    common::apps::assert_numbers_in_order(&got, &format!("node/edge-node/{resource}"), 1);
    let took = returned.elapsed();
    cloud.hub.terminate();
    (edge, took)
}

fn back_soon_after_the_path_returns(proto: Proto) {
    let tmp = tempfile::tempdir().unwrap();
    let tune = |s: &mut EdgeSpec| s.read_deadline = 10.0;
    let (_, took) = through_an_outage(tmp.path(), proto, OUTAGE, tune, "back");
    eprintln!(
        "{}: connected and the first message delivered {took:?} after the path returned",
        proto.name()
    );
}

#[test]
fn websocket_is_back_soon_after_the_path_returns() {
    back_soon_after_the_path_returns(Proto::Websocket);
}

#[test]
fn quic_is_back_soon_after_the_path_returns() {
    back_soon_after_the_path_returns(Proto::Quic);
}

/// An outage longer than the read deadline: the wait for WELCOME counts from the connect, not
/// from when the edge started dialling, so the connection that gets through once the path
/// returns carries the link. (Before, the session's deadline had passed during the dial: the
/// edge closed the new link at once with "no WELCOME" and waited out its backoff first.)
fn an_outage_longer_than_the_read_deadline_costs_no_extra_round(proto: Proto) {
    // Down for more than twice the read deadline, within one dial (the handshake timeout); a
    // backoff far longer than BACK_WITHIN, so a link closed after the connect would show.
    let tune = |s: &mut EdgeSpec| {
        s.read_deadline = 1.0;
        s.backoff_initial = 5.0;
        s.backoff_max = 10.0;
    };
    let tmp = tempfile::tempdir().unwrap();
    let outage = Duration::from_millis(2500);
    let (edge, _) = through_an_outage(tmp.path(), proto, outage, tune, "long");
    assert!(
        edge.lines_with("no WELCOME").is_empty(),
        "the link that connected was not timed out: {:?}",
        edge.lines_with("no WELCOME")
    );
}

#[test]
fn websocket_outage_longer_than_the_read_deadline() {
    an_outage_longer_than_the_read_deadline_costs_no_extra_round(Proto::Websocket);
}

#[test]
fn quic_outage_longer_than_the_read_deadline() {
    an_outage_longer_than_the_read_deadline_costs_no_extra_round(Proto::Quic);
}
