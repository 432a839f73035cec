//! The cloud file (`controller.yaml`, top-level key `cloudhub`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    AppsConfig, Checker, ConfigError, Congestion, MetricsConfig, MqttConfig, QueueConfig, RawApps,
    RawMetrics, RawMqtt, RawQueue, SideDefaults, parse_file, parse_str, valid_id,
};

/// The cloud's defaults for the sections hub adds.
const DEFAULTS: SideDefaults = SideDefaults {
    listen: "127.0.0.1:10050",
    dir: "/var/lib/hub/cloud",
    max_messages: 100_000,
    max_bytes: 100 << 20,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cloudhub: Option<RawCloudHub>,
    apps: Option<RawApps>,
    mqtt: Option<RawMqtt>,
    metrics: Option<RawMetrics>,
    queues: Option<RawQueue>,
    cluster: Option<RawCluster>,
}

/// `nats:` takes one server URL or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
#[serde(expecting = "a NATS server URL or a list of them")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a map of cluster settings")]
struct RawCluster {
    nats: Option<OneOrMany>,
    instance: Option<String>,
    #[serde(rename = "tls-ca")]
    tls_ca: Option<PathBuf>,
    #[serde(rename = "tls-cert")]
    tls_cert: Option<PathBuf>,
    #[serde(rename = "tls-key")]
    tls_key: Option<PathBuf>,
    credentials: Option<PathBuf>,
}

/// Cluster mode (`cluster:`): several cloud instances sharing their state in NATS JetStream
/// (docs/cluster.md).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `cluster.nats`: the NATS servers' URLs (`nats://host:4222`, `tls://host:4222`), tried in
    /// turn; at least one.
    pub servers: Vec<String>,
    /// `cluster.instance`: this instance's name in the cluster (an id as node ids are: see
    /// [`valid_id`](super::valid_id)); the host name when not given.
    pub instance: String,
    /// `cluster.tls-ca`: the CA bundle the NATS servers' certificates must chain to; with it the
    /// connection requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// `cluster.tls-cert` and `cluster.tls-key`: the client certificate shown to the NATS servers.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `cluster.credentials`: a NATS `.creds` file (user JWT and NKey seed).
    pub credentials: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a map of cloudhub settings")]
struct RawCloudHub {
    protocol_websocket: Option<bool>,
    port: Option<i64>,
    protocol_quic: Option<bool>,
    quic_port: Option<i64>,
    max_incomingstreams: Option<i64>,
    address: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(rename = "keepalive-interval")]
    keepalive_interval: Option<f64>,
    #[serde(rename = "write-timeout")]
    write_timeout: Option<f64>,
    #[serde(rename = "node-limit")]
    node_limit: Option<i64>,
    #[serde(rename = "quic-congestion")]
    quic_congestion: Option<String>,
}

/// The cloud hub's validated configuration.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Where the WebSocket (wss) listener binds, when `protocol_websocket` is on.
    pub websocket: Option<SocketAddr>,
    /// Where the QUIC endpoint binds, when `protocol_quic` is on.
    pub quic: Option<SocketAddr>,
    /// `max_incomingstreams`: streams a QUIC peer may have open at once.
    pub max_incoming_streams: u32,
    /// `quic-congestion`: the congestion controller of QUIC connections.
    pub quic_congestion: Congestion,
    /// `ca`: the CA bundle client certificates must chain to.
    pub ca: PathBuf,
    /// `cert`: the server certificate chain.
    pub cert: PathBuf,
    /// `key`: the server private key.
    pub key: PathBuf,
    /// `keepalive-interval`: a node that sent nothing for this long is dropped.
    pub keepalive_interval: Duration,
    /// `write-timeout`: a node whose writes stay blocked this long is dropped.
    pub write_timeout: Duration,
    /// `node-limit`: how many nodes may be connected at once.
    pub node_limit: usize,
    /// `apps`: the local application endpoint.
    pub apps: AppsConfig,
    /// `mqtt`: the MQTT listener.
    pub mqtt: MqttConfig,
    /// `metrics`: the metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// `queues`: the per-node durable queues (limits are per node).
    pub queues: QueueConfig,
    /// `cluster`: cluster mode, when the file has the section.
    pub cluster: Option<ClusterConfig>,
}

impl CloudConfig {
    /// Reads and validates the cloud configuration file at `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = parse_file(file)?;
        Self::validate(file, raw)
    }

    /// Parses and validates cloud configuration `text`; `file` names it in errors.
    pub fn from_yaml(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawFile = parse_str(file, text)?;
        Self::validate(file, raw)
    }

    fn validate(file: &Path, raw: RawFile) -> Result<Self, ConfigError> {
        let c = Checker::new(file);
        let apps = c.apps(raw.apps, DEFAULTS.listen)?;
        let mqtt = c.mqtt(raw.mqtt, "127.0.0.1:1884", &apps)?;
        let metrics = c.metrics(raw.metrics, true)?;
        let queues = c.queue("queues", raw.queues, &DEFAULTS)?;
        let cluster = raw.cluster.map(|r| c.cluster(r)).transpose()?;
        let Some(raw) = raw.cloudhub else {
            return Err(c.invalid("cloudhub", "is required"));
        };
        let websocket_on = raw.protocol_websocket.unwrap_or(true);
        let quic_on = raw.protocol_quic.unwrap_or(false);
        if !websocket_on && !quic_on {
            return Err(c.invalid(
                "cloudhub.protocol_websocket",
                "protocol_websocket and protocol_quic are both false; enable at least one",
            ));
        }
        let address: IpAddr = match raw.address.as_deref() {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(a) => a.parse().map_err(|_| {
                c.invalid("cloudhub.address", format!("{a:?} is not an IP address"))
            })?,
        };
        let port = c.port("cloudhub.port", raw.port, 10000)?;
        let quic_port = c.port("cloudhub.quic_port", raw.quic_port, 10001)?;
        // TCP and UDP ports live apart, but KubeEdge keeps them distinct and so does an operator's
        // firewall rule set; 0 (any free port) never clashes.
        if websocket_on && quic_on && port == quic_port && port != 0 {
            return Err(c.invalid(
                "cloudhub.quic_port",
                format!("{quic_port} is also cloudhub.port; give QUIC its own port"),
            ));
        }
        let max_incoming_streams = c.count(
            "cloudhub.max_incomingstreams",
            raw.max_incomingstreams,
            10000,
            // The protocol's two streams (docs/protocol.md section 1.2): with fewer, the edge's
            // bulk stream would wait for credit forever.
            2,
            1 << 30,
        )? as u32;
        let ca = c.path("cloudhub.ca", raw.ca.as_ref())?;
        let ca = c.ca_file("cloudhub.ca", &ca)?;
        let cert = c.cert_file("cloudhub.cert", raw.cert.as_ref())?;
        let key = c.key_file("cloudhub.key", raw.key.as_ref())?;
        c.key_pair("cloudhub.key", &cert, &key)?;
        Ok(CloudConfig {
            websocket: websocket_on.then(|| SocketAddr::new(address, port)),
            quic: quic_on.then(|| SocketAddr::new(address, quic_port)),
            max_incoming_streams,
            quic_congestion: c
                .congestion("cloudhub.quic-congestion", raw.quic_congestion.as_deref())?,
            ca,
            cert,
            key,
            keepalive_interval: c.duration(
                "cloudhub.keepalive-interval",
                raw.keepalive_interval,
                30.0,
                1.0,
            )?,
            write_timeout: c.duration("cloudhub.write-timeout", raw.write_timeout, 30.0, 1.0)?,
            node_limit: c.count("cloudhub.node-limit", raw.node_limit, 1000, 1, 1_000_000)?
                as usize,
            apps,
            mqtt,
            metrics,
            queues,
            cluster,
        })
    }

    /// One line saying what this configuration will do, for `--check`.
    pub fn summary(&self) -> String {
        let mut listeners = Vec::new();
        if let Some(a) = self.websocket {
            listeners.push(format!("websocket on {a}"));
        }
        if let Some(a) = self.quic {
            listeners.push(format!(
                "quic on {a} ({} streams a node, {})",
                self.max_incoming_streams
                    .min(crate::transport::quic::MAX_GRANTED_STREAMS),
                self.quic_congestion.name()
            ));
        }
        let cluster = match &self.cluster {
            Some(c) => format!(
                "; cluster instance {} on NATS {}",
                c.instance,
                c.servers.join(", ")
            ),
            None => String::new(),
        };
        format!(
            "cloudhub: {}; node-limit {}, keepalive-interval {:?}, write-timeout {:?}{cluster}",
            listeners.join(", "),
            self.node_limit,
            self.keepalive_interval,
            self.write_timeout
        )
    }
}

impl Checker<'_> {
    /// The `cluster:` section: at least one `nats://` or `tls://` URL, an instance name that is
    /// an id, TLS files that are readable (cert and key together), a readable credentials file.
    fn cluster(&self, raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
        let servers = match raw.nats {
            None => return Err(self.invalid("cluster.nats", "is required")),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        if servers.is_empty() {
            return Err(self.invalid("cluster.nats", "lists no server"));
        }
        for s in &servers {
            let rest = s
                .strip_prefix("nats://")
                .or_else(|| s.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(self.invalid(
                    "cluster.nats",
                    format!("{s:?} is not a NATS server URL (nats://HOST:PORT or tls://HOST:PORT)"),
                ));
            }
        }
        let instance = match raw.instance {
            Some(i) => i,
            None => host_name().ok_or_else(|| {
                self.invalid(
                    "cluster.instance",
                    "is not given and the host name cannot be read; name this instance",
                )
            })?,
        };
        valid_id(&instance).map_err(|p| self.invalid("cluster.instance", p))?;
        let tls_ca = match raw.tls_ca.as_ref() {
            Some(p) => Some(self.ca_file("cluster.tls-ca", &self.resolve(p))?),
            None => None,
        };
        let tls_client = match (raw.tls_cert.as_ref(), raw.tls_key.as_ref()) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.invalid("cluster.tls-key", "is required with cluster.tls-cert"));
            }
            (None, Some(_)) => {
                return Err(self.invalid("cluster.tls-cert", "is required with cluster.tls-key"));
            }
            (cert, key) => {
                let cert = self.cert_file("cluster.tls-cert", cert)?;
                let key = self.key_file("cluster.tls-key", key)?;
                self.key_pair("cluster.tls-key", &cert, &key)?;
                Some((cert, key))
            }
        };
        let credentials = match raw.credentials.as_ref() {
            Some(p) => {
                let p = self.path("cluster.credentials", Some(p))?;
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    self.invalid(
                        "cluster.credentials",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                if !text.contains("-----BEGIN NATS USER JWT-----") {
                    return Err(self.invalid(
                        "cluster.credentials",
                        format!(
                            "{} is not a NATS credentials file (no user JWT)",
                            p.display()
                        ),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        Ok(ClusterConfig {
            servers,
            instance,
            tls_ca,
            tls_client,
            credentials,
        })
    }
}

/// This machine's host name (Linux: `/proc/sys/kernel/hostname`), when readable and not empty.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}
