//! Logs and metrics.
//!
//! Logs: `tracing` with the text or JSON formatter (`[log]`). Metrics: a Prometheus registry
//! owned by each application instance (no process-global state, so several instances can run
//! in one test process), rendered in the Prometheus text format at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides `log.level`.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init_logging(config: &LogConfig) {
    // The migrator's per-step lines and PostgreSQL's notices ("relation … already exists,
    // skipping" at every start) say nothing an operator acts on: warnings only, unless
    // RUST_LOG asks for them.
    const QUIET: &str = "sea_orm_migration=warn,sqlx::postgres::notice=warn";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},{QUIET}", config.level)))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Every metric of one Switchyard instance.
pub struct Metrics {
    registry: Registry,
    /// Events per group commit.
    pub log_batch_events: Histogram,
    /// Time from an append's arrival at the writer to its acknowledgement.
    pub log_append_seconds: Histogram,
    /// Time of one group-commit transaction.
    pub log_commit_seconds: Histogram,
    pub log_events_appended: IntCounterVec,
    pub log_duplicates: IntCounter,
    pub log_commit_failures: IntCounter,
    pub log_head_seq: IntGauge,
    /// The size of the latest signed checkpoint.
    pub log_checkpoint_size: IntGauge,
    pub log_checkpoint_failures: IntCounter,
    /// Checkpoints refused as forks of one we cosigned (DESIGN §2.5).
    pub witness_equivocations: IntCounterVec,
    /// Checkpoints we pushed to witnesses, by witness and result.
    pub witness_pushes: IntCounterVec,
    /// Notary answers by how they were served: cache_hit, fetched, stale, unknown.
    pub notary_requests: IntCounterVec,
    /// Notary fetches from origins by result: ok, unreachable, invalid.
    pub notary_fetches: IntCounterVec,
    /// Inbox requests by answer: `ok` or the errcode.
    pub inbox_requests: IntCounterVec,
    /// Inbox events by authenticated origin and result: accepted, duplicate, rejected,
    /// limited (refused by the origin's quota).
    pub inbox_events: IntCounterVec,
    /// Log entries after each destination's delivery cursor (set when /metrics is read).
    pub delivery_lag: IntGaugeVec,
    /// Events delivered and dead-lettered, per destination.
    pub delivery_events: IntCounterVec,
    /// Delivery leases this node holds (a cluster node; 0 on one node).
    pub delivery_leases_held: IntGauge,
    /// Delivery leases this node took, lost or released.
    pub delivery_lease_changes: IntCounterVec,
    /// Inbox request time, headers to answer.
    pub inbox_request_seconds: Histogram,
    /// Takes from the cluster's shared per-origin buckets (one database round trip each),
    /// by result: granted, short, failed. 0 on one node.
    pub inbox_bucket_refills: IntCounterVec,
    /// Unused allowances given back to the shared buckets (one round trip each).
    pub inbox_bucket_returns: IntCounter,
    /// Signatures per batch verification.
    pub verify_batch_size: Histogram,
    /// Open gateway WebSockets.
    pub gateway_sockets: IntGauge,
    /// Gateway handshakes refused by admission (503).
    pub gateway_handshakes_refused: IntCounter,
    /// Log pages read by replays older than the window of recent events.
    pub gateway_replay_reads: IntCounter,
    /// Database reads by socket start-ups (memberships, stored cursors).
    pub gateway_connect_reads: IntCounter,
    /// Replays (connect or Resume) by where their events came from: memory or log.
    pub gateway_replays: IntCounterVec,
    /// Gateway closes by close code.
    pub gateway_closes: IntCounterVec,
    /// Events handed to gateway sockets (live and replayed).
    pub gateway_deliveries: IntCounter,
    /// Time a Channel actor takes to hand one event to all its subscribers.
    pub gateway_fanout_seconds: Histogram,
    /// Fetches from actors' home servers (roots and certificates), by result: ok,
    /// unreachable, refused (not a public address), untrusted (the home said no).
    pub identity_home_fetches: IntCounterVec,
    /// Foreign sign-ins (`POST /.p2/core/v1/session/auth`), by answer (ok or the errcode).
    pub identity_sign_ins: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchyard".into()), None)?;
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let log_batch_events = Histogram::with_opts(
            HistogramOpts::new("log_batch_events", "Events written per group commit")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
        )?;
        let log_append_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "log_append_seconds",
                "Append latency at the log writer, arrival to acknowledgement",
            )
            .buckets(latency_buckets.clone()),
        )?;
        let log_commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "log_commit_seconds",
                "Duration of one group-commit transaction",
            )
            .buckets(latency_buckets),
        )?;
        let log_events_appended = IntCounterVec::new(
            Opts::new(
                "log_events_appended_total",
                "Events appended to the log, by type",
            ),
            &["type"],
        )?;
        let log_duplicates = IntCounter::new(
            "log_duplicates_total",
            "Appends answered as duplicates of an existing (origin, event_id)",
        )?;
        let log_commit_failures = IntCounter::new(
            "log_commit_failures_total",
            "Group commits that failed and were rolled back",
        )?;
        let log_head_seq = IntGauge::new(
            "log_head_seq",
            "Sequence number of the newest committed entry",
        )?;
        let log_checkpoint_size = IntGauge::new(
            "log_checkpoint_size",
            "Tree size of the latest signed checkpoint",
        )?;
        let log_checkpoint_failures = IntCounter::new(
            "log_checkpoint_failures_total",
            "Checkpoints that could not be signed (retried)",
        )?;
        let witness_equivocations = IntCounterVec::new(
            Opts::new(
                "witness_equivocations_total",
                "Checkpoints refused as inconsistent with one we cosigned, by log origin",
            ),
            &["origin"],
        )?;
        let witness_pushes = IntCounterVec::new(
            Opts::new(
                "witness_pushes_total",
                "Our checkpoints pushed to witnesses, by witness and result",
            ),
            &["witness", "result"],
        )?;
        let notary_requests = IntCounterVec::new(
            Opts::new(
                "notary_requests_total",
                "Notary answers per queried server, by how they were served",
            ),
            &["outcome"],
        )?;
        let notary_fetches = IntCounterVec::new(
            Opts::new(
                "notary_fetches_total",
                "Key fetches from other servers, by result",
            ),
            &["result"],
        )?;
        let inbox_requests = IntCounterVec::new(
            Opts::new(
                "inbox_requests_total",
                "Federation inbox requests, by answer (ok or the errcode)",
            ),
            &["result"],
        )?;
        let inbox_events = IntCounterVec::new(
            Opts::new(
                "inbox_events_total",
                "Federation inbox events, by authenticated origin and result (accepted, duplicate, rejected, limited)",
            ),
            &["origin", "result"],
        )?;
        let delivery_lag = IntGaugeVec::new(
            Opts::new(
                "delivery_lag",
                "Log entries after each destination's delivery cursor",
            ),
            &["destination"],
        )?;
        let delivery_events = IntCounterVec::new(
            Opts::new(
                "delivery_events_total",
                "Outbound events per destination, by result (delivered, dead_lettered)",
            ),
            &["destination", "result"],
        )?;
        registry.register(Box::new(delivery_lag.clone()))?;
        registry.register(Box::new(delivery_events.clone()))?;
        let delivery_leases_held = IntGauge::new(
            "delivery_leases_held",
            "Delivery leases this cluster node holds",
        )?;
        let delivery_lease_changes = IntCounterVec::new(
            Opts::new(
                "delivery_lease_changes_total",
                "Delivery leases this node took (taken), lost while delivering (lost) or gave up for another node (released)",
            ),
            &["change"],
        )?;
        registry.register(Box::new(delivery_leases_held.clone()))?;
        registry.register(Box::new(delivery_lease_changes.clone()))?;
        let inbox_request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "inbox_request_seconds",
                "Federation inbox request time, from headers to answer",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
        )?;
        let inbox_bucket_refills = IntCounterVec::new(
            Opts::new(
                "inbox_bucket_refills_total",
                "Takes of tokens from the cluster's shared per-origin buckets (database round trips), by result (granted, short, failed)",
            ),
            &["result"],
        )?;
        let inbox_bucket_returns = IntCounter::new(
            "inbox_bucket_returns_total",
            "Unused tokens given back to the cluster's shared per-origin buckets (database round trips)",
        )?;
        registry.register(Box::new(inbox_bucket_refills.clone()))?;
        registry.register(Box::new(inbox_bucket_returns.clone()))?;
        let verify_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "verify_batch_size",
                "Signatures checked per batch verification",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 8)?),
        )?;
        let gateway_sockets = IntGauge::new("gateway_sockets", "Open gateway WebSockets")?;
        let gateway_replays = IntCounterVec::new(
            Opts::new(
                "gateway_replays_total",
                "Gateway replays by source: memory (the recent window) or log (database pages)",
            ),
            &["source"],
        )?;
        let gateway_replay_reads = IntCounter::new(
            "gateway_replay_reads_total",
            "Pages of the log read for gateway replays older than the recent window",
        )?;
        let gateway_connect_reads = IntCounter::new(
            "gateway_connect_reads_total",
            "Database reads by gateway start-ups and resumes (memberships, the stored cursor)",
        )?;
        let gateway_handshakes_refused = IntCounter::new(
            "gateway_handshakes_refused_total",
            "Gateway handshakes refused by admission (503 with Retry-After)",
        )?;
        let gateway_closes = IntCounterVec::new(
            Opts::new(
                "gateway_closes_total",
                "Gateway WebSocket closes by close code",
            ),
            &["code"],
        )?;
        let gateway_deliveries = IntCounter::new(
            "gateway_deliveries_total",
            "Events handed to gateway sockets, live and replayed",
        )?;
        let gateway_fanout_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_fanout_seconds",
                "Time a Channel actor takes to hand one event to all its local subscribers",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        )?;
        let identity_home_fetches = IntCounterVec::new(
            Opts::new(
                "identity_home_fetches_total",
                "Fetches from actors' home servers (roots, certificates), by result (ok, unreachable, refused, untrusted)",
            ),
            &["result"],
        )?;
        let identity_sign_ins = IntCounterVec::new(
            Opts::new(
                "identity_sign_ins_total",
                "Foreign sign-ins by key trial, by answer (ok or the errcode)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(identity_home_fetches.clone()))?;
        registry.register(Box::new(identity_sign_ins.clone()))?;
        registry.register(Box::new(gateway_sockets.clone()))?;
        registry.register(Box::new(gateway_closes.clone()))?;
        registry.register(Box::new(gateway_deliveries.clone()))?;
        registry.register(Box::new(gateway_fanout_seconds.clone()))?;
        registry.register(Box::new(inbox_requests.clone()))?;
        registry.register(Box::new(inbox_events.clone()))?;
        registry.register(Box::new(inbox_request_seconds.clone()))?;
        registry.register(Box::new(verify_batch_size.clone()))?;
        registry.register(Box::new(notary_requests.clone()))?;
        registry.register(Box::new(notary_fetches.clone()))?;
        registry.register(Box::new(log_batch_events.clone()))?;
        registry.register(Box::new(log_append_seconds.clone()))?;
        registry.register(Box::new(log_commit_seconds.clone()))?;
        registry.register(Box::new(log_events_appended.clone()))?;
        registry.register(Box::new(log_duplicates.clone()))?;
        registry.register(Box::new(log_commit_failures.clone()))?;
        registry.register(Box::new(log_head_seq.clone()))?;
        registry.register(Box::new(log_checkpoint_size.clone()))?;
        registry.register(Box::new(gateway_handshakes_refused.clone()))?;
        registry.register(Box::new(gateway_replay_reads.clone()))?;
        registry.register(Box::new(gateway_connect_reads.clone()))?;
        registry.register(Box::new(gateway_replays.clone()))?;
        registry.register(Box::new(log_checkpoint_failures.clone()))?;
        registry.register(Box::new(witness_equivocations.clone()))?;
        registry.register(Box::new(witness_pushes.clone()))?;
        Ok(Metrics {
            registry,
            log_batch_events,
            log_append_seconds,
            log_commit_seconds,
            log_events_appended,
            log_duplicates,
            log_commit_failures,
            log_head_seq,
            log_checkpoint_size,
            log_checkpoint_failures,
            witness_equivocations,
            witness_pushes,
            notary_requests,
            inbox_requests,
            inbox_events,
            delivery_lag,
            delivery_events,
            delivery_leases_held,
            delivery_lease_changes,
            inbox_request_seconds,
            inbox_bucket_refills,
            inbox_bucket_returns,
            verify_batch_size,
            notary_fetches,
            gateway_sockets,
            gateway_handshakes_refused,
            gateway_replay_reads,
            gateway_connect_reads,
            gateway_replays,
            gateway_closes,
            gateway_deliveries,
            gateway_fanout_seconds,
            identity_home_fetches,
            identity_sign_ins,
        })
    }

    /// The Prometheus text exposition of every metric.
    /// The registry, for the metrics of a subsystem that owns its own (see
    /// `cluster::ClusterMetrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
