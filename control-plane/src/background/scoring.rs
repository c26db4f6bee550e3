//! The scoring and quarantine loops: each round lives in `crate::scoring::round`.

use std::sync::Arc;
use std::time::Duration;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::App;

/// How often nodes are scored, and quarantine decided.
pub const SCORING_PERIOD: Duration = Duration::from_secs(1);

/// Scores every node from the heartbeats this replica holds.
pub struct ScoringTask {
    pub app: Arc<App>,
    pub state: crate::scoring::round::Scorer,
}

impl BackgroundTask for ScoringTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.state.round(&self.app).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}

/// Quarantines and releases nodes by their scores.
pub struct QuarantineTask {
    pub app: Arc<App>,
    pub state: crate::scoring::round::Quarantiner,
}

impl BackgroundTask for QuarantineTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.state.round(&self.app).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}
