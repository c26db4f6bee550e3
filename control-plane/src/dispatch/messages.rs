//! The control plane's commands on a node's Jobs stream (domain
//! [`Command`]s; the hub turns them into `pb` as it sends).

use tether_types::{AllocKind, Allocation, Assignment, Command, ExecSpec, RestartPolicy};

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
