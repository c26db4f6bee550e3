//! The store's test suite. Every test runs on SQLite and on PostgreSQL; the
//! PostgreSQL URL comes from `TETHER_TEST_POSTGRES_URL` (`./scripts/test` starts
//! a throwaway cluster and sets it). A fresh database is created per test.

use std::str::FromStr;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tether_types::*;

use crate::*;

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
);

fn id<T>(f: fn([u8; 10]) -> T, n: u8) -> T {
    f([n; 10])
}

async fn project(store: &Store) -> ProjectId {
    store.bootstrap(id(OrgId::from_random, 1), id(ProjectId::from_random, 2), 1_000).await.unwrap().project_id
}

async fn join_token(store: &Store, p: &ProjectId, n: u8, max_uses: u32, expires_at: i64) -> JoinToken {
    let t = JoinToken {
        id: id(JoinTokenId::from_random, n),
        project_id: p.clone(),
        description: "test".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        max_uses,
        uses: 0,
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    };
    store.join_token_create(&t, b"hash").await.unwrap();
    t
}

fn enroll(p: &ProjectId, jt: &JoinToken, n: u8, now: i64) -> NodeEnroll {
    NodeEnroll {
        id: id(NodeId::from_random, n),
        project_id: p.clone(),
        capabilities: NodeCapabilities { hostname: format!("host-{n}"), cpu_count: 4, ..Default::default() },
        labels: [("zone".to_string(), "a".to_string()), ("n".to_string(), n.to_string())].into(),
        pool: if n.is_multiple_of(2) { "even".into() } else { "odd".into() },
        join_token_id: jt.id.clone(),
        public_key: vec![n; 32],
        now,
    }
}

async fn bootstrap_is_idempotent(store: Store) {
    let first = store.bootstrap(id(OrgId::from_random, 1), id(ProjectId::from_random, 2), 1).await.unwrap();
    assert!(first.created);
    let again = store.bootstrap(id(OrgId::from_random, 3), id(ProjectId::from_random, 4), 2).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.project_id, first.project_id);
    assert_eq!(again.org_id, first.org_id);
    assert_eq!(store.project_org(&first.project_id).await.unwrap(), Some(first.org_id));
    let events = store.events_since(&first.project_id, "project.", 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
}

async fn settings_first_writer_wins(store: Store) {
    assert_eq!(store.setting_get("k").await.unwrap(), None);
    assert_eq!(store.setting_put_if_absent("k", b"one").await.unwrap(), b"one");
    assert_eq!(store.setting_put_if_absent("k", b"two").await.unwrap(), b"one");
    assert_eq!(store.setting_get("k").await.unwrap().as_deref(), Some(&b"one"[..]));
}

async fn enroll_spends_join_token_uses(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 2, 10_000).await;
    store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap();
    let err = store.node_enroll(&enroll(&p, &jt, 3, 2_000)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);
    assert_eq!(store.node_get(&id(NodeId::from_random, 3)).await.unwrap(), None, "nothing stored");
    let (t, hash) = store.join_token_lookup(&jt.id).await.unwrap().unwrap();
    assert_eq!((t.uses, hash.as_slice()), (2, &b"hash"[..]));

    let expired = join_token(&store, &p, 2, 0, 1_500).await;
    let err = store.node_enroll(&enroll(&p, &expired, 4, 2_000)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);

    let n = store.node_get(&id(NodeId::from_random, 1)).await.unwrap().unwrap();
    assert_eq!(n.status, NodeStatus::Pending);
    assert_eq!(n.desired_state, DesiredNodeState::Active);
    assert_eq!(n.capabilities.hostname, "host-1");
    assert_eq!(n.join_token_id, Some(jt.id));
}

async fn session_open_fences_older_generations(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let (node, _) = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let (n, ev) = store.node_session_open(&node.id, 5, None, "r1", 3_000).await.unwrap();
    assert_eq!(n.status, NodeStatus::Ready);
    assert_eq!(n.session_generation, 5);
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.status_changed"]);
    // Same generation (a reconnect of the same process): accepted, no event.
    let (_, ev) = store.node_session_open(&node.id, 5, None, "r1", 3_500).await.unwrap();
    assert!(ev.is_empty());
    // New capabilities: one update event.
    let caps = NodeCapabilities { hostname: "renamed".into(), ..Default::default() };
    let (n, ev) = store.node_session_open(&node.id, 6, Some(&caps), "r1", 4_000).await.unwrap();
    assert_eq!(n.capabilities.hostname, "renamed");
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.updated"]);
    // Older generation: refused, nothing changes.
    let err = store.node_session_open(&node.id, 4, None, "r2", 5_000).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Aborted);
    let n = store.node_get(&node.id).await.unwrap().unwrap();
    assert_eq!((n.session_generation, n.last_seen_at), (6, 4_000));
    // Unknown node.
    let err = store.node_session_open(&id(NodeId::from_random, 9), 1, None, "r1", 1).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);
}

async fn sessions_open_in_one_batch_answer_each(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let (a, _) = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let (b, _) = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap();
    let (c, _) = store.node_enroll(&enroll(&p, &jt, 3, 2_000)).await.unwrap();
    store.node_session_open(&b.id, 7, None, "r1", 2_500).await.unwrap();
    let head = store.events_head().await.unwrap();
    let caps = NodeCapabilities { hostname: "c-renamed".into(), ..Default::default() };
    let missing = id(NodeId::from_random, 9);
    let opens = [
        SessionOpen { id: &a.id, generation: 1, capabilities: None },
        SessionOpen { id: &b.id, generation: 6, capabilities: None },
        SessionOpen { id: &missing, generation: 1, capabilities: None },
        SessionOpen { id: &c.id, generation: 2, capabilities: Some(&caps) },
    ];
    let out = store.node_sessions_open(&opens, "r2", 3_000).await.unwrap();
    assert_eq!(out.len(), 4);
    let (na, ev) = out[0].as_ref().unwrap();
    assert_eq!((na.status, na.session_generation, na.last_seen_at), (NodeStatus::Ready, 1, 3_000));
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.status_changed"]);
    let Err(e) = &out[1] else { panic!("an older generation is fenced") };
    assert!(e.to_string().contains("older"), "{e}");
    assert!(out[2].is_err(), "an unknown node is refused");
    let (nc, ev) = out[3].as_ref().unwrap();
    assert_eq!(nc.capabilities.hostname, "c-renamed");
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.updated", "node.status_changed"]);
    // The fenced node is untouched; three events were appended in all.
    let nb = store.node_get(&b.id).await.unwrap().unwrap();
    assert_eq!((nb.session_generation, nb.last_seen_at), (7, 2_500));
    assert_eq!(store.events_head().await.unwrap(), head + 3);
}

async fn status_changes_append_events_in_order(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let (a, _) = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let (b, _) = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap();
    let head = store.events_head().await.unwrap();
    let changes = vec![
        StatusChange { id: a.id.clone(), status: NodeStatus::Unreachable, at: 3_000, last_seen_at: 2_500 },
        StatusChange { id: b.id.clone(), status: NodeStatus::Pending, at: 3_000, last_seen_at: 2_500 },
        StatusChange { id: a.id.clone(), status: NodeStatus::Down, at: 3_100, last_seen_at: 2_500 },
    ];
    let applied = store.node_status_apply(&changes).await.unwrap();
    // b was already pending: skipped.
    assert_eq!(applied.len(), 2);
    assert!(applied[0].1 < applied[1].1);
    let events = store.events_since(&p, "node.", head, 100).await.unwrap();
    let kinds: Vec<_> =
        events.iter().map(|e| (e.subject.clone(), e.payload["status"].as_str().unwrap().to_owned())).collect();
    assert_eq!(kinds, [(a.id.to_string(), "unreachable".into()), (a.id.to_string(), "down".into())]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.events_head().await.unwrap(), events.last().unwrap().seq);
    // Other projects see nothing.
    assert!(store.events_since(&id(ProjectId::from_random, 7), "", 0, 100).await.unwrap().is_empty());
}

async fn list_filters_and_pages(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    for n in 1..=7u8 {
        store.node_enroll(&enroll(&p, &jt, n, 2_000 + i64::from(n % 3))).await.unwrap();
    }
    store.node_session_open(&id(NodeId::from_random, 3), 1, None, "r", 3_000).await.unwrap();
    let all = NodeFilter { project_id: p.clone(), status: None, pool: None };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.node_list(&all, after.as_ref(), 3).await.unwrap();
        assert!(page.nodes.len() <= 3);
        seen.extend(page.nodes.iter().map(|n| (n.registered_at, n.id.clone())));
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in (registered_at, id) order without gaps or repeats");

    let ready = NodeFilter { status: Some(NodeStatus::Ready), ..all.clone() };
    let page = store.node_list(&ready, None, 100).await.unwrap();
    assert_eq!(page.nodes.len(), 1);
    let odd = NodeFilter { pool: Some("odd".into()), ..all.clone() };
    assert_eq!(store.node_list(&odd, None, 100).await.unwrap().nodes.len(), 4);
    let other = NodeFilter { project_id: id(ProjectId::from_random, 9), ..all };
    assert!(store.node_list(&other, None, 100).await.unwrap().nodes.is_empty());
    assert_eq!(store.node_list_all().await.unwrap().len(), 7);
}

async fn deregister_removes_and_logs(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let (a, _) = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let other = id(ProjectId::from_random, 8);
    let err = store.node_deregister(&other, &a.id, 3_000).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound, "another project cannot see it");
    let (gone, seq) = store.node_deregister(&p, &a.id, 3_000).await.unwrap();
    assert_eq!(gone.id, a.id);
    assert_eq!(store.node_get(&a.id).await.unwrap(), None);
    let ev = store.events_since(&p, "node.deregistered", seq - 1, 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].subject, a.id.to_string());
}

async fn join_token_revoke_and_list(store: Store) {
    let p = project(&store).await;
    let a = join_token(&store, &p, 1, 0, 10_000).await;
    let b = join_token(&store, &p, 2, 0, 10_000).await;
    let _expired = join_token(&store, &p, 3, 0, 1_500).await;
    assert_eq!(store.join_token_list(&p, false, 2_000).await.unwrap().len(), 2);
    assert_eq!(store.join_token_list(&p, true, 2_000).await.unwrap().len(), 3);
    let revoked = store.join_token_revoke(&p, &a.id, 2_500).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(2_500));
    let again = store.join_token_revoke(&p, &a.id, 2_600).await.unwrap();
    assert_eq!(again.revoked_at, Some(2_500), "first revocation time is kept");
    let active: Vec<_> = store.join_token_list(&p, false, 2_700).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(active, [b.id]);
    let err = store.join_token_revoke(&id(ProjectId::from_random, 5), &a.id, 1).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    let err = store.node_enroll(&enroll(&p, &a, 1, 2_800)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated, "a revoked token enrols nothing");
}

fn token(p: &ProjectId, n: u8, role: tether_types::Role, expires_at: Option<i64>) -> crate::TokenRecord {
    crate::TokenRecord {
        id: id(tether_types::TokenId::from_random, n),
        project_id: p.clone(),
        role,
        description: String::new(),
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    }
}

async fn last_admin_token_is_never_revoked(store: Store) {
    use tether_types::Role;
    let p = project(&store).await;
    let admin = token(&p, 1, Role::Admin, None);
    let viewer = token(&p, 2, Role::Viewer, None);
    let expired_admin = token(&p, 3, Role::Admin, Some(1_500));
    for t in [&admin, &viewer, &expired_admin] {
        store.token_record(t).await.unwrap();
    }
    let err = store.token_revoke(&p, &admin.id, 2_000).await.unwrap_err();
    let err = Error::from(err);
    assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err}");
    assert!(err.message.contains("last admin token"), "{err}");
    assert_eq!(store.tokens_revoked().await.unwrap(), vec![], "nothing changed");
    // Others may go; with a second admin, so may the first.
    store.token_revoke(&p, &viewer.id, 2_000).await.unwrap();
    store.token_revoke(&p, &expired_admin.id, 2_000).await.unwrap();
    let second = token(&p, 4, Role::Admin, Some(10_000));
    store.token_record(&second).await.unwrap();
    store.token_revoke(&p, &admin.id, 2_100).await.unwrap();
    let err = store.token_revoke(&p, &second.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::FailedPrecondition, "now the second is the last");
}

async fn leases_flush_only_moves_forward(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let (a, _) = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let head = store.events_head().await.unwrap();
    store.node_leases_flush(&[(a.id.clone(), 5_000)], "r1").await.unwrap();
    store.node_leases_flush(&[(a.id.clone(), 4_000)], "r1").await.unwrap();
    assert_eq!(store.node_get(&a.id).await.unwrap().unwrap().last_seen_at, 5_000);
    assert_eq!(store.events_head().await.unwrap(), head, "a lease flush is not an event");

    // Many nodes in one flush (more than one statement's batch), some moving
    // forward and some not, and an id that is not there.
    let jt = join_token(&store, &p, 2, 0, 10_000).await;
    let mut nodes = Vec::new();
    for i in 0..1_100u32 {
        let mut e = enroll(&p, &jt, 1, 2_000);
        let mut b = [0xab; 10];
        b[..4].copy_from_slice(&i.to_be_bytes());
        e.id = NodeId::from_random(b);
        e.capabilities.hostname = format!("n{i}");
        nodes.push(store.node_enroll(&e).await.unwrap().0);
    }
    let leases: Vec<(NodeId, i64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), if i % 2 == 0 { 9_000 } else { 1_000 }))
        .chain([(NodeId::from_random([7; 10]), 9_000)])
        .collect();
    let first: Vec<(NodeId, i64)> = nodes.iter().map(|n| (n.id.clone(), 5_000)).collect();
    store.node_leases_flush(&first, "r2").await.unwrap();
    store.node_leases_flush(&leases, "r2").await.unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let got = store.node_get(&n.id).await.unwrap().unwrap().last_seen_at;
        assert_eq!(got, if i % 2 == 0 { 9_000 } else { 5_000 }, "node {i}");
    }
}

fn job(p: &ProjectId, n: u8, max_attempts: u32) -> Job {
    Job {
        id: id(JobId::from_random, n),
        project_id: p.clone(),
        spec: JobSpec {
            exec: ExecSpec { command: "/bin/true".into(), ..Default::default() },
            resources: Resources { cpu_millis: 100, memory_mb: 10, gpus: 0 },
            constraints: Constraints::default(),
            max_attempts,
            priority: i32::from(n),
        },
        labels: Labels::new(),
        status: JobStatus::Pending,
        attempt: 0,
        node_id: None,
        exit_code: None,
        error: String::new(),
        created_at: 1_000 + i64::from(n),
        updated_at: 1_000,
    }
}

fn attempt(j: &Job, node: &NodeId, attempt: u32) -> Allocation {
    Allocation {
        key: tether_types::alloc_key(j.id.as_str(), attempt),
        project_id: j.project_id.clone(),
        kind: AllocKind::Job,
        job_id: Some(j.id.clone()),
        attempt,
        workload_id: None,
        spec_version: 0,
        node_id: node.clone(),
        status: AllocStatus::Scheduled,
        resources: j.spec.resources,
        exit_code: None,
        error: String::new(),
        restarts: 0,
        scheduled_at: 2_000,
        started_at: None,
        finished_at: None,
    }
}

async fn node_for(store: &Store, p: &ProjectId, n: u8) -> NodeId {
    let jt = join_token(store, p, 100 + n, 0, i64::MAX / 2).await;
    store.node_enroll(&enroll(p, &jt, n, 2_000)).await.unwrap().0.id
}

async fn job_lifecycle_retries_and_idempotency(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let j = job(&p, 1, 2);
    let (first, created) = store.job_submit(&j, Some("key-1")).await.unwrap();
    assert!(created);
    let (again, created) = store.job_submit(&job(&p, 2, 1), Some("key-1")).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id, "a retried submit returns the first job");
    assert_eq!(store.jobs_pending(10).await.unwrap().items.len(), 1);

    let placed = store.allocations_place(&[attempt(&j, &node, 1)], 2_000).await.unwrap();
    assert_eq!(placed.len(), 1);
    // Placing the same attempt again is refused (the job is no longer pending).
    assert!(store.allocations_place(&[attempt(&j, &node, 1)], 2_000).await.unwrap().is_empty());
    assert_eq!(store.job_get(&j.id).await.unwrap().unwrap().status, JobStatus::Scheduled);
    let key = format!("{}/1", j.id);
    // Only the holding node may report.
    assert!(store.allocation_started(&key, &id(NodeId::from_random, 9), 0, 2_100).await.unwrap().is_none());
    store.allocation_started(&key, &node, 0, 2_100).await.unwrap().unwrap();
    assert_eq!(store.job_get(&j.id).await.unwrap().unwrap().status, JobStatus::Running);
    // A failure with attempts left: back to pending for attempt 2.
    let f = store.allocation_finished(&key, &node, 3, "", 2_200).await.unwrap().unwrap();
    assert_eq!(f.allocation.status, AllocStatus::Failed);
    assert_eq!(f.job.as_ref().unwrap().status, JobStatus::Pending);
    assert!(store.allocation_finished(&key, &node, 3, "", 2_300).await.unwrap().is_none(), "idempotent");
    store.allocations_place(&[attempt(&j, &node, 2)], 2_400).await.unwrap();
    let key2 = format!("{}/2", j.id);
    let f = store.allocation_finished(&key2, &node, 0, "", 2_500).await.unwrap().unwrap();
    assert_eq!(f.job.unwrap().status, JobStatus::Succeeded);
    let attempts = store.job_allocations(&j.id).await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [AllocStatus::Failed, AllocStatus::Succeeded]);
    assert!(store.allocations_active().await.unwrap().is_empty());
    let kinds: Vec<String> =
        store.events_for_subject(&p, j.id.as_str(), 0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        ["job.submitted", "job.scheduled", "job.running", "job.retrying", "job.scheduled", "job.succeeded"]
    );
    let page = store.job_list(&p, Some(JobStatus::Succeeded), None, None, 10).await.unwrap();
    assert_eq!(page.jobs.len(), 1);
}

async fn job_cancel_and_lost_on_down_node(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let a = job(&p, 1, 1);
    let b = job(&p, 2, 2);
    store.job_submit(&a, None).await.unwrap();
    store.job_submit(&b, None).await.unwrap();
    store.allocations_place(&[attempt(&a, &node, 1), attempt(&b, &node, 1)], 2_000).await.unwrap();
    let (cancelled, stopping) = store.job_cancel(&p, &a.id, 2_100).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(stopping.unwrap().status, AllocStatus::Stopping);
    let err = store.job_cancel(&p, &a.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::FailedPrecondition);
    let err = store.job_cancel(&id(ProjectId::from_random, 9), &b.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    // The node goes down: b's attempt is lost and b is retried; a's stopping
    // attempt counts as stopped.
    store
        .node_status_apply(&[StatusChange {
            id: node.clone(),
            status: NodeStatus::Down,
            at: 3_000,
            last_seen_at: 2_000,
        }])
        .await
        .unwrap();
    let lost = store.allocations_lose_on_down_nodes(3_000).await.unwrap();
    assert_eq!(lost.len(), 2);
    assert!(store.allocations_lose_on_down_nodes(3_100).await.unwrap().is_empty(), "idempotent");
    let b_after = store.job_get(&b.id).await.unwrap().unwrap();
    assert_eq!((b_after.status, b_after.attempt), (JobStatus::Pending, 1));
    assert_eq!(store.job_get(&a.id).await.unwrap().unwrap().status, JobStatus::Cancelled);
    let statuses: Vec<_> = store.job_allocations(&b.id).await.unwrap().iter().map(|x| x.status).collect();
    assert_eq!(statuses, [AllocStatus::Lost]);
}

async fn job_logs_append_and_read(store: Store) {
    let p = project(&store).await;
    let j = job(&p, 1, 1);
    store.job_submit(&j, None).await.unwrap();
    assert!(store.job_log_append(&j.id, 1, 0, b"hello ", false).await.unwrap());
    assert!(store.job_log_append(&j.id, 1, 6, b"world", true).await.unwrap());
    assert!(!store.job_log_append(&j.id, 1, 6, b"world", true).await.unwrap(), "a resend is a no-op");
    assert!(store.job_log_append(&j.id, 2, 0, b"second", false).await.unwrap(), "attempts have their own output");
    let chunks = store.job_logs(&j.id, 1, 0, 1 << 20).await.unwrap();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(all, b"hello world");
    assert_eq!(chunks.iter().map(|c| c.truncated).collect::<Vec<_>>(), [false, true]);
    let chunks = store.job_logs(&j.id, 1, 8, 1 << 20).await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!((chunks[0].pos, chunks[0].data.as_slice()), (8, &b"rld"[..]));
}

async fn workloads_and_desired_state(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let spec = WorkloadSpec {
        exec: ExecSpec { command: "/bin/sleep".into(), args: vec!["100".into()], ..Default::default() },
        resources: Resources::default(),
        constraints: Constraints::default(),
        restart: RestartPolicy::Always,
        max_parallel: 1,
    };
    let w = Workload {
        id: id(WorkloadId::from_random, 1),
        project_id: p.clone(),
        name: "web".into(),
        spec: spec.clone(),
        spec_version: 1,
        replicas: 2,
        created_at: 1_000,
        updated_at: 1_000,
    };
    store.workload_create(&w).await.unwrap();
    let dup = Workload { id: id(WorkloadId::from_random, 2), ..w.clone() };
    assert_eq!(Error::from(store.workload_create(&dup).await.unwrap_err()).code, ErrorCode::AlreadyExists);
    let scaled = store.workload_scale(&p, &w.id, 3, 2_000).await.unwrap();
    assert_eq!(scaled.replicas, 3);
    let mut spec2 = spec.clone();
    spec2.exec.args = vec!["200".into()];
    assert_eq!(store.workload_update_spec(&p, &w.id, &spec2, 2_100).await.unwrap().spec_version, 2);
    assert_eq!(
        store.workload_update_spec(&p, &w.id, &spec2, 2_200).await.unwrap().spec_version,
        2,
        "no change, no bump"
    );
    let replica = Allocation {
        key: AllocId::from_random([7; 10]).to_string(),
        kind: AllocKind::Service,
        job_id: None,
        attempt: 1,
        workload_id: Some(w.id.clone()),
        spec_version: 2,
        ..attempt(&job(&p, 1, 1), &node, 1)
    };
    assert_eq!(store.allocations_place(std::slice::from_ref(&replica), 2_300).await.unwrap().len(), 1);
    assert_eq!(store.workload_allocations(&w.id).await.unwrap().len(), 1);
    let (_, stopping) = store.workload_delete(&p, &w.id, 2_400).await.unwrap();
    assert_eq!(stopping.len(), 1);
    assert_eq!(stopping[0].status, AllocStatus::Stopping);
    assert!(store.workload_get(&p, &w.id).await.unwrap().is_none());
    let f = store.allocation_finished(&replica.key, &node, -9, "stopped", 2_500).await.unwrap().unwrap();
    assert_eq!(f.allocation.status, AllocStatus::Stopped);

    // Desired state: version bumps, stale acks ignored, NACK kept.
    let (n, _) =
        store.node_set_desired(&p, &node, DesiredNodeState::Draining, "maintenance", Some(9_000), 3_000).await.unwrap();
    assert_eq!(
        (n.desired_state, n.desired_state_version, n.drain_deadline),
        (DesiredNodeState::Draining, 2, Some(9_000))
    );
    assert!(store.node_desired_ack(&node, 1, true, "", 3_100).await.unwrap().is_none(), "stale ack");
    let (n, _) = store.node_desired_ack(&node, 2, false, "cannot", 3_200).await.unwrap().unwrap();
    assert_eq!((n.acked_desired_state_version, n.desired_state_nack.as_str()), (0, "cannot"));
    let (n, _) = store.node_desired_ack(&node, 2, true, "", 3_300).await.unwrap().unwrap();
    assert_eq!((n.acked_desired_state_version, n.desired_state_nack.as_str()), (2, ""));
}

/// A refusal by the database that no retry can fix (a duplicate key; on
/// PostgreSQL a NUL in text) is an internal error, not "busy; retry": the
/// codes are read by the backend they came from (PostgreSQL's SQLSTATEs are
/// mostly digits, and were once read as SQLite result codes).
async fn database_errors_are_classified_by_backend(store: Store) {
    let p = project(&store).await;
    let t = join_token(&store, &p, 7, 0, 10_000).await;
    let dup = store.join_token_create(&t, b"hash").await.unwrap_err();
    assert_eq!(dup.failure(), Some(Failure::Other), "{dup}");
    assert!(!dup.is_transient(), "{dup}");
    assert_eq!(Error::from(dup).code, ErrorCode::Internal);
    let nul = JoinToken { id: id(JoinTokenId::from_random, 8), description: "a\0b".into(), ..t };
    match store.join_token_create(&nul, b"hash").await {
        Ok(()) => assert_eq!(store.backend_name(), "sqlite", "PostgreSQL text cannot hold NUL"),
        Err(e) => {
            assert_eq!(store.backend_name(), "postgres", "{e}");
            assert_eq!(e.failure(), Some(Failure::Other), "{e}");
            assert!(!e.is_transient(), "{e}");
        }
    }
}

/// PostgreSQL only: SQLite has one writer, so its transactions never lose to
/// one another.
mod postgres_only {
    use super::*;

    /// A transaction that loses to another (SQLSTATE 40001) is run again, a
    /// bounded number of times. The losses are staged by a trigger that fails
    /// while a sequence (which no rollback resets) is below a mark.
    #[tokio::test]
    async fn serialization_failures_are_retried_a_bounded_number_of_times() {
        let store = postgres_store().await;
        let p = project(&store).await;
        let Backend::Postgres(pool) = &store.backend else { unreachable!() };
        for stmt in [
            "CREATE SEQUENCE losses",
            "CREATE TABLE loss_limit (n BIGINT NOT NULL)",
            "INSERT INTO loss_limit VALUES (2)",
            "CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF nextval('losses') <= (SELECT n FROM loss_limit) THEN
                 RAISE EXCEPTION 'staged conflict' USING ERRCODE = 'serialization_failure';
               END IF;
               RETURN NEW;
             END $$",
            "CREATE TRIGGER lose BEFORE INSERT ON join_tokens FOR EACH ROW EXECUTE FUNCTION lose()",
        ] {
            sqlx::query(stmt).execute(pool).await.unwrap();
        }
        // Two losses, then it commits: one row.
        let t = join_token(&store, &p, 1, 0, 10_000).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM join_tokens WHERE id = $1")
            .bind(t.id.as_str())
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let tries: i64 = sqlx::query_scalar("SELECT last_value FROM losses").fetch_one(pool).await.unwrap();
        assert_eq!(tries, 3, "two losses and the commit");

        // Always losing: the first try and TX_RETRIES more, then the error.
        sqlx::query("UPDATE loss_limit SET n = 1000").execute(pool).await.unwrap();
        let t2 = JoinToken { id: id(JoinTokenId::from_random, 2), ..t };
        let err = store.join_token_create(&t2, b"hash").await.unwrap_err();
        assert_eq!(err.failure(), Some(Failure::Busy), "{err}");
        assert_eq!(Error::from(err).code, ErrorCode::Unavailable);
        let tries: i64 = sqlx::query_scalar("SELECT last_value FROM losses").fetch_one(pool).await.unwrap();
        assert_eq!(tries, 3 + 1 + i64::from(crate::TX_RETRIES));
    }
}
