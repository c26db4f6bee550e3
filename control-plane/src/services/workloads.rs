//! `tether.v1.WorkloadService`.

use std::sync::Arc;

use tether_proto::pb;
use tether_scheduler::{Objective, Request as Placement};
use tether_types::{
    AllocStatus, Error, ProjectId, Role, Workload, WorkloadId, WorkloadSpec, millis_to_timestamp, validate_name,
};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::{App, now_ms};

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
                    allocation_id: a.key.clone(),
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

    async fn spec(&self, project: &ProjectId, spec: Option<pb::WorkloadSpec>) -> Result<WorkloadSpec, Status> {
        let spec =
            WorkloadSpec::try_from(spec.ok_or_else(|| status(Error::invalid("spec is required")))?).map_err(status)?;
        let placement = Placement::new(project.clone(), spec.resources, spec.constraints.clone(), Objective::Balanced);
        let snap = self.app.nodes.get(&self.app.store).await.map_err(store_status)?;
        snap.satisfiable(project, &placement).map_err(status)?;
        Ok(spec)
    }
}

fn replicas(n: u32) -> Result<u32, Status> {
    if n > MAX_REPLICAS {
        return Err(status(Error::invalid(format!("replicas is at most {MAX_REPLICAS}"))));
    }
    Ok(n)
}

fn workload_id(s: &str) -> Result<WorkloadId, Status> {
    WorkloadId::parse(s).map_err(status)
}

#[tonic::async_trait]
impl pb::workload_service_server::WorkloadService for WorkloadApi {
    async fn create_workload(
        &self,
        req: Request<pb::CreateWorkloadRequest>,
    ) -> Result<Response<pb::CreateWorkloadResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let req = req.into_inner();
        validate_name(&req.name).map_err(status)?;
        let spec = self.spec(who.project(), req.spec).await?;
        let now = now_ms();
        let w = Workload {
            id: WorkloadId::from_random(tether_auth::random_bytes()),
            project_id: who.project().clone(),
            name: req.name,
            spec,
            spec_version: 1,
            replicas: replicas(req.replicas)?,
            created_at: now,
            updated_at: now,
        };
        let w = self.app.store.workload_create(&w).await.map_err(store_status)?;
        self.app.work_wake.notify_one();
        Ok(Response::new(pb::CreateWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn get_workload(
        &self,
        req: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::GetWorkloadResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Viewer)?;
        let id = workload_id(&req.get_ref().workload_id)?;
        let w = self
            .app
            .store
            .workload_get(who.project(), &id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| status(Error::not_found(format!("workload {id} not found"))))?;
        Ok(Response::new(pb::GetWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn list_workloads(
        &self,
        req: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Viewer)?;
        let mut out = Vec::new();
        for w in self.app.store.workload_list(Some(who.project())).await.map_err(store_status)? {
            out.push(self.to_pb(&w).await?);
        }
        Ok(Response::new(pb::ListWorkloadsResponse { workloads: out }))
    }

    async fn update_workload(
        &self,
        req: Request<pb::UpdateWorkloadRequest>,
    ) -> Result<Response<pb::UpdateWorkloadResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let req = req.into_inner();
        let id = workload_id(&req.workload_id)?;
        let spec = self.spec(who.project(), req.spec).await?;
        let w = self.app.store.workload_update_spec(who.project(), &id, &spec, now_ms()).await.map_err(store_status)?;
        self.app.work_wake.notify_one();
        Ok(Response::new(pb::UpdateWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn scale_workload(
        &self,
        req: Request<pb::ScaleWorkloadRequest>,
    ) -> Result<Response<pb::ScaleWorkloadResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let req = req.into_inner();
        let id = workload_id(&req.workload_id)?;
        let w = self
            .app
            .store
            .workload_scale(who.project(), &id, replicas(req.replicas)?, now_ms())
            .await
            .map_err(store_status)?;
        self.app.work_wake.notify_one();
        Ok(Response::new(pb::ScaleWorkloadResponse { workload: Some(self.to_pb(&w).await?) }))
    }

    async fn delete_workload(
        &self,
        req: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let who = self.app.auth.operator(&req, Role::Operator)?;
        let id = workload_id(&req.get_ref().workload_id)?;
        let (w, stopping) = self.app.store.workload_delete(who.project(), &id, now_ms()).await.map_err(store_status)?;
        for a in &stopping {
            self.app.hub.send(&a.node_id, crate::dispatch::cancel_msg(a, "workload deleted"));
        }
        let mut out = self.to_pb(&w).await?;
        out.replicas = 0;
        Ok(Response::new(pb::DeleteWorkloadResponse { workload: Some(out) }))
    }
}
