//! Deregisters nodes that have been `down` for longer than
//! `--stale-node-ttl` (as Nomad collects dead nodes): their work was lost
//! when they went down, and a machine that comes back enrols again.

use std::sync::Arc;
use std::time::Duration;

use tether_types::NodeStatus;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::{App, now_ms};

pub struct StaleNodes {
    pub app: Arc<App>,
    pub ttl: Duration,
}

/// How often to look: often enough to honour a short TTL, at most a minute.
pub fn period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

impl BackgroundTask for StaleNodes {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let snap = match self.app.nodes.get(&self.app.store).await {
                Ok(s) => s,
                Err(e) => return Activation::Failed(Box::new(e)),
            };
            let before = now_ms().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
            let stale: Vec<_> = snap
                .nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Down && n.status_changed_at < before)
                .map(|n| n.id.clone())
                .collect();
            let (mut removed, mut skipped) = (0u64, 0u64);
            for id in &stale {
                match crate::ops::nodes::deregister(&self.app, id).await {
                    Ok(_) => removed += 1,
                    // Deregistered meanwhile (by an operator): nothing to do.
                    Err(tether_store::StoreError::Domain(e)) if e.code == tether_types::ErrorCode::NotFound => {}
                    Err(e) => {
                        tracing::warn!(node_id = %id, error = &e as &dyn std::error::Error, "deregistering a stale node failed");
                        skipped += 1;
                    }
                }
            }
            let summary = if removed == 0 { String::new() } else { format!("deregistered {removed}") };
            if skipped > 0 { Activation::Partial { summary, skipped } } else { Activation::Done(summary) }
        })
    }
}
