//! Jobs: submission (with idempotency keys), reads, pending work, cancel.

use tether_types::{Allocation, Error, Job, JobId, JobStatus, NodeId, ProjectId, UnixMillis};

use super::{ALLOC_COLS, JOB_COLS, alloc_from_row, job_from_row};
use crate::events::{Actor, append_event, current_actor};
use crate::row::{Decoded, decode_each, to_json};
use crate::{Committed, Result, Store, StoreError, in_tx_committed, on_read};

/// A page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<(UnixMillis, JobId)>,
}

impl Store {
    /// Stores a new pending job. With an idempotency key that was used before
    /// in the project, returns the first job instead (and `false`).
    pub async fn job_submit(&self, job: &Job, idempotency_key: Option<&str>) -> Result<Committed<(Job, bool)>> {
        Ok(self
            .jobs_submit(&[(job, idempotency_key, current_actor().as_ref())])
            .await?
            .map(|mut v| v.pop().expect("one answer per job")))
    }

    /// [`Store::job_submit`] for many jobs, in order, in one transaction
    /// (group commit of submissions that arrive together). A key used twice
    /// in one batch gives the first job to both.
    pub async fn jobs_submit(
        &self,
        jobs: &[(&Job, Option<&str>, Option<&Actor>)],
    ) -> Result<Committed<Vec<(Job, bool)>>> {
        in_tx_committed!(self, |tx| {
            let mut out = Vec::with_capacity(jobs.len());
            for &(job, idempotency_key, actor) in jobs {
                tx.actor = actor.cloned();
                if let Some(key) = idempotency_key {
                    let row = sqlx::query(&format!(
                        "SELECT {JOB_COLS} FROM jobs WHERE project_id = $1 AND idempotency_key = $2"
                    ))
                    .bind(job.project_id.as_str())
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(r) = row {
                        out.push((job_from_row(&r)?, false));
                        continue;
                    }
                }
                sqlx::query(
                    "INSERT INTO jobs (id, project_id, spec, labels, status, priority, max_attempts, attempt, node_id,
                                       exit_code, error, idempotency_key, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL, NULL, '', $8, $9, $9)",
                )
                .bind(job.id.as_str())
                .bind(job.project_id.as_str())
                .bind(to_json(&job.spec))
                .bind(to_json(&job.labels))
                .bind(job.status.as_str())
                .bind(i64::from(job.spec.priority))
                .bind(i64::from(job.spec.max_attempts))
                .bind(idempotency_key)
                .bind(job.created_at)
                .execute(&mut *tx)
                .await?;
                append_event!(
                    tx,
                    job.created_at,
                    Some(job.project_id.as_str()),
                    "job.submitted",
                    job.id.as_str(),
                    to_json(job)
                );
                out.push((job.clone(), true));
            }
            Ok::<_, StoreError>(out)
        })
    }

    pub async fn job_get(&self, id: &JobId) -> Result<Option<Job>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| job_from_row(&r))
                .transpose()
        })
    }

    /// Every attempt of a job, oldest first.
    pub async fn job_allocations(&self, id: &JobId) -> Result<Vec<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE job_id = $1 ORDER BY attempt"))
                .bind(id.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(alloc_from_row)
                .collect()
        })
    }

    /// Jobs of a project, newest first, filtered in SQL by status and node.
    pub async fn job_list(
        &self,
        project: &ProjectId,
        status: Option<JobStatus>,
        node: Option<&NodeId>,
        before: Option<&(UnixMillis, JobId)>,
        limit: u32,
    ) -> Result<JobPage> {
        let (at, id) = before.map(|(t, id)| (*t, id.as_str())).unwrap_or((i64::MAX, ""));
        let mut jobs: Vec<Job> = on_read!(self, |pool| {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs
                 WHERE project_id = $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR node_id = $3)
                   AND (created_at < $4 OR (created_at = $4 AND id < $5))
                 ORDER BY created_at DESC, id DESC LIMIT $6"
            ))
            .bind(project.as_str())
            .bind(status.map(JobStatus::as_str).unwrap_or(""))
            .bind(node.map(NodeId::as_str).unwrap_or(""))
            .bind(at)
            .bind(id)
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect::<Result<_>>()
        })?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| (j.created_at, j.id.clone()))
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    }

    /// Pending jobs of every project, highest priority first, then oldest.
    /// Pending jobs, highest priority first; a row that does not decode is
    /// reported in `bad`, not an error for all.
    pub async fn jobs_pending(&self, limit: u32) -> Result<Decoded<Job>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE status = 'pending' ORDER BY priority DESC, created_at, id LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(decode_each(&rows, "id", job_from_row))
        })
    }

    /// Cancels a job that has not finished. Returns the job and, when an
    /// attempt is running, that allocation (now `stopping`) so the caller can
    /// tell its node.
    pub async fn job_cancel(
        &self,
        project: &ProjectId,
        id: &JobId,
        now: UnixMillis,
    ) -> Result<Committed<(Job, Option<Allocation>)>> {
        in_tx_committed!(self, |tx| {
            let mut job = match fetch_job!(tx, id.as_str()) {
                Some(j) if &j.project_id == project => j,
                _ => return Err(Error::not_found(format!("job {id} not found")).into()),
            };
            let ev = job.cancel(now)?;
            let mut stopping = None;
            if job.attempt > 0 {
                let key = tether_types::AllocKey::Attempt(job.id.clone(), job.attempt);
                if let Some(mut a) = fetch_alloc!(tx, &key)
                    && a.status.is_active()
                {
                    // Already stopping (a drain): told again all the same.
                    a.stop();
                    update_alloc!(tx, &a);
                    stopping = Some(a);
                }
            }
            update_job!(tx, &job, ev.kind());
            Ok((job, stopping))
        })
    }
}
