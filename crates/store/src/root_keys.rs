//! The macaroon root keys: the newest signs, every one verifies what it
//! signed. Secrets never leave through events.

use crate::events::append_event;
use crate::row::Get;
use crate::{Committed, Result, Store, in_tx, in_tx_committed, on_read};

/// One root key, with its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKeyRecord {
    pub key_id: u32,
    pub secret: Vec<u8>,
    pub created_at: i64,
}

impl std::fmt::Debug for RootKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKeyRecord").field("key_id", &self.key_id).field("created_at", &self.created_at).finish()
    }
}

/// Every key, oldest first.
const ALL_KEYS: &str = "SELECT key_id, secret, created_at FROM root_keys ORDER BY key_id";

fn from_row(r: &impl Get) -> Result<RootKeyRecord> {
    Ok(RootKeyRecord {
        key_id: u32::try_from(r.int("key_id")?).unwrap_or(u32::MAX),
        secret: r.bytes("secret")?,
        created_at: r.int("created_at")?,
    })
}

impl Store {
    /// Every root key, oldest first.
    pub async fn root_keys(&self) -> Result<Vec<RootKeyRecord>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(ALL_KEYS).fetch_all(pool).await?;
            rows.iter().map(from_row).collect()
        })
    }

    /// Stores key 0 unless there is one; returns every key, so that replicas
    /// starting together agree.
    pub async fn root_key_first(&self, secret: &[u8], at: i64) -> Result<Vec<RootKeyRecord>> {
        in_tx!(self, |tx| {
            sqlx::query("INSERT INTO root_keys (key_id, secret, created_at) VALUES (0, $1, $2) ON CONFLICT DO NOTHING")
                .bind(secret)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(ALL_KEYS).fetch_all(&mut *tx).await?;
            rows.iter().map(from_row).collect::<Result<Vec<_>>>()
        })
    }

    /// Adds the next key (the newest signs from now on); returns its id.
    pub async fn root_key_rotate(&self, secret: &[u8], at: i64) -> Result<Committed<u32>> {
        in_tx_committed!(self, |tx| {
            let next: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(key_id), -1) + 1 FROM root_keys").fetch_one(&mut *tx).await?;
            sqlx::query("INSERT INTO root_keys (key_id, secret, created_at) VALUES ($1, $2, $3)")
                .bind(next)
                .bind(secret)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            let payload = serde_json::json!({"key_id": next, "created_at": at}).to_string();
            append_event!(tx, at, None::<&str>, None::<&str>, "root_key.rotated", next.to_string(), payload);
            Ok(u32::try_from(next).unwrap_or(u32::MAX))
        })
    }
}
