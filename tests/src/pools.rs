//! Pools kept at a desired size through a webhook provider the test serves:
//! scale-up requests that the test fulfils by starting agents, scale-down
//! that drains before it asks for removal, and the autoscaler growing a
//! pool for pending jobs and shrinking it back when idle.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tether_proto::pb;
use tether_proto::pb::event_service_client::EventServiceClient;
use tether_proto::pb::organization_service_client::OrganizationServiceClient;
use tether_proto::pb::pool_service_client::PoolServiceClient;
use tonic::Code;

use crate::harness::*;
use crate::receiver::Receiver;

both_backends!(
    scale_through_a_webhook_and_drain_before_removal,
    autoscaling_grows_for_pending_jobs_and_shrinks_when_idle
);

const TOKEN: &str = "provider-s3cret";

/// The organisation, a join token into `pool`, and the pool granted to
/// the admin's project.
struct World {
    org: String,
    join_token: String,
    pools: PoolServiceClient<Authed>,
}

async fn world(cp: &ControlPlane, pool: &str) -> World {
    let me = cp.tenancy_as(Some(&cp.admin_token)).await.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    let org = me.organization_id;
    let mut orgs = OrganizationServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    let jt = orgs
        .create_organization_join_token(pb::CreateOrganizationJoinTokenRequest {
            organization_id: org.clone(),
            pool: pool.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    orgs.grant_pool(pb::GrantPoolRequest {
        organization_id: org.clone(),
        pool: pool.into(),
        project_id: me.project_id,
    })
    .await
    .unwrap();
    let pools = PoolServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    World { org, join_token: jt, pools }
}

fn webhook(hook: &Receiver) -> pb::PoolProvider {
    pb::PoolProvider {
        webhook: Some(pb::WebhookProvider {
            url: format!("{}/scale", hook.url),
            bearer_token: TOKEN.into(),
            has_bearer_token: false,
        }),
        command: None,
    }
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

fn job_on(pool: &str, command: &str, args: &[&str]) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            exec: Some(pb::ExecSpec {
                command: command.into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            resources: Some(pb::Resources { cpu_millis: 100, memory_mb: 16, gpus: 0 }),
            constraints: Some(pb::Constraints { pool: pool.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn requests(w: &World, pool: &str) -> Vec<pb::ScaleRequest> {
    w.pools
        .clone()
        .list_scale_requests(pb::ListScaleRequestsRequest {
            organization_id: w.org.clone(),
            name: pool.into(),
            limit: 50,
        })
        .await
        .unwrap()
        .into_inner()
        .requests
}

async fn get_pool(w: &World, pool: &str) -> pb::GetPoolResponse {
    w.pools
        .clone()
        .get_pool(pb::GetPoolRequest { organization_id: w.org.clone(), name: pool.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn job(cp: &ControlPlane, id: &str) -> pb::Job {
    cp.jobs().await.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner().job.unwrap()
}

/// The organisation's `pool.` events, oldest first.
async fn pool_events(cp: &ControlPlane, org: &str) -> Vec<pb::Event> {
    let mut ev = EventServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    ev.list_events(pb::ListEventsRequest {
        organization_id: org.into(),
        kind_prefix: "pool.".into(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

async fn scale_through_a_webhook_and_drain_before_removal(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let hook = Receiver::start().await;
    let mut w = world(&cp, "burst").await;

    // A command provider must be one the control plane registered.
    let err = w
        .pools
        .create_pool(pb::CreatePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            spec: Some(pb::PoolSpec {
                provider: Some(pb::PoolProvider {
                    webhook: None,
                    command: Some(pb::CommandProvider { name: "rm-rf".into() }),
                }),
                ..Default::default()
            }),
            desired: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // And a webhook goes only where --webhook-allow lets it (the harness
    // allows 127.0.0.0/8): a name not listed is refused unresolved.
    let elsewhere = pb::PoolProvider {
        webhook: Some(pb::WebhookProvider { url: "http://scaler.example/x".into(), ..Default::default() }),
        command: None,
    };
    let err = w
        .pools
        .create_pool(pb::CreatePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            spec: Some(pb::PoolSpec { provider: Some(elsewhere), ..Default::default() }),
            desired: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not allowed"), "{err:?}");
    let created = w
        .pools
        .create_pool(pb::CreatePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            spec: Some(pb::PoolSpec {
                min: 0,
                max: 3,
                provider: Some(webhook(&hook)),
                request_timeout: secs(60),
                drain_timeout: secs(60),
                autoscale: None,
            }),
            desired: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    let wh = created.spec.unwrap().provider.unwrap().webhook.unwrap();
    assert!(wh.has_bearer_token && wh.bearer_token.is_empty(), "the token is never answered back");
    let err = w
        .pools
        .scale_pool(pb::ScalePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            desired: 4,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "beyond max: {err:?}");

    // Scale up through tetherctl: the provider is asked for two nodes. It
    // refuses first: the request fails with its answer, and the pool asks
    // again after its backoff (10 s).
    hook.answer(503);
    let (rc, out, errs) = tetherctl(&cp, &cp.admin_token, &["pools", "scale", "burst", "2", "--reason", "test"]).await;
    assert_eq!(rc, 0, "{out}{errs}");
    let call = hook.next(Duration::from_secs(20)).await;
    assert_eq!(call.path, "/scale");
    assert_eq!(call.bearer.as_deref(), Some(TOKEN));
    assert_eq!(
        (call.body["pool"].as_str(), call.body["action"].as_str(), call.body["count"].as_u64()),
        (Some("burst"), Some("add"), Some(2))
    );
    assert_eq!(call.body["organization_id"].as_str(), Some(w.org.as_str()));
    let refused = call.body["request_id"].as_str().unwrap().to_owned();
    let failed = eventually(Duration::from_secs(20), "the refused request to fail", || async {
        let p = get_pool(&w, "burst").await;
        (!p.pool.as_ref().unwrap().provider_error.is_empty()).then_some(p)
    })
    .await;
    assert!(failed.pool.unwrap().provider_error.contains("503"), "the provider's answer is the reason");
    let rs = requests(&w, "burst").await;
    assert_eq!((rs[0].id.as_str(), rs[0].state), (refused.as_str(), pb::ScaleRequestState::Failed as i32));
    hook.answer(200);
    let call = hook.next(Duration::from_secs(30)).await;
    assert_eq!((call.body["action"].as_str(), call.body["count"].as_u64()), (Some("add"), Some(2)));
    let request_id = call.body["request_id"].as_str().unwrap().to_owned();
    assert_ne!(request_id, refused, "a new request");
    let open = get_pool(&w, "burst").await;
    assert_eq!((open.pool.as_ref().unwrap().adding, open.requests.len()), (2, 1), "{open:?}");

    // The test is the provider: it starts the machines, which join.
    let a = Agent::start_joining(&cp, "burst-a", &w.join_token, &[]);
    let b = Agent::start_joining(&cp, "burst-b", &w.join_token, &[]);
    let (a_id, b_id) = (a.node_id().await, b.node_id().await);
    eventually(Duration::from_secs(20), "the add request to be fulfilled", || async {
        let rs = requests(&w, "burst").await;
        (rs[0].id == request_id && rs[0].state == pb::ScaleRequestState::Fulfilled as i32).then_some(())
    })
    .await;
    let rs = requests(&w, "burst").await;
    let mut joined = rs[0].node_ids.clone();
    joined.sort();
    let mut want = vec![a_id.clone(), b_id.clone()];
    want.sort();
    assert_eq!(joined, want);
    eventually(Duration::from_secs(20), "both nodes ready in the pool", || async {
        (get_pool(&w, "burst").await.pool.unwrap().ready == 2).then_some(())
    })
    .await;
    assert!(hook.try_next().await.is_none(), "nothing more asked while the pool is at its size");

    // Work on one node; scale to 1: the idle node is the one removed, at once.
    let job_id =
        cp.jobs().await.submit_job(job_on("burst", "sleep", &["3"])).await.unwrap().into_inner().job.unwrap().job_id;
    let busy = eventually(Duration::from_secs(20), "the job to run", || async {
        let j = job(&cp, &job_id).await;
        (j.status == pb::JobStatus::Running as i32).then_some(j.node_id)
    })
    .await;
    let (busy_agent, mut idle_agent, idle_id) = if busy == a_id { (a, b, b_id) } else { (b, a, a_id) };
    w.pools
        .scale_pool(pb::ScalePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            desired: 1,
            reason: String::new(),
        })
        .await
        .unwrap();
    let call = hook.next(Duration::from_secs(20)).await;
    assert_eq!(call.body["action"].as_str(), Some("remove"));
    let nodes: Vec<&str> = call.body["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(nodes, [idle_id.as_str()], "the least loaded node goes");
    assert_eq!(job(&cp, &job_id).await.status, pb::JobStatus::Running as i32, "the busy node's job runs on");
    idle_agent.signal(libc::SIGTERM);
    idle_agent.wait(Duration::from_secs(20)).await;
    eventually(Duration::from_secs(20), "the removal to be fulfilled and the node deregistered", || async {
        let rs = requests(&w, "burst").await;
        let done = rs[0].state == pb::ScaleRequestState::Fulfilled as i32;
        let gone = cp.nodes().await.get_node(pb::GetNodeRequest { node_id: idle_id.clone() }).await.is_err();
        (done && gone).then_some(())
    })
    .await;

    // Scale to 0: the busy node is drained, and the provider is asked to
    // remove it only once its job has finished: no job is lost.
    w.pools
        .scale_pool(pb::ScalePoolRequest {
            organization_id: w.org.clone(),
            name: "burst".into(),
            desired: 0,
            reason: String::new(),
        })
        .await
        .unwrap();
    let draining = eventually(Duration::from_secs(20), "a draining removal", || async {
        get_pool(&w, "burst").await.requests.into_iter().find(|r| r.state == pb::ScaleRequestState::Draining as i32)
    })
    .await;
    assert_eq!(draining.node_ids, std::slice::from_ref(&busy));
    let call = hook.next(Duration::from_secs(30)).await;
    assert_eq!(call.body["action"].as_str(), Some("remove"));
    let j = job(&cp, &job_id).await;
    assert_eq!(
        (j.status, j.attempt),
        (pb::JobStatus::Succeeded as i32, 1),
        "finished on its first attempt before removal: {j:?}"
    );
    let mut busy_agent = busy_agent;
    busy_agent.signal(libc::SIGTERM);
    busy_agent.wait(Duration::from_secs(20)).await;
    eventually(Duration::from_secs(20), "the pool to be empty", || async {
        let p = get_pool(&w, "burst").await;
        (p.pool.as_ref().unwrap().nodes == 0 && p.requests.is_empty()).then_some(())
    })
    .await;

    // Every step is an event, the job's end before the removal was asked.
    let evs = pool_events(&cp, &w.org).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e.kind.as_str()).collect();
    for k in ["pool.created", "pool.scaled", "pool.scale_requested", "pool.scale_submitted", "pool.scale_fulfilled"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert!(
        evs.iter().all(|e| !serde_json::to_string(&event_payload(e)).unwrap().contains(TOKEN)),
        "no event has the token"
    );
    let submitted = evs.iter().rfind(|e| e.kind == "pool.scale_submitted").unwrap().sequence;
    let mut ev = EventServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    let job_done = ev
        .list_events(pb::ListEventsRequest {
            kind_prefix: "job.succeeded".into(),
            subject: job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(job_done[0].sequence < submitted, "the job ended before its node's removal was asked");
}

async fn autoscaling_grows_for_pending_jobs_and_shrinks_when_idle(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let hook = Receiver::start().await;
    let mut w = world(&cp, "auto").await;
    w.pools
        .create_pool(pb::CreatePoolRequest {
            organization_id: w.org.clone(),
            name: "auto".into(),
            spec: Some(pb::PoolSpec {
                min: 0,
                max: 2,
                provider: Some(webhook(&hook)),
                request_timeout: secs(60),
                drain_timeout: secs(60),
                autoscale: Some(pb::Autoscale {
                    enabled: true,
                    metric: pb::AutoscaleMetric::PendingJobs as i32,
                    target_percent: 0,
                    pending_after: secs(1),
                    jobs_per_node: 1,
                    period: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
                    cooldown: secs(8),
                    max_step_up: 5,
                    max_step_down: 5,
                    canary_percent: 0,
                }),
            }),
            desired: 0,
        })
        .await
        .unwrap();

    // Three jobs wait for a pool with no nodes.
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(
            cp.jobs().await.submit_job(job_on("auto", "sleep", &["1"])).await.unwrap().into_inner().job.unwrap().job_id,
        );
    }
    // The autoscaler wants 3 and stops at max 2; the provider is asked.
    let call = hook.next(Duration::from_secs(30)).await;
    assert_eq!((call.body["action"].as_str(), call.body["count"].as_u64()), (Some("add"), Some(2)));
    // Still 3 waiting at max: held, with why, before the machines come.
    eventually(Duration::from_secs(20), "a hold at max", || async {
        pool_events(&cp, &w.org)
            .await
            .iter()
            .any(|e| e.kind == "pool.autoscale_held" && event_payload(e)["reason"] == "at_max")
            .then_some(())
    })
    .await;
    let mut agents: HashMap<String, Agent> = HashMap::new();
    for i in 0..2 {
        let a = Agent::start_joining(&cp, &format!("auto-{i}"), &w.join_token, &[]);
        agents.insert(a.node_id().await, a);
    }
    for id in &jobs {
        eventually(Duration::from_secs(30), "each job to succeed", || async {
            (job(&cp, id).await.status == pb::JobStatus::Succeeded as i32).then_some(())
        })
        .await;
    }

    // Idle: back to min (0) once the cooldown has passed; the nodes are
    // drained and the provider asked to remove them both.
    let call = hook.next(Duration::from_secs(30)).await;
    assert_eq!(call.body["action"].as_str(), Some("remove"));
    let nodes: Vec<String> =
        call.body["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for id in &nodes {
        let mut a = agents.remove(id).unwrap_or_else(|| panic!("{id} is one of the pool's"));
        a.signal(libc::SIGTERM);
        a.wait(Duration::from_secs(20)).await;
    }
    eventually(Duration::from_secs(20), "the pool to be empty", || async {
        let p = get_pool(&w, "auto").await;
        (p.pool.as_ref().unwrap().nodes == 0 && p.requests.is_empty()).then_some(())
    })
    .await;

    // Both decisions are events with their reasons and figures; what was
    // wanted and not done (more than max, requests open, cooldown) too.
    let evs = pool_events(&cp, &w.org).await;
    let scaled: Vec<Value> = evs.iter().filter(|e| e.kind == "pool.scaled").map(event_payload).collect();
    assert_eq!(scaled.len(), 2, "{scaled:?}");
    assert_eq!((scaled[0]["from"].as_u64(), scaled[0]["to"].as_u64()), (Some(0), Some(2)), "{scaled:?}");
    assert_eq!((scaled[0]["by"].as_str(), scaled[0]["metric"].as_str()), (Some("autoscaler"), Some("pending_jobs")));
    assert_eq!(scaled[0]["wanted"].as_u64(), Some(3), "{scaled:?}");
    assert!(scaled[0]["reason"].as_str().unwrap().contains("wants 3"), "{scaled:?}");
    assert_eq!(
        (scaled[1]["from"].as_u64(), scaled[1]["to"].as_u64(), scaled[1]["wanted"].as_u64()),
        (Some(2), Some(0), Some(0))
    );
    let held: Vec<String> = evs
        .iter()
        .filter(|e| e.kind == "pool.autoscale_held")
        .map(|e| event_payload(e)["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(held.iter().any(|r| r == "at_max"), "{held:?}");
    assert!(held.iter().any(|r| r == "cooldown"), "{held:?}");
    for id in &jobs {
        assert_eq!(job(&cp, id).await.attempt, 1, "no job was lost or retried");
    }
}
