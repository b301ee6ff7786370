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

pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use crate::clock::now_ms;
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
}

impl Actor for Destination {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(destination = %self.name, "delivery started");
        if let Some(worker) = self.worker.take() {
            ctx.spawn(actix::fut::wrap_future(worker.run()));
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
                self.advance(batch[batch.len() - 1].seq).await;
            }
            self.advance(last_seq).await;
        }
    }

    /// Delivers `batch` until every event is accepted, a duplicate or dead-lettered.
    async fn deliver(&self, client: &OutboundClient, batch: &[&LogEntry], backoff: &mut Duration) {
        loop {
            match self.send(client, batch).await {
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
        tracing::warn!(destination = %self.name, seq = entry.seq, %errcode, %error, "event dead-lettered");
        self.progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.progress.dead_lettered_metric.inc();
        if let Err(e) = self
            .store
            .add_dead_letter(&self.name, entry.seq, &entry.event_id, errcode, error)
            .await
        {
            tracing::error!(destination = %self.name, error = %e, "cannot record a dead letter");
        }
    }

    async fn advance(&self, seq: u64) {
        if self.progress.cursor.load(Ordering::Acquire) >= seq {
            return;
        }
        self.progress.cursor.store(seq, Ordering::Release);
        if let Err(error) = self.store.set_delivery_cursor(&self.name, seq).await {
            tracing::error!(destination = %self.name, %error, "cannot persist the delivery cursor");
        }
    }
}

/// A destination as `GET /admin/v1/destinations` shows it.
#[derive(Debug, Serialize)]
pub struct DestinationView {
    pub destination: String,
    pub cursor: u64,
    /// Log entries after the cursor (not all of them concern this destination).
    pub lag: u64,
    pub state: DeliveryState,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dead_letters: Vec<entities::dead_letters::Model>,
}

struct Running {
    addr: Addr<Destination>,
    progress: Arc<Progress>,
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
}

impl Delivery {
    /// Loads who is where and the cursors, starts a destination for each server that has
    /// members or a cursor, and the router on the log's committed batches.
    pub async fn start(
        us: &str,
        federation: &FederationConfig,
        store: Store,
        log: &EventLogHandle,
        keys: Arc<KeyRing>,
        resolver: Arc<Resolver>,
        metrics: Arc<crate::telemetry::Metrics>,
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
        });
        for row in cursors {
            delivery.ensure(&row.destination, u64::try_from(row.cursor_seq).unwrap_or(0));
        }
        let servers = delivery
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all_servers();
        for server in servers {
            // A server with members and no cursor: a crash came between its first routed
            // event and the cursor write; it gets everything of its channels again.
            delivery.ensure(&server, 0);
        }
        actix_web::rt::spawn(delivery.clone().route(committed));
        Ok(delivery)
    }

    /// The destination `name`, started with `cursor` if it is not running. Answers whether
    /// it was started now.
    fn ensure(&self, name: &str, cursor: u64) -> (Addr<Destination>, bool) {
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
            }),
        }
        .start();
        running.insert(
            name.to_owned(),
            Running {
                addr: addr.clone(),
                progress,
            },
        );
        (addr, true)
    }

    async fn route(
        self: Arc<Self>,
        mut committed: tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    ) {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                break;
            }
            let batch = match committed.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(missed)) => {
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
                            self.ensure(&server, head);
                        }
                        self.routed.fetch_max(head, Ordering::AcqRel);
                    }
                    self.wake_all();
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let mut woken: Vec<String> = Vec::new();
            for entry in &batch.entries {
                let routed = {
                    let members = self.members.read().unwrap_or_else(|e| e.into_inner());
                    targets(entry, &self.us, &members)
                };
                self.track_membership(entry);
                for server in routed {
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

    /// Stops every destination and the router (shutdown).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for r in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = r.addr.try_send(Stop);
        }
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

    /// Every destination, sorted by name.
    pub async fn views(&self) -> Result<Vec<DestinationView>, StoreError> {
        let head = self.store.head().await?.0;
        let progress: Vec<(String, Arc<Progress>)> = {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let mut list: Vec<_> = running
                .iter()
                .map(|(name, r)| (name.clone(), r.progress.clone()))
                .collect();
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list
        };
        let mut views = Vec::with_capacity(progress.len());
        for (name, p) in progress {
            let cursor = p.cursor.load(Ordering::Acquire);
            let (state, last_error) = p.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            views.push(DestinationView {
                dead_letters: self.store.dead_letters(&name, DEAD_LETTERS_SHOWN).await?,
                destination: name,
                cursor,
                lag: head.saturating_sub(cursor),
                state,
                last_error,
                delivered: p.delivered.load(Ordering::Relaxed),
                dead_lettered: p.dead_lettered.load(Ordering::Relaxed),
            });
        }
        Ok(views)
    }
}
