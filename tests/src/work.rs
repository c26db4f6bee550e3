//! Work end to end: jobs over the job stream, crashes on both sides,
//! cancellation, workloads under drain and stop, and refusals of bad specs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use tether_proto::pb::{self, JobStatus};
use tonic::Code;

use crate::harness::*;

both_backends!(
    a_thousand_short_jobs_each_run_exactly_once,
    control_plane_killed_with_jobs_in_flight_loses_none,
    agent_killed_mid_job_is_lost_and_retried_elsewhere,
    cancel_kills_the_whole_process_tree,
    drain_moves_replicas_and_stop_stops_everything,
    bad_specs_are_refused_and_nothing_is_stored,
    workloads_restart_roll_out_scale_and_avoid_paused_nodes,
);

pub(crate) fn shell(script: &str) -> pb::ExecSpec {
    pb::ExecSpec { command: "/bin/sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() }
}

pub(crate) fn job(script: &str, max_attempts: u32) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            driver: "exec".into(),
            exec: Some(shell(script)),
            resources: Some(pb::Resources { cpu_millis: 10, memory_mb: 1, gpus: 0 }),
            max_attempts,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Lines "job attempt" appended by job scripts; returns counts per pair.
fn ran(path: &Path) -> HashMap<(String, u32), u32> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(j), Some(a)) = (it.next(), it.next()) {
            *out.entry((j.to_owned(), a.parse().unwrap())).or_insert(0) += 1;
        }
    }
    out
}

async fn all_jobs(cp: &ControlPlane) -> Vec<pb::Job> {
    let mut client = cp.jobs().await;
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn submit_many(cp: &ControlPlane, n: usize, script: &str, max_attempts: u32) -> Vec<String> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let per = n.div_ceil(16);
    for w in 0..16 {
        let mut client = cp.jobs().await;
        let script = script.to_owned();
        let count = per.min(n.saturating_sub(w * per));
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..count {
                let j = client.submit_job(job(&script, max_attempts)).await.unwrap().into_inner().job.unwrap();
                ids.push(j.job_id);
            }
            ids
        });
    }
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    eprintln!("submitted {n} jobs in {:?}", started.elapsed());
    ids
}

async fn a_thousand_short_jobs_each_run_exactly_once(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = ["w1", "w2", "w3"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    cp.wait_nodes(3, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let log = cp.dir.path().join("ran.log");
    let script = format!("echo \"$TETHER_JOB_ID $TETHER_JOB_ATTEMPT\" >> {}", log.display());
    let t0 = Instant::now();
    let ids = submit_many(&cp, 1000, &script, 1).await;
    let jobs = eventually(Duration::from_secs(240), "1000 jobs to succeed", || async {
        let jobs = all_jobs(&cp).await;
        let done = jobs.iter().filter(|j| j.status == JobStatus::Succeeded as i32).count();
        let bad: Vec<_> = jobs.iter().filter(|j| j.status > JobStatus::Succeeded as i32).collect();
        assert!(bad.is_empty(), "jobs failed: {:?}", bad.first());
        (done == 1000).then_some(jobs)
    })
    .await;
    let took = t0.elapsed();
    eprintln!("1000 jobs submitted and finished in {took:?} ({:.0} jobs/s)", 1000.0 / took.as_secs_f64());
    let counts = ran(&log);
    assert_eq!(counts.len(), 1000, "every job ran");
    assert!(counts.values().all(|&c| c == 1), "no job ran twice");
    let want: HashSet<_> = ids.iter().cloned().collect();
    assert!(counts.keys().all(|(j, a)| want.contains(j) && *a == 1));
    // All three agents took part.
    let nodes: HashSet<_> = jobs.iter().map(|j| j.node_id.clone()).collect();
    assert_eq!(nodes.len(), 3, "work spread over the three agents");
    drop(agents);
}

async fn control_plane_killed_with_jobs_in_flight_loses_none(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = ["k1", "k2", "k3"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    cp.wait_nodes(3, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let log = cp.dir.path().join("ran.log");
    let script = format!("echo \"$TETHER_JOB_ID $TETHER_JOB_ATTEMPT\" >> {}; sleep 0.3", log.display());
    submit_many(&cp, 200, &script, 3).await;
    // Kill it while jobs are scheduled, running and finishing.
    eventually(Duration::from_secs(30), "some jobs to run", || async { (ran(&log).len() >= 20).then_some(()) }).await;
    let before = all_jobs(&cp).await;
    let in_flight = before.iter().filter(|j| j.status != JobStatus::Succeeded as i32).count();
    eprintln!("killing the control plane with {in_flight} of 200 jobs not yet finished");
    assert!(in_flight > 0);
    cp.stop(libc::SIGKILL).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cp.restart().await;
    let jobs = eventually(Duration::from_secs(180), "all 200 jobs terminal", || async {
        let jobs = all_jobs(&cp).await;
        let terminal = jobs.iter().filter(|j| j.status >= JobStatus::Succeeded as i32).count();
        (terminal == 200).then_some(jobs)
    })
    .await;
    let failed: Vec<_> = jobs.iter().filter(|j| j.status != JobStatus::Succeeded as i32).collect();
    assert!(failed.is_empty(), "none lost or failed: {failed:?}");
    let counts = ran(&log);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "a (job, attempt) ran twice: {twice:?}");
    let distinct_jobs: HashSet<_> = counts.keys().map(|(j, _)| j.clone()).collect();
    assert_eq!(distinct_jobs.len(), 200);
    drop(agents);
}

async fn agent_killed_mid_job_is_lost_and_retried_elsewhere(backend: Backend) {
    let cp = ControlPlane::start_with(backend, Duration::from_secs(3)).await;
    let agents: Vec<Agent> = ["m1", "m2"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    let ids = [agents[0].node_id().await, agents[1].node_id().await];
    cp.wait_nodes(2, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut client = cp.jobs().await;
    let j = client
        .submit_job(job("if [ \"$TETHER_JOB_ATTEMPT\" = 1 ]; then sleep 120; fi; echo finished", 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let running = eventually(Duration::from_secs(20), "job running", || async {
        let j = get_job(&client, &j.job_id).await;
        (j.status == JobStatus::Running as i32).then_some(j)
    })
    .await;
    let victim = ids.iter().position(|id| *id == running.node_id).expect("runs on one of ours");
    agents[victim].signal(libc::SIGKILL);
    let t0 = Instant::now();
    let done = eventually(Duration::from_secs(40), "job finished elsewhere", || async {
        let j = get_job(&client, &j.job_id).await;
        (j.status == JobStatus::Succeeded as i32).then_some(j)
    })
    .await;
    eprintln!("lost and retried in {:?}", t0.elapsed());
    assert_eq!(done.attempt, 2);
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(done.attempts[0].status, "lost");
    assert_eq!(done.attempts[0].node_id, running.node_id);
    assert_ne!(done.attempts[1].node_id, running.node_id, "the retry ran on another node");
    assert_eq!(done.attempts[1].status, "succeeded");
    // Its output is the second attempt's.
    let mut logs = client
        .stream_job_logs(pb::StreamJobLogsRequest { job_id: j.job_id.clone(), offset: 0, follow: false })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = logs.message().await.unwrap() {
        out.extend(c.data);
    }
    assert_eq!(String::from_utf8(out).unwrap(), "finished\n");
}

pub(crate) async fn get_job(c: &tether_proto::pb::job_service_client::JobServiceClient<Authed>, id: &str) -> pb::Job {
    let mut c = c.clone();
    c.get_job(pb::GetJobRequest { job_id: id.to_owned() }).await.unwrap().into_inner().job.unwrap()
}

async fn get_node(c: &tether_proto::pb::node_service_client::NodeServiceClient<Authed>, id: &str) -> Option<pb::Node> {
    let mut c = c.clone();
    c.get_node(pb::GetNodeRequest { node_id: id.to_owned() }).await.unwrap().into_inner().node
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

async fn cancel_kills_the_whole_process_tree(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "c1", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let dir = cp.dir.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    let mut req = job("sleep 300 & echo $! > child.pid; echo $$ > parent.pid; echo started; wait", 1);
    req.spec.as_mut().unwrap().exec.as_mut().unwrap().working_dir = dir.display().to_string();
    let mut client = cp.jobs().await;
    let j = client.submit_job(req).await.unwrap().into_inner().job.unwrap();
    let pids = eventually(Duration::from_secs(20), "both processes to start", || async {
        let c = std::fs::read_to_string(dir.join("child.pid")).ok()?.trim().parse::<i32>().ok()?;
        let p = std::fs::read_to_string(dir.join("parent.pid")).ok()?.trim().parse::<i32>().ok()?;
        Some([p, c])
    })
    .await;
    assert!(pids.iter().all(|p| alive(*p)));
    // Follow the logs while it runs: they end when the job does.
    let mut logs = client
        .stream_job_logs(pb::StreamJobLogsRequest { job_id: j.job_id.clone(), offset: 0, follow: true })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), logs.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.data, b"started\n");
    let cancelled = client.cancel_job(pb::CancelJobRequest { job_id: j.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.job.unwrap().status, JobStatus::Cancelled as i32);
    eventually(Duration::from_secs(10), "parent and child killed", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let end =
        tokio::time::timeout(Duration::from_secs(10), async { while logs.message().await.unwrap().is_some() {} }).await;
    assert!(end.is_ok(), "following logs ends with the job");
    let j = eventually(Duration::from_secs(10), "attempt stopped", || async {
        let j = get_job(&client, &j.job_id).await;
        (j.attempts.first().is_some_and(|a| a.status == "stopped")).then_some(j)
    })
    .await;
    assert_eq!(j.status, JobStatus::Cancelled as i32);
    // Cancelling again is refused.
    let e = client.cancel_job(pb::CancelJobRequest { job_id: j.job_id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    drop(agent);
}

async fn drain_moves_replicas_and_stop_stops_everything(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = ["d1", "d2", "d3"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    cp.wait_nodes(3, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut wl = cp.workloads().await;
    let w = wl
        .create_workload(pb::CreateWorkloadRequest {
            name: "web".into(),
            replicas: 2,
            spec: Some(pb::WorkloadSpec {
                driver: "exec".into(),
                exec: Some(pb::ExecSpec {
                    command: "/bin/sleep".into(),
                    args: vec!["1000".into()],
                    ..Default::default()
                }),
                resources: Some(pb::Resources { cpu_millis: 100, memory_mb: 16, gpus: 0 }),
                max_parallel: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workload
        .unwrap();
    let get = |wl: &tether_proto::pb::workload_service_client::WorkloadServiceClient<Authed>| {
        let mut wl = wl.clone();
        let id = w.workload_id.clone();
        async move {
            wl.get_workload(pb::GetWorkloadRequest { workload_id: id }).await.unwrap().into_inner().workload.unwrap()
        }
    };
    let running = eventually(Duration::from_secs(20), "2 replicas running", || async {
        let w = get(&wl).await;
        (w.running_replicas == 2).then_some(w)
    })
    .await;
    let nodes: HashSet<_> = running.allocations.iter().map(|a| a.node_id.clone()).collect();
    assert_eq!(nodes.len(), 2, "replicas are spread over two nodes");
    let drained = running.allocations[0].node_id.clone();

    let mut node_client = cp.nodes().await;
    let n = node_client
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id: drained.clone(),
            state: pb::DesiredNodeState::Draining as i32,
            reason: "kernel upgrade".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(n.desired_state, pb::DesiredNodeState::Draining as i32);
    // Watch the move: never below N-1 running.
    let min_running = std::cell::Cell::new(u32::MAX);
    let moved = eventually(Duration::from_secs(30), "replica moved off the draining node", || async {
        let w = get(&wl).await;
        min_running.set(min_running.get().min(w.running_replicas));
        let off = w.allocations.iter().all(|a| a.node_id != drained);
        (off && w.running_replicas == 2 && w.allocations.len() == 2).then_some(w)
    })
    .await;
    let min_running = min_running.get();
    assert!(min_running >= 1, "replica count fell to {min_running}");
    assert!(moved.allocations.iter().all(|a| a.status == "running"));
    // The agent acknowledged the draining version.
    let acked = eventually(Duration::from_secs(10), "desired state acked", || async {
        let n = get_node(&node_client, &drained).await?;
        (n.acked_desired_state_version == n.desired_state_version).then_some(n)
    })
    .await;
    assert_eq!(acked.desired_state_reason, "kernel upgrade");
    // The drained node runs nothing now.
    eventually(Duration::from_secs(10), "drained node idle", || async {
        let n = get_node(&node_client, &drained).await?;
        (n.usage?.running_allocations == 0).then_some(())
    })
    .await;

    // Stop a node holding a replica: everything on it stops, and the replica
    // is replaced on the one node still eligible.
    let stopped = moved.allocations[0].node_id.clone();
    let mut jobs = cp.jobs().await;
    let mut pinned = job("sleep 300", 1);
    pinned.spec.as_mut().unwrap().constraints =
        Some(pb::Constraints { label_selector: String::new(), ..Default::default() });
    let j = jobs.submit_job(pinned).await.unwrap().into_inner().job.unwrap();
    let j_node = eventually(Duration::from_secs(20), "job running", || async {
        let j = get_job(&jobs, &j.job_id).await;
        (j.status == JobStatus::Running as i32).then_some(j.node_id)
    })
    .await;
    node_client
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id: stopped.clone(),
            state: pb::DesiredNodeState::Stopped as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "stopped node empty and replicas back to 2", || async {
        let w = get(&wl).await;
        let n = get_node(&node_client, &stopped).await?;
        let idle = n.usage?.running_allocations == 0;
        let off = w.allocations.iter().all(|a| a.node_id != stopped);
        (idle && off && w.running_replicas == 2).then_some(())
    })
    .await;
    if j_node == stopped {
        let j = get_job(&jobs, &j.job_id).await;
        assert_eq!(j.attempts[0].status, "lost", "the stopped node's job attempt was stopped");
    }
    drop(agents);
}

async fn bad_specs_are_refused_and_nothing_is_stored(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "b1", &[]);
    let node = agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut client = cp.jobs().await;
    let base = || job("true", 1);
    let mut cases: BTreeMap<&str, (pb::SubmitJobRequest, Code)> = BTreeMap::new();
    let mut r = base();
    r.spec.as_mut().unwrap().driver = "docker".into();
    cases.insert("unknown driver", (r, Code::InvalidArgument));
    let mut r = base();
    r.spec.as_mut().unwrap().resources = Some(pb::Resources { cpu_millis: -5, memory_mb: 1, gpus: 0 });
    cases.insert("negative resources", (r, Code::InvalidArgument));
    let mut r = base();
    r.spec.as_mut().unwrap().constraints =
        Some(pb::Constraints { label_selector: "zone in (a".into(), ..Default::default() });
    cases.insert("bad selector", (r, Code::InvalidArgument));
    let mut r = base();
    r.spec.as_mut().unwrap().constraints = Some(pb::Constraints { gpu_model: "H100".into(), ..Default::default() });
    cases.insert("impossible gpu", (r, Code::FailedPrecondition));
    let mut r = base();
    r.spec.as_mut().unwrap().resources = Some(pb::Resources { cpu_millis: 10, memory_mb: 1 << 40, gpus: 0 });
    cases.insert("impossible memory", (r, Code::InvalidArgument));
    let mut r = base();
    r.spec.as_mut().unwrap().resources = Some(pb::Resources { cpu_millis: 999_000, memory_mb: 1, gpus: 0 });
    cases.insert("more cpu than any node", (r, Code::FailedPrecondition));
    let mut r = base();
    r.spec.as_mut().unwrap().exec = None;
    cases.insert("no exec", (r, Code::InvalidArgument));
    cases.insert("no spec", (pb::SubmitJobRequest::default(), Code::InvalidArgument));
    for (name, (req, code)) in cases {
        let e = client.submit_job(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e:?}");
    }
    assert!(all_jobs(&cp).await.is_empty(), "nothing stored");
    // A viewer cannot submit.
    let viewer = cp
        .tenancy_as(Some(&cp.admin_token))
        .await
        .create_token(pb::CreateTokenRequest { role: pb::Role::Viewer as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut as_viewer = tether_proto::pb::job_service_client::JobServiceClient::with_interceptor(
        cp.channel().await,
        bearer(Some(&viewer)),
    );
    assert_eq!(as_viewer.submit_job(base()).await.unwrap_err().code(), Code::PermissionDenied);
    // Workloads and desired states validate too.
    let mut wl = cp.workloads().await;
    let e = wl
        .create_workload(pb::CreateWorkloadRequest {
            name: "Bad Name".into(),
            replicas: 1,
            spec: base().spec.map(|s| pb::WorkloadSpec { driver: s.driver, exec: s.exec, ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(wl.list_workloads(pb::ListWorkloadsRequest {}).await.unwrap().into_inner().workloads.is_empty());
    let e = cp
        .nodes()
        .await
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id: node.clone(),
            state: pb::DesiredNodeState::Quarantined as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "quarantine needs a reason");
    // Idempotent submit: a retry returns the first job.
    let mut keyed = base();
    keyed.idempotency_key = "deploy-42".into();
    let a = client.submit_job(keyed.clone()).await.unwrap().into_inner().job.unwrap();
    let b = client.submit_job(keyed).await.unwrap().into_inner().job.unwrap();
    assert_eq!(a.job_id, b.job_id);
    assert_eq!(all_jobs(&cp).await.len(), 1);
    // Placement suggestions explain themselves and change nothing.
    let s = cp
        .placement()
        .await
        .suggest_placement(pb::SuggestPlacementRequest {
            resources: Some(pb::Resources { cpu_millis: 100, memory_mb: 10, gpus: 0 }),
            objective: pb::Objective::Cost as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.candidates.len(), 1);
    assert_eq!(s.candidates[0].node_id, node);
    assert!(s.candidates[0].reasons.iter().any(|r| r.starts_with("binpack=")));
    let s = cp
        .placement()
        .await
        .suggest_placement(pb::SuggestPlacementRequest {
            constraints: Some(pb::Constraints { pool: "gpu".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.candidates.is_empty());
    assert!(s.filtered[0].reason.contains("pool"), "{:?}", s.filtered);
    drop(agent);
}

async fn workloads_restart_roll_out_scale_and_avoid_paused_nodes(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = ["s1", "s2", "s3"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    let nodes = cp.wait_nodes(3, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut wl = cp.workloads().await;
    let spec = |script: &str| pb::WorkloadSpec {
        driver: "exec".into(),
        exec: Some(shell(script)),
        resources: Some(pb::Resources { cpu_millis: 10, memory_mb: 1, gpus: 0 }),
        restart_policy: pb::RestartPolicy::Always as i32,
        max_parallel: 1,
        ..Default::default()
    };
    let w = wl
        .create_workload(pb::CreateWorkloadRequest {
            name: "flaky".into(),
            replicas: 1,
            spec: Some(spec("sleep 0.2; exit 1")),
        })
        .await
        .unwrap()
        .into_inner()
        .workload
        .unwrap();
    let id = w.workload_id.clone();
    let reader = wl.clone();
    let get = || {
        let mut wl = reader.clone();
        let id = id.clone();
        async move {
            wl.get_workload(pb::GetWorkloadRequest { workload_id: id }).await.unwrap().into_inner().workload.unwrap()
        }
    };
    // A crashing service is restarted on its node, and the restarts are reported.
    let crashing = eventually(Duration::from_secs(20), "restarts reported", || async {
        let w = get().await;
        (w.allocations.len() == 1 && w.allocations[0].restarts >= 2).then_some(w)
    })
    .await;
    let first_alloc = crashing.allocations[0].allocation_id.clone();
    // Roll out a fixed spec: the replica is replaced by one of the new version.
    let updated = wl
        .update_workload(pb::UpdateWorkloadRequest { workload_id: id.clone(), spec: Some(spec("sleep 1000")) })
        .await
        .unwrap()
        .into_inner()
        .workload
        .unwrap();
    assert_eq!(updated.spec_version, 2);
    eventually(Duration::from_secs(20), "rolled out", || async {
        let w = get().await;
        let ok = w.allocations.len() == 1
            && w.allocations[0].spec_version == 2
            && w.allocations[0].status == "running"
            && w.allocations[0].allocation_id != first_alloc;
        ok.then_some(())
    })
    .await;
    // Pause one node: scaled-up replicas avoid it.
    let paused = nodes[0].node_id.clone();
    cp.nodes()
        .await
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id: paused.clone(),
            state: pb::DesiredNodeState::Paused as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let current = get().await;
    let on_paused_before = current.allocations.iter().filter(|a| a.node_id == paused).count();
    wl.scale_workload(pb::ScaleWorkloadRequest { workload_id: id.clone(), replicas: 4 }).await.unwrap();
    let scaled = eventually(Duration::from_secs(20), "4 replicas running", || async {
        let w = get().await;
        (w.running_replicas == 4 && w.allocations.len() == 4).then_some(w)
    })
    .await;
    let on_paused = scaled.allocations.iter().filter(|a| a.node_id == paused).count();
    assert_eq!(on_paused, on_paused_before, "no new replica on the paused node");
    let spread: HashSet<_> = scaled.allocations.iter().map(|a| a.node_id.clone()).collect();
    assert!(spread.len() >= 2, "replicas spread over the active nodes");
    wl.scale_workload(pb::ScaleWorkloadRequest { workload_id: id.clone(), replicas: 1 }).await.unwrap();
    eventually(Duration::from_secs(20), "scaled down to 1", || async {
        let w = get().await;
        (w.allocations.len() == 1 && w.running_replicas == 1).then_some(())
    })
    .await;
    let deleted = wl.delete_workload(pb::DeleteWorkloadRequest { workload_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(deleted.workload.unwrap().name, "flaky");
    let e = wl.get_workload(pb::GetWorkloadRequest { workload_id: id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Its processes stop on the nodes.
    eventually(Duration::from_secs(20), "nothing left running", || async {
        let nodes = cp.list_nodes().await;
        nodes.iter().all(|n| n.usage.as_ref().is_some_and(|u| u.running_allocations == 0)).then_some(())
    })
    .await;
    drop(agents);
}
