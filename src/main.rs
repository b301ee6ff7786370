//! The `switchyard` command line: parse, load the configuration, call into the library.
//!
//! Exit codes: 0 success; 1 failure at run time (database unreachable, chain broken, replay
//! differs); 2 invalid configuration or usage.

/// mimalloc: the log writer, the database worker and the HTTP workers hand buffers to one
/// another, which glibc's allocator serialises on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use switchyard::app::Application;
use switchyard::config::{Config, DatabaseConfig};
use switchyard::error::chain;
use switchyard::federation::keys::rotation::{open_key_ring, rotate};
use switchyard::federation::signing::{unb64, ServerKey};
use switchyard::identity::server_certs::ServerCerts;
use switchyard::store::{EventLog, Store};
use switchyard::telemetry::{self, Metrics};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A federation router for community chat"
)]
struct Cli {
    /// The configuration file (TOML); SWITCHYARD__SECTION__KEY variables override it.
    #[arg(
        long,
        global = true,
        default_value = "config/default.toml",
        env = "SWITCHYARD_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (migrates the database first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Rebuild every projection from the log into a fresh database and compare with the live one.
    Replay {
        /// Database to rebuild into; must be empty. Default: a temporary in-memory SQLite.
        #[arg(long, default_value = "sqlite::memory:")]
        into: String,
    },
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage the server signing key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Replace the signing key; the old one is listed in old_verify_keys with its expired_ts.
    /// Run it with the server stopped; a running server rotates with POST /admin/v1/keys/rotate.
    Rotate,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Walk the hash chain, recompute the Merkle tree and check both against the latest
    /// checkpoint and its signature; report every problem and exit 1 if there is one.
    Verify,
    /// Print a C2SP tlog-proof@v1 of entry `seq` against the latest checkpoint.
    Proof {
        #[arg(long)]
        seq: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("switchyard: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.log);
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Replay { into } => replay(config, into).await,
            Command::Log {
                command: LogCommand::Verify,
            } => verify(config).await,
            Command::Log {
                command: LogCommand::Proof { seq },
            } => proof(config, seq).await,
            Command::Keys {
                command: KeysCommand::Rotate,
            } => rotate_keys(config).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchyard: {}", chain(error.as_ref()));
            ExitCode::from(1)
        }
    }
}

type CommandResult = Result<ExitCode, Box<dyn std::error::Error>>;

async fn serve(config: Config) -> CommandResult {
    // Registered before anything starts, so a SIGTERM that arrives during start-up is a
    // graceful stop too, not the default kill.
    let shutdown = ShutdownSignal::install()?;
    let app = Application::build(config).await?;
    let stop = app.shutdown();
    actix_web::rt::spawn(async move {
        shutdown.recv().await;
        tracing::info!(
            "shutdown requested: closing sockets (4000), finishing in-flight requests, then draining the log"
        );
        stop.stop().await;
    });
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for from the moment it is installed.
struct ShutdownSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> std::io::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignal {})
        }
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn open(config: &Config) -> Result<Store, Box<dyn std::error::Error>> {
    let store = Store::connect(&config.database, config.storage.durability).await?;
    store.migrate().await?;
    Ok(store)
}

async fn migrate(config: Config) -> CommandResult {
    open(&config).await?.close().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn replay(config: Config, into: String) -> CommandResult {
    let live = open(&config).await?;
    let target_config = DatabaseConfig {
        url: into,
        ..config.database.clone()
    };
    let target = Store::connect(&target_config, config.storage.durability).await?;
    target.migrate().await?;
    let report = live.replay_into(&target).await?;
    println!("replayed {} log entries", report.events);
    for table in &report.tables {
        match &table.first_difference {
            None => println!("  {:<20} identical ({} rows)", table.table, table.live_rows),
            Some(diff) => println!(
                "  {:<20} DIFFERS (live {} rows, rebuilt {} rows); first difference: {diff}",
                table.table, table.live_rows, table.rebuilt_rows
            ),
        }
    }
    let identical = report.identical();
    println!(
        "{}",
        if identical {
            "projections are identical"
        } else {
            "projections differ"
        }
    );
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn rotate_keys(config: Config) -> CommandResult {
    let store = open(&config).await?;
    let keys = open_key_ring(&config.keys.path, &config.server.name, &store).await?;
    let metrics = std::sync::Arc::new(Metrics::new()?);
    let log = EventLog::start(
        &store,
        config.storage.max_batch_events,
        config.storage.publish_buffer,
        metrics,
    )
    .await?;
    let rotated = rotate(&keys, &log, &store, &config.server.name).await?;
    let certs = ServerCerts::load(&store, &config.server.name, config.keys.idcert_lifetime).await?;
    let cert = certs.ensure_current(&keys, &log).await;
    log.drain().await;
    println!(
        "rotated: {} is the signing key now; {} expired at {}",
        rotated.new_key_id, rotated.old_key_id, rotated.expired_ts
    );
    println!("issued root ID-Cert serial {}", cert?.serial);
    Ok(ExitCode::SUCCESS)
}

/// The public keys the log may be signed with: the key file's and the retired ones.
async fn log_keys(
    config: &Config,
    store: &Store,
) -> Result<Vec<[u8; 32]>, Box<dyn std::error::Error>> {
    let mut keys = Vec::new();
    if config.keys.path.exists() {
        keys.push(
            ServerKey::load(&config.keys.path)?
                .verifying_key()
                .to_bytes(),
        );
    }
    for retired in store.retired_server_keys().await? {
        if let Some(key) = unb64(&retired.public_key).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

async fn verify(config: Config) -> CommandResult {
    let store = open(&config).await?;
    let origin = format!("{}/log", config.server.name);
    let report = store
        .verify_log(&origin, &log_keys(&config, &store).await?)
        .await?;
    let chain = &report.chain;
    match &chain.first_bad {
        None => println!("chain ok: {} entries, head {}", chain.verified, chain.head),
        Some(bad) => println!(
            "chain broken at seq {}: {} ({} entries verified before it)",
            bad.seq, bad.problem, chain.verified
        ),
    }
    match report.checkpoint_size {
        Some(size) if report.valid() => println!(
            "tree ok: recomputed from the entries and read from the tiles, both match the signed checkpoint of size {size}"
        ),
        Some(_) => {}
        None => println!("no checkpoint yet: nothing to check the tree against"),
    }
    for error in &report.errors {
        if chain.first_bad.is_none() {
            println!("{error}");
        }
    }
    Ok(if report.valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn proof(config: Config, seq: u64) -> CommandResult {
    let store = open(&config).await?;
    let Some(published) = switchyard::transparency::load_latest(&store).await? else {
        eprintln!("no checkpoint yet: the log has no entries, or the server has not signed one");
        return Ok(ExitCode::from(1));
    };
    let reader = switchyard::transparency::TreeReader::new(store.clone());
    match switchyard::transparency::tlog_proof(&reader, &published, seq).await {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(switchyard::transparency::TransparencyError::OutOfRange(message)) => {
            eprintln!("{message}");
            Ok(ExitCode::from(1))
        }
        Err(other) => Err(other.into()),
    }
}
