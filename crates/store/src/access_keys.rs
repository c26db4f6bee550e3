//! Access keys of projects (never their secrets, which are derived from a
//! root key).

use serde::Serialize;
use tether_types::{AccessKeyId, Error, OrgId, ProjectId, Role, UnixMillis};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx_committed, on_read};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessKeyRecord {
    pub id: AccessKeyId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub role: Role,
    pub description: String,
    /// The root key its secret is derived from.
    pub root_key_id: u32,
    pub created_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

const COLS: &str = "id, org_id, project_id, role, description, root_key_id, created_at, revoked_at";

fn from_row(r: &impl Get) -> Result<AccessKeyRecord> {
    Ok(AccessKeyRecord {
        id: AccessKeyId::from_trusted(r.text("id")?),
        org_id: OrgId::from_trusted(r.text("org_id")?),
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        role: Role::parse(&r.text("role")?)?,
        description: r.text("description")?,
        root_key_id: u32::try_from(r.int("root_key_id")?).unwrap_or(u32::MAX),
        created_at: r.int("created_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

impl Store {
    pub async fn access_key_create(&self, k: &AccessKeyRecord) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            sqlx::query(&format!("INSERT INTO access_keys ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
                .bind(k.id.as_str())
                .bind(k.org_id.as_str())
                .bind(k.project_id.as_str())
                .bind(k.role.as_str())
                .bind(&k.description)
                .bind(i64::from(k.root_key_id))
                .bind(k.created_at)
                .bind(k.revoked_at)
                .execute(&mut *tx)
                .await?;
            append_event!(
                tx,
                k.created_at,
                Some(k.project_id.as_str()),
                "access_key.created",
                k.id.as_str(),
                to_json(k)
            );
            Ok(())
        })
    }

    pub async fn access_key_get(&self, id: &AccessKeyId) -> Result<Option<AccessKeyRecord>> {
        on_read!(self, |pool| {
            let row = sqlx::query(&format!("SELECT {COLS} FROM access_keys WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    /// A project's access keys, oldest first.
    pub async fn access_key_list(&self, project: &ProjectId) -> Result<Vec<AccessKeyRecord>> {
        on_read!(self, |pool| {
            let rows =
                sqlx::query(&format!("SELECT {COLS} FROM access_keys WHERE project_id = $1 ORDER BY created_at, id"))
                    .bind(project.as_str())
                    .fetch_all(pool)
                    .await?;
            rows.iter().map(from_row).collect()
        })
    }

    /// Revokes a project's access key (NOT_FOUND for any other); revoking
    /// twice keeps the first time.
    pub async fn access_key_revoke(
        &self,
        project: &ProjectId,
        id: &AccessKeyId,
        now: UnixMillis,
    ) -> Result<Committed<AccessKeyRecord>> {
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE access_keys SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE id = $1 AND project_id = $2 RETURNING {COLS}"
            ))
            .bind(id.as_str())
            .bind(project.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let k = match row {
                Some(r) => from_row(&r)?,
                None => return Err(Error::not_found(format!("access key {id} not found")).into()),
            };
            append_event!(tx, now, Some(project.as_str()), "access_key.revoked", id.as_str(), to_json(&k));
            Ok(k)
        })
    }
}
