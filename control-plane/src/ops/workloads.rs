//! Workloads: create, change, scale, delete. The reconciler (in the
//! placement task) does the rest.

use tether_store::StoreError;
use tether_types::{ProjectId, Workload, WorkloadId, WorkloadSpec};

use crate::app::{App, now_ms};
use crate::effects::Signal;

pub async fn create(
    app: &App,
    project: &ProjectId,
    name: String,
    spec: WorkloadSpec,
    replicas: u32,
) -> Result<Workload, StoreError> {
    super::check_satisfiable(app, project, spec.resources, &spec.constraints).await?;
    let now = now_ms();
    let w = Workload {
        id: WorkloadId::from_random(tether_auth::random_bytes()),
        project_id: project.clone(),
        name,
        spec,
        spec_version: 1,
        replicas,
        created_at: now,
        updated_at: now,
    };
    let mut fx = app.effects();
    let w = fx.commit(app.store.workload_create(&w).await?);
    fx.wake(Signal::Placement);
    Ok(w)
}

/// A new spec (a new spec version when it differs); the reconciler rolls
/// replicas over to it.
pub async fn update_spec(
    app: &App,
    project: &ProjectId,
    id: &WorkloadId,
    spec: WorkloadSpec,
) -> Result<Workload, StoreError> {
    super::check_satisfiable(app, project, spec.resources, &spec.constraints).await?;
    let mut fx = app.effects();
    let w = fx.commit(app.store.workload_update_spec(project, id, &spec, now_ms()).await?);
    fx.wake(Signal::Placement);
    Ok(w)
}

pub async fn scale(app: &App, project: &ProjectId, id: &WorkloadId, replicas: u32) -> Result<Workload, StoreError> {
    let mut fx = app.effects();
    let w = fx.commit(app.store.workload_scale(project, id, replicas, now_ms()).await?);
    fx.wake(Signal::Placement);
    Ok(w)
}

/// Deletes a workload; its replicas are told to stop.
pub async fn delete(app: &App, project: &ProjectId, id: &WorkloadId) -> Result<Workload, StoreError> {
    let mut fx = app.effects();
    let (w, stopping) = fx.commit(app.store.workload_delete(project, id, now_ms()).await?);
    for a in &stopping {
        fx.cancel(a, "workload deleted");
    }
    Ok(w)
}
