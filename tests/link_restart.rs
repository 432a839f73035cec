//! A cloud killed with `kill -9` and restarted on the same ports: its edges learn at once that
//! their connection is gone (TCP reset; QUIC stateless reset, whose key the cloud derives from its
//! own private key so that it is the same after the restart) and are back long before their read
//! deadline. The timings are KubeEdge's defaults (edge heartbeat and read deadline 15 s, cloud
//! keepalive 30 s): a QUIC edge learns of the restart only when it next sends, which it does as
//! soon as one of the cloud's heartbeats (every 5 s) is late, not after its own 15 s.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cloud, CloudSpec, EdgeSpec, Proto};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// The edge's read deadline and heartbeat, and the cloud's keepalive: the defaults.
const READ_DEADLINE: f64 = 15.0;
const HEARTBEAT: f64 = 15.0;
const KEEPALIVE: f64 = 30.0;
/// What "at once" allows: a late cloud heartbeat (5.5 s after the last one), the backoff (at most
/// 1 s) and a slow machine; well short of the read deadline and the edge's own heartbeat.
const BACK_WITHIN: Duration = Duration::from_secs(10);

fn restart(dir: &Path, pki: &Path, spec: &mut CloudSpec) -> Cloud {
    let cloud = common::start_cloud(dir, pki, spec);
    (spec.ws_port, spec.quic_port) = (cloud.ws_port, cloud.quic_port);
    cloud
}

#[test]
fn edges_are_back_long_before_their_read_deadline_after_a_cloud_crash() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = common::link_pki(dir);
        let mut spec = CloudSpec {
            keepalive: KEEPALIVE,
            ..CloudSpec::default()
        };
        let mut cloud = restart(dir, &pki, &mut spec);
        let mut edge_spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        edge_spec.read_deadline = READ_DEADLINE;
        edge_spec.heartbeat = HEARTBEAT;
        let mut edge = edge_spec.start(dir);
        edge.wait_for("connected to the cloud");
        cloud.hub.wait_for("node edge-node connected");

        for round in 1..=2 {
            // The case is an idle link: a link a few milliseconds old still has acknowledgements
            // of its handshake to send, which would draw the restarted cloud's reset at once.
            // Idleness is a matter of time passing, so here the test waits.
            std::thread::sleep(Duration::from_millis(1500));
            cloud.hub.kill9();
            let killed = Instant::now();
            cloud = restart(dir, &pki, &mut spec);
            let lost = edge.wait_for_within("link to the cloud lost", BACK_WITHIN);
            if proto == Proto::Quic {
                assert!(
                    lost.contains("reset"),
                    "round {round}: the restarted cloud's stateless reset ends the link: {lost}"
                );
            }
            let back = edge.wait_for_within(
                &format!("connected to the cloud over {}", proto.name()),
                BACK_WITHIN,
            );
            let took = killed.elapsed();
            cloud.hub.wait_for("node edge-node connected");
            assert!(
                took < BACK_WITHIN,
                "round {round}: {proto:?} back after {took:?} with a {READ_DEADLINE} s read deadline: {back}"
            );
        }
    }
}
