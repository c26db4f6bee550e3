//! Opens the configured database and runs migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tether_store::Store;

use crate::config::Config;

pub async fn open(config: &Config) -> anyhow::Result<Store> {
    let store = match config.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                // Long enough for work under load; the health probe has its
                // own connection and a one-second limit, and while it finds
                // the database unreachable operations fail at once.
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            Store::postgres(pool)
        }
        Some(url) if url.starts_with("sqlite:") => sqlite(url.parse::<SqliteConnectOptions>()?).await?,
        Some(other) => anyhow::bail!(
            "unsupported database URL {:?}: use postgres://... or sqlite:PATH",
            other.split('@').next_back().unwrap_or("")
        ),
        None => sqlite(SqliteConnectOptions::new().filename(config.data_dir.join("tether.db"))).await?,
    };
    store.migrate().await.context("running migrations")?;
    Ok(store)
}

async fn sqlite(opts: SqliteConnectOptions) -> anyhow::Result<Store> {
    private_files(opts.get_filename())?;
    let opts = opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk (WAL fsynced) before it is acknowledged,
        // also across a power loss; group commit keeps the fsyncs few.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let write =
        SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await.context("opening SQLite")?;
    let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.context("opening SQLite")?;
    Ok(Store::sqlite(write, read))
}

/// The database holds the root keys: it and its WAL and shared-memory files
/// are mode 0600. SQLite gives the WAL and -shm files the database file's
/// mode, so the file is made (or narrowed) before SQLite opens it.
fn private_files(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if db.as_os_str().is_empty() || db.to_str() == Some(":memory:") {
        return Ok(());
    }
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("creating {}", db.display()))?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("narrowing {} to mode 0600", p.display()))?;
        }
    }
    Ok(())
}
