//! The control plane's commands on a node's Jobs stream (domain
//! [`Command`]s; the hub turns them into `pb` as it sends).

use tether_types::{AllocKind, Allocation, Assignment, Command, ExecSpec, RestartPolicy, SealedSecret};

use super::MAX_LOG_BYTES;
use crate::app::App;
use tether_store::StoreError;

pub(super) fn assign_msg(
    a: &Allocation,
    exec: &ExecSpec,
    restart: Option<RestartPolicy>,
    secrets: Vec<SealedSecret>,
) -> Command {
    Command::Assign(Assignment {
        key: a.wire_id(),
        exec: exec.clone(),
        kind: a.kind,
        restart: match a.kind {
            AllocKind::Job => None,
            AllocKind::Service => restart,
        },
        max_log_bytes: MAX_LOG_BYTES,
        secrets,
    })
}

/// The assignment message of a new allocation, with the copies of its
/// secrets sealed to its node.
pub(super) async fn new_assignment(
    app: &App,
    a: &Allocation,
    exec: &ExecSpec,
    restart: Option<RestartPolicy>,
) -> Result<Command, StoreError> {
    let secrets = super::secrets::sealed_for(app, &a.project_id, &a.node_id, &exec.secrets).await?;
    Ok(assign_msg(a, exec, restart, secrets))
}

/// The assignment message for an allocation, loading its spec.
pub(super) async fn assignment(app: &App, a: &Allocation) -> Result<Option<Command>, StoreError> {
    let (exec, restart) = if let Some(job_id) = &a.job_id {
        match app.store.job_get(job_id).await? {
            Some(j) => (j.spec.exec, None),
            None => return Ok(None),
        }
    } else if let Some(w) = &a.workload_id {
        match app.store.workload_get(&a.project_id, w).await? {
            Some(w) => (w.spec.exec, Some(w.spec.restart)),
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(new_assignment(app, a, &exec, restart).await?))
}
