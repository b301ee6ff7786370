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
//!                                     ┌─ one transaction ─────────────────────────────┐
//!                                     │ find existing (origin, event_id) → duplicates │
//!                                     │ assign seq head+1.., hash chain per entry     │
//!                                     │ multi-row INSERT events                       │
//!                                     │ apply projection ops in seq order             │
//!                                     └─ COMMIT (one fsync in `full` mode) ───────────┘
//!                                     publish the batch (broadcast, never blocks)
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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, oneshot};

use super::{head_on, projections, StoreError};
use crate::core::chain::ChainHash;
use crate::core::event::{write_leaf, EventError, LogEntry, NewEvent, PreparedEvent};
use crate::core::projection::{self, ProjectionOp};
use crate::telemetry::Metrics;
use entities::events;

/// Rows per multi-row INSERT: 11 bind parameters each keeps a statement well under the
/// parameter limits of SQLite (32,766) and PostgreSQL (65,535).
const INSERT_CHUNK: usize = 1000;
/// (origin, event_id) pairs per duplicate lookup.
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

#[derive(Clone, Copy)]
struct Head {
    seq: u64,
    hash: ChainHash,
}

pub struct EventLog {
    writer: DatabaseConnection,
    /// `None` after a failed commit: re-read from the database before the next batch.
    head: Option<Head>,
    queue: VecDeque<PendingAppend>,
    committing: bool,
    max_batch_events: usize,
    published: broadcast::Sender<Arc<CommittedBatch>>,
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
        let (seq, hash) = head_on(&store.writer).await?;
        metrics.log_head_seq.set(seq as i64);
        let (published, _) = broadcast::channel(publish_buffer);
        let actor = EventLog {
            writer: store.writer.clone(),
            head: Some(Head { seq, hash }),
            queue: VecDeque::new(),
            committing: false,
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
            _arbiter: Arc::new(ArbiterGuard(arbiter)),
        })
    }

    /// Starts the next group commit if none is running.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.queue.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
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
        let writer = self.writer.clone();
        let head = self.head;
        let published = self.published.clone();
        let metrics = self.metrics.clone();
        let commit = async move { commit_batch(writer, head, batch, published, metrics).await };
        ctx.spawn(commit.into_actor(self).map(|new_head, actor, ctx| {
            actor.head = new_head;
            actor.committing = false;
            actor.pump(ctx);
        }));
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs one group commit and answers its callers. Returns the new head, or `None` when the
/// head must be re-read (the transaction failed, so its outcome is unknown to us).
async fn commit_batch(
    writer: DatabaseConnection,
    head: Option<Head>,
    mut batch: Vec<PendingAppend>,
    published: broadcast::Sender<Arc<CommittedBatch>>,
    metrics: Arc<Metrics>,
) -> Option<Head> {
    let started = Instant::now();
    let result = write_batch(&writer, head, &mut batch).await;
    metrics
        .log_commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((new_head, outcomes, entries)) => {
            let appended = entries.len();
            metrics.log_batch_events.observe(appended as f64);
            metrics.log_head_seq.set(new_head.seq as i64);
            for entry in &entries {
                metrics
                    .log_events_appended
                    .with_label_values(&[entry.event_type.as_str()])
                    .inc();
            }
            if !entries.is_empty() {
                // No receiver is fine: nobody is listening yet.
                let _ = published.send(Arc::new(CommittedBatch { entries }));
            }
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
            Some(new_head)
        }
        Err(error) => {
            metrics.log_commit_failures.inc();
            tracing::error!(error = %error, appends = batch.len(), "group commit failed; rolled back");
            let error = Arc::new(error);
            for pending in batch {
                let _ = pending.reply.send(Err(AppendError::Storage(error.clone())));
            }
            None
        }
    }
}

type BatchResult = (Head, Vec<Vec<AppendOutcome>>, Vec<LogEntry>);

async fn write_batch(
    writer: &DatabaseConnection,
    head: Option<Head>,
    batch: &mut [PendingAppend],
) -> Result<BatchResult, StoreError> {
    let txn = writer.begin().await?;
    let mut head = match head {
        Some(head) => head,
        None => {
            let (seq, hash) = head_on(&txn).await?;
            Head { seq, hash }
        }
    };
    let existing = find_existing(&txn, batch).await?;
    let received_ts = now_ms();
    let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut entries = Vec::new();
    let mut ops = Vec::new();
    let mut leaf = String::with_capacity(1024);
    for pending in batch.iter() {
        let mut outcome = Vec::with_capacity(pending.events.len());
        for (event, event_ops) in pending.events.iter().zip(&pending.ops) {
            let key = (event.origin.as_str(), event.event_id.as_str());
            let earlier = seen.get(&key).copied().or_else(|| {
                // Duplicates are rare: only then pay for an owned lookup key.
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
            write_leaf(
                &mut leaf,
                seq,
                &event.event_id,
                &event.origin,
                event.event_type.as_str(),
                event.sender.as_deref(),
                event.channel.as_deref(),
                event.origin_ts,
                received_ts,
                &event.canonical_content,
            );
            let entry_hash = head.hash.next(leaf.as_bytes());
            let content = RawValue::from_string(event.canonical_content.clone()).map_err(|e| {
                StoreError::Corrupt {
                    seq: seq as i64,
                    problem: e.to_string(),
                }
            })?;
            entries.push(LogEntry {
                seq,
                event_id: event.event_id.clone(),
                origin: event.origin.clone(),
                event_type: event.event_type.as_str().to_owned(),
                sender: event.sender.clone(),
                channel: event.channel.clone(),
                origin_ts: event.origin_ts,
                received_ts,
                content,
                prev_hash: head.hash,
                entry_hash,
            });
            ops.extend(event_ops.iter().map(|op| (seq, op)));
            seen.insert(key, seq);
            head = Head {
                seq,
                hash: entry_hash,
            };
            outcome.push(AppendOutcome::Appended { seq });
        }
        outcomes.push(outcome);
    }
    if entries.is_empty() {
        txn.rollback().await?;
        return Ok((head, outcomes, entries));
    }
    insert_entries(&txn, &entries).await?;
    projections::apply(&txn, ops).await?;
    txn.commit().await?;
    Ok((head, outcomes, entries))
}

/// The `seq` of every `(origin, event_id)` of the batch that the log already holds.
async fn find_existing(
    db: &impl sea_orm::ConnectionTrait,
    batch: &[PendingAppend],
) -> Result<HashMap<(String, String), u64>, StoreError> {
    let keys: Vec<(&str, &str)> = batch
        .iter()
        .flat_map(|p| {
            p.events
                .iter()
                .map(|e| (e.origin.as_str(), e.event_id.as_str()))
        })
        .collect();
    let mut found = HashMap::new();
    for chunk in keys.chunks(LOOKUP_CHUNK) {
        let condition: SimpleExpr = Expr::tuple([
            Expr::col(events::Column::Origin).into(),
            Expr::col(events::Column::EventId).into(),
        ])
        .in_tuples(chunk.iter().map(|&(o, e)| (o.to_owned(), e.to_owned())));
        let rows: Vec<(i64, String, String)> = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .column(events::Column::Origin)
            .column(events::Column::EventId)
            .filter(condition)
            .into_tuple()
            .all(db)
            .await?;
        found.extend(
            rows.into_iter()
                .map(|(seq, origin, event_id)| ((origin, event_id), seq as u64)),
        );
    }
    Ok(found)
}

/// Writes entries with multi-row INSERTs (one statement per [`INSERT_CHUNK`] rows).
pub(crate) async fn insert_entries(
    db: &impl sea_orm::ConnectionTrait,
    entries: &[LogEntry],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|e| events::ActiveModel {
            seq: Set(e.seq as i64),
            event_id: Set(e.event_id.clone()),
            origin: Set(e.origin.clone()),
            event_type: Set(e.event_type.clone()),
            sender: Set(e.sender.clone()),
            channel: Set(e.channel.clone()),
            origin_ts: Set(e.origin_ts),
            received_ts: Set(e.received_ts),
            content: Set(e.content.get().to_owned()),
            prev_hash: Set(e.prev_hash.to_string()),
            entry_hash: Set(e.entry_hash.to_string()),
        });
        events::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
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
    published: broadcast::Sender<Arc<CommittedBatch>>,
    _arbiter: Arc<ArbiterGuard>,
}

impl EventLogHandle {
    /// Appends `events` atomically and answers once they are committed, with one outcome per
    /// event in order. Invalid events are refused before anything reaches the writer.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<AppendOutcome>, AppendError> {
        let mut prepared = Vec::with_capacity(events.len());
        let mut ops = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let event = event
                .prepare()
                .map_err(|error| AppendError::Invalid { index, error })?;
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
        self.published.subscribe()
    }

    /// Waits until every append sent before this call has been committed or failed.
    pub async fn drain(&self) {
        let (reply, done) = oneshot::channel();
        if self.addr.send(Drain { reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}
