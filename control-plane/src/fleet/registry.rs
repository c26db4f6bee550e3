//! The node registry's live half: sessions and liveness, in memory.
//!
//! Time is tokio's clock, so that the liveness rules run under paused time in
//! the unit tests below.
//!
//! A heartbeat touches only this map. The database gets every status change
//! (with its event, from the liveness loop or a session edge) and coarse
//! leases flushed in batches by the lease loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tether_store::{StatusChange, Store};
use tether_types::{Error, ErrorCode, Node, NodeCapabilities, NodeId, NodeStatus, NodeUsage, OrgId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::notify::Notifier;
use crate::scoring::stats::BeatStats;

#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub grace: Duration,
    pub down_after: Duration,
}

/// Why the control plane ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Superseded,
    Deregistered,
    /// The node's work was released (it went `down`) while this session
    /// was silent: the agent must reconnect and report what it holds, so
    /// that stale attempts are cancelled before anything else happens.
    Resync,
    /// The session's Jobs stream ended; a session is both streams.
    JobsStreamEnded,
    /// No Jobs stream was opened within the down timeout.
    NoJobsStream,
}

/// What a beat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Counted: the agent gets an acknowledgement.
    Counted,
    /// The session is no longer the node's current one.
    Stale,
    /// The node was declared down meanwhile: the session is closed for a
    /// resync.
    Resync,
}

/// One open heartbeat session, as its stream task sees it.
pub struct Session {
    pub id: u64,
    pub node: NodeId,
    pub generation: u64,
    pub cancel: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

impl Session {
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }
}

struct SessionSlot {
    id: u64,
    generation: u64,
    cancel: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
    /// The heartbeat stream's sender, for desired-state pushes.
    tx: HeartbeatTx,
    opened: Instant,
    /// Whether the session's Jobs stream is open.
    jobs: bool,
}

/// A Jobs stream attached to a node's current session.
pub struct JobsAttachment {
    pub session: u64,
    /// Cancelled when the session closes (a child of its token).
    pub cancel: CancellationToken,
}

pub type HeartbeatTx = crate::stream::StreamTx<tether_proto::agent_pb::HeartbeatResponse>;

impl SessionSlot {
    fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}

struct Entry {
    status: NodeStatus,
    last_seen: Instant,
    last_seen_ms: i64,
    lease_dirty: bool,
    usage: Option<NodeUsage>,
    session: Option<SessionSlot>,
    /// Its heartbeat figures, for its reliability score.
    stats: BeatStats,
}

impl Entry {
    /// A node last heard from at `last_seen` (`last_seen_ms` on the wall
    /// clock), with no session and no figures yet.
    fn new(status: NodeStatus, last_seen: Instant, last_seen_ms: i64) -> Self {
        Entry {
            status,
            last_seen,
            last_seen_ms,
            lease_dirty: false,
            usage: None,
            session: None,
            stats: BeatStats::default(),
        }
    }
}

/// A session to open in the database, through the group-commit batcher.
struct OpenItem {
    node: NodeId,
    generation: u64,
    capabilities: Option<NodeCapabilities>,
}

type Opened = Result<tether_store::OpenedSession, Error>;

pub struct Registry {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    store: Store,
    /// Session opens, written many to a transaction when they arrive together.
    opens: crate::batch::Batcher<OpenItem, Opened>,
    notify: Notifier,
    liveness: Liveness,
    replica: String,
    next_session: AtomicU64,
    /// Parent of every session's cancellation token.
    sessions_root: CancellationToken,
}

/// Most session opens written in one transaction.
const OPEN_BATCH: usize = 256;

/// Writes a batch of session opens in one transaction.
async fn open_sessions(store: &Store, replica: &str, items: Vec<OpenItem>) -> Vec<Opened> {
    let opens: Vec<tether_store::SessionOpen<'_>> = items
        .iter()
        .map(|i| tether_store::SessionOpen {
            id: &i.node,
            generation: i.generation,
            capabilities: i.capabilities.as_ref(),
        })
        .collect();
    let out = store.node_sessions_open(&opens, replica, now_ms()).await;
    crate::batch::answers(items.len(), "opening sessions", out)
        .into_iter()
        .map(|answer| answer.and_then(|opened| opened.map_err(Error::from)))
        .collect()
}

impl Registry {
    /// `sessions_root` is cancelled at shutdown; every session token is its
    /// child. The session-open batcher runs on `tasks`.
    pub fn new(
        store: Store,
        notify: Notifier,
        liveness: Liveness,
        replica: String,
        sessions_root: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let opens = {
            let (store, replica) = (store.clone(), replica.clone());
            crate::batch::Batcher::spawn(OPEN_BATCH, tasks, sessions_root.clone(), move |items: Vec<OpenItem>| {
                let (store, replica) = (store.clone(), replica.clone());
                async move { open_sessions(&store, &replica, items).await }
            })
        };
        Registry {
            nodes: Mutex::new(HashMap::new()),
            store,
            opens,
            notify,
            liveness,
            replica,
            next_session: AtomicU64::new(1),
            sessions_root,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the durable registry at start-up. Nodes that were ready get a
    /// fresh grace period to reconnect before they are marked unreachable.
    pub async fn load(&self) -> Result<(), tether_store::StoreError> {
        let nodes = self.store.node_list_all().await?;
        let now = Instant::now();
        let now_ms = now_ms();
        let mut map = self.lock();
        for n in nodes {
            let last_seen = match n.status {
                NodeStatus::Ready => now,
                _ => {
                    let ago = Duration::from_millis(now_ms.saturating_sub(n.last_seen_at).max(0) as u64);
                    now.checked_sub(ago.min(self.liveness.down_after)).unwrap_or(now)
                }
            };
            map.insert(n.id, Entry::new(n.status, last_seen, n.last_seen_at));
        }
        tracing::info!(nodes = map.len(), "registry loaded");
        Ok(())
    }

    /// Registers a just-enrolled node in memory.
    pub fn enrolled(&self, node: &Node) {
        self.lock().insert(node.id.clone(), Entry::new(node.status, Instant::now(), 0));
    }

    /// Opens a session for `node` with `generation`, superseding an older or
    /// equal one (a reconnect of the same agent process). A lower generation
    /// than the current one is refused with ABORTED.
    pub async fn session_open(
        &self,
        node: &NodeId,
        org: Option<&OrgId>,
        generation: u64,
        capabilities: Option<&NodeCapabilities>,
        tx: HeartbeatTx,
    ) -> Result<(Session, Node), Error> {
        let fenced = |current: u64| {
            Error::new(
                ErrorCode::Aborted,
                format!(
                    "session generation {generation} is older than {current}: a newer agent process holds this node"
                ),
            )
        };
        if let Some(cur) = self.lock().get(node).and_then(|e| e.session.as_ref())
            && cur.generation > generation
        {
            return Err(fenced(cur.generation));
        }
        let now = now_ms();
        let item = OpenItem { node: node.clone(), generation, capabilities: capabilities.cloned() };
        let (record, events) =
            self.opens.call(item).await.unwrap_or_else(|| Err(Error::unavailable("control plane is shutting down")))?;
        if org.is_some_and(|o| o != &record.org_id) {
            return Err(Error::permission_denied("node credential does not match the node's organisation"));
        }
        let slot = SessionSlot {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            generation,
            cancel: self.sessions_root.child_token(),
            reason: Arc::new(OnceLock::new()),
            tx,
            opened: Instant::now(),
            jobs: false,
        };
        let session = Session {
            id: slot.id,
            node: node.clone(),
            generation,
            cancel: slot.cancel.clone(),
            reason: slot.reason.clone(),
        };
        {
            let mut map = self.lock();
            let entry = map.entry(node.clone()).or_insert_with(|| Entry::new(record.status, Instant::now(), now));
            if let Some(cur) = &entry.session {
                if cur.generation > generation {
                    // A newer session won the race while we wrote.
                    return Err(fenced(cur.generation));
                }
                cur.close(CloseReason::Superseded);
            }
            entry.status = NodeStatus::Ready;
            entry.last_seen = Instant::now();
            entry.last_seen_ms = now;
            entry.session = Some(slot);
            entry.stats.session_opened();
        }
        if let Some((_, seq)) = events.last() {
            self.notify.committed(*seq);
        }
        metrics::gauge!("tether_agents_connected").increment(1.0);
        Ok((session, record))
    }

    /// Records a beat: the agent waits `expected` between beats on average,
    /// and measured `rtt` for an earlier one. A beat on a node marked
    /// unreachable brings it back; a beat on a node declared down (its work
    /// released) closes the session instead, so that the agent reconnects
    /// and resynchronises.
    pub async fn beat(&self, s: &Session, usage: NodeUsage, expected: Duration, rtt: Option<Duration>) -> Beat {
        let revive = {
            let mut map = self.lock();
            let Some(e) = map.get_mut(&s.node) else { return Beat::Stale };
            let Some(slot) = e.session.as_ref().filter(|x| x.id == s.id) else { return Beat::Stale };
            if matches!(e.status, NodeStatus::Down | NodeStatus::Left) {
                tracing::info!(node_id = %s.node, status = e.status.as_str(), "beat on a released node; closing the session to resync");
                slot.close(CloseReason::Resync);
                return Beat::Resync;
            }
            e.last_seen = Instant::now();
            e.last_seen_ms = now_ms();
            e.lease_dirty = true;
            e.usage = Some(usage);
            e.stats.beat(e.last_seen, expected, rtt);
            e.status != NodeStatus::Ready
        };
        metrics::counter!("tether_heartbeats_total").increment(1);
        if revive {
            self.set_status(&s.node, NodeStatus::Ready).await;
        }
        Beat::Counted
    }

    /// Records an HTTP agent's accepted heartbeat: it holds no session, so
    /// the post alone is its liveness. A node marked unreachable or down
    /// comes back ready (it runs no work that would need a resync).
    pub async fn http_beat(&self, node: &NodeId) {
        let revive = {
            let mut map = self.lock();
            let e = map.entry(node.clone()).or_insert_with(|| Entry::new(NodeStatus::Pending, Instant::now(), 0));
            e.last_seen = Instant::now();
            e.last_seen_ms = now_ms();
            e.lease_dirty = true;
            e.status != NodeStatus::Ready
        };
        metrics::counter!("tether_heartbeats_total").increment(1);
        if revive {
            self.set_status(node, NodeStatus::Ready).await;
        }
    }

    /// The node tried to open a session and we could not take it (the
    /// database is unavailable): it is alive, and it is not its fault, so
    /// its silence does not count against it. It gets no acknowledged beats
    /// meanwhile, so its agent still fences on time.
    pub fn refused_alive(&self, node: &NodeId) {
        if let Some(e) = self.lock().get_mut(node)
            && e.session.is_none()
        {
            e.last_seen = Instant::now();
            e.last_seen_ms = now_ms();
        }
    }

    /// Closes the node's session, if it has one here, for a resync: called
    /// when its work was released behind its back (declared lost).
    pub fn resync(&self, node: &NodeId) {
        if let Some(slot) = self.lock().get(node).and_then(|e| e.session.as_ref()) {
            tracing::info!(node_id = %node, "work on the node was declared lost; closing its session to resync");
            slot.close(CloseReason::Resync);
        }
    }

    /// Attaches a Jobs stream to the node's current session. None when the
    /// node has no session here (the agent opens Heartbeat first).
    pub fn jobs_attach(&self, node: &NodeId) -> Option<JobsAttachment> {
        let mut map = self.lock();
        let slot = map.get_mut(node)?.session.as_mut()?;
        slot.jobs = true;
        Some(JobsAttachment { session: slot.id, cancel: slot.cancel.child_token() })
    }

    /// The Jobs stream of `session` ended: the session ends with it.
    pub fn jobs_detached(&self, node: &NodeId, session: u64) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(node).and_then(|e| e.session.as_mut()).filter(|x| x.id == session) {
            slot.jobs = false;
            // Already closing (shutdown, superseded): that reason stands.
            if !slot.cancel.is_cancelled() {
                slot.close(CloseReason::JobsStreamEnded);
            }
        }
    }

    /// The stream of session `s` ended (client gone or closed by us).
    pub fn session_closed(&self, s: &Session) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&s.node)
            && e.session.as_ref().map(|x| x.id) == Some(s.id)
        {
            e.session = None;
            e.usage = None;
        }
        metrics::gauge!("tether_agents_connected").decrement(1.0);
    }

    /// The agent signed off: the node is `left` at once.
    pub async fn goodbye(&self, s: &Session) {
        let current = self.lock().get(&s.node).is_some_and(|e| e.session.as_ref().map(|x| x.id) == Some(s.id));
        if current {
            self.set_status(&s.node, NodeStatus::Left).await;
        }
    }

    /// Forgets a deregistered node and closes its session.
    pub fn remove(&self, node: &NodeId) {
        if let Some(e) = self.lock().remove(node)
            && let Some(slot) = e.session
        {
            slot.close(CloseReason::Deregistered);
        }
    }

    /// Pushes a message to the node's heartbeat stream if it is open here.
    pub fn push(&self, node: &NodeId, msg: tether_proto::agent_pb::HeartbeatResponse) -> bool {
        let tx = self.lock().get(node).and_then(|e| e.session.as_ref().map(|s| s.tx.clone()));
        tx.is_some_and(|tx| tx.try_send(Ok(msg)).is_ok())
    }

    /// Every node's heartbeat figures, for the scoring loop.
    pub fn stats(&self) -> Vec<(NodeId, BeatStats)> {
        self.lock().iter().map(|(id, e)| (id.clone(), e.stats.clone())).collect()
    }

    /// What this replica knows beyond the database: the latest beat figures
    /// (while a session is open here) and the exact last-seen time.
    pub fn live(&self, node: &NodeId) -> (Option<NodeUsage>, i64) {
        self.lock().get(node).map(|e| (e.usage, e.last_seen_ms)).unwrap_or((None, 0))
    }

    async fn set_status(&self, node: &NodeId, status: NodeStatus) {
        let last_seen = self.lock().get(node).map(|e| e.last_seen_ms).unwrap_or(0);
        let change = StatusChange { id: node.clone(), status, at: now_ms(), last_seen_at: last_seen };
        self.apply(vec![change]).await;
    }

    async fn apply(&self, changes: Vec<StatusChange>) {
        if changes.is_empty() {
            return;
        }
        match self.store.node_status_apply(&changes).await {
            Ok(applied) => {
                let mut map = self.lock();
                let now = Instant::now();
                for c in &changes {
                    if let Some(e) = map.get_mut(&c.id)
                        && e.status == NodeStatus::Ready
                        && c.status == NodeStatus::Unreachable
                    {
                        e.stats.flapped(now);
                    }
                }
                for (node, seq) in &applied {
                    tracing::info!(node_id = %node.id, status = node.status.as_str(), "node status changed");
                    if let Some(e) = map.get_mut(&node.id) {
                        e.status = node.status;
                    }
                    self.notify.committed(*seq);
                }
                // Changes that were no-ops in the database still settle memory.
                for c in &changes {
                    if let Some(e) = map.get_mut(&c.id) {
                        e.status = c.status;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    changes = changes.len(),
                    "recording status changes failed; will retry"
                )
            }
        }
    }

    /// One pass of the liveness check: ready -> unreachable after the grace,
    /// unreachable -> down after `down_after`.
    pub async fn check_liveness(&self) {
        let now = Instant::now();
        let now_wall = now_ms();
        let changes: Vec<StatusChange> = {
            let map = self.lock();
            for (id, e) in map.iter() {
                // A slow link delays the Jobs stream by two one-way trips
                // after the session opens; nothing is placed on the node
                // until it is there, and a session still without one when a
                // silent node would be down is closed.
                if let Some(slot) = &e.session
                    && !slot.jobs
                    && now.saturating_duration_since(slot.opened) > self.liveness.down_after
                    && slot.reason.get().is_none()
                {
                    tracing::warn!(node_id = %id, "no jobs stream within the down timeout; closing the session");
                    slot.close(CloseReason::NoJobsStream);
                }
            }
            map.iter()
                .filter_map(|(id, e)| {
                    let silent = now.saturating_duration_since(e.last_seen);
                    let next = match e.status {
                        NodeStatus::Ready if silent > self.liveness.grace => NodeStatus::Unreachable,
                        NodeStatus::Unreachable if silent > self.liveness.down_after => NodeStatus::Down,
                        _ => return None,
                    };
                    Some(StatusChange { id: id.clone(), status: next, at: now_wall, last_seen_at: e.last_seen_ms })
                })
                .collect()
        };
        self.apply(changes).await;
    }

    /// Writes the leases of nodes heard from since the last flush.
    pub async fn flush_leases(&self) {
        let batch: Vec<(NodeId, i64)> = {
            let mut map = self.lock();
            map.iter_mut()
                .filter(|(_, e)| e.lease_dirty)
                .map(|(id, e)| {
                    e.lease_dirty = false;
                    (id.clone(), e.last_seen_ms)
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.store.node_leases_flush(&batch, &self.replica).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                leases = batch.len(),
                "lease flush failed; will retry"
            );
            let mut map = self.lock();
            for (id, _) in &batch {
                if let Some(e) = map.get_mut(id) {
                    e.lease_dirty = true;
                }
            }
            return;
        }
        metrics::histogram!("tether_lease_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("tether_lease_flush_rows_total").increment(batch.len() as u64);
    }
}

#[cfg(test)]
mod tests;
