//! The node registry end to end: enrolment, liveness, restarts, fencing,
//! refusals of bad input, and the watch stream.

use std::time::{Duration, Instant};

use tether_proto::agent_pb;
use tether_proto::pb::{self, NodeEventType, NodeStatus};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::*;

both_backends!(
    three_agents_enrol_and_show_ready,
    killed_agent_becomes_unreachable_and_stopped_agent_left,
    restart_keeps_registry_and_agents_reconnect,
    second_agent_process_supersedes_the_first,
    bad_input_is_refused_and_changes_nothing,
    watch_nodes_delivers_changes_in_order,
    nodes_down_past_the_stale_ttl_are_deregistered,
    runtime_settings_take_effect_without_a_restart,
);

async fn three_agents_enrol_and_show_ready(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> =
        ["alpha", "beta", "gamma"].iter().map(|n| Agent::start(&cp, n, &["--labels", "zone=z1"])).collect();
    let nodes = cp.wait_nodes(3, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut hosts: Vec<_> = nodes.iter().map(|n| n.capabilities.as_ref().unwrap().hostname.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, ["alpha", "beta", "gamma"]);
    for n in &nodes {
        let caps = n.capabilities.as_ref().unwrap();
        assert!(caps.cpu_count >= 1 && caps.memory_mb > 0 && caps.disk_mb > 0, "{caps:?}");
        assert_eq!(caps.os, "linux");
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("z1"));
        assert_eq!(n.desired_state, pb::DesiredNodeState::Active as i32);
    }
    // Beats carry usage figures, visible while the session is open.
    let with_usage = eventually(Duration::from_secs(10), "usage figures", || async {
        let nodes = cp.list_nodes().await;
        nodes.iter().all(|n| n.usage.as_ref().is_some_and(|u| u.memory_used_mb > 0)).then_some(nodes)
    })
    .await;
    assert_eq!(with_usage.len(), 3);

    // Filters: selector and status.
    let mut client = cp.nodes().await;
    let by_selector = client
        .list_nodes(pb::ListNodesRequest { label_selector: "zone in (z1,z2),!gpu".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_selector.nodes.len(), 3);
    let none = client
        .list_nodes(pb::ListNodesRequest { label_selector: "zone=z9".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(none.nodes.is_empty());
    let left = client
        .list_nodes(pb::ListNodesRequest { status: NodeStatus::Left as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(left.nodes.is_empty());
    // Paging: two pages of 2 + 1, no repeats.
    let p1 = client.list_nodes(pb::ListNodesRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(p1.nodes.len(), 2);
    assert!(!p1.next_page_token.is_empty());
    let p2 = client
        .list_nodes(pb::ListNodesRequest { page_size: 2, page_token: p1.next_page_token, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.nodes.len(), 1);
    assert!(p2.next_page_token.is_empty());
    assert!(p1.nodes.iter().all(|a| a.node_id != p2.nodes[0].node_id));
    // GetNode.
    let one = client.get_node(pb::GetNodeRequest { node_id: nodes[0].node_id.clone() }).await.unwrap().into_inner();
    assert_eq!(one.node.unwrap().node_id, nodes[0].node_id);

    // The same through grpcurl: reflection lists the services, ListNodes answers.
    let out =
        tokio::process::Command::new(grpcurl()).args(["-plaintext", &cp.grpc_addr, "list"]).output().await.unwrap();
    assert!(out.status.success(), "grpcurl list: {}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    for svc in
        ["tether.v1.NodeService", "tether.v1.TenancyService", "tether.agent.v1.AgentService", "grpc.health.v1.Health"]
    {
        assert!(listed.lines().any(|l| l == svc), "{svc} missing from grpcurl list:\n{listed}");
    }
    let out = tokio::process::Command::new(grpcurl())
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {}", cp.admin_token),
            &cp.grpc_addr,
            "tether.v1.NodeService/ListNodes",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "grpcurl ListNodes: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json["nodes"].as_array().expect("nodes array");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|n| n["status"] == "NODE_STATUS_READY"), "{json}");
    let out = tokio::process::Command::new(grpcurl())
        .args(["-plaintext", &cp.grpc_addr, "grpc.health.v1.Health/Check"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

    // HTTP endpoints.
    assert_eq!(cp.http_get("/healthz").await.0, 200);
    assert_eq!(cp.http_get("/readyz").await.0, 200);
    let (code, metrics) = cp.http_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l == "tether_agents_connected 3"), "{metrics}");
    assert!(metrics.contains("tether_heartbeats_total"));
    assert!(
        metrics.contains(r#"tether_grpc_requests_total{method="/tether.v1.NodeService/ListNodes",code="OK"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_grpc_request_duration_seconds_bucket{method=\"/tether.v1.NodeService/ListNodes\"")
    );
    // Documented counters exist before their first event; every series is
    // well-formed for Prometheus.
    for c in ["tether_admission_rejected_total", "tether_allocations_lost_total", "tether_jobs_submitted_total"] {
        assert!(metrics.lines().any(|l| l == format!("{c} 0")), "{c} missing:\n{metrics}");
    }
    promtool_check(&metrics).await;
    drop(agents);
}

async fn killed_agent_becomes_unreachable_and_stopped_agent_left(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let killed = Agent::start(&cp, "killed", &[]);
    let mut stopped = Agent::start(&cp, "stopped", &[]);
    let killed_id = killed.node_id().await;
    let stopped_id = stopped.node_id().await;
    cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;
    let status_of = |id: String| {
        let cp = &cp;
        async move {
            let n = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: id }).await.unwrap().into_inner();
            n.node.unwrap().status
        }
    };

    killed.signal(libc::SIGKILL);
    let t0 = Instant::now();
    eventually(Duration::from_secs(15), "killed node unreachable", || async {
        (status_of(killed_id.clone()).await == NodeStatus::Unreachable as i32).then_some(())
    })
    .await;
    let took = t0.elapsed();
    // Grace + one beat interval, plus the checker's period and polling slack.
    let bound = GRACE + INTERVAL + Duration::from_millis(1500);
    assert!(took <= bound, "unreachable after {took:?}, bound {bound:?}");
    assert!(took >= GRACE - Duration::from_millis(400), "unreachable too early: {took:?}");
    eprintln!("sigkill -> unreachable in {took:?} (grace {GRACE:?}, interval {INTERVAL:?})");

    stopped.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let exit = stopped.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "SIGTERM exit: {exit:?}");
    eventually(Duration::from_secs(3), "stopped node left", || async {
        (status_of(stopped_id.clone()).await == NodeStatus::Left as i32).then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "left after {took:?}");
    eprintln!("sigterm -> left in {took:?}");
    // The killed node is still unreachable, not left.
    assert_eq!(status_of(killed_id).await, NodeStatus::Unreachable as i32);
}

async fn restart_keeps_registry_and_agents_reconnect(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let agents: Vec<Agent> = ["r1", "r2"].iter().map(|n| Agent::start(&cp, n, &[])).collect();
    let before = cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut ids: Vec<_> = before.iter().map(|n| n.node_id.clone()).collect();
    ids.sort();

    // A graceful restart, then a hard one.
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut watch = cp.nodes().await.watch_nodes(pb::WatchNodesRequest::default()).await.unwrap().into_inner();
        let exit = cp.stop(sig).await;
        if sig == libc::SIGTERM {
            assert!(exit.success(), "graceful shutdown exit: {exit:?}\n{}", cp.log());
            // Open streams are closed with UNAVAILABLE, telling clients to come back.
            let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch ends");
            assert_eq!(end.expect("an error, not a clean end").unwrap_err().code(), Code::Unavailable);
            for a in &agents {
                let log = a.log();
                assert!(log.contains("control plane is shutting down"), "agent {} saw: {log}", a.name);
            }
        }
        cp.restart().await;
        let after = cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;
        let mut again: Vec<_> = after.iter().map(|n| n.node_id.clone()).collect();
        again.sort();
        assert_eq!(again, ids, "same nodes, no duplicates after restart with signal {sig}");
        // Each agent reconnected on its own with a live session here.
        eventually(Duration::from_secs(10), "beats after restart", || async {
            let nodes = cp.list_nodes().await;
            nodes.iter().all(|n| n.usage.is_some()).then_some(())
        })
        .await;
    }
    let log = cp.log();
    assert!(log.contains("received SIGTERM"), "graceful path ran");
    assert_eq!(log.matches("Tether is bootstrapped").count(), 1, "bootstrap happens once:\n{log}");
    drop(agents);
}

async fn second_agent_process_supersedes_the_first(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let mut first = Agent::start(&cp, "twin", &[]);
    let id = first.node_id().await;
    let n1 = cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await.remove(0);

    let second = Agent::start_with_state(&cp, "twin", first.state_dir.clone(), &[]);
    // The first process learns it was superseded and exits with code 3.
    let exit = first.wait(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(3), "first agent exit: {exit:?}\n{}", first.log());
    assert!(first.log().contains("newer agent process"), "{}", first.log());
    let n2 = eventually(Duration::from_secs(10), "newer generation holds the node", || async {
        let nodes = cp.list_nodes().await;
        (nodes.len() == 1
            && nodes[0].session_generation > n1.session_generation
            && nodes[0].status == NodeStatus::Ready as i32)
            .then(|| nodes[0].clone())
    })
    .await;
    assert_eq!(n2.node_id, id, "the same node, not a new one");
    // The survivor keeps beating.
    tokio::time::sleep(GRACE + INTERVAL).await;
    assert_eq!(cp.list_nodes().await[0].status, NodeStatus::Ready as i32);
    drop(second);
}

async fn bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "victim", &[]);
    let victim = agent.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut admin = cp.tenancy_as(Some(&cp.admin_token)).await;
    let caps = || Some(pb::NodeCapabilities { hostname: "bad".into(), ..Default::default() });
    let enroll =
        |token: &str| agent_pb::EnrollRequest { join_token: token.into(), capabilities: caps(), ..Default::default() };
    let mut anon = cp.agent_api(None).await;

    // Unknown, garbage and expired join tokens.
    let unknown = format!("tjt1_jt-00000000000000000000.{}", "A".repeat(43));
    for t in [unknown.as_str(), "garbage", ""] {
        let e = anon.enroll(enroll(t)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "join token {t:?}: {e:?}");
    }
    // The right id with the wrong secret.
    let real_id = cp.join_token.split('.').next().unwrap();
    let e = anon.enroll(enroll(&format!("{real_id}.{}", "B".repeat(43)))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let short = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let once = admin
        .create_join_token(pb::CreateJoinTokenRequest { max_uses: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    anon.enroll(enroll(&once.token)).await.expect("first use of a single-use token");
    let e = anon.enroll(enroll(&once.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "second use: {e:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = anon.enroll(enroll(&short.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "expired: {e:?}");
    assert!(e.message().contains("expired"), "{e:?}");
    // A revoked token.
    let revoked = admin.create_join_token(pb::CreateJoinTokenRequest::default()).await.unwrap().into_inner();
    admin
        .revoke_join_token(pb::RevokeJoinTokenRequest { join_token_id: revoked.join_token.unwrap().join_token_id })
        .await
        .unwrap();
    let e = anon.enroll(enroll(&revoked.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Oversized: a 2 MiB message against the 1 MiB limit.
    let mut big = enroll(&cp.join_token);
    big.capabilities.as_mut().unwrap().hostname = "x".repeat(2 * 1024 * 1024);
    let e = anon.enroll(big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Invalid capabilities (over the field limit, under the message limit).
    let mut long = enroll(&cp.join_token);
    long.capabilities.as_mut().unwrap().hostname = "x".repeat(1000);
    assert_eq!(anon.enroll(long).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad_labels = enroll(&cp.join_token);
    bad_labels.labels.insert("bad key".into(), "v".into());
    assert_eq!(anon.enroll(bad_labels).await.unwrap_err().code(), Code::InvalidArgument);
    let nodes = cp.list_nodes().await;
    assert_eq!(nodes.len(), 2, "only the agent and the single-use enrolment exist");

    // Operator credentials: missing, forged, expired, under-privileged, wrong kind.
    let deregister = || pb::DeregisterNodeRequest { node_id: victim.clone() };
    let e = cp.nodes_as(None).await.deregister_node(deregister()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut forged = cp.admin_token.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let e = cp.nodes_as(Some(&forged)).await.deregister_node(deregister()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e =
        cp.nodes_as(Some("tm1_not-a-macaroon")).await.list_nodes(pb::ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let viewer = admin
        .create_token(pb::CreateTokenRequest { role: pb::Role::Viewer as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .token;
    let e = cp.nodes_as(Some(&viewer)).await.deregister_node(deregister()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e =
        cp.tenancy_as(Some(&viewer)).await.create_join_token(pb::CreateJoinTokenRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = cp
        .tenancy_as(Some(&viewer))
        .await
        .create_token(pb::CreateTokenRequest { role: pb::Role::Admin as i32, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The viewer can read, and says who it is.
    assert_eq!(
        cp.nodes_as(Some(&viewer))
            .await
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes
            .len(),
        2
    );
    let me = cp.tenancy_as(Some(&viewer)).await.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(me.role, pb::Role::Viewer as i32);
    assert!(me.expires_at.is_some());
    // Revocation by token id takes effect at once.
    let listed = admin.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner().tokens;
    assert!(listed.iter().any(|t| t.token_id == me.token_id && t.revoked_at.is_none()));
    let e = cp.tenancy_as(Some(&viewer)).await.list_tokens(pb::ListTokensRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "only admins list tokens");
    let revoked =
        admin.revoke_token(pb::RevokeTokenRequest { token_id: me.token_id.clone() }).await.unwrap().into_inner();
    assert!(revoked.token.unwrap().revoked_at.is_some());
    let e = cp.nodes_as(Some(&viewer)).await.list_nodes(pb::ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{e:?}");

    let expiring = admin
        .create_token(pb::CreateTokenRequest {
            role: pb::Role::Operator as i32,
            ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = cp.nodes_as(Some(&expiring)).await.deregister_node(deregister()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("expired"));

    // A node credential cannot call operator APIs.
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_dir.join("identity.json")).unwrap()).unwrap();
    let node_cred = identity["credential"].as_str().unwrap();
    let e = cp.nodes_as(Some(node_cred)).await.list_nodes(pb::ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // And an operator token cannot open a heartbeat session.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(agent_pb::HeartbeatRequest {
        msg: Some(agent_pb::heartbeat_request::Msg::Hello(agent_pb::Hello {
            node_id: victim.clone(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let e = cp
        .agent_api(Some(&cp.admin_token))
        .await
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Malformed input to operator RPCs.
    let e = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = cp
        .nodes()
        .await
        .list_nodes(pb::ListNodesRequest { label_selector: "zone in (a".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = cp
        .nodes()
        .await
        .list_nodes(pb::ListNodesRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Nothing changed: the victim is still there and ready.
    let n = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: victim.clone() }).await.unwrap().into_inner();
    assert_eq!(n.node.unwrap().status, NodeStatus::Ready as i32);
    assert_eq!(cp.list_nodes().await.len(), 2);
    // An admin can deregister it; the agent's session is closed and its
    // credential stops working, so it exits asking for re-enrolment.
    cp.nodes().await.deregister_node(deregister()).await.unwrap();
    let mut agent = agent;
    let exit = agent.wait(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(2), "{}", agent.log());
    assert_eq!(cp.list_nodes().await.len(), 1);
}

async fn watch_nodes_delivers_changes_in_order(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let mut watch = cp.nodes().await.watch_nodes(pb::WatchNodesRequest::default()).await.unwrap().into_inner();
    let mut agent = Agent::start(&cp, "watched", &[]);
    let id = agent.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "the agent to acknowledge its desired state", || async {
        let n = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: id.clone() }).await.ok()?.into_inner().node?;
        (n.acked_desired_state_version == n.desired_state_version).then_some(())
    })
    .await;
    agent.signal(libc::SIGTERM);
    agent.wait(Duration::from_secs(10)).await;
    cp.wait_nodes(1, NodeStatus::Left, Duration::from_secs(5)).await;
    cp.nodes().await.deregister_node(pb::DeregisterNodeRequest { node_id: id.clone() }).await.unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(ev))) => seen.push(ev),
            other => panic!("watch ended early: {other:?}; seen {seen:?}"),
        }
    }
    let summary: Vec<(i32, String, i32)> =
        seen.iter().map(|e| (e.r#type, e.kind.clone(), e.node.as_ref().unwrap().status)).collect();
    assert_eq!(
        summary,
        [
            (NodeEventType::Added as i32, "node.registered".into(), NodeStatus::Pending as i32),
            (NodeEventType::Updated as i32, "node.status_changed".into(), NodeStatus::Ready as i32),
            // The agent acknowledges the desired state (active, version 1) it was sent.
            (NodeEventType::Updated as i32, "node.desired_state_acked".into(), NodeStatus::Ready as i32),
            (NodeEventType::Updated as i32, "node.status_changed".into(), NodeStatus::Left as i32),
            (NodeEventType::Removed as i32, "node.deregistered".into(), NodeStatus::Left as i32),
        ]
    );
    assert!(seen.iter().all(|e| e.node.as_ref().unwrap().node_id == id));
    assert!(seen.windows(2).all(|w| w[0].sequence < w[1].sequence), "sequences increase");

    // Resuming after the first event replays the rest, in the same order.
    let mut resumed = cp
        .nodes()
        .await
        .watch_nodes(pb::WatchNodesRequest { since_sequence: seen[0].sequence, send_initial: false })
        .await
        .unwrap()
        .into_inner();
    for want in &seen[1..] {
        let got = tokio::time::timeout(Duration::from_secs(5), resumed.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((got.sequence, &got.kind), (want.sequence, &want.kind));
    }
    // With send_initial, current nodes come first: none are left now.
    let late = Agent::start(&cp, "late", &[]);
    late.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut initial = cp
        .nodes()
        .await
        .watch_nodes(pb::WatchNodesRequest { send_initial: true, since_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), initial.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.r#type, NodeEventType::Added as i32);
    assert_eq!(first.node.unwrap().capabilities.unwrap().hostname, "late");
    drop(late);
}

/// A node `down` for longer than `--stale-node-ttl` is deregistered by the
/// control plane itself (an event with no principal); a node that is merely
/// left is kept.
async fn nodes_down_past_the_stale_ttl_are_deregistered(backend: Backend) {
    let opts = Options {
        down_after: Duration::from_secs(2),
        extra_args: vec!["--stale-node-ttl".into(), "1s".into()],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let killed = Agent::start(&cp, "stale", &[]);
    let mut left = Agent::start(&cp, "left", &[]);
    let killed_id = killed.node_id().await;
    let left_id = left.node_id().await;
    cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;
    left.signal(libc::SIGTERM);
    assert!(left.wait(Duration::from_secs(10)).await.success());
    killed.signal(libc::SIGKILL);
    let gone = eventually(Duration::from_secs(30), "the down node deregistered", || async {
        let ids: Vec<String> = cp.list_nodes().await.into_iter().map(|n| n.node_id).collect();
        (!ids.contains(&killed_id)).then_some(ids)
    })
    .await;
    assert!(gone.contains(&left_id), "a left node is not down: it stays {gone:?}");
    let rows = cp.sql_pairs("SELECT kind, COALESCE(principal, '-') FROM events WHERE kind IN ('node.status_changed', 'node.deregistered') ORDER BY seq").await;
    assert_eq!(rows.last().map(|(k, p)| (k.as_str(), p.as_str())), Some(("node.deregistered", "-")), "{rows:?}");
    let statuses = cp.sql_i64(&format!("SELECT COUNT(*) FROM events WHERE kind = 'node.status_changed' AND subject = '{killed_id}' AND payload LIKE '%\"down\"%'")).await;
    assert!(statuses >= 1, "it was down first");
}

/// An organisation's settings change a loop's threshold without a restart:
/// with `--stale-node-ttl 0s` (never) down nodes stay, until the settings
/// set a TTL; each update is versioned, an event naming who made it, and
/// a stale or invalid update changes nothing.
async fn runtime_settings_take_effect_without_a_restart(backend: Backend) {
    let opts = Options {
        down_after: Duration::from_secs(2),
        extra_args: vec!["--stale-node-ttl".into(), "0s".into()],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let agent = Agent::start(&cp, "kept", &[]);
    let node_id = agent.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    let org = cp.list_nodes().await[0].organization_id.clone();
    let admin = cp.admin_token.clone();

    let (code, out, err) = tetherctl(&cp, &admin, &["settings", "get", "--org", &org]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version         0") && out.contains("in effect: never"), "{out}");

    // Down, and kept (the default is never).
    agent.signal(libc::SIGKILL);
    cp.wait_nodes(1, NodeStatus::Down, Duration::from_secs(20)).await;
    // Two activations of stale_nodes after it went down: it is kept.
    let activations = || async {
        let tasks =
            cp.admin_as(Some(&cp.admin_token)).await.list_background_tasks(pb::ListBackgroundTasksRequest {}).await;
        tasks.unwrap().into_inner().tasks.into_iter().find(|t| t.name == "stale_nodes").unwrap().activations
    };
    let seen = activations().await;
    eventually(Duration::from_secs(15), "two more stale_nodes rounds", || async {
        (activations().await >= seen + 2).then_some(())
    })
    .await;
    assert_eq!(cp.list_nodes().await.len(), 1, "kept while no TTL is set");

    // Invalid and stale updates are refused and change nothing.
    let (code, _, err) =
        tetherctl(&cp, &admin, &["settings", "set", "--org", &org, "--stale-node-ttl", "400days"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("stale_node_ttl must be at most"), "{err}");
    let mut settings = tether_proto::pb::settings_service_client::SettingsServiceClient::with_interceptor(
        cp.channel().await,
        bearer(Some(&admin)),
    );
    let stale = settings
        .update_settings(pb::UpdateSettingsRequest {
            organization_id: org.clone(),
            settings: None,
            expected_version: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    let now =
        settings.get_settings(pb::GetSettingsRequest { organization_id: org.clone() }).await.unwrap().into_inner();
    assert_eq!(now.version, 0, "refused updates changed nothing");

    // Set a TTL: in effect within one period, no restart.
    let (code, out, err) = tetherctl(&cp, &admin, &["settings", "set", "--org", &org, "--stale-node-ttl", "1s"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version         1") && out.contains("stale-node-ttl  1s (in effect: 1s)"), "{out}");
    eventually(Duration::from_secs(15), "the down node deregistered", || async {
        cp.list_nodes().await.iter().all(|n| n.node_id != node_id).then_some(())
    })
    .await;
    let rows = cp
        .sql_pairs("SELECT kind, COALESCE(principal, '-') FROM events WHERE kind IN ('settings.updated', 'node.deregistered') ORDER BY seq")
        .await;
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["settings.updated", "node.deregistered"], "{rows:?}");
    assert!(rows[0].1.starts_with("tok-"), "the update names who made it: {rows:?}");
    assert_eq!(rows[1].1, "-", "the control plane's own work");
}
