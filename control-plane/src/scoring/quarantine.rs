//! Automatic quarantine's decisions, pure: which of an organisation's nodes
//! to quarantine, release or let go of, from their scores, the holds on
//! record and the organisation's settings. The `quarantine` loop
//! (`background::scoring::QuarantineTask`) carries them out.
//!
//! - An active, ready node with enough beats whose score is below the
//!   threshold is quarantined, lowest score first, while automatic
//!   quarantine holds fewer than its cap of the organisation's ready nodes
//!   (at least one); beyond it the decision is held (`at_cap`).
//! - A held node whose score has stayed at or above the release threshold
//!   for the probation is released.
//! - A held node whose desired state an operator changed since is let go
//!   (`overridden`): the operator's word wins, it is never released
//!   automatically, and automatic quarantine leaves it alone for one
//!   probation.

use std::collections::HashMap;

use tether_store::AutoQuarantine;
use tether_types::settings::Quarantine;
use tether_types::{DesiredNodeState, Node, NodeId, NodeStatus, UnixMillis};

use super::formula::MIN_BEATS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quarantine,
    Release,
    /// An operator set the node's desired state since: the hold is dropped.
    Overridden,
    /// Quarantine was due and not done, and why (`at_cap`); said once until
    /// the reason changes.
    Held(&'static str),
}

/// One node as the decision sees it.
pub struct Facts<'a> {
    pub node: &'a Node,
    /// Its score and the beats it rests on; None when it has none.
    pub score: Option<(f64, u64)>,
    pub hold: Option<&'a AutoQuarantine>,
}

/// What the loop remembers between rounds (lost at a restart: a probation
/// then starts again, which errs on the side of holding).
#[derive(Debug, Default)]
pub struct Memory {
    /// Since when a held node's score has been at or above the release
    /// threshold.
    pub behaving_since: HashMap<NodeId, UnixMillis>,
    /// When an operator overrode a hold.
    overridden_at: HashMap<NodeId, UnixMillis>,
    /// The reason last said for a held decision.
    held: HashMap<NodeId, &'static str>,
}

impl Memory {
    /// When the node is released if it keeps behaving.
    pub fn release_at(&self, node: &NodeId, q: &Quarantine) -> Option<UnixMillis> {
        self.behaving_since.get(node).map(|s| s + q.probation.as_millis() as i64)
    }
}

/// The decisions for one organisation's nodes.
pub fn decide(nodes: &[Facts<'_>], q: &Quarantine, now: UnixMillis, mem: &mut Memory) -> Vec<(NodeId, Action)> {
    let probation = q.probation.as_millis() as i64;
    let mut out = Vec::new();
    let ready = nodes.iter().filter(|f| f.node.status == NodeStatus::Ready).count();
    let cap = ((q.max_share * ready as f64).floor() as usize).max(1);
    let mut held = 0usize;
    for f in nodes {
        let Some(h) = f.hold else { continue };
        let id = &f.node.id;
        if f.node.desired_state != DesiredNodeState::Quarantined || f.node.desired_state_version != h.desired_version {
            mem.behaving_since.remove(id);
            mem.overridden_at.insert(id.clone(), now);
            out.push((id.clone(), Action::Overridden));
            continue;
        }
        held += 1;
        match f.score {
            Some((s, _)) if s >= q.release => {
                let since = *mem.behaving_since.entry(id.clone()).or_insert(now);
                if now - since >= probation {
                    mem.behaving_since.remove(id);
                    out.push((id.clone(), Action::Release));
                }
            }
            _ => {
                mem.behaving_since.remove(id);
            }
        }
    }
    mem.overridden_at.retain(|_, at| now - *at < probation);
    let mut due: Vec<(&NodeId, f64)> = if q.enabled {
        nodes
            .iter()
            .filter(|f| {
                f.hold.is_none()
                    && f.node.desired_state == DesiredNodeState::Active
                    && f.node.status == NodeStatus::Ready
                    && !mem.overridden_at.contains_key(&f.node.id)
            })
            .filter_map(|f| match f.score {
                Some((s, beats)) if beats >= MIN_BEATS && s < q.below => Some((&f.node.id, s)),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    due.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut still_held = HashMap::new();
    for (id, _) in due {
        if held < cap {
            held += 1;
            out.push((id.clone(), Action::Quarantine));
        } else {
            let reason = "at_cap";
            if mem.held.get(id) != Some(&reason) {
                out.push((id.clone(), Action::Held(reason)));
            }
            still_held.insert(id.clone(), reason);
        }
    }
    // Reasons of nodes no longer held are forgotten, so that a new hold is said.
    mem.held.retain(|id, _| nodes.iter().all(|f| &f.node.id != id) || still_held.contains_key(id));
    for (id, r) in still_held {
        mem.held.insert(id, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::snapshot::tests::node;
    use std::time::Duration;

    fn settings() -> Quarantine {
        Quarantine { enabled: true, below: 0.5, release: 0.8, probation: Duration::from_secs(10), max_share: 0.2 }
    }

    fn hold(n: &Node) -> AutoQuarantine {
        AutoQuarantine {
            node_id: n.id.clone(),
            org_id: n.org_id.clone(),
            desired_version: n.desired_state_version,
            quarantined_at: 0,
        }
    }

    #[test]
    fn quarantines_the_worst_within_the_cap_and_says_the_hold_once() {
        let nodes: Vec<Node> = (1..=5).map(|i| node(i, DesiredNodeState::Active)).collect();
        let scores = [0.9, 0.3, 0.2, 0.45, 0.6];
        let facts: Vec<Facts<'_>> =
            nodes.iter().zip(scores).map(|(n, s)| Facts { node: n, score: Some((s, 100)), hold: None }).collect();
        let mut mem = Memory::default();
        let out = decide(&facts, &settings(), 0, &mut mem);
        // 20% of five ready nodes: one, the lowest.
        assert_eq!(out[0], (nodes[2].id.clone(), Action::Quarantine));
        assert_eq!(out.iter().filter(|(_, a)| *a == Action::Held("at_cap")).count(), 2, "{out:?}");
        let again = decide(&facts, &settings(), 1000, &mut mem);
        assert_eq!(again.iter().filter(|(_, a)| matches!(a, Action::Held(_))).count(), 0, "said once: {again:?}");
        let off = Quarantine { enabled: false, ..settings() };
        assert!(decide(&facts, &off, 0, &mut Memory::default()).is_empty(), "off by default");
        let few = [Facts { node: &nodes[1], score: Some((0.1, MIN_BEATS - 1)), hold: None }];
        assert!(decide(&few, &settings(), 0, &mut Memory::default()).is_empty(), "too few beats to act on");
    }

    #[test]
    fn releases_after_probation_and_an_operator_wins() {
        let mut q = node(1, DesiredNodeState::Quarantined);
        q.desired_state_version = 4;
        let h = hold(&q);
        let mut mem = Memory::default();
        let s = settings();
        let at = |score: f64| [Facts { node: &q, score: Some((score, 100)), hold: Some(&h) }];
        assert!(decide(&at(0.85), &s, 0, &mut mem).is_empty(), "probation starts");
        assert_eq!(mem.release_at(&q.id, &s), Some(10_000));
        assert!(decide(&at(0.7), &s, 5_000, &mut mem).is_empty(), "fell back below the release threshold");
        assert!(decide(&at(0.9), &s, 6_000, &mut mem).is_empty(), "probation starts again");
        assert!(decide(&at(0.9), &s, 15_000, &mut mem).is_empty());
        assert_eq!(decide(&at(0.9), &s, 16_000, &mut mem), vec![(q.id.clone(), Action::Release)]);
        // An operator quarantined it again by hand: a new version.
        let mut manual = q.clone();
        manual.desired_state_version = 5;
        let f = [Facts { node: &manual, score: Some((0.9, 100)), hold: Some(&h) }];
        assert_eq!(decide(&f, &s, 20_000, &mut mem), vec![(q.id.clone(), Action::Overridden)]);
        // And then lifted it: automatic quarantine leaves it alone for a probation.
        let mut lifted = node(1, DesiredNodeState::Active);
        lifted.desired_state_version = 6;
        let f = [Facts { node: &lifted, score: Some((0.1, 100)), hold: None }];
        assert!(decide(&f, &s, 25_000, &mut mem).is_empty());
        assert_eq!(decide(&f, &s, 31_000, &mut mem), vec![(q.id.clone(), Action::Quarantine)]);
    }
}
