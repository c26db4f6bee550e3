//! `tetherctl jobs`.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use crate::spec::{Exec, Placement, parse_kv};

#[derive(Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum JobsCmd {
    /// Submit a job: `tetherctl jobs submit -- /bin/echo hello`.
    Submit {
        #[command(flatten)]
        placement: Placement,
        /// Attempts in all.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Job labels, KEY=VALUE.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// A retried submit with the same key returns the first job.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Wait for the job to finish and exit with its status.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        exec: Exec,
    },
    /// Show one job with its attempts.
    Get { job_id: String },
    /// List jobs, newest first.
    List {
        #[arg(long, value_enum)]
        status: Option<JobStatusArg>,
        #[arg(long, default_value = "")]
        node: String,
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print a job's output.
    Logs {
        job_id: String,
        /// Keep streaming until the job ends.
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Cancel a job; its process tree is killed.
    Cancel { job_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum JobStatusArg {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: JobsCmd) -> anyhow::Result<i32> {
    match cmd {
        JobsCmd::Submit { placement, attempts, priority, timeout, labels, idempotency_key, wait, exec } => {
            let spec = pb::JobSpec {
                driver: "exec".into(),
                exec: Some(exec.spec(timeout)),
                resources: Some(placement.resources()),
                constraints: Some(placement.constraints()),
                max_attempts: attempts,
                priority,
            };
            let labels: HashMap<_, _> = labels.into_iter().collect();
            let job = c
                .jobs()
                .submit_job(pb::SubmitJobRequest { spec: Some(spec), labels, idempotency_key })
                .await?
                .into_inner()
                .job
                .expect("a job");
            if !wait {
                out.job(&job);
                return Ok(0);
            }
            let mut s = c.jobs().watch_job(pb::WatchJobRequest { job_id: job.job_id.clone() }).await?.into_inner();
            let mut last = job;
            while let Some(ev) = s.message().await? {
                if let Some(j) = ev.job {
                    last = j;
                }
            }
            let full = c.jobs().get_job(pb::GetJobRequest { job_id: last.job_id.clone() }).await?.into_inner().job;
            out.job(full.as_ref().unwrap_or(&last));
            return Ok(if last.status == pb::JobStatus::Succeeded as i32 { 0 } else { 3 });
        }
        JobsCmd::Get { job_id } => {
            let r = c.jobs().get_job(pb::GetJobRequest { job_id }).await?.into_inner();
            out.job(r.job.as_ref().expect("a job"));
        }
        JobsCmd::List { status, node, selector, limit } => {
            let status = status.map(|s| match s {
                JobStatusArg::Pending => pb::JobStatus::Pending,
                JobStatusArg::Scheduled => pb::JobStatus::Scheduled,
                JobStatusArg::Running => pb::JobStatus::Running,
                JobStatusArg::Succeeded => pb::JobStatus::Succeeded,
                JobStatusArg::Failed => pb::JobStatus::Failed,
                JobStatusArg::Cancelled => pb::JobStatus::Cancelled,
                JobStatusArg::Lost => pb::JobStatus::Lost,
            });
            let r = c
                .jobs()
                .list_jobs(pb::ListJobsRequest {
                    status: status.map(|s| s as i32).unwrap_or(0),
                    node_id: node,
                    label_selector: selector,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            out.jobs(&r);
        }
        JobsCmd::Logs { job_id, follow, offset } => {
            let mut s =
                c.jobs().stream_job_logs(pb::StreamJobLogsRequest { job_id, offset, follow }).await?.into_inner();
            while let Some(chunk) = s.message().await? {
                out.log_chunk(&chunk);
            }
        }
        JobsCmd::Cancel { job_id } => {
            let r = c.jobs().cancel_job(pb::CancelJobRequest { job_id }).await?.into_inner();
            out.job(r.job.as_ref().expect("a job"));
        }
    }
    Ok(0)
}
