//! Configuration: one TOML file plus `SWITCHYARD__SECTION__KEY` environment overrides
//! (DESIGN §6). Every knob has a default that serves a single machine; `config/example.toml`
//! documents them all. [`Config::load`] checks every value and names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::core::ids;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub log: LogConfig,
    pub branding: BrandingConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    #[default]
    Open,
    Closed,
}

impl RegistrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Open => "open",
            RegistrationMode::Closed => "closed",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Our server name, `host[:port]`.
    pub name: String,
    /// Listen address, `ip:port` (port 0 picks a free one).
    pub bind: String,
    pub public_base_url: String,
    pub registration_mode: RegistrationMode,
    /// Bearer token of the admin API; empty turns the admin API off.
    pub admin_token: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// How long a graceful stop waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "localhost:8008".into(),
            bind: "127.0.0.1:8008".into(),
            public_base_url: "http://localhost:8008".into(),
            registration_mode: RegistrationMode::Open,
            admin_token: String::new(),
            workers: 0,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` (embedded default) or `postgres://…`.
    pub url: String,
    /// Size of the reader pool (the log writer holds one more connection of its own).
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/switchyard.db?mode=rwc".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// SQLite WAL with `synchronous=NORMAL`: a commit survives a crash of the process (kill -9);
    /// the last commits before a power cut may be lost.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is acknowledged.
    Full,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub durability: Durability,
    /// Upper bound of events in one group commit (one append is never split).
    pub max_batch_events: usize,
    /// Committed batches kept for subscribers that fall behind before they must re-read.
    pub publish_buffer: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Normal,
            max_batch_events: 2000,
            publish_buffer: 1024,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// The server's ed25519 signing key file, created with mode 0600 on first start.
    pub path: PathBuf,
    /// How long a key server response stays valid (`valid_until_ts`); at least one hour.
    #[serde(with = "humantime_serde")]
    pub response_lifetime: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            path: PathBuf::from("data/signing.key"),
            response_lifetime: Duration::from_secs(86_400),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `switchyard=debug,actix_web=info`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrandingConfig {
    pub app_name: String,
    pub app_description: String,
    /// `#rrggbb`.
    pub primary_color: String,
    pub accent_color: String,
}

impl Default for BrandingConfig {
    fn default() -> Self {
        BrandingConfig {
            app_name: "Switchyard".into(),
            app_description: "A federated community chat server".into(),
            primary_color: "#3b5bdb".into(),
            accent_color: "#f08c00".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid value for {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Config {
    /// Loads `path` (which must exist), then applies `SWITCHYARD__SECTION__KEY` variables.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        Self::from_figment(Figment::new().merge(Toml::file(path)))
    }

    fn from_figment(source: Figment) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(source)
            .merge(Env::prefixed("SWITCHYARD__").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        if !ids::is_server_name(&self.server.name) {
            return Err(invalid(
                "server.name",
                format!("{:?} is not host[:port]", self.server.name),
            ));
        }
        if self.server.bind.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                format!("{:?} is not ip:port", self.server.bind),
            ));
        }
        if !(self.server.public_base_url.starts_with("http://")
            || self.server.public_base_url.starts_with("https://"))
        {
            return Err(invalid(
                "server.public_base_url",
                "must start with http:// or https://",
            ));
        }
        if self.database.backend().is_none() {
            return Err(invalid(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.storage.max_batch_events == 0 {
            return Err(invalid("storage.max_batch_events", "must be at least 1"));
        }
        if self.storage.publish_buffer == 0 {
            return Err(invalid("storage.publish_buffer", "must be at least 1"));
        }
        if self.keys.response_lifetime < Duration::from_secs(3600) {
            return Err(invalid("keys.response_lifetime", "must be at least 1h"));
        }
        if self.keys.path.as_os_str().is_empty() {
            return Err(invalid("keys.path", "must name a file"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            ));
        }
        for (key, color) in [
            ("branding.primary_color", &self.branding.primary_color),
            ("branding.accent_color", &self.branding.accent_color),
        ] {
            let hex = color.strip_prefix('#').unwrap_or("");
            if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(key, format!("{color:?} is not #rrggbb")));
            }
        }
        Ok(())
    }
}

/// The database backends Switchyard runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl DatabaseConfig {
    pub fn backend(&self) -> Option<Backend> {
        if self.url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// The file of a SQLite URL (`sqlite://data/x.db?mode=rwc` → `data/x.db`); `None` for
    /// PostgreSQL and for in-memory databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or("");
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::new().merge(Toml::string(text)))
    }

    #[test]
    fn defaults_are_valid() {
        let config = from_toml("").expect("defaults");
        assert_eq!(config.server.name, "localhost:8008");
        assert_eq!(config.storage.durability, Durability::Normal);
        assert_eq!(
            config.database.sqlite_path(),
            Some(PathBuf::from("data/switchyard.db"))
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("[server]\nname = \"bad name\"", "server.name"),
            ("[server]\nbind = \"nowhere\"", "server.bind"),
            ("[storage]\ndurability = \"fast\"", "storage.durability"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            (
                "[database]\nmax_connections = \"many\"",
                "database.max_connections",
            ),
            (
                "[database]\nconnect_timeout = \"soon\"",
                "database.connect_timeout",
            ),
            (
                "[branding]\nprimary_color = \"red\"",
                "branding.primary_color",
            ),
            ("[server]\nnmae = \"typo\"", "nmae"),
            (
                "[keys]\nresponse_lifetime = \"10m\"",
                "keys.response_lifetime",
            ),
        ];
        for (text, key) in cases {
            let err = from_toml(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn sqlite_paths() {
        let db = |url: &str| DatabaseConfig {
            url: url.into(),
            ..Default::default()
        };
        assert_eq!(
            db("sqlite:///tmp/a.db?mode=rwc").sqlite_path(),
            Some(PathBuf::from("/tmp/a.db"))
        );
        assert_eq!(db("sqlite::memory:").sqlite_path(), None);
        assert_eq!(db("postgres://u@h/d").sqlite_path(), None);
    }
}
