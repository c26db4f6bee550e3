use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, JoinTokenId, Labels, NodeId, OrgId, ProjectId, Resources, UnixMillis, millis_to_timestamp};

/// The pool a node joins when neither its join token nor its labels name one.
pub const DEFAULT_POOL: &str = "default";

/// What a token allows, ordered by power: a higher role can do all a lower can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Support,
    Operator,
    Admin,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Support => "support",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "viewer" => Role::Viewer,
            "support" => Role::Support,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            other => return Err(Error::invalid(format!("unknown role {other:?}"))),
        })
    }

    pub fn from_pb(v: i32) -> Result<Self, Error> {
        match pb::Role::try_from(v) {
            Ok(pb::Role::Viewer) => Ok(Role::Viewer),
            Ok(pb::Role::Support) => Ok(Role::Support),
            Ok(pb::Role::Operator) => Ok(Role::Operator),
            Ok(pb::Role::Admin) => Ok(Role::Admin),
            Ok(pb::Role::Unspecified) => Err(Error::invalid("role is required")),
            Err(_) => Err(Error::invalid(format!("unknown role {v}"))),
        }
    }

    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Support => pb::Role::Support,
            Role::Operator => pb::Role::Operator,
            Role::Admin => pb::Role::Admin,
        }
    }
}

/// What a token allows over an organisation. An org-viewer is a viewer of
/// each of the organisation's projects; an org-admin is an admin of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrgRole {
    #[serde(rename = "org-viewer")]
    Viewer,
    #[serde(rename = "org-admin")]
    Admin,
}

impl OrgRole {
    pub const fn as_str(self) -> &'static str {
        match self {
            OrgRole::Viewer => "org-viewer",
            OrgRole::Admin => "org-admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "org-viewer" => Ok(OrgRole::Viewer),
            "org-admin" => Ok(OrgRole::Admin),
            other => Err(Error::invalid(format!("unknown organisation role {other:?}"))),
        }
    }

    /// None for ORG_ROLE_UNSPECIFIED.
    pub fn from_pb(v: i32) -> Result<Option<Self>, Error> {
        match pb::OrgRole::try_from(v) {
            Ok(pb::OrgRole::Unspecified) => Ok(None),
            Ok(pb::OrgRole::Viewer) => Ok(Some(OrgRole::Viewer)),
            Ok(pb::OrgRole::Admin) => Ok(Some(OrgRole::Admin)),
            Err(_) => Err(Error::invalid(format!("unknown org_role {v}"))),
        }
    }

    pub fn to_pb(role: Option<Self>) -> pb::OrgRole {
        match role {
            None => pb::OrgRole::Unspecified,
            Some(OrgRole::Viewer) => pb::OrgRole::Viewer,
            Some(OrgRole::Admin) => pb::OrgRole::Admin,
        }
    }

    /// The role this gives in each of the organisation's projects.
    pub fn project_role(self) -> Role {
        match self {
            OrgRole::Viewer => Role::Viewer,
            OrgRole::Admin => Role::Admin,
        }
    }
}

/// Checks an organisation or project name: 1-63 of `[a-z0-9-]`, starting and
/// ending with a letter or digit.
pub fn validate_tenant_name(name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if !ok {
        return Err(Error::invalid(format!(
            "name {name:?} must be 1-63 of lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Organization {
    pub fn to_pb(&self) -> pb::Organization {
        pb::Organization {
            organization_id: self.id.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            created_at: Some(millis_to_timestamp(self.created_at)),
            updated_at: Some(millis_to_timestamp(self.updated_at)),
        }
    }
}

/// Limits on what a project's active allocations hold at once; None is
/// unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub cpu_millis: Option<u64>,
    pub memory_mb: Option<u64>,
    pub gpus: Option<u64>,
    pub allocations: Option<u64>,
}

/// What a project's active (scheduled, running, stopping) allocations hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub resources: Resources,
    pub allocations: u64,
}

impl Usage {
    pub fn charge(&mut self, r: &Resources) {
        self.resources = self.resources.add(r);
        self.allocations += 1;
    }

    pub fn to_pb(&self) -> pb::Usage {
        pb::Usage {
            cpu_millis: self.resources.cpu_millis,
            memory_mb: self.resources.memory_mb,
            gpus: self.resources.gpus,
            allocations: self.allocations,
        }
    }
}

impl Quota {
    /// Why one more allocation of `r` on top of `used` would exceed the
    /// quota, if it would. The reason starts with "quota".
    pub fn exceeded_by(&self, used: &Usage, r: &Resources) -> Option<String> {
        let over = |what: &str, limit: Option<u64>, used: u64, add: u64, unit: &str| {
            limit.filter(|&l| used.saturating_add(add) > l).map(|l| {
                format!("quota: {what} {used}{unit} in use + {add}{unit} asked exceeds the project's {l}{unit}")
            })
        };
        over("cpu", self.cpu_millis, used.resources.cpu_millis, r.cpu_millis, "m")
            .or_else(|| over("memory", self.memory_mb, used.resources.memory_mb, r.memory_mb, " MB"))
            .or_else(|| over("gpus", self.gpus, used.resources.gpus, r.gpus, ""))
            .or_else(|| over("allocations", self.allocations, used.allocations, 1, ""))
    }

    pub fn from_pb(q: Option<pb::Quota>) -> Self {
        let q = q.unwrap_or_default();
        Quota { cpu_millis: q.cpu_millis, memory_mb: q.memory_mb, gpus: q.gpus, allocations: q.allocations }
    }

    pub fn to_pb(&self) -> pb::Quota {
        pb::Quota {
            cpu_millis: self.cpu_millis,
            memory_mb: self.memory_mb,
            gpus: self.gpus,
            allocations: self.allocations,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: ProjectId,
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub quota: Quota,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Project {
    pub fn to_pb(&self, pools: &BTreeSet<String>) -> pb::Project {
        pb::Project {
            project_id: self.id.to_string(),
            organization_id: self.org_id.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            quota: Some(self.quota.to_pb()),
            created_at: Some(millis_to_timestamp(self.created_at)),
            updated_at: Some(millis_to_timestamp(self.updated_at)),
            pools: pools.iter().cloned().collect(),
        }
    }
}

/// A pool of an organisation that one of its projects may place work on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolGrant {
    pub org_id: OrgId,
    pub pool: String,
    pub project_id: ProjectId,
    pub created_at: UnixMillis,
}

impl PoolGrant {
    pub fn to_pb(&self) -> pb::PoolGrant {
        pb::PoolGrant {
            organization_id: self.org_id.to_string(),
            pool: self.pool.clone(),
            project_id: self.project_id.to_string(),
            created_at: Some(millis_to_timestamp(self.created_at)),
        }
    }
}

/// Where a node stands in the tenancy model: its organisation, its pool,
/// and the project it is dedicated to, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePlace<'a> {
    pub id: &'a NodeId,
    pub org: &'a OrgId,
    pub pool: &'a str,
    pub dedicated: Option<&'a ProjectId>,
}

/// Which nodes a project may use (and see), and its quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectAccess {
    pub project: ProjectId,
    pub org: OrgId,
    /// Pools of the organisation granted to the project.
    pub pools: BTreeSet<String>,
    pub quota: Quota,
}

impl ProjectAccess {
    /// The project's dedicated nodes, and the nodes of the pools its
    /// organisation granted it.
    pub fn may_use(&self, n: NodePlace<'_>) -> bool {
        match n.dedicated {
            Some(p) => p == &self.project,
            None => n.org == &self.org && self.pools.contains(n.pool),
        }
    }
}

/// A join token's record. The secret itself is never stored, only its hash.
/// An organisation join token enrols nodes into a pool; a project join token
/// enrols nodes dedicated to the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: JoinTokenId,
    pub org_id: OrgId,
    /// Set for a project join token.
    pub project_id: Option<ProjectId>,
    /// For an organisation join token: the pool its nodes join unless their
    /// `pool` label names another.
    pub pool: String,
    pub description: String,
    pub labels: Labels,
    /// 0 means unlimited.
    pub max_uses: u32,
    pub uses: u32,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

impl JoinToken {
    /// Why this token cannot enrol a node at `now`, if it cannot.
    pub fn unusable_reason(&self, now: UnixMillis) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("join token was revoked")
        } else if now >= self.expires_at {
            Some("join token has expired")
        } else if self.max_uses > 0 && self.uses >= self.max_uses {
            Some("join token has no uses left")
        } else {
            None
        }
    }

    pub fn to_pb(&self) -> pb::JoinToken {
        pb::JoinToken {
            join_token_id: self.id.to_string(),
            project_id: self.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            organization_id: self.org_id.to_string(),
            pool: self.pool.clone(),
            description: self.description.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            max_uses: self.max_uses,
            uses: self.uses,
            created_at: Some(millis_to_timestamp(self.created_at)),
            expires_at: Some(millis_to_timestamp(self.expires_at)),
            revoked_at: self.revoked_at.map(millis_to_timestamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Support && Role::Support > Role::Viewer);
        assert!(Role::from_pb(0).is_err());
        assert_eq!(Role::from_pb(Role::Operator.to_pb() as i32).unwrap(), Role::Operator);
    }

    #[test]
    fn quotas_refuse_what_would_exceed_them() {
        let q = Quota { cpu_millis: Some(1000), allocations: Some(3), ..Default::default() };
        let half = Resources { cpu_millis: 500, memory_mb: 64, gpus: 0 };
        let mut used = Usage::default();
        assert_eq!(q.exceeded_by(&used, &half), None);
        used.charge(&half);
        assert_eq!(q.exceeded_by(&used, &half), None, "exactly at the limit is within it");
        used.charge(&half);
        let why = q.exceeded_by(&used, &half).unwrap();
        assert!(why.starts_with("quota: cpu 1000m in use + 500m"), "{why}");
        let zero = Resources::default();
        assert_eq!(q.exceeded_by(&used, &zero), None);
        used.charge(&zero);
        assert!(q.exceeded_by(&used, &zero).unwrap().starts_with("quota: allocations"));
        assert_eq!(Quota::default().exceeded_by(&used, &Resources { cpu_millis: u64::MAX, ..zero }), None);
    }

    #[test]
    fn access_covers_dedicated_nodes_and_granted_pools() {
        let (org, other_org) = (OrgId::from_random([1; 10]), OrgId::from_random([2; 10]));
        let (me, them) = (ProjectId::from_random([3; 10]), ProjectId::from_random([4; 10]));
        let a = ProjectAccess {
            project: me.clone(),
            org: org.clone(),
            pools: ["gpu".to_string()].into(),
            quota: Quota::default(),
        };
        let id = NodeId::from_random([5; 10]);
        let at = |org, pool, dedicated| NodePlace { id: &id, org, pool, dedicated };
        assert!(a.may_use(at(&org, "gpu", None)));
        assert!(!a.may_use(at(&org, "default", None)), "a pool not granted");
        assert!(!a.may_use(at(&other_org, "gpu", None)), "another organisation's pool of the same name");
        assert!(a.may_use(at(&org, "default", Some(&me))), "dedicated, whatever its pool");
        assert!(!a.may_use(at(&org, "gpu", Some(&them))), "dedicated to another project");
    }

    #[test]
    fn tenant_names() {
        for ok in ["a", "default", "team-1", &"x".repeat(63)] {
            assert!(validate_tenant_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", &"x".repeat(64)] {
            assert!(validate_tenant_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(OrgRole::parse(OrgRole::Admin.as_str()).unwrap(), OrgRole::Admin);
        assert_eq!(OrgRole::from_pb(0).unwrap(), None);
    }

    #[test]
    fn join_token_usability() {
        let mut t = JoinToken {
            id: JoinTokenId::from_random([1; 10]),
            org_id: OrgId::from_random([3; 10]),
            project_id: Some(ProjectId::from_random([2; 10])),
            pool: String::new(),
            description: String::new(),
            labels: Labels::new(),
            max_uses: 2,
            uses: 1,
            created_at: 0,
            expires_at: 100,
            revoked_at: None,
        };
        assert_eq!(t.unusable_reason(50), None);
        assert!(t.unusable_reason(100).is_some());
        t.uses = 2;
        assert!(t.unusable_reason(50).is_some());
        t.max_uses = 0;
        assert_eq!(t.unusable_reason(50), None);
        t.revoked_at = Some(10);
        assert!(t.unusable_reason(50).is_some());
    }
}
