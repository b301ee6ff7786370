//! Shared test helpers: a fresh database per test, the real app on port 0, event builders.

use serde_json::json;
use switchyard::app::Application;
use switchyard::config::Config;
use switchyard::core::event::NewEvent;
use switchyard::store::{EventLogHandle, Store};

/// A database of one test: a SQLite file in a temporary directory, or a fresh PostgreSQL
/// database when `SWITCHYARD_TEST_POSTGRES_URL` is set.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match std::env::var("SWITCHYARD_TEST_POSTGRES_URL") {
            Ok(admin_url) if !admin_url.is_empty() => create_pg_database(&admin_url).await,
            _ => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("switchyard.db").display()
            ),
        };
        TestDb { url, dir }
    }

    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.server.bind = "127.0.0.1:0".into();
        config.server.workers = 1;
        // A graceful stop waits this long for idle keep-alive clients; tests stop servers often.
        config.server.shutdown_timeout = std::time::Duration::from_secs(1);
        config.database.url = self.url.clone();
        config.database.max_connections = 4;
        config.keys.path = self.dir.path().join("signing.key");
        config
    }

    pub async fn store(&self) -> Store {
        let config = self.config();
        let store = Store::connect(&config.database, config.storage.durability)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

async fn create_pg_database(admin_url: &str) -> String {
    use sea_orm::{ConnectionTrait, Database};
    let name = format!("sy_test_{}", rand_suffix());
    let admin = Database::connect(admin_url)
        .await
        .expect("connect to the PostgreSQL test server");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.expect("close");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("admin URL has a database path");
    format!("{base}/{name}")
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// What a first start writes to the log: the root ID-Cert of the new key.
pub const STARTUP_EVENTS: u64 = 1;

/// The event log alone (no HTTP server, no keys), on a database of its own: for the storage
/// tests, whose log starts empty. (A started application has already recorded its root
/// ID-Cert.)
pub struct TestLog {
    pub log: EventLogHandle,
    pub store: Store,
    pub db: TestDb,
}

pub async fn spawn_log() -> TestLog {
    spawn_log_with(TestDb::new().await, |_| {}).await
}

pub async fn spawn_log_with(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestLog {
    let mut config = db.config();
    adjust(&mut config);
    let store = db.store().await;
    let metrics = std::sync::Arc::new(switchyard::telemetry::Metrics::new().expect("metrics"));
    let log = switchyard::store::EventLog::start(
        &store,
        config.storage.max_batch_events,
        config.storage.publish_buffer,
        metrics,
    )
    .await
    .expect("start the log");
    TestLog { log, store, db }
}

/// The real application, serving on a free port, with a database of its own.
pub struct TestApp {
    pub address: String,
    pub inbox: std::sync::Arc<switchyard::federation::inbox::Inbox>,
    pub channels: std::sync::Arc<switchyard::gateway::channel::Channels>,
    pub identity: std::sync::Arc<switchyard::identity::Identity>,
    pub transparency: std::sync::Arc<switchyard::transparency::Transparency>,
    pub log: EventLogHandle,
    pub store: Store,
    pub db: TestDb,
    pub server: actix_web::dev::ServerHandle,
    /// The graceful stop `serve` runs on SIGTERM.
    pub shutdown: switchyard::app::Shutdown,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestDb::new().await, |_| {}).await
}

pub async fn spawn_app_with(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = db.config();
    adjust(&mut config);
    let app = Application::build(config).await.expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let log = app.event_log().clone();
    let inbox = app.inbox().clone();
    let channels = app.channels().clone();
    let identity = app.identity().clone();
    let transparency = app.transparency().clone();
    let store = app.store().clone();
    let server = app.handle();
    let shutdown = app.shutdown();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        inbox,
        channels,
        identity,
        transparency,
        log,
        store,
        db,
        server,
        shutdown,
    }
}

/// A `message.new` of about 300 bytes, from `origin`, in channel `general@<origin>`.
pub fn message(origin: &str, event_id: &str) -> NewEvent {
    NewEvent {
        event_id: event_id.into(),
        origin: origin.into(),
        event_type: "message.new".into(),
        sender: Some(format!("alice@{origin}")),
        channel: Some(format!("general@{origin}")),
        origin_ts: 1_700_000_000_000,
        content: json!({"message_id": event_id, "body": "x".repeat(160)}),
    }
}

pub fn event(
    origin: &str,
    event_id: &str,
    kind: &str,
    sender: &str,
    content: serde_json::Value,
) -> NewEvent {
    NewEvent {
        event_id: event_id.into(),
        origin: origin.into(),
        event_type: kind.into(),
        sender: Some(sender.into()),
        channel: Some(format!("general@{origin}")),
        origin_ts: 1_700_000_000_000,
        content,
    }
}

/// Every metric the operator's alert rules and dashboard name (`config/prometheus`,
/// `config/grafana`), histogram series reduced to their metric, without the registry's
/// `switchyard_` prefix, with `prefix`.
pub fn metrics_in_dashboards(prefix: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut text = std::fs::read_to_string(root.join("prometheus/switchyard-alerts.yml"))
        .expect("alert rules");
    text.push_str(
        &std::fs::read_to_string(root.join("grafana/switchyard-dashboard.json"))
            .expect("dashboard"),
    );
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|w| w.strip_prefix("switchyard_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned()
        })
        .filter(|w| w.starts_with(prefix))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The names of `wanted` that `/metrics` of `address` does not serve.
pub async fn metrics_missing(address: &str, wanted: &[String]) -> Vec<String> {
    let mut res = awc::Client::default()
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("metrics");
    let body = res.body().limit(16 << 20).await.expect("body");
    let text = String::from_utf8_lossy(&body);
    wanted
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|line| line.starts_with(&format!("# TYPE switchyard_{name} ")))
        })
        .cloned()
        .collect()
}
