//! The federation inbox: `POST /federation/inbox` (DESIGN §3.2, contract).
//!
//! ```text
//!  headers ─ 400 SY_MISSING_HEADER / SY_BAD_HEADER          (api::federation reads the body:
//!     │                                                       413 SY_TOO_LARGE at the cap)
//!  replay window ─ 401 SY_STALE_REQUEST
//!     │
//!  pre-verify bucket (claimed origin, source IP) ─ 429 SY_LIMIT_EXCEEDED + Retry-After
//!  in-flight cap ─ 503 SY_OVERLOADED + Retry-After
//!     │
//!  blocked origin ─ 403 SY_FORBIDDEN
//!     │
//!  key lookup (KeyResolver: cache → origin → notaries) ─ 401 SY_UNKNOWN_KEY
//!  signature (verifier threads, batched) ─ 401 SY_BAD_SIGNATURE (after one key refetch)
//!     │
//!  Origin actor: quota, one token per event ─ 429 SY_LIMIT_EXCEEDED + Retry-After
//!     │          (a cluster's shared bucket unreachable ─ 503 SY_UNAVAILABLE + Retry-After)
//!     │          ids already committed → "duplicate"
//!  body JSON, 1..100 events ─ 400 SY_BAD_JSON
//!     │
//!  per event: wire → log event (core::inbound), channel authorisation, a relayed message's
//!     │        author signature (identity::signed) → "rejected"; author's home down → 503
//!     │
//!  one append (group commit) → "accepted" {seq} / "duplicate"; Origin told what committed
//! ```
//! A request that fails a step never reaches a later one: no key is fetched, no signature
//! checked, no database touched for a request a cheaper check refused.

pub mod membership;
pub mod origin;
pub mod shared_quota;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde_json::{json, Map, Value};

use crate::clock::now_ms;
use crate::config::FederationConfig;
use crate::core::event::{EventType, PreparedEvent};
use crate::core::ids;
use crate::core::inbound::{self, Rejection};
use crate::core::projection::{self, Membership, ProjectionOp};
use crate::error::{ApiError, ErrorKind};
use crate::federation::client::OutboundClient;
use crate::federation::keys::resolver::{KeyLookupError, KeyResolver};
use crate::federation::signing::{RequestSignature, SignatureError};
use crate::store::{AppendOutcome, EventLogHandle, Store, StoreError};
use crate::telemetry::Metrics;

use self::membership::MembershipView;
use self::origin::{Admit, Committed, Counters, Limited, Origins, Policy, PolicySource};
use self::shared_quota::SharedBuckets;
use crate::federation::verifier::{SignatureVerifier, VerifyError};
use crate::identity::foreign::ForeignEntry;
use crate::identity::sessions::Sessions;
use crate::identity::signed::{self, RelayVerdict};

/// The path the inbox is served at, as it appears in the signed bytes.
pub const INBOX_PATH: &str = "/federation/inbox";
/// Most events in one request.
pub const MAX_EVENTS: usize = 100;
/// An origin without a policy and without requests for this long is forgotten.
const ORIGIN_IDLE_MS: u64 = 24 * 3600 * 1000;
/// A cluster's shared bucket untouched for this long is deleted (it has refilled for any
/// burst up to 10,080 × its rate per minute; a missing bucket starts full).
const BUCKET_IDLE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The four signature headers of a federation request, as sent.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    pub origin: String,
    pub timestamp: String,
    pub key_id: String,
    pub signature: String,
}

impl SignedHeaders {
    /// Reads and checks the four headers: 400 `SY_MISSING_HEADER` or `SY_BAD_HEADER`.
    pub fn parse(headers: &actix_web::http::header::HeaderMap) -> Result<SignedHeaders, ApiError> {
        let get = |name: &'static str| -> Result<String, ApiError> {
            let value = headers.get(name).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::MissingHeader,
                    format!("the {name} header is required"),
                )
            })?;
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::new(
                    ErrorKind::BadHeader,
                    format!("{name} must be visible ASCII"),
                )
            })
        };
        let bad = |message: &'static str| ApiError::new(ErrorKind::BadHeader, message);
        let origin = get("X-Switchyard-Origin")?;
        let timestamp = get("X-Switchyard-Timestamp")?;
        let key_id = get("X-Switchyard-Key")?;
        let signature = get("X-Switchyard-Signature")?;
        if !ids::is_server_name(&origin) {
            return Err(bad(
                "X-Switchyard-Origin must be a server name (host[:port])",
            ));
        }
        let digits = timestamp.strip_prefix('-').unwrap_or(&timestamp);
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "X-Switchyard-Timestamp must be an integer (unix seconds)",
            ));
        }
        let version = key_id.strip_prefix("ed25519:").unwrap_or("");
        if version.is_empty()
            || version.len() > 64
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad("X-Switchyard-Key must be ed25519:<key id>"));
        }
        let decodes = signature.len() == 86
            && crate::federation::signing::unb64(&signature).is_some_and(|s| s.len() == 64);
        if !decodes {
            return Err(bad(
                "X-Switchyard-Signature must be unpadded base64 of a 64-byte ed25519 signature",
            ));
        }
        Ok(SignedHeaders {
            origin,
            timestamp,
            key_id,
            signature,
        })
    }

    /// The timestamp in unix seconds (checked by [`SignedHeaders::parse`]).
    pub fn timestamp_secs(&self) -> i64 {
        self.timestamp.parse().unwrap_or(i64::MIN)
    }
}

type PreLimiter = RateLimiter<
    (String, IpAddr),
    governor::state::keyed::DefaultKeyedStateStore<(String, IpAddr)>,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything the inbox needs, shared by the request handlers of every worker.
pub struct Inbox {
    server_name: String,
    replay_window_secs: i64,
    max_inflight: usize,
    inflight: AtomicUsize,
    preverify: PreLimiter,
    pub origins: Origins,
    resolver: Arc<KeyResolver>,
    verifier: SignatureVerifier,
    log: EventLogHandle,
    store: Store,
    membership: MembershipView,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxStartError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The operator's policies as the `origin_policies` projection holds them, each with the
/// `seq` that set it.
async fn admin_policies(store: &Store) -> Result<Vec<(String, Policy, u64)>, StoreError> {
    Ok(store
        .origin_policies()
        .await?
        .into_iter()
        .map(|row| {
            (
                row.origin,
                Policy {
                    rate_per_minute: u32::try_from(row.rate_per_minute).unwrap_or(u32::MAX),
                    burst: u32::try_from(row.burst).unwrap_or(u32::MAX),
                    blocked: row.blocked,
                    source: PolicySource::Admin,
                },
                u64::try_from(row.updated_seq).unwrap_or(0),
            )
        })
        .collect())
}

impl Inbox {
    /// The inbox of one node. With `node` (a cluster, DESIGN §7) the per-origin quotas take
    /// from buckets in PostgreSQL shared by every node, and the origin policies follow the
    /// log, so that one set through any node's admin API applies on all of them.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        server_name: &str,
        config: &FederationConfig,
        store: &Store,
        log: EventLogHandle,
        resolver: Arc<KeyResolver>,
        verifier: SignatureVerifier,
        metrics: Arc<Metrics>,
        node: Option<&crate::cluster::NodeIdentity>,
    ) -> Result<Arc<Inbox>, InboxStartError> {
        // Subscribed before the projection is read: a policy committed in between arrives
        // twice, and the second application is a no-op (policies carry their seq).
        let policies = node.map(|_| log.subscribe());
        let admin = admin_policies(store).await?;
        let mut origins = Origins::new(config, admin);
        if node.is_some() {
            origins = origins.in_cluster(SharedBuckets::new(store.clone(), &metrics));
        }
        let per_second =
            NonZeroU32::new(config.preverify_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.preverify_burst).unwrap_or(NonZeroU32::MIN);
        let inbox = Arc::new(Inbox {
            server_name: server_name.to_owned(),
            replay_window_secs: i64::try_from(config.replay_window.as_secs()).unwrap_or(i64::MAX),
            max_inflight: config.max_inflight_requests,
            inflight: AtomicUsize::new(0),
            preverify: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            origins,
            resolver,
            verifier,
            membership: MembershipView::start(store.clone(), &log),
            store: store.clone(),
            log,
            metrics,
        });
        // The pre-verify buckets of quiet (origin, address) pairs are forgotten every minute
        // (and, in a cluster, the shared buckets of origins long quiet).
        let weak = Arc::downgrade(&inbox);
        let policies_followed = policies.is_some();
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(inbox) = weak.upgrade() else { break };
                inbox.preverify.retain_recent();
                inbox.preverify.shrink_to_fit();
                let now = u64::try_from(now_ms()).unwrap_or(0);
                for origin in inbox.origins.evict_idle(ORIGIN_IDLE_MS, now) {
                    for result in ["accepted", "duplicate", "rejected", "limited"] {
                        let _ = inbox
                            .metrics
                            .inbox_events
                            .remove_label_values(&[origin.as_str(), result]);
                    }
                }
                if policies_followed {
                    if let Err(error) = inbox.store.forget_idle_origin_buckets(BUCKET_IDLE).await {
                        tracing::warn!(%error, "cannot delete idle shared quota buckets");
                    }
                }
            }
        });
        if let Some(committed) = policies {
            Self::follow_policies(Arc::downgrade(&inbox), committed);
        }
        Ok(inbox)
    }

    /// A cluster node applies every committed `origin.policy` event, whichever node's admin
    /// API recorded it. A subscriber that lagged reads the projection again (every policy
    /// with the seq that set it, so nothing newer is undone).
    fn follow_policies(
        inbox: std::sync::Weak<Inbox>,
        mut committed: tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        actix_web::rt::spawn(async move {
            loop {
                let received = committed.recv().await;
                let Some(inbox) = inbox.upgrade() else { break };
                match received {
                    Ok(batch) => {
                        inbox.origins.apply_committed(&batch.entries);
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "origin policies: the log ran ahead; re-reading them"
                        );
                        match admin_policies(&inbox.store).await {
                            Ok(policies) => {
                                for (name, policy, seq) in policies {
                                    inbox.origins.apply_policy(&name, policy, seq);
                                }
                            }
                            Err(error) => {
                                tracing::error!(%error, "cannot re-read the origin policies after a lag")
                            }
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Who is in which channel, kept current from the log (shared with the client routes).
    pub fn membership(&self) -> &MembershipView {
        &self.membership
    }

    pub fn log(&self) -> &EventLogHandle {
        &self.log
    }

    /// Key fetches the inbox's key resolver has made (tests check that cheap rejections make
    /// none).
    pub fn key_fetches(&self) -> u64 {
        self.resolver.fetches()
    }

    /// Steps 2–4 of the pipeline: replay window, pre-verify bucket, in-flight cap, blocked.
    /// Cheap, and run before the body is read.
    fn admit_request(
        &self,
        headers: &SignedHeaders,
        peer: IpAddr,
    ) -> Result<InFlight<'_>, ApiError> {
        let skew = now_ms() / 1000 - headers.timestamp_secs();
        if skew.abs() > self.replay_window_secs {
            return Err(ApiError::new(
                ErrorKind::StaleRequest,
                format!(
                    "X-Switchyard-Timestamp is {skew} s away from this server's clock (the window is ±{} s)",
                    self.replay_window_secs
                ),
            ));
        }
        let key = (headers.origin.clone(), peer);
        if let Err(not_until) = self.preverify.check_key(&key) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                "too many requests from this origin and address",
            )
            .retry_after(wait.as_secs_f64().ceil() as u64));
        }
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                "the inbox is handling as many requests as it can; retry shortly",
            ));
        }
        let guard = InFlight(&self.inflight);
        if self.origins.policy(&headers.origin).blocked {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("{} is blocked by this server's operator", headers.origin),
            ));
        }
        Ok(guard)
    }

    /// Step 5: the origin's key, and its signature over the request.
    async fn authenticate(
        &self,
        client: &OutboundClient,
        headers: &SignedHeaders,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let signed = RequestSignature {
            method,
            path,
            origin: &headers.origin,
            destination: &self.server_name,
            timestamp: &headers.timestamp,
            key_id: &headers.key_id,
            body,
        };
        let signed_at = headers.timestamp_secs().saturating_mul(1000);
        let mut refetched = false;
        loop {
            let key = self
                .resolver
                .key(client, &headers.origin, &headers.key_id, signed_at)
                .await
                .map_err(|error| {
                    let message = match &error {
                        KeyLookupError::Unreachable(_) => format!(
                            "the keys of {} cannot be fetched to check this request",
                            headers.origin
                        ),
                        other => other.to_string(),
                    };
                    ApiError::new(ErrorKind::UnknownKey, message).with_cause(error)
                })?;
            let check = signed
                .pending_check(&headers.signature, key)
                .map_err(|e: SignatureError| ApiError::new(ErrorKind::BadHeader, e.to_string()))?;
            let valid = self.verifier.verify(check).await.map_err(|e| match e {
                VerifyError::Overloaded => ApiError::new(
                    ErrorKind::Overloaded,
                    "too many signatures waiting to be checked; retry shortly",
                ),
                VerifyError::Stopped => ApiError::internal(e),
            })?;
            if valid {
                return Ok(());
            }
            // The origin may have rotated its key: refetch once (rate-limited), then give up.
            if refetched {
                break;
            }
            refetched = true;
            self.resolver.signature_failed(&headers.origin).await;
        }
        Err(ApiError::new(
            ErrorKind::BadSignature,
            format!(
                "the signature does not match {}'s key {} over this request",
                headers.origin, headers.key_id
            ),
        ))
    }

    /// Runs the whole pipeline for one request whose headers are `headers` and body `body`.
    pub async fn receive(
        &self,
        client: &OutboundClient,
        sessions: &Sessions,
        headers: &SignedHeaders,
        peer: IpAddr,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let started = Instant::now();
        let answer = self.pipeline(client, sessions, headers, peer, body).await;
        self.metrics
            .inbox_request_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match &answer {
            Ok(_) => "ok",
            Err(e) => e.kind.errcode(),
        };
        self.metrics
            .inbox_requests
            .with_label_values(&[label])
            .inc();
        answer
    }

    /// Steps 2–5 for any other signed federation route (DESIGN §3.3): replay window,
    /// pre-verify bucket, in-flight cap, blocked origin, key and signature over `method`,
    /// `path` (with its query string, as sent) and `body`.
    pub async fn check_signed_request(
        &self,
        client: &OutboundClient,
        headers: &SignedHeaders,
        peer: IpAddr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let _in_flight = self.admit_request(headers, peer)?;
        self.authenticate(client, headers, method, path, body).await
    }

    async fn pipeline(
        &self,
        client: &OutboundClient,
        sessions: &Sessions,
        headers: &SignedHeaders,
        peer: IpAddr,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        // The in-flight slot is held for the whole pipeline, not only the signature check.
        let _in_flight = self.admit_request(headers, peer)?;
        self.authenticate(client, headers, "POST", INBOX_PATH, body)
            .await?;
        let origin = headers.origin.as_str();
        let counters = self.origins.counters(origin);
        Counters::add(&counters.requests, 1);
        counters
            .last_request_ms
            .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::Relaxed);

        // Parsed now to count the events the quota is charged for; a malformed body is
        // answered after the quota check, as the pipeline orders it.
        let parsed = parse_body(body);
        let (charge, event_ids) = match &parsed {
            Ok(events) => (
                events.len(),
                events
                    .iter()
                    .map(|e| inbound::event_id(e).unwrap_or_default().to_owned())
                    .collect(),
            ),
            Err(_) => (1, Vec::new()),
        };
        let admitted = self.admit_to_origin(origin, charge, event_ids).await;
        let committed_before = match admitted {
            Ok(seen) => seen,
            Err(error) => {
                if error.kind == ErrorKind::LimitExceeded {
                    Counters::add(&counters.limited, 1);
                    self.metrics
                        .inbox_events
                        .with_label_values(&[origin, "limited"])
                        .inc_by(charge as u64);
                }
                return Err(error);
            }
        };
        let events = parsed?;

        let mut results: Map<String, Value> = Map::new();
        let mut accepted: Vec<PreparedEvent> = Vec::new();
        let mut seen = RequestView::default();
        let mut rejected = 0u64;
        let mut duplicates = 0u64;
        // Other servers' certificates that signed accepted messages (recorded with them).
        let mut certificates: Vec<ForeignEntry> = Vec::new();
        for (index, (event, already)) in events.iter().zip(committed_before).enumerate() {
            let Some(id) = inbound::event_id(event) else {
                // The result is keyed by the id as sent when it is a string of sane length,
                // else by `#<index in the request>`.
                rejected += 1;
                let key = match event.get("event_id").and_then(Value::as_str) {
                    Some(sent) if sent.len() <= 1024 => sent.to_owned(),
                    _ => format!("#{index}"),
                };
                results.insert(
                    key,
                    rejected_result(&Rejection {
                        errcode: "SY_BAD_EVENT",
                        error: "\"event_id\" must be 1..255 characters of [A-Za-z0-9._:-]".into(),
                    }),
                );
                continue;
            };
            if already || results.contains_key(id) {
                duplicates += 1;
                results
                    .entry(id.to_owned())
                    .or_insert_with(|| json!({"status": "duplicate"}));
                continue;
            }
            let checked = match inbound::to_log_event(origin, event) {
                Ok(prepared) => match self.authorize(origin, &prepared, &mut seen).await? {
                    Ok(()) => self
                        .check_signature(sessions, &prepared, &mut certificates)
                        .await?
                        .map(|()| prepared),
                    Err(rejection) => Err(rejection),
                },
                Err(rejection) => Err(rejection),
            };
            match checked {
                Ok(prepared) => {
                    seen.note(&prepared);
                    results.insert(id.to_owned(), Value::Null);
                    accepted.push(prepared);
                }
                Err(rejection) => {
                    rejected += 1;
                    results.insert(id.to_owned(), rejected_result(&rejection));
                }
            }
        }

        let mut appended = 0u64;
        if !accepted.is_empty() {
            let ids: Vec<String> = accepted.iter().map(|e| e.event_id.clone()).collect();
            let memberships: Vec<Vec<ProjectionOp>> = accepted
                .iter()
                .map(|e| {
                    if is_membership(e.event_type) {
                        projection::derive(
                            e.event_type,
                            e.sender.as_deref(),
                            e.channel.as_deref(),
                            e.origin_ts,
                            &e.content,
                        )
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            // The certificates new to us are recorded after the events, in the same commit.
            let mut batch = accepted;
            let mut recorded = Vec::new();
            for entry in &certificates {
                if let Some(event) = sessions.seen_event(entry).and_then(|e| e.prepare().ok()) {
                    batch.push(event);
                    recorded.push(entry);
                }
            }
            let outcomes = self.log.append_prepared(batch).await.map_err(|error| {
                ApiError::new(
                    ErrorKind::Unavailable,
                    "the events could not be committed; nothing was recorded, retry the request",
                )
                .with_cause(error)
            })?;
            for entry in recorded {
                sessions.foreign().recorded(entry);
            }
            for (ops, outcome) in memberships.iter().zip(&outcomes) {
                if let AppendOutcome::Appended { seq } = outcome {
                    self.membership.apply(*seq, ops);
                }
            }
            for (id, outcome) in ids.iter().zip(&outcomes) {
                let result = match outcome {
                    AppendOutcome::Appended { seq } => {
                        appended += 1;
                        json!({"status": "accepted", "seq": seq})
                    }
                    AppendOutcome::Duplicate { .. } => {
                        duplicates += 1;
                        json!({"status": "duplicate"})
                    }
                };
                results.insert(id.clone(), result);
            }
            let actor = self.origins.actor(origin);
            // Bounded: if the actor's mailbox is full the ids are not remembered, and the
            // log's unique index still answers a repeat as a duplicate.
            let _ = actor.try_send(Committed { event_ids: ids });
        }
        Counters::add(&counters.accepted, appended);
        Counters::add(&counters.duplicates, duplicates);
        Counters::add(&counters.rejected, rejected);
        let events_metric = &self.metrics.inbox_events;
        for (result, n) in [
            ("accepted", appended),
            ("duplicate", duplicates),
            ("rejected", rejected),
        ] {
            if n > 0 {
                events_metric.with_label_values(&[origin, result]).inc_by(n);
            }
        }
        Ok(json!({"results": results}))
    }

    async fn admit_to_origin(
        &self,
        origin: &str,
        charge: usize,
        event_ids: Vec<String>,
    ) -> Result<Vec<bool>, ApiError> {
        let charge = u32::try_from(charge.max(1)).unwrap_or(u32::MAX);
        let message = || Admit {
            charge,
            event_ids: event_ids.clone(),
        };
        // An actor that stopped for idleness between lookup and send is started again.
        let answer = match self.origins.actor(origin).send(message()).await {
            Ok(answer) => answer,
            Err(_) => self
                .origins
                .actor(origin)
                .send(message())
                .await
                .map_err(ApiError::internal)?,
        };
        answer.map_err(|limited| match limited {
            Limited::RetryAfter(wait) => ApiError::new(
                ErrorKind::LimitExceeded,
                format!("{origin} is over its quota of events"),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64),
            Limited::OverBurst { burst } => ApiError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "this request has {charge} events; {origin} may send at most {burst} at once"
                ),
            )
            .retry_after(60),
            Limited::Unavailable => ApiError::new(
                ErrorKind::Unavailable,
                format!("the quota of {origin} cannot be checked now; nothing was recorded, retry shortly"),
            )
            .retry_after(1),
        })
    }

    /// A relayed message's author signature (DESIGN §4.4): a bad one rejects the event
    /// (`SY_BAD_SIGNATURE`); an author's home that cannot be asked fails the request (503).
    async fn check_signature(
        &self,
        sessions: &Sessions,
        event: &PreparedEvent,
        certificates: &mut Vec<ForeignEntry>,
    ) -> Result<Result<(), Rejection>, ApiError> {
        let verdict = signed::check_relayed(
            sessions,
            &self.server_name,
            event,
            self.replay_window_secs.saturating_mul(1000),
        )
        .await
        .map_err(ApiError::from)?;
        Ok(match verdict {
            RelayVerdict::Accept(Some(entry)) => {
                if !certificates
                    .iter()
                    .any(|e| e.cert.fid == entry.cert.fid && e.cert.serial == entry.cert.serial)
                {
                    certificates.push(*entry);
                }
                Ok(())
            }
            RelayVerdict::Accept(None) => Ok(()),
            RelayVerdict::Reject(error) => Err(Rejection {
                errcode: "SY_BAD_SIGNATURE",
                error,
            }),
        })
    }

    /// Channel rules for an event that is well-formed and from a user of `origin`.
    ///
    /// - A channel homed here: messages and invites need the sender joined; join and leave
    ///   need an invite or membership.
    /// - A channel homed at the origin: the origin orders its own channel's events; we take
    ///   them as they come (we hold members of that channel).
    /// - Any other channel: refused; events go to the channel's home server.
    /// - `sender_key.distribute`: the recipient must be a user of this server.
    async fn authorize(
        &self,
        origin: &str,
        event: &PreparedEvent,
        seen: &mut RequestView,
    ) -> Result<Result<(), Rejection>, ApiError> {
        let forbidden = |error: String| {
            Ok(Err(Rejection {
                errcode: "SY_FORBIDDEN",
                error,
            }))
        };
        let unavailable = |e: StoreError| {
            ApiError::new(
                ErrorKind::Unavailable,
                "channel state could not be read; nothing was recorded, retry the request",
            )
            .with_cause(e)
        };
        let ours = |fid: &str| ids::parse_fid(fid).is_some_and(|(_, s)| s == self.server_name);
        if event.event_type == EventType::SenderKeyDistribute {
            let recipient = event
                .content
                .get("recipient")
                .and_then(Value::as_str)
                .unwrap_or("");
            return if ours(recipient) {
                Ok(Ok(()))
            } else {
                forbidden(format!(
                    "the recipient {recipient} is not a user of this server"
                ))
            };
        }
        let (Some(channel), Some(sender)) = (event.channel.as_deref(), event.sender.as_deref())
        else {
            return Ok(Err(Rejection {
                errcode: "SY_BAD_EVENT",
                error: "this event needs a channel and a sender".into(),
            }));
        };
        let home = ids::parse_channel_ref(channel).map_or("", |(_, home)| home);
        if home == origin {
            // The home server orders its channel and relays its members' events; it never
            // speaks for our own users (their events start here), and it sends us only the
            // channels we have members in, or an invite of one of our users.
            if ours(sender) {
                return forbidden(format!(
                    "{sender} is a user of this server; {origin} cannot relay for them"
                ));
            }
            let invites_ours = event.event_type == EventType::ChannelInvite
                && event
                    .content
                    .get("invitee")
                    .and_then(Value::as_str)
                    .is_some_and(ours);
            let member_here = invites_ours
                || seen.local_member.contains(channel)
                || self
                    .membership
                    .has_local_member(channel, &self.server_name)
                    .await
                    .map_err(unavailable)?;
            if !member_here {
                return forbidden(format!("{channel} has no member on this server"));
            }
            if invites_ours {
                seen.local_member.insert(channel.to_owned());
            }
            return Ok(Ok(()));
        }
        if home != self.server_name {
            return forbidden(format!(
                "{channel} is homed at {home}; its events go to that server"
            ));
        }
        let key = (channel.to_owned(), sender.to_owned());
        let state = match seen.members.get(&key) {
            Some(state) => *state,
            None => self
                .membership
                .get(channel, sender)
                .await
                .map_err(unavailable)?,
        };
        let allowed = match event.event_type {
            EventType::ChannelJoin | EventType::ChannelLeave => {
                matches!(state, Some(Membership::Invited | Membership::Joined))
            }
            _ => state == Some(Membership::Joined),
        };
        if !allowed {
            let need = match event.event_type {
                EventType::ChannelJoin => "an invite",
                EventType::ChannelLeave => "membership",
                _ => "to be joined",
            };
            return forbidden(format!(
                "{sender} is not allowed this in {channel}: {} needs {need}",
                event.event_type
            ));
        }
        // Only a message's author edits or deletes it.
        if let EventType::MessageEdit | EventType::MessageDelete = event.event_type {
            let message_id = event
                .content
                .get("message_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let message_key = (channel.to_owned(), message_id.to_owned());
            // The stored message first: a `message.new` earlier in this request reusing an
            // existing id does not make its sender the author.
            let author = match self
                .store
                .message_sender(channel, message_id)
                .await
                .map_err(unavailable)?
            {
                Some(author) => Some(author),
                None => seen.messages.get(&message_key).cloned(),
            };
            match author {
                Some(Some(author)) if author == sender => {}
                Some(_) => return forbidden(format!("{sender} is not the author of {message_id}")),
                None => {
                    return forbidden(format!("{message_id} is not a live message of {channel}"))
                }
            }
        }
        Ok(Ok(()))
    }
}

/// What the events accepted so far in one request changed, for the checks of the next ones.
#[derive(Default)]
struct RequestView {
    members: HashMap<(String, String), Option<Membership>>,
    /// Messages created in this request: their authors.
    messages: HashMap<(String, String), Option<String>>,
    /// Channels homed elsewhere that one of our users is invited to in this request.
    local_member: std::collections::HashSet<String>,
}

impl RequestView {
    /// Notes what `event`, accepted, changes (only once every check of it has passed).
    fn note(&mut self, event: &PreparedEvent) {
        for op in projection::derive(
            event.event_type,
            event.sender.as_deref(),
            event.channel.as_deref(),
            event.origin_ts,
            &event.content,
        ) {
            match op {
                ProjectionOp::SetMembership {
                    channel,
                    fid,
                    state,
                } => {
                    self.members.insert((channel, fid), Some(state));
                }
                ProjectionOp::InsertMessage {
                    channel,
                    message_id,
                    sender,
                    ..
                } => {
                    self.messages.entry((channel, message_id)).or_insert(sender);
                }
                _ => {}
            }
        }
    }
}

fn is_membership(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::ChannelInvite | EventType::ChannelJoin | EventType::ChannelLeave
    )
}

fn rejected_result(rejection: &Rejection) -> Value {
    json!({"status": "rejected", "errcode": rejection.errcode, "error": rejection.error})
}

/// Step 7: `{"events": [1..100 events]}`.
fn parse_body(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Body {
        events: Vec<Value>,
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::BadJson,
            format!("the body must be {{\"events\": [...]}}: {e}"),
        )
    })?;
    if body.events.is_empty() || body.events.len() > MAX_EVENTS {
        return Err(ApiError::new(
            ErrorKind::BadJson,
            format!(
                "a request carries 1..{MAX_EVENTS} events, not {}",
                body.events.len()
            ),
        ));
    }
    Ok(body.events)
}
