//! Pools kept at a desired size. A pool's nodes are its organisation's
//! shared nodes whose `pool` is its name. The `pools` loop
//! ([`reconcile`]) compares them with the desired count and asks the
//! provider ([`provider`]) for the difference; the `autoscaler` loop
//! ([`autoscale`]) moves the desired count by a metric. What both read of
//! a pool is computed here, from the node snapshot, the active allocations
//! and the open requests.

pub mod autoscale;
pub mod provider;
pub mod reconcile;

use std::collections::HashSet;

use tether_proto::pb;
use tether_types::pool::{Pool, ScaleAction, ScaleRequest, ScaleState};
use tether_types::{Allocation, DesiredNodeState, Node, NodeId, NodeStatus, OrgId, Resources, millis_to_timestamp};

/// The organisation's shared nodes in `pool` that have not left.
pub fn members<'a>(nodes: &'a [Node], org: &'a OrgId, pool: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
    nodes
        .iter()
        .filter(move |n| &n.org_id == org && n.project_id.is_none() && n.pool == pool && n.status != NodeStatus::Left)
}

/// Ready and taking work.
pub fn is_ready(n: &Node) -> bool {
    n.status == NodeStatus::Ready && n.desired_state == DesiredNodeState::Active
}

/// Whether a member counts towards the pool's size: not down, not being
/// drained or stopped, not taken by an open removal.
pub fn counts(n: &Node, taken: &HashSet<NodeId>) -> bool {
    n.status != NodeStatus::Down
        && !matches!(n.desired_state, DesiredNodeState::Draining | DesiredNodeState::Stopped)
        && !taken.contains(&n.id)
}

/// A pool as its loops see it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Members (not left).
    pub nodes: u32,
    /// Ready and active.
    pub ready: u32,
    /// Members that count towards the desired size: not down, not being
    /// drained or stopped, not being removed.
    pub current: u32,
    pub capacity: Resources,
    pub allocated: Resources,
    /// Nodes asked for and not joined; nodes being removed.
    pub adding: u32,
    pub removing: u32,
    /// Open add requests.
    pub open_adds: u32,
    /// Open removals.
    pub open_removes: u32,
}

/// Adds `r` to `total`.
pub fn add(total: &mut Resources, r: &Resources) {
    total.cpu_millis += r.cpu_millis;
    total.memory_mb += r.memory_mb;
    total.gpus += r.gpus;
}

/// What a node offers (as the scheduler counts it).
pub fn capacity_of(n: &Node) -> Resources {
    Resources {
        cpu_millis: u64::from(n.capabilities.cpu_count) * 1000,
        memory_mb: n.capabilities.memory_mb,
        gpus: n.capabilities.gpus.len() as u64,
    }
}

/// The nodes the open removals of a pool take.
pub fn removing(open: &[&ScaleRequest]) -> HashSet<NodeId> {
    open.iter().filter(|r| r.action == ScaleAction::Remove).flat_map(|r| r.nodes.iter().cloned()).collect()
}

pub fn facts(pool: &Pool, nodes: &[Node], active: &[Allocation], open: &[&ScaleRequest]) -> Facts {
    let taken = removing(open);
    let mut f = Facts::default();
    let mut ready_ids = HashSet::new();
    for n in members(nodes, &pool.org_id, &pool.name) {
        f.nodes += 1;
        if is_ready(n) && !taken.contains(&n.id) {
            f.ready += 1;
            add(&mut f.capacity, &capacity_of(n));
            ready_ids.insert(&n.id);
        }
        if counts(n, &taken) {
            f.current += 1;
        }
    }
    for a in active.iter().filter(|a| ready_ids.contains(&a.node_id)) {
        add(&mut f.allocated, &a.resources);
    }
    for r in open.iter().filter(|r| r.org_id == pool.org_id && r.pool == pool.name) {
        match r.action {
            ScaleAction::Add => {
                f.open_adds += 1;
                f.adding += r.count.saturating_sub(r.nodes.len() as u32);
            }
            ScaleAction::Remove => {
                f.open_removes += 1;
                f.removing += r.nodes.len() as u32;
            }
        }
    }
    f
}

/// Why the pool's provider is failing: the newest request's reason when it
/// failed (`recent` newest first).
pub fn provider_error(recent: &[ScaleRequest]) -> Option<&str> {
    recent.first().filter(|r| r.state == ScaleState::Failed).map(|r| r.reason.as_str())
}

pub fn resources_pb(r: &Resources) -> pb::Resources {
    pb::Resources { cpu_millis: r.cpu_millis as i64, memory_mb: r.memory_mb as i64, gpus: r.gpus as i64 }
}

/// A pool record with its facts, as the API answers it.
pub fn to_pb(p: &Pool, f: &Facts, provider_error: Option<&str>) -> pb::Pool {
    pb::Pool {
        organization_id: p.org_id.as_str().to_owned(),
        name: p.name.clone(),
        spec: Some(p.spec.to_pb()),
        desired: p.desired,
        version: p.version,
        managed: true,
        nodes: f.nodes,
        ready: f.ready,
        capacity: Some(resources_pb(&f.capacity)),
        allocated: Some(resources_pb(&f.allocated)),
        adding: f.adding,
        removing: f.removing,
        provider_error: provider_error.unwrap_or_default().to_owned(),
        created_at: Some(millis_to_timestamp(p.created_at)),
        updated_at: Some(millis_to_timestamp(p.updated_at)),
        scaled_at: Some(millis_to_timestamp(p.scaled_at)),
    }
}
