//! Sign-in challenges (DESIGN §4.3): `GET /.p2/core/v1/challenge` hands out 64 random
//! characters of `[A-Za-z0-9]`, valid `identity.challenge_lifetime`, single use.
//!
//! Outstanding challenges live in memory, bounded by `identity.max_challenges` (past it the
//! cache evicts), and each source address may ask for `identity.challenge_rate_per_second`
//! (burst `challenge_burst`): beyond, 429 with `Retry-After`. A challenge is consumed by the
//! first attempt to answer it, whatever the attempt's fate.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock as _, DefaultClock};
use governor::{Quota, RateLimiter};
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::IdentityError;
use crate::clock::Clock;
use crate::config::IdentityConfig;

const LENGTH: usize = 64;

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
    lifetime_secs: i64,
    /// Challenge → its expiry (unix seconds on the instance clock).
    outstanding: moka::sync::Cache<String, i64>,
    per_address: PerAddress,
}

impl Challenges {
    pub fn new(config: &IdentityConfig, clock: Arc<Clock>) -> Challenges {
        let rate = NonZeroU32::new(config.challenge_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.challenge_burst).unwrap_or(NonZeroU32::MIN);
        Challenges {
            clock,
            lifetime_secs: i64::try_from(config.challenge_lifetime.as_secs()).unwrap_or(300),
            outstanding: moka::sync::Cache::builder()
                .max_capacity(config.max_challenges)
                .time_to_live(config.challenge_lifetime)
                .build(),
            per_address: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// A new challenge for a client at `address`.
    pub fn issue(&self, address: IpAddr) -> Result<Challenge, IdentityError> {
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
        let expires = self.clock.now_secs() + self.lifetime_secs;
        self.outstanding.insert(challenge.clone(), expires);
        Ok(Challenge { challenge, expires })
    }

    /// Consumes `challenge`: known, unused and unexpired → Ok; anything else 401
    /// `SY_BAD_CHALLENGE`.
    pub fn redeem(&self, challenge: &str) -> Result<(), IdentityError> {
        let expires = self.outstanding.remove(challenge).ok_or_else(|| {
            IdentityError::BadChallenge("the challenge is unknown or was used".into())
        })?;
        if self.clock.now_secs() >= expires {
            return Err(IdentityError::BadChallenge(
                "the challenge has expired".into(),
            ));
        }
        Ok(())
    }

    /// Forgets the rate state of quiet addresses (called every minute).
    pub fn tidy(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_single_use_expiring_and_rate_limited() {
        let clock = Arc::new(Clock::default());
        let config = IdentityConfig {
            challenge_burst: 3,
            challenge_rate_per_second: 1,
            ..IdentityConfig::default()
        };
        let challenges = Challenges::new(&config, clock.clone());
        let address: IpAddr = "192.0.2.7".parse().expect("ip");
        let first = challenges.issue(address).expect("first");
        assert_eq!(first.challenge.len(), 64);
        assert!(first.challenge.bytes().all(|b| b.is_ascii_alphanumeric()));
        challenges.redeem(&first.challenge).expect("redeem");
        assert!(matches!(
            challenges.redeem(&first.challenge),
            Err(IdentityError::BadChallenge(_))
        ));
        assert!(challenges.redeem("unknown").is_err());
        let second = challenges.issue(address).expect("second");
        clock.advance(std::time::Duration::from_secs(301));
        assert!(matches!(
            challenges.redeem(&second.challenge),
            Err(IdentityError::BadChallenge(_))
        ));
        challenges.issue(address).expect("third");
        assert!(matches!(
            challenges.issue(address),
            Err(IdentityError::Limited { .. })
        ));
        challenges
            .issue("192.0.2.8".parse().expect("ip"))
            .expect("another address");
    }
}
