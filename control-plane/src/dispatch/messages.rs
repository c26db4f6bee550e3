//! The control plane's commands on a node's Jobs stream (domain
//! [`Command`]s; the hub turns them into `pb` as it sends).

use tether_types::{AllocKind, AllocStatus, Allocation, Assignment, Command, ExecSpec, NodeId, RestartPolicy};

use super::MAX_LOG_BYTES;
use crate::app::App;
use tether_store::StoreError;

pub(super) fn assign_msg(a: &Allocation, exec: &ExecSpec, restart: Option<RestartPolicy>) -> Command {
    Command::Assign(Assignment {
        key: a.wire_id(),
        exec: exec.clone(),
        kind: a.kind,
        restart: match a.kind {
            AllocKind::Job => None,
            AllocKind::Service => restart,
        },
        max_log_bytes: MAX_LOG_BYTES,
    })
}

pub(super) fn release_msg(job_id: String, attempt: u32) -> Command {
    Command::Release((job_id, attempt))
}

/// The assignment message for an allocation, loading its spec.
pub(super) async fn assignment(app: &App, a: &Allocation) -> Result<Option<Command>, StoreError> {
    if let Some(job_id) = &a.job_id {
        Ok(app.store.job_get(job_id).await?.map(|j| assign_msg(a, &j.spec.exec, None)))
    } else if let Some(w) = &a.workload_id {
        Ok(app.store.workload_get(&a.project_id, w).await?.map(|w| assign_msg(a, &w.spec.exec, Some(w.spec.restart))))
    } else {
        Ok(None)
    }
}

pub(super) fn placeholder(node: &NodeId, wire_id: &str, attempt: u32) -> Allocation {
    Allocation {
        key: String::new(),
        project_id: tether_types::ProjectId::from_trusted(String::new()),
        kind: if wire_id.starts_with(tether_types::JobId::PREFIX) { AllocKind::Job } else { AllocKind::Service },
        job_id: wire_id
            .starts_with(tether_types::JobId::PREFIX)
            .then(|| tether_types::JobId::from_trusted(wire_id.to_owned())),
        attempt,
        workload_id: None,
        spec_version: 0,
        node_id: node.clone(),
        status: AllocStatus::Lost,
        resources: Default::default(),
        exit_code: None,
        error: String::new(),
        restarts: 0,
        scheduled_at: 0,
        started_at: None,
        finished_at: None,
    }
}
