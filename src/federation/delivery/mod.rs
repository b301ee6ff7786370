//! Outbound delivery (DESIGN §3.4): one `Destination` actor per remote server with members in
//! our channels, each reading the log by its own persisted cursor.
//!
//! ```text
//!  EventLog ── committed batch ──▶ router task: routing::targets(entry) per entry,
//!                                   membership map updated in log order,
//!                                   Destination started on first need, then Wake
//!                                         │
//!  Destination actor (one per server) ◀───┘
//!    loop: read the log after cursor (1,000 entries) ─ keep the entries routed to it
//!          ─ batches of ≤ 100 ─ sign (signing::RequestSignature, as the inbox verifies)
//!          ─ POST /federation/inbox
//!            200            → per-event results; "rejected" → dead letter; cursor advances
//!            401/408/429/5xx/no answer → exponential backoff with jitter (Retry-After
//!                             honoured); a 429 batch is then halved (it may exceed a burst)
//!            other 4xx      → a batch is split to single events; a single one is dead-lettered
//!          ─ cursor persisted after every batch; idle → wait for Wake (no polling delay)
//! ```
//! Delivery is at least once: a crash between a 200 and the cursor write resends a batch, and
//! the receiver's dedup on `(origin, event_id)` (event ids are `seq:<seq>`) makes it harmless.
//! Routing uses the router's membership map, and a destination reads only entries the router
//! has already applied to it (the `routed` watermark), so an invite is always routed before
//! the messages after it. A destination catching up after a long outage is still routed with
//! the members of now, not of each event's time. 401 is retried rather than dead-lettered:
//! it concerns the request's authentication (our key unreachable, clocks apart), not an event.
//!
//! ## Several nodes (DESIGN §7)
//!
//! Every node's router sees every committed batch, so every node knows every destination; a
//! lease decides which one delivers it. The leases are rows of `delivery_leases`, judged on
//! PostgreSQL's clock (`store::leases`); a node runs Destination actors only for the leases it
//! holds, and each actor's cursor and dead-letter writes are refused once its lease is not
//! valid (one statement: write where a valid lease exists).
//!
//! ```text
//!  router: a destination new to this node ─▶ cursor stored if it has none ─▶ known ─▶ nudge
//!  lease task, every lease_ttl / 3 (and when nudged):
//!    1. a free lease row for each known destination without one (ON CONFLICT DO NOTHING)
//!    2. renew the held ones while still valid ─ any not renewed is lost: its actor stops
//!    3. fair share = ceil(destinations / live nodes)
//!       held < share: claim free or expired leases (FOR UPDATE SKIP LOCKED) ─ each taken
//!                     lease starts its actor from the stored cursor, catching up from the log
//!       held > share: release the excess (free at once) for a newer node to take
//!  Delivery::stop releases every held lease, so another node takes over without waiting.
//! ```
//! A dead node renews nothing: its leases lapse after `lease_ttl` and the survivors, whose
//! share grows as the dead node stops counting as live, claim them at their next tick. At
//! least once holds across a takeover: the new holder starts from the stored cursor, which
//! only ever names events the writing holder had delivered, so it may resend some, never skip.
//!
//! The write fence keeps a cursor honest, not the requests: so a worker also stops *sending*
//! once its node's own clock says the lease may have run out — `lease_ttl` after the last
//! successful claim or renewal was sent (the database set `until_ms` after that) — and a
//! request still unanswered then is abandoned. It sends again when a renewal succeeds. So a
//! node whose lease task is stuck on the database (a hang, not an error) falls silent before
//! another node may take its leases, and at most one node sends to a destination at a time.
//!
//! The router and the lease task hold the `Delivery` weakly: an application dropped without
//! `stop` (a failed build, a test) stops its destinations and renews nothing, and its leases
//! expire for the other nodes. `GET /admin/v1/destinations` on a cluster node lists every
//! destination from the database, with the node holding each lease ([`DestinationView`]).

pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::cluster::NodeIdentity;
use crate::config::FederationConfig;
use crate::core::event::LogEntry;
use crate::core::projection;
use crate::federation::client::{OutboundClient, Resolver};
use crate::federation::inbox::INBOX_PATH;
use crate::federation::signing::{KeyRing, RequestSignature};
use crate::store::{EventLogHandle, Store, StoreError};

use self::routing::{targets, wire_event, MemberServers};

/// Log entries read per step.
const READ_CHUNK: u64 = 1000;
/// Events per request (the inbox takes 1..100).
const BATCH: usize = 100;
/// Newest dead letters shown per destination.
const DEAD_LETTERS_SHOWN: u64 = 20;

/// What a destination is doing, for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Idle,
    Sending,
    Backoff,
}

/// A destination's progress, shared between its actor and the admin API.
#[derive(Debug)]
pub struct Progress {
    delivered_metric: prometheus::IntCounter,
    dead_lettered_metric: prometheus::IntCounter,
    cursor: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    state: Mutex<(DeliveryState, Option<String>)>,
}

impl Progress {
    fn set_state(&self, state: DeliveryState, error: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state, error);
    }
}

/// New work may be in the log.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// Stop delivering (shutdown); a batch in flight is abandoned and resent after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// This node's hold on one destination's lease (cluster nodes only): what the actor's writes
/// are fenced by, how the lease task tells a running worker the lease is gone, and until when
/// this node's own clock may trust it.
#[derive(Debug)]
struct Lease {
    node_id: String,
    lost: std::sync::atomic::AtomicBool,
    /// On this node's clock, when the lease may have run out: the last successful claim or
    /// renewal was *sent* at `valid_until - lease_ttl`, and the database set `until_ms` after
    /// that, so the lease is valid at least until here (the database's clock running at the
    /// same rate). Past it another node may be sending, so the worker does not send until a
    /// renewal moves it on, even when the lease task is stuck on a database call.
    valid_until: Mutex<tokio::time::Instant>,
    /// Notified when the lease is renewed or lost.
    changed: Notify,
}

impl Lease {
    fn new(node_id: &str, valid_until: tokio::time::Instant) -> Lease {
        Lease {
            node_id: node_id.to_owned(),
            lost: std::sync::atomic::AtomicBool::new(false),
            valid_until: Mutex::new(valid_until),
            changed: Notify::new(),
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn valid_until(&self) -> tokio::time::Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A renewal sent at `sent` succeeded: valid until `sent + ttl` on this node's clock.
    fn renewed(&self, until: tokio::time::Instant) {
        {
            let mut valid_until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
            *valid_until = (*valid_until).max(until);
        }
        self.changed.notify_waiters();
    }

    /// Whether this node's clock still vouches for the lease (and it is not lost).
    fn is_valid(&self) -> bool {
        !self.is_lost() && tokio::time::Instant::now() < self.valid_until()
    }

    /// Waits until the lease may be used to send: at once when it is valid, else until a
    /// renewal makes it valid again. `false`: it is lost (the worker stops).
    async fn usable(&self) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the checks: a renewal between them still wakes us.
            changed.as_mut().enable();
            if self.is_lost() {
                return false;
            }
            if tokio::time::Instant::now() < self.valid_until() {
                return true;
            }
            changed.await;
        }
    }

    /// Resolves when the lease is lost or this node's clock passes its validity (a renewal
    /// meanwhile moves the deadline on).
    async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_lost() {
                return;
            }
            let until = self.valid_until();
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = changed => {}
            }
        }
    }
}

/// The actor of one remote server we deliver to.
pub struct Destination {
    name: String,
    wake: Arc<Notify>,
    worker: Option<Worker>,
}

/// What the delivery loop of one destination owns.
struct Worker {
    name: String,
    us: String,
    store: Store,
    keys: Arc<KeyRing>,
    members: Arc<RwLock<MemberServers>>,
    /// The newest `seq` the router has applied to `members`: entries after it are not read
    /// yet, so that routing always sees the membership of their time.
    routed: Arc<AtomicU64>,
    resolver: Arc<Resolver>,
    federation: FederationConfig,
    progress: Arc<Progress>,
    wake: Arc<Notify>,
    /// On a cluster node, the lease this worker delivers under; `None` on one node.
    lease: Option<Arc<Lease>>,
}

impl Actor for Destination {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(destination = %self.name, "delivery started");
        if let Some(worker) = self.worker.take() {
            // The worker returns only when its lease is lost (never on one node).
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(worker.run()).map(|(), _, ctx| ctx.stop()),
            );
        }
    }
}

impl Handler<Stop> for Destination {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Wake> for Destination {
    type Result = ();

    fn handle(&mut self, _: Wake, _: &mut Self::Context) {
        // A stored permit: a Wake that arrives while a batch is being sent is not lost.
        self.wake.notify_one();
    }
}

/// How one request to the destination ended.
enum Sent {
    /// 200: the per-event results.
    Answered(serde_json::Map<String, Value>),
    /// Worth trying again later (after this long, if the server said).
    Retry {
        after: Option<Duration>,
        error: String,
        /// Refused by the destination's quota: a smaller batch may pass where this one never
        /// will (a request over its burst).
        split: bool,
    },
    /// Refused for good (a 4xx other than 408/429).
    Refused { errcode: String, error: String },
}

impl Worker {
    async fn run(self) {
        let client = OutboundClient::new(self.resolver.clone(), &self.federation);
        let mut backoff = self.federation.delivery_backoff_base;
        loop {
            if self.lease_lost() {
                return;
            }
            let cursor = self.progress.cursor.load(Ordering::Acquire);
            let entries = match self.store.read_after(cursor, READ_CHUNK).await {
                Ok(entries) => entries,
                Err(error) => {
                    self.pause(&mut backoff, None, format!("reading the log: {error}"))
                        .await;
                    continue;
                }
            };
            let routed = self.routed.load(Ordering::Acquire);
            let entries: Vec<LogEntry> = entries.into_iter().filter(|e| e.seq <= routed).collect();
            let Some(last_seq) = entries.last().map(|e| e.seq) else {
                self.progress.set_state(DeliveryState::Idle, None);
                // Woken by the router; the timeout is a safety net, not the delivery path.
                let _ = tokio::time::timeout(Duration::from_secs(30), self.wake.notified()).await;
                continue;
            };
            let mine: Vec<&LogEntry> = {
                let members = self.members.read().unwrap_or_else(|e| e.into_inner());
                entries
                    .iter()
                    .filter(|e| targets(e, &self.us, &members).contains(&self.name))
                    .collect()
            };
            for batch in mine.chunks(BATCH) {
                self.progress.set_state(DeliveryState::Sending, None);
                self.deliver(&client, batch, &mut backoff).await;
                if !self.advance(batch[batch.len() - 1].seq).await {
                    return;
                }
            }
            if !self.advance(last_seq).await {
                return;
            }
        }
    }

    /// Whether this worker's lease is gone (never on one node): it must stop sending.
    fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|lease| lease.is_lost())
    }

    /// Whether the worker may send now: always on one node. On a cluster node, while this
    /// node's clock says the lease may have run out (no renewal for `lease_ttl`: the lease
    /// task failing or stuck on the database), it waits for a renewal rather than send beside
    /// a node that may have taken the lease; `false` when the lease is lost.
    async fn may_send(&self) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        if lease.is_valid() {
            return true;
        }
        if lease.is_lost() {
            return false;
        }
        tracing::warn!(
            destination = %self.name,
            node = %lease.node_id,
            "delivery lease not renewed within lease_ttl; not sending until it is"
        );
        self.progress.set_state(
            DeliveryState::Backoff,
            Some("delivery lease not renewed in time; waiting for a renewal".into()),
        );
        lease.usable().await
    }

    /// Delivers `batch` until every event is accepted, a duplicate or dead-lettered.
    async fn deliver(&self, client: &OutboundClient, batch: &[&LogEntry], backoff: &mut Duration) {
        loop {
            if !self.may_send().await {
                // Another node delivers this destination now, from the stored cursor.
                return;
            }
            let sent = match &self.lease {
                None => self.send(client, batch).await,
                // A request still unanswered when the lease may have run out is abandoned:
                // the batch goes again once a renewal comes (or from the next holder).
                Some(lease) => tokio::select! {
                    sent = self.send(client, batch) => sent,
                    () = lease.expired() => continue,
                },
            };
            match sent {
                Sent::Answered(results) => {
                    *backoff = self.federation.delivery_backoff_base;
                    for entry in batch {
                        let id = format!("seq:{}", entry.seq);
                        let result = results.get(&id);
                        match result.and_then(|r| r["status"].as_str()) {
                            Some("accepted" | "duplicate") => {
                                self.progress.delivered.fetch_add(1, Ordering::Relaxed);
                                self.progress.delivered_metric.inc();
                            }
                            _ => {
                                let errcode = result
                                    .and_then(|r| r["errcode"].as_str())
                                    .unwrap_or("SY_NO_RESULT");
                                let error = result
                                    .and_then(|r| r["error"].as_str())
                                    .unwrap_or("the destination gave no result for this event");
                                self.dead_letter(entry, errcode, error).await;
                            }
                        }
                    }
                    return;
                }
                Sent::Retry {
                    after,
                    error,
                    split,
                } => {
                    self.pause(backoff, after, error).await;
                    if split && batch.len() > 1 {
                        let (first, second) = batch.split_at(batch.len() / 2);
                        Box::pin(self.deliver(client, first, backoff)).await;
                        Box::pin(self.deliver(client, second, backoff)).await;
                        return;
                    }
                }
                Sent::Refused { errcode, error } => {
                    if batch.len() == 1 {
                        self.dead_letter(batch[0], &errcode, &error).await;
                    } else {
                        // Find the bad one: each event alone.
                        for entry in batch {
                            Box::pin(self.deliver(client, &[*entry], backoff)).await;
                        }
                    }
                    return;
                }
            }
        }
    }

    async fn send(&self, client: &OutboundClient, batch: &[&LogEntry]) -> Sent {
        let events: Vec<Value> = batch.iter().filter_map(|e| wire_event(e)).collect();
        let body = match serde_json::to_vec(&serde_json::json!({ "events": events })) {
            Ok(body) => body,
            Err(e) => {
                return Sent::Refused {
                    errcode: "SY_INTERNAL".into(),
                    error: e.to_string(),
                }
            }
        };
        let key = self.keys.current();
        let key_id = key.key_id();
        let timestamp = (now_ms() / 1000).to_string();
        let signature = key.sign_request(&RequestSignature {
            method: "POST",
            path: INBOX_PATH,
            origin: &self.us,
            destination: &self.name,
            timestamp: &timestamp,
            key_id: &key_id,
            body: &body,
        });
        let headers = [
            ("X-Switchyard-Origin", self.us.as_str()),
            ("X-Switchyard-Timestamp", timestamp.as_str()),
            ("X-Switchyard-Key", key_id.as_str()),
            ("X-Switchyard-Signature", signature.as_str()),
        ];
        let answer = match client.post(&self.name, INBOX_PATH, &headers, body).await {
            Ok(answer) => answer,
            Err(error) => {
                return Sent::Retry {
                    after: None,
                    error: error.to_string(),
                    split: false,
                }
            }
        };
        let parsed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let status = answer.status.as_u16();
        match status {
            200 => match parsed["results"].as_object() {
                Some(results) => Sent::Answered(results.clone()),
                None => Sent::Retry {
                    after: None,
                    error: "200 without results".into(),
                    split: false,
                },
            },
            // 401 is about the request's authentication (our key could not be fetched, a
            // clock out of the replay window), never about an event: retry, don't dead-letter.
            401 | 408 | 429 | 500..=599 => Sent::Retry {
                split: status == 429,
                after: answer.retry_after.map(Duration::from_secs),
                error: format!(
                    "{status} {}",
                    parsed["errcode"].as_str().unwrap_or("(no errcode)")
                ),
            },
            _ => Sent::Refused {
                errcode: parsed["errcode"]
                    .as_str()
                    .unwrap_or("SY_HTTP_STATUS")
                    .to_owned(),
                error: format!(
                    "{status}: {}",
                    parsed["error"].as_str().unwrap_or("(no error text)")
                ),
            },
        }
    }

    /// Waits before the next attempt: `after` when the server said, else the backoff with
    /// jitter (a random point in its upper half), which then doubles up to the maximum.
    async fn pause(&self, backoff: &mut Duration, after: Option<Duration>, error: String) {
        tracing::warn!(destination = %self.name, %error, "delivery failed; will retry");
        self.progress.set_state(DeliveryState::Backoff, Some(error));
        let wait = after.unwrap_or_else(|| {
            let half = backoff.as_secs_f64() / 2.0;
            Duration::from_secs_f64(half + rand::thread_rng().gen_range(0.0..=half))
        });
        *backoff = (*backoff * 2).min(self.federation.delivery_max_backoff);
        tokio::time::sleep(wait).await;
    }

    async fn dead_letter(&self, entry: &LogEntry, errcode: &str, error: &str) {
        let recorded = match &self.lease {
            None => {
                self.store
                    .add_dead_letter(&self.name, entry.seq, &entry.event_id, errcode, error)
                    .await
            }
            Some(lease) => match self
                .store
                .add_dead_letter_leased(
                    &self.name,
                    entry.seq,
                    &entry.event_id,
                    errcode,
                    error,
                    &lease.node_id,
                )
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => {
                    // The new holder sends this event again and records its own verdict.
                    self.refused(lease, "dead letter");
                    return;
                }
                Err(e) => Err(e),
            },
        };
        tracing::warn!(destination = %self.name, seq = entry.seq, %errcode, %error, "event dead-lettered");
        self.progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.progress.dead_lettered_metric.inc();
        if let Err(e) = recorded {
            tracing::error!(destination = %self.name, error = %e, "cannot record a dead letter");
        }
    }

    /// Moves the cursor to `seq`. Answers `false` when the write was refused because this
    /// node's lease is gone (a cluster node): the worker must stop.
    async fn advance(&self, seq: u64) -> bool {
        if self.lease_lost() {
            // `deliver` gave up on the batch when the lease went: the cursor must not pass it.
            return false;
        }
        if self.progress.cursor.load(Ordering::Acquire) >= seq {
            return true;
        }
        self.progress.cursor.store(seq, Ordering::Release);
        let written = match &self.lease {
            None => self.store.set_delivery_cursor(&self.name, seq).await,
            Some(lease) => {
                match self
                    .store
                    .set_delivery_cursor_leased(&self.name, seq, &lease.node_id)
                    .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        self.refused(lease, "cursor");
                        return false;
                    }
                    Err(error) => Err(error),
                }
            }
        };
        if let Err(error) = written {
            tracing::error!(destination = %self.name, %error, "cannot persist the delivery cursor");
        }
        true
    }

    /// A write refused for want of a valid lease: the lease is gone (expired, or taken by
    /// another node), and this worker stops; the lease task reports the loss.
    fn refused(&self, lease: &Lease, what: &str) {
        tracing::info!(
            destination = %self.name,
            node = %lease.node_id,
            what,
            "delivery write refused: this node's lease is no longer valid; stopping"
        );
        lease.lose();
    }
}

/// The last owner of a Delivery went: a graceful stop (`stop`) ran before, or the application
/// was dropped without one (`Application::build` failed after `Delivery::start`, a test
/// dropped it). Then nothing more is delivered from here: the router and lease tasks end (they
/// hold it weakly), the destinations stop, and the leases of a cluster node are not renewed
/// any more: they expire after `lease_ttl` for other nodes to take (nothing is released, as
/// nothing can be awaited here).
impl Drop for Delivery {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(router) = self
            .router
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            router.abort();
        }
        if let Some(leasing) = &mut self.leasing {
            if let Some(task) = leasing
                .task
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                task.abort();
            }
        }
        for (name, r) in self
            .running
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            if let Some(lease) = &r.lease {
                lease.lose();
            }
            r.addr.do_send(Stop);
            tracing::info!(destination = %name, "delivery dropped without a stop; destination stopped");
        }
    }
}

/// A destination as `GET /admin/v1/destinations` shows it.
///
/// On one node every field is set (the node delivers every destination) and `lease_node` is
/// absent. On a cluster node every destination is listed, whichever node delivers it: the
/// cursor, lag and dead letters come from the database (the same on every node);
/// `state`, `last_error`, `delivered` and `dead_lettered` are this node's memory of the
/// destinations it delivers, `null` for the others; `lease_node` names the node holding the
/// lease (on the database's clock), `null` when it is free.
#[derive(Debug, Serialize)]
pub struct DestinationView {
    pub destination: String,
    pub cursor: u64,
    /// Log entries after the cursor (not all of them concern this destination).
    pub lag: u64,
    pub state: Option<DeliveryState>,
    pub last_error: Option<String>,
    pub delivered: Option<u64>,
    pub dead_lettered: Option<u64>,
    pub dead_letters: Vec<entities::dead_letters::Model>,
    /// Cluster nodes only (absent on one node): the lease holder, `None` (null) when free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_node: Option<Option<String>>,
}

struct Running {
    addr: Addr<Destination>,
    progress: Arc<Progress>,
    /// The lease it runs under (cluster nodes only).
    lease: Option<Arc<Lease>>,
}

/// What a cluster node keeps for its delivery leases.
struct Leasing {
    node: NodeIdentity,
    /// Every destination this node has heard of (cursors, members, routed entries).
    known: Mutex<std::collections::HashSet<String>>,
    /// Known destinations whose lease row this node has not added yet.
    unregistered: Mutex<Vec<String>>,
    /// Wakes the lease task before its next tick (a destination new to this node).
    nudge: Arc<Notify>,
    /// The lease task, awaited by a graceful stop before it releases the leases.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Every destination, and the router that feeds them.
pub struct Delivery {
    us: String,
    store: Store,
    keys: Arc<KeyRing>,
    resolver: Arc<Resolver>,
    federation: FederationConfig,
    members: Arc<RwLock<MemberServers>>,
    routed: Arc<AtomicU64>,
    running: Mutex<HashMap<String, Running>>,
    stopped: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::telemetry::Metrics>,
    /// On a cluster node, its leases; `None` on one node, which delivers everything.
    leasing: Option<Leasing>,
    /// The router task, ended when the Delivery goes.
    router: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Delivery {
    /// Loads who is where and the cursors, starts a destination for each server that has
    /// members or a cursor, and the router on the log's committed batches. A cluster node
    /// (`node`) starts none itself: its lease task starts those whose lease it takes.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        us: &str,
        federation: &FederationConfig,
        store: Store,
        log: &EventLogHandle,
        keys: Arc<KeyRing>,
        resolver: Arc<Resolver>,
        metrics: Arc<crate::telemetry::Metrics>,
        node: Option<NodeIdentity>,
    ) -> Result<Arc<Delivery>, StoreError> {
        let committed = log.subscribe();
        let members = MemberServers::new(store.members_of_channels_at(us).await?, us);
        let cursors = store.delivery_cursors().await?;
        // Membership is loaded as of (at least) this head; later entries reach the router.
        let routed = Arc::new(AtomicU64::new(store.head().await?.0));
        let delivery = Arc::new(Delivery {
            us: us.to_owned(),
            store,
            keys,
            resolver,
            federation: federation.clone(),
            members: Arc::new(RwLock::new(members)),
            routed,
            running: Mutex::new(HashMap::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            metrics,
            leasing: node.map(|node| Leasing {
                node,
                known: Mutex::new(Default::default()),
                unregistered: Mutex::new(Vec::new()),
                nudge: Arc::new(Notify::new()),
                task: Mutex::new(None),
            }),
            router: Mutex::new(None),
        });
        let servers = delivery
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all_servers();
        match &delivery.leasing {
            None => {
                for row in cursors {
                    delivery.ensure(&row.destination, u64::try_from(row.cursor_seq).unwrap_or(0));
                }
                for server in servers {
                    // A server with members and no cursor: a crash came between its first
                    // routed event and the cursor write; it gets everything of its channels
                    // again.
                    delivery.ensure(&server, 0);
                }
            }
            Some(leasing) => {
                // Known, not started: whoever takes a lease starts from its stored cursor (a
                // server with members and no cursor from 0, as on one node).
                let mut known = leasing.known.lock().unwrap_or_else(|e| e.into_inner());
                let mut unregistered = leasing
                    .unregistered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for name in cursors
                    .into_iter()
                    .map(|row| row.destination)
                    .chain(servers)
                {
                    if known.insert(name.clone()) {
                        unregistered.push(name);
                    }
                }
            }
        }
        // Both tasks hold the Delivery weakly: dropped without `stop` (an application that
        // failed to build, or was dropped unrun), it ends them, stops its destinations and
        // renews no lease, which then expire for other nodes to take.
        let router = actix_web::rt::spawn(Delivery::route(Arc::downgrade(&delivery), committed));
        *delivery.router.lock().unwrap_or_else(|e| e.into_inner()) = Some(router);
        if let Some(leasing) = &delivery.leasing {
            let task = actix_web::rt::spawn(Delivery::hold_leases(
                Arc::downgrade(&delivery),
                leasing.nudge.clone(),
                leasing.node.lease_ttl / 3,
            ));
            *leasing.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(delivery)
    }

    /// The destination `name`, started with `cursor` if it is not running. Answers whether
    /// it was started now.
    fn ensure(&self, name: &str, cursor: u64) -> (Addr<Destination>, bool) {
        self.start_destination(name, cursor, None)
    }

    /// [`Delivery::ensure`], with the lease the destination is delivered under on a cluster
    /// node.
    fn start_destination(
        &self,
        name: &str,
        cursor: u64,
        lease: Option<Arc<Lease>>,
    ) -> (Addr<Destination>, bool) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            // Shutting down: an actor that stops at once.
            let addr = Destination {
                name: name.to_owned(),
                wake: Arc::new(Notify::new()),
                worker: None,
            }
            .start();
            let _ = addr.try_send(Stop);
            return (addr, false);
        }
        if let Some(r) = running.get(name) {
            return (r.addr.clone(), false);
        }
        let progress = Arc::new(Progress {
            delivered_metric: self
                .metrics
                .delivery_events
                .with_label_values(&[name, "delivered"]),
            dead_lettered_metric: self
                .metrics
                .delivery_events
                .with_label_values(&[name, "dead_lettered"]),
            cursor: AtomicU64::new(cursor),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            state: Mutex::new((DeliveryState::Idle, None)),
        });
        let wake = Arc::new(Notify::new());
        let addr = Destination {
            name: name.to_owned(),
            wake: wake.clone(),
            worker: Some(Worker {
                name: name.to_owned(),
                us: self.us.clone(),
                store: self.store.clone(),
                keys: self.keys.clone(),
                members: self.members.clone(),
                routed: self.routed.clone(),
                resolver: self.resolver.clone(),
                federation: self.federation.clone(),
                progress: progress.clone(),
                wake,
                lease: lease.clone(),
            }),
        }
        .start();
        running.insert(
            name.to_owned(),
            Running {
                addr: addr.clone(),
                progress,
                lease,
            },
        );
        (addr, true)
    }

    /// The router task. It holds the Delivery weakly, as the lease task does: an application
    /// dropped without a stop does not keep it (and its destinations) alive.
    async fn route(
        delivery: Weak<Self>,
        mut committed: tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    ) {
        loop {
            let received = committed.recv().await;
            let Some(this) = delivery.upgrade() else {
                break;
            };
            if this.stopped.load(Ordering::Acquire) {
                break;
            }
            match received {
                Ok(batch) => this.route_batch(&batch).await,
                Err(RecvError::Lagged(missed)) => this.reroute(missed).await,
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// The router lagged behind the log and missed `missed` batches: membership is reloaded
    /// and every destination woken.
    async fn reroute(&self, missed: u64) {
        tracing::warn!(
            missed,
            "delivery router lagged; reloading membership and waking every destination"
        );
        if let (Ok(rows), Ok((head, _))) = (
            self.store.members_of_channels_at(&self.us).await,
            self.store.head().await,
        ) {
            let members = MemberServers::new(rows, &self.us);
            let servers = members.all_servers();
            *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
            for server in servers {
                // New to us in the skipped window: from the reload on.
                match &self.leasing {
                    None => {
                        self.ensure(&server, head);
                    }
                    Some(leasing) => self.note(leasing, &server, head).await,
                }
            }
            self.routed.fetch_max(head, Ordering::AcqRel);
        }
        self.wake_all();
    }

    /// Routes one committed batch: membership updated in log order, each destination met
    /// started (one node) or noted for its lease (a cluster node), then woken.
    async fn route_batch(&self, batch: &crate::store::CommittedBatch) {
        let mut woken: Vec<String> = Vec::new();
        for entry in &batch.entries {
            let routed = {
                let members = self.members.read().unwrap_or_else(|e| e.into_inner());
                targets(entry, &self.us, &members)
            };
            self.track_membership(entry);
            for server in routed {
                if let Some(leasing) = &self.leasing {
                    // Started by whichever node holds its lease; woken below if it is us.
                    self.note(leasing, &server, entry.seq.saturating_sub(1))
                        .await;
                    if !woken.contains(&server) {
                        woken.push(server);
                    }
                    continue;
                }
                let (_, started) = self.ensure(&server, entry.seq.saturating_sub(1));
                if started {
                    if let Err(error) = self
                        .store
                        .set_delivery_cursor(&server, entry.seq.saturating_sub(1))
                        .await
                    {
                        tracing::error!(destination = %server, %error, "cannot persist a new delivery cursor");
                    }
                }
                if !woken.contains(&server) {
                    woken.push(server);
                }
            }
        }
        if let Some(last) = batch.entries.last() {
            self.routed.fetch_max(last.seq, Ordering::AcqRel);
        }
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for server in woken {
            if let Some(r) = running.get(&server) {
                // A full mailbox already holds a Wake.
                let _ = r.addr.try_send(Wake);
            }
        }
    }

    fn track_membership(&self, entry: &LogEntry) {
        let ops = projection::membership_ops(entry);
        if ops.is_empty() {
            return;
        }
        let ours: Vec<_> = ops
            .into_iter()
            .filter(|op| match op {
                projection::ProjectionOp::SetMembership { channel, .. } => {
                    crate::core::ids::parse_channel_ref(channel)
                        .is_some_and(|(_, home)| home == self.us)
                }
                _ => false,
            })
            .collect();
        self.members
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&ours, &self.us);
    }

    /// Stops every destination and the router (shutdown). A cluster node then releases the
    /// leases it held, so other nodes take them over at their next tick instead of waiting
    /// for them to expire.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for r in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = r.addr.try_send(Stop);
        }
        let Some(leasing) = &self.leasing else {
            return;
        };
        // The lease task ends after its current tick: a claim in flight is released below.
        leasing.nudge.notify_one();
        let task = leasing
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let held: Vec<String> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            for r in running.values() {
                if let Some(lease) = &r.lease {
                    lease.lose();
                }
            }
            running.drain().map(|(name, _)| name).collect()
        };
        match self
            .store
            .release_delivery_leases(&leasing.node.node_id, None)
            .await
        {
            Ok(released) => tracing::info!(
                node = %leasing.node.node_id,
                released,
                destinations = ?held,
                "delivery leases released"
            ),
            Err(error) => tracing::warn!(
                node = %leasing.node.node_id,
                %error,
                "cannot release the delivery leases; other nodes take them when they expire"
            ),
        }
        self.metrics.delivery_leases_held.set(0);
    }

    /// Stops delivering as a crash would: the actors and the lease task end, nothing is
    /// released or written, and the held leases expire after `lease_ttl` for other nodes
    /// to take (what the takeover tests simulate a dead node with).
    pub fn halt(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(leasing) = &self.leasing {
            if let Some(task) = leasing
                .task
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                task.abort();
            }
        }
        for (_, r) in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            if let Some(lease) = &r.lease {
                lease.lose();
            }
            r.addr.do_send(Stop);
        }
    }

    /// The delivery leases this node holds: the destinations it delivers (0 on one node,
    /// which needs no leases).
    pub fn leases_held(&self) -> usize {
        match self.leasing {
            None => 0,
            Some(_) => self.running.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }

    /// The destinations this node delivers now, sorted.
    fn held(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// A destination the router meets on a cluster node: new to this node, its cursor is
    /// stored first if it has none (the `seq` before its first routed entry, the same on every
    /// node), then its lease row is due, so whoever takes the lease finds where to start.
    async fn note(&self, leasing: &Leasing, server: &str, cursor: u64) {
        if leasing
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(server)
        {
            return;
        }
        if let Err(error) = self.store.init_delivery_cursor(server, cursor).await {
            // Its lease holder starts from 0 then: more resent, nothing lost.
            tracing::error!(destination = %server, %error, "cannot store a new delivery cursor");
        }
        leasing
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server.to_owned());
        leasing
            .unregistered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(server.to_owned());
        leasing.nudge.notify_one();
    }

    /// The lease task of a cluster node: a tick every `period` (`lease_ttl / 3`), and one
    /// when the router meets a new destination (`nudge`), until the node stops or the
    /// Delivery is dropped. It holds the Delivery weakly, and strongly only during a tick: a
    /// Delivery whose last owner went without `stop` renews nothing more.
    async fn hold_leases(delivery: Weak<Self>, nudge: Arc<Notify>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last renewal was sent: every lease held then is valid until at least this
        // plus `lease_ttl` on the database's clock (it set `until_ms` after it was sent).
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = nudge.notified() => {}
            }
            let Some(this) = delivery.upgrade() else {
                break;
            };
            let Some(leasing) = &this.leasing else {
                break;
            };
            if this.stopped.load(Ordering::Acquire) {
                break;
            }
            this.lease_tick(leasing, &mut renewed_at).await;
            this.metrics
                .delivery_leases_held
                .set(i64::try_from(this.leases_held()).unwrap_or(i64::MAX));
        }
    }

    /// One round of the lease task: register, renew, then claim up to the fair share or
    /// release what is above it.
    async fn lease_tick(&self, leasing: &Leasing, renewed_at: &mut tokio::time::Instant) {
        let node = leasing.node.node_id.as_str();
        let ttl = leasing.node.lease_ttl;
        let new = std::mem::take(
            &mut *leasing
                .unregistered
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if let Err(error) = self.store.register_delivery_leases(&new).await {
            tracing::warn!(node, %error, "cannot add delivery lease rows; will retry");
            leasing
                .unregistered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(new);
        }
        let held = self.held();
        let sent = tokio::time::Instant::now();
        match self.store.renew_delivery_leases(node, ttl, &held).await {
            Ok(kept) => {
                *renewed_at = sent;
                let kept: std::collections::HashSet<String> = kept.into_iter().collect();
                for name in held.iter().filter(|name| !kept.contains(*name)) {
                    self.drop_lease(leasing, name, "lost");
                }
                // Valid until at least `sent + ttl`: the database set `until_ms` after this
                // renewal was sent. A worker that stopped sending for want of a renewal
                // resumes.
                let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                for name in &kept {
                    if let Some(lease) = running.get(name).and_then(|r| r.lease.as_ref()) {
                        lease.renewed(sent + ttl);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(node, %error, "cannot renew the delivery leases; will retry");
                if tokio::time::Instant::now() >= *renewed_at + ttl {
                    // They may have expired on the database's clock: another node may be
                    // delivering them already (this node's writes would be refused anyway).
                    for name in &held {
                        self.drop_lease(leasing, name, "lost");
                    }
                }
                return;
            }
        }
        // Live means seen within one lease_ttl (nodes refresh every third of it): a dead
        // node stops counting by the time its leases lapse, so the survivors' shares grow in
        // time to take them over within 2 × lease_ttl. (Counting it for 2 × lease_ttl would
        // leave its leases unclaimed that long, every survivor being at its share.)
        let census = match self.store.delivery_lease_census(node, ttl).await {
            Ok(census) => census,
            Err(error) => {
                tracing::warn!(node, %error, "cannot count the nodes and destinations; will retry");
                return;
            }
        };
        let share = census.fair_share();
        let held = self.leases_held();
        if held < share {
            let sent = tokio::time::Instant::now();
            match self
                .store
                .claim_delivery_leases(node, ttl, share - held)
                .await
            {
                Ok(taken) => self.take_leases(leasing, taken, sent + ttl).await,
                Err(error) => {
                    tracing::warn!(node, %error, "cannot claim delivery leases; will retry")
                }
            }
        } else if held > share {
            // Above the share only when it shrank (a node joined): what is freed here goes to
            // the nodes under theirs. With ceil shares every lease fits under them, so nothing
            // flaps once the nodes agree on the census.
            let excess = self.held().split_off(share);
            for name in &excess {
                self.drop_lease(leasing, name, "released");
            }
            if let Err(error) = self
                .store
                .release_delivery_leases(node, Some(&excess))
                .await
            {
                tracing::warn!(node, %error, "cannot release delivery leases; they expire instead");
            }
        }
    }

    /// Starts delivering the destinations whose leases this node just took, each from its
    /// stored cursor as it is now (the previous holder can no longer move it). `valid_until`:
    /// when the claim may run out on this node's clock (its sending time plus `lease_ttl`).
    async fn take_leases(
        &self,
        leasing: &Leasing,
        taken: Vec<String>,
        valid_until: tokio::time::Instant,
    ) {
        let node = leasing.node.node_id.as_str();
        let cursors = match self.store.delivery_cursors_of(&taken).await {
            Ok(cursors) => cursors,
            Err(error) => {
                tracing::warn!(node, %error, "cannot read the cursors of leased destinations; releasing them");
                if let Err(error) = self.store.release_delivery_leases(node, Some(&taken)).await {
                    tracing::warn!(node, %error, "cannot release delivery leases; they expire instead");
                }
                return;
            }
        };
        for name in taken {
            // No cursor: a destination with members whose first cursor write never came (as
            // on one node, it gets everything of its channels).
            let cursor = cursors.get(&name).copied().unwrap_or(0);
            let lease = Arc::new(Lease::new(node, valid_until));
            let (_, started) = self.start_destination(&name, cursor, Some(lease));
            if started {
                tracing::info!(destination = %name, node, cursor, "delivery lease taken");
                self.metrics
                    .delivery_lease_changes
                    .with_label_values(&["taken"])
                    .inc();
            }
        }
    }

    /// Stops delivering `name`: its lease was lost or is being released.
    fn drop_lease(&self, leasing: &Leasing, name: &str, change: &'static str) {
        let removed = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let Some(r) = removed else {
            return;
        };
        if let Some(lease) = &r.lease {
            lease.lose();
        }
        // `do_send`: a mailbox full of Wakes must not keep this Stop out.
        r.addr.do_send(Stop);
        tracing::info!(destination = %name, node = %leasing.node.node_id, change, "delivery lease {change}");
        self.metrics
            .delivery_lease_changes
            .with_label_values(&[change])
            .inc();
    }

    fn wake_all(&self) {
        for r in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = r.addr.try_send(Wake);
        }
    }

    /// Sets the `delivery_lag` gauge of every destination against the log head `head`.
    pub fn export_lag(&self, head: u64) {
        for (name, r) in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let lag = head.saturating_sub(r.progress.cursor.load(Ordering::Acquire));
            self.metrics
                .delivery_lag
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }

    /// Every destination, sorted by name: on one node those it delivers (all of them), on a
    /// cluster node all of them whichever node delivers them (see [`DestinationView`]).
    pub async fn views(&self) -> Result<Vec<DestinationView>, StoreError> {
        let head = self.store.head().await?.0;
        let progress: HashMap<String, Arc<Progress>> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, r)| (name.clone(), r.progress.clone()))
            .collect();
        // (destination, cursor, lease holder): one node from its memory, a cluster node from
        // the database, so that every node answers the same list behind a load balancer.
        let mut list: Vec<(String, u64, Option<Option<String>>)> = match &self.leasing {
            None => progress
                .iter()
                .map(|(name, p)| (name.clone(), p.cursor.load(Ordering::Acquire), None))
                .collect(),
            Some(_) => {
                let mut all: std::collections::BTreeMap<String, (u64, Option<String>)> =
                    Default::default();
                for row in self.store.delivery_cursors().await? {
                    all.insert(
                        row.destination,
                        (u64::try_from(row.cursor_seq).unwrap_or(0), None),
                    );
                }
                for (name, holder) in
                    crate::store::leases::delivery_lease_holders(&self.store).await?
                {
                    // A lease row without a cursor: its holder starts from 0.
                    all.entry(name).or_insert((0, None)).1 = holder;
                }
                for name in progress.keys() {
                    all.entry(name.clone()).or_insert((0, None));
                }
                all.into_iter()
                    .map(|(name, (cursor, holder))| (name, cursor, Some(holder)))
                    .collect()
            }
        };
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut views = Vec::with_capacity(list.len());
        for (name, cursor, lease_node) in list {
            let mine = progress.get(&name);
            let (state, last_error) = match mine {
                Some(p) => {
                    let (state, error) = p.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    (Some(state), error)
                }
                None => (None, None),
            };
            views.push(DestinationView {
                dead_letters: self.store.dead_letters(&name, DEAD_LETTERS_SHOWN).await?,
                destination: name,
                cursor,
                lag: head.saturating_sub(cursor),
                state,
                last_error,
                delivered: mine.map(|p| p.delivered.load(Ordering::Relaxed)),
                dead_lettered: mine.map(|p| p.dead_lettered.load(Ordering::Relaxed)),
                lease_node,
            });
        }
        Ok(views)
    }
}

#[cfg(test)]
mod tests {
    use super::Lease;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_lease_past_its_local_validity_waits_for_a_renewal_or_its_loss() {
        let lease = Arc::new(Lease::new("n1", Instant::now() + Duration::from_millis(50)));
        assert!(lease.is_valid());
        assert!(lease.usable().await);
        // `expired` resolves once the local clock passes the validity.
        let started = Instant::now();
        lease.expired().await;
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(!lease.is_valid());

        // Expired: `usable` waits until a renewal moves the validity on.
        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move { lease.usable().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "usable without a renewal");
        lease.renewed(Instant::now() + Duration::from_secs(60));
        assert!(waiting.await.expect("task"), "a renewal makes it usable");
        assert!(lease.is_valid());

        // A renewal meanwhile keeps `expired` from resolving at the old deadline.
        let lease = Arc::new(Lease::new("n1", Instant::now() + Duration::from_millis(30)));
        let watching = tokio::spawn({
            let lease = lease.clone();
            async move { lease.expired().await }
        });
        lease.renewed(Instant::now() + Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!watching.is_finished(), "expired despite the renewal");
        // ... and a loss ends both the wait and the watch.
        let lease_waiting = Arc::new(Lease::new("n1", Instant::now()));
        let waiting = tokio::spawn({
            let lease = lease_waiting.clone();
            async move { lease.usable().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        lease_waiting.lose();
        assert!(!waiting.await.expect("task"), "a lost lease is not usable");
        lease.lose();
        watching.await.expect("task");
        // An earlier renewal never moves the validity back.
        lease.renewed(Instant::now());
        assert!(lease.valid_until() > Instant::now() + Duration::from_secs(50));
    }
}
