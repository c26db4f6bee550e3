//! The pools loop and the autoscaler: each round lives in `crate::pools`.

use std::sync::Arc;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::App;

/// Keeps managed pools at their desired counts (`pools::reconcile`).
pub struct PoolsTask(pub Arc<App>);

impl BackgroundTask for PoolsTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match crate::pools::reconcile::round(&self.0).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}

/// Moves autoscaled pools' desired counts (`pools::autoscale`).
pub struct AutoscalerTask {
    pub app: Arc<App>,
    pub state: crate::pools::autoscale::Autoscaler,
}

impl BackgroundTask for AutoscalerTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.state.round(&self.app).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}
