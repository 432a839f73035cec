//! A cloud killed with `kill -9` and restarted on the same ports: its edges learn at once that
//! their connection is gone (TCP reset; QUIC stateless reset, whose key the cloud derives from its
//! own private key so that it is the same after the restart) and are back long before their read
//! deadline.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cloud, CloudSpec, EdgeSpec, Proto};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// Far longer than the edge ever needs after a restart, so that reaching the deadline cannot pass
/// for a quick reconnect.
const READ_DEADLINE: f64 = 30.0;
/// What "at once" allows: the next heartbeat (1 s), the backoff (at most 1 s) and a slow machine.
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
        let mut spec = CloudSpec::default();
        let mut cloud = restart(dir, &pki, &mut spec);
        let mut edge_spec = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto));
        edge_spec.read_deadline = READ_DEADLINE;
        let mut edge = edge_spec.start(dir);
        edge.wait_for("connected to the cloud");
        cloud.hub.wait_for("node edge-node connected");

        for round in 1..=2 {
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
