//! One `Origin` actor per remote server that sends to our inbox, and the registry that finds
//! (or starts) it.
//!
//! ```text
//!  inbox request (signature valid)
//!     │ Admit { charge: n events, event_ids }
//!     ▼
//!  Origin actor ── quota, n tokens (429 + Retry-After when short):
//!     │            one node: a governor token bucket in memory;
//!     │            a cluster: the origin's shared bucket in PostgreSQL, taken from in
//!     │            batches (`shared_quota`; 503 + Retry-After when it cannot be reached)
//!     │          └ dedup: event ids committed within federation.dedup_ttl → "duplicate"
//!     ▼
//!  append ── committed ──▶ Committed { event_ids } (remembered for dedup)
//! ```
//! The actor starts on first contact and stops after `idle` without traffic; its policy and
//! counters live in the registry, so they outlast it. Only ids that were committed are
//! remembered: an append that fails leaves nothing behind, and the sender's retry is accepted.
//! Two requests carrying the same new id at once both reach the log, whose unique index on
//! `(origin, event_id)` makes the second a duplicate. The same holds across the nodes of a
//! cluster: each node remembers only what it committed, and the index, in the one database,
//! answers any repeat that reaches another node as a duplicate. The memory only spares the
//! log repeats; it is never the truth.
//!
//! Policy precedence: the operator's last `origin.policy` event (admin API), else
//! `federation.origins.<name>` from config, else the defaults. Each policy in force carries
//! the `seq` of the event that set it, and an older one never replaces a newer one: the admin
//! handler applies its own event at once, and in a cluster every node also applies the
//! committed events it follows ([`Origins::apply_committed`], fed by the inbox's subscriber
//! to the log), in whatever order the two arrive.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::Serialize;

use super::shared_quota::{Allowance, Charge, SharedBuckets};
use crate::config::FederationConfig;
use crate::core::event::{EventType, LogEntry};
use crate::core::projection::{self, ProjectionOp};

/// Most remembered event ids per origin.
const DEDUP_CAPACITY: u64 = 200_000;

/// Where an origin's policy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    Default,
    Config,
    Admin,
}

/// What the operator allows one origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub rate_per_minute: u32,
    pub burst: u32,
    pub blocked: bool,
    pub source: PolicySource,
}

/// Counters of one origin since this process started.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub limited: AtomicU64,
    pub last_request_ms: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An origin as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct OriginView {
    pub origin: String,
    pub rate_per_minute: u32,
    pub burst: u32,
    pub blocked: bool,
    pub policy_source: PolicySource,
    /// Whether its actor is running (it stops when idle).
    pub active: bool,
    pub requests: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub limited: u64,
    /// ms; 0 if none since start.
    pub last_request_ts: u64,
}

struct Entry {
    policy: RwLock<Policy>,
    /// The `seq` of the `origin.policy` event in force (0: config or defaults), written
    /// under the `policy` lock.
    policy_seq: AtomicU64,
    counters: Arc<Counters>,
    actor: Mutex<Option<Addr<Origin>>>,
}

/// Not admitted: the quota is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Try again after this long.
    RetryAfter(Duration),
    /// The request alone holds more events than the burst allows.
    OverBurst { burst: u32 },
    /// The cluster's shared bucket could not be reached (503, retry shortly).
    Unavailable,
}

/// Charges the quota for `charge` events; answers, for each id, whether it was already
/// committed.
#[derive(Message)]
#[rtype(result = "Result<Vec<bool>, Limited>")]
pub struct Admit {
    pub charge: u32,
    pub event_ids: Vec<String>,
}

/// These ids are in the log now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub event_ids: Vec<String>,
}

/// The operator changed the quota.
#[derive(Message)]
#[rtype(result = "()")]
struct SetQuota {
    policy: Policy,
}

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

fn limiter(policy: &Policy) -> Limiter {
    let rate = NonZeroU32::new(policy.rate_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(policy.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_minute(rate).allow_burst(burst))
}

/// Where an origin's tokens come from. Fixed when its actor starts.
enum Bucket {
    /// One node: a governor bucket in memory.
    Local { limiter: Limiter, burst: u32 },
    /// A cluster: this node's allowance from the origin's bucket in PostgreSQL.
    Shared {
        allowance: Allowance,
        buckets: SharedBuckets,
    },
}

/// The actor of one remote server.
pub struct Origin {
    name: String,
    bucket: Bucket,
    committed: moka::sync::Cache<String, ()>,
    last_active: Instant,
    idle: Duration,
}

impl Origin {
    fn seen(&self, event_ids: &[String]) -> Vec<bool> {
        event_ids
            .iter()
            .map(|id| self.committed.contains_key(id))
            .collect()
    }

    /// Gives a shared allowance unused for `HOLD` back to the bucket.
    fn return_unused(&mut self, now: Instant) {
        if let Bucket::Shared { allowance, buckets } = &mut self.bucket {
            let unused = allowance.expire(now);
            buckets.give_back(&self.name, unused, allowance.burst());
        }
    }
}

impl Actor for Origin {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(origin = %self.name, "origin actor started");
        ctx.run_interval(self.idle / 2, |actor, ctx| {
            if actor.last_active.elapsed() >= actor.idle {
                tracing::debug!(origin = %actor.name, "origin actor idle, stopping");
                ctx.stop();
            }
        });
        if matches!(self.bucket, Bucket::Shared { .. }) {
            ctx.run_interval(super::shared_quota::HOLD, |actor, _| {
                actor.return_unused(Instant::now());
            });
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Bucket::Shared { allowance, buckets } = &mut self.bucket {
            buckets.give_back(&self.name, allowance.release(), allowance.burst());
        }
    }
}

/// The answer to [`Admit`]: at once (in memory), or after a take from the shared bucket,
/// during which the actor handles nothing else, so that one take serves the requests queued
/// behind it.
pub enum AdmitAnswer {
    Now(Result<Vec<bool>, Limited>),
    AfterTake(ResponseActFuture<Origin, Result<Vec<bool>, Limited>>),
}

impl actix::dev::MessageResponse<Origin, Admit> for AdmitAnswer {
    fn handle(
        self,
        ctx: &mut Context<Origin>,
        tx: Option<actix::dev::OneshotSender<Result<Vec<bool>, Limited>>>,
    ) {
        match self {
            AdmitAnswer::Now(answer) => {
                if let Some(tx) = tx {
                    let _ = tx.send(answer);
                }
            }
            AdmitAnswer::AfterTake(take) => {
                ctx.wait(take.map(|answer, _, _| {
                    if let Some(tx) = tx {
                        let _ = tx.send(answer);
                    }
                }));
            }
        }
    }
}

impl Handler<Admit> for Origin {
    type Result = AdmitAnswer;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.last_active = now;
        match &mut self.bucket {
            Bucket::Local { limiter, burst } => {
                let charge = NonZeroU32::new(msg.charge.max(1)).unwrap_or(NonZeroU32::MIN);
                match limiter.check_n(charge) {
                    Ok(Ok(())) => {}
                    Ok(Err(not_until)) => {
                        return AdmitAnswer::Now(Err(Limited::RetryAfter(
                            not_until.wait_time_from(DefaultClock::default().now()),
                        )))
                    }
                    Err(_) => return AdmitAnswer::Now(Err(Limited::OverBurst { burst: *burst })),
                }
                AdmitAnswer::Now(Ok(self.seen(&msg.event_ids)))
            }
            Bucket::Shared { allowance, buckets } => match allowance.charge(msg.charge, now) {
                Charge::Admitted => AdmitAnswer::Now(Ok(self.seen(&msg.event_ids))),
                Charge::Limited(limited) => AdmitAnswer::Now(Err(limited)),
                Charge::Take { need, want } => {
                    let (buckets, name) = (buckets.clone(), self.name.clone());
                    let (rate, burst) = (allowance.rate_per_minute(), allowance.burst());
                    let take = async move { buckets.take(&name, rate, burst, need, want).await };
                    AdmitAnswer::AfterTake(Box::pin(take.into_actor(self).map(
                        move |taken, actor, _| {
                            let Bucket::Shared { allowance, .. } = &mut actor.bucket else {
                                // An actor's kind of bucket never changes.
                                return Err(Limited::Unavailable);
                            };
                            match taken {
                                Ok(take) => {
                                    allowance.settle(msg.charge, take, Instant::now())?;
                                    Ok(actor.seen(&msg.event_ids))
                                }
                                Err(error) => {
                                    tracing::warn!(origin = %actor.name, %error, "cannot take from the shared quota bucket");
                                    Err(Limited::Unavailable)
                                }
                            }
                        },
                    )))
                }
            },
        }
    }
}

impl Handler<Committed> for Origin {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        for id in msg.event_ids {
            self.committed.insert(id, ());
        }
    }
}

impl Handler<SetQuota> for Origin {
    type Result = ();

    fn handle(&mut self, msg: SetQuota, _: &mut Self::Context) {
        match &mut self.bucket {
            Bucket::Local {
                limiter: current,
                burst,
            } => {
                *current = limiter(&msg.policy);
                *burst = msg.policy.burst;
            }
            Bucket::Shared { allowance, .. } => {
                allowance.set_quota(msg.policy.rate_per_minute, msg.policy.burst)
            }
        }
    }
}

/// Every origin we know of: their policies, counters and actors.
pub struct Origins {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    defaults: Policy,
    configured: BTreeMap<String, Policy>,
    dedup_ttl: Duration,
    /// In a cluster: the shared buckets every node's actors take from.
    shared: Option<SharedBuckets>,
}

impl Origins {
    /// Policies from config, then the operator's recorded overrides (`admin`, from the
    /// `origin_policies` projection, each with the `seq` that set it) on top.
    pub fn new(config: &FederationConfig, admin: Vec<(String, Policy, u64)>) -> Origins {
        let defaults = Policy {
            rate_per_minute: config.default_rate_per_minute,
            burst: config.default_burst,
            blocked: false,
            source: PolicySource::Default,
        };
        let configured = config
            .origins
            .iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    Policy {
                        rate_per_minute: o.rate_per_minute.unwrap_or(defaults.rate_per_minute),
                        burst: o.burst.unwrap_or(defaults.burst),
                        blocked: o.blocked,
                        source: PolicySource::Config,
                    },
                )
            })
            .collect();
        let origins = Origins {
            entries: RwLock::new(HashMap::new()),
            defaults,
            configured,
            dedup_ttl: config.dedup_ttl,
            shared: None,
        };
        for (name, policy, seq) in admin {
            origins.apply_policy(&name, policy, seq);
        }
        origins
    }

    /// The quotas of a cluster node: every actor started from now on takes its tokens from
    /// the origin's bucket shared by the nodes, not from a bucket of its own.
    pub fn in_cluster(mut self, buckets: SharedBuckets) -> Origins {
        self.shared = Some(buckets);
        self
    }

    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn entry_or_insert(&self, name: &str) -> Arc<Entry> {
        if let Some(entry) = self.entry(name) {
            return entry;
        }
        let policy = self.configured_policy(name);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    policy: RwLock::new(policy),
                    policy_seq: AtomicU64::new(0),
                    counters: Arc::default(),
                    actor: Mutex::new(None),
                })
            })
            .clone()
    }

    fn configured_policy(&self, name: &str) -> Policy {
        self.configured.get(name).copied().unwrap_or(self.defaults)
    }

    /// The policy of `name`, without registering it (for checks before authentication).
    pub fn policy(&self, name: &str) -> Policy {
        match self.entry(name) {
            Some(entry) => *entry.policy.read().unwrap_or_else(|e| e.into_inner()),
            None => self.configured_policy(name),
        }
    }

    /// Records the operator's policy for `name`, set by the log entry `seq`, and applies it to
    /// a running actor; unless the policy in force came from a later entry (answers whether
    /// it applied). Applying the same entry twice is harmless.
    pub fn apply_policy(&self, name: &str, policy: Policy, seq: u64) -> bool {
        let entry = self.entry_or_insert(name);
        {
            let mut current = entry.policy.write().unwrap_or_else(|e| e.into_inner());
            if seq <= entry.policy_seq.load(Ordering::Acquire) {
                return false;
            }
            entry.policy_seq.store(seq, Ordering::Release);
            *current = policy;
        }
        let actor = entry
            .actor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(actor) = actor {
            let _ = actor.try_send(SetQuota { policy });
        }
        true
    }

    /// Applies the `origin.policy` events among committed `entries` (a cluster node follows
    /// the log so that a policy set through any node's admin API reaches its registry);
    /// answers how many changed a policy.
    pub fn apply_committed(&self, entries: &[LogEntry]) -> usize {
        let mut applied = 0;
        for entry in entries {
            if entry.event_type != EventType::OriginPolicy.as_str() {
                continue;
            }
            let Ok(content) = serde_json::from_str::<serde_json::Value>(entry.content.get()) else {
                continue;
            };
            let ops = projection::derive(
                EventType::OriginPolicy,
                entry.sender.as_deref(),
                entry.channel.as_deref(),
                entry.origin_ts,
                &content,
            );
            for op in ops {
                if let ProjectionOp::SetOriginPolicy {
                    origin,
                    rate_per_minute,
                    burst,
                    blocked,
                } = op
                {
                    let policy = Policy {
                        rate_per_minute: u32::try_from(rate_per_minute).unwrap_or(u32::MAX),
                        burst: u32::try_from(burst).unwrap_or(u32::MAX),
                        blocked,
                        source: PolicySource::Admin,
                    };
                    if self.apply_policy(&origin, policy, entry.seq) {
                        applied += 1;
                    }
                }
            }
        }
        applied
    }

    /// The counters of an authenticated origin (registering it).
    pub fn counters(&self, name: &str) -> Arc<Counters> {
        self.entry_or_insert(name).counters.clone()
    }

    /// The running actor of `name`, started if there is none.
    pub fn actor(&self, name: &str) -> Addr<Origin> {
        let entry = self.entry_or_insert(name);
        let mut actor = entry.actor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = actor.as_ref().filter(|a| a.connected()) {
            return addr.clone();
        }
        let policy = *entry.policy.read().unwrap_or_else(|e| e.into_inner());
        // Idle long enough for the bucket to refill: a restarted actor starts full.
        let refill = Duration::from_secs_f64(
            60.0 * f64::from(policy.burst.max(1)) / f64::from(policy.rate_per_minute.max(1)),
        );
        let idle = refill.clamp(Duration::from_secs(300), Duration::from_secs(3600));
        let bucket = match &self.shared {
            None => Bucket::Local {
                limiter: limiter(&policy),
                burst: policy.burst,
            },
            Some(buckets) => Bucket::Shared {
                allowance: Allowance::new(policy.rate_per_minute, policy.burst, Instant::now()),
                buckets: buckets.clone(),
            },
        };
        let addr = Origin {
            name: name.to_owned(),
            bucket,
            committed: moka::sync::Cache::builder()
                .max_capacity(DEDUP_CAPACITY)
                .time_to_live(self.dedup_ttl)
                .build(),
            last_active: Instant::now(),
            idle,
        }
        .start();
        *actor = Some(addr.clone());
        addr
    }

    /// Forgets origins without an operator policy, a running actor or a request for `idle_ms`
    /// (their counters go with them), so that a stream of new server names cannot grow the
    /// registry without bound. Answers the names forgotten.
    pub fn evict_idle(&self, idle_ms: u64, now_ms: u64) -> Vec<String> {
        let mut evicted = Vec::new();
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, entry| {
                let admin = entry
                    .policy
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .source
                    == PolicySource::Admin;
                let running = entry
                    .actor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(Addr::connected);
                let last = entry.counters.last_request_ms.load(Ordering::Relaxed);
                let keep = admin
                    || running
                    || self.configured.contains_key(name)
                    || now_ms.saturating_sub(last) < idle_ms;
                if !keep {
                    evicted.push(name.clone());
                }
                keep
            });
        evicted
    }

    /// Every origin with a policy or traffic since start, sorted by name.
    pub fn views(&self) -> Vec<OriginView> {
        let mut names: Vec<String> = self.configured.keys().cloned().collect();
        names.extend(
            self.entries
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        names.sort();
        names.dedup();
        names.iter().map(|name| self.view(name)).collect()
    }

    /// One origin as the admin API shows it (defaults for one we never heard of).
    pub fn view(&self, name: &str) -> OriginView {
        let policy = self.policy(name);
        let entry = self.entry(name);
        let get = |f: fn(&Counters) -> &AtomicU64| {
            entry
                .as_ref()
                .map_or(0, |e| f(&e.counters).load(Ordering::Relaxed))
        };
        OriginView {
            origin: name.to_owned(),
            rate_per_minute: policy.rate_per_minute,
            burst: policy.burst,
            blocked: policy.blocked,
            policy_source: policy.source,
            active: entry.as_ref().is_some_and(|e| {
                e.actor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(Addr::connected)
            }),
            requests: get(|c| &c.requests),
            accepted: get(|c| &c.accepted),
            duplicates: get(|c| &c.duplicates),
            rejected: get(|c| &c.rejected),
            limited: get(|c| &c.limited),
            last_request_ts: get(|c| &c.last_request_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn the_quota_is_charged_per_event_and_tells_when_to_retry() {
        let config = FederationConfig {
            default_rate_per_minute: 60,
            default_burst: 10,
            ..FederationConfig::default()
        };
        let origins = Origins::new(&config, vec![]);
        let actor = origins.actor("b.example");
        let admit = |charge| {
            actor.send(Admit {
                charge,
                event_ids: vec![],
            })
        };
        assert_eq!(admit(6).await.expect("sent"), Ok(vec![]));
        assert_eq!(admit(4).await.expect("sent"), Ok(vec![]));
        match admit(2).await.expect("sent") {
            Err(Limited::RetryAfter(wait)) => {
                assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(2))
            }
            other => panic!("expected RetryAfter, got {other:?}"),
        }
        assert_eq!(
            admit(11).await.expect("sent"),
            Err(Limited::OverBurst { burst: 10 })
        );

        // The operator raises the quota: the running actor takes it at once.
        origins.apply_policy(
            "b.example",
            Policy {
                rate_per_minute: 600,
                burst: 50,
                blocked: false,
                source: PolicySource::Admin,
            },
            1,
        );
        assert_eq!(admit(40).await.expect("sent"), Ok(vec![]));
    }

    #[actix_web::test]
    async fn committed_ids_are_duplicates_and_others_are_not() {
        let origins = Origins::new(&FederationConfig::default(), vec![]);
        let actor = origins.actor("b.example");
        actor
            .send(Committed {
                event_ids: vec!["e1".into()],
            })
            .await
            .expect("sent");
        let seen = actor
            .send(Admit {
                charge: 2,
                event_ids: vec!["e1".into(), "e2".into()],
            })
            .await
            .expect("sent");
        assert_eq!(seen, Ok(vec![true, false]));
    }

    #[test]
    fn idle_origins_without_a_policy_are_forgotten() {
        let origins = Origins::new(&FederationConfig::default(), vec![]);
        origins.counters("quiet.example");
        origins
            .counters("busy.example")
            .last_request_ms
            .store(10_000, Ordering::Relaxed);
        origins.apply_policy(
            "kept.example",
            Policy {
                rate_per_minute: 1,
                burst: 1,
                blocked: true,
                source: PolicySource::Admin,
            },
            1,
        );
        assert_eq!(origins.evict_idle(5_000, 12_000), ["quiet.example"]);
        let names: Vec<_> = origins.views().into_iter().map(|v| v.origin).collect();
        assert_eq!(names, ["busy.example", "kept.example"]);
    }

    #[test]
    fn admin_policy_beats_config_beats_defaults() {
        let mut config = FederationConfig::default();
        config.origins.insert(
            "c.example".into(),
            crate::config::OriginOverride {
                rate_per_minute: Some(5),
                burst: None,
                blocked: true,
            },
        );
        let admin = Policy {
            rate_per_minute: 7,
            burst: 8,
            blocked: false,
            source: PolicySource::Admin,
        };
        let origins = Origins::new(&config, vec![("d.example".into(), admin, 3)]);
        let c = origins.policy("c.example");
        assert_eq!(
            (c.rate_per_minute, c.burst, c.blocked, c.source),
            (5, config.default_burst, true, PolicySource::Config)
        );
        assert_eq!(origins.policy("d.example"), admin);
        assert_eq!(origins.policy("e.example").source, PolicySource::Default);
        let names: Vec<_> = origins.views().into_iter().map(|v| v.origin).collect();
        assert_eq!(names, ["c.example", "d.example"]);
    }

    fn policy_entry(seq: u64, origin: &str, rate: u32, blocked: bool) -> LogEntry {
        let content = serde_json::json!({
            "origin": origin,
            "rate_per_minute": rate,
            "burst": 10,
            "blocked": blocked,
        });
        LogEntry {
            seq,
            event_id: format!("origin-policy:{seq}"),
            origin: "a.example".into(),
            event_type: "origin.policy".into(),
            sender: None,
            channel: None,
            origin_ts: 0,
            received_ts: 0,
            content: serde_json::value::to_raw_value(&content).expect("raw"),
            prev_hash: crate::core::chain::ChainHash::GENESIS,
            entry_hash: crate::core::chain::ChainHash::GENESIS,
        }
    }

    #[test]
    fn committed_policies_apply_in_seq_order_whoever_arrives_first() {
        let origins = Origins::new(&FederationConfig::default(), vec![]);
        // The follower sees seq 7 (set on another node) before this node's own handler
        // applies its older seq 5: the older one does not win.
        assert_eq!(
            origins.apply_committed(&[policy_entry(7, "b.example", 70, true)]),
            1
        );
        let older = Policy {
            rate_per_minute: 50,
            burst: 10,
            blocked: false,
            source: PolicySource::Admin,
        };
        assert!(!origins.apply_policy("b.example", older, 5));
        let now = origins.policy("b.example");
        assert_eq!((now.rate_per_minute, now.blocked), (70, true));
        // The same entry twice changes nothing; a later one does.
        assert_eq!(
            origins.apply_committed(&[policy_entry(7, "b.example", 70, true)]),
            0
        );
        assert_eq!(
            origins.apply_committed(&[
                policy_entry(9, "b.example", 90, false),
                policy_entry(8, "c.example", 80, true),
            ]),
            2
        );
        assert_eq!(origins.policy("b.example").rate_per_minute, 90);
        assert!(origins.policy("c.example").blocked);
        assert_eq!(origins.policy("c.example").source, PolicySource::Admin);
    }
}
