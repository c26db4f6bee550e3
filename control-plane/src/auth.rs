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

use tether_auth::{Caveat, Claims, CredentialKind, KeyRing, Macaroon, RootKey};
use tether_types::{
    AccessKeyId, Error, NodeId, NodePlace, OrgId, OrgRole, ProjectAccess, ProjectId, Role, TokenId, WorkloadId,
};
use tonic::Request;

use crate::clock::now_ms;
use crate::status::status;
use crate::tenants::{TenantCache, TenantView};

/// The header (gRPC metadata) naming the project an organisation or
/// platform token acts on.
pub const PROJECT_HEADER: &str = "x-tether-project";

/// A REST request whose SigV4 signature checked out (put in the request's
/// extensions by the REST bridge, never by a client): it acts as the access
/// key's project with the key's role.
#[derive(Debug, Clone)]
pub struct AccessKeyCaller {
    pub id: AccessKeyId,
    pub org: OrgId,
    pub project: ProjectId,
    pub role: Role,
    /// The root key the key's secret derives from.
    pub key_id: u32,
}

/// The RPC a request is for (`/tether.v1.Service/Method`), put in the
/// request's extensions by the edge layer.
#[derive(Debug, Clone)]
pub struct Rpc(pub Arc<str>);

/// The RPCs a token confined to one node may call.
const NODE_RPCS: [&str; 7] = [
    "/tether.v1.NodeService/ListNodes",
    "/tether.v1.NodeService/GetNode",
    "/tether.v1.NodeService/WatchNodes",
    "/tether.v1.NodeService/SetDesiredState",
    "/tether.v1.NodeService/DeregisterNode",
    "/tether.v1.TenancyService/WhoAmI",
    "/tether.v1.TenancyService/VerifyToken",
];

/// The RPCs a token confined to one workload may call.
const WORKLOAD_RPCS: [&str; 7] = [
    "/tether.v1.WorkloadService/GetWorkload",
    "/tether.v1.WorkloadService/ListWorkloads",
    "/tether.v1.WorkloadService/UpdateWorkload",
    "/tether.v1.WorkloadService/ScaleWorkload",
    "/tether.v1.WorkloadService/DeleteWorkload",
    "/tether.v1.TenancyService/WhoAmI",
    "/tether.v1.TenancyService/VerifyToken",
];

/// Refuses an RPC that a confining caveat (read-only, one node, one
/// workload) rules out, before anything is looked up.
fn confine<T>(claims: &Claims, req: &Request<T>) -> Result<(), tonic::Status> {
    if !claims.read_only && claims.node.is_none() && claims.workload.is_none() {
        return Ok(());
    }
    // Fail closed: a request that did not come through the edge is refused.
    let rpc = req.extensions().get::<Rpc>().map(|r| r.0.clone()).unwrap_or_else(|| Arc::from(""));
    let refuse = |why: String| Err(status(Error::permission_denied(why)));
    if claims.read_only && !tether_proto::rules::read_only_methods().contains(rpc.as_ref()) {
        return refuse(format!("the token is read-only; {rpc} changes state"));
    }
    if let Some(n) = &claims.node
        && !NODE_RPCS.contains(&rpc.as_ref())
    {
        return refuse(format!("the token is confined to node {n}; {rpc} is not about a node"));
    }
    if let Some(w) = &claims.workload
        && !WORKLOAD_RPCS.contains(&rpc.as_ref())
    {
        return refuse(format!("the token is confined to workload {w}; {rpc} is not about that workload"));
    }
    Ok(())
}

/// The authenticated caller of an operator RPC, resolved against the
/// tenancy records.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the credential grants. For an access key: its project and role
    /// (its `token_id` is the nil id and unused: `principal` names it).
    pub claims: Claims,
    /// Who calls, for the audit and WhoAmI: a token id or an access key id.
    pub principal: String,
    /// The token spans every organisation (a platform token, perhaps
    /// narrowed to a lower role).
    pub all_orgs: bool,
    /// The platform administrator: every organisation, with every power.
    pub platform: bool,
    /// The project the call acts on, with the caller's role in it.
    pub project: Option<InProject>,
    /// The caller's organisation role in `org_id()`.
    pub org_role: Option<OrgRole>,
    /// The tenancy records the call was authorised against: an organisation
    /// that is not in them (deleted, never made) is not found by anyone.
    tenants: Arc<TenantView>,
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
        (self.all_orgs || self.org_id() == Some(org)) && self.tenants.org_exists(org)
    }

    /// At least `need` over `org`. NOT_FOUND when the organisation is not
    /// in the caller's scope.
    pub fn in_org(&self, org: &OrgId, need: OrgRole) -> Result<(), tonic::Status> {
        if !self.sees_org(org) {
            return Err(status(Error::not_found(format!("organisation {org} not found"))));
        }
        if self.org_role.is_some_and(|r| r >= need) {
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
        if self.claims.node.as_ref().is_some_and(|only| only != n.id) {
            return false;
        }
        self.platform
            || self.project.as_ref().is_some_and(|p| p.access.may_use(n))
            || (self.org_role.is_some() && (self.all_orgs || self.claims.org.as_ref() == Some(n.org)))
    }

    /// Whether a workload of the caller's project is in the token's scope
    /// (a workload caveat confines it to one).
    pub fn sees_workload(&self, id: &WorkloadId) -> bool {
        self.claims.workload.as_ref().is_none_or(|only| only == id)
    }

    /// Whether the caller may change a node: org-admin of its organisation,
    /// or operator of the project it is dedicated to.
    pub fn may_operate_node(&self, n: NodePlace<'_>) -> Result<(), tonic::Status> {
        let org_admin =
            self.org_role == Some(OrgRole::Admin) && (self.all_orgs || self.claims.org.as_ref() == Some(n.org));
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

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
    out
}

/// The bearer token of a call.
fn bearer<T>(req: &Request<T>) -> Result<&str, Error> {
    let header = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| Error::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
    let value = header.to_str().map_err(|_| Error::unauthenticated("authorization metadata is not ASCII"))?;
    bearer_token(value).ok_or_else(|| Error::unauthenticated("authorization must be `Bearer <token>`"))
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer_token(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))
}

/// A bearer token whose signature and expiry the edge checked (put in the
/// request's extensions, where no client can put anything), so that the
/// authenticator need not check them again.
#[derive(Debug, Clone)]
pub struct VerifiedToken(pub Claims);

/// The key ring of the stored root keys; None when there are none.
pub fn key_ring(records: &[tether_store::RootKeyRecord]) -> Option<KeyRing> {
    KeyRing::new(records.iter().map(|r| RootKey::new(r.key_id, &r.secret)).collect())
}

/// The organisation role a token has: none for a project's; a role caveat
/// below admin caps it at org-viewer (a lower role narrows everything).
fn org_role(claims: &Claims) -> Option<OrgRole> {
    if claims.project.is_some() {
        return None;
    }
    let cap = if claims.role >= Role::Admin { OrgRole::Admin } else { OrgRole::Viewer };
    claims.org_role.map(|r| r.min(cap))
}

pub struct Authenticator {
    /// Refreshed from the database with the revocations, so that a key
    /// rotated on another replica verifies here within seconds.
    keys: std::sync::RwLock<KeyRing>,
    /// Revoked token ids; refreshed from the database by a loop, so that a
    /// revocation on another replica takes effect here within seconds.
    revoked: std::sync::RwLock<std::collections::HashSet<TokenId>>,
    pub tenants: Arc<TenantCache>,
    /// The SHA-256 of the internal token, when one is configured.
    internal: Option<[u8; 32]>,
    /// The first start's project: where the platform administrator acts
    /// when it names none.
    home: ProjectId,
    /// Agents prove themselves by client certificate instead of a macaroon.
    agents_by_certificate: bool,
}

impl Authenticator {
    pub fn new(keys: KeyRing, tenants: Arc<TenantCache>, home: ProjectId) -> Self {
        Authenticator {
            keys: std::sync::RwLock::new(keys),
            revoked: Default::default(),
            tenants,
            internal: None,
            home,
            agents_by_certificate: false,
        }
    }

    /// Agents are authenticated by their client certificate (mTLS).
    pub fn with_agent_certificates(mut self) -> Self {
        self.agents_by_certificate = true;
        self
    }

    pub fn agents_by_certificate(&self) -> bool {
        self.agents_by_certificate
    }

    /// Accepts `token` as the internal token (for ResolveAccessKey only).
    pub fn with_internal_token(mut self, token: &str) -> Self {
        self.internal = Some(sha256(token.trim().as_bytes()));
        self
    }

    /// The call carries the internal token. PERMISSION_DENIED for any other
    /// credential (an operator's may be perfectly good, just not for this).
    pub fn internal<T>(&self, req: &Request<T>) -> Result<(), tonic::Status> {
        let given = bearer(req).map_err(status)?;
        let Some(want) = &self.internal else {
            return Err(status(Error::permission_denied(
                "this call requires the internal token, and none is configured (--internal-token-file)",
            )));
        };
        if !tether_auth::hashes_equal(&sha256(given.as_bytes()), want) {
            return Err(status(Error::permission_denied("this call requires the internal token")));
        }
        Ok(())
    }

    /// The root key an access key's secret derives from.
    pub fn root_key(&self, id: u32) -> Option<RootKey> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn revoke(&self, id: TokenId) {
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn set_revoked(&self, ids: impl IntoIterator<Item = TokenId>) {
        let set = ids.into_iter().collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// The key new macaroons are signed with.
    pub fn signing_key(&self) -> RootKey {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).current().clone()
    }

    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).ids().collect()
    }

    /// Takes the stored root keys (keys are only ever added).
    pub fn set_keys(&self, records: &[tether_store::RootKeyRecord]) {
        // Keys are only ever added: the same ids are the same ring.
        if records.iter().map(|r| r.key_id).eq(self.key_ids()) {
            return;
        }
        if let Some(ring) = key_ring(records) {
            *self.keys.write().unwrap_or_else(|p| p.into_inner()) = ring;
        }
    }

    /// The claims of a token whose signature and expiry check out, revoked
    /// or not (the rate limit counts calls against them; [`Self::verify`]
    /// checks the rest).
    pub fn signed_by_us(&self, token: &str) -> Result<Claims, Error> {
        let m = Macaroon::decode(token)?;
        let ring = self.keys.read().unwrap_or_else(|p| p.into_inner());
        Ok(m.verify_in(&ring, now_ms())?)
    }

    /// Checks an encoded token: signature, expiry, revocation, and that its
    /// organisation and project still exist.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        self.live(self.signed_by_us(token)?)
    }

    /// Claims whose signature checked out, checked against revocations and
    /// the tenancy records as they are now.
    fn live(&self, claims: Claims) -> Result<Claims, Error> {
        if self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(&claims.token_id) {
            return Err(Error::unauthenticated("credential was revoked"));
        }
        let view = self.tenants.get();
        // A token whose organisation or project was deleted is dead.
        if let Some(p) = &claims.project
            && view.project(p).is_none()
        {
            return Err(Error::unauthenticated("the token's project no longer exists"));
        }
        if let Some(o) = &claims.org
            && !view.org_exists(o)
        {
            return Err(Error::unauthenticated("the token's organisation no longer exists"));
        }
        Ok(claims)
    }

    fn claims<T>(&self, req: &Request<T>) -> Result<Claims, Error> {
        // The edge's rate limit verified the signature already, once.
        if let Some(VerifiedToken(claims)) = req.extensions().get::<VerifiedToken>() {
            return self.live(claims.clone());
        }
        self.verify(bearer(req)?)
    }

    /// An operator credential, resolved: which project (if any) the call
    /// acts on and the caller's roles. Roles are checked by the caller's
    /// methods, after the resource is known to be in scope.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, tonic::Status> {
        let (claims, principal) = match req.extensions().get::<AccessKeyCaller>() {
            Some(k) => (
                Claims {
                    token_id: TokenId::from_random([0; 10]),
                    kind: CredentialKind::Operator,
                    org: Some(k.org.clone()),
                    project: Some(k.project.clone()),
                    role: k.role,
                    org_role: None,
                    node: None,
                    workload: None,
                    read_only: false,
                    expires_at: None,
                    key_id: k.key_id,
                },
                k.id.to_string(),
            ),
            None => {
                let c = self.claims(req).map_err(status)?;
                let id = c.token_id.to_string();
                (c, id)
            }
        };
        if claims.kind != CredentialKind::Operator {
            return Err(status(Error::permission_denied("node credentials cannot call operator APIs")));
        }
        confine(&claims, req)?;
        let view = self.tenants.get();
        let all_orgs = claims.org.is_none() && claims.project.is_none();
        let org_role = org_role(&claims);
        let platform = all_orgs && org_role == Some(OrgRole::Admin) && claims.role == Role::Admin;
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
            (None, None) if all_orgs => Some(self.home.clone()),
            (None, None) => None,
        };
        let project = match project_id {
            None => None,
            Some(id) => Some(self.in_scope(&view, &claims, all_orgs, &id)?),
        };
        let caller = Caller { claims, principal, all_orgs, platform, project, org_role, tenants: view };
        tether_store::set_actor(tether_store::Actor::new(caller.principal.clone(), caller.have()));
        Ok(caller)
    }

    /// The caller's standing in project `id`; NOT_FOUND when it is not in the
    /// token's scope.
    fn in_scope(
        &self,
        view: &TenantView,
        claims: &Claims,
        all_orgs: bool,
        id: &ProjectId,
    ) -> Result<InProject, tonic::Status> {
        let missing = || status(Error::not_found(format!("project {id} not found")));
        let access = view.access.get(id).ok_or_else(missing)?;
        let role = if claims.project.as_ref() == Some(id) {
            claims.role
        } else if all_orgs || claims.org.as_ref() == Some(&access.org) {
            match org_role(claims) {
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
        let p = self.in_scope(&view, &c.claims, c.all_orgs, id)?;
        c.project = Some(p);
        c.in_project(need)?;
        tether_store::set_actor(tether_store::Actor::new(c.principal.clone(), c.have()));
        Ok(c)
    }

    /// A node credential: the node and the organisation it is bound to
    /// (None for credentials issued before organisations held nodes). With
    /// mTLS it is the verified client certificate's, checked again for
    /// expiry on every call (a connection outlives its handshake).
    pub fn agent<T>(&self, req: &Request<T>) -> Result<(NodeId, Option<OrgId>), tonic::Status> {
        if self.agents_by_certificate {
            let certs = req.peer_certs().ok_or_else(|| {
                status(Error::unauthenticated(
                    "this control plane authenticates agents by client certificate (mTLS); present the node's",
                ))
            })?;
            let leaf = certs.first().ok_or_else(|| status(Error::unauthenticated("no client certificate")))?;
            let cert = tether_auth::pki::node_cert(leaf)
                .map_err(|e| status(Error::unauthenticated(format!("the client certificate: {e}"))))?;
            if cert.not_after <= now_ms() {
                return Err(status(Error::unauthenticated("the client certificate has expired")));
            }
            tether_store::set_actor(tether_store::Actor::new(cert.node.as_str(), "agent"));
            return Ok((cert.node, Some(cert.org)));
        }
        let claims = self.claims(req).map_err(status)?;
        match (claims.kind, claims.node) {
            (CredentialKind::Agent, Some(node)) => {
                tether_store::set_actor(tether_store::Actor::new(node.as_str(), "agent"));
                Ok((node, claims.org))
            }
            _ => Err(status(Error::permission_denied("the agent protocol requires a node credential"))),
        }
    }
}
