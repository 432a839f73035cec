//! Configuration files: the seed's YAML keys, spelled as the seed spells them, with defaults,
//! validation and one-line errors that name the file, the key and the problem.
//!
//! Each file is read into a raw shape (every key optional, unknown keys refused) and then
//! validated into a typed configuration ([`CloudConfig`], [`EdgeConfig`]) with defaults filled in.
//! An empty value (`max_incomingstreams:`) means the default.

mod cloud;
mod edge;

pub use cloud::CloudConfig;
pub use edge::{CredentialRefresh, EdgeConfig, Endpoint, Protocol, Url};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Reads `file` and parses it as YAML into the raw shape `T`.
fn parse_file<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse_str(file, &text)
}

/// Parses YAML `text` (read from `file`) into the raw shape `T`.
fn parse_str<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
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

/// Builds [`ConfigError::Invalid`] errors for one file.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
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

    /// A path that must be given and not be empty.
    fn path(&self, key: &str, value: Option<&PathBuf>) -> Result<PathBuf, ConfigError> {
        match value {
            Some(p) if !p.as_os_str().is_empty() => Ok(p.clone()),
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
        crate::tls::load_identity(cert, key)
            .map(drop)
            .map_err(|e| self.invalid(key_key, e.to_string()))
    }
}

/// A project or node id: non-empty, at most 64 characters of `A-Z a-z 0-9 . _ -`, so it fits
/// a URL path segment and a certificate name unchanged.
pub fn valid_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is required".into());
    }
    if id.len() > 64 {
        return Err(format!("{id:?} is longer than 64 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{id:?} has the character {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}
