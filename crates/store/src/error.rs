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
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Corrupt { what, source: Box::new(e) }
    }

    /// True when retrying the same transaction may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                // PostgreSQL: serialization_failure, deadlock_detected. SQLite: BUSY, LOCKED.
                matches!(db.code().as_deref(), Some("40001" | "40P01" | "5" | "6" | "517"))
            }
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Domain(e) => e,
            e if e.is_transient() => Error::new(ErrorCode::Unavailable, "database is busy; retry"),
            _ => Error::internal("internal storage error"),
        }
    }
}
