//! Prometheus metrics of both hubs, and their text exposition.
//!
//! The output is Prometheus' text exposition format 0.0.4 (prometheus.io, "Exposition formats",
//! text-based format), the one `promtool check metrics` checks and every Prometheus server
//! scrapes. Names follow Prometheus' naming practices: a `hub_` prefix, base units (seconds,
//! bytes) in the name, `_total` on counters, histograms for latencies; process metrics carry the
//! standard `process_` names every client library exports.
//!
//! Every metric is a fixed atomic (labels are small closed sets: lanes, protocols, causes), so
//! instrumenting costs one relaxed atomic add, and a scrape writes a few hundred lines whatever
//! the number of nodes. What depends on live state (nodes connected, queued messages) is read by
//! the hub's own [`Gather`] at scrape time. Per-node series are an opt-in of the cloud
//! (`metrics.per-node`): 10,000 nodes × series would make every scrape megabytes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::proto::frame::{LANES, Lane};

/// A monotonically increasing count (a Prometheus counter).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a Prometheus gauge).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram of `N` buckets over whole units: nanoseconds for durations
/// ([`Histogram::observe_duration`]; exposed in seconds), or plain counts (exposed as they are).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Upper bounds of the buckets, ascending, in units.
    bounds: [u64; N],
    /// What one unit is in the exposed base unit (1e-9 for nanoseconds exposed as seconds).
    scale: f64,
    /// Observations per bucket (not cumulative; the exposition adds them up).
    buckets: [AtomicU64; N],
    /// Observations above the last bound.
    over: AtomicU64,
    /// The sum of all observations, in units.
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// Empty, with bucket bounds in units worth `scale` of the exposed unit each.
    pub const fn new(bounds: [u64; N], scale: f64) -> Histogram<N> {
        Histogram {
            bounds,
            scale,
            buckets: [const { AtomicU64::new(0) }; N],
            over: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records `v` units.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        match self.buckets.get(i) {
            Some(b) => b.fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration, for histograms in nanoseconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Nanoseconds in a millisecond, for bucket bounds.
const MS: u64 = 1_000_000;

/// Bounds for round trips, from a LAN (1 ms) to a congested satellite link (20 s).
const ROUND_TRIP_BOUNDS: [u64; 14] = [
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
    20_000 * MS,
];

/// Bounds for `fdatasync`, from a battery-backed cache (50 µs) to an SD card under load (2 s).
const FSYNC_BOUNDS: [u64; 13] = [
    MS / 20,
    MS / 10,
    MS / 4,
    MS / 2,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    500 * MS,
    2000 * MS,
];

/// Bounds for group-commit batch sizes, in messages.
const BATCH_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Why a node was turned away by the cloud (label `reason` of `hub_node_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `node-limit` nodes were connected.
    NodeLimit,
    /// Its certificate does not name the node it claims (or names none).
    Identity,
    /// It broke the link protocol (bad HELLO, bad frame, wrong stream).
    ProtocolError,
    /// A frame or message over the size limit.
    Oversized,
    /// No handshake (or no HELLO) within the keepalive interval.
    Timeout,
    /// Too many handshakes in progress (shed for load).
    Load,
    /// The TLS handshake failed (no or an untrusted client certificate, no common version).
    Tls,
    /// The cloud could not serve the node (its queue could not be opened).
    Unavailable,
}

impl Refusal {
    /// Every reason, in exposition order.
    pub const ALL: [Refusal; 8] = [
        Refusal::NodeLimit,
        Refusal::Identity,
        Refusal::ProtocolError,
        Refusal::Oversized,
        Refusal::Timeout,
        Refusal::Load,
        Refusal::Tls,
        Refusal::Unavailable,
    ];

    /// The refusal a link closed with `code` before its node was admitted stands for (`None`
    /// for the codes that are no refusal: shutting down, replaced, write timeout).
    pub fn of_close(code: crate::proto::CloseCode) -> Option<Refusal> {
        use crate::proto::CloseCode as C;
        Some(match code {
            C::NodeLimit => Refusal::NodeLimit,
            C::IdentityMismatch => Refusal::Identity,
            C::ProtocolError | C::UnsupportedVersion => Refusal::ProtocolError,
            C::Oversized => Refusal::Oversized,
            C::Timeout => Refusal::Timeout,
            C::Unavailable => Refusal::Unavailable,
            C::ShuttingDown | C::Replaced | C::WriteTimeout => return None,
        })
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NodeLimit => "node_limit",
            Refusal::Identity => "identity",
            Refusal::ProtocolError => "protocol_error",
            Refusal::Oversized => "oversized",
            Refusal::Timeout => "timeout",
            Refusal::Load => "load",
            Refusal::Tls => "tls",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// Why a node link ended (label `cause` of the edge's `hub_link_reconnects_total`), as the side
/// that saw it end tells: the edge's last one in `hub status`, the cloud's last one per node in
/// `hub nodes`. The cloud sees only `closed` (by the edge, with a close code), `replaced`,
/// `connection_lost`, `read_deadline`, `write_deadline` and `protocol_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The peer closed the link with a close code (shutting down, refused, its own error), or
    /// without one; not [`Cause::Replaced`].
    Closed,
    /// Replaced by a newer connection of the same node (close code 2): the cloud closed it, or,
    /// on the cloud, the newer connection arrived.
    Replaced,
    /// The connection ended or was reset without a close.
    ConnectionLost,
    /// Nothing arrived within the read deadline.
    ReadDeadline,
    /// A write stayed blocked past the write deadline.
    WriteDeadline,
    /// The peer broke the link protocol (a frame that could not be decoded, a message out of
    /// order or over the window), or this side's session closed on it for that.
    ProtocolError,
    /// The cloud refused this node's certificate.
    CertificateRefused,
    /// Back from the WebSocket fallback to QUIC.
    BackToQuic,
    /// Connecting failed (refused, unreachable, TLS failure, no answer).
    ConnectFailed,
}

impl Cause {
    /// Every cause, in exposition order.
    pub const ALL: [Cause; 9] = [
        Cause::Closed,
        Cause::Replaced,
        Cause::ConnectionLost,
        Cause::ReadDeadline,
        Cause::WriteDeadline,
        Cause::ProtocolError,
        Cause::CertificateRefused,
        Cause::BackToQuic,
        Cause::ConnectFailed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Closed => "closed",
            Cause::Replaced => "replaced",
            Cause::ConnectionLost => "connection_lost",
            Cause::ReadDeadline => "read_deadline",
            Cause::WriteDeadline => "write_deadline",
            Cause::ProtocolError => "protocol_error",
            Cause::CertificateRefused => "certificate_refused",
            Cause::BackToQuic => "back_to_quic",
            Cause::ConnectFailed => "connect_failed",
        }
    }
}

/// The two application front-ends (label `api` of `hub_app_connections`).
pub const APIS: [&str; 2] = ["websocket", "mqtt"];
/// Index of the WebSocket API in [`Metrics::app_connections`].
pub const API_WEBSOCKET: usize = 0;
/// Index of MQTT in [`Metrics::app_connections`].
pub const API_MQTT: usize = 1;

/// The node link's transports (label `protocol`), indexed like
/// [`crate::config::Protocol`] as `usize`.
pub const PROTOCOLS: [&str; 2] = ["websocket", "quic"];

/// Every metric the hubs keep themselves; [`METRICS`] is the one set of the process.
#[derive(Debug)]
pub struct Metrics {
    /// `hub_link_receive_messages_total{lane}`: messages taken from node links (each once:
    /// repeats after a reconnect are not counted).
    pub receive_messages: [Counter; LANES],
    /// `hub_link_receive_bytes_total{lane}`: their encoded size.
    pub receive_bytes: [Counter; LANES],
    /// `hub_link_transmit_messages_total{lane}`: messages written to node links (resends
    /// after a reconnect included).
    pub transmit_messages: [Counter; LANES],
    /// `hub_link_transmit_bytes_total{lane}`: their encoded size.
    pub transmit_bytes: [Counter; LANES],
    /// `hub_link_ack_round_trip_seconds`: from writing a message to the link to the peer's
    /// acknowledgement of it (the peer's durable write included); sampled, one message per lane
    /// in flight at a time.
    pub ack_round_trip: Histogram<14>,
    /// `hub_link_rtt_seconds`: the transport's round trip, sampled on every link when it opens
    /// and then every 30 s ([`crate::transport::RTT_SAMPLE_INTERVAL`]) or heartbeat interval,
    /// whichever is longer: QUIC's own smoothed estimate, or over WebSocket the
    /// time from a Ping to its Pong ([`crate::transport::Link::tick`]).
    pub link_rtt: Histogram<14>,
    /// `hub_queue_fsync_duration_seconds`: each `fdatasync` of a queue segment.
    pub fsync: Histogram<13>,
    /// `hub_queue_commit_batch_messages`: messages written by one group commit of a queue.
    pub commit_batch: Histogram<12>,
    /// `hub_messages_no_subscriber_total`: messages that reached no subscriber and no queue.
    pub no_subscriber: Counter,
    /// `hub_app_connections{api}`: open application connections.
    pub app_connections: [Gauge; 2],
    /// Cloud: `hub_nodes_connected{protocol}`.
    pub nodes_connected: [Gauge; 2],
    /// Cloud: `hub_handshakes_in_progress{protocol}`: node handshakes (TLS, upgrade, HELLO)
    /// under way.
    pub handshakes: [Gauge; 2],
    /// Cloud: `hub_node_refusals_total{reason}`, indexed like [`Refusal::ALL`].
    pub node_refusals: [Counter; 8],
    /// Cloud: `hub_credential_reloads_total{result}`: re-reads of `ca`, `cert` and `key` that
    /// changed what is served (`reloaded`) or were refused, the old set kept (`refused`).
    pub credential_reloads: [Counter; 2],
    /// Edge: `hub_link_up{protocol}`: 1 while the link is open over that transport.
    pub link_up: [Gauge; 2],
    /// Edge: `hub_link_reconnects_total{cause}`, indexed like [`Cause::ALL`].
    pub reconnects: [Counter; 9],
}

/// The metrics of this process.
pub static METRICS: Metrics = Metrics {
    receive_messages: [const { Counter::new() }; LANES],
    receive_bytes: [const { Counter::new() }; LANES],
    transmit_messages: [const { Counter::new() }; LANES],
    transmit_bytes: [const { Counter::new() }; LANES],
    ack_round_trip: Histogram::new(ROUND_TRIP_BOUNDS, 1e-9),
    link_rtt: Histogram::new(ROUND_TRIP_BOUNDS, 1e-9),
    fsync: Histogram::new(FSYNC_BOUNDS, 1e-9),
    commit_batch: Histogram::new(BATCH_BOUNDS, 1.0),
    no_subscriber: Counter::new(),
    app_connections: [const { Gauge::new() }; 2],
    nodes_connected: [const { Gauge::new() }; 2],
    handshakes: [const { Gauge::new() }; 2],
    credential_reloads: [const { Counter::new() }; 2],
    node_refusals: [const { Counter::new() }; 8],
    link_up: [const { Gauge::new() }; 2],
    reconnects: [const { Counter::new() }; 9],
};

impl Metrics {
    /// Counts a node turned away.
    pub fn refused(&self, why: Refusal) {
        self.node_refusals[why as usize].inc();
    }

    /// Counts an edge's link ending for `cause`.
    pub fn reconnect(&self, cause: Cause) {
        self.reconnects[cause as usize].inc();
    }
}

/// Which hub is scraped: each writes the families that mean something for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `hub cloud`.
    Cloud,
    /// `hub edge`.
    Edge,
}

/// `hub_tls_certificate_not_after_timestamp_seconds`: when the certificate this hub presents
/// (the cloud's serving one, the edge's node one) expires, from its X.509 notAfter.
pub fn certificate_expiry(e: &mut Exposition, not_after: Option<i64>) {
    if let Some(t) = not_after {
        e.gauge(
            "hub_tls_certificate_not_after_timestamp_seconds",
            "When the certificate this hub presents expires (X.509 notAfter), in seconds since the epoch.",
            t,
        );
    }
}

/// What a hub adds at scrape time from its live state (queues, handshakes, per-node series).
pub type Gather = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// A text exposition being written: families one after the other, each with its HELP and TYPE.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// The text written so far.
    pub fn into_string(self) -> String {
        self.out
    }

    /// Starts family `name` of `kind` (`counter`, `gauge`, `histogram`). Help text is written
    /// as given: it must not hold a backslash or newline.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family: `name{labels} value`. Label values are escaped as the
    /// format asks (backslash, double quote, newline).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// A whole counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// A whole gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A whole family of counters, one per value of label `label`.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.family(name, "counter", help);
        for (v, n) in values {
            self.sample(name, &[(label, v)], n);
        }
    }

    /// A whole family of gauges, one per value of label `label`.
    pub fn gauges(&mut self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) {
        self.family(name, "gauge", help);
        for (v, n) in values {
            self.sample(name, &[(label, v)], n);
        }
    }

    /// `hub_queue_messages{lane}` and `hub_queue_bytes{lane}`: what durable queues hold, the
    /// first family described by `help`.
    pub fn queues(&mut self, messages: [u64; LANES], bytes: [u64; LANES], help: &str) {
        self.family("hub_queue_messages", "gauge", help);
        for l in Lane::ALL {
            self.sample(
                "hub_queue_messages",
                &[("lane", l.name())],
                messages[l.index()],
            );
        }
        self.family(
            "hub_queue_bytes",
            "gauge",
            "Bytes of durable queue files on disk (what max-bytes bounds), by lane.",
        );
        for l in Lane::ALL {
            self.sample("hub_queue_bytes", &[("lane", l.name())], bytes[l.index()]);
        }
    }

    /// A whole histogram family (cumulative `_bucket`s with `le`, `+Inf`, `_sum`, `_count`).
    pub fn histogram<const N: usize>(&mut self, name: &str, help: &str, h: &Histogram<N>) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut seen = 0u64;
        for (bound, n) in h.bounds.iter().zip(&h.buckets) {
            seen += n.load(Ordering::Relaxed);
            let le = format!("{}", *bound as f64 * h.scale);
            self.out.push_str(&bucket);
            self.labels(&[], Some(&le));
            let _ = writeln!(self.out, " {seen}");
        }
        seen += h.over.load(Ordering::Relaxed);
        self.out.push_str(&bucket);
        self.labels(&[], Some("+Inf"));
        let _ = writeln!(self.out, " {seen}");
        let sum = h.sum.load(Ordering::Relaxed) as f64 * h.scale;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {seen}");
    }
}

fn per_lane(counters: &[Counter; LANES]) -> [(&'static str, u64); LANES] {
    Lane::ALL.map(|l| (l.name(), counters[l.index()].get()))
}

fn per_label<const N: usize>(
    names: [&'static str; N],
    gauges: &[Gauge; N],
) -> [(&'static str, i64); N] {
    std::array::from_fn(|i| (names[i], gauges[i].get()))
}

/// The whole exposition of `side`: [`METRICS`], what `gather` adds, and the process metrics.
pub fn expose(side: Side, gather: &dyn Fn(&mut Exposition)) -> String {
    let m = &METRICS;
    let mut e = Exposition::new();
    e.gauges(
        "hub_build_info",
        "The hub's version; always 1.",
        "version",
        &[(env!("CARGO_PKG_VERSION"), 1)],
    );
    match side {
        Side::Cloud => {
            e.gauges(
                "hub_nodes_connected",
                "Edge nodes connected, by link protocol.",
                "protocol",
                &per_label(PROTOCOLS, &m.nodes_connected),
            );
            e.gauges(
                "hub_handshakes_in_progress",
                "Node handshakes (TLS, upgrade, HELLO) under way, by link protocol.",
                "protocol",
                &per_label(PROTOCOLS, &m.handshakes),
            );
            let refusals = Refusal::ALL.map(|r| (r.label(), m.node_refusals[r as usize].get()));
            e.counters(
                "hub_node_refusals_total",
                "Nodes turned away, by reason.",
                "reason",
                &refusals,
            );
            let reloads = &m.credential_reloads;
            e.counters(
                "hub_credential_reloads_total",
                "Re-reads of the cloud's ca, cert and key that changed what is served, or were refused (the old set kept).",
                "result",
                &[("reloaded", reloads[0].get()), ("refused", reloads[1].get())],
            );
        }
        Side::Edge => {
            e.gauges(
                "hub_link_up",
                "1 while the link to the cloud is open over this protocol, else 0.",
                "protocol",
                &per_label(PROTOCOLS, &m.link_up),
            );
            let causes = Cause::ALL.map(|c| (c.label(), m.reconnects[c as usize].get()));
            e.counters(
                "hub_link_reconnects_total",
                "Links to the cloud that ended, so that the edge reconnected, by cause.",
                "cause",
                &causes,
            );
        }
    }
    e.counters(
        "hub_link_receive_messages_total",
        "Messages received over node links, each counted once, by lane.",
        "lane",
        &per_lane(&m.receive_messages),
    );
    e.counters(
        "hub_link_receive_bytes_total",
        "Encoded bytes of the messages received over node links, by lane.",
        "lane",
        &per_lane(&m.receive_bytes),
    );
    e.counters(
        "hub_link_transmit_messages_total",
        "Messages written to node links, resends included, by lane.",
        "lane",
        &per_lane(&m.transmit_messages),
    );
    e.counters(
        "hub_link_transmit_bytes_total",
        "Encoded bytes of the messages written to node links, by lane.",
        "lane",
        &per_lane(&m.transmit_bytes),
    );
    e.histogram(
        "hub_link_ack_round_trip_seconds",
        "From writing a message to a node link to the peer's acknowledgement (its durable write included); sampled.",
        &m.ack_round_trip,
    );
    e.histogram(
        "hub_link_rtt_seconds",
        "Round-trip time of node links (QUIC's smoothed estimate, WebSocket Ping to Pong), sampled when a link opens and then every 30 s or heartbeat interval, whichever is longer.",
        &m.link_rtt,
    );
    e.histogram(
        "hub_queue_fsync_duration_seconds",
        "Duration of each fdatasync of a durable queue.",
        &m.fsync,
    );
    e.histogram(
        "hub_queue_commit_batch_messages",
        "Messages written to a durable queue by one group commit (one write, and with fsync: always one fdatasync).",
        &m.commit_batch,
    );
    e.counter(
        "hub_messages_no_subscriber_total",
        "Messages that matched no subscriber and no queue.",
        m.no_subscriber.get(),
    );
    e.gauges(
        "hub_app_connections",
        "Open application connections, by API.",
        "api",
        &per_label(APIS, &m.app_connections),
    );
    gather(&mut e);
    process(&mut e);
    e.into_string()
}

/// The standard `process_*` metrics, from `/proc/self` (Linux; nothing elsewhere).
fn process(e: &mut Exposition) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold spaces (proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // proc(5) numbers fields from 1 with the pid; `fields[0]` is field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        e.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        e.sample(
            "process_cpu_seconds_total",
            &[],
            (utime + stime) as f64 / ticks,
        );
    }
    if let Some(vsize) = field(23) {
        e.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    if let Some(rss) = field(24) {
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss * rustix::param::page_size() as u64,
        );
    }
    // The start time never changes: /proc/stat (a line per CPU before `btime`) is read once.
    static START: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| Some(boot_time()? + field(22)? as f64 / ticks));
    if let Some(start) = start {
        e.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    if let Some(fds) = open_fds() {
        e.gauge("process_open_fds", "Number of open file descriptors.", fds);
    }
    if let Ok(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
    {
        e.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            limit,
        );
    }
}

/// How many descriptors the process has open. Since Linux 6.2 the size of `/proc/self/fd` is
/// that count, read in constant time; before, the size is 0 and the folder is listed, which costs
/// the kernel a lookup per descriptor: with 10,000 nodes (about 5,000 descriptors: a socket per
/// WebSocket node, a file per node queue being written) that listing made a scrape cost 9 ms of
/// CPU instead of 1 (docs/benchmarks.md, "Metrics scrape at 10,000 nodes").
fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd").map(|m| m.len()) {
        Ok(n) if n > 0 => Some(n),
        // The folder's own descriptor, open while it is listed, is not counted.
        _ => std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count().saturating_sub(1) as u64),
    }
}

/// When the machine booted, in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new([10, 20], 0.5);
        for v in [5, 10, 15, 25] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.histogram("x_seconds", "X.", &h);
        assert_eq!(
            e.into_string(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"5\"} 2\nx_seconds_bucket{le=\"10\"} 3\n\
             x_seconds_bucket{le=\"+Inf\"} 4\nx_seconds_sum 27.5\nx_seconds_count 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.sample("x", &[("node", "a\"b\\c\nd")], 1);
        assert_eq!(e.into_string(), "x{node=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn open_descriptors_are_counted() {
        let listed = || std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        let before = open_fds().unwrap();
        let files: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let with = open_fds().unwrap();
        // Other tests of this binary open and close descriptors meanwhile: a margin of a few.
        assert!(
            with >= before + 60,
            "{before} then {with} with 64 more open"
        );
        assert!(
            with.abs_diff(listed()) <= 4,
            "{with} against {} listed",
            listed()
        );
        drop(files);
    }

    #[test]
    fn both_sides_expose_process_metrics() {
        for side in [Side::Cloud, Side::Edge] {
            let text = expose(side, &|_| {});
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
            assert!(text.contains("\nprocess_open_fds "), "{text}");
        }
    }
}
