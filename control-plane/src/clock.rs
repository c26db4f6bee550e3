//! The wall clock, in the Unix milliseconds the store keeps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
