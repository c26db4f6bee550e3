//! Reliability scoring: each node's heartbeat figures (kept by the registry
//! as beats arrive, [`stats`]), its job outcomes and liveness history make a
//! score in [0, 1] with its components ([`formula`]). The `scoring` loop
//! publishes the scores on the [`ScoreBoard`]; the scheduler prefers
//! reliable nodes by them, `InsightsService` explains them, and the
//! `quarantine` loop ([`quarantine`]) acts on them when an organisation
//! enables it.

pub mod formula;
pub mod quarantine;
pub mod stats;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};

use tether_types::{NodeId, UnixMillis};

/// One node's latest score, with what it was computed from, so that it can
/// be explained when asked ([`NodeInsight::explain`]).
#[derive(Debug, Clone)]
pub struct NodeInsight {
    pub score: f64,
    pub figures: formula::Figures,
    pub fleet: formula::Fleet,
    pub scoring: tether_types::settings::Scoring,
    pub computed_at: UnixMillis,
}

impl NodeInsight {
    /// The score's components and reasons, in words.
    pub fn explain(&self) -> formula::Score {
        formula::score(&self.figures, &self.fleet, &self.scoring)
    }
}

/// Every scored node, as of one round of the scoring loop.
#[derive(Debug, Default)]
pub struct Board {
    pub nodes: HashMap<NodeId, NodeInsight>,
}

impl Board {
    /// The node's score; None when it has none here.
    pub fn score(&self, node: &NodeId) -> Option<f64> {
        self.nodes.get(node).map(|i| i.score)
    }
}

/// A node automatic quarantine holds, as the quarantine loop last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldView {
    pub quarantined_at: UnixMillis,
    /// When it is released if its score stays up; None while it does not.
    pub release_at: Option<UnixMillis>,
}

/// The scores the scoring loop published last, shared without copying (the
/// scheduler takes the board once per pass), and the holds the quarantine
/// loop published last.
#[derive(Default)]
pub struct ScoreBoard {
    board: RwLock<Arc<Board>>,
    holds: RwLock<Arc<HashMap<NodeId, HoldView>>>,
}

impl ScoreBoard {
    pub fn get(&self) -> Arc<Board> {
        self.board.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish(&self, board: Board) {
        *self.board.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(board);
    }

    pub fn holds(&self) -> Arc<HashMap<NodeId, HoldView>> {
        self.holds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish_holds(&self, holds: HashMap<NodeId, HoldView>) {
        *self.holds.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(holds);
    }

    /// The Prometheus text: each scored node's score (at most `max_series`
    /// nodes, by id; the rest counted as dropped) and how many nodes
    /// automatic quarantine holds.
    pub fn render(&self, max_series: usize) -> String {
        let board = self.get();
        let mut ids: Vec<&NodeId> = board.nodes.keys().collect();
        ids.sort();
        let mut out = String::from(
            "# HELP tether_node_reliability_score A node's reliability score, in [0, 1].\n\
             # TYPE tether_node_reliability_score gauge\n",
        );
        for id in ids.iter().take(max_series) {
            // Node ids need no escaping.
            let _ = writeln!(out, "tether_node_reliability_score{{node=\"{id}\"}} {}", board.nodes[*id].score);
        }
        let _ = write!(
            out,
            "# HELP tether_node_reliability_series_dropped Scored nodes not exported: past the cap of {max_series}.\n\
             # TYPE tether_node_reliability_series_dropped gauge\n\
             tether_node_reliability_series_dropped {}\n\
             # HELP tether_nodes_auto_quarantined Nodes automatic quarantine holds.\n\
             # TYPE tether_nodes_auto_quarantined gauge\n\
             tether_nodes_auto_quarantined {}\n",
            ids.len().saturating_sub(max_series),
            self.holds().len()
        );
        out
    }
}

/// Most nodes whose score `/metrics` exports.
pub const MAX_SCORE_SERIES: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_caps_the_series_and_counts_the_holds() {
        let board = ScoreBoard::default();
        let insight = |score| NodeInsight {
            score,
            figures: Default::default(),
            fleet: Default::default(),
            scoring: Default::default(),
            computed_at: 0,
        };
        let (a, b) = (NodeId::from_random([1; 10]), NodeId::from_random([2; 10]));
        let mut nodes = HashMap::new();
        nodes.insert(a.clone(), insight(0.25));
        nodes.insert(b.clone(), insight(1.0));
        board.publish(Board { nodes });
        board.publish_holds([(a.clone(), HoldView { quarantined_at: 1, release_at: None })].into());
        let text = board.render(10);
        assert!(text.contains(&format!("tether_node_reliability_score{{node=\"{a}\"}} 0.25")), "{text}");
        assert!(text.contains("tether_nodes_auto_quarantined 1"), "{text}");
        assert!(text.contains("tether_node_reliability_series_dropped 0"), "{text}");
        let capped = board.render(1);
        assert!(capped.contains(&a.to_string()) && !capped.contains(&b.to_string()), "{capped}");
        assert!(capped.contains("tether_node_reliability_series_dropped 1"), "{capped}");
    }
}
