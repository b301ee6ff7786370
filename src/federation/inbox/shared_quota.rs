//! Per-origin quotas that hold for a cluster as a whole (DESIGN §7), not per node.
//!
//! ```text
//!  Admit (n events) at one node's Origin actor
//!     │ local allowance ≥ n ──────────────────────────────▶ admitted (no database)
//!     │ bucket known short (until `empty_until`) ─────────▶ 429 + Retry-After (no database)
//!     ▼
//!  one statement on the shared bucket (store::shared):   refill by rate × elapsed on the
//!  take `need` = n − allowance, up to `want` = a batch   database's clock, capped at burst
//!     │ granted ≥ need ─▶ admitted; the rest of the grant is the new local allowance
//!     │ granted = 0     ─▶ 429 + Retry-After; refused locally until a batch has refilled
//!     │ database error  ─▶ 503 SY_UNAVAILABLE + Retry-After
//!  allowance unused for HOLD ─▶ returned to the bucket (one statement, not waited for)
//! ```
//!
//! The bucket in PostgreSQL is the truth: a node admits only tokens the bucket granted, so
//! the cluster never admits more than `rate × time + burst`. It can admit less by what the
//! nodes hold unused at a given moment, at most one batch each; a batch is 5 % of the burst,
//! so two nodes stay within 10 % of the configured quota (more nodes: `nodes × 5 %` of the
//! burst, still a fraction of `rate × time + burst` that shrinks as time passes). An
//! allowance a node stops using goes back to the bucket after [`HOLD`], so a node that went
//! quiet does not keep tokens the others need.
//!
//! The cost is one round trip per batch while an origin is within its quota (and one per
//! batch refilled while it floods: after a short take the node refuses on its own until a
//! batch should be back); `switchyard_inbox_bucket_refills_total` counts them per node.

use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};

use super::origin::Limited;
use crate::store::shared::BucketTake;
use crate::store::{Store, StoreError};

/// How long a node keeps an allowance it does not use before returning it to the bucket.
pub const HOLD: Duration = Duration::from_secs(2);

/// After short takes in a row, a node waits up to 2^this times as long as a batch takes to
/// refill before it asks again.
const MAX_BACKOFF_DOUBLINGS: u32 = 2;

/// Tokens a node takes at once: 5 % of the burst, at least 1.
pub fn batch(burst: u32) -> u32 {
    (burst / 20).max(1)
}

/// The shared buckets of a cluster, as one node reaches them.
#[derive(Clone)]
pub struct SharedBuckets {
    store: Store,
    /// Takes (database round trips), by result: granted, short, failed.
    refills: IntCounterVec,
    /// Unused allowances given back (database round trips).
    returns: IntCounter,
}

impl SharedBuckets {
    pub fn new(store: Store, metrics: &crate::telemetry::Metrics) -> SharedBuckets {
        SharedBuckets {
            store,
            refills: metrics.inbox_bucket_refills.clone(),
            returns: metrics.inbox_bucket_returns.clone(),
        }
    }

    pub async fn take(
        &self,
        origin: &str,
        rate_per_minute: u32,
        burst: u32,
        need: u32,
        want: u32,
    ) -> Result<BucketTake, StoreError> {
        let taken = self
            .store
            .take_origin_tokens(origin, rate_per_minute, burst, need, want)
            .await;
        let result = match &taken {
            Ok(take) if take.granted > 0 => "granted",
            Ok(_) => "short",
            Err(_) => "failed",
        };
        self.refills.with_label_values(&[result]).inc();
        taken
    }

    /// Gives `tokens` back to `origin`'s bucket, in the background: a failure loses them for
    /// the cluster until the bucket refills, which errs on the safe side of the quota.
    pub fn give_back(&self, origin: &str, tokens: u32, burst: u32) {
        if tokens == 0 {
            return;
        }
        let (buckets, origin) = (self.clone(), origin.to_owned());
        actix_web::rt::spawn(async move {
            let returned = buckets
                .store
                .return_origin_tokens(&origin, tokens, burst)
                .await;
            buckets.returns.inc();
            if let Err(error) = returned {
                tracing::warn!(%origin, tokens, %error, "cannot return unused tokens to the shared bucket");
            }
        });
    }
}

/// What a node does with a charge of `n` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Paid from the local allowance.
    Admitted,
    /// Refused without asking the database.
    Limited(Limited),
    /// Ask the bucket for at least `need` tokens, up to `want`.
    Take { need: u32, want: u32 },
}

/// One node's share of one origin's bucket (kept by the origin's actor).
#[derive(Debug)]
pub struct Allowance {
    rate_per_minute: u32,
    burst: u32,
    /// Tokens taken from the bucket and not yet spent.
    local: u32,
    /// When the allowance was last used or topped up.
    touched: Instant,
    /// After a short take: the bucket is not expected to hold a batch before this.
    empty_until: Option<Instant>,
    /// Short takes in a row (other nodes took the tokens this one waited for).
    shorts: u32,
}

impl Allowance {
    pub fn new(rate_per_minute: u32, burst: u32, now: Instant) -> Allowance {
        Allowance {
            rate_per_minute: rate_per_minute.max(1),
            burst: burst.max(1),
            local: 0,
            touched: now,
            empty_until: None,
            shorts: 0,
        }
    }

    pub fn rate_per_minute(&self) -> u32 {
        self.rate_per_minute
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Tokens held and unspent.
    pub fn held(&self) -> u32 {
        self.local
    }

    /// The operator changed the quota: the next take uses it (the tokens held stay).
    pub fn set_quota(&mut self, rate_per_minute: u32, burst: u32) {
        self.rate_per_minute = rate_per_minute.max(1);
        self.burst = burst.max(1);
        self.empty_until = None;
    }

    /// Charges `n` events if the local allowance covers them; else says what to do.
    pub fn charge(&mut self, n: u32, now: Instant) -> Charge {
        let n = n.max(1);
        if n > self.burst {
            return Charge::Limited(Limited::OverBurst { burst: self.burst });
        }
        if self.local >= n {
            self.local -= n;
            self.touched = now;
            return Charge::Admitted;
        }
        if let Some(until) = self.empty_until {
            if now < until {
                return Charge::Limited(Limited::RetryAfter(until - now));
            }
            self.empty_until = None;
        }
        let need = n - self.local;
        let want = need.max(batch(self.burst)).min(self.burst);
        Charge::Take { need, want }
    }

    /// The bucket's answer to the take asked for `n` events: admitted if it granted enough,
    /// else a refusal with the time until a batch should be back.
    pub fn settle(&mut self, n: u32, take: BucketTake, now: Instant) -> Result<(), Limited> {
        let n = n.max(1);
        let need = n.saturating_sub(self.local);
        let want = need.max(batch(self.burst)).min(self.burst);
        if take.granted > 0 && take.granted >= need {
            self.local = self.local + take.granted - n;
            self.touched = now;
            self.shorts = 0;
            // Less than a batch: the bucket is empty now, and asking again before a batch
            // has refilled would fetch a token or two per round trip.
            self.empty_until = (take.granted < want).then(|| now + self.refill(want, take, 1));
            return Ok(());
        }
        // A grant below `need` is never made (the statement grants 0 or at least `need`); a
        // stray one is kept rather than lost.
        self.local += take.granted;
        // Other nodes wait for the same tokens: each short take in a row doubles the wait
        // (up to 4×), so that a flood shared by several nodes costs about a round trip per
        // batch, not per token that trickles in.
        let backoff = 1u32 << self.shorts.min(MAX_BACKOFF_DOUBLINGS);
        self.shorts = self.shorts.saturating_add(1);
        let wait = self.refill(want, take, backoff);
        self.empty_until = Some(now + wait);
        Err(Limited::RetryAfter(wait))
    }

    /// How long until the bucket, holding `take.tokens`, holds `want`, times `backoff`.
    fn refill(&self, want: u32, take: BucketTake, backoff: u32) -> Duration {
        let per_ms = f64::from(self.rate_per_minute) / 60_000.0;
        let missing = (f64::from(want) - take.tokens).max(0.0) * f64::from(backoff);
        Duration::from_secs_f64((missing / per_ms / 1000.0).clamp(0.001, 3600.0))
    }

    /// The allowance to give back if it went unused for [`HOLD`] (then held no more).
    pub fn expire(&mut self, now: Instant) -> u32 {
        if self.local == 0 || now.duration_since(self.touched) < HOLD {
            return 0;
        }
        std::mem::take(&mut self.local)
    }

    /// Everything held, for an actor that stops.
    pub fn release(&mut self) -> u32 {
        std::mem::take(&mut self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(granted: u32, tokens: f64) -> BucketTake {
        BucketTake { granted, tokens }
    }

    #[test]
    fn a_batch_is_five_percent_of_the_burst_and_at_least_one() {
        assert_eq!(batch(100), 5);
        assert_eq!(batch(1000), 50);
        assert_eq!(batch(10), 1);
        assert_eq!(batch(1), 1);
    }

    #[test]
    fn the_allowance_pays_until_it_runs_out_then_takes_a_batch() {
        let now = Instant::now();
        let mut allowance = Allowance::new(100, 100, now);
        assert_eq!(allowance.charge(1, now), Charge::Take { need: 1, want: 5 });
        assert_eq!(allowance.settle(1, take(5, 95.0), now), Ok(()));
        assert_eq!(allowance.held(), 4);
        for _ in 0..4 {
            assert_eq!(allowance.charge(1, now), Charge::Admitted);
        }
        assert_eq!(allowance.held(), 0);
        // A request larger than a batch asks for what it needs beyond what is held.
        assert_eq!(allowance.charge(3, now), Charge::Take { need: 3, want: 5 });
        assert_eq!(allowance.settle(3, take(5, 80.0), now), Ok(()));
        assert_eq!(allowance.held(), 2);
        assert_eq!(
            allowance.charge(12, now),
            Charge::Take { need: 10, want: 10 }
        );
        assert_eq!(
            allowance.charge(101, now),
            Charge::Limited(Limited::OverBurst { burst: 100 })
        );
    }

    #[test]
    fn a_short_bucket_is_not_asked_again_until_a_batch_refilled() {
        let now = Instant::now();
        // 60 a minute: a token a second; a batch of 5.
        let mut allowance = Allowance::new(60, 100, now);
        assert_eq!(allowance.charge(1, now), Charge::Take { need: 1, want: 5 });
        let refused = allowance.settle(1, take(0, 0.5), now);
        assert_eq!(
            refused,
            Err(Limited::RetryAfter(Duration::from_millis(4500)))
        );
        match allowance.charge(1, now + Duration::from_secs(2)) {
            Charge::Limited(Limited::RetryAfter(wait)) => {
                assert_eq!(wait, Duration::from_millis(2500))
            }
            other => panic!("expected a local refusal, got {other:?}"),
        }
        assert_eq!(
            allowance.charge(1, now + Duration::from_secs(5)),
            Charge::Take { need: 1, want: 5 }
        );
    }

    #[test]
    fn a_partial_grant_or_short_takes_in_a_row_wait_longer_before_asking_again() {
        let now = Instant::now();
        // 60 a minute: a token a second; a batch of 5.
        let mut allowance = Allowance::new(60, 100, now);
        // Two of the five wanted: admitted, and the bucket is known empty for a while.
        assert_eq!(allowance.settle(1, take(2, 0.0), now), Ok(()));
        assert_eq!(allowance.charge(1, now), Charge::Admitted);
        assert_eq!(
            allowance.charge(1, now + Duration::from_secs(1)),
            Charge::Limited(Limited::RetryAfter(Duration::from_secs(4)))
        );
        let later = now + Duration::from_secs(5);
        assert_eq!(
            allowance.charge(1, later),
            Charge::Take { need: 1, want: 5 }
        );
        // Short twice in a row: the second wait is twice the first.
        assert_eq!(
            allowance.settle(1, take(0, 0.0), later),
            Err(Limited::RetryAfter(Duration::from_secs(5)))
        );
        let later = later + Duration::from_secs(5);
        assert_eq!(
            allowance.charge(1, later),
            Charge::Take { need: 1, want: 5 }
        );
        assert_eq!(
            allowance.settle(1, take(0, 0.0), later),
            Err(Limited::RetryAfter(Duration::from_secs(10)))
        );
        // A full batch resets it.
        let later = later + Duration::from_secs(10);
        assert_eq!(allowance.settle(1, take(5, 3.0), later), Ok(()));
        assert_eq!(allowance.held(), 4);
    }

    #[test]
    fn an_unused_allowance_is_given_back_after_the_hold() {
        let now = Instant::now();
        let mut allowance = Allowance::new(100, 100, now);
        assert_eq!(allowance.settle(1, take(5, 95.0), now), Ok(()));
        assert_eq!(allowance.expire(now + HOLD / 2), 0);
        // Using it keeps it.
        assert_eq!(allowance.charge(1, now + HOLD / 2), Charge::Admitted);
        assert_eq!(allowance.expire(now + HOLD), 0);
        assert_eq!(allowance.expire(now + HOLD / 2 + HOLD), 3);
        assert_eq!(allowance.held(), 0);
        assert_eq!(allowance.expire(now + 4 * HOLD), 0);
    }
}
