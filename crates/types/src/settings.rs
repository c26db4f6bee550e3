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
        Ok(OrgSettings {
            fleet: FleetSettings { stale_node_ttl_ms: ttl, keep_down_nodes: fleet.is_some_and(|f| f.keep_down_nodes) },
        })
    }

    pub fn to_pb(&self) -> pb::Settings {
        pb::Settings {
            fleet: Some(pb::FleetSettings {
                stale_node_ttl: self.fleet.stale_node_ttl_ms.map(|ms| duration_to_pb(Duration::from_millis(ms))),
                keep_down_nodes: self.fleet.keep_down_nodes,
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
        OrgSettings {
            fleet: FleetSettings {
                stale_node_ttl_ms: ttl.map(|t| t.as_millis() as u64),
                keep_down_nodes: ttl.is_none(),
            },
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
        }))
        .unwrap();
        assert_eq!(set.stale_node_ttl(&d), Some(Duration::from_secs(5)));
        assert_eq!(OrgSettings::from_pb(Some(&set.to_pb())).unwrap(), set);
        let keep = OrgSettings { fleet: FleetSettings { stale_node_ttl_ms: Some(5), keep_down_nodes: true } };
        assert_eq!(keep.stale_node_ttl(&d), None);
        assert!(keep.effective(&d).fleet.keep_down_nodes);
        let never = SettingsDefaults { stale_node_ttl: None };
        assert_eq!(none.stale_node_ttl(&never), None);
        let bad = pb::Settings {
            fleet: Some(pb::FleetSettings {
                stale_node_ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                keep_down_nodes: false,
            }),
        };
        assert!(OrgSettings::from_pb(Some(&bad)).is_err());
    }
}
