//! Jobs, allocations (job attempts and workload replicas) and job output:
//! the row decoders and the statement macros they share, here; the methods in
//! one file per concern.

use tether_types::{
    AllocKey, AllocKind, AllocStatus, Allocation, Job, JobId, JobStatus, NodeId, ProjectId, WorkloadId,
};

pub use jobs::JobPage;
pub use logs::LogChunk;
pub use reports::{AgentReport, Finished, ReportOutcome};

use crate::Result;
use crate::row::Get;

/// Allocations that hold resources on their node.
pub(crate) const ACTIVE: &str = "status IN ('scheduled', 'running', 'stopping')";
/// Active allocations whose node is down or was deregistered.
const ON_LOST_NODES: &str = "status IN ('scheduled', 'running', 'stopping')
       AND (node_id IN (SELECT id FROM nodes WHERE status = 'down') OR node_id NOT IN (SELECT id FROM nodes))";

const JOB_COLS: &str =
    "id, project_id, spec, labels, status, attempt, node_id, exit_code, error, created_at, updated_at";
pub(crate) const ALLOC_COLS: &str =
    "key, project_id, kind, job_id, attempt, workload_id, spec_version, node_id, status,
     resources, exit_code, error, restarts, scheduled_at, started_at, finished_at";

fn job_from_row(r: &impl Get) -> Result<Job> {
    Ok(Job {
        id: JobId::from_trusted(r.text("id")?),
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        spec: r.json("spec", "job spec")?,
        labels: r.json("labels", "job labels")?,
        status: JobStatus::parse(&r.text("status")?)?,
        attempt: r.int("attempt")? as u32,
        node_id: r.opt_text("node_id")?.map(NodeId::from_trusted),
        exit_code: r.opt_int("exit_code")?.map(|c| c as i32),
        error: r.text("error")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn alloc_from_row(r: &impl Get) -> Result<Allocation> {
    let key = AllocKey::parse(&r.text("key")?).map_err(|e| crate::StoreError::corrupt("allocation key", e))?;
    let kind = match r.text("kind")?.as_str() {
        "job" => AllocKind::Job,
        "service" => AllocKind::Service,
        other => {
            return Err(crate::StoreError::corrupt(
                "allocation kind",
                tether_types::Error::invalid(format!("unknown allocation kind {other:?}")),
            ));
        }
    };
    if kind != key.kind() {
        return Err(crate::StoreError::corrupt(
            "allocation kind",
            tether_types::Error::invalid(format!("allocation {key} is stored as kind {kind:?}")),
        ));
    }
    Ok(Allocation {
        key,
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        kind,
        job_id: r.opt_text("job_id")?.map(JobId::from_trusted),
        attempt: r.int("attempt")? as u32,
        workload_id: r.opt_text("workload_id")?.map(WorkloadId::from_trusted),
        spec_version: r.int("spec_version")? as u64,
        node_id: NodeId::from_trusted(r.text("node_id")?),
        status: AllocStatus::parse(&r.text("status")?)?,
        resources: r.json("resources", "allocation resources")?,
        exit_code: r.opt_int("exit_code")?.map(|c| c as i32),
        error: r.text("error")?,
        restarts: r.int("restarts")? as u32,
        scheduled_at: r.int("scheduled_at")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

macro_rules! update_job {
    ($tx:expr, $job:expr, $kind:expr) => {{
        let j: &Job = $job;
        sqlx::query(
            "UPDATE jobs SET status = $2, attempt = $3, node_id = $4, exit_code = $5, error = $6, updated_at = $7
             WHERE id = $1",
        )
        .bind(j.id.as_str())
        .bind(j.status.as_str())
        .bind(i64::from(j.attempt))
        .bind(j.node_id.as_ref().map(|n| n.as_str()))
        .bind(j.exit_code.map(i64::from))
        .bind(&j.error)
        .bind(j.updated_at)
        .execute(&mut *$tx)
        .await?;
        append_event!($tx, j.updated_at, Some(j.project_id.as_str()), $kind, j.id.as_str(), to_json(j))
    }};
}

macro_rules! update_alloc {
    ($tx:expr, $a:expr) => {{
        let a: &Allocation = $a;
        sqlx::query(
            "UPDATE allocations SET status = $2, exit_code = $3, error = $4, restarts = $5, started_at = $6,
                    finished_at = $7
             WHERE key = $1",
        )
        .bind(a.key.to_string())
        .bind(a.status.as_str())
        .bind(a.exit_code.map(i64::from))
        .bind(&a.error)
        .bind(i64::from(a.restarts))
        .bind(a.started_at)
        .bind(a.finished_at)
        .execute(&mut *$tx)
        .await?;
    }};
}

macro_rules! fetch_job {
    ($tx:expr, $id:expr) => {{
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?;
        row.map(|r| job_from_row(&r)).transpose()?
    }};
}

macro_rules! fetch_alloc {
    ($tx:expr, $key:expr) => {{
        let key: &tether_types::AllocKey = $key;
        let row = sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE key = $1"))
            .bind(key.to_string())
            .fetch_optional(&mut *$tx)
            .await?;
        row.map(|r| alloc_from_row(&r)).transpose()?
    }};
}

/// The job still waiting for this allocation's result: its job, when the
/// allocation is the job's current attempt and the job has not ended.
macro_rules! waiting_job {
    ($tx:expr, $a:expr) => {{
        let a: &Allocation = $a;
        match &a.job_id {
            Some(id) => fetch_job!($tx, id.as_str()).filter(|j: &Job| j.waits_for(a)),
            None => None,
        }
    }};
}

/// Marks an active allocation lost inside a transaction; a job attempt is
/// retried while attempts remain. Evaluates to the updated allocation.
macro_rules! lose_allocation {
    ($tx:expr, $a:expr, $reason:expr, $now:expr) => {{
        let mut a: Allocation = $a;
        // The job still waiting for this attempt's result, if any.
        let waiting = waiting_job!($tx, &a);
        a.lose($reason, waiting.is_some(), $now);
        update_alloc!($tx, &a);
        if a.job_id.is_some() {
            if let Some(mut job) = waiting {
                let ev = job.attempt_ended(tether_types::Shortfall::Lost, $reason.to_owned(), None, $now);
                update_job!($tx, &job, ev.kind());
            }
        } else {
            append_event!($tx, $now, Some(a.project_id.as_str()), "allocation.lost", &a.key.to_string(), to_json(&a));
        }
        a
    }};
}

// After the macros above, which they use.
mod allocations;
mod jobs;
mod logs;
mod reports;
