//! Admission of gateway handshakes (DESIGN §5, storms): connects and resumes are admitted at
//! `gateway.handshake_rate_per_second` (with a burst); beyond it a handshake is answered 503
//! with `Retry-After` before anything is read or consumed, so a restart or a network blip
//! that brings every client back at once queues them at the door instead of at the
//! database's pool.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Admission {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl Admission {
    pub fn new(rate_per_second: u32, burst: u32) -> Admission {
        let rate = NonZeroU32::new(rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Admission {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Admits one handshake, or says how long to wait (at least a second, for `Retry-After`).
    pub fn admit(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(|not_until| {
            not_until
                .wait_time_from(self.clock.now())
                .max(Duration::from_secs(1))
        })
    }
}
