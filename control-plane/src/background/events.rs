//! The event log's two loops: the tail reader that keeps the newest events
//! in memory for watchers (every replica), and retention (the leader).

use std::sync::Arc;
use std::time::Duration;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::{App, now_ms};

/// Rows retention removes per transaction.
const PRUNE_BATCH: u32 = 5_000;
/// Batches per activation: a large backlog is removed over several.
const PRUNE_BATCHES: u32 = 20;

/// Reads newly committed events into [`crate::events::EventTail`]; woken by
/// this replica's commits, and by its period for everyone else's.
pub struct EventTailFill(pub Arc<App>);

impl BackgroundTask for EventTailFill {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.0.events.fill(&self.0.store).await {
                Ok(0) => Activation::Done(String::new()),
                Ok(n) => Activation::Done(format!("read {n} up to {}", self.0.events.head())),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}

/// Removes events older than `--event-retention` or beyond
/// `--event-retention-count`, oldest first.
pub struct EventRetention {
    pub app: Arc<App>,
    pub max_age: Duration,
    pub keep: u64,
}

impl BackgroundTask for EventRetention {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let before = now_ms().saturating_sub(i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX));
            let mut removed = 0u64;
            for _ in 0..PRUNE_BATCHES {
                match self.app.store.events_prune(before, self.keep, PRUNE_BATCH).await {
                    Ok(n) => {
                        removed += n;
                        if n < u64::from(PRUNE_BATCH) {
                            break;
                        }
                    }
                    Err(e) => return Activation::Failed(Box::new(e)),
                }
            }
            metrics::counter!("tether_events_pruned_total").increment(removed);
            Activation::Done(if removed == 0 { String::new() } else { format!("removed {removed}") })
        })
    }
}
