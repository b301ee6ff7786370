//! Load generators and benchmarks for Switchyard. Each subcommand prints its figures.
//!
//! - `log`: append throughput and p50/p99 latency of the event log with 1, 16 and 256
//!   concurrent appenders, `normal` and `full` durability, next to the raw batched-insert rate
//!   of the same SQLite build through sqlx on the same disk (the ceiling), as a ratio.
//! - `crash-writer`: appends under load until killed, writing each acknowledged event id to a
//!   side file before counting it (the child of the crash-safety test).
//! - `inbox`: load generator for `POST /federation/inbox` against an in-process receiver:
//!   accepted events/s and requests/s with p50/p99 at 100 and 1 events per request, next to
//!   the ed25519 and log-append ceilings, and the flood comparison (see `inbox.rs`).
//! - `fanout`: WebSocket fan-out of one channel to N subscribers from M publishers, Switchyard
//!   against a bare actix-ws broadcast server (the ceiling): deliveries/s, delivery latency,
//!   gaps, duplicates, RSS per idle socket (see `fanout.rs`). `fanout-clients` and
//!   `bare-broadcast` are its child processes.
//! - `identity`: actor identity against release servers: ID-Cert issuances/s, foreign
//!   sign-ins/s with the home's certificates cached, signed against unsigned posts, and the
//!   certificate route against `GET /health` (see `identity.rs`).
//! - `transparency`: the verifiable log: append throughput with the Merkle tree and the
//!   checkpoint signer against the same without them, commit-to-checkpoint latency, inclusion
//!   proofs and tiles against `GET /health` on a release server, and the audit export's time
//!   and peak RSS as it grows (see `transparency.rs`).
//! - `cluster`: 1, 2 and 3 release nodes on one PostgreSQL: appends spread over the nodes
//!   against one node with the cluster off, forwarded appends, commit-to-socket latency on
//!   every node, failover and delivery-lease takeover after kill -9 (see `cluster.rs`).

mod cluster;
mod common;
mod fanout;
mod identity;
mod inbox;
mod transparency;

/// mimalloc: the log writer, the database worker and the HTTP workers hand buffers to one
/// another, which glibc's allocator serialises on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::QueryBuilder;
use serde_json::json;

use switchyard::config::{DatabaseConfig, Durability};
use switchyard::core::event::NewEvent;
use switchyard::store::{EventLog, EventLogHandle, Store};
use switchyard::telemetry::Metrics;

#[derive(Parser)]
#[command(
    name = "switchyard-bench",
    about = "Switchyard load generators and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Event log append throughput and latency against the raw insert rate.
    Log {
        /// Directory for the benchmark databases (the disk being measured).
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Seconds each configuration runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Appender counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        appenders: Vec<usize>,
    },
    /// Append forever with N appenders, recording acknowledged event ids (crash test child).
    CrashWriter {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        acks: PathBuf,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 32)]
        appenders: usize,
    },
    /// Federation inbox load: throughput at 100 and 1 events/request, ceilings, flood.
    Inbox(inbox::InboxArgs),
    /// WebSocket fan-out: Switchyard against a bare actix-ws broadcast ceiling.
    Fanout(fanout::FanoutArgs),
    /// The subscriber sockets of `fanout` (its child process, driven over stdin/stdout).
    FanoutClients(fanout::ClientsArgs),
    /// The ceiling server of `fanout`: a bare actix-ws broadcast.
    BareBroadcast(fanout::BareArgs),
    /// Actor identity: issuances, sign-ins, signed posts, the certificate route.
    Identity(identity::IdentityArgs),
    /// Verifiable log: tree cost, checkpoint latency, proofs and tiles, export.
    Transparency(transparency::TransparencyArgs),
    /// Several nodes on one PostgreSQL: appends, forwarding, sockets, failover, leases.
    Cluster(cluster::ClusterArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Log {
                dir,
                seconds,
                appenders,
            } => bench_log(&dir, Duration::from_secs(seconds), &appenders).await,
            Command::CrashWriter {
                database_url,
                acks,
                prefix,
                appenders,
            } => crash_writer(database_url, &acks, prefix, appenders).await,
            Command::Inbox(args) => inbox::run(args).await,
            Command::Fanout(args) => fanout::run(args).await,
            Command::FanoutClients(args) => fanout::run_clients(args).await,
            Command::BareBroadcast(args) => fanout::run_bare(args).await,
            Command::Identity(args) => identity::run(args).await,
            Command::Transparency(args) => transparency::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
        }
    })
}

/// A `message.new` whose log leaf is about 300 bytes.
fn bench_event(id: &str) -> NewEvent {
    NewEvent {
        event_id: id.to_owned(),
        origin: "bench.example".into(),
        event_type: "message.new".into(),
        sender: Some("alice@bench.example".into()),
        channel: Some("general@bench.example".into()),
        origin_ts: 1_700_000_000_000,
        content: json!({"message_id": id, "body": "b".repeat(80)}),
    }
}

async fn open_log(
    url: &str,
    durability: Durability,
) -> anyhow::Result<(Store, EventLogHandle, Arc<Metrics>)> {
    let config = DatabaseConfig {
        url: url.to_owned(),
        ..DatabaseConfig::default()
    };
    let store = Store::connect(&config, durability).await?;
    store.migrate().await?;
    let metrics = Arc::new(Metrics::new()?);
    let log = EventLog::start(&store, 2000, 1024, metrics.clone()).await?;
    Ok((store, log, metrics))
}

/// A path for a new database in `dir`, with no leftovers of an earlier run.
fn fresh_db(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    remove_db(&path)?;
    Ok(path)
}

/// Removes a SQLite database with its WAL and shared-memory files.
fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::remove_file(file)?;
        }
    }
    Ok(())
}

struct RunFigures {
    events: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl RunFigures {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `appenders` tasks, each appending one event at a time, for `duration`.
async fn run_appenders(
    log: &EventLogHandle,
    appenders: usize,
    duration: Duration,
) -> anyhow::Result<RunFigures> {
    let started = Instant::now();
    let deadline = started + duration;
    let next_id = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let log = log.clone();
            let next_id = next_id.clone();
            actix_web::rt::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let id = format!("ev{}", next_id.fetch_add(1, Ordering::Relaxed));
                    let sent = Instant::now();
                    log.append(vec![bench_event(&id)]).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(RunFigures {
        events: latencies.len() as u64,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// The ceiling: rows shaped like log entries inserted straight into the `events` table of a
/// freshly migrated Switchyard database (same table, same indexes, same SQLite settings)
/// through sqlx, 1,000 rows per transaction, with nothing else done per row.
async fn raw_insert_rate(
    path: &Path,
    durability: Durability,
    duration: Duration,
) -> anyhow::Result<f64> {
    let (store, log, _) =
        open_log(&format!("sqlite://{}?mode=rwc", path.display()), durability).await?;
    drop(log);
    store.close().await?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        });
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let content = json!({"message_id": "ev0000000", "body": "b".repeat(80)}).to_string();
    let hash = format!("sha256:{}", "ab".repeat(32));
    let started = Instant::now();
    let mut seq: i64 = 0;
    while started.elapsed() < duration {
        let mut txn = pool.begin().await?;
        let mut builder = QueryBuilder::new(
            "INSERT INTO events (seq, event_id, origin, type, sender, channel, origin_ts, received_ts, content, prev_hash, entry_hash) ",
        );
        builder.push_values(0..1000, |mut row, _| {
            seq += 1;
            row.push_bind(seq)
                .push_bind(format!("ev{seq}"))
                .push_bind("bench.example")
                .push_bind("message.new")
                .push_bind("alice@bench.example")
                .push_bind("general@bench.example")
                .push_bind(1_700_000_000_000i64)
                .push_bind(1_700_000_000_000i64)
                .push_bind(content.clone())
                .push_bind(hash.clone())
                .push_bind(hash.clone());
        });
        builder.build().execute(&mut *txn).await?;
        txn.commit().await?;
    }
    let rate = seq as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    remove_db(path)?;
    Ok(rate)
}

async fn bench_log(
    dir: &Path,
    duration: Duration,
    appender_counts: &[usize],
) -> anyhow::Result<()> {
    println!(
        "event log append benchmark: message.new events (~300-byte leaves), SQLite WAL in {}",
        dir.display()
    );
    println!(
        "{:<11} {:>9} {:>12} {:>10} {:>10} {:>9} {:>10}",
        "durability", "appenders", "events/s", "p50", "p99", "vs raw", "mean batch"
    );
    for durability in [Durability::Normal, Durability::Full] {
        let name = format!("{durability:?}").to_lowercase();
        let raw_path = fresh_db(dir, &format!("raw-{name}.db"))?;
        let raw = raw_insert_rate(&raw_path, durability, duration).await?;
        println!(
            "{name:<11} {:>9} {:>12.0} {:>10} {:>10} {:>9}",
            "raw sqlx", raw, "-", "-", "1.00"
        );
        for &appenders in appender_counts {
            let path = fresh_db(dir, &format!("log-{name}-{appenders}.db"))?;
            let (store, log, metrics) =
                open_log(&format!("sqlite://{}?mode=rwc", path.display()), durability).await?;
            let figures = run_appenders(&log, appenders, duration).await?;
            let report = store.verify_chain().await?;
            anyhow::ensure!(
                report.first_bad.is_none() && report.verified == figures.events,
                "chain check failed"
            );
            let batches = metrics.log_batch_events.get_sample_count().max(1);
            println!(
                "{name:<11} {appenders:>9} {:>12.0} {:>10.2?} {:>10.2?} {:>9.2} {:>10.1}",
                figures.rate(),
                figures.p50,
                figures.p99,
                figures.rate() / raw,
                metrics.log_batch_events.get_sample_sum() / batches as f64,
            );
            drop(log);
            store.close().await?;
            remove_db(&path)?;
        }
    }
    Ok(())
}

/// The server name the crash writer signs its checkpoints as (`<name>/log`).
pub const CRASH_SERVER_NAME: &str = "crash.test";

async fn crash_writer(
    database_url: String,
    acks: &Path,
    prefix: String,
    appenders: usize,
) -> anyhow::Result<()> {
    let (store, log, metrics) = open_log(&database_url, Durability::Normal).await?;
    // The checkpoint signer runs too, so that each kill also lands between tiles and
    // checkpoints: the test verifies the tree and the latest checkpoint after every restart.
    let key_path = acks.with_file_name("signing.key");
    let key = switchyard::federation::signing::ServerKey::load_or_generate(&key_path)?;
    let keys = Arc::new(switchyard::federation::signing::KeyRing::new(
        &key_path,
        key,
        Vec::new(),
    ));
    let _transparency = switchyard::transparency::Transparency::start(
        CRASH_SERVER_NAME,
        &switchyard::config::TransparencyConfig {
            checkpoint_interval: Duration::from_millis(50),
            ..Default::default()
        },
        &store,
        &log,
        keys,
        metrics,
    )
    .await?;
    let acks = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(acks)?,
    ));
    let next = Arc::new(AtomicU64::new(0));
    let mut announced = false;
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (log, acks, next, prefix) =
                (log.clone(), acks.clone(), next.clone(), prefix.clone());
            actix_web::rt::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    // Every tenth append carries several events, to cover multi-event appends.
                    let ids: Vec<String> = (0..if n % 10 == 0 { 5 } else { 1 })
                        .map(|k| format!("{prefix}-{n}-{k}"))
                        .collect();
                    log.append(ids.iter().map(|id| bench_event(id)).collect())
                        .await?;
                    let mut line = ids.join("\n");
                    line.push('\n');
                    // One write(2) per append: a kill cannot split it.
                    let mut file = acks
                        .lock()
                        .map_err(|_| anyhow::anyhow!("ack file lock poisoned"))?;
                    file.write_all(line.as_bytes())?;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            })
        })
        .collect();
    while !announced {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        if next.load(Ordering::Relaxed) > appenders as u64 {
            println!("ready");
            std::io::stdout().flush()?;
            announced = true;
        }
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
