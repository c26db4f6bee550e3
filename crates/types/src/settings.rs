//! An organisation's runtime settings: what its loops read at every
//! activation (see `tether.v1.SettingsService`). Unset values mean the
//! control plane's defaults (its flags).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, duration_from_pb, duration_to_pb};

/// Longest duration a setting takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    #[serde(default)]
    pub fleet: FleetSettings,
    #[serde(default)]
    pub scoring: ScoringSettings,
    #[serde(default)]
    pub quarantine: QuarantineSettings,
    #[serde(default)]
    pub pricing: PriceBook,
}

/// What metered usage costs: a price per unit (billionths of the currency)
/// per resource and tier ("" the default tier).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBook {
    /// Empty: USD.
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub prices: Vec<Price>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub resource: String,
    #[serde(default)]
    pub tier: String,
    pub unit_price_nanos: u64,
}

impl PriceBook {
    pub fn currency(&self) -> &str {
        if self.currency.is_empty() { "USD" } else { &self.currency }
    }

    /// The unit price of `resource` in `tier`, else in the default tier.
    pub fn price(&self, resource: &str, tier: &str) -> Option<u64> {
        let of =
            |t: &str| self.prices.iter().find(|p| p.resource == resource && p.tier == t).map(|p| p.unit_price_nanos);
        of(tier).or_else(|| of(""))
    }
}

/// How nodes are scored (milliseconds; None: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_target_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ramp_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap_half_life_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window_ms: Option<u64>,
}

/// Automatic quarantine (percentages and milliseconds; None: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<u32>,
}

/// Scoring as the loops use it, every default filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub latency_target: Duration,
    pub uptime_ramp: Duration,
    pub flap_half_life: Duration,
    pub failure_window: Duration,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            latency_target: Duration::from_millis(100),
            uptime_ramp: Duration::from_secs(600),
            flap_half_life: Duration::from_secs(900),
            failure_window: Duration::from_secs(3600),
        }
    }
}

/// Automatic quarantine as the loop uses it, every default filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quarantine {
    pub enabled: bool,
    /// Scores in [0, 1].
    pub below: f64,
    pub release: f64,
    pub probation: Duration,
    /// A share in [0, 1] of the organisation's nodes.
    pub max_share: f64,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine { enabled: false, below: 0.5, release: 0.8, probation: Duration::from_secs(600), max_share: 0.2 }
    }
}

/// A duration setting: None when unset, else more than zero and at most
/// `max`, in milliseconds rounded up (a sub-millisecond value the rules
/// accept is never kept as zero).
fn duration_ms(name: &str, d: Option<&prost_types::Duration>, max: Duration) -> Result<Option<u64>, Error> {
    let Some(d) = d else { return Ok(None) };
    let bad = || Error::invalid(format!("{name} must be more than zero and at most {}s", max.as_secs()));
    if d.seconds < 0 || d.nanos < 0 {
        return Err(bad());
    }
    let d = duration_from_pb(d);
    if d.is_zero() || d > max {
        return Err(bad());
    }
    Ok(Some(d.as_nanos().div_ceil(1_000_000) as u64))
}

fn percent(name: &str, v: u32) -> Result<Option<u32>, Error> {
    match v {
        0 => Ok(None),
        1..=100 => Ok(Some(v)),
        _ => Err(Error::invalid(format!("{name} is a percentage: at most 100"))),
    }
}

fn ms_pb(ms: Option<u64>) -> Option<prost_types::Duration> {
    ms.map(|ms| duration_to_pb(Duration::from_millis(ms)))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// Milliseconds; None: the control plane's `--stale-node-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_node_ttl_ms: Option<u64>,
    #[serde(default)]
    pub keep_down_nodes: bool,
}

/// The control plane's defaults, from its flags.
#[derive(Debug, Clone, Copy)]
pub struct SettingsDefaults {
    /// None: never.
    pub stale_node_ttl: Option<Duration>,
}

impl OrgSettings {
    pub fn from_pb(p: Option<&pb::Settings>) -> Result<Self, Error> {
        let fleet = p.and_then(|p| p.fleet.as_ref());
        let ttl = match fleet.and_then(|f| f.stale_node_ttl.as_ref()) {
            None => None,
            Some(d) => {
                if d.seconds < 0 || d.nanos < 0 {
                    return Err(Error::invalid("fleet.stale_node_ttl must be more than zero"));
                }
                let d = duration_from_pb(d);
                if d.is_zero() || d > MAX_DURATION {
                    return Err(Error::invalid("fleet.stale_node_ttl must be more than zero and at most 365 days"));
                }
                Some(d.as_millis() as u64)
            }
        };
        let sc = p.and_then(|p| p.scoring.as_ref());
        let scoring = ScoringSettings {
            latency_target_ms: duration_ms(
                "scoring.latency_target",
                sc.and_then(|s| s.latency_target.as_ref()),
                Duration::from_secs(60),
            )?,
            uptime_ramp_ms: duration_ms("scoring.uptime_ramp", sc.and_then(|s| s.uptime_ramp.as_ref()), MAX_DURATION)?,
            flap_half_life_ms: duration_ms(
                "scoring.flap_half_life",
                sc.and_then(|s| s.flap_half_life.as_ref()),
                MAX_DURATION,
            )?,
            failure_window_ms: duration_ms(
                "scoring.failure_window",
                sc.and_then(|s| s.failure_window.as_ref()),
                MAX_DURATION,
            )?,
        };
        let q = p.and_then(|p| p.quarantine.as_ref());
        let quarantine = QuarantineSettings {
            enabled: q.is_some_and(|q| q.enabled),
            below_percent: percent("quarantine.below_percent", q.map_or(0, |q| q.below_percent))?,
            release_percent: percent("quarantine.release_percent", q.map_or(0, |q| q.release_percent))?,
            probation_ms: duration_ms("quarantine.probation", q.and_then(|q| q.probation.as_ref()), MAX_DURATION)?,
            max_percent: percent("quarantine.max_percent", q.map_or(0, |q| q.max_percent))?,
        };
        let pb_book = p.and_then(|p| p.pricing.as_ref());
        let pricing = PriceBook {
            currency: pb_book.map(|b| b.currency.clone()).unwrap_or_default(),
            prices: pb_book
                .map(|b| {
                    b.prices
                        .iter()
                        .map(|p| Price {
                            resource: p.resource.clone(),
                            tier: p.tier.clone(),
                            unit_price_nanos: p.unit_price_nanos,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut seen = std::collections::HashSet::new();
        for p in &pricing.prices {
            if !seen.insert((&p.resource, &p.tier)) {
                return Err(Error::new(
                    crate::ErrorCode::FailedPrecondition,
                    format!("pricing names {} in tier {:?} twice: one price per resource and tier", p.resource, p.tier),
                ));
            }
        }
        let out = OrgSettings {
            fleet: FleetSettings { stale_node_ttl_ms: ttl, keep_down_nodes: fleet.is_some_and(|f| f.keep_down_nodes) },
            scoring,
            quarantine,
            pricing,
        };
        // A rule between two fields, which the field rules cannot say: a
        // failed precondition rather than a malformed request.
        let qe = out.quarantine_effective();
        if qe.release <= qe.below {
            return Err(Error::new(
                crate::ErrorCode::FailedPrecondition,
                format!(
                    "quarantine.release_percent ({:.0}) must be above quarantine.below_percent ({:.0})",
                    qe.release * 100.0,
                    qe.below * 100.0
                ),
            ));
        }
        Ok(out)
    }

    /// Scoring with the defaults filled in.
    pub fn scoring_effective(&self) -> Scoring {
        let d = Scoring::default();
        let s = &self.scoring;
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        Scoring {
            latency_target: ms(s.latency_target_ms, d.latency_target),
            uptime_ramp: ms(s.uptime_ramp_ms, d.uptime_ramp),
            flap_half_life: ms(s.flap_half_life_ms, d.flap_half_life),
            failure_window: ms(s.failure_window_ms, d.failure_window),
        }
    }

    /// Automatic quarantine with the defaults filled in.
    pub fn quarantine_effective(&self) -> Quarantine {
        let d = Quarantine::default();
        let q = &self.quarantine;
        let share = |v: Option<u32>, d: f64| v.map_or(d, |p| f64::from(p) / 100.0);
        Quarantine {
            enabled: q.enabled,
            below: share(q.below_percent, d.below),
            release: share(q.release_percent, d.release),
            probation: q.probation_ms.map_or(d.probation, Duration::from_millis),
            max_share: share(q.max_percent, d.max_share),
        }
    }

    pub fn to_pb(&self) -> pb::Settings {
        pb::Settings {
            fleet: Some(pb::FleetSettings {
                stale_node_ttl: self.fleet.stale_node_ttl_ms.map(|ms| duration_to_pb(Duration::from_millis(ms))),
                keep_down_nodes: self.fleet.keep_down_nodes,
            }),
            scoring: Some(pb::ScoringSettings {
                latency_target: ms_pb(self.scoring.latency_target_ms),
                uptime_ramp: ms_pb(self.scoring.uptime_ramp_ms),
                flap_half_life: ms_pb(self.scoring.flap_half_life_ms),
                failure_window: ms_pb(self.scoring.failure_window_ms),
            }),
            quarantine: Some(pb::QuarantineSettings {
                enabled: self.quarantine.enabled,
                below_percent: self.quarantine.below_percent.unwrap_or(0),
                release_percent: self.quarantine.release_percent.unwrap_or(0),
                probation: ms_pb(self.quarantine.probation_ms),
                max_percent: self.quarantine.max_percent.unwrap_or(0),
            }),
            pricing: Some(pb::PriceBook {
                currency: self.pricing.currency.clone(),
                prices: self
                    .pricing
                    .prices
                    .iter()
                    .map(|p| pb::Price {
                        resource: p.resource.clone(),
                        tier: p.tier.clone(),
                        unit_price_nanos: p.unit_price_nanos,
                    })
                    .collect(),
            }),
        }
    }

    /// How long a down node is kept, with the defaults filled in: None for
    /// ever.
    pub fn stale_node_ttl(&self, d: &SettingsDefaults) -> Option<Duration> {
        if self.fleet.keep_down_nodes {
            return None;
        }
        self.fleet.stale_node_ttl_ms.map(Duration::from_millis).or(d.stale_node_ttl)
    }

    /// The settings as the loops use them (every default written out).
    pub fn effective(&self, d: &SettingsDefaults) -> OrgSettings {
        let ttl = self.stale_node_ttl(d);
        let sc = self.scoring_effective();
        let q = self.quarantine_effective();
        let ms = |d: Duration| Some(d.as_millis() as u64);
        let pct = |v: f64| Some((v * 100.0).round() as u32);
        OrgSettings {
            fleet: FleetSettings {
                stale_node_ttl_ms: ttl.map(|t| t.as_millis() as u64),
                keep_down_nodes: ttl.is_none(),
            },
            scoring: ScoringSettings {
                latency_target_ms: ms(sc.latency_target),
                uptime_ramp_ms: ms(sc.uptime_ramp),
                flap_half_life_ms: ms(sc.flap_half_life),
                failure_window_ms: ms(sc.failure_window),
            },
            quarantine: QuarantineSettings {
                enabled: q.enabled,
                below_percent: pct(q.below),
                release_percent: pct(q.release),
                probation_ms: ms(q.probation),
                max_percent: pct(q.max_share),
            },
            pricing: PriceBook { currency: self.pricing.currency().to_string(), prices: self.pricing.prices.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_win_over_defaults() {
        let d = SettingsDefaults { stale_node_ttl: Some(Duration::from_secs(86_400)) };
        let none = OrgSettings::default();
        assert_eq!(none.stale_node_ttl(&d), Some(Duration::from_secs(86_400)));
        let set = OrgSettings::from_pb(Some(&pb::Settings {
            fleet: Some(pb::FleetSettings {
                stale_node_ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                keep_down_nodes: false,
            }),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(set.stale_node_ttl(&d), Some(Duration::from_secs(5)));
        assert_eq!(OrgSettings::from_pb(Some(&set.to_pb())).unwrap(), set);
        let keep = OrgSettings {
            fleet: FleetSettings { stale_node_ttl_ms: Some(5), keep_down_nodes: true },
            ..Default::default()
        };
        assert_eq!(keep.stale_node_ttl(&d), None);
        assert!(keep.effective(&d).fleet.keep_down_nodes);
        let never = SettingsDefaults { stale_node_ttl: None };
        assert_eq!(none.stale_node_ttl(&never), None);
        let bad = pb::Settings {
            fleet: Some(pb::FleetSettings {
                stale_node_ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                keep_down_nodes: false,
            }),
            ..Default::default()
        };
        assert!(OrgSettings::from_pb(Some(&bad)).is_err());
    }

    #[test]
    fn scoring_and_quarantine_defaults_and_rules() {
        let none = OrgSettings::default();
        assert_eq!(none.scoring_effective(), Scoring::default());
        assert!(!none.quarantine_effective().enabled, "off by default");
        let q = |below, release| pb::Settings {
            quarantine: Some(pb::QuarantineSettings {
                enabled: true,
                below_percent: below,
                release_percent: release,
                probation: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
                max_percent: 50,
            }),
            scoring: Some(pb::ScoringSettings {
                uptime_ramp: Some(prost_types::Duration { seconds: 0, nanos: 1 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = OrgSettings::from_pb(Some(&q(40, 70))).unwrap();
        let e = s.quarantine_effective();
        assert!(e.enabled && e.below == 0.4 && e.release == 0.7 && e.max_share == 0.5);
        assert_eq!(e.probation, Duration::from_secs(2));
        assert_eq!(s.scoring_effective().uptime_ramp, Duration::from_millis(1), "rounded up, never zero");
        assert_eq!(OrgSettings::from_pb(Some(&s.to_pb())).unwrap(), s, "round trip");
        assert!(OrgSettings::from_pb(Some(&q(60, 0))).is_ok(), "below the default release of 80");
        let err = OrgSettings::from_pb(Some(&q(80, 0))).unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::FailedPrecondition, "80 is not below the default release: {err:?}");
        assert!(OrgSettings::from_pb(Some(&q(70, 60))).is_err(), "release below the threshold");
        assert!(OrgSettings::from_pb(Some(&q(40, 101))).is_err());
        let twice = pb::Settings {
            pricing: Some(pb::PriceBook {
                currency: String::new(),
                prices: vec![
                    pb::Price { resource: "cpu_seconds".into(), tier: String::new(), unit_price_nanos: 1 },
                    pb::Price { resource: "cpu_seconds".into(), tier: String::new(), unit_price_nanos: 2 },
                ],
            }),
            ..Default::default()
        };
        let err = OrgSettings::from_pb(Some(&twice)).unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::FailedPrecondition, "one price per resource and tier: {err:?}");
        let eff = s.effective(&SettingsDefaults { stale_node_ttl: None });
        assert_eq!(eff.quarantine.below_percent, Some(40));
        assert_eq!(eff.scoring.latency_target_ms, Some(100));
    }
}
