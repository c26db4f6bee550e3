use tether_types::{Error, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A domain rule refused the change; the message is safe for clients.
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} is corrupt")]
    Corrupt {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The health probe found the database unreachable: the operation was
    /// not tried (fail fast instead of waiting for a connection timeout).
    #[error("database unavailable")]
    Unavailable,
}

/// What kind of database failure an error is, for clients and for the
/// store's own bookkeeping (see [`crate::DbHealth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Lock contention or a serialization conflict: the same transaction may
    /// succeed if retried at once.
    Busy,
    /// The database could not be reached or answered with a connection-level
    /// failure.
    Unavailable,
    /// The database has no room to write (disk full).
    StorageFull,
    /// The database failed to read or write its files.
    Io,
    /// Anything else: a bug, a constraint, corrupt data.
    Other,
}

/// SQLite result codes (primary, the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
const ENOSPC: i32 = 28;

fn classify_sqlx(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // By the backend, not by the code's look: most SQLSTATEs are
            // digits too (22021, 23505, 40001) and would read as SQLite
            // result codes.
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                let n = code.parse::<i64>().unwrap_or_default();
                // SQLite: numeric (extended) result codes.
                return match n & 0xff {
                    SQLITE_BUSY | SQLITE_LOCKED => Failure::Busy,
                    SQLITE_FULL => Failure::StorageFull,
                    SQLITE_IOERR | SQLITE_READONLY | SQLITE_CANTOPEN => Failure::Io,
                    _ => Failure::Other,
                };
            }
            // PostgreSQL SQLSTATE.
            match code.as_ref() {
                "40001" | "40P01" | "55P03" => Failure::Busy,
                "53100" => Failure::StorageFull,
                "53300" | "57P01" | "57P02" | "57P03" => Failure::Unavailable,
                c if c.starts_with("08") => Failure::Unavailable,
                c if c.starts_with("58") => Failure::Io,
                _ => Failure::Other,
            }
        }
        sqlx::Error::Io(io) if io.raw_os_error() == Some(ENOSPC) => Failure::StorageFull,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        _ => Failure::Other,
    }
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Corrupt { what, source: Box::new(e) }
    }

    /// What kind of failure this is; `None` for a domain refusal.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            StoreError::Domain(_) => None,
            StoreError::Database(e) => Some(classify_sqlx(e)),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => Some(classify_sqlx(e)),
            StoreError::Migrate(_) | StoreError::Corrupt { .. } => Some(Failure::Other),
            StoreError::Unavailable => Some(Failure::Unavailable),
        }
    }

    /// True when the same operation may succeed later: contention, a
    /// database that is coming back, storage that is freed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A failure already turned into a client error (a group commit
            // answers each caller with one) keeps its meaning.
            StoreError::Domain(e) => matches!(e.code, ErrorCode::Unavailable | ErrorCode::InsufficientStorage),
            _ => matches!(
                self.failure(),
                Some(Failure::Busy | Failure::Unavailable | Failure::Io | Failure::StorageFull)
            ),
        }
    }

    /// Whether the connection this error came from may be left in a state
    /// that no longer matches what sqlx believes (a transaction that SQLite
    /// rolled back on its own, or a PostgreSQL connection that broke), so
    /// that it must be closed rather than reused.
    pub(crate) fn poisons_connection(&self, sqlite: bool) -> bool {
        match self {
            // SQLite rolls a transaction back by itself after FULL, IOERR,
            // BUSY and NOMEM, and sqlx's transaction depth then disagrees
            // with the connection: the next "transaction" becomes a savepoint
            // inside one that never commits. Any database error on the one
            // writer connection therefore replaces it.
            StoreError::Database(_) if sqlite => true,
            StoreError::Database(sqlx::Error::Database(_)) => {
                matches!(self.failure(), Some(Failure::Unavailable | Failure::Io))
            }
            StoreError::Database(_) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match (e.failure(), e) {
            (None, StoreError::Domain(e)) => e,
            (Some(Failure::Busy), _) => Error::new(ErrorCode::Unavailable, "database is busy; retry"),
            (Some(Failure::Unavailable), StoreError::Database(sqlx::Error::PoolTimedOut)) => {
                Error::new(ErrorCode::Unavailable, "database unavailable: no connection in time; retry")
            }
            (Some(Failure::Unavailable), _) => Error::new(ErrorCode::Unavailable, "database unavailable; retry"),
            (Some(Failure::StorageFull), _) => Error::new(
                ErrorCode::InsufficientStorage,
                "database storage is full: nothing was written; free space and retry",
            ),
            (Some(Failure::Io), _) => {
                Error::new(ErrorCode::Unavailable, "database I/O error: nothing was written; retry")
            }
            _ => Error::internal("internal storage error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_failures_are_unavailable_and_transient() {
        let refused =
            StoreError::Database(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert_eq!(refused.failure(), Some(Failure::Unavailable));
        assert!(refused.is_transient());
        assert!(refused.poisons_connection(false));
        let e = Error::from(refused);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.starts_with("database unavailable"), "{}", e.message);

        let full = StoreError::Database(sqlx::Error::Io(std::io::Error::from_raw_os_error(ENOSPC)));
        assert_eq!(full.failure(), Some(Failure::StorageFull));
        assert_eq!(Error::from(full).code, ErrorCode::InsufficientStorage);

        let timed_out = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert!(timed_out.is_transient());
        assert!(Error::from(timed_out).message.contains("no connection in time"));

        assert!(StoreError::Domain(Error::from(StoreError::Unavailable)).is_transient(), "through a group commit");
        let domain = StoreError::Domain(Error::not_found("x"));
        assert_eq!(domain.failure(), None);
        assert!(!domain.is_transient());
        assert!(!domain.poisons_connection(true));
        assert_eq!(Error::from(domain).code, ErrorCode::NotFound);

        assert_eq!(Error::from(StoreError::Unavailable).code, ErrorCode::Unavailable);
        let other = StoreError::Database(sqlx::Error::RowNotFound);
        assert!(!other.is_transient());
        assert!(other.poisons_connection(true), "any database error replaces the SQLite writer");
        assert!(other.poisons_connection(false), "a non-statement error on PostgreSQL too");
    }
}
