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
use std::sync::{Arc, RwLock};

use tether_types::{NodeId, UnixMillis};

/// One node's latest score.
#[derive(Debug, Clone)]
pub struct NodeInsight {
    pub score: formula::Score,
    pub beats: u64,
    pub computed_at: UnixMillis,
}

/// Every scored node, as of one round of the scoring loop.
#[derive(Debug, Default)]
pub struct Board {
    pub nodes: HashMap<NodeId, NodeInsight>,
}

impl Board {
    /// The node's score; None when it has none here.
    pub fn score(&self, node: &NodeId) -> Option<f64> {
        self.nodes.get(node).map(|i| i.score.score)
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
}
