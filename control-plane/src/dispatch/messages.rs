//! The control plane's messages on a node's Jobs stream.

use tether_proto::agent_pb::{self, jobs_response};
use tether_types::{AllocKind, AllocStatus, Allocation, ExecSpec, NodeId, RestartPolicy};

use super::MAX_LOG_BYTES;
use crate::app::App;
use tether_store::StoreError;

pub(super) fn assign_msg(a: &Allocation, exec: &ExecSpec, restart: Option<RestartPolicy>) -> agent_pb::JobsResponse {
    let (job_id, attempt) = a.wire_id();
    agent_pb::JobsResponse {
        msg: Some(jobs_response::Msg::Assign(agent_pb::AssignJob {
            job_id,
            attempt,
            exec: Some(exec.to_pb()),
            kind: match a.kind {
                AllocKind::Job => agent_pb::AllocationKind::Job,
                AllocKind::Service => agent_pb::AllocationKind::Service,
            } as i32,
            restart: match restart {
                None => agent_pb::ServiceRestart::Unspecified,
                Some(RestartPolicy::Always) => agent_pb::ServiceRestart::Always,
                Some(RestartPolicy::OnFailure) => agent_pb::ServiceRestart::OnFailure,
                Some(RestartPolicy::Never) => agent_pb::ServiceRestart::Never,
            } as i32,
            max_log_bytes: MAX_LOG_BYTES,
        })),
    }
}

pub fn cancel_msg(a: &Allocation, reason: &str) -> agent_pb::JobsResponse {
    let (job_id, attempt) = a.wire_id();
    agent_pb::JobsResponse {
        msg: Some(jobs_response::Msg::Cancel(agent_pb::CancelJob { job_id, attempt, reason: reason.to_owned() })),
    }
}

pub(super) fn release_msg(job_id: String, attempt: u32) -> agent_pb::JobsResponse {
    agent_pb::JobsResponse { msg: Some(jobs_response::Msg::Release(agent_pb::ReleaseJob { job_id, attempt })) }
}

/// The assignment message for an allocation, loading its spec.
pub(super) async fn assignment(app: &App, a: &Allocation) -> Result<Option<agent_pb::JobsResponse>, StoreError> {
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
