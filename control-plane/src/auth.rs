//! Authenticates every RPC and resolves who is calling, on what: operator
//! macaroons (platform, organisation or project scope, see
//! `tether_auth::Caveat`) and node credentials for the agent protocol.
//!
//! Each operator call names at most one project: the token's own, or for an
//! organisation or platform token the `x-tether-project` header, or for the
//! platform administrator the first start's project. Anything outside the
//! token's scope answers NOT_FOUND, never PERMISSION_DENIED, so that a
//! tenant learns nothing of another's resources; PERMISSION_DENIED is only
//! for a role too low on something the caller may see.

use std::sync::Arc;

use tether_auth::{Caveat, Claims, CredentialKind, Macaroon, RootKey};
use tether_types::{Error, NodeId, NodePlace, OrgId, OrgRole, ProjectAccess, ProjectId, Role, TokenId};
use tonic::Request;

use crate::clock::now_ms;
use crate::status::status;
use crate::tenants::{TenantCache, TenantView};

/// The header (gRPC metadata) naming the project an organisation or
/// platform token acts on.
pub const PROJECT_HEADER: &str = "x-tether-project";

/// The authenticated caller of an operator RPC, resolved against the
/// tenancy records.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    /// Every organisation: the platform administrator.
    pub platform: bool,
    /// The project the call acts on, with the caller's role in it.
    pub project: Option<InProject>,
    /// The caller's organisation role in `org_id()`.
    pub org_role: Option<OrgRole>,
}

#[derive(Debug, Clone)]
pub struct InProject {
    pub access: Arc<ProjectAccess>,
    pub role: Role,
}

impl InProject {
    pub fn id(&self) -> &ProjectId {
        &self.access.project
    }
    pub fn org(&self) -> &OrgId {
        &self.access.org
    }
}

fn denied(need: &str, have: String) -> tonic::Status {
    status(Error::permission_denied(format!("this call requires {need}; the token has {have}")))
}

impl Caller {
    /// The organisation the call is in: the project's, or the token's.
    pub fn org_id(&self) -> Option<&OrgId> {
        self.project.as_ref().map(InProject::org).or(self.claims.org.as_ref())
    }

    fn have(&self) -> String {
        if self.platform {
            return "platform-admin".into();
        }
        match (&self.project, self.org_role) {
            (_, Some(r)) => r.as_str().into(),
            (Some(p), None) => p.role.as_str().into(),
            (None, None) => "no role here".into(),
        }
    }

    /// The project the call acts on, with at least `need` in it.
    pub fn in_project(&self, need: Role) -> Result<&InProject, tonic::Status> {
        let p = self.project.as_ref().ok_or_else(|| {
            status(Error::invalid(format!(
                "this token is not bound to a project: name one with the `{PROJECT_HEADER}` header"
            )))
        })?;
        if p.role < need {
            return Err(denied(need.as_str(), p.role.as_str().into()));
        }
        Ok(p)
    }

    /// Whether `org` is in the caller's scope at all (else it is NOT_FOUND
    /// to them): any for the platform, the token's or its project's own.
    pub fn sees_org(&self, org: &OrgId) -> bool {
        self.platform || self.org_id() == Some(org)
    }

    /// At least `need` over `org`. NOT_FOUND when the organisation is not
    /// in the caller's scope.
    pub fn in_org(&self, org: &OrgId, need: OrgRole) -> Result<(), tonic::Status> {
        if !self.sees_org(org) {
            return Err(status(Error::not_found(format!("organisation {org} not found"))));
        }
        if self.platform || self.org_role.is_some_and(|r| r >= need) {
            return Ok(());
        }
        Err(denied(need.as_str(), self.have()))
    }

    /// The organisation named, or the caller's own when `id` is empty.
    pub fn org_or_own(&self, id: &str) -> Result<OrgId, tonic::Status> {
        if id.is_empty() {
            return self.org_id().cloned().ok_or_else(|| status(Error::invalid("organization_id is required")));
        }
        OrgId::parse(id).map_err(status)
    }

    pub fn need_platform(&self) -> Result<(), tonic::Status> {
        if self.platform { Ok(()) } else { Err(denied("platform-admin", self.have())) }
    }

    /// Whether the caller may see a node: as a project that may use it, or
    /// over its organisation.
    pub fn sees_node(&self, n: NodePlace<'_>) -> bool {
        self.platform
            || self.project.as_ref().is_some_and(|p| p.access.may_use(n))
            || (self.org_role.is_some() && self.claims.org.as_ref() == Some(n.org))
    }

    /// Whether the caller may change a node: org-admin of its organisation,
    /// or operator of the project it is dedicated to.
    pub fn may_operate_node(&self, n: NodePlace<'_>) -> Result<(), tonic::Status> {
        let org_admin =
            self.platform || (self.org_role == Some(OrgRole::Admin) && (self.claims.org.as_ref() == Some(n.org)));
        let dedicated_operator =
            self.project.as_ref().is_some_and(|p| n.dedicated == Some(p.id()) && p.role >= Role::Operator);
        if org_admin || dedicated_operator {
            return Ok(());
        }
        Err(denied("operator (on the project's dedicated nodes) or org-admin", self.have()))
    }
}

/// The caveats a token of this record is minted with (see
/// `tether_auth::Caveat` for how scope narrows).
pub fn caveats_for(t: &tether_store::TokenRecord) -> Vec<Caveat> {
    let mut c = vec![Caveat::Kind(CredentialKind::Operator)];
    if let Some(o) = &t.org_id {
        c.push(Caveat::Org(o.clone()));
    }
    match (&t.project_id, &t.org_id) {
        (Some(p), _) => c.extend([Caveat::Project(p.clone()), Caveat::OrgRole(None)]),
        (None, Some(_)) => c.push(Caveat::OrgRole(t.org_role)),
        (None, None) => {}
    }
    c.push(Caveat::Role(t.role));
    if let Some(at) = t.expires_at {
        c.push(Caveat::ExpiresAt(at));
    }
    c
}

pub struct Authenticator {
    root: RootKey,
    /// Revoked token ids; refreshed from the database by a loop, so that a
    /// revocation on another replica takes effect here within seconds.
    revoked: std::sync::RwLock<std::collections::HashSet<TokenId>>,
    pub tenants: Arc<TenantCache>,
    /// The first start's project: where the platform administrator acts
    /// when it names none.
    home: ProjectId,
}

impl Authenticator {
    pub fn new(root: RootKey, tenants: Arc<TenantCache>, home: ProjectId) -> Self {
        Authenticator { root, revoked: Default::default(), tenants, home }
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

    /// An operator credential, resolved: which project (if any) the call
    /// acts on and the caller's roles. Roles are checked by the caller's
    /// methods, after the resource is known to be in scope.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, tonic::Status> {
        let claims = self.claims(req).map_err(status)?;
        if claims.kind != CredentialKind::Operator {
            return Err(status(Error::permission_denied("node credentials cannot call operator APIs")));
        }
        let view = self.tenants.get();
        // A token whose organisation or project was deleted is dead.
        if let Some(p) = &claims.project
            && view.project(p).is_none()
        {
            return Err(status(Error::unauthenticated("the token's project no longer exists")));
        }
        if let Some(o) = &claims.org
            && !view.org_exists(o)
        {
            return Err(status(Error::unauthenticated("the token's organisation no longer exists")));
        }
        let platform = claims.org.is_none()
            && claims.project.is_none()
            && claims.org_role == Some(OrgRole::Admin)
            && claims.role == Role::Admin;
        let named = match req.metadata().get(PROJECT_HEADER) {
            None => None,
            Some(v) => {
                let s = v.to_str().map_err(|_| status(Error::invalid(format!("{PROJECT_HEADER} is not ASCII"))))?;
                Some(ProjectId::parse(s.trim()).map_err(status)?)
            }
        };
        let project_id = match (&claims.project, named) {
            (Some(own), Some(named)) if own != &named => {
                return Err(status(Error::not_found(format!("project {named} not found"))));
            }
            (Some(own), _) => Some(own.clone()),
            (None, Some(named)) => Some(named),
            (None, None) if platform => Some(self.home.clone()),
            (None, None) => None,
        };
        let project = match project_id {
            None => None,
            Some(id) => Some(self.in_scope(&view, &claims, platform, &id)?),
        };
        let org_role = if claims.project.is_some() { None } else { claims.org_role };
        Ok(Caller { claims, platform, project, org_role })
    }

    /// The caller's standing in project `id`; NOT_FOUND when it is not in the
    /// token's scope.
    fn in_scope(
        &self,
        view: &TenantView,
        claims: &Claims,
        platform: bool,
        id: &ProjectId,
    ) -> Result<InProject, tonic::Status> {
        let missing = || status(Error::not_found(format!("project {id} not found")));
        let access = view.access.get(id).ok_or_else(missing)?;
        let role = if claims.project.as_ref() == Some(id) {
            claims.role
        } else if platform || claims.org.as_ref() == Some(&access.org) {
            match claims.org_role {
                Some(r) => r.project_role().min(claims.role),
                None => return Err(missing()),
            }
        } else {
            return Err(missing());
        };
        Ok(InProject { access: access.clone(), role })
    }

    /// A caller acting on project `id` (named in the request), with at least
    /// `need`; NOT_FOUND outside the token's scope.
    pub fn caller_in<T>(&self, req: &Request<T>, id: &ProjectId, need: Role) -> Result<Caller, tonic::Status> {
        let mut c = self.caller(req)?;
        let view = self.tenants.get();
        let p = self.in_scope(&view, &c.claims, c.platform, id)?;
        c.project = Some(p);
        c.in_project(need)?;
        Ok(c)
    }

    /// A node credential: the node and the organisation it is bound to
    /// (None for credentials issued before organisations held nodes).
    pub fn agent<T>(&self, req: &Request<T>) -> Result<(NodeId, Option<OrgId>), tonic::Status> {
        let claims = self.claims(req).map_err(status)?;
        match (claims.kind, claims.node) {
            (CredentialKind::Agent, Some(node)) => Ok((node, claims.org)),
            _ => Err(status(Error::permission_denied("the agent protocol requires a node credential"))),
        }
    }
}
