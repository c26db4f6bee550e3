//! Pools kept at a desired size (`tether.v1.PoolService`): what a pool is
//! to be, its provider, its autoscaling, and the scale requests made to the
//! provider.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, NodeId, OrgId, UnixMillis, duration_from_pb, duration_to_pb, millis_to_timestamp};

/// The most nodes a pool may be scaled to.
pub const MAX_POOL_SIZE: u32 = 10_000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub min: u32,
    pub max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    pub request_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Provider {
    /// `bearer_token` is never answered back (events and reads leave it out).
    Webhook { url: String, bearer_token: String },
    /// A command the control plane's operator registered by this name.
    Command { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoscaleMetric {
    Cpu,
    Memory,
    PendingJobs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    pub enabled: bool,
    pub metric: AutoscaleMetric,
    pub target_percent: u32,
    pub pending_after_ms: u64,
    pub jobs_per_node: u32,
    pub period_ms: u64,
    pub cooldown_ms: u64,
    pub max_step_up: u32,
    pub max_step_down: u32,
    pub canary_percent: u32,
}

/// Milliseconds, rounded up: a duration the rules let through (more than
/// zero) never becomes zero, which the answer could not state.
fn ms(d: Option<&prost_types::Duration>, default: Duration) -> u64 {
    d.map_or(default, duration_from_pb).as_nanos().div_ceil(1_000_000) as u64
}

fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(duration_to_pb(Duration::from_millis(ms)))
}

impl PoolSpec {
    /// From a request, defaults filled in. The field rules (proto) are
    /// checked already; what they cannot say (one provider, min <= max) is
    /// FAILED_PRECONDITION. `stored` is the pool's current spec on update:
    /// an empty bearer token keeps the stored one.
    pub fn from_pb(p: Option<&pb::PoolSpec>, stored: Option<&PoolSpec>) -> Result<Self, Error> {
        let d = pb::PoolSpec::default();
        let p = p.unwrap_or(&d);
        let max = if p.max == 0 { MAX_POOL_SIZE } else { p.max };
        if p.min > max {
            return Err(Error::precondition(format!("min ({}) is more than max ({max})", p.min)));
        }
        let provider = match p.provider.as_ref() {
            None => None,
            Some(pb::PoolProvider { webhook: Some(_), command: Some(_) }) => {
                return Err(Error::precondition("a provider is a webhook or a command, not both"));
            }
            Some(pb::PoolProvider { webhook: Some(w), .. }) => {
                let kept = match stored.and_then(|s| s.provider.as_ref()) {
                    Some(Provider::Webhook { bearer_token, .. }) if w.bearer_token.is_empty() => bearer_token.clone(),
                    _ => w.bearer_token.clone(),
                };
                Some(Provider::Webhook { url: w.url.clone(), bearer_token: kept })
            }
            Some(pb::PoolProvider { command: Some(c), .. }) => Some(Provider::Command { name: c.name.clone() }),
            Some(_) => None,
        };
        let autoscale = p.autoscale.as_ref().map(|a| Autoscale {
            enabled: a.enabled,
            metric: match pb::AutoscaleMetric::try_from(a.metric).unwrap_or_default() {
                pb::AutoscaleMetric::Memory => AutoscaleMetric::Memory,
                pb::AutoscaleMetric::PendingJobs => AutoscaleMetric::PendingJobs,
                _ => AutoscaleMetric::Cpu,
            },
            target_percent: if a.target_percent == 0 { 70 } else { a.target_percent },
            pending_after_ms: ms(a.pending_after.as_ref(), Duration::from_secs(30)),
            jobs_per_node: a.jobs_per_node.max(1),
            period_ms: ms(a.period.as_ref(), Duration::from_secs(30)),
            cooldown_ms: ms(a.cooldown.as_ref(), Duration::from_secs(300)),
            max_step_up: if a.max_step_up == 0 { 10 } else { a.max_step_up },
            max_step_down: if a.max_step_down == 0 { 1 } else { a.max_step_down },
            canary_percent: a.canary_percent,
        });
        if autoscale.as_ref().is_some_and(|a| a.enabled) && provider.is_none() {
            return Err(Error::precondition("autoscaling needs a provider to add and remove machines"));
        }
        Ok(PoolSpec {
            min: p.min,
            max,
            provider,
            request_timeout_ms: ms(p.request_timeout.as_ref(), DEFAULT_REQUEST_TIMEOUT),
            drain_timeout_ms: ms(p.drain_timeout.as_ref(), DEFAULT_DRAIN_TIMEOUT),
            autoscale,
        })
    }

    pub fn to_pb(&self) -> pb::PoolSpec {
        pb::PoolSpec {
            min: self.min,
            max: self.max,
            provider: self.provider.as_ref().map(|p| match p {
                Provider::Webhook { url, bearer_token } => pb::PoolProvider {
                    webhook: Some(pb::WebhookProvider {
                        url: url.clone(),
                        bearer_token: String::new(),
                        has_bearer_token: !bearer_token.is_empty(),
                    }),
                    command: None,
                },
                Provider::Command { name } => {
                    pb::PoolProvider { webhook: None, command: Some(pb::CommandProvider { name: name.clone() }) }
                }
            }),
            request_timeout: dur(self.request_timeout_ms),
            drain_timeout: dur(self.drain_timeout_ms),
            autoscale: self.autoscale.as_ref().map(|a| pb::Autoscale {
                enabled: a.enabled,
                metric: match a.metric {
                    AutoscaleMetric::Cpu => pb::AutoscaleMetric::Cpu,
                    AutoscaleMetric::Memory => pb::AutoscaleMetric::Memory,
                    AutoscaleMetric::PendingJobs => pb::AutoscaleMetric::PendingJobs,
                } as i32,
                target_percent: a.target_percent,
                pending_after: dur(a.pending_after_ms),
                jobs_per_node: a.jobs_per_node,
                period: dur(a.period_ms),
                cooldown: dur(a.cooldown_ms),
                max_step_up: a.max_step_up,
                max_step_down: a.max_step_down,
                canary_percent: a.canary_percent,
            }),
        }
    }

    /// The spec as events carry it: the bearer token left out.
    pub fn redacted(&self) -> PoolSpec {
        let mut s = self.clone();
        if let Some(Provider::Webhook { bearer_token, .. }) = &mut s.provider {
            bearer_token.clear();
        }
        s
    }

    /// `desired` within the pool's limits.
    pub fn clamp(&self, desired: u32) -> u32 {
        desired.clamp(self.min, self.max)
    }
}

/// A pool's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub org_id: OrgId,
    pub name: String,
    pub spec: PoolSpec,
    pub desired: u32,
    pub version: u64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub scaled_at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleAction {
    Add,
    Remove,
}

impl ScaleAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScaleAction::Add => "add",
            ScaleAction::Remove => "remove",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(ScaleAction::Add),
            "remove" => Some(ScaleAction::Remove),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleState {
    Draining,
    Requested,
    Fulfilled,
    Failed,
}

impl ScaleState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScaleState::Draining => "draining",
            ScaleState::Requested => "requested",
            ScaleState::Fulfilled => "fulfilled",
            ScaleState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draining" => Some(ScaleState::Draining),
            "requested" => Some(ScaleState::Requested),
            "fulfilled" => Some(ScaleState::Fulfilled),
            "failed" => Some(ScaleState::Failed),
            _ => None,
        }
    }

    pub const fn is_open(self) -> bool {
        matches!(self, ScaleState::Draining | ScaleState::Requested)
    }
}

/// One request to a pool's provider, tracked until it is fulfilled or
/// fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub id: String,
    pub org_id: OrgId,
    pub pool: String,
    pub action: ScaleAction,
    pub count: u32,
    pub state: ScaleState,
    /// Add: the nodes that joined for it; remove: the nodes it removes.
    pub nodes: Vec<NodeId>,
    pub reason: String,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub deadline: UnixMillis,
}

impl ScaleRequest {
    pub fn to_pb(&self) -> pb::ScaleRequest {
        pb::ScaleRequest {
            id: self.id.clone(),
            pool: self.pool.clone(),
            action: match self.action {
                ScaleAction::Add => pb::ScaleAction::Add,
                ScaleAction::Remove => pb::ScaleAction::Remove,
            } as i32,
            count: self.count,
            state: match self.state {
                ScaleState::Draining => pb::ScaleRequestState::Draining,
                ScaleState::Requested => pb::ScaleRequestState::Requested,
                ScaleState::Fulfilled => pb::ScaleRequestState::Fulfilled,
                ScaleState::Failed => pb::ScaleRequestState::Failed,
            } as i32,
            node_ids: self.nodes.iter().map(|n| n.as_str().to_owned()).collect(),
            reason: self.reason.clone(),
            created_at: Some(millis_to_timestamp(self.created_at)),
            updated_at: Some(millis_to_timestamp(self.updated_at)),
            deadline: Some(millis_to_timestamp(self.deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_limits_and_the_kept_token() {
        let s = PoolSpec::from_pb(None, None).unwrap();
        assert_eq!((s.min, s.max), (0, MAX_POOL_SIZE));
        assert_eq!(s.request_timeout_ms, 600_000);
        let bad = pb::PoolSpec { min: 5, max: 2, ..Default::default() };
        assert_eq!(PoolSpec::from_pb(Some(&bad), None).unwrap_err().code, crate::ErrorCode::FailedPrecondition);
        let hook = |token: &str| pb::PoolSpec {
            provider: Some(pb::PoolProvider {
                webhook: Some(pb::WebhookProvider {
                    url: "http://127.0.0.1:9/x".into(),
                    bearer_token: token.into(),
                    has_bearer_token: false,
                }),
                command: None,
            }),
            ..Default::default()
        };
        let stored = PoolSpec::from_pb(Some(&hook("s3cret")), None).unwrap();
        let updated = PoolSpec::from_pb(Some(&hook("")), Some(&stored)).unwrap();
        assert_eq!(updated.provider, stored.provider, "an empty token keeps the stored one");
        let back = stored.to_pb();
        let w = back.provider.unwrap().webhook.unwrap();
        assert!(w.has_bearer_token && w.bearer_token.is_empty(), "never answered back");
        assert!(!serde_json::to_string(&stored.redacted()).unwrap().contains("s3cret"));
        let both = pb::PoolSpec {
            provider: Some(pb::PoolProvider {
                command: Some(pb::CommandProvider { name: "x".into() }),
                ..hook("t").provider.unwrap()
            }),
            ..Default::default()
        };
        assert!(PoolSpec::from_pb(Some(&both), None).is_err());
        let auto = pb::PoolSpec {
            autoscale: Some(pb::Autoscale { enabled: true, ..Default::default() }),
            ..Default::default()
        };
        assert!(PoolSpec::from_pb(Some(&auto), None).unwrap_err().message.contains("provider"));
        let tiny = pb::PoolSpec {
            drain_timeout: Some(prost_types::Duration { seconds: 0, nanos: 100 }),
            ..Default::default()
        };
        assert_eq!(PoolSpec::from_pb(Some(&tiny), None).unwrap().drain_timeout_ms, 1, "rounded up, never 0");
        let round = PoolSpec::from_pb(Some(&PoolSpec { autoscale: None, ..stored.clone() }.to_pb()), Some(&stored));
        assert_eq!(round.unwrap(), stored);
    }
}
