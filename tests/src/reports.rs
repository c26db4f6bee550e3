//! Node reports end to end: an application on the node reports through
//! `tether-agent report` and through the agent's unix socket (with real
//! curl); the agent forwards the report with its next beat, and it shows in
//! GetNode, over REST and in /metrics within two beats. Bad input is refused
//! with its reason and changes nothing; a control-plane restart loses
//! nothing (the next session's first beat carries the report), and an agent
//! restart clears what its earlier process reported.

use std::time::Duration;

use serde_json::Value;
use tether_proto::pb;

use crate::harness::*;

both_backends!(applications_report_through_the_agent);

/// Two beats, with room for a loaded machine.
const TWO_BEATS: Duration = Duration::from_secs(2 * INTERVAL.as_secs() + 10);

async fn agent_report(agent: &Agent, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["report".into(), "--state-dir".into(), agent.state_dir.clone().into_os_string()];
    all.extend(args.iter().map(std::ffi::OsString::from));
    run_bin("tether-agent", &all).await
}

async fn report_of(cp: &ControlPlane, node: &str) -> Option<pb::NodeReport> {
    let mut nodes = cp.nodes().await;
    nodes.get_node(pb::GetNodeRequest { node_id: node.into() }).await.unwrap().into_inner().node.unwrap().report
}

async fn applications_report_through_the_agent(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "reporting", &[]);
    let node = agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    assert_eq!(report_of(&cp, &node).await, None, "nothing reported yet");

    // The subcommand...
    let (code, out, err) = agent_report(
        &agent,
        &[
            "--health",
            "failing",
            "--message",
            "database unreachable",
            "--gauge",
            "error_rate=0.25",
            "--counter",
            "requests=100",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let now: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(now["health"], "failing", "{now}");
    // ...and the socket, with curl, merge by name.
    let sock = agent.state_dir.join("agent.sock");
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "-f", "--unix-socket", sock.to_str().unwrap(), "-X", "POST", "http://agent/v1/report"])
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"gauges": {"queue_depth": 7}, "backup_status": "ok"}"#,
        ])
        .output()
        .await
        .unwrap();
    assert!(curl.status.success(), "{curl:?}");
    let now: Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!((now["gauges"]["error_rate"].as_f64(), now["gauges"]["queue_depth"].as_f64()), (Some(0.25), Some(7.0)));

    // Bad input: refused with the reason, nothing changes.
    for bad in [&["--gauge", "Queue-Depth=1"][..], &["--health", "sad"], &["--counter", "requests=-3"]] {
        let (code, _, err) = agent_report(&agent, bad).await;
        assert_eq!(code, 1, "{bad:?}");
        assert!(err.contains("tether-agent report:"), "{err}");
    }
    let (code, out, _) = agent_report(&agent, &["--show"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap(), now, "refused updates changed nothing");

    // Within two beats: GetNode, REST, /metrics.
    let r = eventually(TWO_BEATS, "the report in GetNode", || async {
        report_of(&cp, &node).await.filter(|r| r.gauges.contains_key("queue_depth"))
    })
    .await;
    assert_eq!((r.health.as_str(), r.health_message.as_str()), ("failing", "database unreachable"));
    assert_eq!((r.gauges["error_rate"], r.counters["requests"]), (0.25, 100.0));
    assert_eq!(r.backup_status, "ok");
    assert!(r.reported_at.is_some());
    let (code, out, err) = tetherctl(&cp, &cp.admin_token, &["nodes", "get", &node]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("health      failing: database unreachable"), "{out}");
    assert!(out.contains("gauges      error_rate=0.25, queue_depth=7"), "{out}");
    assert!(out.contains("counters    requests=100"), "{out}");
    let (status, body) = cp.http_get_as(&format!("/v1/nodes/{node}"), &cp.admin_token, 0).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"]["report"]["health"], "failing", "{v}");
    assert_eq!(v["node"]["report"]["gauges"]["error_rate"], 0.25, "{v}");
    let (status, metrics) = cp.http_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        format!("tether_node_health{{node=\"{node}\",state=\"failing\"}} 1"),
        format!("tether_node_health{{node=\"{node}\",state=\"ok\"}} 0"),
        format!("tether_node_reported_value{{node=\"{node}\",name=\"error_rate\"}} 0.25"),
        format!("tether_node_reported_total{{node=\"{node}\",name=\"requests\"}} 100"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}");
    }
    promtool_check(&metrics).await;

    // A control-plane restart: the next session's first beat brings it back.
    cp.stop(libc::SIGTERM).await;
    cp.restart().await;
    let r = eventually(Duration::from_secs(30), "the report after a restart", || async { report_of(&cp, &node).await })
        .await;
    assert_eq!(r.gauges["queue_depth"], 7.0);

    // An update clears a gauge and heals; then an agent restart clears all.
    let (code, _, err) = agent_report(&agent, &["--health", "ok", "--clear", "queue_depth"]).await;
    assert_eq!(code, 0, "{err}");
    eventually(TWO_BEATS, "the healed report", || async {
        report_of(&cp, &node).await.filter(|r| r.health == "ok" && !r.gauges.contains_key("queue_depth"))
    })
    .await;
    let state_dir = agent.state_dir.clone();
    drop(agent);
    let _again = Agent::start_with_state(&cp, "reporting", state_dir, &[]);
    eventually(Duration::from_secs(30), "the new agent process's empty report", || async {
        report_of(&cp, &node).await.is_none().then_some(())
    })
    .await;
}
