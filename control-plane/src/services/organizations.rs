//! `tether.v1.OrganizationService`: organisations, pool grants and
//! organisation join tokens.

use std::sync::Arc;

use tether_auth::random_bytes;
use tether_proto::pb;
use tether_store::{TenantUpdate, TokenScope};
use tether_types::{
    DEFAULT_POOL, Error, JoinToken, JoinTokenId, Labels, OrgId, OrgRole, Organization, PoolGrant, ProjectId,
    validate_labels, validate_tenant_name,
};
use tonic::{Request, Response, Status};

use super::tenancy::{JoinTokenAsk, create_join_token, description};
use super::{status, store_status};
use crate::app::{App, now_ms};
use crate::auth::Caller;

pub struct OrganizationApi {
    app: Arc<App>,
}

impl OrganizationApi {
    pub fn new(app: Arc<App>) -> Self {
        OrganizationApi { app }
    }

    /// The organisation named, with at least `need` over it.
    fn org(&self, who: &Caller, id: &str, need: OrgRole) -> Result<OrgId, Status> {
        let id = OrgId::parse(id).map_err(status)?;
        who.in_org(&id, need)?;
        if !self.app.auth.tenants.get().org_exists(&id) {
            return Err(status(Error::not_found(format!("organisation {id} not found"))));
        }
        Ok(id)
    }

    /// A project of `org`; NOT_FOUND for any other.
    fn project_of(&self, org: &OrgId, id: &str) -> Result<ProjectId, Status> {
        let id = ProjectId::parse(id).map_err(status)?;
        match self.app.auth.tenants.get().project(&id) {
            Some(p) if &p.org_id == org => Ok(id),
            _ => Err(status(Error::not_found(format!("project {id} not found")))),
        }
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> Result<Labels, Status> {
    let l: Labels = m.into_iter().collect();
    validate_labels(&l).map_err(status)?;
    Ok(l)
}

/// Name, description and labels of an update, validated.
pub fn tenant_update(
    name: Option<String>,
    desc: Option<String>,
    l: std::collections::HashMap<String, String>,
    replace_labels: bool,
) -> Result<TenantUpdate, Status> {
    if let Some(n) = &name {
        validate_tenant_name(n).map_err(status)?;
    }
    let replace = replace_labels || !l.is_empty();
    Ok(TenantUpdate {
        name,
        description: desc.map(description).transpose()?,
        labels: replace.then(|| labels(l)).transpose()?,
    })
}

fn pool_name(pool: &str) -> Result<String, Status> {
    if pool.is_empty() {
        return Err(status(Error::invalid("pool is required")));
    }
    validate_labels([(&"pool".to_string(), &pool.to_string())]).map_err(status)?;
    Ok(pool.to_owned())
}

#[tonic::async_trait]
impl pb::organization_service_server::OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        req: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::CreateOrganizationResponse>, Status> {
        self.app.auth.caller(&req)?.need_platform()?;
        let req = req.into_inner();
        validate_tenant_name(&req.name).map_err(status)?;
        let now = now_ms();
        let o = Organization {
            id: OrgId::from_random(random_bytes()),
            name: req.name,
            description: description(req.description)?,
            labels: labels(req.labels)?,
            created_at: now,
            updated_at: now,
        };
        let o = crate::ops::tenancy::org_create(&self.app, &o).await.map_err(store_status)?;
        Ok(Response::new(pb::CreateOrganizationResponse { organization: Some(o.to_pb()) }))
    }

    async fn get_organization(
        &self,
        req: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::GetOrganizationResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let id = self.org(&who, &req.get_ref().organization_id, OrgRole::Viewer)?;
        let o = self
            .app
            .store
            .org_get(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| status(Error::not_found(format!("organisation {id} not found"))))?;
        Ok(Response::new(pb::GetOrganizationResponse { organization: Some(o.to_pb()) }))
    }

    async fn list_organizations(
        &self,
        req: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let view = self.app.auth.tenants.get();
        let mut orgs: Vec<&Organization> = if who.all_orgs {
            view.tenants.orgs.values().collect()
        } else {
            let own = who.org_id().cloned().ok_or_else(|| status(Error::invalid("this token has no organisation")))?;
            who.in_org(&own, OrgRole::Viewer)?;
            view.tenants.orgs.get(&own).into_iter().collect()
        };
        orgs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(Response::new(pb::ListOrganizationsResponse { organizations: orgs.iter().map(|o| o.to_pb()).collect() }))
    }

    async fn update_organization(
        &self,
        req: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::UpdateOrganizationResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let id = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let u = tenant_update(req.name, req.description, req.labels, req.replace_labels)?;
        let o = crate::ops::tenancy::org_update(&self.app, &id, &u).await.map_err(store_status)?;
        Ok(Response::new(pb::UpdateOrganizationResponse { organization: Some(o.to_pb()) }))
    }

    async fn delete_organization(
        &self,
        req: Request<pb::DeleteOrganizationRequest>,
    ) -> Result<Response<pb::DeleteOrganizationResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        // Out of scope is NOT_FOUND before the role is asked.
        let id = self.org(&who, &req.get_ref().organization_id, OrgRole::Viewer)?;
        who.need_platform()?;
        let o = crate::ops::tenancy::org_delete(&self.app, &id, req.get_ref().force).await.map_err(store_status)?;
        Ok(Response::new(pb::DeleteOrganizationResponse { organization: Some(o.to_pb()) }))
    }

    async fn grant_pool(&self, req: Request<pb::GrantPoolRequest>) -> Result<Response<pb::GrantPoolResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let pool = pool_name(&req.pool)?;
        let project = self.project_of(&org, &req.project_id)?;
        let g = PoolGrant { org_id: org, pool, project_id: project, created_at: now_ms() };
        let g = crate::ops::tenancy::pool_grant(&self.app, &g).await.map_err(store_status)?;
        Ok(Response::new(pb::GrantPoolResponse { grant: Some(g.to_pb()) }))
    }

    async fn revoke_pool(
        &self,
        req: Request<pb::RevokePoolRequest>,
    ) -> Result<Response<pb::RevokePoolResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let pool = pool_name(&req.pool)?;
        let project = self.project_of(&org, &req.project_id)?;
        let g =
            crate::ops::tenancy::pool_revoke(&self.app, &org, &pool, &project, now_ms()).await.map_err(store_status)?;
        Ok(Response::new(pb::RevokePoolResponse { grant: Some(g.to_pb()) }))
    }

    async fn list_pool_grants(
        &self,
        req: Request<pb::ListPoolGrantsRequest>,
    ) -> Result<Response<pb::ListPoolGrantsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Viewer)?;
        let grants = self.app.store.pool_grants(&org).await.map_err(store_status)?;
        Ok(Response::new(pb::ListPoolGrantsResponse { grants: grants.iter().map(PoolGrant::to_pb).collect() }))
    }

    async fn create_organization_join_token(
        &self,
        req: Request<pb::CreateOrganizationJoinTokenRequest>,
    ) -> Result<Response<pb::CreateOrganizationJoinTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let pool = if req.pool.is_empty() { DEFAULT_POOL.to_owned() } else { pool_name(&req.pool)? };
        let ask =
            JoinTokenAsk { ttl: req.ttl, max_uses: req.max_uses, labels: req.labels, description: req.description };
        let out = create_join_token(&self.app, org, None, pool, ask).await?;
        Ok(Response::new(pb::CreateOrganizationJoinTokenResponse { join_token: out.join_token, token: out.token }))
    }

    async fn list_organization_join_tokens(
        &self,
        req: Request<pb::ListOrganizationJoinTokensRequest>,
    ) -> Result<Response<pb::ListOrganizationJoinTokensResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let tokens = self
            .app
            .store
            .join_token_list(TokenScope::Org(&org), req.get_ref().include_inactive, now_ms())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListOrganizationJoinTokensResponse {
            join_tokens: tokens.iter().map(JoinToken::to_pb).collect(),
        }))
    }

    async fn revoke_organization_join_token(
        &self,
        req: Request<pb::RevokeOrganizationJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeOrganizationJoinTokenResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = self.org(&who, &req.get_ref().organization_id, OrgRole::Admin)?;
        let id = JoinTokenId::parse(&req.get_ref().join_token_id).map_err(status)?;
        let t = crate::ops::tenancy::join_token_revoke(&self.app, TokenScope::Org(&org), &id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::RevokeOrganizationJoinTokenResponse { join_token: Some(t.to_pb()) }))
    }
}
