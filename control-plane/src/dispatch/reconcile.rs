//! The reconciler: what one workload needs in one pass.

use tether_types::{AllocKey, AllocStatus, Allocation, DesiredNodeState, Node, NodeId, NodeStatus, Workload};

/// What the reconciler does for one workload in one pass.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub(super) create: usize,
    pub(super) stop: Vec<AllocKey>,
}

/// Keeps `replicas` running: replaces replicas that are gone, migrates those
/// on draining or stopped nodes and rolls out spec changes `max_parallel` at
/// a time, always starting a replacement before stopping what it replaces.
pub(super) fn reconcile<'n>(w: &Workload, allocs: &[&Allocation], node: impl Fn(&NodeId) -> Option<&'n Node>) -> Plan {
    let n = w.replicas as usize;
    let live: Vec<&&Allocation> = allocs.iter().filter(|a| a.status != AllocStatus::Stopping).collect();
    let node_ok = |a: &Allocation| {
        node(&a.node_id).is_some_and(|n| {
            !matches!(n.desired_state, DesiredNodeState::Draining | DesiredNodeState::Stopped)
                && n.status != NodeStatus::Down
                && n.status != NodeStatus::Left
        })
    };
    let (keep, replace): (Vec<&&Allocation>, Vec<&&Allocation>) =
        live.iter().partition(|a| a.spec_version == w.spec_version && node_ok(a));
    let mut plan = Plan::default();

    // Scale down: stop the extra current replicas, youngest (least proven) first.
    if keep.len() > n {
        let mut extra: Vec<&&Allocation> = keep.clone();
        extra.sort_by_key(|a| (a.status == AllocStatus::Running, std::cmp::Reverse(a.scheduled_at)));
        plan.stop.extend(extra.iter().take(keep.len() - n).map(|a| a.key.clone()));
        plan.stop.extend(replace.iter().map(|a| a.key.clone()));
        return plan;
    }

    // Replicas that are simply missing are created at once.
    let missing = n.saturating_sub(keep.len() + replace.len());
    // Replacements surge up to max_parallel starting at a time.
    let starting = keep.iter().filter(|a| a.status == AllocStatus::Scheduled).count();
    let surge_room = (w.spec.max_parallel as usize).saturating_sub(starting);
    let wanted_replacements = replace.len().min(n.saturating_sub(keep.len() + missing));
    plan.create = missing + wanted_replacements.min(surge_room);

    // Stop a replaced replica only once enough current ones run.
    let running_keep = keep.iter().filter(|a| a.status == AllocStatus::Running).count();
    let mut replace_sorted = replace.clone();
    replace_sorted.sort_by_key(|a| (a.status == AllocStatus::Running, a.scheduled_at));
    let mut still_running_replace = replace.iter().filter(|a| a.status == AllocStatus::Running).count();
    for a in replace_sorted {
        let is_running = a.status == AllocStatus::Running;
        let can_stop = if is_running {
            running_keep + still_running_replace > n
        } else {
            // Never started: stopping it loses nothing once replacements exist.
            keep.len() + plan.create >= n
        };
        if can_stop {
            plan.stop.push(a.key.clone());
            if is_running {
                still_running_replace -= 1;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::fleet::snapshot::tests::node;
    use tether_types::{AllocKind, ExecSpec, RestartPolicy};
    use tether_types::{Constraints, ProjectId, Resources, WorkloadId, WorkloadSpec};

    fn workload(replicas: u32, version: u64) -> Workload {
        Workload {
            id: WorkloadId::from_random([5; 10]),
            project_id: ProjectId::from_random([1; 10]),
            name: "web".into(),
            spec: WorkloadSpec {
                exec: ExecSpec { command: "/bin/sleep".into(), ..Default::default() },
                resources: Resources::default(),
                constraints: Constraints::default(),
                restart: RestartPolicy::Always,
                max_parallel: 1,
            },
            spec_version: version,
            replicas,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// A replica key named by a short word, for readable tests.
    fn k(name: &str) -> AllocKey {
        let mut b = [0u8; 10];
        b[..name.len()].copy_from_slice(name.as_bytes());
        AllocKey::Replica(tether_types::AllocId::from_random(b))
    }

    fn alloc(key: &str, node: &Node, status: AllocStatus, version: u64) -> Allocation {
        Allocation {
            key: k(key),
            project_id: ProjectId::from_random([1; 10]),
            kind: AllocKind::Service,
            job_id: None,
            attempt: 1,
            workload_id: Some(WorkloadId::from_random([5; 10])),
            spec_version: version,
            node_id: node.id.clone(),
            status,
            resources: Resources::default(),
            exit_code: None,
            error: String::new(),
            restarts: 0,
            scheduled_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    fn run(w: &Workload, nodes: &[Node], allocs: &[Allocation]) -> Plan {
        let by_id: HashMap<&NodeId, &Node> = nodes.iter().map(|n| (&n.id, n)).collect();
        let refs: Vec<&Allocation> = allocs.iter().collect();
        reconcile(w, &refs, |id| by_id.get(id).copied())
    }

    #[test]
    fn creates_missing_and_stops_extras() {
        let nodes = [node(1, DesiredNodeState::Active)];
        let w = workload(3, 1);
        let one = [alloc("a", &nodes[0], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &one), Plan { create: 2, stop: vec![] });
        let w = workload(1, 1);
        let three = [
            alloc("a", &nodes[0], AllocStatus::Running, 1),
            alloc("b", &nodes[0], AllocStatus::Running, 1),
            alloc("c", &nodes[0], AllocStatus::Scheduled, 1),
        ];
        let plan = run(&w, &nodes, &three);
        assert_eq!(plan.create, 0);
        assert_eq!(plan.stop.len(), 2);
        assert!(plan.stop.contains(&k("c")), "a replica not yet started goes first");
    }

    #[test]
    fn drain_starts_the_replacement_before_stopping() {
        let nodes = [node(1, DesiredNodeState::Draining), node(2, DesiredNodeState::Active)];
        let w = workload(2, 1);
        let before = [alloc("old", &nodes[0], AllocStatus::Running, 1), alloc("b", &nodes[1], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &before), Plan { create: 1, stop: vec![] });
        // Replacement scheduled, not running yet: nothing more, nothing stopped.
        let starting = [before[0].clone(), before[1].clone(), alloc("new", &nodes[1], AllocStatus::Scheduled, 1)];
        assert_eq!(run(&w, &nodes, &starting), Plan { create: 0, stop: vec![] });
        // Replacement running: now the old one stops.
        let up = [before[0].clone(), before[1].clone(), alloc("new", &nodes[1], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &up), Plan { create: 0, stop: vec![k("old")] });
    }

    #[test]
    fn rollout_goes_max_parallel_at_a_time() {
        let nodes = [node(1, DesiredNodeState::Active)];
        let w = workload(3, 2);
        let old: Vec<_> = ["a", "b", "c"].iter().map(|k| alloc(k, &nodes[0], AllocStatus::Running, 1)).collect();
        assert_eq!(run(&w, &nodes, &old), Plan { create: 1, stop: vec![] });
        let mut next = old.clone();
        next.push(alloc("n1", &nodes[0], AllocStatus::Running, 2));
        // The new replica runs: one old replica stops, and the next new one starts.
        let plan = run(&w, &nodes, &next);
        assert_eq!(plan.create, 1);
        assert_eq!(plan.stop.len(), 1, "one old replica per new one: {plan:?}");
        // While that one is starting, nothing else starts.
        let mut starting = next.clone();
        starting[0].status = AllocStatus::Stopping;
        starting.push(alloc("n2", &nodes[0], AllocStatus::Scheduled, 2));
        assert_eq!(run(&w, &nodes, &starting), Plan { create: 0, stop: vec![] });
    }
}
