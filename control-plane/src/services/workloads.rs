//! `tether.v1.WorkloadService`.

use std::sync::Arc;

use tether_proto::pb;
use tether_types::{AllocStatus, Error, Role, Workload, WorkloadId, WorkloadSpec, millis_to_timestamp, validate_name};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::App;
use crate::auth::Caller;

/// Replicas per workload, at most.
const MAX_REPLICAS: u32 = 10_000;

pub struct WorkloadApi {
    app: Arc<App>,
}

impl WorkloadApi {
    pub fn new(app: Arc<App>) -> Self {
        WorkloadApi { app }
    }

    async fn to_pb(&self, w: &Workload) -> Result<pb::Workload, Status> {
        let allocs = self.app.store.workload_allocations(&w.id).await.map_err(store_status)?;
        Ok(pb::Workload {
            workload_id: w.id.to_string(),
            project_id: w.project_id.to_string(),
            name: w.name.clone(),
            spec: Some(w.spec.to_pb()),
            spec_version: w.spec_version,
            replicas: w.replicas,
            running_replicas: allocs.iter().filter(|a| a.status == AllocStatus::Running).count() as u32,
            allocations: allocs
                .iter()
                .map(|a| pb::Replica {
                    allocation_id: a.key.to_string(),
                    node_id: a.node_id.to_string(),
                    status: a.status.as_str().into(),
                    spec_version: a.spec_version,
                    restarts: a.restarts,
                })
                .collect(),
            created_at: Some(millis_to_timestamp(w.created_at)),
            updated_at: Some(millis_to_timestamp(w.updated_at)),
        })
    }
}

fn spec(spec: Option<pb::WorkloadSpec>) -> Result<WorkloadSpec, Status> {
    WorkloadSpec::try_from(spec.ok_or_else(|| status(Error::invalid("spec is required")))?).map_err(status)
}

fn replicas(n: u32) -> Result<u32, Status> {
    if n > MAX_REPLICAS {
        return Err(status(Error::invalid(format!("replicas is at most {MAX_REPLICAS}"))));
    }
    Ok(n)
}

/// The workload named, when the caller's token reaches it (a workload
/// caveat confines it to one: any other is not found).
fn workload_id(who: &Caller, s: &str) -> Result<WorkloadId, Status> {
    let id = WorkloadId::parse(s).map_err(status)?;
    if !who.sees_workload(&id) {
        return Err(status(Error::not_found(format!("workload {id} not found"))));
    }
    Ok(id)
}

#[tonic::async_trait]
impl pb::workload_service_server::WorkloadService for WorkloadApi {
    async fn create_workload(
        &self,
        req: Request<pb::CreateWorkloadRequest>,
    ) -> Result<Response<pb::CreateWorkloadResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        if let Some(w) = &who.claims.workload {
            return Err(status(Error::permission_denied(format!("the token is confined to workload {w}"))));
        }
        let req = req.into_inner();
        validate_name(&req.name).map_err(status)?;
        let w = crate::ops::workloads::create(&self.app, p.id(), req.name, spec(req.spec)?, replicas(req.replicas)?)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::CreateWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn get_workload(
        &self,
        req: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::GetWorkloadResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let id = workload_id(&who, &req.get_ref().workload_id)?;
        let w = self
            .app
            .store
            .workload_get(p.id(), &id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| status(Error::not_found(format!("workload {id} not found"))))?;
        Ok(Response::new(pb::GetWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn list_workloads(
        &self,
        req: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let mut out = Vec::new();
        for w in self.app.store.workload_list(Some(p.id())).await.map_err(store_status)? {
            if !who.sees_workload(&w.id) {
                continue;
            }
            out.push(self.to_pb(&w).await?);
        }
        Ok(Response::new(pb::ListWorkloadsResponse { workloads: out }))
    }

    async fn update_workload(
        &self,
        req: Request<pb::UpdateWorkloadRequest>,
    ) -> Result<Response<pb::UpdateWorkloadResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let req = req.into_inner();
        let id = workload_id(&who, &req.workload_id)?;
        let w =
            crate::ops::workloads::update_spec(&self.app, p.id(), &id, spec(req.spec)?).await.map_err(store_status)?;
        Ok(Response::new(pb::UpdateWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn scale_workload(
        &self,
        req: Request<pb::ScaleWorkloadRequest>,
    ) -> Result<Response<pb::ScaleWorkloadResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let req = req.into_inner();
        let id = workload_id(&who, &req.workload_id)?;
        let w = crate::ops::workloads::scale(&self.app, p.id(), &id, replicas(req.replicas)?)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ScaleWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn delete_workload(
        &self,
        req: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let id = workload_id(&who, &req.get_ref().workload_id)?;
        let w = crate::ops::workloads::delete(&self.app, p.id(), &id).await.map_err(store_status)?;
        let mut out = self.to_pb(&w).await?;
        out.replicas = 0;
        Ok(Response::new(pb::DeleteWorkloadResponse { workload: Some(out) }))
    }
}
