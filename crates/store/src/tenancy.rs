use serde::Serialize;
use tether_types::{Error, JoinToken, JoinTokenId, Labels, OrgId, ProjectId, Role, TokenId, UnixMillis};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx, in_tx_committed, on_read};

/// The default organisation and project, found or made at first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub org_id: OrgId,
    pub project_id: ProjectId,
    /// True when this call created them (first start).
    pub created: bool,
}

/// The record of an issued macaroon (never the macaroon itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub project_id: ProjectId,
    pub role: Role,
    pub description: String,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
}

fn token_from_row(r: &impl Get) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(r.text("id")?),
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        role: Role::parse(&r.text("role")?)?,
        description: r.text("description")?,
        created_at: r.int("created_at")?,
        expires_at: r.opt_int("expires_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

const TOKEN_COLS: &str = "id, project_id, role, description, created_at, expires_at, revoked_at";

const DEFAULT: &str = "default";

fn join_token_from_row(r: &impl Get) -> Result<JoinToken> {
    let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(JoinToken {
        id: JoinTokenId::from_trusted(r.text("id")?),
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        description: r.text("description")?,
        labels: r.json::<Labels>("labels", "join token labels")?,
        max_uses: n(r.int("max_uses")?),
        uses: n(r.int("uses")?),
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

const JOIN_COLS: &str = "id, project_id, description, labels, max_uses, uses, created_at, expires_at, revoked_at";

impl Store {
    /// Finds the default organisation and project, or creates both with the
    /// given ids. Safe to race: one caller creates, the others find.
    pub async fn bootstrap(&self, org_id: OrgId, project_id: ProjectId, now: UnixMillis) -> Result<Bootstrap> {
        in_tx!(self, |tx| {
            let inserted = sqlx::query(
                "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(org_id.as_str())
            .bind(DEFAULT)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(project_id.as_str())
                    .bind(org_id.as_str())
                    .bind(DEFAULT)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let payload = serde_json::json!({"org_id": org_id, "name": DEFAULT}).to_string();
                append_event!(tx, now, None::<&str>, "organization.created", org_id.as_str(), payload);
                let payload =
                    serde_json::json!({"project_id": project_id, "org_id": org_id, "name": DEFAULT}).to_string();
                append_event!(tx, now, Some(project_id.as_str()), "project.created", project_id.as_str(), payload);
                return Ok(Bootstrap { org_id: org_id.clone(), project_id: project_id.clone(), created: true });
            }
            let (org, project): (String, String) = sqlx::query_as(
                "SELECT o.id, p.id FROM organizations o JOIN projects p ON p.org_id = o.id
                 WHERE o.name = $1 AND p.name = $1",
            )
            .bind(DEFAULT)
            .fetch_one(&mut *tx)
            .await?;
            Ok(Bootstrap {
                org_id: OrgId::from_trusted(org),
                project_id: ProjectId::from_trusted(project),
                created: false,
            })
        })
    }

    /// The organisation a project belongs to.
    pub async fn project_org(&self, project: &ProjectId) -> Result<Option<OrgId>> {
        on_read!(self, |pool| {
            let v: Option<String> = sqlx::query_scalar("SELECT org_id FROM projects WHERE id = $1")
                .bind(project.as_str())
                .fetch_optional(pool)
                .await?;
            Ok(v.map(OrgId::from_trusted))
        })
    }

    pub async fn token_record(&self, t: &TokenRecord) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            sqlx::query(
                "INSERT INTO tokens (id, project_id, role, description, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(t.id.as_str())
            .bind(t.project_id.as_str())
            .bind(t.role.as_str())
            .bind(&t.description)
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(&mut *tx)
            .await?;
            append_event!(tx, t.created_at, Some(t.project_id.as_str()), "token.created", t.id.as_str(), to_json(t));
            Ok(())
        })
    }

    pub async fn token_list(&self, project: &ProjectId) -> Result<Vec<TokenRecord>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE project_id = $1 ORDER BY created_at, id"))
                .bind(project.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(token_from_row)
                .collect()
        })
    }

    /// Revokes a token. Refused (FAILED_PRECONDITION, nothing changed) when
    /// it is a live admin token and no other live admin token of the
    /// project would remain: a project is never locked out of its own
    /// administration (`tether-control-plane admin-token` mints one offline).
    pub async fn token_revoke(
        &self,
        project: &ProjectId,
        id: &TokenId,
        now: UnixMillis,
    ) -> Result<Committed<TokenRecord>> {
        in_tx_committed!(self, |tx| {
            // Live admin tokens of the project: is the target one, and how
            // many others are there.
            let (target, others): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN id = $1 THEN 1 ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN id <> $1 THEN 1 ELSE 0 END), 0)
                 FROM tokens WHERE project_id = $3 AND revoked_at IS NULL AND role = 'admin'
                   AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(id.as_str())
            .bind(now)
            .bind(project.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if target > 0 && others == 0 {
                return Err(Error::precondition(format!(
                    "token {id} is the project's last admin token: revoking it would lock the project out; \
                     mint another admin token first (or, on the control plane's host, \
                     `tether-control-plane admin-token`)"
                ))
                .into());
            }
            let row = sqlx::query(&format!(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND project_id = $2
                 RETURNING {TOKEN_COLS}"
            ))
            .bind(id.as_str())
            .bind(project.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("token {id} not found")))?;
            let t = token_from_row(&row)?;
            append_event!(tx, now, Some(project.as_str()), "token.revoked", id.as_str(), to_json(&t));
            Ok(t)
        })
    }

    /// Ids of every revoked token, for the authenticator's deny list.
    pub async fn tokens_revoked(&self) -> Result<Vec<TokenId>> {
        on_read!(self, |pool| {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM tokens WHERE revoked_at IS NOT NULL").fetch_all(pool).await?;
            Ok(ids.into_iter().map(TokenId::from_trusted).collect())
        })
    }

    pub async fn join_token_create(&self, t: &JoinToken, secret_hash: &[u8]) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            sqlx::query(
                "INSERT INTO join_tokens (id, project_id, secret_hash, description, labels, max_uses, uses,
                                          created_at, expires_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(t.id.as_str())
            .bind(t.project_id.as_str())
            .bind(secret_hash)
            .bind(&t.description)
            .bind(to_json(&t.labels))
            .bind(i64::from(t.max_uses))
            .bind(i64::from(t.uses))
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.revoked_at)
            .execute(&mut *tx)
            .await?;
            append_event!(
                tx,
                t.created_at,
                Some(t.project_id.as_str()),
                "join_token.created",
                t.id.as_str(),
                to_json(t)
            );
            Ok(())
        })
    }

    /// A join token and its secret hash, for enrolment.
    pub async fn join_token_lookup(&self, id: &JoinTokenId) -> Result<Option<(JoinToken, Vec<u8>)>> {
        on_read!(self, |pool| {
            let row = sqlx::query(&format!("SELECT {JOIN_COLS}, secret_hash FROM join_tokens WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.map(|r| Ok((join_token_from_row(&r)?, r.bytes("secret_hash")?))).transpose()
        })
    }

    pub async fn join_token_list(
        &self,
        project: &ProjectId,
        include_inactive: bool,
        now: UnixMillis,
    ) -> Result<Vec<JoinToken>> {
        let all: Vec<JoinToken> = on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {JOIN_COLS} FROM join_tokens WHERE project_id = $1 ORDER BY created_at, id"))
                .bind(project.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(join_token_from_row)
                .collect::<Result<_>>()
        })?;
        Ok(all.into_iter().filter(|t| include_inactive || t.unusable_reason(now).is_none()).collect())
    }

    pub async fn join_token_revoke(
        &self,
        project: &ProjectId,
        id: &JoinTokenId,
        now: UnixMillis,
    ) -> Result<Committed<JoinToken>> {
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE id = $1 AND project_id = $2 RETURNING {JOIN_COLS}"
            ))
            .bind(id.as_str())
            .bind(project.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("join token {id} not found")))?;
            let t = join_token_from_row(&row)?;
            append_event!(tx, now, Some(project.as_str()), "join_token.revoked", id.as_str(), to_json(&t));
            Ok(t)
        })
    }
}
