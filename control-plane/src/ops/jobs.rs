//! Jobs: submission and cancellation.

use tether_store::StoreError;
use tether_types::{Error, Job, JobId, JobSpec, JobStatus, Labels, ProjectId};

use crate::app::{App, now_ms};
use crate::effects::Signal;

/// Stores a new pending job (by group commit) and wakes placement. With an
/// idempotency key used before in the project, answers the first job and
/// `false`.
pub async fn submit(
    app: &App,
    project: &ProjectId,
    spec: JobSpec,
    labels: Labels,
    idempotency_key: Option<String>,
) -> Result<(Job, bool), StoreError> {
    super::check_satisfiable(app, project, spec.resources, &spec.constraints).await?;
    let now = now_ms();
    let job = Job {
        id: JobId::from_random(tether_auth::random_bytes()),
        project_id: project.clone(),
        spec,
        labels,
        status: JobStatus::Pending,
        attempt: 0,
        node_id: None,
        exit_code: None,
        error: String::new(),
        created_at: now,
        updated_at: now,
    };
    let mut fx = app.effects();
    let answer = app
        .submits
        .call((job, idempotency_key, tether_store::current_actor()))
        .await
        .unwrap_or_else(|| Err(Error::unavailable("control plane is shutting down")))?;
    let (job, created) = fx.commit(answer);
    if created {
        metrics::counter!("tether_jobs_submitted_total").increment(1);
        fx.wake(Signal::Placement);
    }
    Ok((job, created))
}

/// Cancels a job; an attempt that runs is told to stop.
pub async fn cancel(app: &App, project: &ProjectId, id: &JobId) -> Result<Job, StoreError> {
    let mut fx = app.effects();
    let (job, stopping) = fx.commit(app.store.job_cancel(project, id, now_ms()).await?);
    if let Some(a) = &stopping {
        fx.cancel(a, "cancelled by an operator");
    }
    fx.wake(Signal::Placement);
    tracing::info!(job_id = %id, "job cancelled");
    Ok(job)
}
