//! The `EventLog` actor: the single writer of the `events` table, with group commit.
//!
//! ```text
//!  callers (any thread)                     EventLog actor (one, on its own arbiter)
//!  ─────────────────────                    ─────────────────────────────────────────
//!  EventLogHandle::append(events)
//!    prepare: check ids, type, content,
//!    canonical JSON, projection ops   ──Append──▶ queue ──┐ (while a commit runs, appends
//!                                                         │  pile up in the queue)
//!                                                         ▼
//!                                     take queued appends up to max_batch_events
//!                                     plan: assign seq head+1.., hash chain per entry
//!                                     ┌─ one transaction, on the writer's own connection ─┐
//!                                     │ multi-row INSERT events                           │
//!                                     │ apply projection ops in seq order                 │
//!                                     └─ COMMIT (one fsync in `full` mode) ───────────────┘
//!                                       a duplicate (origin, event_id) hits the unique
//!                                       index: ROLLBACK, look the batch's keys up, plan
//!                                       again without them, write (see `write_batch`)
//!                                     publish the batch (broadcast, never blocks)
//!                                     (SQLite writer: while a commit runs, the appends that
//!                                      arrive are planned on the head it will leave — the next
//!                                      batch is ready when it ends; a failed or duplicate-hit
//!                                      commit sends them back to be planned again)
//!    ◀────────── outcome ───────────  answer every caller of the batch
//!                                     next batch = everything that queued meanwhile
//! ```
//!
//! Invariants:
//! - a caller is answered only after the transaction holding its events committed;
//! - `seq` is gap-free: it is assigned here, one batch at a time, and a failed transaction
//!   assigns nothing (the head is re-read from the database before the next batch);
//! - one append is never split across transactions: its events commit together or not at all;
//! - appends are idempotent on `(origin, event_id)`: a repeat is answered with the first
//!   entry's `seq`, marked duplicate, and writes nothing;
//! - subscribers get committed batches through a bounded broadcast channel: a subscriber that
//!   falls behind loses the oldest batches (it is told how many) and re-reads them from the
//!   log by `seq`; the writer never waits for anyone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, SqlErr, Statement, Value};
use tokio::sync::{broadcast, oneshot};

use super::sqlite_thread::{Recorder, SqliteThread};
use super::writer::WriterConnection;
use super::{bulk, head_on, projections, tree, StoreError};
use crate::clock::now_ms;
use crate::core::chain::ChainHash;
use crate::core::event::{write_leaf_tail, EventError, LogEntry, NewEvent, PreparedEvent};
use crate::core::projection::{self, ProjectionOp};
use crate::core::tiles::{TileEdge, TileRow, MAX_LEAF_BYTES};
use crate::telemetry::Metrics;
use entities::events;

/// Rows per multi-row INSERT: 11 bind parameters each keeps a statement well under the
/// parameter limits of SQLite (32,766) and PostgreSQL (65,535).
const INSERT_CHUNK: usize = 1000;
/// Event ids per duplicate lookup.
const LOOKUP_CHUNK: usize = 500;
/// Appends the actor's mailbox holds before senders wait.
const MAILBOX_CAPACITY: usize = 4096;

/// How one event of an append ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        seq: u64,
    },
    /// The log already holds this `(origin, event_id)` at `seq`; nothing was written.
    Duplicate {
        seq: u64,
    },
}

impl AppendOutcome {
    pub fn seq(self) -> u64 {
        match self {
            AppendOutcome::Appended { seq } | AppendOutcome::Duplicate { seq } => seq,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The event at `index` of the append is invalid; nothing of the append was written.
    #[error("event {index} is invalid: {error}")]
    Invalid { index: usize, error: EventError },
    /// The transaction failed and was rolled back; nothing of the append was written.
    #[error("the log could not commit: {0}")]
    Storage(Arc<StoreError>),
    /// The writer has stopped (shutdown).
    #[error("the event log is not running")]
    Stopped,
}

/// A cluster node's fence (DESIGN §7): the epoch this node leads in, or none while it
/// follows. Set by the node's election loop (`cluster::node`); every transaction of the
/// writer checks it against the database (`WriterConnection::begin_fenced`).
#[derive(Default)]
pub struct Fence {
    /// The epoch, or -1 while this node does not lead.
    epoch: std::sync::atomic::AtomicI64,
    /// Woken when a commit finds the fence broken, so the election loop steps down at once.
    pub lost_signal: tokio::sync::Notify,
}

impl Fence {
    pub fn new() -> Fence {
        Fence {
            epoch: std::sync::atomic::AtomicI64::new(-1),
            lost_signal: tokio::sync::Notify::new(),
        }
    }

    pub fn epoch(&self) -> Option<u64> {
        u64::try_from(self.epoch.load(std::sync::atomic::Ordering::Acquire)).ok()
    }

    pub fn set(&self, epoch: Option<u64>) {
        let value = epoch.map_or(-1, |e| e as i64);
        self.epoch
            .store(value, std::sync::atomic::Ordering::Release);
    }

    /// A commit found another epoch in the database: stop committing now.
    pub(crate) fn lost(&self) {
        self.set(None);
        self.lost_signal.notify_one();
    }
}

/// Where a cluster follower sends its appends: the leader (`cluster::forward`).
pub trait Forwarder: Send + Sync {
    fn forward(
        &self,
        events: Vec<PreparedEvent>,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<AppendOutcome>, AppendError>>;
}

/// Where committed batches go: the broadcast to subscribers, and the committed head (set
/// before each batch is published).
#[derive(Clone)]
struct Published {
    batches: broadcast::Sender<Arc<CommittedBatch>>,
    committed: Arc<std::sync::atomic::AtomicU64>,
    /// Held from advancing `committed` to sending, so that a cluster node's two publishers
    /// (the writer, the follower's reader) send in seq order (uncontended on one node).
    order: Arc<std::sync::Mutex<()>>,
}

/// Events committed by one transaction, in `seq` order, as published to subscribers.
#[derive(Debug)]
pub struct CommittedBatch {
    pub entries: Vec<LogEntry>,
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, AppendError>>;

struct PendingAppend {
    events: Vec<PreparedEvent>,
    ops: Vec<Vec<ProjectionOp>>,
    reply: Reply,
    arrived: Instant,
}

/// Appends prepared events; answered through `reply` once committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Append {
    events: Vec<PreparedEvent>,
    ops: Vec<Vec<ProjectionOp>>,
    reply: Reply,
}

/// Answers once every append received so far has been committed (or failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    reply: oneshot::Sender<()>,
}

/// Where the log ends: the last entry and the right edge of the Merkle tree over it.
#[derive(Clone)]
struct Head {
    seq: u64,
    hash: ChainHash,
    /// `None` only for a log started without its tree ([`MerkleTree::Off`], benchmarks).
    tree: Option<TileEdge>,
}

/// Whether the writer maintains the Merkle tree. Always `Maintained` in the server: the tree
/// is part of the log's contract (DESIGN §2.1). `Off` exists so the log benchmark can measure
/// what the tree costs against the same run without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MerkleTree {
    Maintained,
    Off,
}

impl Head {
    fn take_tiles(&mut self) -> Vec<TileRow> {
        self.tree
            .as_mut()
            .map(TileEdge::take_changes)
            .unwrap_or_default()
    }
}

/// Two heads are the same log when their last entries are (the tree follows from them).
impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.seq == other.seq && self.hash == other.hash
    }
}

/// Where the log writes: a SQLite file through its own thread (one message per transaction),
/// or any other database through the writer's detached sqlx connection.
pub(crate) enum LogWriter {
    Sqlite {
        thread: SqliteThread,
        /// For the rare lookups (head after a failure, duplicates): the reader pool, which
        /// sees every committed transaction of this single writer.
        readers: sea_orm::DatabaseConnection,
    },
    Sqlx(WriterConnection),
}

impl LogWriter {
    /// The writer's own connection on PostgreSQL (a cluster node takes the leader's lock on
    /// it); `None` on a SQLite file.
    pub(crate) fn connection(&self) -> Option<&WriterConnection> {
        match self {
            LogWriter::Sqlx(conn) => Some(conn),
            LogWriter::Sqlite { .. } => None,
        }
    }

    async fn head(&self, merkle: MerkleTree) -> Result<Head, StoreError> {
        let on = merkle == MerkleTree::Maintained;
        let (seq, hash, tree) = match self {
            LogWriter::Sqlite { readers, .. } => {
                let (seq, hash) = head_on(readers).await?;
                let tree = match on {
                    true => Some(tree::load_edge(readers, seq).await?),
                    false => None,
                };
                (seq, hash, tree)
            }
            LogWriter::Sqlx(conn) => {
                let (seq, hash) = head_on(conn).await?;
                let tree = match on {
                    true => Some(tree::load_edge(conn, seq).await?),
                    false => None,
                };
                (seq, hash, tree)
            }
        };
        Ok(Head { seq, hash, tree })
    }

    /// Writes tiles in a transaction of their own (the tree's catch-up at start).
    pub(crate) async fn write_tiles(&self, rows: &[TileRow]) -> Result<(), StoreError> {
        match self {
            LogWriter::Sqlite { thread, .. } => {
                let recorder = Recorder::new();
                tree::write_tiles(&recorder, rows).await?;
                Ok(thread.transaction(recorder.into_statements()).await?)
            }
            LogWriter::Sqlx(conn) => {
                conn.begin_fenced().await?;
                match tree::write_tiles(conn, rows).await {
                    Ok(()) => Ok(conn.commit().await?),
                    Err(error) => {
                        conn.rollback().await;
                        Err(error)
                    }
                }
            }
        }
    }

    async fn find_existing(
        &self,
        batch: &[PendingAppend],
    ) -> Result<HashMap<(String, String), u64>, StoreError> {
        match self {
            LogWriter::Sqlite { readers, .. } => find_existing(readers, batch).await,
            LogWriter::Sqlx(conn) => find_existing(conn, batch).await,
        }
    }

    /// Runs recorded statements in one transaction (SQLite writer thread only).
    async fn transaction(&self, statements: Vec<Statement>) -> Result<(), StoreError> {
        match self {
            LogWriter::Sqlite { thread, .. } => Ok(thread.transaction(statements).await?),
            LogWriter::Sqlx(_) => Err(StoreError::Db(sea_orm::DbErr::Custom(
                "staged batches are for the SQLite writer thread".into(),
            ))),
        }
    }

    fn stages(&self) -> bool {
        matches!(self, LogWriter::Sqlite { .. })
    }

    /// Writes `plan` in one transaction.
    async fn write(&self, plan: &Plan<'_>) -> Result<(), StoreError> {
        match self {
            LogWriter::Sqlite { thread, .. } => {
                let recorder = Recorder::new();
                write_plan(&recorder, plan).await?;
                Ok(thread.transaction(recorder.into_statements()).await?)
            }
            LogWriter::Sqlx(conn) => {
                conn.begin_fenced().await?;
                let written = async {
                    write_plan(conn, plan).await?;
                    if let (Some(first), Some(last)) = (plan.entries.first(), plan.entries.last()) {
                        conn.notify_range(first.seq, last.seq).await?;
                    }
                    Ok::<_, StoreError>(())
                };
                match written.await {
                    Ok(()) => Ok(conn.commit().await?),
                    Err(error) => {
                        conn.rollback().await;
                        Err(error)
                    }
                }
            }
        }
    }
}

pub struct EventLog {
    writer: Arc<LogWriter>,
    /// `None` after a failed commit: re-read from the database before the next batch.
    head: Option<Head>,
    merkle: MerkleTree,
    /// The last batch held duplicates: look them up before writing (see [`write_batch`]).
    lookup_first: bool,
    queue: VecDeque<PendingAppend>,
    committing: bool,
    /// The head the running commit will leave, when it was planned here (staged).
    in_flight_head: Option<Head>,
    /// The next batch, planned while the running commit runs.
    staged: Option<Staged>,
    max_batch_events: usize,
    published: Published,
    metrics: Arc<Metrics>,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl EventLog {
    /// Starts the writer on its own arbiter thread, so hashing and statement building never
    /// compete with HTTP workers for a thread. Reads the head of the log first.
    pub async fn start(
        store: &super::Store,
        max_batch_events: usize,
        publish_buffer: usize,
        metrics: Arc<Metrics>,
    ) -> Result<EventLogHandle, StoreError> {
        Self::start_with(
            store,
            max_batch_events,
            publish_buffer,
            metrics,
            MerkleTree::Maintained,
        )
        .await
    }

    /// [`EventLog::start`], choosing whether the tree is maintained (see [`MerkleTree`]).
    pub async fn start_with(
        store: &super::Store,
        max_batch_events: usize,
        publish_buffer: usize,
        metrics: Arc<Metrics>,
        merkle: MerkleTree,
    ) -> Result<EventLogHandle, StoreError> {
        Self::start_fenced(
            store,
            max_batch_events,
            publish_buffer,
            metrics,
            merkle,
            None,
        )
        .await
    }

    /// The log of a cluster node (DESIGN §7): it starts as a follower (its writer commits
    /// nothing until the node's election loop sets `fence` to an epoch it won), and its
    /// appends are forwarded to the leader until then (see [`EventLogHandle::set_forwarder`]).
    pub async fn start_node(
        store: &super::Store,
        max_batch_events: usize,
        publish_buffer: usize,
        metrics: Arc<Metrics>,
        fence: Arc<Fence>,
    ) -> Result<EventLogHandle, StoreError> {
        let handle = Self::start_fenced(
            store,
            max_batch_events,
            publish_buffer,
            metrics,
            MerkleTree::Maintained,
            Some(fence),
        )
        .await?;
        handle.role.send_replace(crate::cluster::Role::Follower);
        Ok(handle)
    }

    async fn start_fenced(
        store: &super::Store,
        max_batch_events: usize,
        publish_buffer: usize,
        metrics: Arc<Metrics>,
        merkle: MerkleTree,
        fence: Option<Arc<Fence>>,
    ) -> Result<EventLogHandle, StoreError> {
        let clustered = fence.is_some();
        let writer = Arc::new(match &store.sqlite_file {
            Some((path, durability)) => LogWriter::Sqlite {
                thread: SqliteThread::open(path, *durability)?,
                readers: store.readers.clone(),
            },
            None => LogWriter::Sqlx(WriterConnection::open(store.writer.clone(), fence).await?),
        });
        // A cluster node catches the tree up when it becomes the leader, not before: only the
        // leader writes.
        if merkle == MerkleTree::Maintained && !clustered {
            tree::catch_up(store, &writer).await?;
        }
        let head = writer.head(merkle).await?;
        metrics.log_head_seq.set(head.seq as i64);
        let (batches, _) = broadcast::channel(publish_buffer);
        let published = Published {
            batches,
            committed: Arc::new(std::sync::atomic::AtomicU64::new(head.seq)),
            order: Arc::new(std::sync::Mutex::new(())),
        };
        let actor = EventLog {
            writer: writer.clone(),
            head: Some(head),
            merkle,
            lookup_first: false,
            queue: VecDeque::new(),
            committing: false,
            in_flight_head: None,
            staged: None,
            max_batch_events,
            published: published.clone(),
            metrics,
            drain_waiters: Vec::new(),
        };
        let arbiter = Arbiter::new();
        let addr = EventLog::start_in_arbiter(&arbiter.handle(), move |_| actor);
        Ok(EventLogHandle {
            addr,
            published,
            writer,
            readers: store.readers.clone(),
            role: Arc::new(tokio::sync::watch::channel(crate::cluster::Role::Single).0),
            forwarder: Arc::new(std::sync::OnceLock::new()),
            _arbiter: Arc::new(ArbiterGuard(arbiter)),
        })
    }

    /// Starts the next group commit if none is running, else stages what is queued.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            self.fill_stage();
            return;
        }
        if let Some(staged) = self.staged.take() {
            if Some(&staged.base) == self.head.as_ref() && !self.lookup_first {
                self.submit(staged, ctx);
                return;
            }
            // Planned on a head that did not come to be (the commit before failed or found
            // duplicates): plan again, in the same order.
            for pending in staged.pendings.into_iter().rev() {
                self.queue.push_front(pending);
            }
        }
        if self.queue.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        if let (true, false, Some(head)) =
            (self.writer.stages(), self.lookup_first, self.head.clone())
        {
            let mut staged = Staged::new(head);
            self.take_into(&mut staged);
            self.submit(staged, ctx);
            return;
        }
        let mut batch = Vec::new();
        let mut events = 0;
        while let Some(next) = self.queue.front() {
            if !batch.is_empty() && events + next.events.len() > self.max_batch_events {
                break;
            }
            events += next.events.len();
            batch.extend(self.queue.pop_front());
        }
        self.committing = true;
        self.in_flight_head = None;
        let writer = self.writer.clone();
        let head = self.head.clone();
        let published = self.published.clone();
        let metrics = self.metrics.clone();
        let lookup_first = self.lookup_first;
        let commit = commit_batch(
            writer,
            head,
            self.merkle,
            lookup_first,
            batch,
            published,
            metrics,
        );
        ctx.spawn(commit.into_actor(self).map(|end, actor, ctx| {
            actor.head = end.head;
            actor.lookup_first = end.saw_duplicates;
            actor.committing = false;
            actor.pump(ctx);
        }));
    }

    /// Moves queued appends into `staged`, up to `max_batch_events`.
    fn take_into(&mut self, staged: &mut Staged) {
        while let Some(next) = self.queue.front() {
            if staged.events > 0 && staged.events + next.events.len() > self.max_batch_events {
                break;
            }
            if let Some(pending) = self.queue.pop_front() {
                staged.add(pending);
            }
        }
    }

    /// While a staged commit runs, plans what queues behind it.
    fn fill_stage(&mut self) {
        let Some(base) = self.in_flight_head.clone() else {
            return;
        };
        if self.lookup_first || self.queue.is_empty() {
            return;
        }
        let mut staged = self.staged.take().unwrap_or_else(|| Staged::new(base));
        self.take_into(&mut staged);
        self.staged = Some(staged);
    }

    fn submit(&mut self, mut staged: Staged, ctx: &mut Context<Self>) {
        staged.record();
        self.committing = true;
        self.in_flight_head = Some(staged.head.clone());
        let commit = commit_staged(
            self.writer.clone(),
            staged,
            self.published.clone(),
            self.metrics.clone(),
        );
        ctx.spawn(commit.into_actor(self).map(|end, actor, ctx| {
            actor.head = end.head;
            actor.lookup_first = end.saw_duplicates;
            actor.committing = false;
            actor.in_flight_head = None;
            actor.pump(ctx);
        }));
        // What queued while this batch was planned starts its own stage at once.
        self.fill_stage();
    }
}

impl Actor for EventLog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<Append> for EventLog {
    type Result = ();

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) {
        self.queue.push_back(PendingAppend {
            events: msg.events,
            ops: msg.ops,
            reply: msg.reply,
            arrived: Instant::now(),
        });
        self.pump(ctx);
    }
}

impl Handler<Drain> for EventLog {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) {
        self.drain_waiters.push(msg.reply);
        self.pump(ctx);
    }
}

/// Forgets the head: the next batch re-reads it from the database (a cluster node that has
/// just become the leader: the log grew under other leaders meanwhile).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reset;

impl Handler<Reset> for EventLog {
    type Result = ();

    fn handle(&mut self, _: Reset, _: &mut Self::Context) {
        self.head = None;
        self.lookup_first = false;
    }
}

/// How a group commit ended, for the actor's state.
struct CommitEnd {
    /// The new head, or `None` when it must be re-read (the transaction failed, so whether it
    /// reached the disk is unknown to us).
    head: Option<Head>,
    /// The batch held duplicates: look them up first in the next batch.
    saw_duplicates: bool,
}

/// Runs one group commit and answers its callers.
async fn commit_batch(
    writer: Arc<LogWriter>,
    head: Option<Head>,
    merkle: MerkleTree,
    lookup_first: bool,
    batch: Vec<PendingAppend>,
    published: Published,
    metrics: Arc<Metrics>,
) -> CommitEnd {
    let started = Instant::now();
    let result = write_batch(&writer, head, merkle, &batch, lookup_first)
        .await
        .map(|(head, plan)| (head, plan.outcomes, plan.entries));
    finish(result, started, batch, lookup_first, &published, &metrics)
}

/// Commits a staged batch (planned and recorded while the previous one committed); a
/// duplicate the unique index refuses sends it through the lookup path of [`write_batch`].
async fn commit_staged(
    writer: Arc<LogWriter>,
    staged: Staged,
    published: Published,
    metrics: Arc<Metrics>,
) -> CommitEnd {
    let started = Instant::now();
    let Staged {
        base,
        head,
        pendings,
        outcomes,
        entries,
        statements,
        ..
    } = staged;
    let result = match writer.transaction(statements).await {
        Ok(()) => Ok((head, outcomes, entries)),
        Err(error) if is_unique_violation(&error) => {
            write_batch(&writer, Some(base), MerkleTree::Maintained, &pendings, true)
                .await
                .map(|(head, plan)| (head, plan.outcomes, plan.entries))
        }
        Err(error) => Err(error),
    };
    finish(result, started, pendings, false, &published, &metrics)
}

type Written = (Head, Vec<Vec<AppendOutcome>>, Vec<LogEntry>);

/// Answers the callers of a batch, publishes it and records its metrics.
fn finish(
    result: Result<Written, StoreError>,
    started: Instant,
    batch: Vec<PendingAppend>,
    lookup_first: bool,
    published: &Published,
    metrics: &Metrics,
) -> CommitEnd {
    metrics
        .log_commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((new_head, outcomes, entries)) => {
            let saw_duplicates = outcomes
                .iter()
                .flatten()
                .any(|o| matches!(o, AppendOutcome::Duplicate { .. }));
            let appended = entries.len();
            metrics.log_batch_events.observe(appended as f64);
            metrics.log_head_seq.set(new_head.seq as i64);
            // Before publishing: whoever reads the head and then follows publications misses
            // nothing (see `EventLogHandle::committed_head`).
            let ordered = published.order.lock().unwrap_or_else(|e| e.into_inner());
            let before = published
                .committed
                .fetch_max(new_head.seq, std::sync::atomic::Ordering::AcqRel);
            // A cluster node that stepped down while this commit hung may have read these
            // entries back already (see `cluster::node::step_down`): publish each entry once.
            let mut entries = entries;
            if before >= entries.first().map_or(u64::MAX, |e| e.seq) {
                entries.retain(|e| e.seq > before);
            }
            for entry in &entries {
                metrics
                    .log_events_appended
                    .with_label_values(&[entry.event_type.as_str()])
                    .inc();
            }
            if !entries.is_empty() {
                // No receiver is fine: nobody is listening yet.
                let _ = published.batches.send(Arc::new(CommittedBatch { entries }));
            }
            drop(ordered);
            let mut duplicates = 0;
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                duplicates += outcome
                    .iter()
                    .filter(|o| matches!(o, AppendOutcome::Duplicate { .. }))
                    .count();
                metrics
                    .log_append_seconds
                    .observe(pending.arrived.elapsed().as_secs_f64());
                let _ = pending.reply.send(Ok(outcome));
            }
            metrics.log_duplicates.inc_by(duplicates as u64);
            tracing::trace!(appended, duplicates, "group commit");
            CommitEnd {
                head: Some(new_head),
                saw_duplicates,
            }
        }
        Err(error) => {
            metrics.log_commit_failures.inc();
            tracing::error!(error = %error, appends = batch.len(), "group commit failed; rolled back");
            let error = Arc::new(error);
            for pending in batch {
                let _ = pending.reply.send(Err(AppendError::Storage(error.clone())));
            }
            CommitEnd {
                head: None,
                saw_duplicates: lookup_first,
            }
        }
    }
}

/// The next batch, planned and recorded while the previous one commits (SQLite writer):
/// each append is planned as it arrives, on the head the running commit will leave.
struct Staged {
    /// The head this batch was planned on.
    base: Head,
    head: Head,
    pendings: Vec<PendingAppend>,
    outcomes: Vec<Vec<AppendOutcome>>,
    entries: Vec<LogEntry>,
    statements: Vec<Statement>,
    /// `(origin, event_id)` of the staged entries, for duplicates inside the batch.
    seen: HashMap<(String, String), u64>,
    events: usize,
}

impl Staged {
    fn new(base: Head) -> Staged {
        Staged {
            head: base.clone(),
            base,
            pendings: Vec::new(),
            outcomes: Vec::new(),
            entries: Vec::new(),
            statements: Vec::new(),
            seen: HashMap::new(),
            events: 0,
        }
    }

    /// Plans `pending` after what is staged (statements are recorded at submission, so a
    /// batch of many small appends still writes multi-row INSERTs).
    fn add(&mut self, pending: PendingAppend) {
        let planned = plan(&mut self.head, std::slice::from_ref(&pending), &self.seen);
        for entry in &planned.entries {
            self.seen
                .insert((entry.origin.clone(), entry.event_id.clone()), entry.seq);
        }
        self.events += pending.events.len();
        let Plan {
            outcomes, entries, ..
        } = planned;
        self.outcomes.extend(outcomes);
        self.entries.extend(entries);
        self.pendings.push(pending);
    }

    /// Records the statements of everything staged.
    fn record(&mut self) {
        let ops = self
            .pendings
            .iter()
            .zip(&self.outcomes)
            .flat_map(|(pending, outcome)| pending.ops.iter().zip(outcome))
            .filter_map(|(ops, outcome)| match outcome {
                AppendOutcome::Appended { seq } => Some(ops.iter().map(move |op| (*seq, op))),
                AppendOutcome::Duplicate { .. } => None,
            })
            .flatten();
        let recorder = Recorder::new();
        // The recorder runs nothing, so its futures are ready at once.
        let tiles = self.head.take_tiles();
        let recorded = async {
            insert_entries(&recorder, &self.entries).await?;
            tree::write_tiles(&recorder, &tiles).await?;
            projections::apply(&recorder, ops).await?;
            Ok::<_, StoreError>(())
        }
        .now_or_never();
        debug_assert!(matches!(recorded, Some(Ok(()))));
        self.statements = recorder.into_statements();
    }
}

/// What one group commit writes and answers.
struct Plan<'a> {
    outcomes: Vec<Vec<AppendOutcome>>,
    entries: Vec<LogEntry>,
    ops: Vec<(u64, &'a ProjectionOp)>,
    /// The Merkle tiles the entries changed.
    tiles: Vec<TileRow>,
}

/// Assigns `seq` and hashes to every event of the batch that is neither in `existing` nor a
/// repeat of an earlier event of the batch, and moves `head` (chain and tree) past them.
/// Pure CPU work; no I/O.
fn plan<'a>(
    head: &mut Head,
    batch: &'a [PendingAppend],
    existing: &HashMap<(String, String), u64>,
) -> Plan<'a> {
    let received_ts = now_ms();
    let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut entries = Vec::new();
    let mut ops = Vec::new();
    let mut leaf = String::with_capacity(1024);
    for pending in batch {
        let mut outcome = Vec::with_capacity(pending.events.len());
        for (event, event_ops) in pending.events.iter().zip(&pending.ops) {
            let key = (event.origin.as_str(), event.event_id.as_str());
            let earlier = seen.get(&key).copied().or_else(|| {
                // `existing` is empty unless a lookup found duplicates: only then build keys.
                (!existing.is_empty())
                    .then(|| {
                        existing
                            .get(&(event.origin.clone(), event.event_id.clone()))
                            .copied()
                    })
                    .flatten()
            });
            if let Some(seq) = earlier {
                outcome.push(AppendOutcome::Duplicate { seq });
                continue;
            }
            let seq = head.seq + 1;
            leaf.clear();
            leaf.push_str(&event.leaf_head);
            write_leaf_tail(
                &mut leaf,
                seq,
                event.event_type.as_str(),
                event.sender.as_deref(),
                received_ts,
            );
            // `NewEvent::prepare` refuses any event whose leaf could pass the bound.
            debug_assert!(leaf.len() <= MAX_LEAF_BYTES);
            let entry_hash = head.hash.next(leaf.as_bytes());
            if let Some(tree) = &mut head.tree {
                // The caller hashed the head of the leaf; only the tail is hashed here.
                let mut hasher = event.leaf_hasher.clone();
                sha2::Digest::update(&mut hasher, &leaf.as_bytes()[event.leaf_head.len()..]);
                tree.push(sha2::Digest::finalize(hasher).into());
            }
            entries.push(LogEntry {
                seq,
                event_id: event.event_id.clone(),
                origin: event.origin.clone(),
                event_type: event.event_type.as_str().to_owned(),
                sender: event.sender.clone(),
                channel: event.channel.clone(),
                origin_ts: event.origin_ts,
                received_ts,
                content: event.canonical_content.clone(),
                prev_hash: head.hash,
                entry_hash,
            });
            ops.extend(event_ops.iter().map(|op| (seq, op)));
            seen.insert(key, seq);
            head.seq = seq;
            head.hash = entry_hash;
            outcome.push(AppendOutcome::Appended { seq });
        }
        outcomes.push(outcome);
    }
    Plan {
        outcomes,
        entries,
        ops,
        tiles: Vec::new(),
    }
}

fn is_unique_violation(error: &StoreError) -> bool {
    match error {
        StoreError::Db(e) => matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        StoreError::SqliteWrite(e) => e.unique_violation,
        _ => false,
    }
}

/// Writes one batch in one transaction.
///
/// Duplicates are rare on the hot path, so by default the batch is written optimistically
/// without looking them up: the unique index on `(origin, event_id)` refuses a duplicate, the
/// transaction rolls back and the batch is planned again after a lookup. After a batch with
/// duplicates the writer looks up first (`lookup_first`) until a batch comes without any, so
/// a stream of retries costs one lookup per batch rather than a failed insert.
async fn write_batch<'a>(
    writer: &LogWriter,
    head: Option<Head>,
    merkle: MerkleTree,
    batch: &'a [PendingAppend],
    lookup_first: bool,
) -> Result<(Head, Plan<'a>), StoreError> {
    let base = match head {
        Some(head) => head,
        None => writer.head(merkle).await?,
    };
    if !lookup_first {
        let mut head = base.clone();
        let mut optimistic = plan(&mut head, batch, &HashMap::new());
        optimistic.tiles = head.take_tiles();
        match writer.write(&optimistic).await {
            Ok(()) => return Ok((head, optimistic)),
            Err(error) if is_unique_violation(&error) => {}
            Err(error) => return Err(error),
        }
    }
    // This actor is the only writer of `events`, so what the lookup finds cannot change
    // before the write below.
    let existing = writer.find_existing(batch).await?;
    let mut head = base;
    let mut checked = plan(&mut head, batch, &existing);
    checked.tiles = head.take_tiles();
    if !checked.entries.is_empty() {
        writer.write(&checked).await?;
    }
    Ok((head, checked))
}

async fn write_plan(
    conn: &impl sea_orm::ConnectionTrait,
    plan: &Plan<'_>,
) -> Result<(), StoreError> {
    insert_entries(conn, &plan.entries).await?;
    tree::write_tiles(conn, &plan.tiles).await?;
    projections::apply(conn, plan.ops.iter().copied()).await?;
    Ok(())
}

/// The `seq` of every `(origin, event_id)` of the batch that the log already holds.
///
/// One query per origin, `origin = ? AND event_id IN (…)`: both SQLite and PostgreSQL answer
/// it from the unique index, where a row-value `(origin, event_id) IN (…)` makes SQLite scan
/// the whole table.
async fn find_existing(
    db: &impl sea_orm::ConnectionTrait,
    batch: &[PendingAppend],
) -> Result<HashMap<(String, String), u64>, StoreError> {
    let mut by_origin: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in batch.iter().flat_map(|p| &p.events) {
        by_origin
            .entry(event.origin.as_str())
            .or_default()
            .push(event.event_id.as_str());
    }
    let mut found = HashMap::new();
    for (origin, event_ids) in by_origin {
        for chunk in event_ids.chunks(LOOKUP_CHUNK) {
            let rows: Vec<(i64, String)> = events::Entity::find()
                .select_only()
                .column(events::Column::Seq)
                .column(events::Column::EventId)
                .filter(events::Column::Origin.eq(origin))
                .filter(events::Column::EventId.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(db)
                .await?;
            found.extend(
                rows.into_iter()
                    .map(|(seq, event_id)| ((origin.to_owned(), event_id), seq as u64)),
            );
        }
    }
    Ok(found)
}

const EVENT_COLUMNS: [&str; 11] = [
    "seq",
    "event_id",
    "origin",
    "type",
    "sender",
    "channel",
    "origin_ts",
    "received_ts",
    "content",
    "prev_hash",
    "entry_hash",
];

/// Writes entries with multi-row INSERTs (one statement per [`INSERT_CHUNK`] rows).
pub(crate) async fn insert_entries(
    db: &impl sea_orm::ConnectionTrait,
    entries: &[LogEntry],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(INSERT_CHUNK) {
        let mut values = Vec::with_capacity(chunk.len() * EVENT_COLUMNS.len());
        for e in chunk {
            values.extend([
                Value::BigInt(Some(e.seq as i64)),
                bulk::text(&e.event_id),
                bulk::text(&e.origin),
                bulk::text(&e.event_type),
                bulk::opt_text(e.sender.as_deref()),
                bulk::opt_text(e.channel.as_deref()),
                Value::BigInt(Some(e.origin_ts)),
                Value::BigInt(Some(e.received_ts)),
                bulk::text(e.content.get()),
                Value::String(Some(Box::new(e.prev_hash.to_string()))),
                Value::String(Some(Box::new(e.entry_hash.to_string()))),
            ]);
        }
        bulk::insert_rows(db, "events", &EVENT_COLUMNS, values, "").await?;
    }
    Ok(())
}

/// Stops the writer's arbiter when the last handle is dropped.
struct ArbiterGuard(Arbiter);

impl Drop for ArbiterGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A cloneable handle on the log: append, subscribe, drain.
#[derive(Clone)]
pub struct EventLogHandle {
    addr: Addr<EventLog>,
    published: Published,
    /// For writes beside the log (checkpoints), see [`EventLogHandle::insert_checkpoint`].
    writer: Arc<LogWriter>,
    readers: sea_orm::DatabaseConnection,
    /// What this node is now (`Single` unless it is a node of a cluster).
    role: Arc<tokio::sync::watch::Sender<crate::cluster::Role>>,
    /// A cluster follower's route to the leader; unset on one node.
    forwarder: Arc<std::sync::OnceLock<Arc<dyn Forwarder>>>,
    _arbiter: Arc<ArbiterGuard>,
}

impl EventLogHandle {
    /// This node's role, current and changing: whatever only the writer may do (sign
    /// checkpoints, push to witnesses) runs while `role.borrow().writes()`.
    pub fn role(&self) -> crate::cluster::RoleWatch {
        self.role.subscribe()
    }

    /// Writes rows beside the log (checkpoints, cosignatures) in one transaction of their
    /// own. On a SQLite file it goes through the log writer's own connection, between two
    /// group commits: a second writer connection would contend for SQLite's one write lock and
    /// stall the log (measured: p99 append latency ×2 in the runs where it met a commit). On
    /// PostgreSQL rows lock one by one, so the pool writes it. `build` makes the statements
    /// for the backend.
    pub async fn write_beside(
        &self,
        build: impl FnOnce(sea_orm::DbBackend) -> Vec<Statement>,
    ) -> Result<(), StoreError> {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        match &*self.writer {
            LogWriter::Sqlite { thread, .. } => Ok(thread
                .transaction(build(sea_orm::DbBackend::Sqlite))
                .await?),
            LogWriter::Sqlx(_) => {
                let txn = self.readers.begin().await?;
                for statement in build(self.readers.get_database_backend()) {
                    txn.execute(statement).await?;
                }
                txn.commit().await?;
                Ok(())
            }
        }
    }

    /// Appends `events` atomically and answers once they are committed, with one outcome per
    /// event in order. Invalid events are refused before anything reaches the writer.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<AppendOutcome>, AppendError> {
        let prepared = events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                event
                    .prepare()
                    .map_err(|error| AppendError::Invalid { index, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.append_prepared(prepared).await
    }

    /// Where this node's appends go while it does not lead (set once, by the cluster node).
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// The cluster node's side of the handle: role changes, the head after a promotion, and
    /// publishing what a follower reads (see `cluster::node`).
    pub(crate) fn set_role(&self, role: crate::cluster::Role) {
        self.role.send_replace(role);
    }

    pub(crate) fn writer(&self) -> &Arc<LogWriter> {
        &self.writer
    }

    pub(crate) async fn reset_head(&self) {
        let _ = self.addr.send(Reset).await;
    }

    /// Publishes entries a follower read from the database (committed by the leader), in
    /// `seq` order, to this node's subscribers, exactly as its own commits would be.
    pub(crate) fn publish_followed(&self, mut entries: Vec<LogEntry>) {
        let Some(last) = entries.last().map(|e| e.seq) else {
            return;
        };
        let _ordered = self
            .published
            .order
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = self
            .published
            .committed
            .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        entries.retain(|e| e.seq > before);
        if entries.is_empty() {
            return;
        }
        let _ = self
            .published
            .batches
            .send(Arc::new(CommittedBatch { entries }));
    }

    /// Appends events the caller has already prepared (checked and canonicalised). On a
    /// cluster node that does not lead, they go to the leader.
    pub async fn append_prepared(
        &self,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        if let Some(forwarder) = self.forwarder.get() {
            if !self.role.borrow().writes() {
                return forwarder.forward(events).await;
            }
        }
        self.append_here(events).await
    }

    /// Appends through this node's own writer (the leader's side of a forwarded append).
    pub async fn append_here(
        &self,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let mut prepared = Vec::with_capacity(events.len());
        let mut ops = Vec::with_capacity(events.len());
        for event in events {
            ops.push(projection::derive(
                event.event_type,
                event.sender.as_deref(),
                event.channel.as_deref(),
                event.origin_ts,
                &event.content,
            ));
            prepared.push(event);
        }
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.addr
            .send(Append {
                events: prepared,
                ops,
                reply,
            })
            .await
            .map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }

    /// Committed batches from now on. A receiver that falls more than `storage.publish_buffer`
    /// batches behind gets `RecvError::Lagged(n)` and must re-read from the log by `seq`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedBatch>> {
        self.published.batches.subscribe()
    }

    /// The newest committed `seq`, from memory. It is set before the batch that reaches it is
    /// published, so a reader that takes it and then follows the publications (having
    /// subscribed first) sees every later entry live, and finds every earlier one committed.
    pub fn committed_head(&self) -> u64 {
        self.published
            .committed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until every append sent before this call has been committed or failed.
    pub async fn drain(&self) {
        let (reply, done) = oneshot::channel();
        if self.addr.send(Drain { reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}
