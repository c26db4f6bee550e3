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
use tether_types::{Error, ErrorCode, Node, NodeCapabilities, NodeId, NodeStatus, NodeUsage, ProjectId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::notify::Notifier;
use crate::now_ms;

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
            map.insert(
                n.id,
                Entry {
                    status: n.status,
                    last_seen,
                    last_seen_ms: n.last_seen_at,
                    lease_dirty: false,
                    usage: None,
                    session: None,
                },
            );
        }
        tracing::info!(nodes = map.len(), "registry loaded");
        Ok(())
    }

    /// Registers a just-enrolled node in memory.
    pub fn enrolled(&self, node: &Node) {
        self.lock().insert(
            node.id.clone(),
            Entry {
                status: node.status,
                last_seen: Instant::now(),
                last_seen_ms: 0,
                lease_dirty: false,
                usage: None,
                session: None,
            },
        );
    }

    /// Opens a session for `node` with `generation`, superseding an older or
    /// equal one (a reconnect of the same agent process). A lower generation
    /// than the current one is refused with ABORTED.
    pub async fn session_open(
        &self,
        node: &NodeId,
        project: &ProjectId,
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
        if &record.project_id != project {
            return Err(Error::permission_denied("node credential does not match the node's project"));
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
            let entry = map.entry(node.clone()).or_insert_with(|| Entry {
                status: record.status,
                last_seen: Instant::now(),
                last_seen_ms: now,
                lease_dirty: false,
                usage: None,
                session: None,
            });
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
        }
        if let Some((_, seq)) = events.last() {
            self.notify.committed(*seq);
        }
        metrics::gauge!("tether_agents_connected").increment(1.0);
        Ok((session, record))
    }

    /// Records a beat. A beat on a node marked unreachable brings it back; a
    /// beat on a node declared down (its work released) closes the session
    /// instead, so that the agent reconnects and resynchronises.
    pub async fn beat(&self, s: &Session, usage: NodeUsage) -> Beat {
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
            e.status != NodeStatus::Ready
        };
        metrics::counter!("tether_heartbeats_total").increment(1);
        if revive {
            self.set_status(&s.node, NodeStatus::Ready).await;
        }
        Beat::Counted
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
mod tests {
    //! The liveness rules with tokio's clock paused and advanced by hand, on
    //! a real (SQLite) store. The store's pools are set up so that they never
    //! arm a timer (a paused clock jumps to the next timer whenever the
    //! runtime waits, here on SQLite's worker threads), so that the clock
    //! moves only when the test moves it.

    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use tether_types::{JoinToken, JoinTokenId, OrgId};

    use super::*;

    const GRACE: Duration = Duration::from_secs(10);
    const DOWN_AFTER: Duration = Duration::from_secs(30);

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        registry: Registry,
        node: NodeId,
        project: ProjectId,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::from_str("sqlite://x")
            .unwrap()
            .filename(dir.path().join("tether.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        // The file, its WAL mode and schema first, on one connection: several
        // connections switching the journal mode at once lock each other out.
        let init = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.unwrap();
        Store::sqlite(init.clone(), init.clone()).migrate().await.unwrap();
        init.close().await;
        // Then every connection opened up front and none ever waited for: an
        // acquire that waits arms a timer, and a paused clock jumps to it.
        let pool = SqlitePoolOptions::new()
            .min_connections(4)
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .unwrap();
        let store = Store::sqlite(pool.clone(), pool);
        let project = store
            .bootstrap(OrgId::from_random([1; 10]), ProjectId::from_random([2; 10]), 1_000)
            .await
            .unwrap()
            .project_id;
        let jt = JoinToken {
            id: JoinTokenId::from_random([3; 10]),
            project_id: project.clone(),
            description: String::new(),
            labels: Default::default(),
            max_uses: 0,
            uses: 0,
            created_at: 1_000,
            expires_at: i64::MAX,
            revoked_at: None,
        };
        store.join_token_create(&jt, b"hash").await.unwrap();
        let (node, _) = store
            .node_enroll(&tether_store::NodeEnroll {
                id: NodeId::from_random([4; 10]),
                project_id: project.clone(),
                capabilities: NodeCapabilities { hostname: "h".into(), cpu_count: 1, ..Default::default() },
                labels: Default::default(),
                pool: "default".into(),
                join_token_id: jt.id.clone(),
                public_key: vec![0; 32],
                now: 2_000,
            })
            .await
            .unwrap();
        let registry = Registry::new(
            store.clone(),
            Notifier::new(0),
            Liveness { grace: GRACE, down_after: DOWN_AFTER },
            "r1".into(),
            CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        );
        registry.load().await.unwrap();
        tokio::time::pause();
        Fixture { _dir: dir, store, registry, node: node.id, project }
    }

    impl Fixture {
        async fn open(&self, generation: u64) -> Result<Session, Error> {
            let (tx, _rx) = crate::stream::channel(8);
            let (s, _) = self.registry.session_open(&self.node, &self.project, generation, None, tx).await?;
            self.registry.jobs_attach(&self.node).expect("session is current");
            Ok(s)
        }

        /// Memory and the database agree on the node's status.
        async fn status(&self) -> NodeStatus {
            let stored = self.store.node_get(&self.node).await.unwrap().unwrap().status;
            let memory = self.registry.lock().get(&self.node).unwrap().status;
            assert_eq!(stored, memory, "the database and memory agree");
            stored
        }

        async fn after(&self, d: Duration) {
            tokio::time::advance(d).await;
            self.registry.check_liveness().await;
        }
    }

    #[tokio::test]
    async fn ready_unreachable_revive_down_resync() {
        let f = fixture().await;
        let s = f.open(1).await.unwrap();
        assert_eq!(f.status().await, NodeStatus::Ready);
        f.after(GRACE - Duration::from_millis(1)).await;
        assert_eq!(f.status().await, NodeStatus::Ready, "silent for less than the grace");
        f.after(Duration::from_millis(2)).await;
        assert_eq!(f.status().await, NodeStatus::Unreachable, "silent past the grace");

        // A beat brings it back.
        assert_eq!(f.registry.beat(&s, NodeUsage::default()).await, Beat::Counted);
        assert_eq!(f.status().await, NodeStatus::Ready);

        // Silent again: unreachable, then down once silent past down_after.
        f.after(GRACE + Duration::from_millis(1)).await;
        assert_eq!(f.status().await, NodeStatus::Unreachable);
        f.after(DOWN_AFTER - GRACE - Duration::from_millis(2)).await;
        assert_eq!(f.status().await, NodeStatus::Unreachable, "not yet past down_after");
        f.after(Duration::from_millis(2)).await;
        assert_eq!(f.status().await, NodeStatus::Down);

        // A beat on a down node does not revive it: its work was released,
        // so the session closes and the agent must resync.
        assert_eq!(f.registry.beat(&s, NodeUsage::default()).await, Beat::Resync);
        assert_eq!(s.close_reason(), Some(CloseReason::Resync));
        assert!(s.cancel.is_cancelled());
        assert_eq!(f.status().await, NodeStatus::Down);
    }

    #[tokio::test]
    async fn beats_keep_a_node_ready() {
        let f = fixture().await;
        let s = f.open(1).await.unwrap();
        for _ in 0..10 {
            f.after(GRACE / 2).await;
            assert_eq!(f.registry.beat(&s, NodeUsage::default()).await, Beat::Counted);
        }
        assert_eq!(
            f.status().await,
            NodeStatus::Ready,
            "{}s of beats every {}s",
            10 * GRACE.as_secs() / 2,
            GRACE.as_secs() / 2
        );
    }

    #[tokio::test]
    async fn newer_generation_supersedes_and_older_is_fenced() {
        let f = fixture().await;
        let first = f.open(1).await.unwrap();
        let second = f.open(2).await.unwrap();
        assert_eq!(first.close_reason(), Some(CloseReason::Superseded));
        assert!(first.cancel.is_cancelled());
        assert_eq!(
            f.registry.beat(&first, NodeUsage::default()).await,
            Beat::Stale,
            "the old session's beats are not counted"
        );
        assert_eq!(f.registry.beat(&second, NodeUsage::default()).await, Beat::Counted);
        let Err(err) = f.open(1).await else { panic!("an older generation must be refused") };
        assert_eq!(err.code, ErrorCode::Aborted, "{err:?}");
        assert_eq!(second.close_reason(), None, "the current session is untouched");
        // A reconnect of the same process (same generation) supersedes too.
        let third = f.open(2).await.unwrap();
        assert_eq!(second.close_reason(), Some(CloseReason::Superseded));
        assert_eq!(third.close_reason(), None);
    }

    #[tokio::test]
    async fn goodbye_is_left_at_once_and_stays_left() {
        let f = fixture().await;
        let s = f.open(1).await.unwrap();
        f.registry.goodbye(&s).await;
        assert_eq!(f.status().await, NodeStatus::Left);
        f.registry.session_closed(&s);
        f.after(DOWN_AFTER * 2).await;
        assert_eq!(f.status().await, NodeStatus::Left, "a node that signed off is not then marked down");
    }

    #[tokio::test]
    async fn a_session_without_a_jobs_stream_is_closed_at_the_down_timeout() {
        let f = fixture().await;
        let (tx, _rx) = crate::stream::channel(8);
        let (s, _) = f.registry.session_open(&f.node, &f.project, 1, None, tx).await.unwrap();
        // Beats keep it ready, but without a Jobs stream it cannot take work.
        for _ in 0..7 {
            f.after(GRACE / 2).await;
            f.registry.beat(&s, NodeUsage::default()).await;
        }
        assert_eq!(s.close_reason(), Some(CloseReason::NoJobsStream));
    }
}
