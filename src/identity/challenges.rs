//! Sign-in challenges (DESIGN §4.3): `GET /.p2/core/v1/challenge` hands out 64 random
//! characters of `[A-Za-z0-9]`, valid `identity.challenge_lifetime`, single use.
//!
//! One node keeps outstanding challenges in memory, bounded by `identity.max_challenges`
//! (past it the cache evicts). Each source address may ask for
//! `identity.challenge_rate_per_second` (burst `challenge_burst`): beyond, 429 with
//! `Retry-After`. A challenge is consumed by the first attempt to answer it, whatever the
//! attempt's fate.
//!
//! A cluster (DESIGN §7) keeps them in `cluster_challenges`, because the answer may reach
//! another node than the one that issued the challenge: consumed by one `DELETE … RETURNING`
//! (single use across the nodes), expiring on the database's clock, the expired rows deleted
//! every minute. Past `max_challenges` outstanding a node refuses to issue (503) rather than
//! evict; it judges that by a count of the table at most [`COUNT_EVERY`] old plus what it
//! issued since, so the table may overshoot by what the other nodes issue within that time
//! (a count per issue would make the bound itself the cost of a flood). The per-address rate
//! limit stays per node: each node allows an address its rate, so a cluster of N allows it
//! N times that at most.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{Quota, RateLimiter};
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::IdentityError;
use crate::clock::Clock;
use crate::config::IdentityConfig;
use crate::store::Store;

const LENGTH: usize = 64;

/// How old a cluster node's count of outstanding challenges may be.
pub const COUNT_EVERY: Duration = Duration::from_secs(1);

type PerAddress = RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// A challenge as handed out.
#[derive(Clone, Debug)]
pub struct Challenge {
    pub challenge: String,
    /// Unix seconds.
    pub expires: i64,
}

pub struct Challenges {
    clock: Arc<Clock>,
    lifetime: Duration,
    lifetime_secs: i64,
    /// Challenge → its expiry (unix seconds on the instance clock). One node only.
    outstanding: moka::sync::Cache<String, i64>,
    per_address: PerAddress,
    /// A cluster: the table every node issues into and redeems from.
    shared: Option<SharedChallenges>,
}

/// A cluster node's view of `cluster_challenges`.
struct SharedChallenges {
    store: Store,
    max: u64,
    /// The table's count when last read, plus what this node issued since.
    outstanding: AtomicU64,
    /// When the count was last read (`None`: never).
    counted: std::sync::Mutex<Option<Instant>>,
    /// One count at a time.
    counting: tokio::sync::Mutex<()>,
}

impl SharedChallenges {
    /// The outstanding challenges as this node knows them, counted again when the count is
    /// older than [`COUNT_EVERY`].
    async fn outstanding(&self) -> Result<u64, IdentityError> {
        let fresh = |counted: &std::sync::Mutex<Option<Instant>>| {
            counted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < COUNT_EVERY)
        };
        if !fresh(&self.counted) {
            let _one = self.counting.lock().await;
            if !fresh(&self.counted) {
                let count = self.store.count_cluster_challenges().await?;
                self.outstanding.store(count, Ordering::Release);
                *self.counted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
        }
        Ok(self.outstanding.load(Ordering::Acquire))
    }
}

impl Challenges {
    /// Challenges kept in memory (one node).
    pub fn new(config: &IdentityConfig, clock: Arc<Clock>) -> Challenges {
        let rate = NonZeroU32::new(config.challenge_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.challenge_burst).unwrap_or(NonZeroU32::MIN);
        Challenges {
            clock,
            lifetime: config.challenge_lifetime,
            lifetime_secs: i64::try_from(config.challenge_lifetime.as_secs()).unwrap_or(300),
            outstanding: moka::sync::Cache::builder()
                .max_capacity(config.max_challenges)
                .time_to_live(config.challenge_lifetime)
                .build(),
            per_address: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            shared: None,
        }
    }

    /// The challenges of a cluster node, kept in `cluster_challenges` so that any node
    /// redeems them.
    pub fn in_cluster(config: &IdentityConfig, clock: Arc<Clock>, store: Store) -> Challenges {
        Challenges {
            shared: Some(SharedChallenges {
                store,
                max: config.max_challenges,
                outstanding: AtomicU64::new(0),
                counted: std::sync::Mutex::new(None),
                counting: tokio::sync::Mutex::new(()),
            }),
            ..Challenges::new(config, clock)
        }
    }

    /// A new challenge for a client at `address`.
    pub async fn issue(&self, address: IpAddr) -> Result<Challenge, IdentityError> {
        if let Err(not_until) = self.per_address.check_key(&address) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(IdentityError::Limited {
                message: "too many challenges from this address".into(),
                retry_after: wait.as_secs_f64().ceil() as u64,
            });
        }
        let challenge: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(LENGTH)
            .map(char::from)
            .collect();
        let Some(shared) = &self.shared else {
            let expires = self.clock.now_secs() + self.lifetime_secs;
            self.outstanding.insert(challenge.clone(), expires);
            return Ok(Challenge { challenge, expires });
        };
        if shared.outstanding().await? >= shared.max {
            return Err(IdentityError::Overloaded {
                message: "too many sign-in challenges are outstanding; retry shortly".into(),
                retry_after: COUNT_EVERY.as_secs().max(1),
            });
        }
        let expires_ms = shared
            .store
            .insert_cluster_challenge(&challenge, self.lifetime)
            .await?;
        shared.outstanding.fetch_add(1, Ordering::AcqRel);
        Ok(Challenge {
            challenge,
            expires: expires_ms.div_euclid(1000),
        })
    }

    /// Consumes `challenge`: known, unused and unexpired → Ok; anything else 401
    /// `SY_BAD_CHALLENGE` (503 in a cluster whose table cannot be reached).
    pub async fn redeem(&self, challenge: &str) -> Result<(), IdentityError> {
        let unknown = || IdentityError::BadChallenge("the challenge is unknown or was used".into());
        let expired = || IdentityError::BadChallenge("the challenge has expired".into());
        let Some(shared) = &self.shared else {
            let expires = self.outstanding.remove(challenge).ok_or_else(unknown)?;
            if self.clock.now_secs() >= expires {
                return Err(expired());
            }
            return Ok(());
        };
        // Not a challenge we could have issued: no database round trip.
        if challenge.len() != LENGTH || !challenge.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(unknown());
        }
        match shared.store.redeem_cluster_challenge(challenge).await? {
            None => Err(unknown()),
            Some(false) => Err(expired()),
            Some(true) => Ok(()),
        }
    }

    /// Forgets the rate state of quiet addresses; in a cluster, deletes the expired
    /// challenges, in the background (called every minute).
    pub fn tidy(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
        if let Some(shared) = &self.shared {
            let store = shared.store.clone();
            actix_web::rt::spawn(async move {
                if let Err(error) = store.delete_expired_challenges().await {
                    tracing::warn!(%error, "cannot delete expired sign-in challenges");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn challenges_are_single_use_expiring_and_rate_limited() {
        let clock = Arc::new(Clock::default());
        let config = IdentityConfig {
            challenge_burst: 3,
            challenge_rate_per_second: 1,
            ..IdentityConfig::default()
        };
        let challenges = Challenges::new(&config, clock.clone());
        let address: IpAddr = "192.0.2.7".parse().expect("ip");
        let first = challenges.issue(address).await.expect("first");
        assert_eq!(first.challenge.len(), 64);
        assert!(first.challenge.bytes().all(|b| b.is_ascii_alphanumeric()));
        challenges.redeem(&first.challenge).await.expect("redeem");
        assert!(matches!(
            challenges.redeem(&first.challenge).await,
            Err(IdentityError::BadChallenge(_))
        ));
        assert!(challenges.redeem("unknown").await.is_err());
        let second = challenges.issue(address).await.expect("second");
        clock.advance(std::time::Duration::from_secs(301));
        assert!(matches!(
            challenges.redeem(&second.challenge).await,
            Err(IdentityError::BadChallenge(_))
        ));
        challenges.issue(address).await.expect("third");
        assert!(matches!(
            challenges.issue(address).await,
            Err(IdentityError::Limited { .. })
        ));
        challenges
            .issue("192.0.2.8".parse().expect("ip"))
            .await
            .expect("another address");
    }
}
