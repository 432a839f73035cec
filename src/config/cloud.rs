//! The cloud file (`controller.yaml`, top-level key `cloudhub`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    AppsConfig, Checker, ConfigError, Congestion, MetricsConfig, MqttConfig, QueueConfig, RawApps,
    RawMetrics, RawMqtt, RawQueue, SideDefaults, parse_file, parse_str,
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
        format!(
            "cloudhub: {}; node-limit {}, keepalive-interval {:?}, write-timeout {:?}",
            listeners.join(", "),
            self.node_limit,
            self.keepalive_interval,
            self.write_timeout
        )
    }
}
