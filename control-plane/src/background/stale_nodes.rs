//! Deregisters nodes that have been `down` for longer than their
//! organisation's stale-node TTL (its runtime settings, else
//! `--stale-node-ttl`), as Nomad collects dead nodes: their work was lost
//! when they went down, and a machine that comes back enrols again. The
//! settings are read at every activation, so a change takes effect within
//! one period.

use std::sync::Arc;
use std::time::Duration;

use tether_types::NodeStatus;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::{App, now_ms};

pub struct StaleNodes {
    pub app: Arc<App>,
}

/// How often it looks (one read of the settings; the nodes are in memory).
pub const STALE_NODES_PERIOD: Duration = Duration::from_secs(1);

impl BackgroundTask for StaleNodes {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let snap = match self.app.nodes.get(&self.app.store).await {
                Ok(s) => s,
                Err(e) => return Activation::Failed(Box::new(e)),
            };
            let down: Vec<_> = snap.nodes.iter().filter(|n| n.status == NodeStatus::Down).collect();
            if down.is_empty() {
                // Nothing could be stale: no read of the settings.
                return Activation::Done(String::new());
            }
            let settings = match self.app.store.org_settings_all().await {
                Ok(s) => s,
                Err(e) => return Activation::Failed(Box::new(e)),
            };
            let defaults = crate::services::settings::defaults(&self.app);
            let now = now_ms();
            let stale: Vec<_> = down
                .into_iter()
                .filter(|n| {
                    let ttl = settings.get(&n.org_id).map_or(defaults.stale_node_ttl, |s| s.stale_node_ttl(&defaults));
                    ttl.is_some_and(|t| n.status_changed_at < now.saturating_sub(t.as_millis() as i64))
                })
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
