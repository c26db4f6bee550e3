//! The liveness rules with tokio's clock paused and advanced by hand, on
//! a real (SQLite) store. The store's pools are set up so that they never
//! arm a timer (a paused clock jumps to the next timer whenever the
//! runtime waits, here on SQLite's worker threads), so that the clock
//! moves only when the test moves it.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tether_types::{JoinToken, JoinTokenId, OrgId, ProjectId};

use super::*;

const GRACE: Duration = Duration::from_secs(10);
const DOWN_AFTER: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    registry: Registry,
    node: NodeId,
    org: OrgId,
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
    // min_connections opens them in the background: hold all four at once
    // so that each is open before the clock is paused (one opened later
    // would leave the runtime idle, and the paused clock would jump to the
    // acquire timeout).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    drop(held);
    let store = Store::sqlite(pool.clone(), pool);
    let org =
        store.bootstrap(OrgId::from_random([1; 10]), ProjectId::from_random([2; 10]), 1_000).await.unwrap().org_id;
    let jt = JoinToken {
        id: JoinTokenId::from_random([3; 10]),
        org_id: org.clone(),
        project_id: None,
        pool: "default".into(),
        description: String::new(),
        labels: Default::default(),
        max_uses: 0,
        uses: 0,
        created_at: 1_000,
        expires_at: i64::MAX,
        revoked_at: None,
    };
    let _ = store.join_token_create(&jt, b"hash").await.unwrap();
    let node = store
        .node_enroll(&tether_store::NodeEnroll {
            id: NodeId::from_random([4; 10]),
            org_id: org.clone(),
            project_id: None,
            capabilities: NodeCapabilities { hostname: "h".into(), cpu_count: 1, ..Default::default() },
            labels: Default::default(),
            pool: "default".into(),
            join_token_id: jt.id.clone(),
            public_key: vec![0; 32],
            http_agent_key: None,
            now: 2_000,
        })
        .await
        .unwrap()
        .value;
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
    Fixture { _dir: dir, store, registry, node: node.id, org }
}

impl Fixture {
    async fn open(&self, generation: u64) -> Result<Session, Error> {
        let (tx, _rx) = crate::stream::channel(8);
        let (s, _) = self.registry.session_open(&self.node, Some(&self.org), generation, None, tx).await?;
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
    assert_eq!(f.registry.beat(&s, NodeUsage::default(), Duration::from_secs(1), None).await, Beat::Counted);
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
    assert_eq!(f.registry.beat(&s, NodeUsage::default(), Duration::from_secs(1), None).await, Beat::Resync);
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
        assert_eq!(f.registry.beat(&s, NodeUsage::default(), Duration::from_secs(1), None).await, Beat::Counted);
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
        f.registry.beat(&first, NodeUsage::default(), Duration::from_secs(1), None).await,
        Beat::Stale,
        "the old session's beats are not counted"
    );
    assert_eq!(f.registry.beat(&second, NodeUsage::default(), Duration::from_secs(1), None).await, Beat::Counted);
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
    let (s, _) = f.registry.session_open(&f.node, Some(&f.org), 1, None, tx).await.unwrap();
    // Beats keep it ready, but without a Jobs stream it cannot take work.
    for _ in 0..7 {
        f.after(GRACE / 2).await;
        f.registry.beat(&s, NodeUsage::default(), Duration::from_secs(1), None).await;
    }
    assert_eq!(s.close_reason(), Some(CloseReason::NoJobsStream));
}
