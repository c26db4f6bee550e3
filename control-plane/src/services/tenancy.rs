//! `tether.v1.TenancyService`: tokens and project join tokens, WhoAmI.

use std::sync::Arc;
use std::time::Duration;

use tether_auth::{JoinSecret, Macaroon, random_bytes};
use tether_proto::pb;
use tether_store::{TokenRecord, TokenScope};
use tether_types::{
    Error, JoinToken, JoinTokenId, Labels, MAX_TEXT_LEN, OrgId, OrgRole, ProjectId, Role, TokenId, millis_to_timestamp,
    validate_labels,
};
use tonic::{Request, Response, Status};

use super::{status, store_status, ttl};
use crate::app::{App, now_ms};

const DEFAULT_TTL: Duration = Duration::from_secs(86400);

pub struct TenancyApi {
    app: Arc<App>,
}

impl TenancyApi {
    pub fn new(app: Arc<App>) -> Self {
        TenancyApi { app }
    }
}

fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.id.to_string(),
        role: t.role.to_pb() as i32,
        description: t.description.clone(),
        created_at: Some(millis_to_timestamp(t.created_at)),
        expires_at: t.expires_at.map(millis_to_timestamp),
        revoked_at: t.revoked_at.map(millis_to_timestamp),
        organization_id: t.org_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        project_id: t.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        org_role: OrgRole::to_pb(t.org_role) as i32,
    }
}

pub fn description(s: String) -> Result<String, Status> {
    if tether_types::chars(&s) > MAX_TEXT_LEN {
        return Err(status(Error::invalid(format!("description is longer than {MAX_TEXT_LEN} characters"))));
    }
    Ok(s)
}

/// What a join token request asks for, however it came.
pub struct JoinTokenAsk {
    pub ttl: Option<prost_types::Duration>,
    pub max_uses: u32,
    pub labels: std::collections::HashMap<String, String>,
    pub description: String,
}

/// Makes a join token (an organisation's into `pool`, or a project's) and
/// answers it with its secret, shown only here.
pub async fn create_join_token(
    app: &App,
    org: OrgId,
    project: Option<ProjectId>,
    pool: String,
    ask: JoinTokenAsk,
) -> Result<pb::CreateJoinTokenResponse, Status> {
    let ttl = ttl(ask.ttl, DEFAULT_TTL)?;
    let labels: Labels = ask.labels.into_iter().collect();
    validate_labels(&labels).map_err(status)?;
    let now = now_ms();
    let id = JoinTokenId::from_random(random_bytes());
    let secret = JoinSecret::generate(&id);
    let token = JoinToken {
        id,
        org_id: org,
        project_id: project,
        pool,
        description: description(ask.description)?,
        labels,
        max_uses: ask.max_uses,
        uses: 0,
        created_at: now,
        expires_at: now + ttl.as_millis() as i64,
        revoked_at: None,
    };
    crate::ops::tenancy::join_token_create(app, &token, &secret.secret_hash).await.map_err(store_status)?;
    Ok(pb::CreateJoinTokenResponse { join_token: Some(token.to_pb()), token: secret.token })
}

#[tonic::async_trait]
impl pb::tenancy_service_server::TenancyService for TenancyApi {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let req = req.into_inner();
        let ask =
            JoinTokenAsk { ttl: req.ttl, max_uses: req.max_uses, labels: req.labels, description: req.description };
        let out = create_join_token(&self.app, p.org().clone(), Some(p.id().clone()), String::new(), ask).await?;
        Ok(Response::new(out))
    }

    async fn list_join_tokens(
        &self,
        req: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let tokens = self
            .app
            .store
            .join_token_list(TokenScope::Project(p.id()), req.get_ref().include_inactive, now_ms())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListJoinTokensResponse { join_tokens: tokens.iter().map(JoinToken::to_pb).collect() }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let id = JoinTokenId::parse(&req.get_ref().join_token_id).map_err(status)?;
        let t = crate::ops::tenancy::join_token_revoke(&self.app, TokenScope::Project(p.id()), &id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RevokeJoinTokenResponse { join_token: Some(t.to_pb()) }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let req = req.into_inner();
        let role = Role::from_pb(req.role).map_err(status)?;
        let org_role = OrgRole::from_pb(req.org_role).map_err(status)?;
        if role > p.role {
            return Err(status(Error::permission_denied("cannot mint a token with a higher role than your own")));
        }
        let ttl = ttl(req.ttl, DEFAULT_TTL)?;
        let now = now_ms();
        let mut expires_at = now + ttl.as_millis() as i64;
        // A minted token never outlives the one that minted it.
        if let Some(parent) = who.claims.expires_at {
            expires_at = expires_at.min(parent);
        }
        let org = p.org().clone();
        let project = match org_role {
            // An organisation token: only an org-admin mints one.
            Some(_) => {
                who.in_org(&org, OrgRole::Admin)?;
                None
            }
            None => Some(p.id().clone()),
        };
        let id = TokenId::from_random(random_bytes());
        let record = TokenRecord {
            id: id.clone(),
            org_id: Some(org),
            project_id: project,
            role: match org_role {
                Some(r) => r.project_role().min(role),
                None => role,
            },
            org_role,
            description: description(req.description)?,
            created_at: now,
            expires_at: Some(expires_at),
            revoked_at: None,
        };
        let m = Macaroon::mint(&self.app.auth.signing_key(), id.clone(), &crate::auth::caveats_for(&record));
        crate::ops::tenancy::token_record(&self.app, &record).await.map_err(store_status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: m.encode(),
            token_id: id.to_string(),
            expires_at: Some(millis_to_timestamp(expires_at)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let mut tokens = self.app.store.token_list(TokenScope::Project(p.id())).await.map_err(store_status)?;
        // Those the caller manages besides: its organisation's, the platform's.
        if who.in_org(p.org(), OrgRole::Admin).is_ok() {
            tokens.extend(self.app.store.token_list(TokenScope::Org(p.org())).await.map_err(store_status)?);
        }
        if who.platform {
            tokens.extend(self.app.store.token_list(TokenScope::Platform).await.map_err(store_status)?);
        }
        Ok(Response::new(pb::ListTokensResponse { tokens: tokens.iter().map(token_info).collect() }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Admin)?;
        let id = TokenId::parse(&req.get_ref().token_id).map_err(status)?;
        // The project's tokens; for an org-admin also the organisation's,
        // for the platform administrator also the platform's. Any other is
        // not found.
        let missing = || status(Error::not_found(format!("token {id} not found")));
        let record = self.app.store.token_get(&id).await.map_err(store_status)?.ok_or_else(missing)?;
        let scope = TokenScope::of(&record);
        let allowed = match scope {
            TokenScope::Project(tp) => tp == p.id(),
            TokenScope::Org(o) => who.in_org(o, OrgRole::Admin).is_ok(),
            TokenScope::Platform => who.platform,
        };
        if !allowed {
            return Err(missing());
        }
        let t = crate::ops::tenancy::token_revoke(&self.app, scope, &id).await.map_err(store_status)?;
        Ok(Response::new(pb::RevokeTokenResponse { token: Some(token_info(&t)) }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        // Any operator credential may ask; an organisation token that names
        // no project answers without one.
        let who = self.app.auth.caller(&req)?;
        let p = who.project.as_ref();
        let c = &who.claims;
        Ok(Response::new(pb::WhoAmIResponse {
            root_key_id: c.key_id,
            node_id: c.node.as_ref().map(ToString::to_string).unwrap_or_default(),
            workload_id: c.workload.as_ref().map(ToString::to_string).unwrap_or_default(),
            read_only: c.read_only,
            token_id: who.principal.clone(),
            organization_id: who.org_id().map(ToString::to_string).unwrap_or_default(),
            project_id: p.map(|p| p.id().to_string()).unwrap_or_default(),
            role: p.map_or(pb::Role::Unspecified, |p| p.role.to_pb()) as i32,
            expires_at: who.claims.expires_at.map(millis_to_timestamp),
            org_role: OrgRole::to_pb(who.org_role) as i32,
            platform_admin: who.platform,
        }))
    }

    async fn verify_token(
        &self,
        req: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        // Any operator credential may ask: holding a token already tells all
        // this answers (its WhoAmI would).
        self.app.auth.caller(&req)?;
        let token = &req.get_ref().token;
        if token.is_empty() {
            return Err(status(Error::invalid("token is required")));
        }
        let c = match self.app.auth.verify(token) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Response::new(pb::VerifyTokenResponse {
                    valid: false,
                    reason: e.message,
                    ..Default::default()
                }));
            }
        };
        let agent = c.kind == tether_auth::CredentialKind::Agent;
        Ok(Response::new(pb::VerifyTokenResponse {
            valid: true,
            reason: String::new(),
            token_id: c.token_id.to_string(),
            organization_id: c.org.as_ref().map(ToString::to_string).unwrap_or_default(),
            project_id: c.project.as_ref().map(ToString::to_string).unwrap_or_default(),
            role: if agent { pb::Role::Unspecified as i32 } else { c.role.to_pb() as i32 },
            org_role: OrgRole::to_pb(if agent || c.project.is_some() { None } else { c.org_role }) as i32,
            expires_at: c.expires_at.map(millis_to_timestamp),
            node_id: c.node.as_ref().map(ToString::to_string).unwrap_or_default(),
            workload_id: c.workload.as_ref().map(ToString::to_string).unwrap_or_default(),
            read_only: c.read_only,
            root_key_id: c.key_id,
            agent,
        }))
    }

    async fn rotate_root_key(
        &self,
        req: Request<pb::RotateRootKeyRequest>,
    ) -> Result<Response<pb::RotateRootKeyResponse>, Status> {
        self.app.auth.caller(&req)?.need_platform()?;
        let id = crate::ops::tenancy::rotate_root_key(&self.app).await.map_err(store_status)?;
        Ok(Response::new(pb::RotateRootKeyResponse {
            root_key_id: id,
            root_key_ids: self.app.auth.key_ids(),
            created_at: Some(millis_to_timestamp(now_ms())),
        }))
    }
}
