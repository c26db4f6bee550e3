//! Jobs, allocations (job attempts and workload replicas) and job output.

use tether_types::{
    AllocKind, AllocStatus, Allocation, Error, Job, JobId, JobStatus, NodeId, ProjectId, UnixMillis, WorkloadId,
};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Result, Store, StoreError, in_tx, on_read};

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
    Ok(Allocation {
        key: r.text("key")?,
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        kind: if r.text("kind")? == "job" { AllocKind::Job } else { AllocKind::Service },
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

/// A page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<(UnixMillis, JobId)>,
}

/// A chunk of a job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub attempt: u32,
    pub pos: u64,
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// An agent's report about one allocation (see [`Store::allocation_reports`]).
#[derive(Debug, Clone, Copy)]
pub enum AgentReport<'a> {
    Started {
        key: &'a str,
        node: &'a NodeId,
        restarts: u32,
    },
    /// `lost`: the agent gave the attempt up without a result (it fenced
    /// itself after losing contact); counted as lost, not failed.
    Finished {
        key: &'a str,
        node: &'a NodeId,
        exit_code: i32,
        error: &'a str,
        lost: bool,
    },
}

/// The answer to one [`AgentReport`], as the single-report calls give it.
// Short-lived, one per report in a batch: boxing a variant would only add an
// allocation per report.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ReportOutcome {
    Started(Option<Allocation>),
    Finished(Option<Finished>),
}

/// What a finished report changed.
#[derive(Debug, Clone)]
pub struct Finished {
    pub allocation: Allocation,
    /// The job after the change, for job attempts.
    pub job: Option<Job>,
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
        .bind(&a.key)
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
        let row = sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE key = $1"))
            .bind($key)
            .fetch_optional(&mut *$tx)
            .await?;
        row.map(|r| alloc_from_row(&r)).transpose()?
    }};
}

/// The job's fate once its current attempt ended without success: another
/// attempt while attempts remain, else `terminal`.
fn retry_or(
    job: &mut Job,
    terminal: JobStatus,
    error: String,
    exit_code: Option<i32>,
    now: UnixMillis,
) -> &'static str {
    job.error = error;
    job.exit_code = exit_code;
    job.updated_at = now;
    if job.attempt < job.spec.max_attempts {
        job.status = JobStatus::Pending;
        job.node_id = None;
        "job.retrying"
    } else {
        job.status = terminal;
        if terminal == JobStatus::Lost { "job.lost" } else { "job.failed" }
    }
}

/// Marks an active allocation lost inside a transaction; a job attempt is
/// retried while attempts remain. Evaluates to the updated allocation.
macro_rules! lose_allocation {
    ($tx:expr, $a:expr, $reason:expr, $now:expr) => {{
        let mut a: Allocation = $a;
        // The job still waiting for this attempt's result, if any.
        let waiting = match &a.job_id {
            Some(job_id) => {
                fetch_job!($tx, job_id.as_str()).filter(|j: &Job| j.attempt == a.attempt && !j.status.is_terminal())
            }
            None => None,
        };
        // Asked to stop and nobody waits for it (a cancelled job, a
        // replica): it stopped. Otherwise its result is lost.
        let was_stopping = a.status == AllocStatus::Stopping;
        a.status = if was_stopping && waiting.is_none() { AllocStatus::Stopped } else { AllocStatus::Lost };
        a.error = $reason.to_owned();
        a.finished_at = Some($now);
        update_alloc!($tx, &a);
        if a.job_id.is_some() {
            if let Some(mut job) = waiting {
                let kind = retry_or(&mut job, JobStatus::Lost, $reason.to_owned(), None, $now);
                update_job!($tx, &job, kind);
            }
        } else {
            append_event!($tx, $now, Some(a.project_id.as_str()), "allocation.lost", &a.key, to_json(&a));
        }
        a
    }};
}

impl Store {
    /// Stores a new pending job. With an idempotency key that was used before
    /// in the project, returns the first job instead (and `false`).
    pub async fn job_submit(&self, job: &Job, idempotency_key: Option<&str>) -> Result<(Job, bool)> {
        Ok(self.jobs_submit(&[(job, idempotency_key)]).await?.pop().expect("one answer per job"))
    }

    /// [`Store::job_submit`] for many jobs, in order, in one transaction
    /// (group commit of submissions that arrive together). A key used twice
    /// in one batch gives the first job to both.
    pub async fn jobs_submit(&self, jobs: &[(&Job, Option<&str>)]) -> Result<Vec<(Job, bool)>> {
        in_tx!(self, |tx| {
            let mut out = Vec::with_capacity(jobs.len());
            for &(job, idempotency_key) in jobs {
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
    pub async fn jobs_pending(&self, limit: u32) -> Result<Vec<Job>> {
        on_read!(self, |pool| {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE status = 'pending' ORDER BY priority DESC, created_at, id LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
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
    ) -> Result<(Job, Option<Allocation>)> {
        in_tx!(self, |tx| {
            let mut job = match fetch_job!(tx, id.as_str()) {
                Some(j) if &j.project_id == project => j,
                _ => return Err(Error::not_found(format!("job {id} not found")).into()),
            };
            if job.status.is_terminal() {
                return Err(Error::precondition(format!("job {id} already {}", job.status.as_str())).into());
            }
            job.status = JobStatus::Cancelled;
            job.error = "cancelled by an operator".into();
            job.updated_at = now;
            let mut stopping = None;
            if job.attempt > 0 {
                let key = tether_types::alloc_key(job.id.as_str(), job.attempt);
                if let Some(mut a) = fetch_alloc!(tx, &key)
                    && a.status.is_active()
                {
                    a.status = AllocStatus::Stopping;
                    update_alloc!(tx, &a);
                    stopping = Some(a);
                }
            }
            update_job!(tx, &job, "job.cancelled");
            Ok((job, stopping))
        })
    }

    /// Every allocation that holds resources (scheduled, running, stopping).
    pub async fn allocations_active(&self) -> Result<Vec<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE {ACTIVE}"))
                .fetch_all(pool)
                .await?
                .iter()
                .map(alloc_from_row)
                .collect()
        })
    }

    /// Active allocations on one node.
    pub async fn allocations_on_node(&self, node: &NodeId) -> Result<Vec<Allocation>> {
        self.active_allocations_where("node_id", node.as_str()).await
    }

    /// Active allocations whose `column` (a fixed column name) is `value`,
    /// oldest first.
    pub(crate) async fn active_allocations_where(&self, column: &'static str, value: &str) -> Result<Vec<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!(
                "SELECT {ALLOC_COLS} FROM allocations WHERE {column} = $1 AND {ACTIVE} ORDER BY scheduled_at, key"
            ))
            .bind(value)
            .fetch_all(pool)
            .await?
            .iter()
            .map(alloc_from_row)
            .collect()
        })
    }

    pub async fn allocation_get(&self, key: &str) -> Result<Option<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE key = $1"))
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|r| alloc_from_row(&r))
                .transpose()
        })
    }

    /// Records placements in one transaction: each allocation is inserted and
    /// its job (if any) becomes `scheduled` with the new attempt. A job that is
    /// no longer pending (cancelled meanwhile) is skipped. Returns what was stored.
    pub async fn allocations_place(&self, allocs: &[Allocation], now: UnixMillis) -> Result<Vec<Allocation>> {
        if allocs.is_empty() {
            return Ok(Vec::new());
        }
        in_tx!(self, |tx| {
            let mut stored = Vec::with_capacity(allocs.len());
            for a in allocs {
                if let Some(job_id) = &a.job_id {
                    let Some(mut job) = fetch_job!(tx, job_id.as_str()) else { continue };
                    if job.status != JobStatus::Pending || job.attempt + 1 != a.attempt {
                        continue;
                    }
                    job.status = JobStatus::Scheduled;
                    job.attempt = a.attempt;
                    job.node_id = Some(a.node_id.clone());
                    job.updated_at = now;
                    update_job!(tx, &job, "job.scheduled");
                } else if let Some(w) = &a.workload_id {
                    let exists: Option<i64> = sqlx::query_scalar("SELECT spec_version FROM workloads WHERE id = $1")
                        .bind(w.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if exists.is_none() {
                        continue;
                    }
                    append_event!(tx, now, Some(a.project_id.as_str()), "allocation.scheduled", &a.key, to_json(a));
                }
                sqlx::query(&format!(
                    "INSERT INTO allocations ({ALLOC_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(&a.key)
                .bind(a.project_id.as_str())
                .bind(if a.kind == AllocKind::Job { "job" } else { "service" })
                .bind(a.job_id.as_ref().map(|j| j.as_str()))
                .bind(i64::from(a.attempt))
                .bind(a.workload_id.as_ref().map(|w| w.as_str()))
                .bind(a.spec_version as i64)
                .bind(a.node_id.as_str())
                .bind(a.status.as_str())
                .bind(to_json(&a.resources))
                .bind(a.exit_code.map(i64::from))
                .bind(&a.error)
                .bind(i64::from(a.restarts))
                .bind(a.scheduled_at)
                .bind(a.started_at)
                .bind(a.finished_at)
                .execute(&mut *tx)
                .await?;
                stored.push(a.clone());
            }
            Ok::<_, StoreError>(stored)
        })
    }

    /// The node reports the allocation's process started. Only the node that
    /// holds it may say so; a report for an allocation that is no longer
    /// active changes nothing and returns None.
    pub async fn allocation_started(
        &self,
        key: &str,
        node: &NodeId,
        restarts: u32,
        now: UnixMillis,
    ) -> Result<Option<Allocation>> {
        match self.allocation_reports(&[AgentReport::Started { key, node, restarts }], now).await?.pop() {
            Some(ReportOutcome::Started(a)) => Ok(a),
            _ => unreachable!("one started answer per started report"),
        }
    }

    /// The node reports the allocation's process ended. Idempotent: a report
    /// for an allocation that already ended returns None.
    pub async fn allocation_finished(
        &self,
        key: &str,
        node: &NodeId,
        exit_code: i32,
        error: &str,
        now: UnixMillis,
    ) -> Result<Option<Finished>> {
        match self
            .allocation_reports(&[AgentReport::Finished { key, node, exit_code, error, lost: false }], now)
            .await?
            .pop()
        {
            Some(ReportOutcome::Finished(f)) => Ok(f),
            _ => unreachable!("one finished answer per finished report"),
        }
    }

    /// Applies agents' started and finished reports in order, all in one
    /// transaction (group commit: the control plane batches what arrives
    /// together). Each report gets the answer
    /// [`Store::allocation_started`] or [`Store::allocation_finished`] would
    /// give; a database error fails them all.
    pub async fn allocation_reports(&self, reports: &[AgentReport<'_>], now: UnixMillis) -> Result<Vec<ReportOutcome>> {
        in_tx!(self, |tx| {
            let mut out = Vec::with_capacity(reports.len());
            for r in reports {
                match *r {
                    AgentReport::Started { key, node, restarts } => {
                        let started = 'report: {
                            let Some(mut a) = fetch_alloc!(tx, key) else { break 'report None };
                            if &a.node_id != node || !matches!(a.status, AllocStatus::Scheduled | AllocStatus::Running)
                            {
                                break 'report None;
                            }
                            if a.status == AllocStatus::Running && a.restarts == restarts {
                                break 'report Some(a);
                            }
                            a.status = AllocStatus::Running;
                            a.restarts = restarts;
                            a.started_at = Some(now);
                            update_alloc!(tx, &a);
                            if let Some(job_id) = &a.job_id {
                                if let Some(mut job) = fetch_job!(tx, job_id.as_str())
                                    && job.status == JobStatus::Scheduled
                                    && job.attempt == a.attempt
                                {
                                    job.status = JobStatus::Running;
                                    job.updated_at = now;
                                    update_job!(tx, &job, "job.running");
                                }
                            } else {
                                append_event!(
                                    tx,
                                    now,
                                    Some(a.project_id.as_str()),
                                    "allocation.running",
                                    &a.key,
                                    to_json(&a)
                                );
                            }
                            Some(a)
                        };
                        out.push(ReportOutcome::Started(started));
                    }
                    AgentReport::Finished { key, node, exit_code, error, lost } => {
                        let finished = 'report: {
                            let Some(mut a) = fetch_alloc!(tx, key) else { break 'report None };
                            if &a.node_id != node || !a.status.is_active() {
                                break 'report None;
                            }
                            if lost {
                                let reason = if error.is_empty() { "given up by the node" } else { error };
                                let a = lose_allocation!(tx, a, reason, now);
                                let job = match &a.job_id {
                                    Some(id) => fetch_job!(tx, id.as_str()),
                                    None => None,
                                };
                                break 'report Some(Finished { allocation: a, job });
                            }
                            // Why the control plane asked it to stop, if it did.
                            let stopped_because = (a.status == AllocStatus::Stopping).then(|| a.error.clone());
                            let ok = exit_code == 0 && error.is_empty();
                            // The job still waiting for this attempt's result, if any.
                            let waiting = match &a.job_id {
                                Some(id) => fetch_job!(tx, id.as_str())
                                    .filter(|j: &Job| j.attempt == a.attempt && !j.status.is_terminal()),
                                None => None,
                            };
                            a.status = match (&stopped_because, ok) {
                                // Stopped while nobody waits for it: a cancelled
                                // job, a replica.
                                (Some(_), _) if waiting.is_none() => AllocStatus::Stopped,
                                (_, true) => AllocStatus::Succeeded,
                                // Stopped by the control plane (a drain deadline,
                                // a stopped node) before it had a result: lost,
                                // and retried.
                                (Some(_), false) => AllocStatus::Lost,
                                (None, false) => AllocStatus::Failed,
                            };
                            a.exit_code = Some(exit_code);
                            a.error = error.to_owned();
                            a.finished_at = Some(now);
                            update_alloc!(tx, &a);
                            let mut job_after = None;
                            if let Some(mut job) = waiting {
                                let kind = if ok {
                                    job.status = JobStatus::Succeeded;
                                    job.exit_code = Some(exit_code);
                                    job.error.clear();
                                    job.updated_at = now;
                                    "job.succeeded"
                                } else if let Some(why) = stopped_because {
                                    retry_or(&mut job, JobStatus::Lost, why, Some(exit_code), now)
                                } else {
                                    let why = if error.is_empty() {
                                        format!("exited with code {exit_code}")
                                    } else {
                                        error.to_owned()
                                    };
                                    retry_or(&mut job, JobStatus::Failed, why, Some(exit_code), now)
                                };
                                update_job!(tx, &job, kind);
                                job_after = Some(job);
                            } else if a.job_id.is_none() {
                                append_event!(
                                    tx,
                                    now,
                                    Some(a.project_id.as_str()),
                                    "allocation.finished",
                                    &a.key,
                                    to_json(&a)
                                );
                            }
                            Some(Finished { allocation: a, job: job_after })
                        };
                        out.push(ReportOutcome::Finished(finished));
                    }
                }
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// Asks for allocations to stop: active ones become `stopping`, with
    /// `reason`. Returns those that changed. A job attempt whose job still
    /// wants a result (not cancelled) is retried once it has stopped (its node
    /// reports it ended, or goes down), never before: no attempt runs on
    /// after the control plane gave up on it.
    pub async fn allocations_stop(&self, keys: &[String], reason: &str, now: UnixMillis) -> Result<Vec<Allocation>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        in_tx!(self, |tx| {
            let mut out = Vec::new();
            for k in keys {
                let Some(mut a) = fetch_alloc!(tx, k) else { continue };
                if !matches!(a.status, AllocStatus::Scheduled | AllocStatus::Running) {
                    continue;
                }
                a.status = AllocStatus::Stopping;
                a.error = reason.to_owned();
                update_alloc!(tx, &a);
                append_event!(tx, now, Some(a.project_id.as_str()), "allocation.stopping", &a.key, to_json(&a));
                out.push(a);
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// Active allocations on nodes that are `down` (or deregistered) become lost (job attempts
    /// are retried elsewhere while attempts remain). Idempotent; returns the
    /// allocations that changed.
    pub async fn allocations_lose_on_down_nodes(&self, now: UnixMillis) -> Result<Vec<Allocation>> {
        // Usually there is nothing to do: look first, without a write transaction.
        let any: Option<String> = on_read!(self, |pool| {
            sqlx::query_scalar(&format!("SELECT key FROM allocations WHERE {ON_LOST_NODES} LIMIT 1"))
                .fetch_optional(pool)
                .await?
        });
        if any.is_none() {
            return Ok(Vec::new());
        }
        in_tx!(self, |tx| {
            let rows = sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE {ON_LOST_NODES}"))
                .fetch_all(&mut *tx)
                .await?;
            let allocs = rows.iter().map(alloc_from_row).collect::<Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(allocs.len());
            for a in allocs {
                out.push(lose_allocation!(tx, a, "node is down or was deregistered", now));
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// Appends output of a job attempt at `pos`, unless that position is
    /// already stored (a resend). Returns false for a duplicate.
    pub async fn job_log_append(
        &self,
        job: &JobId,
        attempt: u32,
        pos: u64,
        data: &[u8],
        truncated: bool,
    ) -> Result<bool> {
        in_tx!(self, |tx| {
            let inserted = sqlx::query(
                "INSERT INTO job_logs (job_id, attempt, pos, data, truncated) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(job.as_str())
            .bind(i64::from(attempt))
            .bind(pos as i64)
            .bind(data)
            .bind(i64::from(truncated))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            Ok(inserted)
        })
    }

    /// Output chunks of one attempt at or after `from`, in order, about
    /// `max_bytes` at most.
    pub async fn job_logs(&self, job: &JobId, attempt: u32, from: u64, max_bytes: usize) -> Result<Vec<LogChunk>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT pos, data, truncated FROM job_logs
                 WHERE job_id = $1 AND attempt = $2 AND pos + LENGTH(data) > $3 ORDER BY pos LIMIT 256",
            )
            .bind(job.as_str())
            .bind(i64::from(attempt))
            .bind(from as i64)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::new();
            let mut total = 0;
            for r in &rows {
                let pos = r.int("pos")? as u64;
                let mut data = r.bytes("data")?;
                if pos < from {
                    data.drain(..(from - pos) as usize);
                }
                total += data.len();
                out.push(LogChunk { attempt, pos: pos.max(from), data, truncated: r.int("truncated")? == 1 });
                if total >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Events about one subject (a job), after `after`, oldest first.
    pub async fn events_for_subject(
        &self,
        project: &ProjectId,
        subject: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::Event>> {
        on_read!(self, |pool| {
            sqlx::query(
                "SELECT seq, at, project_id, kind, subject, payload FROM events
                 WHERE project_id = $1 AND subject = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(project.as_str())
            .bind(subject)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(crate::events::event_from_row)
            .collect()
        })
    }
}
