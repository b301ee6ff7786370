//! The metrics of a cluster node (registered only when `cluster.enabled`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct ClusterMetrics {
    /// 1 while this node is the leader, 0 while it follows.
    pub leader: IntGauge,
    /// The epoch this node last saw (as leader: the one its commits are fenced by).
    pub epoch: IntGauge,
    /// The last `seq` this node has applied (published to its own actors and caches).
    pub applied_seq: IntGauge,
    /// Entries committed but not yet applied here, as of the last read of the head.
    pub lag_events: IntGauge,
    /// Appends this node forwarded to the leader, by outcome: ok, unavailable, refused.
    pub forwarded: IntCounterVec,
    /// Time from forwarding an append to the leader's answer.
    pub forward_seconds: Histogram,
    /// Times this node became the leader.
    pub elections_won: IntCounter,
    /// Times this node stopped leading (deposed, lease lost, connection lost).
    pub stepped_down: IntCounter,
    /// Stale leaders this node terminated (their lease had expired with the lock held).
    pub deposed: IntCounter,
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let metrics = ClusterMetrics {
            leader: IntGauge::new(
                "cluster_leader",
                "1 while this node is the cluster's leader (the one writer), 0 while it follows",
            )?,
            epoch: IntGauge::new("cluster_epoch", "The leader epoch this node last saw")?,
            applied_seq: IntGauge::new(
                "cluster_applied_seq",
                "The last log seq this node has applied to its actors and caches",
            )?,
            lag_events: IntGauge::new(
                "cluster_lag_events",
                "Log entries committed but not yet applied on this node",
            )?,
            forwarded: IntCounterVec::new(
                Opts::new(
                    "cluster_forwarded_appends_total",
                    "Appends forwarded to the leader, by outcome",
                ),
                &["outcome"],
            )?,
            forward_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_forward_seconds",
                    "Time from forwarding an append to the leader's answer",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            elections_won: IntCounter::new(
                "cluster_elections_won_total",
                "Times this node became the leader",
            )?,
            stepped_down: IntCounter::new(
                "cluster_stepped_down_total",
                "Times this node stopped leading",
            )?,
            deposed: IntCounter::new(
                "cluster_deposed_total",
                "Stale leaders this node terminated after their lease expired",
            )?,
        };
        registry.register(Box::new(metrics.leader.clone()))?;
        registry.register(Box::new(metrics.epoch.clone()))?;
        registry.register(Box::new(metrics.applied_seq.clone()))?;
        registry.register(Box::new(metrics.lag_events.clone()))?;
        registry.register(Box::new(metrics.forwarded.clone()))?;
        registry.register(Box::new(metrics.forward_seconds.clone()))?;
        registry.register(Box::new(metrics.elections_won.clone()))?;
        registry.register(Box::new(metrics.stepped_down.clone()))?;
        registry.register(Box::new(metrics.deposed.clone()))?;
        Ok(metrics)
    }
}
