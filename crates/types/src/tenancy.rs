use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, JoinTokenId, Labels, ProjectId, UnixMillis, millis_to_timestamp};

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

/// A join token's record. The secret itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: JoinTokenId,
    pub project_id: ProjectId,
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
            project_id: self.project_id.to_string(),
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
    fn join_token_usability() {
        let mut t = JoinToken {
            id: JoinTokenId::from_random([1; 10]),
            project_id: ProjectId::from_random([2; 10]),
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
