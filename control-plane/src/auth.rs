//! Authenticates every RPC: operator macaroons with a minimum role, and node
//! credentials for the agent protocol.

use tether_auth::{Claims, CredentialKind, Macaroon, RootKey};
use tether_types::{Error, NodeId, OrgId, ProjectId, Role, TokenId};
use tonic::Request;

use crate::clock::now_ms;
use crate::status::status;

/// The authenticated caller of an operator RPC.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: Claims,
}

impl Principal {
    pub fn project(&self) -> &ProjectId {
        &self.claims.project
    }
    pub fn org(&self) -> Option<&OrgId> {
        self.claims.org.as_ref()
    }
    pub fn role(&self) -> Role {
        self.claims.role
    }
}

pub struct Authenticator {
    root: RootKey,
    /// Revoked token ids; refreshed from the database by a loop, so that a
    /// revocation on another replica takes effect here within seconds.
    revoked: std::sync::RwLock<std::collections::HashSet<TokenId>>,
}

impl Authenticator {
    pub fn new(root: RootKey) -> Self {
        Authenticator { root, revoked: Default::default() }
    }

    pub fn revoke(&self, id: TokenId) {
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn set_revoked(&self, ids: impl IntoIterator<Item = TokenId>) {
        let set = ids.into_iter().collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    pub fn root(&self) -> &RootKey {
        &self.root
    }

    fn claims<T>(&self, req: &Request<T>) -> Result<Claims, Error> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Error::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let value = header.to_str().map_err(|_| Error::unauthenticated("authorization metadata is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Error::unauthenticated("authorization must be `Bearer <token>`"))?;
        let m = Macaroon::decode(token)?;
        let claims = m.verify(&self.root, now_ms())?;
        if self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&claims.token_id) {
            return Err(Error::unauthenticated("credential was revoked"));
        }
        Ok(claims)
    }

    /// An operator credential with at least `need`.
    pub fn operator<T>(&self, req: &Request<T>, need: Role) -> Result<Principal, tonic::Status> {
        let claims = self.claims(req).map_err(status)?;
        if claims.kind != CredentialKind::Operator {
            return Err(status(Error::permission_denied("node credentials cannot call operator APIs")));
        }
        if claims.role < need {
            return Err(status(Error::permission_denied(format!(
                "this call requires role {}; the token has {}",
                need.as_str(),
                claims.role.as_str()
            ))));
        }
        Ok(Principal { claims })
    }

    /// A node credential: the node and project it is bound to.
    pub fn agent<T>(&self, req: &Request<T>) -> Result<(NodeId, ProjectId), tonic::Status> {
        let claims = self.claims(req).map_err(status)?;
        match (claims.kind, claims.node) {
            (CredentialKind::Agent, Some(node)) => Ok((node, claims.project)),
            _ => Err(status(Error::permission_denied("the agent protocol requires a node credential"))),
        }
    }
}
