//! A short smoke of each load-generator scenario, so the benchmarks keep
//! working: a small simulated fleet with job dispatch, job submission to real
//! agents, and the scheduler alone. Figures come from docs/benchmarks.md runs,
//! never from here.

use tether_proto::pb;

use crate::harness::*;

both_backends!(loadgen_scenarios_run);

async fn loadgen(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(bin_dir().join("tether-loadgen")).args(args).output().await.unwrap();
    assert!(out.status.success(), "tether-loadgen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn loadgen_scenarios_run(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let ids = cp.dir.path().join("ids.json");
    let url = cp.url();
    let fleet = loadgen(&[
        "--addr",
        &url,
        "--token",
        &cp.admin_token,
        "agents",
        "--count",
        "20",
        "--join-token",
        &cp.join_token,
        "--identities",
        ids.to_str().unwrap(),
        "--ramp",
        "200",
        "--hold-secs",
        "2",
        "--submit",
        "5",
        "--submit-rate",
        "20",
    ])
    .await;
    assert_eq!(fleet["sessions_opened"], 20, "{fleet}");
    assert_eq!(fleet["submit_to_agent_ms"]["arrived"], 5, "{fleet}");
    assert_eq!(fleet["jobs_finished"], 5, "{fleet}");
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
