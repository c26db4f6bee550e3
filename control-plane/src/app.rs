//! What the services and background tasks share: the store, the registry,
//! the streams to agents and the wake-ups between them. Built once by
//! [`crate::run`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::clock::now_ms;
use crate::effects::{Effects, Parts, Signals};
use crate::{auth, config::Config, fleet, notify, writers};

/// Everything the services share.
pub struct App {
    pub store: tether_store::Store,
    pub auth: auth::Authenticator,
    pub registry: Arc<fleet::registry::Registry>,
    pub notify: notify::Notifier,
    /// The newest events, for watchers (see [`crate::events`]).
    pub events: crate::events::EventTail,
    pub config: Config,
    /// Issues agents' client certificates; None without TLS.
    pub ca: Option<Arc<tether_auth::pki::Ca>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub admission: tokio::sync::Semaphore,
    pub ready: AtomicBool,
    pub hub: fleet::hub::JobsHub,
    /// Stream nodes' latest reports, in memory.
    pub node_reports: fleet::reports::NodeReports,
    /// What writes wake (the work pass, log followers): raised through
    /// [`Effects`], never directly.
    pub signals: Signals,
    /// Pools' providers (webhooks, registered commands).
    pub providers: crate::pools::provider::Providers,
    /// Job submissions, written by group commit.
    pub submits: writers::Submits,
    /// Agents' started/finished reports, written by group commit.
    pub reports: writers::Reports,
    /// Every node row, read again only when it may have changed.
    pub nodes: fleet::snapshot::NodeCache,
    /// Nodes' reliability scores and automatic quarantine's holds.
    pub scores: crate::scoring::ScoreBoard,
    /// Where the scheduler's candidate scan resumes in the next pass.
    pub placement_cursor: std::sync::atomic::AtomicUsize,
}

impl App {
    /// Collects the consequences of the writes that follow; they are
    /// performed when it is dropped (see [`crate::effects`]).
    pub fn effects(&self) -> Effects<'_> {
        Effects::new(Parts {
            notify: &self.notify,
            hub: &self.hub,
            registry: &self.registry,
            reports: &self.node_reports,
            signals: &self.signals,
        })
    }
}
