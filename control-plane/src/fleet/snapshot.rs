//! The node snapshot the work loop and job submission share, and the
//! scheduler's views of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tether_scheduler::NodeView;
use tether_store::StoreError;
use tether_types::{AllocStatus, Allocation, Error, ErrorCode, Node, NodeId, NodeStatus};

/// A node without a score yet (the scoring loop has not run since it
/// enrolled) is taken as reliable as a new node: its uptime is all it has.
const UNSCORED_RELIABILITY: f64 = 0.7;

/// The node list is read again at once when this process wrote a node, and
/// in the background this often in any case, for writes by other processes on
/// the same database (none today: one control plane per database). Reading
/// ten thousand rows costs ~100 ms of a core, which showed as the submit-to-
/// agent p99 (26-36 ms with a 5 s refresh, 11-14 ms with 60 s).
pub const NODES_MAX_AGE: Duration = Duration::from_secs(60);

/// A copy of every node row, shared by the work loop and job submission,
/// read again when this process changed a node, and refreshed in the
/// background every [`NODES_MAX_AGE`]. At ten thousand nodes a read costs
/// about a hundred milliseconds, which no placement should wait for.
#[derive(Default)]
pub struct NodeCache(tokio::sync::Mutex<NodeCacheInner>);

#[derive(Default)]
struct NodeCacheInner {
    snapshot: Arc<NodeSnapshot>,
    version: Option<u64>,
}

/// The node rows, their scheduler views with nothing allocated, and where
/// each node is in both.
#[derive(Default)]
pub struct NodeSnapshot {
    pub nodes: Vec<Node>,
    pub base_views: Vec<NodeView>,
    pub index: HashMap<NodeId, usize>,
}

impl NodeSnapshot {
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }
}

impl NodeSnapshot {
    async fn read(store: &tether_store::Store) -> Result<Self, StoreError> {
        Ok(Self::of(store.node_list_all().await?))
    }

    fn of(nodes: Vec<Node>) -> Self {
        let base_views = nodes.iter().map(base_view).collect();
        let index = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        NodeSnapshot { nodes, base_views, index }
    }
}

impl NodeCache {
    pub async fn get(&self, store: &tether_store::Store) -> Result<Arc<NodeSnapshot>, StoreError> {
        // Held across the read, so that concurrent callers share one read.
        let mut c = self.0.lock().await;
        // Read before the rows: a write counted after this is read next time.
        let version = store.node_version();
        if c.version != Some(version) {
            c.snapshot = Arc::new(NodeSnapshot::read(store).await?);
            c.version = Some(version);
        }
        Ok(c.snapshot.clone())
    }

    /// Reads the rows without holding up readers, and swaps them in unless
    /// this process wrote a node meanwhile (then `get` reads anyway).
    pub async fn refresh(&self, store: &tether_store::Store) -> Result<(), StoreError> {
        let version = store.node_version();
        let snapshot = Arc::new(NodeSnapshot::read(store).await?);
        let mut c = self.0.lock().await;
        // Unchanged but for leases: keep the snapshot, so that work passes
        // keep their views instead of rebuilding them (a latency spike every
        // refresh at ten thousand nodes).
        if c.version == Some(version)
            && store.node_version() == version
            && !same_but_leases(&c.snapshot.nodes, &snapshot.nodes)
        {
            c.snapshot = snapshot;
        }
        Ok(())
    }
}

/// Whether two node lists differ only in what every lease flush or
/// reconnect changes (last seen, session generation), which nothing that
/// reads the snapshot uses.
fn same_but_leases(old: &[Node], new: &[Node]) -> bool {
    old.len() == new.len()
        && old.iter().zip(new).all(|(a, b)| {
            let mut b = b.clone();
            b.last_seen_at = a.last_seen_at;
            b.session_generation = a.session_generation;
            *a == b
        })
}

impl NodeSnapshot {
    /// Refuses a request no registered node the project may use could ever
    /// satisfy (static properties only: pool, labels, GPU model, total
    /// capacity), with each node's reason. A project without nodes accepts
    /// work, which waits.
    pub fn satisfiable(&self, req: &tether_scheduler::Request) -> Result<(), Error> {
        let mut live = self
            .nodes
            .iter()
            .zip(&self.base_views)
            .filter(|(n, _)| req.access.may_use(n.place()) && n.status != NodeStatus::Left)
            .peekable();
        if live.peek().is_none() {
            return Ok(());
        }
        let mut reasons = Vec::new();
        for (n, view) in live {
            // What is allocated does not matter here.
            match tether_scheduler::static_mismatch(view, req) {
                None => return Ok(()),
                Some(r) if reasons.len() < 10 => reasons.push(format!("{}: {r}", n.id)),
                Some(_) => {}
            }
        }
        Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!("no node can ever satisfy these constraints ({})", reasons.join("; ")),
        ))
    }
}

/// A node as the scheduler sees it, with nothing allocated.
pub(crate) fn base_view(n: &Node) -> NodeView {
    let ready = n.status == NodeStatus::Ready;
    NodeView {
        id: n.id.clone(),
        org: n.org_id.clone(),
        dedicated: n.project_id.clone(),
        ready,
        active: n.desired_state.accepts_work(),
        state: if !ready { n.status.as_str().into() } else { n.desired_state.as_str().into() },
        pool: n.pool.clone(),
        labels: n.labels.clone(),
        gpu_models: n.capabilities.gpus.iter().map(|g| g.model.clone()).collect(),
        capacity: tether_types::Resources {
            cpu_millis: u64::from(n.capabilities.cpu_count) * 1000,
            memory_mb: n.capabilities.memory_mb,
            gpus: n.capabilities.gpus.len() as u64,
        },
        allocated: Default::default(),
        reliability: 0.0,
        groups: HashMap::new(),
    }
}

/// Sets what is allocated on each node (and per group) from the active
/// allocations, and each node's reliability score from `scores`.
/// `views[i]` is `nodes[i]`.
pub(crate) fn apply_usage(
    views: &mut [NodeView],
    nodes: &[Node],
    index: &HashMap<NodeId, usize>,
    active: &[Allocation],
    scores: &crate::scoring::Board,
) {
    for (v, n) in views.iter_mut().zip(nodes) {
        v.reliability = scores.score(&n.id).unwrap_or(UNSCORED_RELIABILITY);
        v.allocated = Default::default();
        v.groups.clear();
    }
    for a in active {
        let Some(v) = index.get(&a.node_id).map(|&i| &mut views[i]) else { continue };
        v.allocated = v.allocated.add(&a.resources);
        if let Some(w) = &a.workload_id
            && a.status != AllocStatus::Stopping
        {
            *v.groups.entry(w.to_string()).or_default() += 1;
        }
    }
}

/// Scheduler views of `nodes` with `active` allocated on them.
pub fn node_views(nodes: &[Node], active: &[Allocation], scores: &crate::scoring::Board) -> Vec<NodeView> {
    let mut views: Vec<NodeView> = nodes.iter().map(base_view).collect();
    let index: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    apply_usage(&mut views, nodes, &index, active, scores);
    views
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tether_types::{DesiredNodeState, JoinTokenId, OrgId, ProjectAccess, ProjectId};

    /// A ready node for tests, `i` making its id, dedicated to project [1; 10].
    pub(crate) fn node(i: u8, desired: DesiredNodeState) -> Node {
        Node {
            id: NodeId::from_random([i; 10]),
            org_id: OrgId::from_random([1; 10]),
            project_id: Some(ProjectId::from_random([1; 10])),
            status: NodeStatus::Ready,
            desired_state: desired,
            desired_state_version: 1,
            capabilities: Default::default(),
            labels: Default::default(),
            pool: String::new(),
            registered_at: 0,
            status_changed_at: 0,
            last_seen_at: 0,
            session_generation: 0,
            join_token_id: Some(JoinTokenId::from_random([0; 10])),
            desired_state_reason: String::new(),
            acked_desired_state_version: 0,
            desired_state_nack: String::new(),
            drain_deadline: None,
            transport: Default::default(),
        }
    }

    #[test]
    fn leases_alone_do_not_change_the_snapshot() {
        let old = vec![node(1, DesiredNodeState::Active), node(2, DesiredNodeState::Active)];
        let mut new = old.clone();
        new[0].last_seen_at += 10_000;
        new[1].session_generation += 1;
        assert!(same_but_leases(&old, &new));
        new[1].desired_state = DesiredNodeState::Paused;
        assert!(!same_but_leases(&old, &new), "a desired state is not a lease");
        let mut moved = old.clone();
        moved[0].status = NodeStatus::Unreachable;
        assert!(!same_but_leases(&old, &moved));
        assert!(!same_but_leases(&old, &old[..1]), "a node gone");
    }

    #[test]
    fn satisfiable_asks_only_what_never_changes() {
        use tether_scheduler::{Objective, Request};
        let project = ProjectId::from_random([1; 10]);
        let mut gpu_node = node(1, DesiredNodeState::Active);
        gpu_node.capabilities.cpu_count = 2;
        gpu_node.capabilities.gpus = vec![tether_types::Gpu { model: "a100".into(), memory_mb: 0 }];
        let mut left = node(2, DesiredNodeState::Active);
        left.capabilities.cpu_count = 64;
        left.status = NodeStatus::Left;
        let snap = NodeSnapshot::of(vec![gpu_node, left]);
        let access = |p: &ProjectId| {
            Arc::new(ProjectAccess {
                project: p.clone(),
                org: OrgId::from_random([1; 10]),
                pools: Default::default(),
                quota: Default::default(),
            })
        };
        let req = |p: &ProjectId, cpu: u64, gpus: u64| {
            Request::new(
                access(p),
                tether_types::Resources { cpu_millis: cpu, memory_mb: 0, gpus },
                Default::default(),
                Objective::Balanced,
            )
        };
        assert_eq!(snap.satisfiable(&req(&project, 2000, 1)), Ok(()), "fits the node's total");
        let err = snap.satisfiable(&req(&project, 4000, 0)).unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert!(err.message.contains(NodeId::from_random([1; 10]).as_str()), "names each node: {}", err.message);
        assert!(
            !err.message.contains(NodeId::from_random([2; 10]).as_str()),
            "a node that left does not count: {}",
            err.message
        );
        let other = ProjectId::from_random([9; 10]);
        assert_eq!(snap.satisfiable(&req(&other, 1_000_000, 64)), Ok(()), "a project without nodes: work waits");
    }
}
