//! Both hubs' metrics as Prometheus itself reads them: `promtool check metrics` on the output of a
//! cloud (with and without `metrics.per-node`) and of edges over both transports, with traffic
//! both ways; a real Prometheus server scraping a cloud and its edges; the shipped scrape
//! configuration; and the shipped Grafana dashboard (`configs/grafana-dashboard.json`) checked
//! against live expositions, so that it cannot drift from the metrics.
//!
//! `promtool` and `prometheus` are Debian's `prometheus` package, which `scripts/test-deps.sh`
//! installs (`make check` runs it); a test that needs one fails with a sentence naming it when it
//! is missing, rather than passing without checking anything.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::apps::*;
use common::http::{ops_addr, request, sample};
use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use serde_json::Value;

/// The content type of Prometheus' text format 0.0.4 ("Exposition formats").
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Messages each way per node in [`Fleet::traffic`].
const N: u64 = 20;

/// The path of `name` on `PATH`; fails the test with what to install when it is missing.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: it comes with Debian's prometheus package \
                 (scripts/test-deps.sh installs it, as `make check` does)"
            )
        })
}

/// `GET path` on `addr` over HTTP/1.1: the status, the header lines and the body.
fn get_full(addr: SocketAddr, path: &str) -> (u16, Vec<String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the operations endpoint");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    (
        status.parse().unwrap(),
        lines.map(str::to_owned).collect(),
        body.to_owned(),
    )
}

/// The value of header `name` (case-insensitive) among `headers`.
fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Scrapes `addr`'s `/metrics`: checks the status, the content type and the layout of the text
/// ([`check_layout`]), and returns the text.
fn exposition(addr: SocketAddr, what: &str) -> String {
    let (status, headers, body) = get_full(addr, "/metrics");
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(
        header(&headers, "content-type"),
        Some(TEXT_FORMAT),
        "{what}: the content type of the text format: {headers:?}"
    );
    assert_eq!(
        header(&headers, "content-length").map(|v| v.parse::<usize>().unwrap()),
        Some(body.len()),
        "{what}: {headers:?}"
    );
    check_layout(&body, what);
    body
}

/// The metric name of a sample line.
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap()
}

/// What promtool's parser also demands, checked here line by line so a failure names the line:
/// each family has one `# HELP` then one `# TYPE`, before its samples; every sample belongs to
/// the family whose TYPE line came last (histograms: `_bucket`, `_sum`, `_count`), and its value
/// is a number. Returns the families and their kinds.
fn check_layout(text: &str, what: &str) -> BTreeMap<String, String> {
    let mut helped = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let at = format!("{what}, line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "{at}: a second HELP");
            current = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.contains(name), "{at}: TYPE without HELP before it");
            assert!(
                kinds.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{at}: a second TYPE"
            );
            current = Some((name.to_owned(), kind.to_owned()));
        } else if line.starts_with('#') || line.is_empty() {
            panic!("{at}: not a HELP, TYPE or sample line");
        } else {
            let (family, kind) = current
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: a sample before its family's HELP and TYPE"));
            let name = sample_name(line);
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family)),
                _ => name == family,
            };
            assert!(ok, "{at}: a sample of {name} inside family {family}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
                "{at}: the value is not a number"
            );
        }
    }
    assert!(
        kinds.len() >= 20,
        "{what}: only {} families:\n{text}",
        kinds.len()
    );
    kinds
}

/// `promtool check metrics` on `text`: passes with no complaint, or the test fails with
/// promtool's words.
fn promtool_check_metrics(promtool: &Path, text: &str, what: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {} {said}\n--- the exposition:\n{text}",
        out.status
    );
}

/// The names of the samples in an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| sample_name(l).to_owned())
        .collect()
}

/// A cloud serving both transports and two edges connected to it: `node-1` over WebSocket,
/// `node-2` over QUIC, each with its operations endpoint.
struct Fleet {
    cloud: Cloud,
    cloud_ops: SocketAddr,
    /// Node id, the edge, its application endpoint, its operations endpoint.
    edges: Vec<(&'static str, Hub, String, SocketAddr)>,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    /// Starts the cloud (`metrics.per-node` as given) and both edges, and waits until both are
    /// connected.
    fn start(per_node: bool) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = common::link_pki(dir);
        let spec = CloudSpec {
            metrics_extra: format!("  per-node: {per_node}\n"),
            ..CloudSpec::default()
        };
        let mut cloud = common::start_cloud(dir, &pki, &spec);
        let cloud_ops = ops_addr(&mut cloud.hub);
        let mut edges = Vec::new();
        for (node, proto) in [("node-1", Proto::Websocket), ("node-2", Proto::Quic)] {
            let espec = EdgeSpec::new(proto, &pki, node, cloud.port(proto));
            let (mut edge, apps) = start_edge(&espec, dir);
            let ops = ops_addr(&mut edge);
            edge.wait_for_within("connected to the cloud", WAIT);
            cloud.hub.wait_for(&format!("node {node} connected"));
            edges.push((node, edge, apps, ops));
        }
        Fleet {
            cloud,
            cloud_ops,
            edges,
            _tmp: tmp,
        }
    }

    /// [`N`] messages up from each edge's application to a cloud application, and [`N`] down
    /// from the cloud application to each edge's; waits until all arrived.
    fn traffic(&self) {
        let mut up = subscribe(&self.cloud.apps, "node/");
        let mut downs: Vec<_> = self
            .edges
            .iter()
            .map(|(_, _, apps, _)| subscribe(apps, "commands"))
            .collect();
        for (node, _, apps, _) in &self.edges {
            assert_eq!(publish_numbers(apps, "readings", N), (N, 0), "{node} up");
            let down = format!("node/{node}/commands");
            assert_eq!(
                publish_numbers(&self.cloud.apps, &down, N),
                (N, 0),
                "{node} down"
            );
        }
        receive(&mut up, 2 * N as usize);
        for ((node, ..), down) in self.edges.iter().zip(&mut downs) {
            let got = receive(down, N as usize);
            assert_numbers_in_order(&got, "commands", N);
            let _ = node;
        }
    }

    /// Every hub's operations endpoint, named.
    fn endpoints(&self) -> Vec<(String, SocketAddr)> {
        let mut all = vec![("the cloud".to_owned(), self.cloud_ops)];
        for (node, _, _, ops) in &self.edges {
            all.push((format!("the edge {node}"), *ops));
        }
        all
    }
}

#[test]
fn promtool_passes_on_both_hubs_with_nodes_and_traffic_both_ways() {
    let promtool = tool("promtool");
    let fleet = Fleet::start(false);
    fleet.traffic();
    for (what, addr) in fleet.endpoints() {
        let text = exposition(addr, &what);
        promtool_check_metrics(&promtool, &text, &what);
        if what == "the cloud" {
            assert!(sample(&text, "hub_nodes_connected", "protocol=\"quic\"").is_some());
            assert!(sample(&text, "hub_node_limit", "") == Some(100.0), "{text}");
            assert!(
                !text.contains("hub_node_queue_"),
                "per-node series only with metrics.per-node: true:\n{text}"
            );
        } else {
            assert!(sample(&text, "hub_link_up", "protocol=\"websocket\"").is_some());
            assert!(!text.contains("hub_nodes_connected"), "{text}");
        }
    }
}

#[test]
fn promtool_passes_on_the_cloud_with_per_node_series() {
    let promtool = tool("promtool");
    let fleet = Fleet::start(true);
    fleet.traffic();
    // A node that never connected, with messages waiting for it.
    assert_eq!(
        publish_numbers(&fleet.cloud.apps, "node/node-3/commands", 3),
        (3, 0)
    );
    let text = exposition(fleet.cloud_ops, "the cloud with per-node series");
    promtool_check_metrics(&promtool, &text, "the cloud with per-node series");
    assert_eq!(
        sample(
            &text,
            "hub_node_queue_messages",
            "node=\"node-3\",lane=\"bulk\""
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "hub_node_queue_bytes",
            "node=\"node-3\",lane=\"bulk\""
        )
        .unwrap()
            > 0.0,
        "{text}"
    );
    for node in ["node-1", "node-2"] {
        for lane in ["urgent", "bulk"] {
            let labels = format!("node=\"{node}\",lane=\"{lane}\"");
            assert!(
                sample(&text, "hub_node_queue_messages", &labels).is_some(),
                "{labels}: {text}"
            );
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the caller to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server on 127.0.0.1 with `config`, its data under `dir`.
struct Prometheus {
    _process: Hub,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts the server on a free port (again on another one if that was taken meanwhile) and
    /// waits until it serves.
    fn start(bin: &Path, config: &Path, dir: &Path) -> Prometheus {
        for attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut command = Command::new(bin);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"));
            let hub = Hub::spawn("prometheus", command);
            let line = hub.first_line("of readiness", Duration::from_secs(60), |l| {
                l.contains("Server is ready to receive web requests")
                    || l.contains("address already in use")
            });
            if line.contains("Server is ready") {
                return Prometheus {
                    _process: hub,
                    addr,
                };
            }
        }
        panic!("prometheus found no free port in five attempts");
    }

    /// `GET path` on the server's HTTP API: the `data` of its JSON answer.
    fn api(&self, path: &str) -> Value {
        // HTTP/1.0: the server closes the connection after the answer and sends no chunks.
        let (status, body) = request(
            self.addr,
            &format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr),
        );
        assert_eq!(status, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }
}

/// `{labels}` of a Prometheus API series as the hub writes them, without the labels Prometheus
/// adds (`__name__`, `job`, `instance`). Every family compared here has at most one label.
fn own_labels(metric: &Value) -> String {
    metric
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_prometheus_server_scrapes_both_hubs_and_sees_their_values() {
    let bin = tool("prometheus");
    let fleet = Fleet::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let edge_targets: Vec<String> = fleet
        .edges
        .iter()
        .map(|(_, _, _, ops)| format!("\"{ops}\""))
        .collect();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: hub-cloud\n    static_configs:\n      - targets: [\"{}\"]\n  \
             - job_name: hub-edge\n    static_configs:\n      - targets: [{}]\n",
            fleet.cloud_ops,
            edge_targets.join(", ")
        ),
    )
    .unwrap();
    let prometheus = Prometheus::start(&bin, &config, tmp.path());

    // Prometheus learns of its targets' health only by scraping them, every second here.
    let deadline = Instant::now() + WAIT;
    loop {
        let targets = prometheus.api("/api/v1/targets");
        let active = targets["activeTargets"].as_array().unwrap().clone();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        if active.len() == 3 && up == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three targets not up within {WAIT:?}: {active:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let hubs: BTreeMap<String, (String, SocketAddr)> = fleet
        .endpoints()
        .into_iter()
        .map(|(what, addr)| (addr.to_string(), (what, addr)))
        .collect();
    // (query, series expected: the cloud's two protocols; two per edge)
    for (name, expected) in [
        ("hub_nodes_connected", 2),
        ("hub_link_up", 4),
        ("hub_node_limit", 1),
    ] {
        let deadline = Instant::now() + WAIT;
        let result = loop {
            let data = prometheus.api(&format!("/api/v1/query?query={name}"));
            let result = data["result"].as_array().unwrap().clone();
            if result.len() == expected {
                break result;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {expected} series expected: {result:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // The hubs' state has not changed since the edges connected, before Prometheus started:
        // every value it scraped is the one the hub shows now.
        for series in &result {
            let instance = series["metric"]["instance"].as_str().unwrap();
            let (what, addr) = &hubs[instance];
            let labels = own_labels(&series["metric"]);
            let theirs: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
            let text = exposition(*addr, what);
            let ours = sample(&text, name, &labels)
                .unwrap_or_else(|| panic!("{what} has no {name}{{{labels}}}:\n{text}"));
            assert_eq!(theirs, ours, "{name}{{{labels}}} of {what}");
        }
        if name == "hub_node_limit" {
            assert_eq!(result[0]["value"][1], "100", "the cloud's node-limit");
        }
    }
}

#[test]
fn the_shipped_scrape_configuration_is_valid() {
    let promtool = tool("promtool");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/prometheus.yml");
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    // The ports of the shipped hub configurations.
    assert!(text.contains("127.0.0.1:10051") && text.contains("127.0.0.1:10061"));
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// The `hub_*` and `process_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("hub_") || t.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_queries_parse_and_use_only_metrics_the_hubs_expose() {
    let promtool = tool("promtool");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    let instance = variable("instance");
    assert_eq!(instance["type"], "query");
    let instance_query = instance["definition"].as_str().unwrap().to_owned();

    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut exprs = Vec::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: {expr} ignores the instance variable"
            );
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    assert!(exprs.len() >= 25, "only {} queries", exprs.len());

    // Every query is PromQL once Grafana's variables are filled in: promtool parses each as the
    // expression of a recording rule.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "a variable left in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let rules_file = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&rules_file, &rules).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What live hubs expose: a cloud with per-node series (and a node with a queue), edges over
    // both transports.
    let fleet = Fleet::start(true);
    fleet.traffic();
    let mut exposed = BTreeSet::new();
    let mut families = BTreeSet::new();
    for (what, addr) in fleet.endpoints() {
        let text = exposition(addr, &what);
        exposed.extend(sample_names(&text));
        families.extend(check_layout(&text, &what).into_keys());
    }
    let mut used = metric_names(&instance_query);
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "panel {title:?} queries {name}, which no hub exposes: {expr}"
            );
            used.insert(name);
        }
    }
    // And the other way: every hub_* family is on the dashboard.
    for family in families.iter().filter(|f| f.starts_with("hub_")) {
        assert!(
            used.iter().any(|u| u == family
                || u.strip_prefix(family.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "{family} is on no panel of {}",
            file.display()
        );
    }
}
