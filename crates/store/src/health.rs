//! What the store knows of its database's health: whether it answers, and
//! whether writes succeed.
//!
//! Every write transaction reports its outcome here; [`Store::probe`] (run by
//! the control plane's health task, never on a request path) checks that
//! the database answers and, while writes are failing, tries a small write
//! of its own. While a probe finds the database unreachable, operations fail
//! at once with [`StoreError::Unavailable`] instead of each waiting for a
//! connection timeout.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use crate::error::Failure;
use crate::{Backend, Result, Store, StoreError, in_tx};

/// How long a probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes that must fail in a row before the database counts as
/// unreachable: one slow answer on a loaded machine is not an outage, and
/// calls would fail fast on it.
pub const UNREACHABLE_AFTER: u32 = 3;

/// The database as the store last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbHealth {
    Ok,
    /// It did not answer [`UNREACHABLE_AFTER`] probes in a row (each within
    /// [`PROBE_TIMEOUT`]).
    Unreachable,
    /// Writes fail because it has no room.
    StorageFull,
    /// Writes fail with I/O errors.
    WritesFailing,
}

impl DbHealth {
    /// For /readyz and logs.
    pub fn describe(self) -> &'static str {
        match self {
            DbHealth::Ok => "ready",
            DbHealth::Unreachable => "database unavailable",
            DbHealth::StorageFull => "database storage is full; writes are refused",
            DbHealth::WritesFailing => "database writes are failing",
        }
    }
}

const WRITES_OK: u8 = 0;
const WRITES_FULL: u8 = 1;
const WRITES_IO: u8 = 2;

#[derive(Default)]
pub(crate) struct HealthState {
    unreachable: AtomicBool,
    /// Probes failed in a row.
    failures: std::sync::atomic::AtomicU32,
    writes: AtomicU8,
}

impl HealthState {
    /// Fails fast while the probes find the database unreachable.
    pub(crate) fn admit(&self) -> Result<()> {
        if self.unreachable.load(Ordering::Acquire) { Err(StoreError::Unavailable) } else { Ok(()) }
    }

    /// Records the outcome of a write transaction.
    pub(crate) fn observe_write<T>(&self, out: &Result<T>) {
        let next = match out {
            Ok(_) => WRITES_OK,
            Err(e) => match e.failure() {
                Some(Failure::StorageFull) => WRITES_FULL,
                Some(Failure::Io) => WRITES_IO,
                _ => return,
            },
        };
        let before = self.writes.swap(next, Ordering::AcqRel);
        if before != next {
            match next {
                WRITES_OK => tracing::info!("database writes succeed again"),
                WRITES_FULL => tracing::error!("database storage is full: writes are refused until space is freed"),
                _ => tracing::error!("database writes fail with I/O errors"),
            }
        }
    }

    fn current(&self) -> DbHealth {
        if self.unreachable.load(Ordering::Acquire) {
            return DbHealth::Unreachable;
        }
        match self.writes.load(Ordering::Acquire) {
            WRITES_OK => DbHealth::Ok,
            WRITES_FULL => DbHealth::StorageFull,
            _ => DbHealth::WritesFailing,
        }
    }
}

impl Store {
    /// The database's health as last observed, without a round trip.
    pub fn health(&self) -> DbHealth {
        self.health.current()
    }

    /// Checks that the database answers within [`PROBE_TIMEOUT`] and, while
    /// writes have been failing, whether a write succeeds now. Updates what
    /// [`Store::health`] answers and returns it.
    pub async fn probe(&self) -> DbHealth {
        let reachable = match tokio::time::timeout(PROBE_TIMEOUT, self.ping_direct()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = &e as &dyn std::error::Error, "database probe failed");
                false
            }
            Err(_) => false,
        };
        let failures = if reachable {
            self.health.failures.store(0, Ordering::Release);
            0
        } else {
            self.health.failures.fetch_add(1, Ordering::AcqRel) + 1
        };
        let unreachable = failures >= UNREACHABLE_AFTER;
        let was = self.health.unreachable.swap(unreachable, Ordering::AcqRel);
        if was != unreachable {
            if !unreachable {
                tracing::info!("database reachable again");
            } else {
                tracing::error!("database unavailable: operations fail fast until it answers again");
            }
        }
        if reachable && self.health.writes.load(Ordering::Acquire) != WRITES_OK {
            // Outcome recorded by the transaction itself.
            let _ = tokio::time::timeout(PROBE_TIMEOUT, self.write_probe()).await;
        }
        self.health.current()
    }

    /// A round trip that does not queue behind busy pools: PostgreSQL gets a
    /// connection of its own, kept for the next probe.
    async fn ping_direct(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { read, .. } => {
                sqlx::query("SELECT 1").execute(read).await?;
            }
            Backend::Postgres(pool) => {
                use sqlx::Connection;
                let mut slot = self.probe_conn.lock().await;
                if slot.is_none() {
                    *slot = Some(sqlx::PgConnection::connect_with(&pool.connect_options()).await?);
                }
                let conn = slot.as_mut().expect("just set");
                if let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await {
                    *slot = None;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// The smallest durable write: one settings row.
    async fn write_probe(&self) -> Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        in_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ('store.write_probe', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(now.to_string().into_bytes())
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}
