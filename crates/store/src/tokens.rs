//! Records of operator tokens (never the tokens) and join tokens (never
//! their secrets).

use serde::Serialize;
use tether_types::{Error, JoinToken, JoinTokenId, Labels, OrgId, OrgRole, ProjectId, Role, TokenId, UnixMillis};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx_committed, on_read};

/// The record of an issued macaroon (never the macaroon itself). A project
/// token has a project; an organisation token an `org_role` and no project;
/// the platform administrator's neither an organisation nor a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub org_id: Option<OrgId>,
    pub project_id: Option<ProjectId>,
    pub role: Role,
    pub org_role: Option<OrgRole>,
    pub description: String,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
}

/// Whose tokens a list or revocation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope<'a> {
    Project(&'a ProjectId),
    /// The organisation's own tokens (not its projects').
    Org(&'a OrgId),
    /// The platform administrators' tokens.
    Platform,
}

impl TokenScope<'_> {
    /// The scope a token record is in.
    pub fn of(t: &TokenRecord) -> TokenScope<'_> {
        match (&t.project_id, &t.org_id) {
            (Some(p), _) => TokenScope::Project(p),
            (None, Some(o)) => TokenScope::Org(o),
            (None, None) => TokenScope::Platform,
        }
    }
}

fn token_from_row(r: &impl Get) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(r.text("id")?),
        org_id: r.opt_text("org_id")?.map(OrgId::from_trusted),
        project_id: r.opt_text("project_id")?.map(ProjectId::from_trusted),
        role: Role::parse(&r.text("role")?)?,
        org_role: r.opt_text("org_role")?.map(|s| OrgRole::parse(&s)).transpose()?,
        description: r.text("description")?,
        created_at: r.int("created_at")?,
        expires_at: r.opt_int("expires_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

const TOKEN_COLS: &str = "id, org_id, project_id, role, org_role, description, created_at, expires_at, revoked_at";

fn join_token_from_row(r: &impl Get) -> Result<JoinToken> {
    let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(JoinToken {
        id: JoinTokenId::from_trusted(r.text("id")?),
        org_id: OrgId::from_trusted(r.text("org_id")?),
        project_id: r.opt_text("project_id")?.map(ProjectId::from_trusted),
        pool: r.text("pool")?,
        description: r.text("description")?,
        labels: r.json::<Labels>("labels", "join token labels")?,
        max_uses: n(r.int("max_uses")?),
        uses: n(r.int("uses")?),
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

const JOIN_COLS: &str =
    "id, org_id, project_id, pool, description, labels, max_uses, uses, created_at, expires_at, revoked_at";

/// The WHERE clause (on `$n`) and bind value selecting a scope's rows.
fn scope_clause(scope: TokenScope<'_>, n: u32) -> (String, String) {
    match scope {
        TokenScope::Project(p) => (format!("project_id = ${n}"), p.to_string()),
        TokenScope::Org(o) => (format!("org_id = ${n} AND project_id IS NULL"), o.to_string()),
        // Bound but unused by the condition, so that every scope takes one bind.
        TokenScope::Platform => (format!("org_id IS NULL AND project_id IS NULL AND ${n} = ''"), String::new()),
    }
}

impl Store {
    pub async fn token_record(&self, t: &TokenRecord) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            sqlx::query(&format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
                .bind(t.id.as_str())
                .bind(t.org_id.as_ref().map(OrgId::as_str))
                .bind(t.project_id.as_ref().map(ProjectId::as_str))
                .bind(t.role.as_str())
                .bind(t.org_role.map(OrgRole::as_str))
                .bind(&t.description)
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.revoked_at)
                .execute(&mut *tx)
                .await?;
            append_event!(
                tx,
                t.created_at,
                t.org_id.as_ref().map(OrgId::as_str),
                t.project_id.as_ref().map(ProjectId::as_str),
                "token.created",
                t.id.as_str(),
                to_json(t)
            );
            Ok(())
        })
    }

    pub async fn token_list(&self, scope: TokenScope<'_>) -> Result<Vec<TokenRecord>> {
        let (clause, value) = scope_clause(scope, 1);
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE {clause} ORDER BY created_at, id"))
                .bind(&value)
                .fetch_all(pool)
                .await?
                .iter()
                .map(token_from_row)
                .collect()
        })
    }

    pub async fn token_get(&self, id: &TokenId) -> Result<Option<TokenRecord>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(token_from_row)
                .transpose()
        })
    }

    /// Revokes a token of `scope`. Refused (FAILED_PRECONDITION, nothing
    /// changed) when it is a live admin token of a project, or a platform
    /// token, and no other live one of its kind would remain: nobody is
    /// locked out of administration (`tether-control-plane admin-token`
    /// mints a platform token offline).
    pub async fn token_revoke(
        &self,
        scope: TokenScope<'_>,
        id: &TokenId,
        now: UnixMillis,
    ) -> Result<Committed<TokenRecord>> {
        let (clause, value) = scope_clause(scope, 2);
        in_tx_committed!(self, |tx| {
            if matches!(scope, TokenScope::Project(_) | TokenScope::Platform) {
                // Live admin tokens of the scope: is the target one, and how
                // many others are there.
                let (target, others): (i64, i64) = sqlx::query_as(&format!(
                    "SELECT COALESCE(SUM(CASE WHEN id = $1 THEN 1 ELSE 0 END), 0),
                            COALESCE(SUM(CASE WHEN id <> $1 THEN 1 ELSE 0 END), 0)
                     FROM tokens WHERE {clause} AND revoked_at IS NULL AND role = 'admin'
                       AND (expires_at IS NULL OR expires_at > $3)"
                ))
                .bind(id.as_str())
                .bind(&value)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                if target > 0 && others == 0 {
                    let whose = if scope == TokenScope::Platform { "platform's" } else { "project's" };
                    return Err(Error::precondition(format!(
                        "token {id} is the {whose} last admin token: revoking it would lock it out; \
                         mint another admin token first (or, on the control plane's host, \
                         `tether-control-plane admin-token`)"
                    ))
                    .into());
                }
            }
            let row = sqlx::query(&format!(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND {clause}
                 RETURNING {TOKEN_COLS}"
            ))
            .bind(id.as_str())
            .bind(&value)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("token {id} not found")))?;
            let t = token_from_row(&row)?;
            append_event!(
                tx,
                now,
                t.org_id.as_ref().map(OrgId::as_str),
                t.project_id.as_ref().map(ProjectId::as_str),
                "token.revoked",
                id.as_str(),
                to_json(&t)
            );
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
            sqlx::query(&format!(
                "INSERT INTO join_tokens ({JOIN_COLS}, secret_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .bind(t.id.as_str())
            .bind(t.org_id.as_str())
            .bind(t.project_id.as_ref().map(ProjectId::as_str))
            .bind(&t.pool)
            .bind(&t.description)
            .bind(to_json(&t.labels))
            .bind(i64::from(t.max_uses))
            .bind(i64::from(t.uses))
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.revoked_at)
            .bind(secret_hash)
            .execute(&mut *tx)
            .await?;
            append_event!(
                tx,
                t.created_at,
                Some(t.org_id.as_str()),
                t.project_id.as_ref().map(ProjectId::as_str),
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
        scope: TokenScope<'_>,
        include_inactive: bool,
        now: UnixMillis,
    ) -> Result<Vec<JoinToken>> {
        let (clause, value) = scope_clause(scope, 1);
        let all: Vec<JoinToken> = on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {JOIN_COLS} FROM join_tokens WHERE {clause} ORDER BY created_at, id"))
                .bind(&value)
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
        scope: TokenScope<'_>,
        id: &JoinTokenId,
        now: UnixMillis,
    ) -> Result<Committed<JoinToken>> {
        let (clause, value) = scope_clause(scope, 2);
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE id = $1 AND {clause} RETURNING {JOIN_COLS}"
            ))
            .bind(id.as_str())
            .bind(&value)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("join token {id} not found")))?;
            let t = join_token_from_row(&row)?;
            append_event!(
                tx,
                now,
                Some(t.org_id.as_str()),
                t.project_id.as_ref().map(ProjectId::as_str),
                "join_token.revoked",
                id.as_str(),
                to_json(&t)
            );
            Ok(t)
        })
    }
}
