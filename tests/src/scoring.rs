//! Reliability scoring and automatic quarantine with a real fault: one of
//! three agents is stopped (SIGSTOP) for most of every beat interval a few
//! times, so its beats arrive late and their acknowledgements wait. Its
//! score falls below its peers' with the reason in GetNodeInsights, it is
//! quarantined automatically once its organisation enables that, new jobs
//! go to its peers, and once it behaves it is released after probation. A
//! quarantine an operator sets over an automatic one is never released
//! automatically.

use std::time::Duration;

use tether_proto::pb;
use tether_proto::pb::event_service_client::EventServiceClient;
use tether_proto::pb::insights_service_client::InsightsServiceClient;
use tether_proto::pb::settings_service_client::SettingsServiceClient;

use crate::harness::*;

both_backends!(a_node_with_late_beats_is_scored_down_quarantined_and_released);

/// Stops and continues the agent this many times.
const CYCLES: usize = 8;
const STOPPED: Duration = Duration::from_millis(900);
const RUNNING: Duration = Duration::from_millis(600);

async fn insights(c: &InsightsServiceClient<Authed>, node: &str) -> pb::NodeInsights {
    c.clone()
        .get_node_insights(pb::GetNodeInsightsRequest { node_id: node.into() })
        .await
        .unwrap()
        .into_inner()
        .insights
        .unwrap()
}

async fn desired(cp: &ControlPlane, node: &str) -> (i32, String) {
    let n = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: node.into() }).await.unwrap().into_inner();
    let n = n.node.unwrap();
    (n.desired_state, n.desired_state_reason)
}

async fn quarantine_events(cp: &ControlPlane, org: &str) -> Vec<pb::Event> {
    let mut ev = EventServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    ev.list_events(pb::ListEventsRequest {
        organization_id: org.into(),
        kind_prefix: "quarantine.".into(),
        page_size: 100,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

/// Stops the process for most of each of [`CYCLES`] cycles, so that its beats
/// come late and their acknowledgements wait.
async fn late_beats(pid: i32) {
    for _ in 0..CYCLES {
        signal(pid, libc::SIGSTOP);
        tokio::time::sleep(STOPPED).await;
        signal(pid, libc::SIGCONT);
        tokio::time::sleep(RUNNING).await;
    }
}

async fn set_desired(cp: &ControlPlane, node: &str, state: pb::DesiredNodeState, reason: &str) {
    cp.nodes()
        .await
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id: node.into(),
            state: state as i32,
            reason: reason.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn a_node_with_late_beats_is_scored_down_quarantined_and_released(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = (0..3).map(|i| Agent::start(&cp, &format!("score-{i}"), &[])).collect();
    let mut ids = Vec::new();
    for a in &agents {
        ids.push(a.node_id().await);
    }
    let (bad, peers) = (ids[0].clone(), ids[1..].to_vec());
    let me = cp.tenancy_as(Some(&cp.admin_token)).await.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    let org = me.organization_id;
    let ins = InsightsServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));

    // Automatic quarantine is off by default: enable it, with a short
    // probation and uptime ramp so that the test need not wait minutes.
    let mut settings = SettingsServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    let d = |ms: i64| Some(prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 });
    settings
        .update_settings(pb::UpdateSettingsRequest {
            organization_id: org.clone(),
            settings: Some(pb::Settings {
                scoring: Some(pb::ScoringSettings { uptime_ramp: d(1000), ..Default::default() }),
                quarantine: Some(pb::QuarantineSettings {
                    enabled: true,
                    below_percent: 50,
                    release_percent: 75,
                    probation: d(2000),
                    // One of three nodes.
                    max_percent: 34,
                }),
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await
        .unwrap();

    // All three score well once they have a few beats behind them.
    for id in &ids {
        let i = eventually(Duration::from_secs(30), "every node scored on enough beats", || async {
            let i = insights(&ins, id).await;
            (i.scored && i.beats >= 8 && i.score >= 0.75).then_some(i)
        })
        .await;
        assert_eq!(i.components.len(), 8, "{i:?}");
    }

    // The fault: the agent is stopped for most of each cycle.
    let pid = agents[0].pid();
    let fault = tokio::spawn(late_beats(pid));

    // It is scored down, with its reasons, and quarantined automatically.
    let low = eventually(Duration::from_secs(30), "the late node's score to fall below 0.5", || async {
        let i = insights(&ins, &bad).await;
        (i.score < 0.5).then_some(i)
    })
    .await;
    assert!(
        low.reasons.iter().any(|r| r.starts_with("jitter:") || r.starts_with("latency:") || r.starts_with("spikes:")),
        "the reasons name the heartbeats: {:?}",
        low.reasons
    );
    let jitter = low.components.iter().find(|c| c.name == "jitter").unwrap();
    assert!(jitter.penalty > 0.0, "{jitter:?}");
    for p in &peers {
        let i = insights(&ins, p).await;
        assert!(i.score > low.score, "a peer ({}) scores above the late node ({}): {i:?}", i.score, low.score);
    }
    let quarantined = pb::DesiredNodeState::Quarantined as i32;
    let reason = eventually(Duration::from_secs(15), "automatic quarantine", || async {
        let (state, reason) = desired(&cp, &bad).await;
        (state == quarantined).then_some(reason)
    })
    .await;
    assert!(reason.starts_with("automatic: reliability score"), "{reason}");
    // The quarantine loop publishes its holds at the end of its round.
    eventually(Duration::from_secs(5), "the hold in GetNodeInsights", || async {
        insights(&ins, &bad).await.auto_quarantined_at.map(|_| ())
    })
    .await;
    let risk = InsightsServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .list_node_risk(pb::ListNodeRiskRequest { limit: 2 })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(risk.len(), 2);
    assert_eq!(risk[0].node_id, bad, "the riskiest first: {risk:?}");
    assert!(!risk[0].reasons.is_empty() && risk[0].auto_quarantined_at.is_some(), "{:?}", risk[0]);
    let applied = quarantine_events(&cp, &org).await;
    let first = applied.iter().find(|e| e.kind == "quarantine.applied").expect("a quarantine.applied event");
    let payload = event_payload(first);
    assert_eq!(payload["node_id"].as_str(), Some(bad.as_str()), "{payload}");
    assert!(
        payload["score"].as_f64().unwrap() < 0.5 && !payload["reasons"].as_array().unwrap().is_empty(),
        "{payload}"
    );
    for p in &peers {
        assert_eq!(desired(&cp, p).await.0, pb::DesiredNodeState::Active as i32, "at most one of three is held");
    }
    let (code, metrics) = cp.http_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("tether_node_reliability_score{{node=\"{bad}\"}}")), "{metrics}");
    assert!(metrics.contains("tether_nodes_auto_quarantined 1"), "{metrics}");
    promtool_check(&metrics).await;

    // New work goes to the peers only, while it is held.
    let mut jobs = cp.jobs().await;
    let mut submitted = Vec::new();
    for i in 0..6 {
        let spec = pb::JobSpec {
            exec: Some(pb::ExecSpec { command: "true".into(), ..Default::default() }),
            resources: Some(pb::Resources { cpu_millis: 10, memory_mb: 1, gpus: 0 }),
            ..Default::default()
        };
        let req =
            pb::SubmitJobRequest { spec: Some(spec), idempotency_key: format!("score-{i}"), ..Default::default() };
        submitted.push(jobs.submit_job(req).await.unwrap().into_inner().job.unwrap().job_id);
    }
    for id in &submitted {
        let j = eventually(Duration::from_secs(30), "each job to succeed", || {
            let mut jobs = jobs.clone();
            async move {
                let j = jobs.get_job(pb::GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner().job.unwrap();
                (j.status == pb::JobStatus::Succeeded as i32).then_some(j)
            }
        })
        .await;
        assert!(j.node_id != bad && peers.contains(&j.node_id), "job {id} ran on {}", j.node_id);
    }
    assert_eq!(desired(&cp, &bad).await.0, quarantined, "still held while the jobs ran");

    // Once it behaves it is released after its probation.
    fault.await.unwrap();
    eventually(Duration::from_secs(60), "the release after probation", || async {
        (desired(&cp, &bad).await.0 == pb::DesiredNodeState::Active as i32).then_some(())
    })
    .await;
    let i = insights(&ins, &bad).await;
    assert!(i.auto_quarantined_at.is_none(), "{i:?}");
    let events = quarantine_events(&cp, &org).await;
    let released = events.iter().find(|e| e.kind == "quarantine.released").expect("a quarantine.released event");
    let payload = event_payload(released);
    assert!(payload["score"].as_f64().unwrap() >= 0.75, "{payload}");
    assert_eq!(payload["reason"], "probation_passed");

    // Held again, then quarantined by hand: the operator's word wins, and
    // the node is not released however well it behaves.
    let fault = tokio::spawn(late_beats(pid));
    eventually(Duration::from_secs(30), "a second automatic quarantine", || async {
        (desired(&cp, &bad).await.0 == quarantined).then_some(())
    })
    .await;
    set_desired(&cp, &bad, pb::DesiredNodeState::Quarantined, "by hand").await;
    eventually(Duration::from_secs(10), "quarantine.overridden", || async {
        quarantine_events(&cp, &org).await.iter().any(|e| e.kind == "quarantine.overridden").then_some(())
    })
    .await;
    fault.await.unwrap();
    eventually(Duration::from_secs(60), "its score back above the release threshold", || async {
        (insights(&ins, &bad).await.score >= 0.8).then_some(())
    })
    .await;
    // Longer than the probation and two rounds of the loop: nothing may
    // happen, so there is no condition to wait on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(desired(&cp, &bad).await, (quarantined, "by hand".to_string()), "never released automatically");
    let released = quarantine_events(&cp, &org).await.iter().filter(|e| e.kind == "quarantine.released").count();
    assert_eq!(released, 1, "only the first hold was released");
    drop(agents);
}
