//! Configuration: defaults in code, then an optional TOML file, then
//! `ATIENDE_*` environment variables (12-factor).
//!
//! Environment variables name a path in the TOML document with `__` between
//! levels: `ATIENDE_GRPC__LISTEN_ADDR=0.0.0.0:50051` sets `[grpc] listen_addr`.
//! Only names with a `__` are read, so other `ATIENDE_*` variables (the
//! service links Kubernetes injects, `ATIENDE_TOKEN` in a developer's shell)
//! are left alone. Values from the environment are strings; numeric and
//! boolean settings accept strings too ([`lenient`]), so a string setting
//! whose value looks like a number (a password of digits) stays a string.
//! Secrets are [`secrecy::SecretString`]s, which never print.
//!
//! Service configurations ignore sections they do not have, so one
//! environment can configure several services; within a section an unknown
//! key is an error, so a typo does not pass silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The prefix of every environment variable Atiende reads.
pub const ENV_PREFIX: &str = "ATIENDE_";
/// Names the TOML file to read, when no path is given on the command line.
pub const CONFIG_FILE_ENV: &str = "ATIENDE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from defaults, the TOML file (if any) and the environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let env_file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
    let file = file.map(Path::to_path_buf).or(env_file);
    let mut doc = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?
        }
        None => toml::Table::new(),
    };
    apply_env(&mut doc, std::env::vars());
    T::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Overlays `ATIENDE_A__B=v` variables onto the document as `a.b = v`.
pub fn apply_env(doc: &mut toml::Table, vars: impl IntoIterator<Item = (String, String)>) {
    for (name, value) in vars {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        set_path(doc, &keys, toml::Value::String(value));
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// Numbers and booleans that may also be written as strings (as every
/// environment variable is).
pub mod lenient {
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Typed(T),
        Text(String),
    }

    /// A number (or boolean) as itself or as a string.
    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + FromStr,
    {
        match Raw::<T>::deserialize(d)? {
            Raw::Typed(value) => Ok(value),
            Raw::Text(text) => text
                .trim()
                .parse()
                .map_err(|_| D::Error::custom("expected a number or a boolean")),
        }
    }
}

/// Where a service keeps its files, and which database it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The data directory (SQLite files, dev mail, ...).
    pub data_dir: PathBuf,
    /// `sqlite://path` or `postgres://...`; unset means a SQLite file named
    /// after the service in `data_dir`.
    pub database_url: Option<SecretString>,
    /// Largest number of pooled connections.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".atiende"),
            database_url: None,
            max_connections: 16,
        }
    }
}

/// The gRPC listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen_addr: SocketAddr,
    /// Requests running longer are cancelled (tonic answers CANCELLED);
    /// clients should also send their own `grpc-timeout`.
    #[serde(with = "millis")]
    pub request_timeout_ms: Duration,
    /// Requests in flight across all connections; more wait for a slot.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub concurrency_limit: usize,
    /// Largest request or response message, in bytes.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub max_message_bytes: usize,
    /// On SIGTERM, how long health reports NOT_SERVING before the listener
    /// closes (so load balancers stop routing); in-flight requests then finish.
    #[serde(with = "millis")]
    pub drain_delay_ms: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            request_timeout_ms: Duration::from_secs(30),
            concurrency_limit: 1024,
            max_message_bytes: 8 * 1024 * 1024,
            drain_delay_ms: Duration::ZERO,
        }
    }
}

/// The HTTP listener for browser-facing pages and OAuth endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen_addr: SocketAddr,
    /// The URL at which users reach this listener (issuer, links).
    pub public_url: String,
    /// Requests running longer are answered 408.
    #[serde(with = "millis")]
    pub request_timeout_ms: Duration,
    /// Requests in flight; more wait for a slot.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub concurrency_limit: usize,
    /// Largest request body, in bytes; larger ones are answered 413.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".to_owned(),
            request_timeout_ms: Duration::from_secs(30),
            concurrency_limit: 256,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Where verifiers find the keys that sign access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The identity service's gRPC endpoint, e.g. `http://identity:50051`.
    pub jwks_grpc_endpoint: Option<String>,
    /// A JWKS URL, e.g. any OpenID provider's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// A JWKS JSON file.
    pub jwks_file: Option<PathBuf>,
    /// Keys are re-fetched at least this often.
    #[serde(with = "millis")]
    pub jwks_max_age_ms: Duration,
    /// An unknown `kid` triggers a re-fetch at most this often.
    #[serde(with = "millis")]
    pub jwks_min_refresh_interval_ms: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".to_owned(),
            audience: "atiende".to_owned(),
            jwks_grpc_endpoint: None,
            jwks_url: None,
            jwks_file: None,
            jwks_max_age_ms: Duration::from_secs(300),
            jwks_min_refresh_interval_ms: Duration::from_secs(10),
        }
    }
}

/// Durations in configuration are whole milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::lenient::deserialize::<D, u64>(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Sample {
        grpc: GrpcConfig,
        storage: StorageConfig,
    }

    #[test]
    fn environment_overrides_nested_keys_and_types() {
        let mut doc: toml::Table = "[grpc]\nconcurrency_limit = 5\n".parse().unwrap();
        apply_env(
            &mut doc,
            [
                ("ATIENDE_GRPC__LISTEN_ADDR".into(), "0.0.0.0:9000".into()),
                ("ATIENDE_STORAGE__MAX_CONNECTIONS".into(), "3".into()),
                (
                    "ATIENDE_STORAGE__DATABASE_URL".into(),
                    "postgres://x".into(),
                ),
                ("OTHER".into(), "ignored".into()),
                ("ATIENDE_TOKEN".into(), "not configuration".into()),
                ("ATIENDE_IDENTITY_SERVICE_HOST".into(), "10.0.0.1".into()),
            ],
        );
        assert!(!doc.contains_key("token"));
        let sample = Sample::deserialize(toml::Value::Table(doc)).unwrap();
        assert_eq!(sample.grpc.listen_addr.port(), 9000);
        assert_eq!(sample.grpc.concurrency_limit, 5);
        assert_eq!(sample.storage.max_connections, 3);
        let url = sample.storage.database_url.unwrap();
        assert!(
            !format!("{url:?}").contains("postgres"),
            "secrets never print"
        );
    }
}
