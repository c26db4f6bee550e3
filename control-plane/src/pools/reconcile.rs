//! One round of the `pools` loop (leader only): moves each open request
//! on, then asks the provider for the difference between a managed pool's
//! desired count and its nodes.
//!
//! - Add: a request is written (`requested`) before the provider is
//!   called, and fails at once if the provider refuses. Nodes that enrol
//!   into the pool after it was made are claimed by it until it has its
//!   count (`fulfilled`); at its deadline it fails.
//! - Remove: the least loaded nodes are drained first (`draining`, each
//!   node's drain bounded by the pool's drain timeout, after which its jobs
//!   are stopped and retried elsewhere); the provider is asked to remove
//!   them only once no work is left on them. When they are down or gone
//!   the request is fulfilled and they are deregistered. If the provider
//!   refuses, or the deadline passes, the nodes that are still up are
//!   made active again.
//! - After a failure the pool waits before asking again: 10 s, doubling
//!   with each failure in a row, at most 5 minutes.

use std::collections::HashSet;
use std::time::Duration;

use tether_store::StoreError;
use tether_types::pool::{Pool, ScaleAction, ScaleRequest, ScaleState};
use tether_types::{Allocation, DesiredNodeState, Node, NodeId, NodeStatus};

use super::provider::{Call, CallNode};
use super::{facts, members};
use crate::app::{App, now_ms};

const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// When the pool may ask its provider again after the failures at the
/// head of `recent` (newest first); None when the newest did not fail.
pub fn retry_at(recent: &[ScaleRequest]) -> Option<i64> {
    let failed = recent.iter().take_while(|r| r.state == ScaleState::Failed).count() as u32;
    let newest = recent.first().filter(|_| failed > 0)?;
    let wait = BACKOFF_FIRST.saturating_mul(1 << (failed - 1).min(8)).min(BACKOFF_MAX);
    Some(newest.updated_at + wait.as_millis() as i64)
}

fn request_id() -> String {
    format!("sr-{}", tether_auth::sigv4::hex_encode(&tether_auth::random_bytes::<8>()))
}

/// One round; answers what it did, for the task's status.
pub async fn round(app: &App) -> Result<String, StoreError> {
    let pools: Vec<Pool> = app.store.pool_list(None).await?.into_iter().filter(|p| p.spec.provider.is_some()).collect();
    let open = app.store.scale_requests_open().await?;
    if pools.is_empty() && open.is_empty() {
        return Ok(String::new());
    }
    let snap = app.nodes.get(&app.store).await?;
    let active = app.store.allocations_active().await?;
    let now = now_ms();
    let mut did = Vec::new();
    for pool in &pools {
        let mine: Vec<ScaleRequest> =
            open.iter().filter(|r| r.org_id == pool.org_id && r.pool == pool.name).cloned().collect();
        // Nodes any open request holds, so that two adds never claim one.
        let mut claimed: HashSet<NodeId> = mine.iter().flat_map(|r| r.nodes.iter().cloned()).collect();
        let mut still_open = Vec::new();
        for mut r in mine {
            if let Some(what) = progress(app, pool, &mut r, &snap.nodes, &active, &mut claimed, now).await? {
                did.push(what);
            }
            if r.state.is_open() {
                still_open.push(r);
            }
        }
        // Sizing waits for what is under way.
        let refs: Vec<&ScaleRequest> = still_open.iter().collect();
        let f = facts(pool, &snap.nodes, &active, &refs);
        let effective = f.current + f.adding;
        if pool.desired > effective && f.open_removes == 0 {
            if let Some(at) = retry_at(&app.store.scale_requests(&pool.org_id, &pool.name, 16).await?)
                && now < at
            {
                continue;
            }
            did.push(add(app, pool, pool.desired - effective, now).await?);
        } else if pool.desired < effective && f.open_adds == 0 && f.open_removes == 0 {
            let taken = super::removing(&refs);
            let pick = least_loaded(pool, &snap.nodes, &active, &taken, (effective - pool.desired) as usize);
            if !pick.is_empty() {
                did.push(remove(app, pool, pick, now).await?);
            }
        }
    }
    Ok(did.join("; "))
}

/// Moves one open request on; answers what changed.
async fn progress(
    app: &App,
    pool: &Pool,
    r: &mut ScaleRequest,
    nodes: &[Node],
    active: &[Allocation],
    claimed: &mut HashSet<NodeId>,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let node = |id: &NodeId| nodes.iter().find(|n| &n.id == id);
    match (r.action, r.state) {
        (ScaleAction::Add, _) => {
            let before = r.nodes.len();
            for n in members(nodes, &pool.org_id, &pool.name) {
                if r.nodes.len() >= r.count as usize {
                    break;
                }
                if n.registered_at >= r.created_at && claimed.insert(n.id.clone()) {
                    r.nodes.push(n.id.clone());
                }
            }
            if r.nodes.len() >= r.count as usize {
                r.state = ScaleState::Fulfilled;
                r.reason = String::new();
                finish(app, r, "pool.scale_fulfilled", now).await?;
                return Ok(Some(format!("{} fulfilled", r.id)));
            }
            if now >= r.deadline {
                r.state = ScaleState::Failed;
                r.reason = format!("{} of {} nodes joined by the deadline", r.nodes.len(), r.count);
                finish(app, r, "pool.scale_failed", now).await?;
                return Ok(Some(format!("{} failed", r.id)));
            }
            if r.nodes.len() != before {
                r.reason = format!("{} of {} nodes joined", r.nodes.len(), r.count);
                r.updated_at = now;
                let c = app.store.scale_request_put(r, None).await?;
                app.effects().commit(c);
            }
            Ok(None)
        }
        (ScaleAction::Remove, ScaleState::Draining) => {
            let busy = active.iter().filter(|a| r.nodes.contains(&a.node_id)).count();
            if busy > 0 {
                return Ok(None);
            }
            let call_nodes: Vec<CallNode> = r.nodes.iter().filter_map(node).map(CallNode::of).collect();
            let call = Call {
                pool: &pool.name,
                organization_id: pool.org_id.as_str(),
                action: ScaleAction::Remove,
                count: r.count,
                request_id: &r.id,
                nodes: call_nodes,
            };
            let provider = pool.spec.provider.as_ref().expect("managed pools have a provider");
            match app.providers.call(provider, &call).await {
                Ok(()) => {
                    r.state = ScaleState::Requested;
                    r.reason = "drained; waiting for the provider to remove the nodes".into();
                    finish(app, r, "pool.scale_submitted", now).await?;
                    Ok(Some(format!("{} submitted", r.id)))
                }
                Err(why) => {
                    r.state = ScaleState::Failed;
                    r.reason = why;
                    finish(app, r, "pool.scale_failed", now).await?;
                    reactivate(app, r, nodes).await?;
                    Ok(Some(format!("{} failed", r.id)))
                }
            }
        }
        (ScaleAction::Remove, _) => {
            let up: Vec<&NodeId> = r
                .nodes
                .iter()
                .filter(|id| node(id).is_some_and(|n| !matches!(n.status, NodeStatus::Down | NodeStatus::Left)))
                .collect();
            if up.is_empty() {
                r.state = ScaleState::Fulfilled;
                r.reason = String::new();
                finish(app, r, "pool.scale_fulfilled", now).await?;
                for id in r.nodes.iter().filter(|id| node(id).is_some()) {
                    match crate::ops::nodes::deregister(app, id).await {
                        Ok(_) => {}
                        Err(StoreError::Domain(e)) if e.code == tether_types::ErrorCode::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(Some(format!("{} fulfilled", r.id)));
            }
            if now >= r.deadline {
                r.state = ScaleState::Failed;
                r.reason = format!("{} of {} nodes still up at the deadline", up.len(), r.nodes.len());
                finish(app, r, "pool.scale_failed", now).await?;
                reactivate(app, r, nodes).await?;
                return Ok(Some(format!("{} failed", r.id)));
            }
            Ok(None)
        }
    }
}

async fn finish(app: &App, r: &mut ScaleRequest, kind: &'static str, now: i64) -> Result<(), StoreError> {
    r.updated_at = now;
    let c = app.store.scale_request_put(r, Some(kind)).await?;
    app.effects().commit(c);
    tracing::info!(request = %r.id, pool = %r.pool, state = r.state.as_str(), reason = %r.reason, "scale request");
    Ok(())
}

/// A failed removal gives its nodes that are still up back their work.
async fn reactivate(app: &App, r: &ScaleRequest, nodes: &[Node]) -> Result<(), StoreError> {
    for n in nodes.iter().filter(|n| r.nodes.contains(&n.id)) {
        if n.desired_state == DesiredNodeState::Draining && !matches!(n.status, NodeStatus::Down | NodeStatus::Left) {
            let reason = format!("pool {} scale-down {} failed: active again", r.pool, r.id);
            crate::ops::nodes::set_desired(app, &n.id, DesiredNodeState::Active, &reason, None).await?;
        }
    }
    Ok(())
}

async fn add(app: &App, pool: &Pool, count: u32, now: i64) -> Result<String, StoreError> {
    let mut r = ScaleRequest {
        id: request_id(),
        org_id: pool.org_id.clone(),
        pool: pool.name.clone(),
        action: ScaleAction::Add,
        count,
        state: ScaleState::Requested,
        nodes: vec![],
        reason: format!("0 of {count} nodes joined"),
        created_at: now,
        updated_at: now,
        deadline: now + pool.spec.request_timeout_ms as i64,
    };
    // Durable before the provider hears of it.
    let c = app.store.scale_request_put(&r, Some("pool.scale_requested")).await?;
    app.effects().commit(c);
    let call = Call {
        pool: &pool.name,
        organization_id: pool.org_id.as_str(),
        action: ScaleAction::Add,
        count,
        request_id: &r.id,
        nodes: vec![],
    };
    let provider = pool.spec.provider.as_ref().expect("managed pools have a provider");
    if let Err(why) = app.providers.call(provider, &call).await {
        r.state = ScaleState::Failed;
        r.reason = why;
        finish(app, &mut r, "pool.scale_failed", now_ms()).await?;
        return Ok(format!("{} failed", r.id));
    }
    tracing::info!(request = %r.id, pool = %pool.name, count, "asked the provider for nodes");
    Ok(format!("{} asks for {count}", r.id))
}

/// The `count` members to remove: those not ready first, then the least
/// allocated (CPU, then memory, then allocations), newest first on a tie.
fn least_loaded(
    pool: &Pool,
    nodes: &[Node],
    active: &[Allocation],
    taken: &HashSet<NodeId>,
    count: usize,
) -> Vec<NodeId> {
    let mut c: Vec<(bool, u64, u64, usize, std::cmp::Reverse<i64>, NodeId)> = members(nodes, &pool.org_id, &pool.name)
        .filter(|n| super::counts(n, taken))
        .map(|n| {
            let mine: Vec<&Allocation> = active.iter().filter(|a| a.node_id == n.id).collect();
            let cpu = mine.iter().map(|a| a.resources.cpu_millis).sum();
            let mem = mine.iter().map(|a| a.resources.memory_mb).sum();
            (n.status == NodeStatus::Ready, cpu, mem, mine.len(), std::cmp::Reverse(n.registered_at), n.id.clone())
        })
        .collect();
    c.sort();
    c.into_iter().take(count).map(|t| t.5).collect()
}

async fn remove(app: &App, pool: &Pool, pick: Vec<NodeId>, now: i64) -> Result<String, StoreError> {
    let drain = pool.spec.drain_timeout_ms as i64;
    let r = ScaleRequest {
        id: request_id(),
        org_id: pool.org_id.clone(),
        pool: pool.name.clone(),
        action: ScaleAction::Remove,
        count: pick.len() as u32,
        state: ScaleState::Draining,
        nodes: pick,
        reason: "draining the nodes".into(),
        created_at: now,
        updated_at: now,
        deadline: now + drain + pool.spec.request_timeout_ms as i64,
    };
    let c = app.store.scale_request_put(&r, Some("pool.scale_requested")).await?;
    app.effects().commit(c);
    let reason = format!("pool {} scale-down ({})", pool.name, r.id);
    for id in &r.nodes {
        crate::ops::nodes::set_desired(app, id, DesiredNodeState::Draining, &reason, Some(now + drain)).await?;
    }
    tracing::info!(request = %r.id, pool = %pool.name, nodes = r.nodes.len(), "draining nodes to remove");
    Ok(format!("{} drains {}", r.id, r.nodes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(at: i64) -> ScaleRequest {
        ScaleRequest {
            id: String::new(),
            org_id: tether_types::OrgId::from_random([1; 10]),
            pool: "p".into(),
            action: ScaleAction::Add,
            count: 1,
            state: ScaleState::Failed,
            nodes: vec![],
            reason: String::new(),
            created_at: at,
            updated_at: at,
            deadline: at,
        }
    }

    #[test]
    fn backoff_doubles_with_failures_in_a_row() {
        assert_eq!(retry_at(&[]), None);
        assert_eq!(retry_at(&[failed(1_000)]), Some(11_000));
        assert_eq!(retry_at(&[failed(5_000), failed(1_000)]), Some(25_000));
        let ok = ScaleRequest { state: ScaleState::Fulfilled, ..failed(0) };
        assert_eq!(retry_at(&[ok.clone(), failed(1_000)]), None, "a success ends the run");
        let many: Vec<_> = (0..12).map(|_| failed(0)).collect();
        assert_eq!(retry_at(&many), Some(300_000), "at most five minutes");
    }
}
