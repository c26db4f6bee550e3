//! Usage metering with real jobs: CPU, memory and GPU seconds follow the
//! allocations' start and end, also for a job that runs through a
//! control-plane SIGKILL and restart; ingested records count once per
//! idempotency key; the dedicated node's resource-hours accrue; the price
//! book prices a period, a quote and a shared node's payout preview.

use std::time::Duration;

use tether_proto::pb;
use tether_proto::pb::usage_service_client::UsageServiceClient;

use crate::harness::*;

both_backends!(usage_follows_jobs_across_a_restart_and_ingest_counts_once);

fn sleeper(secs: u32, cpu_millis: i64, memory_mb: i64) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            exec: Some(pb::ExecSpec {
                command: "/bin/sleep".into(),
                args: vec![secs.to_string()],
                ..Default::default()
            }),
            resources: Some(pb::Resources { cpu_millis, memory_mb, gpus: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn status_of(cp: &ControlPlane, id: &str) -> i32 {
    cp.jobs().await.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner().job.unwrap().status
}

async fn wait_status(cp: &ControlPlane, id: &str, want: pb::JobStatus) {
    eventually(Duration::from_secs(60), &format!("job {id} {want:?}"), || async {
        (status_of(cp, id).await == want as i32).then_some(())
    })
    .await;
}

async fn usage(cp: &ControlPlane, period: &str) -> pb::GetUsageResponse {
    UsageServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .get_usage(pb::GetUsageRequest { period: period.into() })
        .await
        .unwrap()
        .into_inner()
}

fn within_1pct(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= want * 0.01, "{what}: {got} is not within 1% of {want}");
}

async fn usage_follows_jobs_across_a_restart_and_ingest_counts_once(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    // A node dedicated to the admin's project (a project join token).
    let jt = cp
        .tenancy_as(Some(&cp.admin_token))
        .await
        .create_join_token(pb::CreateJoinTokenRequest { description: "usage".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .token;
    let agent = Agent::start_joining(&cp, "meter", &jt, &[]);
    agent.node_id().await;
    let mut jobs = cp.jobs().await;

    // Two jobs of half a core and 64 MB for 5 s each.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(jobs.submit_job(sleeper(5, 500, 64)).await.unwrap().into_inner().job.unwrap().job_id);
    }
    for id in &ids {
        wait_status(&cp, id, pb::JobStatus::Succeeded).await;
    }
    let u = usage(&cp, "").await;
    within_1pct(u.cpu_seconds, 2.0 * 0.5 * 5.0, "cpu-seconds of two jobs");
    within_1pct(u.memory_mb_seconds, 2.0 * 64.0 * 5.0, "memory MB-seconds");
    assert_eq!(u.gpu_seconds, 0.0);

    // A quarter core for 8 s, through a SIGKILL of the control plane and
    // its restart: its start and end are on record, so it counts exactly.
    let long = jobs.submit_job(sleeper(8, 250, 32)).await.unwrap().into_inner().job.unwrap().job_id;
    wait_status(&cp, &long, pb::JobStatus::Running).await;
    cp.stop(libc::SIGKILL).await;
    cp.restart().await;
    wait_status(&cp, &long, pb::JobStatus::Succeeded).await;
    let u = usage(&cp, "").await;
    within_1pct(u.cpu_seconds, 5.0 + 0.25 * 8.0, "cpu-seconds with the job across the restart");
    within_1pct(u.memory_mb_seconds, 640.0 + 32.0 * 8.0, "memory MB-seconds with it");
    // The dedicated node's capacity accrues from its registration.
    assert!(u.node_cpu_hours > 0.0 && u.node_memory_mb_hours > 0.0, "{u:?}");

    // A month without work has none.
    let before = usage(&cp, "2020-01").await;
    assert_eq!((before.cpu_seconds, before.node_cpu_hours), (0.0, 0.0), "{before:?}");
    assert_eq!(before.period, "2020-01");

    // Ingest: the same idempotency key twice counts once.
    for (want, args) in [
        (
            "accepted 1, duplicates 0",
            ["usage", "ingest", "--metric", "egress_bytes", "--quantity", "1000", "--key", "k-1"],
        ),
        (
            "accepted 0, duplicates 1",
            ["usage", "ingest", "--metric", "egress_bytes", "--quantity", "1000", "--key", "k-1"],
        ),
        (
            "accepted 1, duplicates 0",
            ["usage", "ingest", "--metric", "egress_bytes", "--quantity", "24", "--key", "k-2"],
        ),
    ] {
        let (code, out, err) = tetherctl(&cp, &cp.admin_token, &args).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(want), "{out}");
    }
    let u = usage(&cp, "").await;
    assert_eq!(u.ingested, vec![pb::IngestedUsage { metric: "egress_bytes".into(), quantity: 1024 }]);
    let (code, out, err) = tetherctl(&cp, &cp.admin_token, &["usage", "get"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("egress_bytes") && out.contains("1024") && out.contains("cpu-seconds"), "{out}");
    // A bad period is refused with the reason.
    let err = UsageServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .get_usage(pb::GetUsageRequest { period: "2026-13".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Prices (billionths of the currency per unit), then the period's cost,
    // a quote and a payout preview against figures computed here.
    let (code, _, err) = tetherctl(
        &cp,
        &cp.admin_token,
        &[
            "settings",
            "set",
            "--currency",
            "EUR",
            "--price",
            "cpu_seconds=11000",
            "--price",
            "memory_mb_seconds=10",
            "--price",
            "storage_bytes=20",
            "--price",
            "storage_bytes:archive=4",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let u = usage(&cp, "").await;
    let cost = u.cost.clone().unwrap();
    assert_eq!(cost.currency, "EUR");
    let line = |r: &str| cost.lines.iter().find(|l| l.resource == r).cloned().unwrap();
    assert_eq!(line("cpu_seconds").cost_nanos, (u.cpu_seconds * 11_000.0).round() as i64);
    assert_eq!(line("memory_mb_seconds").cost_nanos, (u.memory_mb_seconds * 10.0).round() as i64);
    assert_eq!(cost.total_nanos, cost.lines.iter().map(|l| l.cost_nanos).sum::<i64>());
    assert!(cost.unpriced.contains(&"egress_bytes".to_string()), "{cost:?}");
    let quote = UsageServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .quote_price(pb::QuotePriceRequest {
            tier: "archive".into(),
            quantities: [("storage_bytes".to_string(), 1_000_000_000), ("cpu_seconds".to_string(), 100)].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cost
        .unwrap();
    // 1e9 bytes at the archive tier's 4, and 100 s at the default tier's 11,000.
    assert_eq!(quote.total_nanos, 4_000_000_000 + 1_100_000, "{quote:?}");
    assert_eq!(quote.total, 4.0011);

    // A shared node (the organisation's pool) runs one job of a full core
    // for 4 s: its payout is that priced, times its reliability score.
    let shared = Agent::start(&cp, "shared", &["--labels", "kind=shared"]);
    let shared_id = shared.node_id().await;
    let mut pinned = sleeper(4, 1000, 100);
    pinned.spec.as_mut().unwrap().constraints =
        Some(pb::Constraints { label_selector: "kind=shared".into(), ..Default::default() });
    let id = jobs.submit_job(pinned).await.unwrap().into_inner().job.unwrap().job_id;
    wait_status(&cp, &id, pb::JobStatus::Succeeded).await;
    let me = cp.tenancy_as(Some(&cp.admin_token)).await.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    let preview = UsageServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .preview_payouts(pb::PreviewPayoutsRequest { organization_id: me.organization_id, period: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.payouts.len(), 1, "only the shared node served others' work: {preview:?}");
    let p = &preview.payouts[0];
    assert_eq!(p.node_id, shared_id);
    within_1pct(p.cpu_seconds, 4.0, "the shared node's cpu-seconds");
    let gross = (p.cpu_seconds * 11_000.0).round() as i64 + (p.memory_mb_seconds * 10.0).round() as i64;
    assert_eq!(p.gross_nanos, gross, "{p:?}");
    assert!(p.reliability > 0.0 && p.reliability <= 1.0);
    assert_eq!(p.payout_nanos, (gross as f64 * p.reliability).round() as i64);
    assert_eq!(preview.total_nanos, p.payout_nanos);

    // The organisation at a glance agrees with the figures above.
    let (code, out, err) = tetherctl(&cp, &cp.admin_token, &["-o", "json", "usage", "summary"]).await;
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["nodesByStatus"]["ready"], 2, "{s}");
    assert_eq!(s["nodesByDesiredState"]["active"], 2, "{s}");
    assert_eq!(s["jobsByStatus"]["succeeded"], 4, "{s}");
    let u = usage(&cp, "").await;
    within_1pct(s["cpuSeconds"].as_f64().unwrap(), u.cpu_seconds, "the summary's cpu-seconds");
    assert_eq!(s["cost"]["currency"], "EUR");
    drop((agent, shared));
}
