//! The control plane's own operation: its background tasks listed over gRPC
//! and REST, and a task that skips a row it cannot decode instead of
//! stopping.

use std::time::Duration;

use serde_json::Value;
use tether_proto::pb;
use tonic::Code;

use crate::harness::*;

both_backends!(background_tasks_are_listed_over_grpc_and_rest, a_job_row_that_does_not_decode_is_skipped);

const TASKS: [&str; 14] = [
    "database_probe",
    "liveness",
    "lease_flush",
    "placement",
    "secret_reseal",
    "event_tail",
    "event_retention",
    "stale_nodes",
    "pools",
    "autoscaler",
    "scoring",
    "quarantine",
    "node_snapshot_refresh",
    "revocation_refresh",
];

async fn tasks(cp: &ControlPlane) -> Vec<pb::BackgroundTask> {
    let mut admin = cp.admin_as(Some(&cp.admin_token)).await;
    admin
        .list_background_tasks(pb::ListBackgroundTasksRequest {})
        .await
        .expect("ListBackgroundTasks")
        .into_inner()
        .tasks
}

async fn rest_tasks(cp: &ControlPlane, token: &str) -> (u16, Value) {
    let resp = crate::harness::http_client()
        .get(format!("http://{}/v1/background-tasks", cp.http_addr))
        .bearer_auth(token)
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

async fn background_tasks_are_listed_over_grpc_and_rest(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    // Every task has run at least once, and well.
    let listed = eventually(Duration::from_secs(20), "every task activated", || async {
        let t = tasks(&cp).await;
        t.iter().all(|t| t.activations > 0 && !t.running).then_some(t)
    })
    .await;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, TASKS, "every background task, in registration order");
    for t in &listed {
        assert_eq!(t.last_outcome, "ok", "{t:?}");
        assert_eq!(t.consecutive_failures, 0, "{t:?}");
        assert!(t.last_started_at.is_some() && t.last_duration.is_some() && t.period.is_some(), "{t:?}");
        assert!(!t.description.is_empty(), "{t:?}");
        assert_eq!(
            t.leader_only,
            ["placement", "secret_reseal", "event_retention", "stale_nodes", "pools", "autoscaler", "quarantine"]
                .contains(&t.name.as_str()),
            "{t:?}"
        );
    }

    let (status, body) = rest_tasks(&cp, &cp.admin_token).await;
    assert_eq!(status, 200, "{body}");
    let rest_names: Vec<&str> = body["tasks"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(rest_names, TASKS, "{body}");
    assert!(body["tasks"][0]["lastStartedAt"].is_string(), "{body}");

    // Admins only.
    let mut tenancy = cp.tenancy_as(Some(&cp.admin_token)).await;
    let viewer = tenancy
        .create_token(pb::CreateTokenRequest { role: pb::Role::Operator as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut admin = cp.admin_as(Some(&viewer)).await;
    let err = admin.list_background_tasks(pb::ListBackgroundTasksRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let (status, body) = rest_tasks(&cp, &viewer).await;
    assert_eq!(status, 403, "{body}");
}

fn true_job() -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            exec: Some(pb::ExecSpec { command: "/bin/true".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn job_status(cp: &ControlPlane, id: &str) -> i32 {
    let mut jobs = cp.jobs().await;
    jobs.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner().job.unwrap().status
}

/// One pending job whose stored spec is garbage: the placement pass logs it,
/// counts it and goes on, so other jobs are still placed and run.
async fn a_job_row_that_does_not_decode_is_skipped(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let mut jobs = cp.jobs().await;
    // No node yet: the job waits, pending.
    let bad = jobs.submit_job(true_job()).await.unwrap().into_inner().job.unwrap().job_id;
    assert_eq!(cp.sql("UPDATE jobs SET spec = 'not a spec' WHERE id = $1", &bad).await, 1);

    let _agent = Agent::start(&cp, "survivor", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let good = jobs.submit_job(true_job()).await.unwrap().into_inner().job.unwrap().job_id;
    eventually(Duration::from_secs(20), "the good job succeeds", || async {
        (job_status(&cp, &good).await == pb::JobStatus::Succeeded as i32).then_some(())
    })
    .await;

    let placement = tasks(&cp).await.into_iter().find(|t| t.name == "placement").unwrap();
    assert!(placement.items_skipped >= 1, "{placement:?}");
    assert_eq!(placement.consecutive_failures, 0, "{placement:?}");
    let (_, metrics) = cp.http_get("/metrics").await;
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("tether_background_task_items_skipped_total{task=\"placement\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(skipped >= 1.0, "{metrics}");
    assert!(cp.log().contains(&bad), "the bad row is logged with its id");
}
