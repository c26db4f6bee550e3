//! Faults as part of the contract, made for real: a network partition inside
//! network namespaces this test creates (iptables drops), healed before and
//! after HTTP/2 keepalive ends the session; a slow link (a relay that holds
//! every chunk); PostgreSQL stopped under running jobs; the SQLite data dir
//! on a tmpfs that fills up. Each asserts: nothing acknowledged is lost,
//! nothing runs twice or past its loss for one attempt, every job ends in a
//! terminal state without operator action.
//!
//! Needs root (namespaces, iptables, mount), as `./scripts/test` runs.

mod network;
mod storage;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tether_proto::pb::{self, JobStatus};

use crate::harness::*;
use network::{
    partition, partition_healed_before_keepalive_runs_no_attempt_past_its_loss, slow_link_does_not_flap_a_new_node,
    stopped_agent,
};
use storage::{database_outage, full_disk};

both_backends!(partition_healed_before_keepalive_runs_no_attempt_past_its_loss, slow_link_does_not_flap_a_new_node);

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_healed_after_keepalive_resyncs_on_reconnect() {
        partition(Backend::Sqlite, Duration::from_secs(24)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopped_agent_gives_its_attempts_up_when_it_resumes() {
        stopped_agent().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_disk_loses_no_acknowledged_write() {
        full_disk().await;
    }
}

mod postgres_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_stopped_under_running_jobs() {
        database_outage().await;
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn job_req(script: &str, max_attempts: u32, selector: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            driver: "exec".into(),
            exec: Some(pb::ExecSpec {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            }),
            resources: Some(pb::Resources { cpu_millis: 10, memory_mb: 1, gpus: 0 }),
            constraints: Some(pb::Constraints { label_selector: selector.into(), ..Default::default() }),
            max_attempts,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A job script that records its start in `dir/ran`, proves it is alive
/// every 200 ms in `dir/alive-JOB-ATTEMPT` (Unix ms), and marks its end.
fn marking_script(dir: &Path, ticks: u32) -> String {
    let d = dir.display();
    format!(
        "id=$TETHER_JOB_ID-$TETHER_JOB_ATTEMPT; echo \"$TETHER_JOB_ID $TETHER_JOB_ATTEMPT\" >> {d}/ran; i=0; \
         while [ $i -lt {ticks} ]; do date +%s%3N > {d}/alive-$id.tmp && mv {d}/alive-$id.tmp {d}/alive-$id; \
         sleep 0.2; i=$((i+1)); done; touch {d}/done-$id"
    )
}

/// How often each (job, attempt) started, from `dir/ran`.
fn starts(dir: &Path) -> HashMap<(String, u32), u32> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(dir.join("ran")).unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(j), Some(a)) = (it.next(), it.next()) {
            *out.entry((j.to_owned(), a.parse().unwrap())).or_insert(0) += 1;
        }
    }
    out
}

/// Submits `n` jobs running `script` (one attempt each); returns their ids.
async fn submit(cp: &ControlPlane, script: &str, n: usize) -> Vec<String> {
    let mut jobs = cp.jobs().await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(jobs.submit_job(job_req(script, 1, "")).await.unwrap().into_inner().job.unwrap().job_id);
    }
    ids
}

/// No (job, attempt) started twice.
fn each_started_once(dir: &Path) {
    for (k, n) in starts(dir) {
        assert_eq!(n, 1, "{k:?} started {n} times");
    }
}

/// Waits until every job in `ids` succeeded; returns them.
async fn all_succeeded(cp: &ControlPlane, ids: &[String]) -> Vec<pb::Job> {
    eventually(Duration::from_secs(40), "every job succeeded", || async {
        let mut out = Vec::new();
        for id in ids {
            let j = get_job(cp, id).await;
            if j.status != JobStatus::Succeeded as i32 {
                return None;
            }
            out.push(j);
        }
        Some(out)
    })
    .await
}

fn last_alive(dir: &Path, job: &str, attempt: u32) -> Option<i64> {
    std::fs::read_to_string(dir.join(format!("alive-{job}-{attempt}"))).ok()?.trim().parse().ok()
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0)
}

async fn get_job(cp: &ControlPlane, id: &str) -> pb::Job {
    cp.jobs().await.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner().job.unwrap()
}

async fn node_status(cp: &ControlPlane, id: &str) -> Option<i32> {
    cp.list_nodes().await.into_iter().find(|n| n.node_id == id).map(|n| n.status)
}
