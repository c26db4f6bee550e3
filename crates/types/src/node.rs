use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, JoinTokenId, Labels, NodeId, OrgId, ProjectId, UnixMillis, millis_to_timestamp};

/// Liveness as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Pending,
    Ready,
    Unreachable,
    Down,
    Left,
}

impl NodeStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Ready => "ready",
            NodeStatus::Unreachable => "unreachable",
            NodeStatus::Down => "down",
            NodeStatus::Left => "left",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pending" => NodeStatus::Pending,
            "ready" => NodeStatus::Ready,
            "unreachable" => NodeStatus::Unreachable,
            "down" => NodeStatus::Down,
            "left" => NodeStatus::Left,
            other => return Err(Error::invalid(format!("unknown node status {other:?}"))),
        })
    }

    /// `None` for UNSPECIFIED (no filter).
    pub fn from_pb(v: i32) -> Result<Option<Self>, Error> {
        Ok(match pb::NodeStatus::try_from(v) {
            Ok(pb::NodeStatus::Unspecified) => None,
            Ok(pb::NodeStatus::Pending) => Some(NodeStatus::Pending),
            Ok(pb::NodeStatus::Ready) => Some(NodeStatus::Ready),
            Ok(pb::NodeStatus::Unreachable) => Some(NodeStatus::Unreachable),
            Ok(pb::NodeStatus::Down) => Some(NodeStatus::Down),
            Ok(pb::NodeStatus::Left) => Some(NodeStatus::Left),
            Err(_) => return Err(Error::invalid(format!("unknown node status {v}"))),
        })
    }

    pub fn to_pb(self) -> pb::NodeStatus {
        match self {
            NodeStatus::Pending => pb::NodeStatus::Pending,
            NodeStatus::Ready => pb::NodeStatus::Ready,
            NodeStatus::Unreachable => pb::NodeStatus::Unreachable,
            NodeStatus::Down => pb::NodeStatus::Down,
            NodeStatus::Left => pb::NodeStatus::Left,
        }
    }
}

/// What an operator wants a node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredNodeState {
    Active,
    Paused,
    Draining,
    Stopped,
    Quarantined,
}

impl DesiredNodeState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DesiredNodeState::Active => "active",
            DesiredNodeState::Paused => "paused",
            DesiredNodeState::Draining => "draining",
            DesiredNodeState::Stopped => "stopped",
            DesiredNodeState::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "active" => DesiredNodeState::Active,
            "paused" => DesiredNodeState::Paused,
            "draining" => DesiredNodeState::Draining,
            "stopped" => DesiredNodeState::Stopped,
            "quarantined" => DesiredNodeState::Quarantined,
            other => return Err(Error::invalid(format!("unknown desired state {other:?}"))),
        })
    }

    pub fn from_pb(v: i32) -> Result<Self, Error> {
        match pb::DesiredNodeState::try_from(v) {
            Ok(pb::DesiredNodeState::Active) => Ok(DesiredNodeState::Active),
            Ok(pb::DesiredNodeState::Paused) => Ok(DesiredNodeState::Paused),
            Ok(pb::DesiredNodeState::Draining) => Ok(DesiredNodeState::Draining),
            Ok(pb::DesiredNodeState::Stopped) => Ok(DesiredNodeState::Stopped),
            Ok(pb::DesiredNodeState::Quarantined) => Ok(DesiredNodeState::Quarantined),
            Ok(pb::DesiredNodeState::Unspecified) => Err(Error::invalid("state is required")),
            Err(_) => Err(Error::invalid(format!("unknown desired state {v}"))),
        }
    }

    /// May new work be placed on a node in this state?
    pub fn accepts_work(self) -> bool {
        self == DesiredNodeState::Active
    }

    pub fn to_pb(self) -> pb::DesiredNodeState {
        match self {
            DesiredNodeState::Active => pb::DesiredNodeState::Active,
            DesiredNodeState::Paused => pb::DesiredNodeState::Paused,
            DesiredNodeState::Draining => pb::DesiredNodeState::Draining,
            DesiredNodeState::Stopped => pb::DesiredNodeState::Stopped,
            DesiredNodeState::Quarantined => pb::DesiredNodeState::Quarantined,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub model: String,
    pub memory_mb: u64,
}

/// What an agent reports about its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapabilities {
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub addresses: Vec<String>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub gpus: Vec<Gpu>,
    pub agent_version: String,
    pub kernel_version: String,
}

const MAX_SHORT: usize = 255;

fn short(field: &str, v: String) -> Result<String, Error> {
    if v.len() > MAX_SHORT {
        return Err(Error::invalid(format!("capabilities.{field} is longer than {MAX_SHORT} bytes")));
    }
    Ok(v)
}

impl TryFrom<pb::NodeCapabilities> for NodeCapabilities {
    type Error = Error;

    fn try_from(c: pb::NodeCapabilities) -> Result<Self, Error> {
        if c.hostname.trim().is_empty() {
            return Err(Error::invalid("capabilities.hostname is required"));
        }
        if c.addresses.len() > 64 || c.gpus.len() > 64 {
            return Err(Error::invalid("capabilities lists at most 64 addresses and 64 GPUs"));
        }
        Ok(NodeCapabilities {
            os: short("os", c.os)?,
            arch: short("arch", c.arch)?,
            hostname: short("hostname", c.hostname)?,
            addresses: c.addresses.into_iter().map(|a| short("addresses", a)).collect::<Result<_, _>>()?,
            cpu_count: c.cpu_count,
            memory_mb: c.memory_mb,
            disk_mb: c.disk_mb,
            gpus: c
                .gpus
                .into_iter()
                .map(|g| Ok(Gpu { model: short("gpus.model", g.model)?, memory_mb: g.memory_mb }))
                .collect::<Result<_, Error>>()?,
            agent_version: short("agent_version", c.agent_version)?,
            kernel_version: short("kernel_version", c.kernel_version)?,
        })
    }
}

impl From<&NodeCapabilities> for pb::NodeCapabilities {
    fn from(c: &NodeCapabilities) -> Self {
        pb::NodeCapabilities {
            os: c.os.clone(),
            arch: c.arch.clone(),
            hostname: c.hostname.clone(),
            addresses: c.addresses.clone(),
            cpu_count: c.cpu_count,
            memory_mb: c.memory_mb,
            disk_mb: c.disk_mb,
            gpus: c.gpus.iter().map(|g| pb::Gpu { model: g.model.clone(), memory_mb: g.memory_mb }).collect(),
            agent_version: c.agent_version.clone(),
            kernel_version: c.kernel_version.clone(),
        }
    }
}

/// The latest heartbeat figures; kept in memory only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub cpu_percent: f64,
    pub memory_used_mb: u64,
    pub disk_used_mb: u64,
    pub running_allocations: u32,
}

/// The durable record of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub org_id: OrgId,
    /// Set for a node dedicated to one project (enrolled with a project join
    /// token); None for a node of the organisation's shared pools.
    pub project_id: Option<ProjectId>,
    pub status: NodeStatus,
    pub desired_state: DesiredNodeState,
    pub desired_state_version: u64,
    pub capabilities: NodeCapabilities,
    pub labels: Labels,
    pub pool: String,
    pub registered_at: UnixMillis,
    pub status_changed_at: UnixMillis,
    pub last_seen_at: UnixMillis,
    pub session_generation: u64,
    pub join_token_id: Option<JoinTokenId>,
    #[serde(default)]
    pub desired_state_reason: String,
    #[serde(default)]
    pub acked_desired_state_version: u64,
    #[serde(default)]
    pub desired_state_nack: String,
    #[serde(default)]
    pub drain_deadline: Option<UnixMillis>,
    #[serde(default)]
    pub transport: NodeTransport,
}

/// How a node's agent talks to the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeTransport {
    /// Heartbeat and Jobs streams over gRPC: the node runs work.
    #[default]
    Grpc,
    /// Signed heartbeats posted over HTTP: liveness and reports, no work.
    Http,
}

impl NodeTransport {
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeTransport::Grpc => "grpc",
            NodeTransport::Http => "http",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "grpc" => Ok(NodeTransport::Grpc),
            "http" => Ok(NodeTransport::Http),
            other => Err(Error::invalid(format!("unknown node transport {other:?}"))),
        }
    }

    pub fn to_pb(self) -> pb::NodeTransport {
        match self {
            NodeTransport::Grpc => pb::NodeTransport::Grpc,
            NodeTransport::Http => pb::NodeTransport::Http,
        }
    }
}

impl Node {
    /// Where the node stands in the tenancy model.
    pub fn place(&self) -> crate::NodePlace<'_> {
        crate::NodePlace { id: &self.id, org: &self.org_id, pool: &self.pool, dedicated: self.project_id.as_ref() }
    }

    pub fn to_pb(&self, usage: Option<NodeUsage>) -> pb::Node {
        pb::Node {
            node_id: self.id.to_string(),
            project_id: self.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            organization_id: self.org_id.to_string(),
            status: self.status.to_pb() as i32,
            desired_state: self.desired_state.to_pb() as i32,
            desired_state_version: self.desired_state_version,
            capabilities: Some((&self.capabilities).into()),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            pool: self.pool.clone(),
            registered_at: Some(millis_to_timestamp(self.registered_at)),
            status_changed_at: Some(millis_to_timestamp(self.status_changed_at)),
            last_seen_at: (self.last_seen_at > 0).then(|| millis_to_timestamp(self.last_seen_at)),
            session_generation: self.session_generation,
            usage: usage.map(|u| pb::NodeUsage {
                cpu_percent: u.cpu_percent,
                memory_used_mb: u.memory_used_mb,
                disk_used_mb: u.disk_used_mb,
                running_allocations: u.running_allocations,
            }),
            join_token_id: self.join_token_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            desired_state_reason: self.desired_state_reason.clone(),
            acked_desired_state_version: self.acked_desired_state_version,
            desired_state_nack: self.desired_state_nack.clone(),
            drain_deadline: self.drain_deadline.map(millis_to_timestamp),
            transport: self.transport.to_pb() as i32,
            report: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_validation() {
        let ok = pb::NodeCapabilities { hostname: "h1".into(), ..Default::default() };
        assert!(NodeCapabilities::try_from(ok.clone()).is_ok());
        assert!(NodeCapabilities::try_from(pb::NodeCapabilities::default()).is_err());
        let long = pb::NodeCapabilities { os: "x".repeat(300), ..ok };
        assert!(NodeCapabilities::try_from(long).is_err());
    }

    #[test]
    fn status_round_trip() {
        for s in [NodeStatus::Pending, NodeStatus::Ready, NodeStatus::Unreachable, NodeStatus::Down, NodeStatus::Left] {
            assert_eq!(NodeStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(NodeStatus::from_pb(s.to_pb() as i32).unwrap(), Some(s));
        }
        assert_eq!(NodeStatus::from_pb(0).unwrap(), None);
        assert!(NodeStatus::from_pb(99).is_err());
    }
}
