//! A short smoke of each load-generator scenario, so the benchmarks keep
//! working: a small simulated fleet with job dispatch, job submission to real
//! agents, and the scheduler alone. Figures come from docs/benchmarks.md runs,
//! never from here.

use std::time::Duration;

use tether_proto::pb;

use crate::harness::*;

both_backends!(loadgen_scenarios_run, loadgen_rides_out_a_restart);

async fn loadgen(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(bin_dir().join("tether-loadgen")).args(args).output().await.unwrap();
    assert!(out.status.success(), "tether-loadgen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `tether-loadgen agents` with 20 simulated agents against `cp`, plus `extra`.
fn fleet_args(cp: &ControlPlane, extra: &[&str]) -> Vec<String> {
    let ids = cp.dir.path().join("ids.json");
    let mut args: Vec<String> = ["--addr", &cp.url(), "--token", &cp.admin_token, "agents", "--count", "20"]
        .into_iter()
        .chain(["--join-token", &cp.join_token, "--identities", ids.to_str().unwrap(), "--ramp", "200"])
        .map(String::from)
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn loadgen_scenarios_run(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let args = fleet_args(&cp, &["--hold-secs", "2", "--submit", "5", "--submit-rate", "20"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fleet = loadgen(&args).await;
    assert_eq!(fleet["sessions_opened"], 20, "{fleet}");
    assert_eq!(fleet["jobs"]["submit_to_agent_ms"]["arrived"], 5, "{fleet}");
    assert_eq!(fleet["jobs"]["succeeded"], 5, "{fleet}");
    assert_eq!(fleet["jobs_finished"], 5, "{fleet}");
    assert_eq!(fleet["outages"], serde_json::json!([]), "{fleet}");
    // The jobs really went through the simulated agents.
    let done = cp
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest { status: pb::JobStatus::Succeeded as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.jobs.len(), 5);

    let placed = loadgen(&["--token", "unused", "placement", "--nodes", "200", "--placements", "500"]).await;
    assert_eq!(placed["placed"], 500, "{placed}");
}

/// The reconnect-storm scenario in small: simulated agents running jobs ride
/// out a control-plane restart; the load generator sees one outage that
/// ends with every agent connected again, and every job succeeds on its
/// first attempt (none lost).
async fn loadgen_rides_out_a_restart(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let args = fleet_args(&cp, &["--hold-secs", "12", "--submit", "5", "--submit-rate", "50", "--job-ms", "3000"]);
    let run = tokio::process::Command::new(bin_dir().join("tether-loadgen")).args(&args).kill_on_drop(true).output();
    let run = tokio::spawn(run);
    // Restart while the five jobs are running on the simulated agents.
    eventually(Duration::from_secs(20), "five jobs running", || {
        let cp = &cp;
        async move {
            let mut jobs = cp.jobs().await;
            let r = jobs
                .list_jobs(pb::ListJobsRequest { status: pb::JobStatus::Running as i32, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (r.jobs.len() == 5).then_some(())
        }
    })
    .await;
    cp.stop(libc::SIGTERM).await;
    cp.restart().await;
    let out = run.await.unwrap().unwrap();
    assert!(out.status.success(), "tether-loadgen: {}", String::from_utf8_lossy(&out.stderr));
    let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outages = fleet["outages"].as_array().unwrap();
    assert_eq!(outages.len(), 1, "{fleet}");
    assert!(outages[0]["recovered_secs"].as_f64().is_some(), "{fleet}");
    assert_eq!(fleet["jobs"]["succeeded"], 5, "{fleet}");
    let mut jobs = cp.jobs().await;
    let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 5);
    for j in listed {
        let j = jobs.get_job(pb::GetJobRequest { job_id: j.job_id }).await.unwrap().into_inner().job.unwrap();
        assert_eq!(j.attempts.len(), 1, "job {} was retried: {j:?}", j.job_id);
    }
}
