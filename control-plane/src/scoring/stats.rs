//! What the registry keeps of each node's heartbeats for its score: the
//! arrival jitter against the interval the control plane chose, the round
//! trips the agent measured, their spikes and drift, and the node's flaps.
//! Updated under the registry's lock on every beat: a few float operations.

use std::time::Duration;

use tokio::time::Instant;

/// Weight of a new beat in the jitter average (about the last ten beats).
const JITTER_ALPHA: f64 = 0.2;
/// Weights of a new round trip in the short and the long average: the long
/// one is the node's own history (about the last hundred beats).
const RTT_SHORT_ALPHA: f64 = 0.3;
const RTT_LONG_ALPHA: f64 = 0.02;
/// The spike count forgets by this factor every beat (a half-life of about
/// fourteen beats).
const SPIKE_DECAY: f64 = 0.95;
/// A round trip is a spike when it is three times the node's long average
/// and at least this much above it (loopback round trips are well under a
/// millisecond, where three times is noise).
pub const SPIKE_MIN_MS: f64 = 50.0;
/// Flaps remembered (older ones have decayed to nothing that matters).
const FLAPS_KEPT: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct BeatStats {
    /// Beats counted (since the control plane started).
    pub beats: u64,
    /// When the last beat of the current session arrived (None at the start
    /// of a session: the gap across a reconnect is not jitter).
    last_arrival: Option<Instant>,
    /// Average of |gap - expected| / expected.
    pub jitter: f64,
    /// Round trips seen, and their short and long averages in milliseconds.
    pub rtts: u64,
    pub rtt_short_ms: f64,
    pub rtt_long_ms: f64,
    /// Decayed count of round trips far above the node's own history.
    pub spikes: f64,
    /// When the node last went from ready to unreachable, newest last.
    flaps: std::collections::VecDeque<Instant>,
}

impl BeatStats {
    /// A session opened: its first beat starts the gaps afresh.
    pub fn session_opened(&mut self) {
        self.last_arrival = None;
    }

    /// A beat arrived at `now`; the agent waits `expected` between beats on
    /// average; `rtt` is the round trip it measured for an earlier beat.
    pub fn beat(&mut self, now: Instant, expected: Duration, rtt: Option<Duration>) {
        self.beats += 1;
        if let Some(prev) = self.last_arrival.replace(now) {
            let expected = expected.as_secs_f64().max(1e-3);
            let gap = now.saturating_duration_since(prev).as_secs_f64();
            let dev = ((gap - expected).abs() / expected).min(10.0);
            self.jitter = if self.beats <= 2 { dev } else { self.jitter + JITTER_ALPHA * (dev - self.jitter) };
        }
        if let Some(rtt) = rtt {
            let ms = rtt.as_secs_f64() * 1000.0;
            if self.rtts == 0 {
                self.rtt_short_ms = ms;
                self.rtt_long_ms = ms;
            } else {
                let spike = ms > (3.0 * self.rtt_long_ms).max(self.rtt_long_ms + SPIKE_MIN_MS);
                self.spikes = self.spikes * SPIKE_DECAY + f64::from(u8::from(spike));
                self.rtt_short_ms += RTT_SHORT_ALPHA * (ms - self.rtt_short_ms);
                self.rtt_long_ms += RTT_LONG_ALPHA * (ms - self.rtt_long_ms);
            }
            self.rtts += 1;
        } else {
            self.spikes *= SPIKE_DECAY;
        }
    }

    /// The node went from ready to unreachable at `now`.
    pub fn flapped(&mut self, now: Instant) {
        if self.flaps.len() == FLAPS_KEPT {
            self.flaps.pop_front();
        }
        self.flaps.push_back(now);
    }

    /// The flaps as of `now`, each counting 1/2 per `half_life` of age.
    pub fn flaps_at_time(&self, now: Instant, half_life: Duration) -> f64 {
        let hl = half_life.as_secs_f64().max(1e-3);
        self.flaps.iter().map(|at| 0.5f64.powf(now.saturating_duration_since(*at).as_secs_f64() / hl)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn regular_beats_have_no_jitter_and_late_ones_do() {
        let mut s = BeatStats::default();
        let expected = 300 * MS;
        for _ in 0..20 {
            s.beat(Instant::now(), expected, Some(MS));
            tokio::time::advance(expected).await;
        }
        assert!(s.jitter < 1e-6, "{}", s.jitter);
        assert_eq!(s.spikes, 0.0);
        // Every beat now comes a full interval late, and its round trip is
        // 400 ms: jitter near 1, spikes counted, the short average above
        // the long one.
        for _ in 0..10 {
            s.beat(Instant::now(), expected, Some(400 * MS));
            tokio::time::advance(2 * expected).await;
        }
        assert!(s.jitter > 0.8, "{}", s.jitter);
        assert!(s.spikes > 1.0, "{}", s.spikes);
        assert!(s.rtt_short_ms > 300.0 && s.rtt_long_ms < 150.0, "{} {}", s.rtt_short_ms, s.rtt_long_ms);
        // A reconnect's gap is not jitter.
        s.session_opened();
        let before = s.jitter;
        tokio::time::advance(Duration::from_secs(30)).await;
        s.beat(Instant::now(), expected, None);
        assert_eq!(s.jitter, before);
    }

    #[tokio::test(start_paused = true)]
    async fn flaps_halve_every_half_life() {
        let mut s = BeatStats::default();
        let hl = Duration::from_secs(60);
        s.flapped(Instant::now());
        s.flapped(Instant::now());
        assert!((s.flaps_at_time(Instant::now(), hl) - 2.0).abs() < 1e-9);
        tokio::time::advance(hl).await;
        assert!((s.flaps_at_time(Instant::now(), hl) - 1.0).abs() < 1e-9);
    }
}
