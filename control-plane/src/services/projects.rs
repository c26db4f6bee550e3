//! `tether.v1.ProjectService`: projects, their quotas and usage.

use std::sync::Arc;

use tether_auth::random_bytes;
use tether_proto::pb;
use tether_types::{Error, Labels, OrgRole, Project, ProjectId, Quota, Role, validate_labels, validate_tenant_name};
use tonic::{Request, Response, Status};

use super::organizations::tenant_update;
use super::tenancy::description;
use super::{status, store_status};
use crate::app::{App, now_ms};

pub struct ProjectApi {
    app: Arc<App>,
}

impl ProjectApi {
    pub fn new(app: Arc<App>) -> Self {
        ProjectApi { app }
    }

    fn to_pb(&self, p: &Project) -> pb::Project {
        let view = self.app.auth.tenants.get();
        p.to_pb(view.tenants.grants.get(&p.id).unwrap_or(&Default::default()))
    }
}

fn project_id(s: &str) -> Result<ProjectId, Status> {
    ProjectId::parse(s).map_err(status)
}

#[tonic::async_trait]
impl pb::project_service_server::ProjectService for ProjectApi {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = who.org_or_own(&req.get_ref().organization_id)?;
        who.in_org(&org, OrgRole::Admin)?;
        let req = req.into_inner();
        validate_tenant_name(&req.name).map_err(status)?;
        let labels: Labels = req.labels.into_iter().collect();
        validate_labels(&labels).map_err(status)?;
        let now = now_ms();
        let p = Project {
            id: ProjectId::from_random(random_bytes()),
            org_id: org,
            name: req.name,
            description: description(req.description)?,
            labels,
            quota: Quota::from_pb(req.quota),
            created_at: now,
            updated_at: now,
        };
        let p = crate::ops::tenancy::project_create(&self.app, &p).await.map_err(store_status)?;
        Ok(Response::new(pb::CreateProjectResponse { project: Some(self.to_pb(&p)) }))
    }

    async fn get_project(
        &self,
        req: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::GetProjectResponse>, Status> {
        let id = project_id(&req.get_ref().project_id)?;
        self.app.auth.caller_in(&req, &id, Role::Viewer)?;
        let p = self
            .app
            .store
            .project_get(&id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| status(Error::not_found(format!("project {id} not found"))))?;
        let active = self.app.store.allocations_active().await.map_err(store_status)?;
        let usage = crate::dispatch::usage(&active).used(&id);
        Ok(Response::new(pb::GetProjectResponse { project: Some(self.to_pb(&p)), usage: Some(usage.to_pb()) }))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let view = self.app.auth.tenants.get();
        let mut projects: Vec<&Project> = if who.claims.project.is_some() {
            // A project's token sees its own project.
            let p = who.in_project(Role::Viewer)?;
            view.project(p.id()).into_iter().collect()
        } else if who.all_orgs {
            view.tenants.projects.values().collect()
        } else {
            let org = who.org_id().cloned().ok_or_else(|| status(Error::invalid("this token has no organisation")))?;
            who.in_org(&org, OrgRole::Viewer)?;
            view.tenants.projects.values().filter(|p| p.org_id == org).collect()
        };
        projects.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(Response::new(pb::ListProjectsResponse { projects: projects.iter().map(|p| self.to_pb(p)).collect() }))
    }

    async fn update_project(
        &self,
        req: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::UpdateProjectResponse>, Status> {
        let id = project_id(&req.get_ref().project_id)?;
        self.app.auth.caller_in(&req, &id, Role::Admin)?;
        let req = req.into_inner();
        let u = tenant_update(req.name, req.description, req.labels, req.replace_labels)?;
        let p = crate::ops::tenancy::project_update(&self.app, &id, &u).await.map_err(store_status)?;
        Ok(Response::new(pb::UpdateProjectResponse { project: Some(self.to_pb(&p)) }))
    }

    async fn set_project_quota(
        &self,
        req: Request<pb::SetProjectQuotaRequest>,
    ) -> Result<Response<pb::SetProjectQuotaResponse>, Status> {
        let id = project_id(&req.get_ref().project_id)?;
        let who = self.app.auth.caller_in(&req, &id, Role::Viewer)?;
        let org = who.project.as_ref().map(|p| p.org().clone()).expect("caller_in sets the project");
        who.in_org(&org, OrgRole::Admin)?;
        let quota = Quota::from_pb(req.into_inner().quota);
        let p = crate::ops::tenancy::project_set_quota(&self.app, &id, quota).await.map_err(store_status)?;
        Ok(Response::new(pb::SetProjectQuotaResponse { project: Some(self.to_pb(&p)) }))
    }

    async fn delete_project(
        &self,
        req: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::DeleteProjectResponse>, Status> {
        let id = project_id(&req.get_ref().project_id)?;
        let who = self.app.auth.caller_in(&req, &id, Role::Viewer)?;
        let org = who.project.as_ref().map(|p| p.org().clone()).expect("caller_in sets the project");
        who.in_org(&org, OrgRole::Admin)?;
        let p = crate::ops::tenancy::project_delete(&self.app, &id, req.get_ref().force).await.map_err(store_status)?;
        Ok(Response::new(pb::DeleteProjectResponse { project: Some(self.to_pb(&p)) }))
    }
}
