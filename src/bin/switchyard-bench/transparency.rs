//! `transparency`: the figures of the verifiable log (DESIGN §2.1–§2.3), on SQLite in a
//! scratch directory.
//!
//! 1. append: the log's append throughput with the Merkle tree maintained and the checkpoint
//!    signer running (`MerkleTree::Maintained` + `Transparency::start`, interval 1 s) against
//!    the same log without them (`MerkleTree::Off`, no signer), in-process, `normal`
//!    durability, a fresh database each run, `--appenders` concurrent appenders of one
//!    `message.new` each (as the `log` benchmark), `--rounds` pairs of runs per appender count
//!    in the order off, on, on, off, … (ABBA: a linear drift cancels out of the means):
//!    events/s of each and the ratio on/off. Target: the tree costs at most 10 % (≥ 0.90).
//! 2. checkpoint: the signer at each of `--intervals-ms`, appends of `--events-per-append`
//!    events paced at `--rate` events/s for `--checkpoint-seconds`; for each append, the time
//!    from its commit (`append()` returned) to the publication of the first checkpoint whose
//!    size covers it (`watch_signed()`): p50/p99/max and p99 / interval. Target: p99 ≤ 1.5 ×
//!    the interval.
//! 3. proofs: a release server on a database of `--proof-entries` entries (written first by
//!    the in-process log with its tree, 1,000 events per append; the server signs its
//!    checkpoint at start): `GET /api/v1/log/proof/inclusion?seq=<random>` and full level-0
//!    tiles `GET /log/tile/0/<random N>` over `--connections` keep-alive connections for
//!    `--seconds` each (after an uncounted warm-up), next to `GET /health` on the same server
//!    (the stack's ceiling): requests/s, p50/p99, server CPU per request, ratio. Target:
//!    inclusion proofs ≥ 20,000/s at 64 connections.
//! 4. export: `GET /api/v1/audit/export?format=json` (admin token) of the whole log at each of
//!    `--export-sizes` entries (the log filled in-process between sizes, a fresh server
//!    process for each, so that each peak is its own): time, entries/s, and the server's
//!    VmHWM before and after. Target: peak RSS flat as the export grows (the largest export's
//!    peak within 10 % of the smallest's).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use futures_util::StreamExt as _;
use rand::Rng as _;
use serde_json::Value;

use switchyard::config::{DatabaseConfig, Durability, StorageConfig, TransparencyConfig};
use switchyard::core::tiles::index_path;
use switchyard::federation::signing::{KeyRing, ServerKey};
use switchyard::store::{EventLog, EventLogHandle, MerkleTree, Store};
use switchyard::telemetry::Metrics;
use switchyard::transparency::Transparency;

use crate::common::{self, free_port, hammer, process_cpu, ScratchDir, Timing};
use crate::{bench_event, percentile, run_appenders, RunFigures};

/// The admin token of the servers started here (through the environment: the configuration
/// `start_switchyard` writes has its `[server]` table already).
const ADMIN_TOKEN: &str = "transparency-bench-admin-token";
/// The server name of the in-process checkpoint signer.
const SERVER_NAME: &str = "bench.example";
/// Events per append when filling a log.
const FILL_CHUNK: u64 = 1000;

#[derive(clap::Args)]
pub struct TransparencyArgs {
    /// The `switchyard` release binary.
    #[arg(long, default_value = "target/release/switchyard")]
    server_bin: PathBuf,
    /// The phases to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "append,checkpoint,proofs,export"
    )]
    phases: Vec<Phase>,
    /// Appender counts of the append figure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    appenders: Vec<usize>,
    /// Seconds of each run of the append figure.
    #[arg(long, default_value_t = 4)]
    append_seconds: u64,
    /// Pairs of runs (one off, one on) per appender count in the append figure.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Checkpoint intervals of the checkpoint figure, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "1000,100")]
    intervals_ms: Vec<u64>,
    /// Events per second appended in the checkpoint figure.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Events per append in the checkpoint figure.
    #[arg(long, default_value_t = 2)]
    events_per_append: usize,
    /// Seconds of appending at each interval of the checkpoint figure.
    #[arg(long, default_value_t = 20)]
    checkpoint_seconds: u64,
    /// Entries of the server's log in the proofs figure.
    #[arg(long, default_value_t = 100_000)]
    proof_entries: u64,
    /// Keep-alive connections of the proofs figure.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each route of the proofs figure runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Log sizes at which the whole log is exported.
    #[arg(long, value_delimiter = ',', default_value = "250000,500000,1000000")]
    export_sizes: Vec<u64>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Phase {
    Append,
    Checkpoint,
    Proofs,
    Export,
}

/// A target line: what, the figure, the target, met or not.
fn target(what: &str, figure: String, goal: &str, met: bool) -> String {
    format!(
        "  {what:<40}{figure:>10}   target {goal:<10} {}",
        if met { "met" } else { "MISSED" }
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// An in-process log on a SQLite file, with the tree or without, with the signer or without.
struct Opened {
    store: Store,
    log: EventLogHandle,
    metrics: Arc<Metrics>,
    transparency: Option<Arc<Transparency>>,
}

impl Opened {
    async fn open(
        path: &Path,
        merkle: MerkleTree,
        signer: Option<Duration>,
    ) -> anyhow::Result<Opened> {
        let config = DatabaseConfig {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&config, Durability::Normal).await?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new()?);
        // The server's batching settings.
        let storage = StorageConfig::default();
        let log = EventLog::start_with(
            &store,
            storage.max_batch_events,
            storage.publish_buffer,
            metrics.clone(),
            merkle,
        )
        .await?;
        // Both modes follow the committed batches as a server's gateway and delivery routers
        // do: without any follower the log drops each batch as it publishes it, which no
        // server does, and the mode with the signer (a follower) would pay alone for keeping
        // the last `publish_buffer` batches.
        let mut follower = log.subscribe();
        actix_web::rt::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match follower.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let transparency = match signer {
            None => None,
            Some(interval) => {
                let keys = Arc::new(KeyRing::new(
                    &path.with_extension("key"),
                    ServerKey::generate(),
                    vec![],
                ));
                let config = TransparencyConfig {
                    checkpoint_interval: interval,
                    ..TransparencyConfig::default()
                };
                Some(
                    Transparency::start(SERVER_NAME, &config, &store, &log, keys, metrics.clone())
                        .await?,
                )
            }
        };
        Ok(Opened {
            store,
            log,
            metrics,
            transparency,
        })
    }

    async fn close(self) -> anyhow::Result<()> {
        drop(self.transparency);
        drop(self.log);
        self.store.close().await?;
        Ok(())
    }
}

/// Waits until the signer has published a checkpoint of at least `size` entries.
async fn covered(transparency: &Transparency, size: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while transparency.published_size() < size {
        ensure!(
            Instant::now() < deadline,
            "no checkpoint covered entry {size} within {within:?} (latest {})",
            transparency.published_size()
        );
        actix_web::rt::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Appends events to the log of `db` (with its tree) until it holds `upto` entries, 1,000
/// events per append with 4 appends in flight; the head and how long it took.
async fn fill(db: &Path, upto: u64, prefix: &str) -> anyhow::Result<(u64, Duration)> {
    let opened = Opened::open(db, MerkleTree::Maintained, None).await?;
    let (head, _) = opened.store.head().await?;
    let started = Instant::now();
    let log = &opened.log;
    let chunks: Vec<(u64, u64)> = (head..upto)
        .step_by(FILL_CHUNK as usize)
        .map(|from| (from, (from + FILL_CHUNK).min(upto)))
        .collect();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(chunks)
        .map(|(from, to)| async move {
            let events = (from..to)
                .map(|i| bench_event(&format!("{prefix}{i}")))
                .collect();
            log.append(events).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for result in results {
        result?;
    }
    let took = started.elapsed();
    let (now, _) = opened.store.head().await?;
    opened.close().await?;
    ensure!(now >= upto, "filled to {now}, wanted {upto}");
    Ok((now, took))
}

/// The size of the server's latest checkpoint once it is at least `want`.
async fn checkpoint_size(client: &awc::Client, base: &str, want: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut response = client
            .get(format!("{base}/log/checkpoint"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET /log/checkpoint: {e}"))?;
        if response.status().is_success() {
            let body = response.body().await?;
            let text = String::from_utf8_lossy(&body);
            let size: u64 = text
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .with_context(|| format!("a checkpoint without a size: {text}"))?;
            if size >= want {
                return Ok(size);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the server signed no checkpoint of {want} entries in 60 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// VmHWM (peak resident set) of a process, bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("bad VmHWM line")?;
    Ok(kib * 1024)
}

struct Bench {
    args: TransparencyArgs,
    scratch: ScratchDir,
    client: awc::Client,
}

impl Bench {
    /// 1. Appends with the tree and the signer against the same without them.
    async fn append(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let duration = Duration::from_secs(args.append_seconds);
        let dir = self.scratch.0.join("append");
        std::fs::create_dir_all(&dir)?;
        println!(
            "  {:<9} {:>5} {:<20} {:>10} {:>9} {:>9} {:>10}",
            "appenders", "run", "mode", "events/s", "p50", "p99", "mean batch"
        );
        let mut worst = f64::INFINITY;
        let mut summary = Vec::new();
        for &appenders in &args.appenders {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            let mut run = 0;
            for round in 0..args.rounds.max(1) {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for tree in order {
                    run += 1;
                    let path = crate::fresh_db(&dir, &format!("append-{appenders}-{run}.db"))?;
                    let opened = match tree {
                        true => {
                            Opened::open(
                                &path,
                                MerkleTree::Maintained,
                                Some(Duration::from_secs(1)),
                            )
                            .await?
                        }
                        false => Opened::open(&path, MerkleTree::Off, None).await?,
                    };
                    let figures: RunFigures =
                        run_appenders(&opened.log, appenders, duration).await?;
                    let (head, _) = opened.store.head().await?;
                    ensure!(
                        head == figures.events,
                        "{head} entries, {} acknowledged",
                        figures.events
                    );
                    if let Some(transparency) = &opened.transparency {
                        // The signer kept up: the last entry gets its checkpoint in time.
                        covered(transparency, head, Duration::from_secs(3)).await?;
                    }
                    let batches = opened.metrics.log_batch_events.get_sample_count().max(1);
                    let mean_batch =
                        opened.metrics.log_batch_events.get_sample_sum() / batches as f64;
                    println!(
                        "  {appenders:>9} {run:>5} {:<20} {:>10.0} {:>9.2?} {:>9.2?} {mean_batch:>10.1}",
                        if tree { "tree + checkpoints" } else { "no tree" },
                        figures.rate(),
                        figures.p50,
                        figures.p99,
                    );
                    if tree {
                        on.push(figures.rate());
                    } else {
                        off.push(figures.rate());
                    }
                    opened.close().await?;
                    crate::remove_db(&path)?;
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let ratio = mean(&on) / mean(&off).max(1e-9);
            worst = worst.min(ratio);
            println!(
                "  {appenders:>9} appenders: {:.0} events/s with the tree and checkpoints, {:.0} without: on/off {ratio:.3} (tree costs {:.1} %)",
                mean(&on),
                mean(&off),
                (1.0 - ratio) * 100.0
            );
            summary.push(format!("{appenders}: {ratio:.3}"));
        }
        Ok(target(
            "append on/off, worst appender count",
            format!("{worst:.3}"),
            ">= 0.90",
            worst >= 0.90,
        ) + &format!("   ({})", summary.join(", ")))
    }

    /// 2. Commit to covering checkpoint, at each interval.
    async fn checkpoint(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let dir = self.scratch.0.join("checkpoint");
        std::fs::create_dir_all(&dir)?;
        let per_append = args.events_per_append.max(1);
        let period = Duration::from_secs_f64(per_append as f64 / args.rate.max(1) as f64);
        let duration = Duration::from_secs(args.checkpoint_seconds);
        let mut lines = Vec::new();
        for &interval_ms in &args.intervals_ms {
            let interval = Duration::from_millis(interval_ms);
            let path = crate::fresh_db(&dir, &format!("checkpoint-{interval_ms}.db"))?;
            let opened = Opened::open(&path, MerkleTree::Maintained, Some(interval)).await?;
            let transparency = opened.transparency.clone().context("the signer")?;
            // Each publication as the watcher sees it: (size, when).
            let published: Rc<RefCell<Vec<(u64, Instant)>>> = Rc::default();
            let mut signed = transparency.watch_signed();
            let watcher = actix_web::rt::spawn({
                let published = published.clone();
                async move {
                    while signed.changed().await.is_ok() {
                        let size = *signed.borrow_and_update();
                        published.borrow_mut().push((size, Instant::now()));
                    }
                }
            });
            // Each append's last seq and when append() returned.
            let commits: Rc<RefCell<Vec<(u64, Instant)>>> = Rc::default();
            let mut tick = actix_web::rt::time::interval(period);
            let started = Instant::now();
            let mut appends = Vec::new();
            let mut n = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                let events = (0..per_append)
                    .map(|k| bench_event(&format!("cp{n}-{k}")))
                    .collect();
                n += 1;
                let (log, commits) = (opened.log.clone(), commits.clone());
                appends.push(actix_web::rt::spawn(async move {
                    let outcomes = log.append(events).await?;
                    let seq = outcomes.last().context("no outcome")?.seq();
                    commits.borrow_mut().push((seq, Instant::now()));
                    anyhow::Ok(())
                }));
            }
            for append in appends {
                append.await??;
            }
            let appending = started.elapsed();
            let head = commits.borrow().iter().map(|c| c.0).max().unwrap_or(0);
            let deadline = Instant::now() + interval * 3 + Duration::from_secs(2);
            while published.borrow().last().map_or(0, |p| p.0) < head && Instant::now() < deadline {
                actix_web::rt::time::sleep(Duration::from_millis(1)).await;
            }
            watcher.abort();
            let published = published.borrow().clone();
            let commits = commits.borrow().clone();
            let mut uncovered = 0;
            let mut before_return = 0;
            let mut latencies: Vec<Duration> = Vec::with_capacity(commits.len());
            for &(seq, at) in &commits {
                let first = published.partition_point(|p| p.0 < seq);
                match published.get(first) {
                    None => uncovered += 1,
                    Some(&(_, when)) => {
                        if when < at {
                            before_return += 1;
                        }
                        latencies.push(when.saturating_duration_since(at));
                    }
                }
            }
            latencies.sort_unstable();
            let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
            let max = latencies.last().copied().unwrap_or_default();
            let gaps: Vec<f64> = published.windows(2).map(|w| ms(w[1].1 - w[0].1)).collect();
            let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
            let ratio = p99.as_secs_f64() / interval.as_secs_f64();
            println!(
                "  interval {interval_ms} ms: {} appends of {per_append} ({:.0} events/s over {:.1} s), {} checkpoints (mean gap {mean_gap:.1} ms)",
                commits.len(),
                head as f64 / appending.as_secs_f64(),
                appending.as_secs_f64(),
                published.len(),
            );
            println!(
                "    commit → covering checkpoint: p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   p99/interval {ratio:.2}   ({uncovered} never covered, {before_return} covered before append() returned)",
                ms(p50),
                ms(p99),
                ms(max),
            );
            opened.close().await?;
            crate::remove_db(&path)?;
            lines.push(target(
                &format!("commit→checkpoint p99/interval, {interval_ms} ms"),
                format!("{ratio:.2}"),
                "<= 1.5",
                ratio <= 1.5 && uncovered == 0,
            ));
        }
        Ok(lines.join("\n"))
    }

    /// 3. Inclusion proofs and tiles against `GET /health` on one release server.
    async fn proofs(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let dir = self.scratch.0.join("proofs");
        std::fs::create_dir_all(&dir)?;
        let (filled, took) = fill(&dir.join("sy.db"), args.proof_entries, "p").await?;
        println!(
            "  filled {filled} entries in-process (tree maintained) in {:.1} s ({:.0} events/s)",
            took.as_secs_f64(),
            filled as f64 / took.as_secs_f64()
        );
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let server = common::start_switchyard(
            &args.server_bin,
            &dir,
            "proofs.bench",
            port,
            "",
            &[],
            &self.client,
        )
        .await?;
        let size = checkpoint_size(&self.client, &base, filled).await?;
        let tiles = size / 256;
        ensure!(tiles > 0, "no full tile in a tree of {size}");
        // One of each, checked, before the load.
        let mut answer = self
            .client
            .get(format!("{base}/api/v1/log/proof/inclusion?seq=1"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("inclusion proof: {e}"))?;
        ensure!(
            answer.status().is_success(),
            "inclusion proof: {}",
            answer.status()
        );
        let proof: Value = serde_json::from_slice(&answer.body().await?)?;
        ensure!(
            proof["tree_size"].as_u64() == Some(size)
                && proof["proof"].as_array().is_some_and(|p| !p.is_empty()),
            "unexpected inclusion proof {proof}"
        );
        let mut answer = self
            .client
            .get(format!("{base}/log/tile/0/{}", index_path(tiles - 1)))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("tile: {e}"))?;
        let tile = answer.body().limit(1 << 20).await?;
        ensure!(
            tile.len() == 256 * 32,
            "a full tile of {} bytes",
            tile.len()
        );
        println!(
            "  release server proofs.bench on that database: checkpoint of {size} entries, {tiles} full level-0 tiles, {} s per route, {} connections",
            args.seconds, args.connections
        );
        let proof_path = move || {
            format!(
                "/api/v1/log/proof/inclusion?seq={}",
                rand::thread_rng().gen_range(1..=size)
            )
        };
        let tile_path = move || {
            format!(
                "/log/tile/0/{}",
                index_path(rand::thread_rng().gen_range(0..tiles))
            )
        };
        let health_path = || "/health".to_owned();
        // Uncounted: the reader's cache and the server's connections warm up.
        hammer(port, &proof_path, args.connections, Duration::from_secs(1)).await?;
        hammer(port, &tile_path, args.connections, Duration::from_secs(1)).await?;
        let seconds = Duration::from_secs(args.seconds);
        let pid = server.pid();
        let mut results: Vec<(String, Timing, f64)> = Vec::new();
        for (what, path) in [
            ("GET /health (ceiling)", &health_path as &dyn Fn() -> String),
            ("GET …/log/proof/inclusion?seq=<rnd>", &proof_path),
            ("GET /log/tile/0/<rnd N> (8 KiB)", &tile_path),
        ] {
            let cpu = process_cpu(pid);
            let timing = hammer(port, path, args.connections, seconds).await?;
            let cpu = process_cpu(pid).saturating_sub(cpu);
            let per = cpu.as_secs_f64() * 1e6 / timing.latencies.len().max(1) as f64;
            results.push((what.to_owned(), timing, per));
        }
        let health_rate = results[0].1.rate().max(1e-9);
        for (what, timing, per) in &mut results {
            let ratio = timing.rate() / health_rate;
            println!(
                "  {}   server CPU {per:.0} µs/request   {ratio:.2} of /health",
                timing.line(&format!("{what}, {} conns", args.connections), "requests")
            );
        }
        let (proofs, tiles_rate) = (results[1].1.rate(), results[2].1.rate());
        let failures: usize = results.iter().map(|r| r.1.failures).sum();
        drop(server);
        Ok(format!(
            "{}   ({:.2} of GET /health)\n{}",
            target(
                "inclusion proofs/s, 64 connections",
                format!("{proofs:.0}"),
                ">= 20000",
                proofs >= 20_000.0 && failures == 0,
            ),
            proofs / health_rate,
            format!(
                "  {:<40}{tiles_rate:>10.0}   ({:.2} of GET /health; no target)",
                "full tiles/s, 64 connections",
                tiles_rate / health_rate
            ),
        ))
    }

    /// 4. The whole log exported at each size, a fresh server each time.
    async fn export(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let dir = self.scratch.0.join("export");
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("sy.db");
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(600))
            .finish();
        let mut sizes = args.export_sizes.clone();
        sizes.sort_unstable();
        println!(
            "  {:>9} {:>10} {:>10} {:>8} {:>11} {:>12} {:>12}",
            "log head", "exported", "MiB", "s", "entries/s", "VmHWM before", "VmHWM after"
        );
        let mut peaks: Vec<(u64, u64)> = Vec::new();
        for size in sizes {
            let (filled, took) = fill(&db, size, "x").await?;
            let port = free_port()?;
            let base = format!("http://127.0.0.1:{port}");
            let server = common::start_switchyard(
                &args.server_bin,
                &dir,
                "export.bench",
                port,
                "",
                &[],
                &client,
            )
            .await?;
            let before = peak_rss(server.pid())?;
            let started = Instant::now();
            let mut response = client
                .get(format!("{base}/api/v1/audit/export?format=json"))
                .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GET /api/v1/audit/export: {e}"))?;
            if response.status() == awc::http::StatusCode::NOT_FOUND {
                println!("export: route not available");
                return Ok(target("export peak RSS", "-".into(), "flat", false)
                    + "   (route not available)");
            }
            ensure!(
                response.status().is_success(),
                "GET /api/v1/audit/export: {}",
                response.status()
            );
            let (mut bytes, mut newlines) = (0u64, 0u64);
            while let Some(chunk) = response.next().await {
                let chunk = chunk.map_err(|e| anyhow::anyhow!("export body: {e}"))?;
                bytes += chunk.len() as u64;
                newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            let elapsed = started.elapsed();
            let after = peak_rss(server.pid())?;
            drop(server);
            // `[`, then `\n{entry}` with commas between, then `\n]\n`: an entry per newline
            // but the last two (serde_json escapes newlines inside strings).
            let exported = newlines.saturating_sub(2);
            println!(
                "  {filled:>9} {exported:>10} {:>10.1} {:>8.2} {:>11.0} {:>9.1} MiB {:>8.1} MiB   (filled in {:.1} s)",
                mib(bytes),
                elapsed.as_secs_f64(),
                exported as f64 / elapsed.as_secs_f64(),
                mib(before),
                mib(after),
                took.as_secs_f64(),
            );
            ensure!(
                exported >= size,
                "the export held {exported} entries of a log of {filled}"
            );
            peaks.push((exported, after));
        }
        let (first, last) = (peaks.first().copied(), peaks.last().copied());
        let (Some((small, small_peak)), Some((large, large_peak))) = (first, last) else {
            return Ok(target("export peak RSS", "-".into(), "flat", false));
        };
        let ratio = large_peak as f64 / small_peak.max(1) as f64;
        Ok(target(
            &format!("export peak RSS {large} / {small} entries"),
            format!("{ratio:.2}x"),
            "<= 1.10x",
            ratio <= 1.10,
        ) + &format!(
            "   ({:.1} against {:.1} MiB)",
            mib(large_peak),
            mib(small_peak)
        ))
    }
}

pub async fn run(args: TransparencyArgs) -> anyhow::Result<()> {
    let needs_server = args
        .phases
        .iter()
        .any(|p| matches!(p, Phase::Proofs | Phase::Export));
    ensure!(
        !needs_server || args.server_bin.exists(),
        "{} does not exist: cargo build --release --bin switchyard",
        args.server_bin.display()
    );
    // Read by the servers started here (SWITCHYARD__SECTION__KEY overrides), set before any
    // other thread runs.
    std::env::set_var("SWITCHYARD__SERVER__ADMIN_TOKEN", ADMIN_TOKEN);
    let scratch = ScratchDir::create("transparency")?;
    println!(
        "transparency: SQLite (WAL, durability normal) in {}",
        scratch.0.display()
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let phases = args.phases.clone();
    let bench = Bench {
        args,
        scratch,
        client,
    };
    let mut targets = Vec::new();
    for phase in phases {
        let started = Instant::now();
        println!("{phase:?}:");
        targets.push(match phase {
            Phase::Append => bench.append().await?,
            Phase::Checkpoint => bench.checkpoint().await?,
            Phase::Proofs => bench.proofs().await?,
            Phase::Export => bench.export().await?,
        });
        println!(
            "  ({phase:?} took {:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    println!("targets:");
    for line in targets {
        println!("{line}");
    }
    Ok(())
}
