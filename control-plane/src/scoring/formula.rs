//! The reliability score: pure, from a node's figures, its fleet's and the
//! organisation's scoring settings. docs/operations.md, "Reliability
//! scoring", states the same formula.
//!
//! Each component is a penalty p in [0, 1] with a weight w; the score is the
//! product of (1 - w * p), so a single bad figure cannot take the score
//! below 1 - w, and several together compound.

use std::time::Duration;

use tether_types::settings::Scoring;

/// Beats a node needs before its heartbeat figures count.
pub const MIN_BEATS: u64 = 5;
/// Nodes with figures an organisation needs before the fleet comparison
/// counts.
pub const MIN_FLEET: usize = 3;
/// A robust z-score above this costs; twice this costs the full penalty.
const Z_FREE: f64 = 3.0;
/// Arrival jitter (share of the interval) that is free, and the share that
/// costs the full penalty.
const JITTER_FREE: f64 = 0.1;
const JITTER_FULL: f64 = 0.5;
/// Spikes (decayed count) that cost the full penalty.
const SPIKES_FULL: f64 = 5.0;
/// Flaps (decayed count) that cost the full penalty.
const FLAPS_FULL: f64 = 3.0;
/// Least spread the fleet comparison assumes (so that near-identical peers
/// do not make noise an outlier): of jitter, and of round trips as a share
/// of the latency target.
const JITTER_SPREAD_FLOOR: f64 = 0.05;
const RTT_SPREAD_FLOOR: f64 = 0.1;

/// The weights, in the order the components are listed.
pub const WEIGHTS: [(&str, f64); 8] = [
    ("jitter", 0.6),
    ("latency", 0.5),
    ("spikes", 0.4),
    ("drift", 0.3),
    ("fleet", 0.4),
    ("failures", 0.6),
    ("uptime", 0.3),
    ("flaps", 0.6),
];

/// What a node's score is made from.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub beats: u64,
    /// Mean |gap - expected| / expected.
    pub jitter: f64,
    pub rtts: u64,
    pub rtt_short_ms: f64,
    pub rtt_long_ms: f64,
    pub spikes: f64,
    pub flaps: f64,
    /// How long it has been ready without a break; None when it is not.
    pub ready_for: Option<Duration>,
    /// Job attempts that finished on it within the failure window, and of
    /// them those that failed or were lost.
    pub finished: u64,
    pub failed: u64,
}

/// A figure's middle and spread across an organisation's nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Robust {
    pub median: f64,
    /// 1.4826 * MAD, at least the floor.
    pub scale: f64,
}

impl Robust {
    /// None with fewer than [`MIN_FLEET`] values.
    pub fn of(values: &mut [f64], floor: f64) -> Option<Robust> {
        if values.len() < MIN_FLEET {
            return None;
        }
        let median = median(values);
        let mut dev: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        let mad = median_of(&mut dev);
        Some(Robust { median, scale: (1.4826 * mad).max(floor) })
    }

    pub fn z(&self, v: f64) -> f64 {
        (v - self.median) / self.scale
    }
}

fn median(values: &mut [f64]) -> f64 {
    median_of(values)
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The organisation's jitter and round trips, of the nodes with enough
/// beats.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fleet {
    pub jitter: Option<Robust>,
    pub rtt: Option<Robust>,
}

impl Fleet {
    pub fn of<'a>(figures: impl Iterator<Item = &'a Figures>, s: &Scoring) -> Fleet {
        let (mut jitter, mut rtt) = (Vec::new(), Vec::new());
        for f in figures {
            if f.beats >= MIN_BEATS {
                jitter.push(f.jitter);
            }
            if f.rtts >= MIN_BEATS {
                rtt.push(f.rtt_short_ms);
            }
        }
        let target_ms = s.latency_target.as_secs_f64() * 1000.0;
        Fleet {
            jitter: Robust::of(&mut jitter, JITTER_SPREAD_FLOOR),
            rtt: Robust::of(&mut rtt, (RTT_SPREAD_FLOOR * target_ms).max(1.0)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: &'static str,
    pub penalty: f64,
    pub weight: f64,
    pub value: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub score: f64,
    pub components: Vec<Component>,
    /// The components that cost at least [`REASON_COST`], worst first, in words.
    pub reasons: Vec<String>,
}

/// What a component must take off the score to be named a reason.
pub const REASON_COST: f64 = 0.05;

fn clamp01(v: f64) -> f64 {
    if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }
}

/// The score of a node with `f`, in a fleet `fleet`, under `s`, explained.
pub fn score(f: &Figures, fleet: &Fleet, s: &Scoring) -> Score {
    score_in(f, fleet, s, true)
}

/// The score alone, without the words (the scoring loop's every-second
/// round: no strings are made for ten thousand nodes that nobody reads).
pub fn value(f: &Figures, fleet: &Fleet, s: &Scoring) -> f64 {
    score_in(f, fleet, s, false).score
}

fn score_in(f: &Figures, fleet: &Fleet, s: &Scoring, words: bool) -> Score {
    // The detail of a component, made only when asked for.
    macro_rules! say {
        ($($t:tt)*) => { if words { format!($($t)*) } else { String::new() } };
    }
    let target_ms = s.latency_target.as_secs_f64() * 1000.0;
    let beats_ok = f.beats >= MIN_BEATS;
    let rtts_ok = f.rtts >= MIN_BEATS;
    let mut parts: Vec<(f64, f64, String)> = Vec::with_capacity(WEIGHTS.len());
    // jitter
    parts.push(if beats_ok {
        (
            clamp01((f.jitter - JITTER_FREE) / (JITTER_FULL - JITTER_FREE)),
            f.jitter,
            say!("heartbeats arrive {:.0}% off their interval on average", f.jitter * 100.0),
        )
    } else {
        (0.0, f.jitter, say!("{} beats: too few to judge", f.beats))
    });
    // latency
    parts.push(if rtts_ok {
        (
            clamp01((f.rtt_short_ms - target_ms) / target_ms),
            f.rtt_short_ms,
            say!("heartbeat round trips average {:.1} ms against a target of {target_ms:.0} ms", f.rtt_short_ms),
        )
    } else {
        (0.0, f.rtt_short_ms, say!("{} round trips: too few to judge", f.rtts))
    });
    // spikes
    parts.push((
        clamp01(f.spikes / SPIKES_FULL),
        f.spikes,
        say!("{:.1} recent latency spikes (round trips over three times the node's usual)", f.spikes),
    ));
    // drift: the recent round trips against the node's own history.
    let drift = f.rtt_short_ms - f.rtt_long_ms;
    parts.push(if rtts_ok {
        (
            clamp01((drift - target_ms / 2.0) / target_ms),
            drift,
            say!("recent round trips {:.1} ms above the node's history ({:.1} ms)", drift.max(0.0), f.rtt_long_ms),
        )
    } else {
        (0.0, drift, say!("too little history"))
    });
    // fleet: the worse of jitter and round trips against the organisation's.
    let zj = fleet.jitter.filter(|_| beats_ok).map(|r| (r.z(f.jitter), "jitter"));
    let zr = fleet.rtt.filter(|_| rtts_ok).map(|r| (r.z(f.rtt_short_ms), "round trips"));
    let worst = [zj, zr].into_iter().flatten().max_by(|a, b| a.0.total_cmp(&b.0));
    parts.push(match worst {
        Some((z, what)) => {
            (clamp01((z - Z_FREE) / Z_FREE), z, say!("{what} {z:.1} robust deviations from the fleet's median"))
        }
        None => (0.0, 0.0, say!("fleet too small to compare")),
    });
    // failures: smoothed, so that one failure of one is not a rate of 1.
    let rate = f.failed as f64 / (f.finished as f64 + 2.0);
    parts.push((
        clamp01(rate),
        if f.finished == 0 { 0.0 } else { f.failed as f64 / f.finished as f64 },
        say!("{} of {} job attempts failed or were lost within the failure window", f.failed, f.finished),
    ));
    // uptime
    let ramp = s.uptime_ramp.as_secs_f64().max(1e-3);
    parts.push(match f.ready_for {
        Some(up) => (
            clamp01(1.0 - up.as_secs_f64() / ramp),
            up.as_secs_f64(),
            say!("ready for {}s of the {}s that earn full uptime", up.as_secs(), s.uptime_ramp.as_secs()),
        ),
        None => (1.0, 0.0, say!("not ready")),
    });
    // flaps
    parts.push((clamp01(f.flaps / FLAPS_FULL), f.flaps, say!("{:.1} recent flaps (ready to unreachable)", f.flaps)));
    let components: Vec<Component> = WEIGHTS
        .iter()
        .zip(parts)
        .map(|(&(name, weight), (penalty, value, detail))| Component { name, penalty, weight, value, detail })
        .collect();
    let score = clamp01(components.iter().map(|c| 1.0 - c.weight * c.penalty).product());
    let mut costly: Vec<&Component> =
        components.iter().filter(|c| words && c.weight * c.penalty >= REASON_COST).collect();
    costly.sort_by(|a, b| (b.weight * b.penalty).total_cmp(&(a.weight * a.penalty)));
    let reasons = costly.iter().map(|c| say!("{}: {}", c.name, c.detail)).collect();
    Score { score, components, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Figures {
        Figures {
            beats: 100,
            jitter: 0.05,
            rtts: 100,
            rtt_short_ms: 1.0,
            rtt_long_ms: 1.0,
            ready_for: Some(Duration::from_secs(3600)),
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_node_scores_one_and_each_fault_costs_its_weight_at_most() {
        let s = Scoring::default();
        let fleet = Fleet::default();
        let h = score(&healthy(), &fleet, &s);
        assert_eq!(h.score, 1.0, "{h:?}");
        assert!(h.reasons.is_empty());
        let late = Figures { jitter: 2.0, ..healthy() };
        let l = score(&late, &fleet, &s);
        assert!((l.score - 0.4).abs() < 1e-9, "jitter alone costs its weight: {l:?}");
        assert!(l.reasons[0].starts_with("jitter: heartbeats arrive 200% off"), "{:?}", l.reasons);
        let slow = Figures { rtt_short_ms: 150.0, ..healthy() };
        let sl = score(&slow, &fleet, &s);
        assert!(sl.components[1].penalty > 0.49 && sl.components[1].penalty < 0.51, "half way to twice the target");
        assert!(sl.components[3].penalty > 0.0, "and a drift from its history of 1 ms");
        let new = Figures { ready_for: Some(Duration::ZERO), beats: 0, rtts: 0, ..Default::default() };
        let n = score(&new, &fleet, &s);
        assert!((n.score - 0.7).abs() < 1e-9, "a new node pays only for uptime: {n:?}");
        let failing = Figures { finished: 8, failed: 8, ..healthy() };
        assert!(score(&failing, &fleet, &s).score < 0.55);
        let flapping = Figures { flaps: 3.0, ..healthy() };
        assert!((score(&flapping, &fleet, &s).score - 0.4).abs() < 1e-9);
        let down = Figures { ready_for: None, ..healthy() };
        assert!((score(&down, &fleet, &s).score - 0.7).abs() < 1e-9);
        for f in [healthy(), late, slow, new, failing, flapping, down] {
            assert_eq!(value(&f, &fleet, &s), score(&f, &fleet, &s).score, "the number is the same without words");
        }
    }

    #[test]
    fn the_fleet_comparison_is_robust() {
        let s = Scoring::default();
        let mut nodes = vec![healthy(), Figures { jitter: 0.06, ..healthy() }, Figures { jitter: 0.07, ..healthy() }];
        nodes.push(Figures { jitter: 0.45, ..healthy() });
        let fleet = Fleet::of(nodes.iter(), &s);
        let j = fleet.jitter.unwrap();
        assert!((j.median - 0.065).abs() < 1e-9, "{j:?}");
        assert_eq!(j.scale, JITTER_SPREAD_FLOOR, "near-identical peers: the floor");
        let out = score(&nodes[3], &fleet, &s);
        let f = &out.components[4];
        assert_eq!(f.name, "fleet");
        assert!(f.value > 7.0 && f.penalty == 1.0, "{f:?}");
        for peer in &nodes[..3] {
            assert_eq!(score(peer, &fleet, &s).components[4].penalty, 0.0);
        }
        assert!(Fleet::of(nodes[..2].iter(), &s).jitter.is_none(), "two nodes are no fleet");
    }
}
