//! Wall-clock time in the unit every wire format of Switchyard uses: milliseconds since the
//! UNIX epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the UNIX epoch (0 if the clock is set before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
