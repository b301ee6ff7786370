//! A cluster node's control loop: election, the lease, following the log (DESIGN §7).
//!
//! ```text
//!            ┌──────────── follower ────────────┐             ┌──────── leader ────────┐
//!  NOTIFY ──▶│ read events after the applied seq │  lock won   │ fence = epoch          │
//!  250 ms ──▶│ (pages of 1,000, chain checked),  │────────────▶│ commits fenced by it,  │
//!  kick   ──▶│ publish to this node's actors     │ bump epoch, │ NOTIFY once per commit │
//!            │ every ~1 s: try the lock; a lease │ read to the │ renew every ttl/3      │
//!            │ run out → terminate its session   │ head        │                        │
//!            └───────────────────────────────────┘◀────────────└────────────────────────┘
//!                                          epoch changed, lease not renewable, fence broken
//! ```
//!
//! One loop owns every transition, so promotion and demotion never race with the reader:
//! - **Promotion**: the advisory lock on the writer's connection, then the epoch bump on that
//!   connection (it waits for any commit of the old leader that holds the leader row), then
//!   the reader reads to the head — nobody else can commit any more — and only then the
//!   fence opens and the role turns to leader. The writer's publications continue exactly
//!   where the reader's ended.
//! - **Demotion**: the fence closes (queued appends fail with 503 and nothing more commits),
//!   the writer drains, the lock is released, and the reader continues from the last
//!   committed seq.
//! - **A hung leader** keeps its connection and so its lock; when its lease has run out on the
//!   database's clock, a follower terminates that database session (`pg_terminate_backend`),
//!   which releases the lock, and wins the next try.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, RwLock};

use super::metrics::ClusterMetrics;
use super::{NodeIdentity, Role};
use crate::core::chain::ChainHash;
use crate::store::cluster as db;
use crate::store::{EventLogHandle, Fence, Store, StoreError};
use crate::telemetry::Metrics;

/// Entries a follower reads per query.
const READ_PAGE: u64 = 1000;
/// How often a standby tries the leader's lock.
const STAND_INTERVAL: Duration = Duration::from_secs(1);
/// After deposing a stale leader, the lock is tried again this soon (the terminated session
/// releases it within milliseconds).
const RETRY_AFTER_DEPOSE: Duration = Duration::from_millis(100);

/// Who leads, as this node last read it.
#[derive(Clone, Debug)]
pub struct LeaderSeen {
    pub node_id: String,
    pub advertise_url: String,
    pub epoch: u64,
}

/// A node of the cluster: its identity, its role and how to reach the leader.
pub struct Node {
    pub identity: NodeIdentity,
    /// `cluster.internal_token`: what this node shows the leader when it forwards.
    pub(super) internal_token: String,
    store: Store,
    log: EventLogHandle,
    fence: Arc<Fence>,
    pub metrics: ClusterMetrics,
    app_metrics: Arc<Metrics>,
    poll: Duration,
    /// Read the log now (a NOTIFY arrived; a forwarded append was answered).
    kick: Notify,
    /// The last seq this node published (followers wait on it after forwarding).
    applied: watch::Sender<u64>,
    /// The last seq a NOTIFY announced (for the lag).
    announced: AtomicU64,
    leader: RwLock<Option<LeaderSeen>>,
    /// The hash of the last entry published from the reader, to check each page links on.
    last_hash: std::sync::Mutex<Option<(u64, ChainHash)>>,
    /// Set by a graceful stop: the loop stands for nothing any more.
    stopping: std::sync::atomic::AtomicBool,
    /// Tells the listener to end.
    halt: Notify,
    /// The leader renews its lease on a connection of its own (see `store::cluster::renew`).
    lease_conn: tokio::sync::OnceCell<crate::store::writer::WriterConnection>,
}

impl Node {
    /// Starts the node's loop and its NOTIFY listener on a thread of their own; the log's
    /// appends go through [`super::forward`] while this node does not lead.
    pub fn start(
        identity: NodeIdentity,
        internal_token: String,
        poll: Duration,
        store: Store,
        log: EventLogHandle,
        fence: Arc<Fence>,
        app_metrics: Arc<Metrics>,
    ) -> Result<NodeGuard, prometheus::Error> {
        let metrics = ClusterMetrics::register(app_metrics.registry())?;
        let head = log.committed_head();
        metrics.applied_seq.set(head as i64);
        let node = Arc::new(Node {
            identity,
            internal_token,
            store,
            log: log.clone(),
            fence,
            metrics,
            app_metrics,
            poll,
            kick: Notify::new(),
            applied: watch::channel(head).0,
            announced: AtomicU64::new(head),
            leader: RwLock::new(None),
            last_hash: std::sync::Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            halt: Notify::new(),
            lease_conn: tokio::sync::OnceCell::new(),
        });
        log.set_forwarder(Arc::new(super::forward::Forwarding::start(Arc::downgrade(
            &node,
        ))));
        let arbiter = actix::Arbiter::new();
        arbiter.spawn({
            let node = node.clone();
            async move {
                let listener = actix_rt::spawn(node.clone().listen());
                node.run().await;
                // Stopped: the listener ends inside the runtime (its connection goes back to
                // the pool through a task), then the thread ends, and with it the hold of
                // both on the node (its pools and its clone of the log).
                node.halt.notify_one();
                let _ = listener.await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                actix::Arbiter::current().stop();
            }
        });
        tracing::info!(node_id = %node.identity.node_id, advertise_url = %node.identity.advertise_url, "cluster node started as a follower");
        Ok(NodeGuard(node))
    }

    pub fn log(&self) -> &EventLogHandle {
        &self.log
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub fn role(&self) -> Role {
        *self.log.role().borrow()
    }

    /// Who leads, as last read (refreshed about once a second, and on demand).
    pub async fn leader(&self) -> Option<LeaderSeen> {
        self.leader.read().await.clone()
    }

    /// Reads the leader row now (a forward found no leader where it looked).
    pub async fn refresh_leader(&self) -> Option<LeaderSeen> {
        match db::leader(&self.store).await {
            Ok(Some(row)) => self.note_leader(&row).await,
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, "cannot read the cluster's leader");
                None
            }
        }
    }

    async fn note_leader(&self, row: &db::LeaderRow) -> Option<LeaderSeen> {
        self.metrics.epoch.set(row.epoch);
        let seen = match (&row.node_id, &row.advertise_url) {
            (Some(node_id), Some(url)) if row.lease_until_ms >= row.now_ms => Some(LeaderSeen {
                node_id: node_id.clone(),
                advertise_url: url.clone(),
                epoch: row.epoch as u64,
            }),
            _ => None,
        };
        *self.leader.write().await = seen.clone();
        seen
    }

    /// Waits until this node has published `seq` (or `limit` passed): a caller answered after
    /// a forwarded commit then reads its own write on this node.
    pub async fn applied(&self, seq: u64, limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        if *applied.borrow() >= seq {
            return true;
        }
        self.kick.notify_one();
        tokio::time::timeout(limit, applied.wait_for(|a| *a >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Receives the leader's `NOTIFY`s and wakes the loop. A notification lost while the
    /// listener reconnects only delays a read until the next poll.
    async fn listen(self: Arc<Node>) {
        use sea_orm::sqlx::postgres::PgListener;
        let pool = self.store.pg_pool();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for the log's notifications; polling");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(error) = listener.listen("switchyard_log").await {
                tracing::warn!(%error, "cannot LISTEN for the log's notifications; polling");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                let received = tokio::select! {
                    received = listener.recv() => received,
                    _ = self.halt.notified() => return,
                };
                match received {
                    Ok(note) => {
                        if let Some(last) = note
                            .payload()
                            .split_once('-')
                            .and_then(|(_, last)| last.parse::<u64>().ok())
                        {
                            self.announced.fetch_max(last, Ordering::Relaxed);
                        }
                        self.kick.notify_one();
                    }
                    Err(error) => {
                        tracing::debug!(%error, "the log's notification listener reconnects");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Stops the loop and the listener (the application is gone: its last owner dropped the
    /// node's guard). A leader's lock goes with its connection.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.kick.notify_one();
        self.fence.lost_signal.notify_one();
    }

    /// The loop: follow and stand for election, or lead and renew.
    async fn run(self: &Arc<Node>) {
        let lease_ttl = self.identity.lease_ttl;
        let renew_every = lease_ttl / 3;
        let mut next_stand = Instant::now();
        let mut next_beat = Instant::now();
        let mut renewed = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if now >= next_beat {
                self.beat().await;
                next_beat = now + renew_every;
            }
            match self.role() {
                Role::Leader { epoch } => {
                    let renewal = match self
                        .lease_conn
                        .get_or_try_init(|| db::lease_connection(&self.store))
                        .await
                    {
                        Ok(conn) => db::renew(conn, epoch, lease_ttl.as_millis() as i64).await,
                        Err(error) => Err(error),
                    };
                    match renewal {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => {
                            self.step_down("another node leads now").await;
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot renew the leader's lease");
                            if renewed.elapsed() >= lease_ttl {
                                self.step_down("the lease could not be renewed in time")
                                    .await;
                                continue;
                            }
                        }
                    }
                    if self.fence.epoch().is_none() {
                        self.step_down("a commit found the fence broken").await;
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(renew_every) => {}
                        _ = self.fence.lost_signal.notified() => {}
                    }
                }
                Role::Follower | Role::Single => {
                    self.follow().await;
                    if Instant::now() >= next_stand {
                        next_stand = Instant::now() + self.stand().await;
                        if self.role().writes() {
                            renewed = Instant::now();
                            continue;
                        }
                    }
                    let wait = self
                        .poll
                        .min(next_stand.saturating_duration_since(Instant::now()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.kick.notified() => {}
                    }
                }
            }
        }
    }

    /// One heartbeat into `cluster_nodes`, and the lag gauge.
    async fn beat(&self) {
        let role = self.role();
        let epoch = self.metrics.epoch.get().max(0) as u64;
        let applied = self.log.committed_head();
        if let Err(error) = db::heartbeat(
            &self.store,
            &self.identity.node_id,
            &self.identity.advertise_url,
            role.as_str(),
            epoch,
            applied,
        )
        .await
        {
            tracing::warn!(%error, "cannot record this node's heartbeat");
        }
    }

    /// Tries to lead; when a leader's lease has run out with its lock still held, deposes it.
    /// Returns when to stand again.
    async fn stand(&self) -> Duration {
        let Some(conn) = self.log.writer().connection() else {
            return STAND_INTERVAL;
        };
        if conn.in_transaction() {
            // A commit from before a step-down is still running (or hung) on the writer's
            // connection: taking the lock between its statements would be taking it inside
            // that transaction. Try again later.
            return STAND_INTERVAL;
        }
        match db::try_lock(conn).await {
            Ok(true) => {
                if let Err(error) = self.promote(conn).await {
                    tracing::warn!(%error, "won the leader's lock but could not take the lead");
                    self.fence.set(None);
                    db::unlock(conn).await;
                }
                return STAND_INTERVAL;
            }
            Ok(false) => {}
            Err(error) => {
                // The writer's connection is replaced before the next try if it was lost.
                tracing::warn!(%error, "cannot try the leader's lock; trying again");
                return STAND_INTERVAL;
            }
        }
        let row = match db::leader(&self.store).await {
            Ok(Some(row)) => row,
            Ok(None) => return STAND_INTERVAL,
            Err(error) => {
                tracing::debug!(%error, "cannot read the cluster's leader");
                return STAND_INTERVAL;
            }
        };
        self.note_leader(&row).await;
        if row.lease_until_ms >= row.now_ms {
            // Look again just after the lease would run out, if that comes before the next
            // regular try: a hung leader is replaced as soon as its lease allows.
            let remaining = Duration::from_millis((row.lease_until_ms - row.now_ms) as u64);
            return STAND_INTERVAL.min(remaining + Duration::from_millis(20));
        }
        if row.backend_pid.is_none() {
            return STAND_INTERVAL;
        }
        match db::depose(&self.store, row.epoch).await {
            Ok(true) => {
                self.metrics.deposed.inc();
                tracing::warn!(
                    leader = row.node_id.as_deref().unwrap_or("?"),
                    epoch = row.epoch,
                    overdue_ms = row.now_ms - row.lease_until_ms,
                    "the leader's lease ran out with its lock held: terminated its database session"
                );
                RETRY_AFTER_DEPOSE
            }
            Ok(false) => STAND_INTERVAL,
            Err(error) => {
                tracing::warn!(%error, "cannot terminate a stale leader's session");
                STAND_INTERVAL
            }
        }
    }

    /// Takes the lead after winning the lock (see the module's doc for the order).
    async fn promote(
        &self,
        conn: &crate::store::writer::WriterConnection,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let epoch = db::bump_epoch(
            conn,
            &self.identity.node_id,
            &self.identity.advertise_url,
            self.identity.lease_ttl.as_millis() as i64,
        )
        .await?;
        // Nobody else can commit now: whatever the old leader committed is visible, and is
        // published here before this node's own commits.
        self.follow_to_head().await?;
        self.fence.set(Some(epoch));
        crate::store::tree::catch_up(&self.store, self.log.writer()).await?;
        self.log.reset_head().await;
        self.log.set_role(Role::Leader { epoch });
        self.applied.send_replace(self.log.committed_head());
        self.metrics.leader.set(1);
        self.metrics.lag_events.set(0);
        self.metrics.epoch.set(epoch as i64);
        self.metrics.elections_won.inc();
        *self.leader.write().await = Some(LeaderSeen {
            node_id: self.identity.node_id.clone(),
            advertise_url: self.identity.advertise_url.clone(),
            epoch,
        });
        tracing::info!(
            node_id = %self.identity.node_id,
            epoch,
            head = self.log.committed_head(),
            took_ms = started.elapsed().as_millis() as u64,
            "this node leads the cluster"
        );
        self.beat().await;
        if self.stopping.load(Ordering::Acquire) {
            // A graceful stop came while this node was taking the lead.
            self.step_down("this node is stopping").await;
        }
        Ok(())
    }

    /// Stops leading: nothing more commits here, the writer drains (its queued appends are
    /// answered 503), the lock goes, and the reader takes over from the committed head.
    async fn step_down(&self, why: &str) {
        self.fence.set(None);
        self.log.set_role(Role::Follower);
        // Bounded: a writer stuck on a connection that no longer answers must not stop this
        // loop from following (its commit fails the fence when it wakes anyway).
        let drained = tokio::time::timeout(self.identity.lease_ttl, self.log.drain())
            .await
            .is_ok();
        self.applied.send_replace(self.log.committed_head());
        match drained {
            true => {
                if let Some(conn) = self.log.writer().connection() {
                    db::unlock(conn).await;
                }
            }
            // Its statement holds the connection: waiting to unlock would hang this loop on
            // it too. The lock goes with the connection (or with the writer's next failed
            // fence, which takes a fresh one).
            false => tracing::warn!("the writer did not drain within a lease; following anyway"),
        }
        *self.leader.write().await = None;
        *self.last_hash.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.leader.set(0);
        self.metrics.stepped_down.inc();
        if self.stopping.load(Ordering::Acquire) {
            tracing::info!(node_id = %self.identity.node_id, "this node hands over the lead: it is stopping");
        } else {
            tracing::warn!(node_id = %self.identity.node_id, why, "this node no longer leads; following");
        }
        self.beat().await;
    }

    /// Reads and publishes what the leader committed since the applied head, until caught up.
    async fn follow(&self) {
        if let Err(error) = self.follow_to_head().await {
            tracing::warn!(%error, "cannot read the log's new entries; retrying");
        }
    }

    async fn follow_to_head(&self) -> Result<(), StoreError> {
        loop {
            let after = self.log.committed_head();
            let entries = self.store.read_after(after, READ_PAGE).await?;
            let Some(first) = entries.first() else {
                self.metrics
                    .lag_events
                    .set(self.announced.load(Ordering::Relaxed).saturating_sub(after) as i64);
                return Ok(());
            };
            if first.seq != after + 1 {
                // Never skip: with one writer committing one transaction at a time this
                // cannot happen, so say so loudly; the next read tries again.
                tracing::error!(
                    applied = after,
                    next_found = first.seq,
                    "the log has a hole after the applied seq; not following past it"
                );
                return Ok(());
            }
            {
                let mut last = self.last_hash.lock().unwrap_or_else(|e| e.into_inner());
                let mut expected = last.filter(|(seq, _)| *seq == after).map(|(_, h)| h);
                for entry in &entries {
                    if expected.is_some_and(|h| h != entry.prev_hash) {
                        return Err(StoreError::Corrupt {
                            seq: entry.seq as i64,
                            problem: "its prev_hash does not link to the entry before it".into(),
                        });
                    }
                    expected = Some(entry.entry_hash);
                }
                if let (Some(hash), Some(entry)) = (expected, entries.last()) {
                    *last = Some((entry.seq, hash));
                }
            }
            let count = entries.len() as u64;
            let head = after + count;
            self.log.publish_followed(entries);
            self.applied.send_replace(head);
            self.announced.fetch_max(head, Ordering::Relaxed);
            self.metrics.applied_seq.set(head as i64);
            self.app_metrics.log_head_seq.set(head as i64);
            if count < READ_PAGE {
                self.metrics
                    .lag_events
                    .set(self.announced.load(Ordering::Relaxed).saturating_sub(head) as i64);
                return Ok(());
            }
        }
    }

    /// A graceful stop: the lead is released at once (another node takes it within about a
    /// second instead of a lease), and the node is marked stopped.
    pub async fn leave(&self) {
        self.stop();
        if self.role().writes() {
            self.step_down("this node is stopping").await;
        }
        if let Err(error) = db::leave(&self.store, &self.identity.node_id).await {
            tracing::warn!(%error, "cannot mark this node stopped");
        }
    }
}

/// Owns a node's loop: dropping it (the application is gone) stops the loop, so the node's
/// database connections close with the application that used them.
pub struct NodeGuard(pub Arc<Node>);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}
