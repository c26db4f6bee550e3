/// Wall-clock time as milliseconds since the Unix epoch; what the store keeps.
pub type UnixMillis = i64;

pub fn millis_to_timestamp(ms: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// The one conversion of a duration to its proto form.
pub fn duration_to_pb(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The one conversion of a proto duration; a negative one reads as zero.
pub fn duration_from_pb(d: &prost_types::Duration) -> std::time::Duration {
    std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
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
