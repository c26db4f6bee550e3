//! Pools: create, update with versions, scale within limits, requests and
//! their events, delete.

use tether_types::pool::{PoolSpec, Provider, ScaleAction, ScaleRequest, ScaleState};

use super::*;

fn spec(min: u32, max: u32) -> PoolSpec {
    PoolSpec {
        min,
        max,
        provider: Some(Provider::Webhook { url: "http://127.0.0.1:9/scale".into(), bearer_token: "s3cret".into() }),
        request_timeout_ms: 60_000,
        drain_timeout_ms: 60_000,
        autoscale: None,
    }
}

pub(super) async fn pools_scale_requests_and_events(store: Store) {
    let p = project(&store).await;
    let org = store.tenants().await.unwrap().projects[&p].org_id.clone();
    let created = store.pool_create(&org, "gpu", &spec(1, 5), 9, 1_000).await.unwrap().value;
    assert_eq!((created.desired, created.version), (5, 1), "the first desired count is kept within max");
    let err = store.pool_create(&org, "gpu", &spec(0, 1), 0, 1_001).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::AlreadyExists);

    // Scale within limits only; a pool without a provider cannot scale.
    let (scaled, from) =
        store.pool_scale(&org, "gpu", 3, "ops", serde_json::json!({"by": "test"}), 2_000).await.unwrap().value;
    assert_eq!((scaled.desired, from, scaled.scaled_at), (3, 5, 2_000));
    let err = store.pool_scale(&org, "gpu", 6, "", serde_json::json!({}), 2_001).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::FailedPrecondition);
    let _ = store.pool_create(&org, "bare", &PoolSpec { provider: None, ..spec(0, 3) }, 0, 2_002).await.unwrap();
    let err = store.pool_scale(&org, "bare", 1, "", serde_json::json!({}), 2_003).await.unwrap_err();
    assert!(Error::from(err).message.contains("no provider"));

    // Update: versions, the desired count clamped to the new limits.
    let err = store.pool_update(&org, "gpu", 7, |s| Ok(s.clone()), 3_000).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Aborted);
    let up = store.pool_update(&org, "gpu", 1, |_| Ok(spec(0, 2)), 3_001).await.unwrap().value;
    assert_eq!((up.version, up.desired, up.spec.max), (2, 2, 2), "scaling is no new version of the spec");
    let err = store.pool_update(&org, "nope", 0, |s| Ok(s.clone()), 3_002).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    assert_eq!(store.pool_get(&org, "gpu").await.unwrap(), Some(up.clone()));
    let names: Vec<_> = store.pool_list(Some(&org)).await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["bare", "gpu"]);
    assert_eq!(store.pool_list(None).await.unwrap().len(), 2);

    // Requests: written, changed, listed newest first; only open ones are open.
    let mut r = ScaleRequest {
        id: "sr-1".into(),
        org_id: org.clone(),
        pool: "gpu".into(),
        action: ScaleAction::Add,
        count: 2,
        state: ScaleState::Requested,
        nodes: vec![],
        reason: String::new(),
        created_at: 4_000,
        updated_at: 4_000,
        deadline: 64_000,
    };
    let _ = store.scale_request_put(&r, Some("pool.scale_requested")).await.unwrap();
    let r2 = ScaleRequest { id: "sr-2".into(), action: ScaleAction::Remove, created_at: 4_100, ..r.clone() };
    let _ = store.scale_request_put(&r2, None).await.unwrap();
    r.state = ScaleState::Fulfilled;
    r.nodes = vec![id(NodeId::from_random, 7)];
    r.updated_at = 5_000;
    let _ = store.scale_request_put(&r, Some("pool.scale_fulfilled")).await.unwrap();
    let all = store.scale_requests(&org, "gpu", 10).await.unwrap();
    assert_eq!(all.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ["sr-2", "sr-1"]);
    assert_eq!(all[1], r);
    assert_eq!(store.scale_requests_open().await.unwrap(), vec![r2.clone()]);
    assert_eq!(store.scale_requests(&org, "gpu", 1).await.unwrap().len(), 1);

    // Every change is an event of the organisation, subject the pool; the
    // bearer token is in none.
    let evs = store
        .events_query(
            &EventQuery { kind_prefix: "pool.".into(), ..EventQuery::new(EventScope::Org(org.clone()), 0) },
            100,
        )
        .await
        .unwrap();
    let kinds: Vec<_> = evs.iter().filter(|e| e.subject == "gpu").map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["pool.created", "pool.scaled", "pool.updated", "pool.scale_requested", "pool.scale_fulfilled"]);
    assert!(evs.iter().all(|e| !e.payload.to_string().contains("s3cret")), "no event carries the token");
    let scaled_ev = &evs[1].payload;
    assert_eq!(
        (scaled_ev["from"].as_u64(), scaled_ev["to"].as_u64(), scaled_ev["by"].as_str()),
        (Some(5), Some(3), Some("test"))
    );

    // Delete takes the requests with it.
    let _ = store.pool_delete(&org, "gpu", 6_000).await.unwrap();
    assert_eq!(store.pool_get(&org, "gpu").await.unwrap(), None);
    assert!(store.scale_requests_open().await.unwrap().is_empty());
    let err = store.pool_delete(&org, "gpu", 6_001).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
}
