//! Configuration files: the seed's YAML keys, spelled as the seed spells them, with defaults,
//! validation and one-line errors that name the file, the key and the problem.
//!
//! Each file is read into a raw shape (every key optional, unknown keys refused) and then
//! validated into a typed configuration ([`CloudConfig`], [`EdgeConfig`]) with defaults filled in.
//! An empty value (`max_incomingstreams:`) means the default.

mod cloud;
mod edge;

pub use cloud::{CloudConfig, ClusterConfig};
pub use edge::{CredentialRefresh, EdgeConfig, Endpoint, Fallback, Protocol, Url};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration file was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The configuration file.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape (syntax, wrong type, unknown key).
    Syntax {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A key holds a value the hub cannot use.
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The key, as a dotted path (`cloudhub.port`).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "{}: cannot read the file: {}", file.display(), source)
            }
            ConfigError::Syntax { file, message } => write!(f, "{}: {}", file.display(), message),
            ConfigError::Invalid { file, key, problem } => {
                write!(f, "{}: {}: {}", file.display(), key, problem)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads `file` and parses it as YAML into the raw shape `T`. The file must be UTF-8 (a
/// byte-order mark is allowed, as editors on Windows save one).
fn parse_file<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let bytes = std::fs::read(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let bytes = e.as_bytes();
            let message = if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
                "the file is UTF-16 text; save it as UTF-8".to_owned()
            } else {
                let at = e.utf8_error().valid_up_to();
                let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                format!(
                    "the file is not UTF-8 text (byte 0x{:02x} on line {line})",
                    bytes[at]
                )
            };
            return Err(ConfigError::Syntax {
                file: file.to_owned(),
                message,
            });
        }
    };
    parse_str(file, &text)
}

/// Parses YAML `text` (read from `file`) into the raw shape `T`. A leading byte-order mark
/// (U+FEFF) is skipped: YAML allows one, but the parser would take it for the start of a second
/// document.
fn parse_str<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError::Syntax {
            file: file.to_owned(),
            message: "the file is empty".into(),
        });
    }
    serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string().replace('\n', " "),
    })
}

/// The folder relative paths in `file` are read from: the file's own folder, made absolute
/// (against the working directory when `file` itself is relative), so that a configuration means
/// the same files whatever directory the hub starts in (systemd starts it in `/`).
fn base_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned())
}

/// Builds [`ConfigError::Invalid`] errors for one file and resolves the paths it names.
struct Checker<'a> {
    file: &'a Path,
    /// See [`base_dir`].
    base: PathBuf,
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path) -> Self {
        Checker {
            file,
            base: base_dir(file),
        }
    }

    /// `path` as the hub uses it: absolute paths as they are, relative ones under the
    /// configuration file's folder ([`base_dir`]), so errors and logs name the full path.
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            let path = path.strip_prefix(".").unwrap_or(path);
            self.base.join(path)
        }
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    /// A duration given in `unit_secs`-second units (1 for seconds, 60 for minutes).
    fn duration(
        &self,
        key: &str,
        value: Option<f64>,
        default: f64,
        unit_secs: f64,
    ) -> Result<Duration, ConfigError> {
        let v = value.unwrap_or(default);
        // At most a year: long enough for any interval, short enough for every timer.
        let max = 365.0 * 24.0 * 3600.0 / unit_secs;
        if !(v.is_finite() && v > 0.0 && v <= max) {
            return Err(self.invalid(
                key,
                format!("{v} is not a positive duration of at most {max}"),
            ));
        }
        Ok(Duration::from_secs_f64(v * unit_secs))
    }

    /// A whole number in `min..=max`.
    fn count(
        &self,
        key: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<u64, ConfigError> {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            return Err(self.invalid(key, format!("{v} is out of range ({min}-{max})")));
        }
        Ok(v as u64)
    }

    /// A TCP or UDP port to listen on; 0 asks the system for a free port.
    fn port(&self, key: &str, value: Option<i64>, default: i64) -> Result<u16, ConfigError> {
        Ok(self.count(key, value, default, 0, 65535)? as u16)
    }

    /// A path that must be given and not be empty, resolved (see [`resolve`](Self::resolve)).
    fn path(&self, key: &str, value: Option<&PathBuf>) -> Result<PathBuf, ConfigError> {
        match value {
            Some(p) if !p.as_os_str().is_empty() => Ok(self.resolve(p)),
            _ => Err(self.invalid(key, "is required")),
        }
    }

    /// A certificate chain file: readable, holding at least one PEM certificate.
    fn cert_file(&self, key: &str, value: Option<&PathBuf>) -> Result<PathBuf, ConfigError> {
        let path = self.path(key, value)?;
        crate::tls::load_certs(&path).map_err(|e| self.invalid(key, e.to_string()))?;
        Ok(path)
    }

    /// A private key file: readable, holding a PEM private key.
    fn key_file(&self, key: &str, value: Option<&PathBuf>) -> Result<PathBuf, ConfigError> {
        let path = self.path(key, value)?;
        crate::tls::load_key(&path).map_err(|e| self.invalid(key, e.to_string()))?;
        Ok(path)
    }

    /// A CA bundle: readable, holding certificates usable as trust anchors.
    fn ca_file(&self, key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
        crate::tls::load_roots(path).map_err(|e| self.invalid(key, e.to_string()))?;
        Ok(path.to_owned())
    }

    /// The certificate at `cert` and the key at `key` belong together.
    fn key_pair(&self, key_key: &str, cert: &Path, key: &Path) -> Result<(), ConfigError> {
        crate::tls::Credentials::load(cert, key)
            .map(drop)
            .map_err(|e| self.invalid(key_key, e.to_string()))
    }
}

/// Longest project or node id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Checks that `id` is a project or node id in its one canonical form (`docs/protocol.md` §4):
/// 1 to [`MAX_ID_LEN`] characters of `a-z 0-9 . _ -`, starting and ending with a letter or a
/// digit, as a Kubernetes node name (RFC 1123 labels) but also allowing `_`.
///
/// There is no other spelling of an id: ids are never lowered, trimmed or otherwise mapped, and
/// every comparison (certificate, URL, HELLO, registry, queue folders, resources) is byte for
/// byte. So an id is the same string as a path segment (never `.` or `..`, never hidden, never an
/// option such as `-x`), on a file system that ignores case, in a URL, a topic, a log line and a
/// certificate. Errors are one sentence naming the offending character.
pub fn valid_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is required".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("{id:?} is longer than {MAX_ID_LEN} characters"));
    }
    if let Some(c) = id.chars().find(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{id:?} has the upper-case letter {c:?}; ids are lower case, so write {:?}",
            id.to_ascii_lowercase()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{id:?} has the character {c:?}; use only lower-case letters, digits, '.', '_' and '-'"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(id.chars().next()) || !alnum(id.chars().last()) {
        return Err(format!(
            "{id:?} must start and end with a letter or a digit"
        ));
    }
    Ok(())
}

/// `apps.max-connections` when not set: room for a gateway's or a cloud machine's local
/// applications, while an idle connection costs a few tens of KiB (so about 50 MiB at most).
pub const DEFAULT_MAX_APP_CONNECTIONS: i64 = 1024;
/// The largest `apps.max-connections`: each connection is a file descriptor, and the process
/// needs a few of its own besides.
pub const MAX_APP_CONNECTIONS: i64 = 1 << 20;

/// The local application endpoint (`apps:` in both files).
#[derive(Debug, Clone)]
pub struct AppsConfig {
    /// `apps.listen`: the WebSocket endpoint's TCP address; `None` when set to `off`.
    pub listen: Option<std::net::SocketAddr>,
    /// `apps.unix`: a unix socket path for the same endpoint (owner-only permissions).
    pub unix: Option<PathBuf>,
    /// `apps.request-timeout`: how long a sync request waits for its answer.
    pub request_timeout: Duration,
    /// `apps.max-message-bytes`: the largest message an application may publish.
    pub max_message_bytes: usize,
    /// `apps.max-connections`: application connections open at once, over TCP and the unix
    /// socket together (upgrades under way included); one more is refused with HTTP 503.
    pub max_connections: usize,
    /// `apps.upgrade-timeout`: how long a new connection may take to complete its WebSocket
    /// upgrade before it is closed.
    pub upgrade_timeout: Duration,
}

/// The congestion controller of QUIC connections (`quic.congestion` on the edge,
/// `cloudhub.quic-congestion` on the cloud): what a sender does when packets are lost.
///
/// The default is BBR, by measurement over the emulated 50 ms link of `scripts/bench-loss.sh`
/// (docs/benchmarks.md): at 1 % and 5 % random loss the loss-based controllers (Cubic, NewReno)
/// carry a few hundred KB/s where BBR carries tens of MB/s; at 0 % loss BBR ran 120 s without a
/// stall and kept its rate beside a bulk TCP flow without starving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (quinn's default): backs off on every loss, like most TCP stacks.
    Cubic,
    /// NewReno (RFC 9002 section 7): halves its window on a loss and grows it by one packet per
    /// round trip.
    NewReno,
    /// quinn's BBR (the default), which paces by measured bandwidth and round trip and hardly
    /// slows down for random loss.
    #[default]
    Bbr,
}

impl Congestion {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        }
    }
}

/// The default receive window, in messages per lane: the most there is, so that the window
/// never caps a long fat path. A 100 Mbit/s path with a 200 ms round trip carries 2.5 MB per
/// round trip, some 9,000 messages of 256 bytes; the sender also keeps at most
/// [`MAX_IN_FLIGHT_BYTES`](crate::exchange::MAX_IN_FLIGHT_BYTES) unacknowledged per lane, and
/// the receiver takes each message as it comes, so a large window costs neither side memory.
pub const DEFAULT_WINDOW: i64 = 65536;

/// A durable queue's settings (`queues:` in the cloud file, `outbox:` in the edge file).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `dir`: where the queue (cloud: one folder per node) and the receive state live.
    pub dir: PathBuf,
    /// `max-messages`: unacknowledged messages the queue holds at most; then publishing fails.
    pub max_messages: u64,
    /// `max-bytes`: disk the queue uses at most; then publishing fails.
    pub max_bytes: u64,
    /// `fsync`: when accepted messages reach the disk.
    pub fsync: crate::store::Fsync,
    /// `window`: the receive window announced on the link, per lane: messages the peer may send
    /// ahead of this side's acknowledgements (1 to 65536, default [`DEFAULT_WINDOW`]).
    pub window: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of apps settings")]
struct RawApps {
    listen: Option<String>,
    unix: Option<PathBuf>,
    #[serde(rename = "request-timeout")]
    request_timeout: Option<f64>,
    #[serde(rename = "max-message-bytes")]
    max_message_bytes: Option<i64>,
    #[serde(rename = "max-connections")]
    max_connections: Option<i64>,
    #[serde(rename = "upgrade-timeout")]
    upgrade_timeout: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of mqtt settings")]
struct RawMqtt {
    listen: Option<String>,
    #[serde(rename = "tls-listen")]
    tls_listen: Option<String>,
    #[serde(rename = "tls-cert")]
    tls_cert: Option<PathBuf>,
    #[serde(rename = "tls-key")]
    tls_key: Option<PathBuf>,
    #[serde(rename = "tls-ca")]
    tls_ca: Option<PathBuf>,
    #[serde(rename = "password-file")]
    password_file: Option<PathBuf>,
    #[serde(rename = "max-connections")]
    max_connections: Option<i64>,
    #[serde(rename = "max-packet-bytes")]
    max_packet_bytes: Option<i64>,
    #[serde(rename = "max-session-messages")]
    max_session_messages: Option<i64>,
    #[serde(rename = "max-session-bytes")]
    max_session_bytes: Option<i64>,
    #[serde(rename = "max-session-expiry")]
    max_session_expiry: Option<i64>,
}

/// The `mqtt` section: the MQTT 3.1.1 / 5.0 listener (docs/mqtt.md).
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// `mqtt.listen`: the plain TCP address; `None` when set to `off`.
    pub listen: Option<std::net::SocketAddr>,
    /// `mqtt.tls-listen`: the MQTT-over-TLS address, if any, with `tls-cert`, `tls-key` and
    /// (requiring client certificates) `tls-ca`.
    pub tls_listen: Option<std::net::SocketAddr>,
    /// `mqtt.tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `mqtt.tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `mqtt.tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `mqtt.password-file`: user names and password hashes in `mosquitto_passwd`'s format;
    /// when set, a CONNECT must carry a user name and password found there.
    pub password_file: Option<PathBuf>,
    /// `mqtt.max-connections`: MQTT connections open at once, plain and TLS together.
    pub max_connections: usize,
    /// `mqtt.max-packet-bytes`: the largest MQTT packet a client may send (MQTT 5.0's Maximum
    /// Packet Size).
    pub max_packet_bytes: usize,
    /// `mqtt.max-session-messages`, `mqtt.max-session-bytes`: what one durable session keeps at
    /// most while its client is away.
    pub max_session_messages: u64,
    /// See `max_session_messages`.
    pub max_session_bytes: u64,
    /// `mqtt.max-session-expiry`: the longest a session outlives its client's connection, in
    /// seconds; MQTT 3.1.1 persistent sessions get this (default: no limit).
    pub max_session_expiry: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of metrics settings")]
struct RawMetrics {
    listen: Option<String>,
    #[serde(rename = "per-node")]
    per_node: Option<bool>,
}

/// The `metrics` section: the operations endpoint (`/metrics`, `/healthz`, `/readyz`; see
/// [`crate::http`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `metrics.listen`: the HTTP address; `None` (the default) when `off`.
    pub listen: Option<std::net::SocketAddr>,
    /// `metrics.per-node` (cloud only): also expose each node's queue and link series, which
    /// makes a scrape grow with the number of nodes (default off).
    pub per_node: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of queue settings")]
struct RawQueue {
    dir: Option<PathBuf>,
    #[serde(rename = "max-messages")]
    max_messages: Option<i64>,
    #[serde(rename = "max-bytes")]
    max_bytes: Option<i64>,
    fsync: Option<String>,
    window: Option<i64>,
}

/// Defaults that differ between the cloud and the edge.
struct SideDefaults {
    listen: &'static str,
    dir: &'static str,
    max_messages: i64,
    max_bytes: i64,
}

impl Checker<'_> {
    fn apps(&self, raw: Option<RawApps>, listen_default: &str) -> Result<AppsConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let listen_text = raw.listen.unwrap_or_else(|| listen_default.to_owned());
        let listen = if listen_text == "off" {
            None
        } else {
            Some(listen_text.parse().map_err(|_| {
                self.invalid(
                    "apps.listen",
                    format!("{listen_text:?} is not IP:PORT (or off)"),
                )
            })?)
        };
        let unix = raw
            .unix
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| self.resolve(&p));
        if listen.is_none() && unix.is_none() {
            return Err(self.invalid(
                "apps.listen",
                "is off and apps.unix is not set; applications could not reach the hub",
            ));
        }
        Ok(AppsConfig {
            listen,
            unix,
            request_timeout: self.duration(
                "apps.request-timeout",
                raw.request_timeout,
                30.0,
                1.0,
            )?,
            max_message_bytes: self.count(
                "apps.max-message-bytes",
                raw.max_message_bytes,
                1 << 20,
                64,
                (crate::proto::MAX_FRAME - 64) as i64,
            )? as usize,
            max_connections: self.count(
                "apps.max-connections",
                raw.max_connections,
                DEFAULT_MAX_APP_CONNECTIONS,
                1,
                MAX_APP_CONNECTIONS,
            )? as usize,
            upgrade_timeout: self.duration(
                "apps.upgrade-timeout",
                raw.upgrade_timeout,
                10.0,
                1.0,
            )?,
        })
    }

    fn address(&self, key: &str, text: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if text == "off" {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| self.invalid(key, format!("{text:?} is not IP:PORT (or off)")))
    }

    fn metrics(&self, raw: Option<RawMetrics>, cloud: bool) -> Result<MetricsConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        if raw.per_node.is_some() && !cloud {
            return Err(self.invalid(
                "metrics.per-node",
                "is a cloud setting; an edge has one link",
            ));
        }
        Ok(MetricsConfig {
            listen: self.address("metrics.listen", raw.listen.as_deref().unwrap_or("off"))?,
            per_node: raw.per_node.unwrap_or(false),
        })
    }

    fn mqtt(
        &self,
        raw: Option<RawMqtt>,
        listen_default: &str,
        apps: &AppsConfig,
    ) -> Result<MqttConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let listen = self.address(
            "mqtt.listen",
            raw.listen.as_deref().unwrap_or(listen_default),
        )?;
        let tls_listen = self.address(
            "mqtt.tls-listen",
            raw.tls_listen.as_deref().unwrap_or("off"),
        )?;
        let file = |p: Option<PathBuf>| {
            p.filter(|p| !p.as_os_str().is_empty())
                .map(|p| self.resolve(&p))
        };
        let (tls_cert, tls_key, tls_ca) = (file(raw.tls_cert), file(raw.tls_key), file(raw.tls_ca));
        if tls_listen.is_some() && (tls_cert.is_none() || tls_key.is_none()) {
            return Err(self.invalid("mqtt.tls-listen", "needs mqtt.tls-cert and mqtt.tls-key"));
        }
        let default_packet = (apps.max_message_bytes + 65536) as i64;
        Ok(MqttConfig {
            listen,
            tls_listen,
            tls_cert,
            tls_key,
            tls_ca,
            password_file: file(raw.password_file),
            max_connections: self.count(
                "mqtt.max-connections",
                raw.max_connections,
                DEFAULT_MAX_APP_CONNECTIONS,
                1,
                MAX_APP_CONNECTIONS,
            )? as usize,
            max_packet_bytes: self.count(
                "mqtt.max-packet-bytes",
                raw.max_packet_bytes,
                default_packet,
                64,
                crate::proto::MAX_FRAME as i64,
            )? as usize,
            max_session_messages: self.count(
                "mqtt.max-session-messages",
                raw.max_session_messages,
                100_000,
                1,
                100_000_000,
            )?,
            max_session_bytes: self.count(
                "mqtt.max-session-bytes",
                raw.max_session_bytes,
                100 << 20,
                1 << 16,
                1 << 40,
            )?,
            max_session_expiry: self.count(
                "mqtt.max-session-expiry",
                raw.max_session_expiry,
                u32::MAX as i64,
                0,
                u32::MAX as i64,
            )? as u32,
        })
    }

    fn congestion(&self, key: &str, raw: Option<&str>) -> Result<Congestion, ConfigError> {
        match raw {
            None => Ok(Congestion::default()),
            Some("cubic") => Ok(Congestion::Cubic),
            Some("newreno") => Ok(Congestion::NewReno),
            Some("bbr") => Ok(Congestion::Bbr),
            Some(s) => Err(self.invalid(key, format!("{s:?} is not cubic, newreno or bbr"))),
        }
    }

    fn queue(
        &self,
        section: &str,
        raw: Option<RawQueue>,
        d: &SideDefaults,
    ) -> Result<QueueConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let key = |k: &str| format!("{section}.{k}");
        let fsync = match raw.fsync.as_deref() {
            None => crate::store::Fsync::Always,
            Some(s) => s.parse().map_err(|_| {
                self.invalid(
                    &key("fsync"),
                    format!("{s:?} is not always, periodic or never"),
                )
            })?,
        };
        Ok(QueueConfig {
            dir: match raw.dir {
                Some(p) if !p.as_os_str().is_empty() => self.resolve(&p),
                Some(_) => return Err(self.invalid(&key("dir"), "is empty")),
                None => PathBuf::from(d.dir),
            },
            max_messages: self.count(
                &key("max-messages"),
                raw.max_messages,
                d.max_messages,
                1,
                i64::MAX,
            )?,
            max_bytes: self.count(
                &key("max-bytes"),
                raw.max_bytes,
                d.max_bytes,
                1 << 20,
                i64::MAX,
            )?,
            fsync,
            window: self.count(&key("window"), raw.window, DEFAULT_WINDOW, 1, 65536)? as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_have_one_canonical_form() {
        for ok in [
            "edge-node",
            "e632aba927ea4ac2b575ec1603d56f10",
            "a",
            "n.1_x-2",
            "0",
        ] {
            assert_eq!(valid_id(ok), Ok(()), "{ok}");
        }
        assert!(valid_id(&"a".repeat(64)).is_ok());
        let refused = [
            ("", "required"),
            (
                "EDGE",
                "upper-case letter 'E'; ids are lower case, so write \"edge\"",
            ),
            ("Gw", "write \"gw\""),
            (".", "start and end"),
            ("..", "start and end"),
            ("...", "start and end"),
            (".hidden", "start and end"),
            ("-rf", "start and end"),
            ("trailing.", "start and end"),
            ("a/b", "character '/'"),
            ("a b", "character ' '"),
            ("caf\u{e9}", "character"),
            ("a\nb", "character '\\n'"),
        ];
        for (id, why) in refused {
            let e = valid_id(id).expect_err(id);
            assert!(e.contains(why), "{id:?}: {e}");
        }
        assert!(
            valid_id(&"a".repeat(65))
                .unwrap_err()
                .contains("longer than 64")
        );
    }
}
