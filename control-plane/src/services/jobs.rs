//! `tether.v1.JobService`.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::pb;
use tether_types::{
    Error, Job, JobId, JobSpec, JobStatus, LabelSelector, Labels, NodeId, Role, millis_to_timestamp,
    validate_job_labels,
};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::App;

use crate::stream::BoxStream;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
const POLL: Duration = Duration::from_secs(1);

pub struct JobApi {
    app: Arc<App>,
}

impl JobApi {
    pub fn new(app: Arc<App>) -> Self {
        JobApi { app }
    }

    async fn job_pb(&self, job: &Job) -> Result<pb::Job, Status> {
        let attempts = self.app.store.job_allocations(&job.id).await.map_err(store_status)?;
        Ok(job_to_pb(job, &attempts))
    }

    /// Why a pending job waits, where that is the project's quota.
    async fn pending_reason(&self, access: &tether_types::ProjectAccess, job: &Job) -> Result<String, Status> {
        let active = self.app.store.allocations_active().await.map_err(store_status)?;
        let used = crate::dispatch::usage(&active).used(&access.project);
        if let Some(why) = access.quota.exceeded_by(&used, &job.spec.resources) {
            return Ok(why);
        }
        // A secret it needs that no node can open yet.
        for r in &job.spec.exec.secrets {
            let version = (r.version != 0).then_some(r.version);
            match self.app.store.secret_get(&job.project_id, &r.name, version).await.map_err(store_status)? {
                None if r.version == 0 => return Ok(format!("secret {} not found", r.name)),
                None => return Ok(format!("secret {} version {} not found", r.name, r.version)),
                Some(v) if v.sealed_to.is_empty() => {
                    return Ok(format!("secret {} version {} is sealed to no node yet", r.name, v.version));
                }
                Some(_) => {}
            }
        }
        Ok(String::new())
    }

    async fn load(&self, project: &tether_types::ProjectId, id: &str) -> Result<Job, Status> {
        let id = JobId::parse(id).map_err(status)?;
        match self.app.store.job_get(&id).await.map_err(store_status)? {
            Some(j) if &j.project_id == project => Ok(j),
            _ => Err(status(Error::not_found(format!("job {id} not found")))),
        }
    }
}

pub fn job_to_pb(job: &Job, attempts: &[tether_types::Allocation]) -> pb::Job {
    pb::Job {
        job_id: job.id.to_string(),
        project_id: job.project_id.to_string(),
        spec: Some(job.spec.to_pb()),
        labels: job.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        status: job.status.to_pb() as i32,
        attempt: job.attempt,
        node_id: job.node_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        exit_code: job.exit_code.unwrap_or_default(),
        error: job.error.clone(),
        created_at: Some(millis_to_timestamp(job.created_at)),
        updated_at: Some(millis_to_timestamp(job.updated_at)),
        attempts: attempts
            .iter()
            .map(|a| pb::JobAttempt {
                attempt: a.attempt,
                node_id: a.node_id.to_string(),
                status: a.status.as_str().into(),
                exit_code: a.exit_code.unwrap_or_default(),
                error: a.error.clone(),
                scheduled_at: Some(millis_to_timestamp(a.scheduled_at)),
                started_at: a.started_at.map(millis_to_timestamp),
                finished_at: a.finished_at.map(millis_to_timestamp),
            })
            .collect(),
        pending_reason: String::new(),
    }
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(&self, req: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let req = req.into_inner();
        let spec =
            JobSpec::try_from(req.spec.ok_or_else(|| status(Error::invalid("spec is required")))?).map_err(status)?;
        let labels: Labels = req.labels.into_iter().collect();
        validate_job_labels(&labels).map_err(status)?;
        if tether_types::chars(&req.idempotency_key) > 255 {
            return Err(status(Error::invalid("idempotency_key is at most 255 characters")));
        }
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let (job, created) =
            crate::ops::jobs::submit(&self.app, p.id(), spec, labels, key).await.map_err(store_status)?;
        if created {
            // A new job has no attempts yet: nothing more to read.
            return Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_pb(&job, &[])) }));
        }
        Ok(Response::new(pb::SubmitJobResponse { job: Some(self.job_pb(&job).await?) }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let job = self.load(p.id(), &req.get_ref().job_id).await?;
        let mut pb = self.job_pb(&job).await?;
        if job.status == JobStatus::Pending {
            pb.pending_reason = self.pending_reason(&p.access, &job).await?;
        }
        Ok(Response::new(pb::GetJobResponse { job: Some(pb) }))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let req = req.into_inner();
        let status_f = JobStatus::from_pb(req.status).map_err(status)?;
        let node = (!req.node_id.is_empty()).then(|| NodeId::parse(&req.node_id)).transpose().map_err(status)?;
        let selector = LabelSelector::parse(&req.label_selector).map_err(status)?;
        let want = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut before = if req.page_token.is_empty() {
            None
        } else {
            let bad = || status(Error::invalid("page_token is malformed; pass next_page_token unchanged"));
            let (at, id) = req.page_token.split_once('.').ok_or_else(bad)?;
            Some((at.parse::<i64>().map_err(|_| bad())?, JobId::parse(id).map_err(|_| bad())?))
        };
        let mut jobs = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .app
                .store
                .job_list(p.id(), status_f, node.as_ref(), before.as_ref(), want)
                .await
                .map_err(store_status)?;
            let exhausted = page.next.is_none();
            for j in page.jobs {
                if !selector.matches(&j.labels) {
                    continue;
                }
                if jobs.len() == want as usize {
                    next = before.clone();
                    break;
                }
                before = Some((j.created_at, j.id.clone()));
                jobs.push(job_to_pb(&j, &[]));
            }
            if next.is_some() || exhausted {
                break;
            }
            before = page.next;
        }
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: next.map(|(at, id)| format!("{at}.{id}")).unwrap_or_default(),
        }))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let id = JobId::parse(&req.get_ref().job_id).map_err(status)?;
        let job = crate::ops::jobs::cancel(&self.app, p.id(), &id).await.map_err(store_status)?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(self.job_pb(&job).await?) }))
    }

    type WatchJobStream = BoxStream<pb::WatchJobResponse>;

    async fn watch_job(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let job = self.load(p.id(), &req.get_ref().job_id).await?;
        let project = p.id().clone();
        let (tx, rx) = crate::stream::channel(64);
        let app = self.app.clone();
        let mut wake = self.app.notify.subscribe();
        // Every state change from submission on, then live ones until terminal.
        self.app.tasks.spawn(async move {
            let mut cursor = 0i64;
            loop {
                let events = match app.store.events_for_subject(&project, job.id.as_str(), cursor, 500).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                for ev in &events {
                    cursor = ev.seq;
                    let Ok(j) = serde_json::from_value::<Job>(ev.payload.clone()) else { continue };
                    let terminal = j.status.is_terminal();
                    let msg = pb::WatchJobResponse {
                        job: Some(job_to_pb(&j, &[])),
                        kind: ev.kind.clone(),
                        sequence: ev.seq as u64,
                    };
                    if tx.send(Ok(msg)).await.is_err() || terminal {
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    _ = app.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("control plane is shutting down; watch again"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Ok(Response::new(crate::stream::idle_limited(rx, self.app.config.stream_idle_timeout)))
    }

    type StreamJobLogsStream = BoxStream<pb::StreamJobLogsResponse>;

    async fn stream_job_logs(
        &self,
        req: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Support)?;
        let req = req.into_inner();
        let job = self.load(p.id(), &req.job_id).await?;
        let (tx, rx) = crate::stream::channel(16);
        let app = self.app.clone();
        self.app.tasks.spawn(async move {
            let mut pos = req.offset;
            let mut attempt = job.attempt.max(1);
            let mut trailing_checked = false;
            loop {
                // Register for a wake-up before reading, so nothing is missed.
                let notified = app.signals.job_output();
                let current = match app.store.job_get(&job.id).await {
                    Ok(Some(j)) => j,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                if req.follow && current.attempt > attempt {
                    // A new attempt: follow its output from the start.
                    attempt = current.attempt;
                    pos = 0;
                }
                let chunks = match app.store.job_logs(&job.id, attempt, pos, 256 * 1024).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let got = !chunks.is_empty();
                for c in chunks {
                    pos = c.pos + c.data.len() as u64;
                    let msg = pb::StreamJobLogsResponse { offset: c.pos, data: c.data, attempt, truncated: c.truncated };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if got {
                    continue;
                }
                if !req.follow {
                    return;
                }
                if current.status.is_terminal() {
                    // Output may trail the finish report by a moment: look once more.
                    if trailing_checked {
                        return;
                    }
                    trailing_checked = true;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = app.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("control plane is shutting down; resume at the last offset"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    _ = notified => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Ok(Response::new(crate::stream::idle_limited(rx, self.app.config.stream_idle_timeout)))
    }
}
