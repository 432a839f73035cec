//! The edge file (`edge.yaml`: `websocket`, `quic`, `controller`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{
    AppsConfig, Checker, ConfigError, Congestion, MetricsConfig, MqttConfig, QueueConfig, RawApps,
    RawMetrics, RawMqtt, RawQueue, SideDefaults, parse_file, parse_str, valid_id,
};

/// The edge's defaults for the sections hub adds.
const DEFAULTS: SideDefaults = SideDefaults {
    listen: "127.0.0.1:10060",
    dir: "/var/lib/hub/edge",
    max_messages: 1_000_000,
    max_bytes: 1 << 30,
};

/// Where KubeEdge keeps its root CA; the last place the edge looks for one.
pub const DEFAULT_CA: &str = "/etc/kubeedge/ca/rootCA.crt";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    websocket: Option<RawLink>,
    quic: Option<RawLink>,
    controller: Option<RawController>,
    apps: Option<RawApps>,
    mqtt: Option<RawMqtt>,
    metrics: Option<RawMetrics>,
    outbox: Option<RawQueue>,
}

/// The `websocket:` and `quic:` sections share their keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of link settings")]
struct RawLink {
    #[serde(default, deserialize_with = "scalar_string")]
    url: Option<String>,
    cafile: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    #[serde(rename = "handshake-timeout")]
    handshake_timeout: Option<f64>,
    #[serde(rename = "write-deadline")]
    write_deadline: Option<f64>,
    #[serde(rename = "read-deadline")]
    read_deadline: Option<f64>,
    /// QUIC only.
    #[serde(default, deserialize_with = "scalar_string")]
    congestion: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of controller settings")]
struct RawController {
    #[serde(default, deserialize_with = "scalar_string")]
    protocol: Option<String>,
    placement: Option<bool>,
    heartbeat: Option<f64>,
    #[serde(rename = "refresh-ak-sk-interval")]
    refresh_ak_sk_interval: Option<f64>,
    #[serde(rename = "auth-info-files-path")]
    auth_info_files_path: Option<PathBuf>,
    #[serde(rename = "placement-url", default, deserialize_with = "scalar_string")]
    placement_url: Option<String>,
    #[serde(rename = "project-id", default, deserialize_with = "scalar_string")]
    project_id: Option<String>,
    #[serde(rename = "node-id", default, deserialize_with = "scalar_string")]
    node_id: Option<String>,
    #[serde(rename = "backoff-initial")]
    backoff_initial: Option<f64>,
    #[serde(rename = "backoff-max")]
    backoff_max: Option<f64>,
    #[serde(rename = "fallback-after")]
    fallback_after: Option<i64>,
    #[serde(rename = "quic-probe-interval")]
    quic_probe_interval: Option<f64>,
    #[serde(rename = "fast-attempts-for")]
    fast_attempts_for: Option<f64>,
}

/// Reads a YAML scalar as text, so that `node-id: 42` means the id "42".
fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Scalar;
    impl serde::de::Visitor<'_> for Scalar {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a single value, not a list or a map")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Scalar)
}

/// The transport the edge uses to reach the cloud (`controller.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// WebSocket over TLS (`wss://`).
    Websocket,
    /// QUIC.
    Quic,
}

impl Protocol {
    /// The name used in configuration files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Websocket => "websocket",
            Protocol::Quic => "quic",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host (DNS name or IP address, without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// DNS name or IP address; also the name the server certificate must carry.
    pub host: String,
    /// TCP port (WebSocket) or UDP port (QUIC).
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `host:port`, `[v6]:port`, or a bare host when `default_port` is given.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Endpoint, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?} has '[' without ']'"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{s:?} has text after ']' that is not a port")),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(format!(
                        "{s:?}: write an IPv6 address in brackets, [addr]:port"
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match (port, default_port) {
            (Some(p), _) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("{s:?} has no valid port (1-65535)")),
            },
            (None, Some(d)) => d,
            (None, None) => return Err(format!("{s:?} has no port; write host:port")),
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// A URL of the form `scheme://host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host and port (the scheme's default port when the URL names none).
    pub endpoint: Endpoint,
    /// The path, starting with `/` (just `/` when the URL has none).
    pub path: String,
}

impl Url {
    /// Parses `url`, which must use `scheme` (`wss` or `https`; default port 443).
    pub fn parse(url: &str, scheme: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| format!("{url:?} must start with {scheme}://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(format!("{url:?} must not have a query or fragment"));
        }
        let endpoint = Endpoint::parse(authority, Some(443))?;
        Ok(Url {
            endpoint,
            path: path.to_owned(),
        })
    }
}

/// Where and how often the node's certificate and key are re-read (`controller.auth-info-files-path`,
/// `controller.refresh-ak-sk-interval`).
#[derive(Debug, Clone)]
pub struct CredentialRefresh {
    /// The directory the rotated certificate and key are read from.
    pub path: PathBuf,
    /// How often they are re-read.
    pub interval: Duration,
}

/// Falling back from QUIC to WebSocket where UDP gets no answer: set when `controller.protocol`
/// is `quic` and the file also has a `websocket` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The cloud's WebSocket endpoint, from `websocket.url` (its path is the same
    /// `/{project-id}/{node-id}/events` as always).
    pub endpoint: Endpoint,
    /// `controller.fallback-after`: QUIC attempts in a row that got no answer before the edge
    /// tries WebSocket (default 3).
    pub after: u32,
    /// `controller.quic-probe-interval`: how often an edge on WebSocket tries a QUIC handshake
    /// to go back to QUIC (seconds; default 300).
    pub probe_interval: Duration,
}

/// The edge hub's validated configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `controller.protocol`.
    pub protocol: Protocol,
    /// The cloud endpoint from the chosen section's `url`.
    pub endpoint: Endpoint,
    /// The CA bundle the cloud's certificate must chain to.
    pub ca: PathBuf,
    /// The node's certificate chain.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// `handshake-timeout`: the longest a connect (TCP/QUIC, TLS, upgrade, hello) may take.
    pub handshake_timeout: Duration,
    /// `write-deadline`: the longest a write may stay blocked before the link is dropped.
    pub write_deadline: Duration,
    /// `read-deadline`: the link is dead when nothing arrived from the cloud for this long.
    pub read_deadline: Duration,
    /// `quic.congestion`: the QUIC congestion controller.
    pub congestion: Congestion,
    /// `controller.heartbeat`: how often the edge sends a heartbeat.
    pub heartbeat: Duration,
    /// `controller.placement-url`, when `controller.placement` is on.
    pub placement: Option<Url>,
    /// Certificate rotation, when `controller.auth-info-files-path` is set.
    pub refresh: Option<CredentialRefresh>,
    /// `controller.project-id`.
    pub project_id: String,
    /// `controller.node-id`.
    pub node_id: String,
    /// `controller.backoff-initial`: the first reconnect wait.
    pub backoff_initial: Duration,
    /// `controller.backoff-max`: the longest reconnect wait; a link up this long counts as stable
    /// and resets the backoff.
    pub backoff_max: Duration,
    /// `controller.fast-attempts-for`: how long, from the first connection attempt that gets no
    /// answer, fresh attempts go every two round trips of the last link before their gap grows
    /// towards a second (docs/protocol.md section 6).
    pub fast_attempts_for: Duration,
    /// QUIC's fallback to WebSocket, when `controller.protocol` is `quic` and a `websocket`
    /// section gives the cloud's WebSocket URL.
    pub fallback: Option<Fallback>,
    /// `apps`: the local application endpoint.
    pub apps: AppsConfig,
    /// `mqtt`: the MQTT listener.
    pub mqtt: MqttConfig,
    /// `metrics`: the metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// `outbox`: the durable outbox of messages for the cloud.
    pub outbox: QueueConfig,
}

impl EdgeConfig {
    /// Reads and validates the edge configuration file at `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = parse_file(file)?;
        Self::validate(file, raw, Path::new(DEFAULT_CA))
    }

    /// Parses and validates edge configuration `text`; `file` names it in errors and `default_ca`
    /// stands in for [`DEFAULT_CA`], the last place a CA is looked for.
    pub fn from_yaml(file: &Path, text: &str, default_ca: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = parse_str(file, text)?;
        Self::validate(file, raw, default_ca)
    }

    /// The WebSocket request path: `/{project-id}/{node-id}/events`.
    pub fn websocket_path(&self) -> String {
        format!("/{}/{}/events", self.project_id, self.node_id)
    }

    fn validate(file: &Path, raw: RawFile, default_ca: &Path) -> Result<Self, ConfigError> {
        let c = Checker::new(file);
        let Some(ctl) = raw.controller else {
            return Err(c.invalid("controller", "is required"));
        };
        let project_id = ctl.project_id.unwrap_or_default();
        valid_id(&project_id).map_err(|p| c.invalid("controller.project-id", p))?;
        let node_id = ctl.node_id.unwrap_or_default();
        valid_id(&node_id).map_err(|p| c.invalid("controller.node-id", p))?;

        let protocol = match ctl.protocol.as_deref() {
            None | Some("websocket") => Protocol::Websocket,
            Some("quic") => Protocol::Quic,
            Some(other) => {
                return Err(c.invalid(
                    "controller.protocol",
                    format!("{other:?} is not a protocol; use websocket or quic"),
                ));
            }
        };
        let section = protocol.name();
        let link = match protocol {
            Protocol::Websocket => raw.websocket.as_ref(),
            Protocol::Quic => raw.quic.as_ref(),
        }
        .ok_or_else(|| {
            c.invalid(
                section,
                format!("is required: controller.protocol is {section}"),
            )
        })?;
        let key = |k: &str| format!("{section}.{k}");

        let url = link
            .url
            .as_deref()
            .ok_or_else(|| c.invalid(&key("url"), "is required"))?;
        let endpoint = match protocol {
            Protocol::Websocket => {
                let url = Url::parse(url, "wss").map_err(|p| c.invalid(&key("url"), p))?;
                let want = format!("/{project_id}/{node_id}/events");
                if url.path != want {
                    return Err(c.invalid(
                        &key("url"),
                        format!(
                            "path is {:?} but controller.project-id and controller.node-id make it {want:?}",
                            url.path
                        ),
                    ));
                }
                url.endpoint
            }
            Protocol::Quic => Endpoint::parse(url, None).map_err(|p| c.invalid(&key("url"), p))?,
        };

        let ca = resolve_ca(&c, protocol, &raw.websocket, &raw.quic, default_ca)?;
        let cert = c.cert_file(&key("certfile"), link.certfile.as_ref())?;
        let tls_key = c.key_file(&key("keyfile"), link.keyfile.as_ref())?;
        c.key_pair(&key("keyfile"), &cert, &tls_key)?;

        let placement = if ctl.placement.unwrap_or(false) {
            let url = ctl.placement_url.as_deref().ok_or_else(|| {
                c.invalid(
                    "controller.placement-url",
                    "is required when controller.placement is true",
                )
            })?;
            Some(Url::parse(url, "https").map_err(|p| c.invalid("controller.placement-url", p))?)
        } else {
            None
        };
        let interval = c.duration(
            "controller.refresh-ak-sk-interval",
            ctl.refresh_ak_sk_interval,
            10.0,
            60.0,
        )?;
        let refresh = match ctl.auth_info_files_path {
            Some(p) if !p.as_os_str().is_empty() => Some(CredentialRefresh {
                path: c.resolve(&p),
                interval,
            }),
            _ => None,
        };

        let backoff_initial =
            c.duration("controller.backoff-initial", ctl.backoff_initial, 1.0, 1.0)?;
        let backoff_max = c.duration("controller.backoff-max", ctl.backoff_max, 30.0, 1.0)?;
        if backoff_max < backoff_initial {
            return Err(c.invalid(
                "controller.backoff-max",
                format!("{backoff_max:?} is shorter than controller.backoff-initial ({backoff_initial:?})"),
            ));
        }

        let fast_attempts_for = c.duration(
            "controller.fast-attempts-for",
            ctl.fast_attempts_for,
            crate::transport::dial::FAST_FOR.as_secs_f64(),
            1.0,
        )?;
        let fallback_after =
            c.count("controller.fallback-after", ctl.fallback_after, 3, 1, 1000)? as u32;
        let probe_interval = c.duration(
            "controller.quic-probe-interval",
            ctl.quic_probe_interval,
            300.0,
            1.0,
        )?;
        // The fallback needs somewhere to go: a websocket section without a url (as KubeEdge's
        // edgehub files often have) leaves it off, as before the fallback existed.
        let fallback = match (
            protocol,
            raw.websocket.as_ref().and_then(|w| w.url.as_deref()),
        ) {
            (Protocol::Quic, Some(url)) => {
                let url = Url::parse(url, "wss").map_err(|p| c.invalid("websocket.url", p))?;
                let want = format!("/{project_id}/{node_id}/events");
                if url.path != want {
                    return Err(c.invalid(
                        "websocket.url",
                        format!(
                            "path is {:?} but controller.project-id and controller.node-id make it {want:?}",
                            url.path
                        ),
                    ));
                }
                Some(Fallback {
                    endpoint: url.endpoint,
                    after: fallback_after,
                    probe_interval,
                })
            }
            _ => None,
        };

        if raw
            .websocket
            .as_ref()
            .is_some_and(|w| w.congestion.is_some())
        {
            return Err(c.invalid(
                "websocket.congestion",
                "applies to QUIC only (TCP's is the kernel's); set quic.congestion",
            ));
        }
        let congestion = c.congestion(
            "quic.congestion",
            raw.quic.as_ref().and_then(|q| q.congestion.as_deref()),
        )?;

        let apps = c.apps(raw.apps, DEFAULTS.listen)?;
        Ok(EdgeConfig {
            protocol,
            endpoint,
            ca,
            cert,
            key: tls_key,
            handshake_timeout: c.duration(
                &key("handshake-timeout"),
                link.handshake_timeout,
                30.0,
                1.0,
            )?,
            write_deadline: c.duration(&key("write-deadline"), link.write_deadline, 15.0, 1.0)?,
            read_deadline: c.duration(&key("read-deadline"), link.read_deadline, 15.0, 1.0)?,
            congestion,
            heartbeat: c.duration("controller.heartbeat", ctl.heartbeat, 15.0, 1.0)?,
            placement,
            refresh,
            project_id,
            node_id,
            backoff_initial,
            backoff_max,
            fast_attempts_for,
            fallback,
            mqtt: c.mqtt(raw.mqtt, "127.0.0.1:1883", &apps)?,
            metrics: c.metrics(raw.metrics, false)?,
            apps,
            outbox: c.queue("outbox", raw.outbox, &DEFAULTS)?,
        })
    }

    /// One line saying what this configuration will do, for `--check`.
    pub fn summary(&self) -> String {
        let target = match self.protocol {
            Protocol::Websocket => format!("wss://{}{}", self.endpoint, self.websocket_path()),
            Protocol::Quic => match &self.fallback {
                None => format!("quic {} ({})", self.endpoint, self.congestion.name()),
                Some(f) => format!(
                    "quic {} ({}), falling back to wss://{}{} after {} unanswered attempts, QUIC probed every {:?}",
                    self.endpoint,
                    self.congestion.name(),
                    f.endpoint,
                    self.websocket_path(),
                    f.after,
                    f.probe_interval
                ),
            },
        };
        let placement = match &self.placement {
            Some(u) => format!(", placement via https://{}{}", u.endpoint, u.path),
            None => String::new(),
        };
        format!(
            "edgehub: node {} (project {}) to {target}{placement}; ca {}, heartbeat {:?}, read-deadline {:?}",
            self.node_id,
            self.project_id,
            self.ca.display(),
            self.heartbeat,
            self.read_deadline
        )
    }
}

/// The CA the edge verifies the cloud with: the chosen section's `cafile`, for WebSocket then
/// `quic.cafile`, then `default_ca`. A `cafile` that is given must be usable; only the default
/// may be absent, and then there is no CA, which is an error: the edge never skips verification.
fn resolve_ca(
    c: &Checker<'_>,
    protocol: Protocol,
    websocket: &Option<RawLink>,
    quic: &Option<RawLink>,
    default_ca: &Path,
) -> Result<PathBuf, ConfigError> {
    let ws = websocket.as_ref().and_then(|l| l.cafile.as_ref());
    let q = quic.as_ref().and_then(|l| l.cafile.as_ref());
    let given = match protocol {
        Protocol::Websocket => ws
            .map(|p| ("websocket.cafile", p))
            .or(q.map(|p| ("quic.cafile", p))),
        Protocol::Quic => q.map(|p| ("quic.cafile", p)),
    };
    if let Some((key, path)) = given {
        let path = c.path(key, Some(path))?;
        return c.ca_file(key, &path);
    }
    let key = format!("{}.cafile", protocol.name());
    if !default_ca.exists() {
        return Err(c.invalid(
            &key,
            format!(
                "no CA to verify the cloud with: set {key}{} or provide {}",
                if protocol == Protocol::Websocket {
                    " (or quic.cafile)"
                } else {
                    ""
                },
                default_ca.display()
            ),
        ));
    }
    c.ca_file(&key, default_ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:10001", None),
            Ok(ep("127.0.0.1", 10001))
        );
        assert_eq!(
            Endpoint::parse("cloud.example:1", None),
            Ok(ep("cloud.example", 1))
        );
        assert_eq!(Endpoint::parse("[::1]:10001", None), Ok(ep("::1", 10001)));
        assert_eq!(
            Endpoint::parse("[fe80::1]", Some(443)),
            Ok(ep("fe80::1", 443))
        );
        assert_eq!(Endpoint::parse("cloud", Some(443)), Ok(ep("cloud", 443)));
        for bad in [
            "cloud",
            ":10001",
            "::1:10001",
            "[::1",
            "[::1]x",
            "h:0",
            "h:65536",
            "h:x",
        ] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
        assert_eq!(ep("::1", 5).to_string(), "[::1]:5");
        assert_eq!(ep("a", 5).to_string(), "a:5");
    }

    #[test]
    fn urls() {
        let u = Url::parse("wss://h:10000/p/n/events", "wss").unwrap();
        assert_eq!(
            (u.endpoint, u.path.as_str()),
            (ep("h", 10000), "/p/n/events")
        );
        let u = Url::parse("https://h", "https").unwrap();
        assert_eq!((u.endpoint, u.path.as_str()), (ep("h", 443), "/"));
        for bad in [
            "ws://h/x",
            "wss:/h/x",
            "wss://:1/x",
            "wss://h/x?y=1",
            "wss://h/x#f",
            "h/x",
        ] {
            assert!(Url::parse(bad, "wss").is_err(), "{bad}");
        }
    }
}
