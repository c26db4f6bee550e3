//! Capped exponential backoff with full jitter: the delay is uniform in
//! [0, min(max, base * 2^failures)], which spreads a fleet's reconnects out
//! after a control-plane restart instead of synchronising them.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: SystemRandom,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base), failures: 0, rng: SystemRandom::new() }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling for the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(self.unit())
    }

    /// A uniform sample in [0, 1).
    pub fn unit(&self) -> f64 {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).expect("OS random source");
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[4], Duration::from_millis(1600));
        assert_eq!(ceilings[5], Duration::from_secs(2));
        assert_eq!(ceilings[7], Duration::from_secs(2));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Full jitter: 200 samples under a 2s ceiling are not all equal and
        // spread over the range.
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        let samples: Vec<_> = (0..200).map(|_| b.next_delay().as_secs_f64()).collect();
        let min = samples.iter().cloned().fold(f64::MAX, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.5 && max > 1.5, "min {min} max {max}");
    }
}
