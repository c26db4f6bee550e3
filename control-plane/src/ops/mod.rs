//! Operations: what the services ask of the control plane, in domain terms.
//!
//! An operation checks what needs the fleet or the store to check, writes
//! through the store and performs every consequence of what it committed
//! through [`crate::effects::Effects`] (watchers told, agents told, tasks
//! woken). Services convert `pb` to domain types, authorise, call one
//! operation and convert its answer back; they never perform a consequence
//! themselves, so a new service cannot forget one.
//!
//! One file per resource. Operations do not call services, and services do
//! not call each other.

pub mod jobs;
pub mod nodes;
pub mod tenancy;
pub mod workloads;

use std::sync::Arc;

use tether_scheduler::{Objective, Request as Placement};
use tether_store::StoreError;
use tether_types::{Constraints, Error, ProjectAccess, ProjectId, Resources};

use crate::app::App;

/// Which nodes a project may use, and its quota, as of now.
pub fn access(app: &App, project: &ProjectId) -> Result<Arc<ProjectAccess>, StoreError> {
    app.auth
        .tenants
        .get()
        .access
        .get(project)
        .cloned()
        .ok_or_else(|| StoreError::from(Error::not_found(format!("project {project} not found"))))
}

/// Refuses work that no node the project may use could ever take (see
/// [`crate::fleet::snapshot::NodeSnapshot::satisfiable`]).
async fn check_satisfiable(
    app: &App,
    project: &ProjectId,
    resources: Resources,
    constraints: &Constraints,
) -> Result<(), StoreError> {
    let placement = Placement::new(access(app, project)?, resources, constraints.clone(), Objective::Balanced);
    app.nodes.get(&app.store).await?.satisfiable(&placement)?;
    Ok(())
}
