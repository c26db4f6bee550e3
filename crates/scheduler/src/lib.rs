//! Placement as a pure function: filter, then score.
//!
//! Owns the rules for which nodes may take a piece of work and how the
//! eligible ones are ranked. It does no IO and keeps no state: callers pass a
//! snapshot of the nodes with what is already allocated on them.
//!
//! Properties (property-tested below):
//! - never over-commit: a placement fits in the node's free resources, and a
//!   batch placed with [`place_batch`] never exceeds any node's capacity;
//! - never place on an ineligible node (not ready, not active, not one the
//!   project may use, wrong pool, labels or GPU model);
//! - never exceed a project's quota: a batch charges each placement to its
//!   project in a [`Ledger`] before the next is placed;
//! - deterministic: the same input gives the same output (ties break on node id);
//! - spread spreads: with the balanced, latency or durability objective,
//!   replicas of one group go to distinct nodes while distinct nodes fit;
//! - in a large fleet a placement looks at a bounded sample of candidates
//!   ([`CANDIDATES`]) and still finds room whenever any node has it.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tether_types::{
    Constraints, LabelSelector, Labels, NodeId, NodePlace, OrgId, ProjectAccess, ProjectId, Resources, Usage,
};

/// What the scheduler optimises for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    #[default]
    Balanced,
    Durability,
    Latency,
    Cost,
}

impl Objective {
    /// Weights of (spread, binpack, reliability, anti-affinity).
    fn weights(self) -> (f64, f64, f64, f64) {
        match self {
            Objective::Balanced => (0.5, 0.0, 0.2, 0.3),
            Objective::Durability => (0.2, 0.0, 0.4, 0.4),
            Objective::Latency => (0.7, 0.0, 0.2, 0.1),
            Objective::Cost => (0.0, 0.8, 0.1, 0.1),
        }
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub org: OrgId,
    /// The project the node is dedicated to, if any.
    pub dedicated: Option<ProjectId>,
    /// Status is ready.
    pub ready: bool,
    /// Desired state is active (not paused, draining, stopped or quarantined).
    pub active: bool,
    /// Why it is not ready/active, for the filtered list ("unreachable", "paused").
    pub state: String,
    pub pool: String,
    pub labels: Labels,
    pub gpu_models: Vec<String>,
    pub capacity: Resources,
    pub allocated: Resources,
    /// 0..=1; 1 is a node that never failed.
    pub reliability: f64,
    /// Allocations per group (e.g. workload id) already on the node.
    pub groups: HashMap<String, u32>,
}

impl NodeView {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }

    pub fn place(&self) -> NodePlace<'_> {
        NodePlace { id: &self.id, org: &self.org, pool: &self.pool, dedicated: self.dedicated.as_ref() }
    }
}

/// What each project's active allocations hold, charged as a batch places.
#[derive(Debug, Clone, Default)]
pub struct Ledger(pub HashMap<ProjectId, Usage>);

impl Ledger {
    pub fn used(&self, p: &ProjectId) -> Usage {
        self.0.get(p).copied().unwrap_or_default()
    }

    /// Why placing `req` would exceed its project's quota, if it would.
    pub fn over_quota(&self, req: &Request) -> Option<String> {
        req.access.quota.exceeded_by(&self.used(&req.access.project), &req.resources)
    }

    pub fn charge(&mut self, p: &ProjectId, r: &Resources) {
        self.0.entry(p.clone()).or_default().charge(r);
    }
}

/// What to place.
#[derive(Debug, Clone)]
pub struct Request {
    /// The project placing, with the nodes it may use and its quota.
    pub access: Arc<ProjectAccess>,
    pub resources: Resources,
    pub constraints: Constraints,
    pub selector: LabelSelector,
    pub objective: Objective,
    /// Spread replicas of the same group (a workload id) across nodes.
    pub group: Option<String>,
    /// For work that needs sealed secrets: the nodes that hold a copy of
    /// each (no other node could open them). `None`: no secrets.
    pub holders: Option<Arc<HashSet<NodeId>>>,
}

impl Request {
    pub fn new(
        access: Arc<ProjectAccess>,
        resources: Resources,
        constraints: Constraints,
        objective: Objective,
    ) -> Self {
        let selector = constraints.selector();
        Request { access, resources, constraints, selector, objective, group: None, holders: None }
    }

    pub fn project(&self) -> &ProjectId {
        &self.access.project
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub node: NodeId,
    pub score: f64,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    pub node: NodeId,
    pub reason: String,
}

/// Why `node` cannot take `req` even when empty (static constraints), if so.
pub fn static_mismatch(node: &NodeView, req: &Request) -> Option<String> {
    let c = &req.constraints;
    if !c.pool.is_empty() && node.pool != c.pool {
        return Some(format!("pool is {:?}, not {:?}", node.pool, c.pool));
    }
    if !req.selector.matches(&node.labels) {
        return Some(format!("labels do not match {:?}", c.label_selector));
    }
    if !c.gpu_model.is_empty() && !node.gpu_models.iter().any(|m| m == &c.gpu_model) {
        return Some(format!("no GPU of model {:?}", c.gpu_model));
    }
    if !req.resources.fits_in(&node.capacity) {
        return Some(format!("capacity {} too small", describe(&node.capacity)));
    }
    if req.holders.as_ref().is_some_and(|h| !h.contains(&node.id)) {
        return Some("holds no copy of a secret the work needs (yet)".into());
    }
    None
}

fn describe(r: &Resources) -> String {
    format!("cpu={}m mem={}MB gpus={}", r.cpu_millis, r.memory_mb, r.gpus)
}

fn filter(node: &NodeView, req: &Request) -> Option<String> {
    if !node.ready {
        return Some(format!("node is {}", node.state));
    }
    if !node.active {
        return Some(format!("node is {}", node.state));
    }
    if let Some(why) = static_mismatch(node, req) {
        return Some(why);
    }
    let free = node.free();
    if !req.resources.fits_in(&free) {
        return Some(format!("free {} too small", describe(&free)));
    }
    None
}

fn ratio(used: u64, cap: u64) -> f64 {
    if cap == 0 { 0.0 } else { (used as f64 / cap as f64).min(1.0) }
}

/// Whether the node can take the request now; the allocation-free twin of
/// [`filter`], for the hot path.
fn eligible(node: &NodeView, req: &Request) -> bool {
    let c = &req.constraints;
    node.ready
        && node.active
        && req.access.may_use(node.place())
        && (c.pool.is_empty() || node.pool == c.pool)
        && (c.gpu_model.is_empty() || node.gpu_models.iter().any(|m| m == &c.gpu_model))
        && req.resources.fits_in(&node.free())
        && req.selector.matches(&node.labels)
}

/// (score, spread, binpack, reliability, anti-affinity)
fn components(node: &NodeView, req: &Request) -> (f64, f64, f64, f64, f64) {
    let after = node.allocated.add(&req.resources);
    let cpu = ratio(after.cpu_millis, node.capacity.cpu_millis);
    let mem = ratio(after.memory_mb, node.capacity.memory_mb);
    let binpack = (cpu + mem) / 2.0;
    let spread = 1.0 - binpack;
    let same = req.group.as_ref().and_then(|g| node.groups.get(g)).copied().unwrap_or(0);
    let anti = 1.0 / (1.0 + f64::from(same));
    let reliability = node.reliability.clamp(0.0, 1.0);
    let (ws, wb, wr, wa) = req.objective.weights();
    (ws * spread + wb * binpack + wr * reliability + wa * anti, spread, binpack, reliability, anti)
}

fn score(node: &NodeView, req: &Request) -> Scored {
    let (score, spread, binpack, reliability, anti) = components(node, req);
    Scored {
        node: node.id.clone(),
        score,
        reasons: vec![
            format!("spread={spread:.3}"),
            format!("binpack={binpack:.3}"),
            format!("reliability={reliability:.3}"),
            format!("anti_affinity={anti:.3}"),
        ],
    }
}

fn by_score(a: &Scored, b: &Scored) -> Ordering {
    b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal).then_with(|| a.node.cmp(&b.node))
}

/// Ranks the eligible nodes among those the request's project may use, best
/// first, and says why each other node it may use was filtered out. Nodes
/// it may not use are neither ranked nor mentioned.
pub fn rank(nodes: &[NodeView], req: &Request) -> (Vec<Scored>, Vec<Filtered>) {
    let mut ok = Vec::new();
    let mut filtered = Vec::new();
    for n in nodes.iter().filter(|n| req.access.may_use(n.place())) {
        match filter(n, req) {
            Some(reason) => filtered.push(Filtered { node: n.id.clone(), reason }),
            None => ok.push(score(n, req)),
        }
    }
    ok.sort_by(by_score);
    filtered.sort_by(|a, b| a.node.cmp(&b.node));
    (ok, filtered)
}

/// Fleets up to this many nodes are searched exhaustively: every eligible
/// node is scored and the best one wins.
pub const EXHAUSTIVE_UP_TO: usize = 256;

/// In a larger fleet a placement scores this many eligible nodes, visited in
/// a rotating order, and takes the best of them (Nomad limits its candidate
/// scan the same way). The scan goes on past ineligible nodes until it has
/// that many candidates or has seen every node, so "no room" is exact.
pub const CANDIDATES: usize = 48;

/// The best node for one request over the whole fleet, if any.
pub fn best(nodes: &[NodeView], req: &Request) -> Option<usize> {
    best_of(nodes, req, 0, nodes.len()).0
}

/// Scans nodes from `start` (wrapping) until `want` eligible nodes were
/// scored or every node was seen. Returns the best and how many nodes it
/// visited.
fn best_of(nodes: &[NodeView], req: &Request, start: usize, want: usize) -> (Option<usize>, usize) {
    let len = nodes.len();
    let mut best: Option<(usize, f64)> = None;
    let mut found = 0;
    let mut seen = 0;
    while seen < len && found < want {
        let i = (start + seen) % len;
        seen += 1;
        let n = &nodes[i];
        if !eligible(n, req) {
            continue;
        }
        found += 1;
        let s = components(n, req).0;
        // Higher score wins; ties go to the lower node id, as in `rank`.
        let better = match best {
            None => true,
            Some((j, b)) => s > b || (s == b && n.id < nodes[j].id),
        };
        if better {
            best = Some((i, s));
        }
    }
    (best.map(|(i, _)| i), seen)
}

/// Places requests in order, charging each placement to its node and its
/// project's usage in `ledger` before the next one is placed. Returns the
/// node index per request (None: no room, or over the project's quota).
///
/// Up to [`EXHAUSTIVE_UP_TO`] nodes every placement is the best over the
/// fleet. Beyond, each is the best of [`CANDIDATES`] eligible nodes and the
/// scan resumes where the previous placement's stopped, starting at `cursor`;
/// the returned cursor is where the next batch should start so that
/// successive batches do not crowd the same nodes. Same input, same output.
pub fn place_batch_from(
    nodes: &mut [NodeView],
    ledger: &mut Ledger,
    reqs: &[Request],
    cursor: usize,
) -> (Vec<Option<usize>>, usize) {
    let len = nodes.len();
    let want = if len <= EXHAUSTIVE_UP_TO { len } else { CANDIDATES };
    let mut cursor = if len == 0 { 0 } else { cursor % len };
    let placed = reqs
        .iter()
        .map(|req| {
            if ledger.over_quota(req).is_some() {
                return None;
            }
            let (i, seen) = best_of(nodes, req, cursor, want);
            if len > EXHAUSTIVE_UP_TO {
                cursor = (cursor + seen) % len;
            }
            let i = i?;
            ledger.charge(req.project(), &req.resources);
            let n = &mut nodes[i];
            n.allocated = n.allocated.add(&req.resources);
            if let Some(g) = &req.group {
                *n.groups.entry(g.clone()).or_default() += 1;
            }
            Some(i)
        })
        .collect();
    (placed, cursor)
}

/// [`place_batch_from`] starting at the first node, with nothing in use.
pub fn place_batch(nodes: &mut [NodeView], reqs: &[Request]) -> Vec<Option<usize>> {
    place_batch_from(nodes, &mut Ledger::default(), reqs, 0).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn project() -> ProjectId {
        ProjectId::from_random([1; 10])
    }

    fn access() -> Arc<ProjectAccess> {
        Arc::new(ProjectAccess {
            project: project(),
            org: OrgId::from_random([1; 10]),
            pools: [String::new(), "gpu".to_string()].into(),
            quota: Default::default(),
        })
    }

    fn node(i: u8, cpu: u64, mem: u64) -> NodeView {
        NodeView {
            id: NodeId::from_random([i; 10]),
            org: OrgId::from_random([1; 10]),
            dedicated: None,
            ready: true,
            active: true,
            state: "ready".into(),
            pool: String::new(),
            labels: Labels::new(),
            gpu_models: vec![],
            capacity: Resources { cpu_millis: cpu, memory_mb: mem, gpus: 0 },
            allocated: Resources::default(),
            reliability: 1.0,
            groups: HashMap::new(),
        }
    }

    fn req(cpu: u64, mem: u64, objective: Objective) -> Request {
        Request::new(
            access(),
            Resources { cpu_millis: cpu, memory_mb: mem, gpus: 0 },
            Constraints::default(),
            objective,
        )
    }

    #[test]
    fn filters_explain_themselves() {
        let mut nodes = vec![node(1, 1000, 1000), node(2, 1000, 1000), node(3, 1000, 1000), node(4, 100, 100)];
        nodes[0].ready = false;
        nodes[0].state = "unreachable".into();
        nodes[1].active = false;
        nodes[1].state = "paused".into();
        let mut other = node(5, 9000, 9000);
        other.dedicated = Some(ProjectId::from_random([9; 10]));
        nodes.push(other);
        let mut ungranted = node(6, 9000, 9000);
        ungranted.pool = "cpu".into();
        nodes.push(ungranted);
        let (ok, filtered) = rank(&nodes, &req(500, 500, Objective::Balanced));
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].node, nodes[2].id);
        let reasons: Vec<_> = filtered.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(filtered.len(), 3, "the other project's node and the pool not granted are not mentioned");
        assert!(reasons.contains(&"node is unreachable"));
        assert!(reasons.contains(&"node is paused"));
        assert!(reasons.iter().any(|r| r.starts_with("capacity")));
    }

    #[test]
    fn constraints_filter() {
        let mut a = node(1, 1000, 1000);
        a.pool = "gpu".into();
        a.labels.insert("zone".into(), "a".into());
        a.gpu_models = vec!["A100".into()];
        a.capacity.gpus = 1;
        let b = node(2, 1000, 1000);
        let mut r = req(100, 100, Objective::Cost);
        r.constraints = Constraints { pool: "gpu".into(), label_selector: "zone=a".into(), gpu_model: "A100".into() };
        r.selector = r.constraints.selector();
        r.resources.gpus = 1;
        let (ok, filtered) = rank(&[a.clone(), b], &r);
        assert_eq!(ok.iter().map(|s| &s.node).collect::<Vec<_>>(), [&a.id]);
        assert_eq!(filtered.len(), 1);
    }

    #[test]
    fn cost_packs_and_latency_spreads() {
        let mut nodes = vec![node(1, 4000, 4000), node(2, 4000, 4000)];
        nodes[0].allocated = Resources { cpu_millis: 2000, memory_mb: 2000, gpus: 0 };
        assert_eq!(best(&nodes, &req(500, 500, Objective::Cost)), Some(0));
        assert_eq!(best(&nodes, &req(500, 500, Objective::Latency)), Some(1));
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
        prop::collection::vec((1u64..8, 1u64..8, any::<bool>(), any::<bool>(), 0u8..3, 0.0f64..1.0), 1..12).prop_map(
            |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (cpu, mem, ready, active, zone, rel))| {
                        let mut n = node(i as u8 + 1, cpu * 500, mem * 512);
                        n.ready = ready;
                        n.active = active;
                        n.state = if ready { "ready".into() } else { "unreachable".into() };
                        n.labels.insert("zone".into(), format!("z{zone}"));
                        n.reliability = rel;
                        n
                    })
                    .collect()
            },
        )
    }

    fn arb_reqs() -> impl Strategy<Value = Vec<Request>> {
        prop::collection::vec((0u64..6, 0u64..6, 0u8..4, 0u8..4), 1..40).prop_map(|v| {
            v.into_iter()
                .map(|(cpu, mem, obj, zone)| {
                    let objective =
                        [Objective::Balanced, Objective::Durability, Objective::Latency, Objective::Cost][obj as usize];
                    let mut r = req(cpu * 250, mem * 256, objective);
                    if zone < 3 {
                        r.constraints.label_selector = format!("zone=z{zone}");
                        r.selector = r.constraints.selector();
                    }
                    r
                })
                .collect()
        })
    }

    fn large_fleet(flags: &[(bool, u8)]) -> Vec<NodeView> {
        flags
            .iter()
            .enumerate()
            .map(|(i, &(ready, cpu))| {
                let mut id = [0u8; 10];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let mut n = node(0, u64::from(cpu) * 250, 4096);
                n.id = NodeId::from_random(id);
                n.ready = ready;
                n
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sampled_search_finds_room_whenever_there_is_some(
            flags in prop::collection::vec((prop::bool::weighted(0.05), 0u8..4), EXHAUSTIVE_UP_TO + 1..4 * EXHAUSTIVE_UP_TO),
            cursor in 0usize..10_000,
            n_reqs in 1usize..200,
        ) {
            let nodes = large_fleet(&flags);
            let reqs: Vec<_> = (0..n_reqs).map(|_| req(250, 64, Objective::Balanced)).collect();
            let mut placed = nodes.clone();
            let (out, _) = place_batch_from(&mut placed, &mut Ledger::default(), &reqs, cursor);
            // Replay: each request must be placed exactly when some node had room.
            let mut shadow = nodes.clone();
            for (r, i) in reqs.iter().zip(&out) {
                let room = shadow.iter().any(|n| eligible(n, r));
                prop_assert_eq!(room, i.is_some());
                if let Some(i) = *i {
                    prop_assert!(eligible(&shadow[i], r));
                    shadow[i].allocated = shadow[i].allocated.add(&r.resources);
                }
            }
            prop_assert_eq!(&shadow, &placed);
        }
    }

    #[test]
    fn sampled_batches_move_on_through_the_fleet() {
        let flags = vec![(true, 40u8); 10 * EXHAUSTIVE_UP_TO];
        let mut nodes = large_fleet(&flags);
        let reqs: Vec<_> = (0..20).map(|_| req(250, 64, Objective::Balanced)).collect();
        let (first, cursor) = place_batch_from(&mut nodes, &mut Ledger::default(), &reqs, 0);
        assert_eq!(cursor, 20 * CANDIDATES, "each placement scans one window of candidates");
        let (second, _) = place_batch_from(&mut nodes, &mut Ledger::default(), &reqs, cursor);
        let used: std::collections::HashSet<_> = first.iter().chain(&second).flatten().collect();
        assert_eq!(used.len(), 40, "empty equal nodes: every placement lands on a fresh one");
    }

    proptest! {
        #[test]
        fn never_overcommits_nor_places_on_ineligible(nodes in arb_nodes(), reqs in arb_reqs()) {
            let mut placed = nodes.clone();
            let out = place_batch(&mut placed, &reqs);
            let mut used: Vec<Resources> = vec![Resources::default(); nodes.len()];
            for (r, i) in reqs.iter().zip(&out) {
                if let Some(i) = *i {
                    let n = &nodes[i];
                    prop_assert!(n.ready && n.active, "placed on ineligible node");
                    prop_assert!(r.selector.matches(&n.labels), "placed against the selector");
                    used[i] = used[i].add(&r.resources);
                    prop_assert!(used[i].fits_in(&n.capacity), "over-committed node {i}");
                }
            }
            for (i, n) in placed.iter().enumerate() {
                prop_assert_eq!(&n.allocated, &used[i]);
            }
        }

        #[test]
        fn never_exceeds_a_quota(nodes in arb_nodes(), reqs in arb_reqs(), cpu in 0u64..3000, allocs in 0u64..6) {
            let quota = tether_types::Quota { cpu_millis: Some(cpu), allocations: Some(allocs), ..Default::default() };
            let limited = Arc::new(ProjectAccess { quota, ..(*access()).clone() });
            let reqs: Vec<Request> = reqs.into_iter().map(|mut r| { r.access = limited.clone(); r }).collect();
            let mut ledger = Ledger::default();
            let already = Resources { cpu_millis: 250, memory_mb: 0, gpus: 0 };
            ledger.charge(&project(), &already);
            let mut placed = nodes.clone();
            let (out, _) = place_batch_from(&mut placed, &mut ledger, &reqs, 0);
            let mut used = Usage::default();
            used.charge(&already);
            for (r, i) in reqs.iter().zip(&out) {
                let fits = quota.exceeded_by(&used, &r.resources).is_none();
                if i.is_some() {
                    prop_assert!(fits, "placed over the quota");
                    used.charge(&r.resources);
                }
            }
            prop_assert!(used.resources.cpu_millis <= cpu.max(250));
            prop_assert_eq!(ledger.used(&project()), used);
        }

        #[test]
        fn best_agrees_with_rank(nodes in arb_nodes(), reqs in arb_reqs()) {
            for r in &reqs {
                let (ranked, _) = rank(&nodes, r);
                prop_assert_eq!(best(&nodes, r).map(|i| nodes[i].id.clone()), ranked.first().map(|s| s.node.clone()));
            }
        }

        #[test]
        fn deterministic(nodes in arb_nodes(), reqs in arb_reqs()) {
            let mut a = nodes.clone();
            let mut b = nodes.clone();
            prop_assert_eq!(place_batch(&mut a, &reqs), place_batch(&mut b, &reqs));
            for r in &reqs {
                prop_assert_eq!(rank(&nodes, r), rank(&nodes, r));
            }
        }

        #[test]
        fn spread_really_spreads(n_nodes in 2usize..10, replicas in 1usize..10, obj in 0u8..3) {
            let objective = [Objective::Balanced, Objective::Durability, Objective::Latency][obj as usize];
            let mut nodes: Vec<_> = (0..n_nodes).map(|i| node(i as u8 + 1, 8000, 8192)).collect();
            let reqs: Vec<_> = (0..replicas).map(|_| {
                let mut r = req(100, 64, objective);
                r.group = Some("wl-1".into());
                r
            }).collect();
            let out = place_batch(&mut nodes, &reqs);
            let mut per_node = vec![0usize; n_nodes];
            for i in out.iter().flatten() {
                per_node[*i] += 1;
            }
            let max = *per_node.iter().max().unwrap();
            let min = *per_node.iter().min().unwrap();
            // Evenly spread: no node has two more than another.
            prop_assert!(max - min <= 1, "uneven spread {:?}", per_node);
        }
    }
}
