/// Wall-clock time as milliseconds since the Unix epoch; what the store keeps.
pub type UnixMillis = i64;

pub fn millis_to_timestamp(ms: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn timestamp_to_millis(ts: &prost_types::Timestamp) -> UnixMillis {
    ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_including_negative() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123, -1, -1001] {
            assert_eq!(timestamp_to_millis(&millis_to_timestamp(ms)), ms);
        }
    }
}
