//! The link's live figures on real hubs, over both transports: the traffic counters per lane,
//! the round-trip histograms, `hub_link_up` and `hub_link_reconnects_total` by cause on the edge,
//! `hub nodes` (round trip, in flight, queued, the last cause of each node) and `hub status`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use common::apps::{self, BOTH, WAIT, block, eventually};
use common::http::{get, sample};
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use hub::client;
use hub::message::Message;

/// The operations endpoint `hub` logged, wherever the log's cursor is.
fn ops(hub: &Hub) -> SocketAddr {
    let line = hub.first_line("with the operations endpoint", WAIT, |l| {
        l.contains("metrics and health listening on http://")
    });
    let at = line.find("http://").unwrap() + "http://".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The exposition at `addr`.
fn metrics(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// `name{labels}` at `addr`, 0 when absent.
fn value(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    sample(&metrics(addr), name, labels).unwrap_or(0.0)
}

/// Waits until `name{labels}` at `addr` is `want`, then checks it stays so for a last scrape.
fn settles_at(addr: SocketAddr, name: &str, labels: &str, want: f64) {
    eventually(&format!("{name}{{{labels}}} = {want}"), || {
        value(addr, name, labels) >= want
    });
    assert_eq!(value(addr, name, labels), want, "{name}{{{labels}}}");
}

fn hub_cli(args: &[&str]) -> Output {
    common::run(&common::hub_bin(), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = hub_cli(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// `n` messages to `resource` at `url` on one connection, each accepted; urgent or not.
fn publish(url: &str, resource: &str, n: usize, urgent: bool) {
    block("publish", async {
        let mut ws = client::connect(url, "/").await.unwrap();
        for i in 0..n {
            let mut m = apps::message(resource, &i.to_string());
            m.urgent = urgent;
            client::publish(&mut ws, &m).await.unwrap();
        }
    });
}

/// Publishes `bulk` and `urgent` messages to `resource` at `url` and waits until `sub` got them
/// all.
fn send_both_lanes(
    url: &str,
    resource: &str,
    bulk: usize,
    urgent: usize,
    sub: &mut client::Connection,
) {
    publish(url, resource, bulk, false);
    publish(url, resource, urgent, true);
    let got: Vec<Message> = apps::receive(sub, bulk + urgent);
    assert_eq!(got.iter().filter(|m| m.urgent).count(), urgent);
}

fn start_cloud(dir: &Path, pki: &Path, spec: &mut CloudSpec) -> Cloud {
    let cloud = common::start_cloud(dir, pki, spec);
    (spec.ws_port, spec.quic_port) = (cloud.ws_port, cloud.quic_port);
    cloud
}

fn start_edge(dir: &Path, pki: &Path, proto: Proto, cloud: &Cloud) -> (Hub, String) {
    let mut spec = EdgeSpec::new(proto, pki, "edge-node", cloud.port(proto));
    spec.backoff_initial = 0.1;
    spec.backoff_max = 0.5;
    let (mut edge, url) = apps::start_edge(&spec, dir);
    edge.wait_for_within("connected to the cloud", WAIT);
    (edge, url)
}

const BULK: usize = 30;
const URGENT: usize = 7;

#[test]
fn traffic_and_round_trips_are_counted_on_both_hubs() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pki) = (tmp.path(), common::link_pki(tmp.path()));
        let mut spec = CloudSpec {
            metrics_extra: "  per-node: true\n".into(),
            ..CloudSpec::default()
        };
        let cloud = start_cloud(dir, &pki, &mut spec);
        let (edge, edge_url) = start_edge(dir, &pki, proto, &cloud);
        let (cloud_ops, edge_ops) = (ops(&cloud.hub), ops(&edge));
        let p = format!("protocol=\"{}\"", proto.name());
        settles_at(cloud_ops, "hub_nodes_connected", &p, 1.0);
        settles_at(edge_ops, "hub_link_up", &p, 1.0);

        let mut up = apps::subscribe(&cloud.apps, "node/edge-node/up");
        let mut down = apps::subscribe(&edge_url, "down");
        send_both_lanes(&edge_url, "up", BULK, URGENT, &mut up);
        send_both_lanes(&cloud.apps, "node/edge-node/down", BULK, URGENT, &mut down);

        for (lane, n) in [("bulk", BULK), ("urgent", URGENT)] {
            let l = format!("lane=\"{lane}\"");
            for hub in [edge_ops, cloud_ops] {
                settles_at(hub, "hub_link_transmit_messages_total", &l, n as f64);
                settles_at(hub, "hub_link_receive_messages_total", &l, n as f64);
            }
            // Bytes: what one hub wrote is what the other read, message for message.
            let bytes = |hub, dir| value(hub, &format!("hub_link_{dir}_bytes_total"), &l);
            let up_bytes = bytes(edge_ops, "transmit");
            assert!(up_bytes >= (n * 10) as f64, "{lane}: {up_bytes}");
            assert_eq!(bytes(cloud_ops, "receive"), up_bytes, "{lane} up");
            let down_bytes = bytes(cloud_ops, "transmit");
            assert!(down_bytes >= (n * 10) as f64, "{lane}: {down_bytes}");
            assert_eq!(bytes(edge_ops, "receive"), down_bytes, "{lane} down");
        }
        for hub in [edge_ops, cloud_ops] {
            eventually("round trips sampled", || {
                let text = metrics(hub);
                let count = |name| sample(&text, name, "").unwrap_or(0.0);
                count("hub_link_rtt_seconds_count") > 0.0
                    && count("hub_link_ack_round_trip_seconds_count") > 0.0
            });
        }
        eventually("the node's round trip, per node", || {
            value(cloud_ops, "hub_node_link_rtt_seconds", "node=\"edge-node\"") > 0.0
        });
    }
}

#[test]
fn nodes_and_status_show_the_link_and_why_it_last_ended() {
    for proto in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pki) = (tmp.path(), common::link_pki(tmp.path()));
        let mut spec = CloudSpec::default();
        let mut cloud = start_cloud(dir, &pki, &mut spec);
        let (mut edge, _) = start_edge(dir, &pki, proto, &cloud);

        // The edge stops: the cloud keeps why, and what is queued for the node meanwhile.
        assert!(edge.terminate().success());
        cloud.hub.wait_for("node edge-node disconnected");
        publish(&cloud.apps, "node/edge-node/later", 3, false);
        let row = apps::node_row(&cloud.apps, "edge-node");
        assert_eq!(row["queued"], 3, "{row}");
        assert_eq!(row["last_cause"], "closed", "{row}");
        let detail = row["last_cause_detail"].as_str().unwrap();
        assert!(detail.contains("shutting down"), "{row}");
        assert!(
            row["protocol"].is_null() && row["rtt_ms"].is_null(),
            "{row}"
        );

        // Back: the node's row has its link's figures, and still why the last link ended.
        let (edge, edge_url) = start_edge(dir, &pki, proto, &cloud);
        let mut row = serde_json::Value::Null;
        eventually("the node's round trip and its queue drained", || {
            row = json_of(&["nodes", "-u", &cloud.apps, "--json"])
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["node_id"] == "edge-node")
                .cloned()
                .unwrap();
            row["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0) && row["queued"] == 0
        });
        assert_eq!(row["protocol"], proto.name(), "{row}");
        assert_eq!(row["in_flight"], 0, "{row}");
        assert_eq!(row["last_cause"], "closed", "{row}");
        let table = stdout(&hub_cli(&["nodes", "-u", &cloud.apps]));
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        for column in ["RTT", "(ms)", "IN-FLIGHT", "QUEUED", "LAST-CAUSE"] {
            assert!(header.contains(&column), "{table}");
        }
        let cells: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        // NODE PROTOCOL ADDRESS DATE TIME RTT IN-FLIGHT QUEUED LAST-CAUSE
        assert_eq!(cells.len(), 9, "{table}");
        assert_eq!((cells[0], cells[1]), ("edge-node", proto.name()), "{table}");
        assert!(cells[5].parse::<f64>().unwrap() > 0.0, "{table}");
        assert_eq!(&cells[6..], ["0", "0", "closed"], "{table}");

        // `hub status` on the gateway: the link is open, nothing went wrong yet.
        let edge_ops = ops(&edge);
        let p = format!("protocol=\"{}\"", proto.name());
        let status = json_of(&["status", "-u", &edge_url, "--json"]);
        assert_eq!(status["link"], "open", "{status}");
        assert_eq!(status["node_id"], "edge-node", "{status}");
        assert_eq!(status["protocol"], proto.name(), "{status}");
        let port = cloud.port(proto).to_string();
        assert!(
            status["cloud"].as_str().unwrap().contains(&port),
            "{status}"
        );
        assert!(
            status["address"].as_str().unwrap().ends_with(&port),
            "{status}"
        );
        assert!(status["up_since"].as_u64().unwrap() > 0, "{status}");
        assert_eq!(status["reconnects"], 0, "{status}");
        assert!(status["last_error"].is_null(), "{status}");
        assert_eq!(value(edge_ops, "hub_link_up", &p), 1.0);

        // The cloud shuts down: the link is down, for cause "closed".
        let mut edge = edge;
        assert!(cloud.hub.terminate().success());
        edge.wait_for("link to the cloud lost");
        settles_at(edge_ops, "hub_link_up", &p, 0.0);
        settles_at(
            edge_ops,
            "hub_link_reconnects_total",
            "cause=\"closed\"",
            1.0,
        );
        let down = json_of(&["status", "-u", &edge_url, "--json"]);
        assert_ne!(down["link"], "open", "{down}");
        assert_last_error(&down);

        // It comes back: open again, the last error told with its time, reconnects counted.
        let cloud = start_cloud(dir, &pki, &mut spec);
        edge.wait_for_within("connected to the cloud", WAIT);
        let status = json_of(&["status", "-u", &edge_url, "--json"]);
        assert_eq!(status["link"], "open", "{status}");
        assert!(status["reconnects"].as_u64().unwrap() >= 1, "{status}");
        assert_last_error(&status);
        settles_at(edge_ops, "hub_link_up", &p, 1.0);
        let table = stdout(&hub_cli(&["status", "-u", &edge_url]));
        assert!(table.contains("link        open"), "{table}");
        let last = table.lines().find(|l| l.starts_with("last error")).unwrap();
        let cause = status["last_cause"].as_str().unwrap();
        assert!(last.ends_with(&format!("({cause})")), "{table}");
        assert!(last.contains(" UTC: "), "{table}");
        assert!(
            table.contains(&format!("protocol    {}", proto.name())),
            "{table}"
        );

        // A crash of the cloud: the edge notices the connection gone, or the silence.
        let mut cloud = cloud;
        cloud.hub.kill9();
        edge.wait_for("link to the cloud lost");
        eventually("a reconnect for a lost connection or silence", || {
            let text = metrics(edge_ops);
            let n = |cause| {
                sample(
                    &text,
                    "hub_link_reconnects_total",
                    &format!("cause=\"{cause}\""),
                )
                .unwrap_or(0.0)
            };
            n("connection_lost") + n("read_deadline") >= 1.0
        });
        let status = json_of(&["status", "-u", &edge_url, "--json"]);
        let cause = status["last_cause"].as_str().unwrap();
        assert!(
            ["connection_lost", "read_deadline", "connect_failed"].contains(&cause),
            "{status}"
        );
    }
}

/// The last error after the cloud shut down: its close, or, when the edge was quick to try
/// again, a refused attempt while the cloud was stopping or gone.
fn assert_last_error(status: &serde_json::Value) {
    let error = status["last_error"].as_str().unwrap();
    assert!(status["last_error_at"].as_u64().unwrap() > 0, "{status}");
    match status["last_cause"].as_str().unwrap() {
        "closed" => assert!(error.contains("shutting down"), "{status}"),
        "connect_failed" => {}
        _ => panic!("{status}"),
    }
}

#[test]
fn status_asked_of_a_cloud_is_one_sentence_and_status_1() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    for url in [cloud.apps.as_str(), "ws://127.0.0.1:1"] {
        let out = hub_cli(&["status", "-u", url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("hub: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = hub_cli(&["status", "-u", &cloud.apps]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such path /status on a cloud hub"),
        "{stderr}"
    );
}
