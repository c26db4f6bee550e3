use crate::{Result, Store, in_tx, on_read};

impl Store {
    pub async fn setting_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        on_read!(self, |pool| {
            Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(pool).await?)
        })
    }

    /// Stores `value` unless the key exists; returns the value that won, so
    /// that replicas starting together agree on one.
    pub async fn setting_put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        in_tx!(self, |tx| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            let v: Vec<u8> =
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_one(&mut *tx).await?;
            Ok(v)
        })
    }
}
