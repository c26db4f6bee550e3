//! What the services and background tasks share: the store, the registry,
//! the streams to agents and the wake-ups between them. Built once by
//! [`crate::run`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::now_ms;
use crate::{auth, config::Config, fleet, notify, writers};

/// Everything the services share.
pub struct App {
    pub store: tether_store::Store,
    pub auth: auth::Authenticator,
    pub registry: Arc<fleet::registry::Registry>,
    pub notify: notify::Notifier,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub admission: tokio::sync::Semaphore,
    pub ready: AtomicBool,
    pub hub: fleet::hub::JobsHub,
    /// Wakes the work pass (scheduler and reconcilers).
    pub work_wake: Arc<tokio::sync::Notify>,
    /// Job submissions, written by group commit.
    pub submits: writers::Submits,
    /// Agents' started/finished reports, written by group commit.
    pub reports: writers::Reports,
    /// Every node row, read again only when it may have changed.
    pub nodes: fleet::snapshot::NodeCache,
    /// Where the scheduler's candidate scan resumes in the next pass.
    pub placement_cursor: std::sync::atomic::AtomicUsize,
    /// Wakes log followers when output arrives or a job ends.
    pub logs: tokio::sync::Notify,
}
