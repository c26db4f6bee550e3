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

/// Parses a human duration: `1500ms`, `5s`, `2m`, `1.5h`, `7d`, or a bare
/// number of seconds. At most ten years; never negative.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}: use ms, s, m, h or d")),
    };
    if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod duration_tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "s", "5 parsecs", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
