//! The control plane's background tasks: each wraps one round of work that
//! lives in its own room (the registry, the work pass, the node snapshot,
//! the authenticator, the store's health probe).

use std::sync::Arc;

use tether_store::{DbHealth, Store};

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::App;
use crate::fleet::registry::Registry;

fn failed(e: tether_store::StoreError) -> Activation {
    Activation::Failed(Box::new(e))
}

/// How often the database is probed (what `/readyz` answers, kept fresh so
/// that readiness never waits on the database).
pub const PROBE_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// The database health probe behind `/readyz`.
pub struct Probe(pub Store);

impl BackgroundTask for Probe {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let h = self.0.probe().await;
            metrics::gauge!("tether_database_up").set(if h == DbHealth::Unreachable { 0.0 } else { 1.0 });
            metrics::gauge!("tether_database_writable").set(if h == DbHealth::Ok { 1.0 } else { 0.0 });
            Activation::Done(format!("{h:?}").to_lowercase())
        })
    }
}

/// Ready -> unreachable -> down for nodes whose heartbeats stopped.
pub struct Liveness(pub Arc<Registry>);

impl BackgroundTask for Liveness {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            self.0.check_liveness().await;
            Activation::Done(String::new())
        })
    }
}

/// Writes the nodes' last-seen times (leases) in batches.
pub struct LeaseFlush(pub Arc<Registry>);

impl BackgroundTask for LeaseFlush {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            self.0.flush_leases().await;
            Activation::Done(String::new())
        })
    }
}

/// The work pass: lost work, evictions and drains, the workload reconciler
/// and placement (`crate::dispatch`).
pub struct Placement {
    pub app: Arc<App>,
    pub state: crate::dispatch::PassState,
}

impl BackgroundTask for Placement {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let out = crate::dispatch::pass(&self.app, &mut self.state).await;
            metrics::histogram!("tether_work_pass_seconds").record(started.elapsed().as_secs_f64());
            match out {
                Ok(summary) if summary.skipped > 0 => {
                    Activation::Partial { summary: summary.to_string(), skipped: summary.skipped }
                }
                Ok(summary) => Activation::Done(summary.to_string()),
                Err(e) => failed(e),
            }
        })
    }
}

/// Reads every node row again, to catch other replicas' changes.
pub struct NodeSnapshotRefresh(pub Arc<App>);

impl BackgroundTask for NodeSnapshotRefresh {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.0.nodes.refresh(&self.0.store).await {
                Ok(()) => Activation::Done(String::new()),
                Err(e) => failed(e),
            }
        })
    }
}

/// Reloads the revoked token ids the authenticator refuses, and the tenancy
/// records (for changes made on other replicas).
pub struct RevocationRefresh(pub Arc<App>);

impl BackgroundTask for RevocationRefresh {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let ids = match self.0.store.tokens_revoked().await {
                Ok(ids) => ids,
                Err(e) => return failed(e),
            };
            let n = ids.len();
            self.0.auth.set_revoked(ids);
            match self.0.store.root_keys().await {
                Ok(keys) => self.0.auth.set_keys(&keys),
                Err(e) => return failed(e),
            }
            match self.0.auth.tenants.reload(&self.0.store).await {
                Ok(projects) => Activation::Done(format!("{n} revoked, {projects} projects")),
                Err(e) => failed(e),
            }
        })
    }
}
