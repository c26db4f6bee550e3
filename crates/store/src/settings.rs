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

/// An organisation's runtime settings as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrgSettingsRecord {
    pub settings: tether_types::settings::OrgSettings,
    /// 0 before the first update.
    pub version: u64,
    pub updated_at: tether_types::UnixMillis,
    pub updated_by: String,
}

fn settings_from_row(r: &impl crate::row::Get) -> Result<(tether_types::OrgId, OrgSettingsRecord)> {
    Ok((
        tether_types::OrgId::from_trusted(r.text("org_id")?),
        OrgSettingsRecord {
            settings: r.json("settings", "organisation settings")?,
            version: r.int("version")? as u64,
            updated_at: r.int("updated_at")?,
            updated_by: r.text("updated_by")?,
        },
    ))
}

impl Store {
    /// An organisation's settings (the defaults, version 0, when never set).
    pub async fn org_settings(&self, org: &tether_types::OrgId) -> Result<OrgSettingsRecord> {
        on_read!(self, |pool| {
            let row = sqlx::query(
                "SELECT org_id, version, settings, updated_at, updated_by FROM org_settings WHERE org_id = $1",
            )
            .bind(org.as_str())
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(r) => settings_from_row(&r)?.1,
                None => OrgSettingsRecord::default(),
            })
        })
    }

    /// Every organisation's stored settings: what the loops read at each
    /// activation.
    pub async fn org_settings_all(
        &self,
    ) -> Result<std::collections::HashMap<tether_types::OrgId, tether_types::settings::OrgSettings>> {
        on_read!(self, |pool| {
            sqlx::query("SELECT org_id, version, settings, updated_at, updated_by FROM org_settings")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| settings_from_row(r).map(|(o, s)| (o, s.settings)))
                .collect()
        })
    }

    /// Stores the next version of an organisation's settings, with a
    /// `settings.updated` event; ABORTED when `expected` (not 0) is no longer
    /// the stored version.
    pub async fn org_settings_put(
        &self,
        org: &tether_types::OrgId,
        settings: &tether_types::settings::OrgSettings,
        expected: u64,
        now: tether_types::UnixMillis,
    ) -> Result<crate::Committed<OrgSettingsRecord>> {
        crate::in_tx_committed!(self, |tx| {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1 AND deleted_at IS NULL")
                    .bind(org.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Err(tether_types::Error::not_found(format!("organisation {org} not found")).into());
            }
            let current: Option<i64> = sqlx::query_scalar("SELECT version FROM org_settings WHERE org_id = $1")
                .bind(org.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let current = current.unwrap_or(0) as u64;
            if expected != 0 && expected != current {
                return Err(tether_types::Error::new(
                    tether_types::ErrorCode::Aborted,
                    format!("the settings are at version {current}, not {expected}: read them and update again"),
                )
                .into());
            }
            let rec = OrgSettingsRecord {
                settings: settings.clone(),
                version: current + 1,
                updated_at: now,
                updated_by: tx.principal().unwrap_or_default(),
            };
            let json = crate::row::to_json(&rec.settings);
            sqlx::query(
                "INSERT INTO org_settings (org_id, version, settings, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (org_id) DO UPDATE SET version = $2, settings = $3, updated_at = $4, updated_by = $5",
            )
            .bind(org.as_str())
            .bind(rec.version as i64)
            .bind(&json)
            .bind(now)
            .bind(&rec.updated_by)
            .execute(&mut *tx)
            .await?;
            let payload = serde_json::json!({"version": rec.version, "settings": rec.settings}).to_string();
            crate::events::append_event!(
                tx,
                now,
                Some(org.as_str()),
                None::<&str>,
                "settings.updated",
                org.as_str(),
                payload
            );
            Ok(rec)
        })
    }
}
