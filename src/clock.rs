//! Wall-clock time in the unit every wire format of Switchyard uses: milliseconds since the
//! UNIX epoch.
//!
//! [`now_ms`] is the system clock. [`Clock`] is an instance's clock for decisions that depend
//! on long spans of time (certificate validity, cache windows, challenge expiry): the system
//! clock plus an offset that is zero in production and that tests move forward, so that two
//! instances in one process can disagree about the time without anything global.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the UNIX epoch (0 if the clock is set before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One instance's clock: the system clock, moved by an offset that only tests set.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, in ms since the UNIX epoch.
    pub fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Now, in whole seconds since the UNIX epoch.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves this instance's time forward by `by` (tests: "two hours later").
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(by, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_runs_ahead_of_the_system_clock() {
        let clock = Clock::default();
        let before = clock.now_ms();
        assert!((before - now_ms()).abs() < 1000);
        clock.advance(Duration::from_secs(7200));
        let ahead = clock.now_ms() - now_ms();
        assert!((7_199_000..7_201_000).contains(&ahead), "{ahead}");
        assert_eq!(clock.now_secs(), clock.now_ms().div_euclid(1000));
    }
}

/// RFC 3339 in UTC with milliseconds (`2026-12-07T21:20:48.123Z`) of ms since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Parses an RFC 3339 time in UTC (`…Z`, optional fraction) into ms since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}
