//! The consequences of committed writes, performed in one place.
//!
//! Whatever writes (an operation on behalf of a service, the work pass, the
//! Jobs-stream handler) collects what its commits mean in an [`Effects`]:
//! how far the event log grew, commands for agents' Jobs streams, desired
//! states for their heartbeat streams, sessions to close for a resync, and
//! the background tasks to wake. They are performed when the `Effects` is
//! dropped, so they happen after the writes are durable, in the
//! order they were recorded, and also when the caller leaves early with an
//! error after some of its writes committed. Nothing else calls the hub,
//! the registry's push or the wake-ups directly.

use std::sync::Arc;

use tether_store::Committed;
use tether_types::{Allocation, Command, DesiredState, NodeId};
use tokio::sync::Notify;

use crate::fleet::{hub::JobsHub, registry::Registry};
use crate::notify::Notifier;

/// What a write can wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The work pass: lost work, evictions and drains, the reconciler,
    /// placement.
    Placement,
    /// Followers of job output (`StreamJobLogs`): output arrived or a job
    /// attempt ended.
    JobOutput,
    /// The reseal task: a secret version or a node that may lack a copy.
    Reseal,
    /// The pools loop: a desired count, a pool or a pool's node changed.
    Pools,
}

/// Every [`Signal`], in declaration order.
const ALL_SIGNALS: [Signal; 4] = [Signal::Placement, Signal::JobOutput, Signal::Reseal, Signal::Pools];

/// One wake-up per [`Signal`]. A background task is handed its signal's
/// `Notify` when it is registered.
#[derive(Default)]
pub struct Signals {
    placement: Arc<Notify>,
    job_output: Notify,
    reseal: Arc<Notify>,
    pools: Arc<Notify>,
}

impl Signals {
    /// The wake-up of the placement task (coalescing: one pending wake-up
    /// however many writes asked for it).
    pub fn placement(&self) -> Arc<Notify> {
        self.placement.clone()
    }

    /// The wake-up of the reseal task (coalescing, like placement's).
    pub fn reseal(&self) -> Arc<Notify> {
        self.reseal.clone()
    }

    /// The wake-up of the pools loop (coalescing).
    pub fn pools(&self) -> Arc<Notify> {
        self.pools.clone()
    }

    /// A future that completes at the next [`Signal::JobOutput`]; create it
    /// before reading so that nothing in between is missed.
    pub fn job_output(&self) -> tokio::sync::futures::Notified<'_> {
        self.job_output.notified()
    }

    fn raise(&self, s: Signal) {
        match s {
            Signal::Placement => self.placement.notify_one(),
            Signal::JobOutput => self.job_output.notify_waiters(),
            Signal::Reseal => self.reseal.notify_one(),
            Signal::Pools => self.pools.notify_one(),
        }
    }
}

/// What [`Effects`] performs its consequences with (borrowed from `App`).
pub struct Parts<'a> {
    pub notify: &'a Notifier,
    pub hub: &'a JobsHub,
    pub registry: &'a Registry,
    pub reports: &'a crate::fleet::reports::NodeReports,
    pub signals: &'a Signals,
}

/// The consequences of the writes made so far, performed when it is
/// dropped. See the module docs.
#[must_use = "effects are performed when dropped; bind them for the writes they belong to"]
pub struct Effects<'a> {
    parts: Parts<'a>,
    /// The highest event sequence number committed.
    seq: Option<i64>,
    actions: Vec<Action>,
    wake: [bool; ALL_SIGNALS.len()],
}

enum Action {
    Send(NodeId, Command),
    Desired(NodeId, DesiredState),
    Resync(NodeId),
    Forget(NodeId),
}

impl<'a> Effects<'a> {
    pub fn new(parts: Parts<'a>) -> Self {
        Effects { parts, seq: None, actions: Vec::new(), wake: [false; ALL_SIGNALS.len()] }
    }

    /// Takes a committed write's value and remembers the events it appended.
    pub fn commit<T>(&mut self, c: Committed<T>) -> T {
        if let Some(seq) = c.seq {
            self.seq = Some(self.seq.map_or(seq, |s| s.max(seq)));
        }
        c.value
    }

    /// A command for the node's Jobs stream (dropped if it has none here:
    /// the agent's allocation report on reconnect brings both sides in line).
    pub fn send(&mut self, node: &NodeId, cmd: Command) -> &mut Self {
        self.actions.push(Action::Send(node.clone(), cmd));
        self
    }

    /// Tells the allocation's node to stop it.
    pub fn cancel(&mut self, a: &Allocation, reason: &str) -> &mut Self {
        self.send(&a.node_id, Command::cancel(a, reason))
    }

    /// Pushes a desired state to the node's heartbeat stream, if open here.
    pub fn desired(&mut self, node: &NodeId, d: DesiredState) -> &mut Self {
        self.actions.push(Action::Desired(node.clone(), d));
        self
    }

    /// Closes the node's session so that the agent reconnects and resyncs
    /// (its work was released behind its back).
    pub fn resync(&mut self, node: &NodeId) -> &mut Self {
        self.actions.push(Action::Resync(node.clone()));
        self
    }

    /// Forgets a deregistered node and closes its session.
    pub fn forget(&mut self, node: &NodeId) -> &mut Self {
        self.actions.push(Action::Forget(node.clone()));
        self
    }

    pub fn wake(&mut self, s: Signal) -> &mut Self {
        self.wake[s as usize] = true;
        self
    }

    fn perform(&mut self) {
        let p = &self.parts;
        // Watchers first: an agent's answer to a command must not reach
        // the log before the watcher was told of the write that caused it.
        if let Some(seq) = self.seq.take() {
            p.notify.committed(seq);
        }
        for a in self.actions.drain(..) {
            match a {
                Action::Send(node, cmd) => {
                    p.hub.send(&node, cmd);
                }
                Action::Desired(node, d) => {
                    p.registry.push(&node, d.to_pb());
                }
                Action::Resync(node) => p.registry.resync(&node),
                Action::Forget(node) => {
                    p.registry.remove(&node);
                    p.reports.remove(&node);
                }
            }
        }
        for s in ALL_SIGNALS {
            if std::mem::take(&mut self.wake[s as usize]) {
                p.signals.raise(s);
            }
        }
    }
}

impl Drop for Effects<'_> {
    fn drop(&mut self) {
        self.perform();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn effects_wake_once_notify_the_highest_sequence_and_apply_on_drop() {
        let notify = Notifier::new(5);
        let hub = JobsHub::default();
        // The registry is only asked about sessions here (none are open):
        // its store is never connected.
        let pool = sqlx::sqlite::SqlitePoolOptions::new().connect_lazy("sqlite::memory:").unwrap();
        let registry = Registry::new(
            tether_store::Store::sqlite(pool.clone(), pool),
            notify.clone(),
            crate::fleet::registry::Liveness {
                grace: std::time::Duration::from_secs(1),
                down_after: std::time::Duration::from_secs(2),
            },
            "test".into(),
            tokio_util::sync::CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        );
        let signals = Signals::default();
        let reports = crate::fleet::reports::NodeReports::default();
        let parts = || Parts { notify: &notify, hub: &hub, registry: &registry, reports: &reports, signals: &signals };
        let mut watcher = notify.subscribe();
        let placement = signals.placement();

        let mut fx = Effects::new(parts());
        assert_eq!(fx.commit(Committed { value: 1, seq: Some(9) }), 1);
        assert_eq!(fx.commit(Committed { value: 2, seq: Some(7) }), 2);
        assert_eq!(fx.commit(Committed::nothing(3)), 3);
        fx.wake(Signal::Placement).wake(Signal::Placement);
        assert!(!watcher.has_changed().unwrap(), "nothing happens before the effects are applied");
        drop(fx);
        assert_eq!(*watcher.borrow_and_update(), 9);
        // One pending wake-up, however many asked.
        tokio::time::timeout(std::time::Duration::from_secs(1), placement.notified()).await.unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), placement.notified()).await.is_err(),
            "a second wake-up was stored"
        );

        // Dropped on an early return: still performed.
        let early = |fx: &mut Effects<'_>| -> Result<(), ()> {
            fx.commit(Committed { value: (), seq: Some(12) });
            Err(())
        };
        {
            let mut fx = Effects::new(parts());
            assert!(early(&mut fx).is_err());
        }
        assert_eq!(*watcher.borrow_and_update(), 12);
    }
}
