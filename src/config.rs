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
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub federation: FederationConfig,
    pub log: LogConfig,
    pub branding: BrandingConfig,
    pub gateway: GatewayConfig,
    pub identity: IdentityConfig,
    pub transparency: TransparencyConfig,
    pub cluster: ClusterConfig,
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
    /// argon2id memory per password hash, KiB (OWASP's floor: 19,456 with 2 passes). Lower
    /// values are for benchmarks and tests; the server warns at start.
    pub password_hash_memory_kib: u32,
    /// argon2id passes per password hash.
    pub password_hash_passes: u32,
    /// HTTPS: the PEM certificate chain (leaf first) and its PEM private key; both or
    /// neither (plain HTTP, e.g. behind a TLS-terminating proxy).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
            password_hash_memory_kib: crate::identity::accounts::OWASP_MEMORY_KIB,
            password_hash_passes: crate::identity::accounts::OWASP_PASSES,
            tls_cert: None,
            tls_key: None,
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
    /// Opening the database, and the longest wait for a pooled connection.
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
    /// How long the server's root ID-Cert (polyproto) is valid; reissued when a third of it
    /// is left, and at every key rotation. Between 1h and 10 years.
    #[serde(with = "humantime_serde")]
    pub idcert_lifetime: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            path: PathBuf::from("data/signing.key"),
            response_lifetime: Duration::from_secs(86_400),
            idcert_lifetime: Duration::from_secs(90 * 86_400),
        }
    }
}

/// A notary we trust for other servers' keys, with its own keys pinned.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedNotary {
    pub server_name: String,
    /// `"ed25519:<id>" = "<unpadded base64 public key>"`.
    pub verify_keys: std::collections::BTreeMap<String, String>,
}

/// An operator's override for one remote server.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginOverride {
    pub rate_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub blocked: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Hosts reached over plain `http://` (loopback tests, private deployments).
    pub plain_http_hosts: Vec<String>,
    /// PEM roots trusted for outbound HTTPS besides the web PKI (a private deployment's CA).
    pub ca_file: Option<PathBuf>,
    /// Server name → base URL, e.g. `"peer.example" = "http://127.0.0.1:9000"`.
    pub resolve: std::collections::BTreeMap<String, String>,
    pub trusted_notaries: Vec<TrustedNotary>,
    /// Outbound requests: time to connect, and for the whole request.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    // The inbox's knobs (DESIGN §3.2, §6); they take effect with the federation inbox.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    pub default_rate_per_minute: u32,
    pub default_burst: u32,
    /// Before signatures are checked: requests per second (and burst) of one claimed origin
    /// from one source address.
    pub preverify_rate_per_second: u32,
    pub preverify_burst: u32,
    /// Inbox requests being handled at once; more get 503 `SY_OVERLOADED`.
    pub max_inflight_requests: usize,
    /// Threads that check signatures (batched); 0 = one per CPU.
    pub verify_threads: usize,
    /// Outbound delivery: the first wait after a failure, doubling (with jitter) up to the
    /// maximum.
    #[serde(with = "humantime_serde")]
    pub delivery_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub delivery_max_backoff: Duration,
    pub origins: std::collections::BTreeMap<String, OriginOverride>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            plain_http_hosts: vec!["localhost".into(), "127.0.0.1".into()],
            resolve: Default::default(),
            ca_file: None,
            trusted_notaries: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            replay_window: Duration::from_secs(300),
            max_body_bytes: 1024 * 1024,
            dedup_ttl: Duration::from_secs(24 * 3600),
            default_rate_per_minute: 100,
            default_burst: 100,
            preverify_rate_per_second: 200,
            preverify_burst: 400,
            max_inflight_requests: 512,
            verify_threads: 0,
            delivery_backoff_base: Duration::from_secs(1),
            delivery_max_backoff: Duration::from_secs(300),
            origins: Default::default(),
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

/// The client WebSocket gateway (DESIGN §5).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Sent in Hello: how often a client heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// After a missed heartbeat the server sends a Heartbeat Request and waits this long
    /// before closing with 4009.
    #[serde(with = "humantime_serde")]
    pub heartbeat_grace: Duration,
    /// Frames a session may have queued for its socket before it is closed (4000, resumable).
    pub outbound_max_frames: usize,
    /// Bytes a session may have queued for its socket before it is closed (4000, resumable).
    pub outbound_max_bytes: usize,
    /// Replay retention, in log entries: a connect or Resume from a position further behind
    /// the head closes with 4010 and the client pages through `GET /.p2/core/v1/events`;
    /// anything newer is replayed over the socket, paced by its outbound bound.
    pub max_replay_events: usize,
    /// Client frames per connection per 10 s before it is closed with 4008.
    pub max_client_frames: u32,
    /// Live sockets one user may hold; more are closed with 4008.
    pub max_sockets_per_user: usize,
    /// How long a WebSocket ticket stays valid (DESIGN §5: 30 s).
    #[serde(with = "humantime_serde")]
    pub ticket_lifetime: Duration,
    /// How long a `typing.start` lasts unless renewed (DESIGN §5: 10 s).
    #[serde(with = "humantime_serde")]
    pub typing_ttl: Duration,
    /// Gateway handshakes (`GET /ws` upgrades: connects and resumes) admitted per second, and
    /// in a burst; beyond them a handshake is answered 503 with `Retry-After` before anything
    /// is read or consumed (its ticket stays valid).
    pub handshake_rate_per_second: u32,
    pub handshake_burst: u32,
    /// The recent events kept in memory, serialised, for replays without a database read:
    /// at most this many log positions' client events, and this many bytes of them.
    pub recent_events: usize,
    pub recent_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_grace: Duration::from_secs(10),
            outbound_max_frames: 1024,
            outbound_max_bytes: 1 << 20,
            max_replay_events: 100_000,
            max_client_frames: 120,
            max_sockets_per_user: 64,
            ticket_lifetime: Duration::from_secs(30),
            typing_ttl: Duration::from_secs(10),
            handshake_rate_per_second: 2_000,
            handshake_burst: 500,
            recent_events: 100_000,
            recent_bytes: 64 << 20,
        }
    }
}

/// The verifiable log (DESIGN §2.1, §2.5).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparencyConfig {
    /// A new checkpoint is signed when the log has grown, at most this often.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Servers we ask to witness (cosign) our checkpoints.
    pub witnesses: Vec<String>,
    /// Servers whose logs we witness (`POST /log/add-checkpoint`).
    pub witness_for: Vec<String>,
    /// We push a grown checkpoint to each witness at most this often.
    #[serde(with = "humantime_serde")]
    pub witness_interval: Duration,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        TransparencyConfig {
            checkpoint_interval: Duration::from_secs(1),
            witnesses: Vec::new(),
            witness_for: Vec::new(),
            witness_interval: Duration::from_secs(60),
        }
    }
}

/// Several nodes on one PostgreSQL (DESIGN §7).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Run as one node of several sharing `database.url` (PostgreSQL only).
    pub enabled: bool,
    /// This node's name among the nodes; empty = the host name and a random suffix.
    pub node_id: String,
    /// How the other nodes reach this one (`http://10.0.0.2:8008`); empty = `http://` +
    /// `server.bind` (right only when the nodes share a host).
    pub advertise_url: String,
    /// The shared secret of the nodes' `/internal/` routes (`Authorization: Bearer …`).
    pub internal_token: String,
    /// How long a leader's lease and a destination's delivery lease last unrenewed; both are
    /// renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// A follower polls the log at least this often (a lost NOTIFY delays, never loses).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: String::new(),
            advertise_url: String::new(),
            internal_token: String::new(),
            lease_ttl: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Actor identity (DESIGN §4.2–§4.5).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Validity of an actor ID-Cert we issue (at most 60 days), cut to the root's validity.
    #[serde(with = "humantime_serde")]
    pub actor_cert_lifetime: Duration,
    /// How long another server may use a certificate entry we answer before asking again
    /// (`cache_not_valid_after` − `cache_not_valid_before`), 1h..12h.
    #[serde(with = "humantime_serde")]
    pub cert_cache_ttl: Duration,
    /// How long a `GET /.p2/core/v1/challenge` string can be answered.
    #[serde(with = "humantime_serde")]
    pub challenge_lifetime: Duration,
    /// Whether new messages and edits must carry their author's signature.
    pub require_signed_messages: bool,
    /// Challenges outstanding at once; the oldest go first past this.
    pub max_challenges: u64,
    /// Challenges per second (and burst) one source address may ask for.
    pub challenge_rate_per_second: u32,
    pub challenge_burst: u32,
    /// How often the certificates of foreign sessions are checked, so that one that was
    /// invalidated at home ends the session (and closes its sockets) without waiting for a
    /// request.
    #[serde(with = "humantime_serde")]
    pub foreign_check_interval: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            actor_cert_lifetime: Duration::from_secs(30 * 86_400),
            cert_cache_ttl: Duration::from_secs(3600),
            challenge_lifetime: Duration::from_secs(300),
            require_signed_messages: false,
            max_challenges: 100_000,
            challenge_rate_per_second: 20,
            challenge_burst: 40,
            foreign_check_interval: Duration::from_secs(60),
        }
    }
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
    /// A key, section or `SWITCHYARD__` variable that names no knob (a misspelling would
    /// otherwise be ignored without a word).
    #[error("{0}")]
    Unknown(String),
    #[error("invalid value for {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// A figment error as a person reads it: an unknown key names the key, where it came from
/// (the file or the environment variable) and the keys its section has.
fn explain(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let unknown: Vec<String> = error
        .clone()
        .into_iter()
        .filter_map(|e| match &e.kind {
            Kind::UnknownField(field, expected) => {
                // The path starts with the profile figment merged into ("default").
                let section: Vec<&str> = e
                    .path
                    .iter()
                    .map(String::as_str)
                    .filter(|p| *p != "default" && *p != *field)
                    .collect();
                let from = match e.metadata.as_ref() {
                    Some(m) if m.name.contains("environment") => format!(
                        "the environment variable SWITCHYARD__{}{}",
                        section
                            .iter()
                            .chain(std::iter::once(&field.as_str()))
                            .map(|s| s.to_uppercase())
                            .collect::<Vec<_>>()
                            .join("__"),
                        if section.is_empty() { "__…" } else { "" }
                    ),
                    Some(m) => m
                        .source
                        .as_ref()
                        .map_or_else(|| m.name.to_string(), |s| s.to_string()),
                    None => "the configuration".into(),
                };
                let known = expected.join(", ");
                Some(match section.is_empty() {
                    true => {
                        format!("unknown section [{field}] in {from}; the sections are: {known}")
                    }
                    false => {
                        let section = section.join(".");
                        format!("unknown key {section}.{field} in {from}; [{section}] has: {known}")
                    }
                })
            }
            _ => None,
        })
        .collect();
    match unknown.is_empty() {
        true => ConfigError::Parse(Box::new(error)),
        false => ConfigError::Unknown(unknown.join("\n")),
    }
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
            .map_err(explain)?;
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
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert",
                "server.tls_cert and server.tls_key go together: set both for HTTPS, or neither",
            ));
        }
        if let Err((key, problem)) = crate::identity::accounts::Hashers::params(
            self.server.password_hash_memory_kib,
            self.server.password_hash_passes,
        ) {
            return Err(invalid(key, problem));
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
        if !(Duration::from_secs(3600)..=Duration::from_secs(10 * 365 * 86_400))
            .contains(&self.keys.idcert_lifetime)
        {
            return Err(invalid(
                "keys.idcert_lifetime",
                "must be between 1h and 10 years",
            ));
        }
        let cluster = &self.cluster;
        if cluster.enabled {
            if self.database.backend() != Some(Backend::Postgres) {
                return Err(invalid(
                    "cluster.enabled",
                    "several nodes need a shared PostgreSQL database (database.url = \"postgres://…\"); SQLite serves one node",
                ));
            }
            if cluster.internal_token.len() < 16 {
                return Err(invalid(
                    "cluster.internal_token",
                    "must be a shared secret of at least 16 characters when cluster.enabled = true",
                ));
            }
            let listens_everywhere = self
                .server
                .bind
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified());
            if cluster.advertise_url.is_empty() && listens_everywhere {
                return Err(invalid(
                    "cluster.advertise_url",
                    "server.bind listens on every address, so say how the other nodes reach this one (e.g. \"http://10.0.0.2:8008\")",
                ));
            }
            if !(cluster.advertise_url.is_empty()
                || cluster.advertise_url.starts_with("http://")
                || cluster.advertise_url.starts_with("https://"))
            {
                return Err(invalid(
                    "cluster.advertise_url",
                    "must start with http:// or https://",
                ));
            }
            if !cluster.node_id.is_empty()
                && (cluster.node_id.len() > 64
                    || !cluster
                        .node_id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
            {
                return Err(invalid(
                    "cluster.node_id",
                    "at most 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                ));
            }
        }
        if cluster.lease_ttl < Duration::from_millis(300)
            || cluster.lease_ttl > Duration::from_secs(300)
        {
            return Err(invalid("cluster.lease_ttl", "must be between 300ms and 5m"));
        }
        if cluster.poll_interval < Duration::from_millis(10)
            || cluster.poll_interval > Duration::from_millis(250)
        {
            return Err(invalid(
                "cluster.poll_interval",
                "must be between 10ms and 250ms (DESIGN §7: at least every 250 ms)",
            ));
        }
        let transparency = &self.transparency;
        if transparency.checkpoint_interval < Duration::from_millis(10)
            || transparency.checkpoint_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "transparency.checkpoint_interval",
                "must be between 10ms and 1h",
            ));
        }
        if transparency.witness_interval < Duration::from_millis(10) {
            return Err(invalid(
                "transparency.witness_interval",
                "must be at least 10ms",
            ));
        }
        for (key, names) in [
            ("transparency.witnesses", &transparency.witnesses),
            ("transparency.witness_for", &transparency.witness_for),
        ] {
            if let Some(bad) = names.iter().find(|n| !ids::is_server_name(n)) {
                return Err(invalid(key, format!("{bad:?} is not host[:port]")));
            }
            if names.iter().any(|n| *n == self.server.name) {
                return Err(invalid(key, "must not name this server"));
            }
        }
        let identity = &self.identity;
        if identity.actor_cert_lifetime < Duration::from_secs(60)
            || identity.actor_cert_lifetime > Duration::from_secs(60 * 86_400)
        {
            return Err(invalid(
                "identity.actor_cert_lifetime",
                "must be between 1m and 60d",
            ));
        }
        if !(Duration::from_secs(3600)..=Duration::from_secs(12 * 3600))
            .contains(&identity.cert_cache_ttl)
        {
            return Err(invalid(
                "identity.cert_cache_ttl",
                "must be between 1h and 12h",
            ));
        }
        if identity.challenge_lifetime < Duration::from_secs(1)
            || identity.challenge_lifetime > Duration::from_secs(3600)
        {
            return Err(invalid(
                "identity.challenge_lifetime",
                "must be between 1s and 1h",
            ));
        }
        if identity.max_challenges == 0 {
            return Err(invalid("identity.max_challenges", "must be at least 1"));
        }
        if identity.challenge_rate_per_second == 0 || identity.challenge_burst == 0 {
            return Err(invalid(
                "identity.challenge_rate_per_second",
                "challenge_rate_per_second and challenge_burst must be at least 1",
            ));
        }
        if identity.foreign_check_interval < Duration::from_millis(100) {
            return Err(invalid(
                "identity.foreign_check_interval",
                "must be at least 100ms",
            ));
        }
        let gateway = &self.gateway;
        if gateway.heartbeat_interval < Duration::from_millis(100)
            || gateway.heartbeat_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "gateway.heartbeat_interval",
                "must be between 100ms and 1h",
            ));
        }
        if gateway.heartbeat_grace.is_zero() {
            return Err(invalid("gateway.heartbeat_grace", "must be above zero"));
        }
        if gateway.outbound_max_frames < 16 {
            return Err(invalid(
                "gateway.outbound_max_frames",
                "must be at least 16",
            ));
        }
        if gateway.max_sockets_per_user == 0 {
            return Err(invalid(
                "gateway.max_sockets_per_user",
                "must be at least 1",
            ));
        }
        if gateway.outbound_max_bytes < 64 * 1024 {
            return Err(invalid(
                "gateway.outbound_max_bytes",
                "must be at least 65536",
            ));
        }
        if gateway.handshake_rate_per_second == 0 || gateway.handshake_burst == 0 {
            return Err(invalid(
                "gateway.handshake_rate_per_second",
                "handshake_rate_per_second and handshake_burst must be at least 1",
            ));
        }
        if gateway.max_replay_events == 0 {
            return Err(invalid("gateway.max_replay_events", "must be at least 1"));
        }
        if gateway.ticket_lifetime.is_zero() || gateway.typing_ttl.is_zero() {
            return Err(invalid(
                "gateway.ticket_lifetime",
                "ticket_lifetime and typing_ttl must be above zero",
            ));
        }
        if gateway.max_client_frames == 0 {
            return Err(invalid("gateway.max_client_frames", "must be at least 1"));
        }
        if self.keys.path.as_os_str().is_empty() {
            return Err(invalid("keys.path", "must name a file"));
        }
        let federation = &self.federation;
        for (name, url) in &federation.resolve {
            if !ids::is_server_name(name) {
                return Err(invalid(
                    "federation.resolve",
                    format!("{name:?} is not a server name"),
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "federation.resolve",
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
        }
        for notary in &federation.trusted_notaries {
            if !ids::is_server_name(&notary.server_name) {
                return Err(invalid(
                    "federation.trusted_notaries",
                    format!("{:?} is not a server name", notary.server_name),
                ));
            }
            let keys_ok = !notary.verify_keys.is_empty()
                && notary.verify_keys.iter().all(|(id, key)| {
                    id.starts_with("ed25519:")
                        && crate::federation::signing::unb64(key).is_some_and(|k| k.len() == 32)
                });
            if !keys_ok {
                return Err(invalid(
                    "federation.trusted_notaries",
                    format!(
                        "{}: verify_keys must map ed25519:<id> to 32-byte base64 keys",
                        notary.server_name
                    ),
                ));
            }
        }
        for name in federation.origins.keys() {
            if !ids::is_server_name(name) {
                return Err(invalid(
                    "federation.origins",
                    format!("{name:?} is not a server name"),
                ));
            }
        }
        if federation.connect_timeout.is_zero() || federation.request_timeout.is_zero() {
            return Err(invalid(
                "federation.request_timeout",
                "timeouts must be above zero",
            ));
        }
        if federation.max_body_bytes < 1024 {
            return Err(invalid(
                "federation.max_body_bytes",
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            (
                "federation.default_rate_per_minute",
                federation.default_rate_per_minute,
            ),
            ("federation.default_burst", federation.default_burst),
            (
                "federation.preverify_rate_per_second",
                federation.preverify_rate_per_second,
            ),
            ("federation.preverify_burst", federation.preverify_burst),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (name, o) in &federation.origins {
            if o.rate_per_minute == Some(0) || o.burst == Some(0) {
                return Err(invalid(
                    "federation.origins",
                    format!("{name}: rate_per_minute and burst must be at least 1 (block with blocked = true)"),
                ));
            }
        }
        if federation.max_inflight_requests == 0 {
            return Err(invalid(
                "federation.max_inflight_requests",
                "must be at least 1",
            ));
        }
        if federation.delivery_backoff_base.is_zero()
            || federation.delivery_max_backoff < federation.delivery_backoff_base
        {
            return Err(invalid(
                "federation.delivery_max_backoff",
                "delivery_backoff_base must be above zero and at most delivery_max_backoff",
            ));
        }
        if federation.replay_window.is_zero() {
            return Err(invalid("federation.replay_window", "must be above zero"));
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
    fn the_design_example_parses() {
        let config = from_toml(
            r#"
            [federation]
            replay_window = "5m"
            max_body_bytes = 1048576
            dedup_ttl = "24h"
            plain_http_hosts = ["localhost", "127.0.0.1"]
            default_rate_per_minute = 100
            default_burst = 100
            trusted_notaries = [{ server_name = "n.example", verify_keys = { "ed25519:a" = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI" } }]
            [federation.resolve]
            "peer.example" = "http://127.0.0.1:9000"
            [federation.origins."peer.example"]
            rate_per_minute = 1000
            burst = 200
            blocked = false
            "#,
        )
        .expect("the DESIGN §6 example");
        assert_eq!(
            config.federation.resolve["peer.example"],
            "http://127.0.0.1:9000"
        );
        assert_eq!(config.federation.origins["peer.example"].burst, Some(200));
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
