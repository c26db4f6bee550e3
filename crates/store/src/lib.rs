//! Tether's durable state behind one facade, on SQLite or PostgreSQL.
//!
//! Owns the schema (embedded migrations), every SQL statement, and the rule
//! that each mutation appends its event to the `events` log in the same
//! transaction. It does not open databases itself: the binary builds the pools
//! and hands them over ([`Store::sqlite`], [`Store::postgres`]).
//!
//! One file per resource; methods are named resource-first (`node_list`,
//! `join_token_revoke`). The same SQL text runs on both backends (`$n`
//! placeholders, `ON CONFLICT`, `RETURNING`), and the [`on_read!`] and
//! [`in_tx!`] macros expand each body once per backend.

mod access_keys;
mod error;
mod events;
mod health;
mod http_agents;
mod nodes;
mod pools;
mod quarantine;
mod root_keys;
mod row;
mod secrets;
mod settings;
pub use settings::OrgSettingsRecord;
mod tenancy;
mod tokens;
mod usage;
mod work;
mod workloads;

#[cfg(test)]
mod tests;

pub use access_keys::AccessKeyRecord;
pub use error::{Failure, StoreError};
pub use events::{
    Actor, EVENT_KINDS, Event, EventKind, EventQuery, EventScope, audited, current_actor, event_kind, set_actor,
};
pub use health::{DbHealth, PROBE_TIMEOUT};
pub use http_agents::{HttpAgent, NONCE_RETENTION_MS};
pub use nodes::{NodeEnroll, NodeFilter, NodePage, NodeScope, OpenedSession, SessionOpen, StatusChange};
pub use quarantine::AutoQuarantine;
pub use root_keys::RootKeyRecord;
pub use row::{BadRow, Decoded};
pub use secrets::{SecretCopy, SecretHolders, SecretSummary, SecretVersionRecord};
pub use tenancy::{Bootstrap, ProjectWork, TenantUpdate, Tenants};
pub use tokens::{TokenRecord, TokenScope};
pub use usage::UsageIngest;
pub use work::{AgentReport, Finished, JobPage, LogChunk, ReportOutcome};

use sqlx::{PgPool, SqlitePool};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// The key of the PostgreSQL advisory lock that orders event appends: held
/// for the rest of each writing transaction, so event sequence numbers become
/// visible in commit order and `events_query` never skips one.
const PG_EVENT_ORDER_LOCK: i64 = 0x7465_7468_6572_0001;

#[derive(Clone)]
enum Backend {
    /// SQLite allows one writer: all writes go through a one-connection pool,
    /// which also avoids BUSY errors on lock upgrades; reads use their own pool.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres(PgPool),
}

/// The store facade. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Bumped after every write to a node's row other than its lease, so a
    /// reader can keep a copy of the node list until it changes.
    node_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    health: std::sync::Arc<health::HealthState>,
    /// The health probe's own PostgreSQL connection (see [`Store::probe`]).
    probe_conn: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::PgConnection>>>,
}

/// Runs `$body` with `$pool` bound to a pool that serves reads. Fails fast
/// with [`StoreError::Unavailable`] while the database is known unreachable.
macro_rules! on_read {
    ($store:expr, |$pool:ident| $body:expr) => {{
        $store.health.admit()?;
        match &$store.backend {
            $crate::Backend::Sqlite { read: $pool, .. } => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    }};
}

/// Runs `$body` inside one write transaction bound to `$tx` and commits it
/// when `$body` returns `Ok`. `$body` is an expression of type `Result<T>`,
/// evaluated in an async block, so `return` and `?` leave the body (rolling
/// back) and never skip the commit of a success.
///
/// The result is `Ok` only once the commit succeeded. After a database error
/// the transaction is rolled back and, where the connection's state is in
/// doubt (see [`StoreError::poisons_connection`]), the connection is closed
/// instead of going back to the pool; the SQLite writer is then reopened on
/// the next write. Every outcome is recorded for [`Store::health`].
///
/// A transaction that lost to another (a serialization failure, a deadlock,
/// a busy database) is run again from the start, up to [`TX_RETRIES`] times
/// with a short jittered pause; `$body` must therefore only touch the
/// database (it does: store bodies compute their result from what they read).
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{ $crate::in_tx_committed!($store, |$tx| $body).map(|c| c.value) }};
}

/// [`in_tx!`], answering what was committed with the highest event sequence
/// number the transaction appended ([`Committed`]), so the caller can tell
/// event tailers exactly how far the log has grown.
macro_rules! in_tx_committed {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let store: &$crate::Store = &$store;
        let mut retries = 0u32;
        let out: $crate::Result<_> = loop {
            let out: $crate::Result<_> = async {
                store.health.admit()?;
                match &store.backend {
                    $crate::Backend::Sqlite { write, .. } => $crate::tx_on!(write, true, |$tx| {}, $body),
                    $crate::Backend::Postgres(pool) => $crate::tx_on!(
                        pool,
                        false,
                        |$tx| {
                            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                                .bind($crate::PG_EVENT_ORDER_LOCK)
                                .execute(&mut *$tx)
                                .await?;
                        },
                        $body
                    ),
                }
            }
            .await;
            match &out {
                Err(e) if retries < $crate::TX_RETRIES && e.failure() == Some($crate::Failure::Busy) => {
                    retries += 1;
                    tokio::time::sleep($crate::retry_pause(retries)).await;
                }
                _ => break out,
            }
        };
        store.health.observe_write(&out);
        out
    }};
}

/// Times a transaction that lost to another is tried again (see [`in_tx!`]).
pub(crate) const TX_RETRIES: u32 = 3;

/// 5, 10, 20 ms, each with up to as much again at random: transactions that
/// collided do not collide again in step.
pub(crate) fn retry_pause(retry: u32) -> std::time::Duration {
    let base = 5u64 << retry.saturating_sub(1).min(4);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % (base * 1000))
        .unwrap_or(0);
    std::time::Duration::from_micros(base * 1000 + jitter)
}

/// One transaction on a connection of `$pool` (see [`in_tx!`]): `$prelude`
/// runs first inside it; a connection whose state an error put in doubt is
/// closed instead of returned to the pool.
macro_rules! tx_on {
    ($pool:expr, $sqlite:expr, |$tx:ident| $prelude:block, $body:expr) => {{
        let mut conn = $pool.acquire().await?;
        let out: $crate::Result<_> = async {
            let mut $tx = $crate::Tx {
                inner: sqlx::Connection::begin(&mut *conn).await?,
                seq: None,
                actor: $crate::events::current_actor(),
            };
            $prelude
            let out: $crate::Result<_> = async { $body }.await;
            match out {
                Ok(value) => {
                    let seq = $tx.seq;
                    $tx.inner.commit().await?;
                    Ok($crate::Committed { value, seq })
                }
                Err(e) => {
                    let _ = $tx.inner.rollback().await;
                    Err(e)
                }
            }
        }
        .await;
        if let Err(e) = &out
            && e.poisons_connection($sqlite)
        {
            tracing::warn!(error = e as &dyn std::error::Error, "closing a database connection after an error");
            conn.close_on_drop();
        }
        out
    }};
}

pub(crate) use {in_tx, in_tx_committed, on_read, tx_on};

/// A write transaction that remembers the highest event sequence number
/// appended in it (by `append_event!`). Derefs to the connection, so bodies
/// run statements on `&mut *tx` as on a plain transaction.
pub(crate) struct Tx<'c, DB: sqlx::Database> {
    pub(crate) inner: sqlx::Transaction<'c, DB>,
    pub(crate) seq: Option<i64>,
    /// Who the events appended are recorded as made by (the request's
    /// actor; bodies writing several callers' work set it per item).
    pub(crate) actor: Option<events::Actor>,
}

impl<DB: sqlx::Database> Tx<'_, DB> {
    /// The actor's principal, for the event being appended.
    pub(crate) fn principal(&self) -> Option<String> {
        self.actor.as_ref().map(|a| a.principal.clone())
    }

    pub(crate) fn principal_role(&self) -> Option<String> {
        self.actor.as_ref().map(|a| a.role.clone())
    }
}

impl<DB: sqlx::Database> std::ops::Deref for Tx<'_, DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.inner
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Tx<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.inner
    }
}

/// What a write committed, with the highest event sequence number its
/// transaction appended (`None` when it appended no event). The control
/// plane performs a write's consequences from this: it tells event tailers
/// how far the log has grown without a read of its own.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a committed write has consequences to perform"]
pub struct Committed<T> {
    pub value: T,
    pub seq: Option<i64>,
}

impl<T> Committed<T> {
    /// A write that found nothing to do and appended no event.
    pub fn nothing(value: T) -> Self {
        Committed { value, seq: None }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Committed<U> {
        Committed { value: f(self.value), seq: self.seq }
    }
}

impl Store {
    /// A store over SQLite. `write` must have exactly one connection.
    pub fn sqlite(write: SqlitePool, read: SqlitePool) -> Self {
        Store {
            backend: Backend::Sqlite { write, read },
            node_version: Default::default(),
            health: Default::default(),
            probe_conn: Default::default(),
        }
    }

    pub fn postgres(pool: PgPool) -> Self {
        Store {
            backend: Backend::Postgres(pool),
            node_version: Default::default(),
            health: Default::default(),
            probe_conn: Default::default(),
        }
    }

    /// Changes whenever this store wrote a node (status, desired state,
    /// capabilities, enrolment, deregistration; not leases). Writes by other
    /// processes on the same database are not counted.
    pub fn node_version(&self) -> u64 {
        self.node_version.load(std::sync::atomic::Ordering::Acquire)
    }

    fn node_changed(&self) {
        self.node_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A table expression `AS alias` over the JSON array of objects bound as
    /// `$1`, with the given columns (name, SQL type): how one statement takes
    /// many rows on both backends.
    pub(crate) fn json_rows(&self, alias: &str, cols: &[(&str, &str)]) -> String {
        match self.backend {
            Backend::Sqlite { .. } => {
                let fields: Vec<String> =
                    cols.iter().map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}")).collect();
                format!("(SELECT {} FROM json_each($1)) AS {alias}", fields.join(", "))
            }
            Backend::Postgres(_) => {
                let fields: Vec<String> = cols.iter().map(|(c, t)| format!("{c} {t}")).collect();
                format!("jsonb_to_recordset($1::jsonb) AS {alias}({})", fields.join(", "))
            }
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { write, .. } => SQLITE_MIGRATIONS.run(write).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { write, read } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}
