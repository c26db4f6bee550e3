//! The store's test suite. Every test runs on SQLite and on PostgreSQL; the
//! PostgreSQL URL comes from `TETHER_TEST_POSTGRES_URL` (`./scripts/test` starts
//! a throwaway cluster and sets it). A fresh database is created per test.

use std::str::FromStr;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tether_types::*;

use crate::*;

mod errors;
mod events;
mod fleet;
mod pools;
mod secrets;
mod work;

use errors::*;
use events::*;
use fleet::*;
use pools::*;
use secrets::*;
use work::*;

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("tether.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let write = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.unwrap();
    let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.unwrap();
    let s = Store::sqlite(write, read);
    s.migrate().await.unwrap();
    s
}

async fn postgres_store() -> Store {
    let base = std::env::var("TETHER_TEST_POSTGRES_URL")
        .expect("TETHER_TEST_POSTGRES_URL must point at a PostgreSQL server; ./scripts/test starts one");
    let admin = PgPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    let name = format!("tether_store_{}", hex(&tether_auth_free_random()));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&base).unwrap().database(&name);
    let pool = PgPoolOptions::new().max_connections(4).connect_with(opts).await.unwrap();
    let s = Store::postgres(pool);
    s.migrate().await.unwrap();
    s
}

fn tether_auth_free_random() -> [u8; 8] {
    // Unique enough for database names: time and a process-wide counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    (t ^ (u64::from(std::process::id()) << 32) ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9))
        .to_be_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Declares `$name` as a suite test run once per backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::sqlite_store(&dir).await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = super::postgres_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

suite!(
    bootstrap_is_idempotent,
    settings_first_writer_wins,
    enroll_spends_join_token_uses,
    session_open_fences_older_generations,
    sessions_open_in_one_batch_answer_each,
    status_changes_append_events_in_order,
    list_filters_and_pages,
    deregister_removes_and_logs,
    join_token_revoke_and_list,
    last_admin_token_is_never_revoked,
    leases_flush_only_moves_forward,
    job_lifecycle_retries_and_idempotency,
    job_cancel_and_lost_on_down_node,
    job_logs_append_and_read,
    workloads_and_desired_state,
    database_errors_are_classified_by_backend,
    writes_answer_their_last_event_sequence,
    secrets_versions_copies_and_deletes,
    events_filter_page_and_prune,
    pools_scale_requests_and_events,
    auto_quarantine_holds_and_an_operator_wins,
    usage_ingest_counts_each_key_once,
);

fn id<T>(f: fn([u8; 10]) -> T, n: u8) -> T {
    f([n; 10])
}

async fn project(store: &Store) -> ProjectId {
    store.bootstrap(id(OrgId::from_random, 1), id(ProjectId::from_random, 2), 1_000).await.unwrap().project_id
}

/// Events of one project after `after` whose kind starts with `kind_prefix`.
async fn events_since(
    store: &Store,
    project: &ProjectId,
    kind_prefix: &str,
    after: i64,
    limit: u32,
) -> crate::Result<Vec<Event>> {
    let q =
        EventQuery { kind_prefix: kind_prefix.into(), ..EventQuery::new(EventScope::Project(project.clone()), after) };
    store.events_query(&q, limit).await
}

/// Events about one organisation (its projects' included) after `after`.
async fn org_events_since(
    store: &Store,
    org: &OrgId,
    kind_prefix: &str,
    after: i64,
    limit: u32,
) -> crate::Result<Vec<Event>> {
    let q = EventQuery { kind_prefix: kind_prefix.into(), ..EventQuery::new(EventScope::Org(org.clone()), after) };
    store.events_query(&q, limit).await
}

/// The organisation [`project`] belongs to.
fn org() -> OrgId {
    id(OrgId::from_random, 1)
}

/// A project join token: its nodes are dedicated to `p`.
async fn join_token(store: &Store, p: &ProjectId, n: u8, max_uses: u32, expires_at: i64) -> JoinToken {
    let t = JoinToken {
        id: id(JoinTokenId::from_random, n),
        org_id: org(),
        project_id: Some(p.clone()),
        pool: String::new(),
        description: "test".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        max_uses,
        uses: 0,
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    };
    let _ = store.join_token_create(&t, b"hash").await.unwrap();
    t
}

fn enroll(p: &ProjectId, jt: &JoinToken, n: u8, now: i64) -> NodeEnroll {
    NodeEnroll {
        id: id(NodeId::from_random, n),
        org_id: org(),
        project_id: Some(p.clone()),
        capabilities: NodeCapabilities { hostname: format!("host-{n}"), cpu_count: 4, ..Default::default() },
        labels: [("zone".to_string(), "a".to_string()), ("n".to_string(), n.to_string())].into(),
        pool: if n.is_multiple_of(2) { "even".into() } else { "odd".into() },
        join_token_id: jt.id.clone(),
        public_key: vec![n; 32],
        http_agent_key: None,
        now,
    }
}
