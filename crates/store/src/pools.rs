//! Pools kept at a desired size, and the requests made to their providers.
//! Every change is an event in the organisation's log (subject: the pool's
//! name); the bearer token of a webhook provider never is.

use tether_types::pool::{Pool, PoolSpec, ScaleAction, ScaleRequest, ScaleState};
use tether_types::{Error, ErrorCode, NodeId, OrgId, UnixMillis};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx_committed, on_read};

const POOL_COLS: &str = "org_id, name, spec, desired, version, created_at, updated_at, scaled_at";
const REQUEST_COLS: &str = "id, org_id, pool, action, count, state, nodes, reason, created_at, updated_at, deadline";

fn pool_from_row(r: &impl Get) -> Result<Pool> {
    Ok(Pool {
        org_id: OrgId::from_trusted(r.text("org_id")?),
        name: r.text("name")?,
        spec: r.json("spec", "pool spec")?,
        desired: u32::try_from(r.int("desired")?).unwrap_or(0),
        version: r.int("version")? as u64,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        scaled_at: r.int("scaled_at")?,
    })
}

fn request_from_row(r: &impl Get) -> Result<ScaleRequest> {
    let corrupt = |what: &str, v: String| {
        crate::StoreError::corrupt("scale request", std::io::Error::other(format!("{what} {v:?}")))
    };
    let action = r.text("action")?;
    let state = r.text("state")?;
    let nodes: Vec<String> = r.json("nodes", "scale request nodes")?;
    Ok(ScaleRequest {
        id: r.text("id")?,
        org_id: OrgId::from_trusted(r.text("org_id")?),
        pool: r.text("pool")?,
        action: ScaleAction::parse(&action).ok_or_else(|| corrupt("action", action.clone()))?,
        count: u32::try_from(r.int("count")?).unwrap_or(0),
        state: ScaleState::parse(&state).ok_or_else(|| corrupt("state", state.clone()))?,
        nodes: nodes.into_iter().map(NodeId::from_trusted).collect(),
        reason: r.text("reason")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        deadline: r.int("deadline")?,
    })
}

fn pool_payload(p: &Pool) -> String {
    serde_json::json!({
        "name": p.name,
        "version": p.version,
        "desired": p.desired,
        "spec": p.spec.redacted(),
    })
    .to_string()
}

fn not_found(org: &OrgId, name: &str) -> crate::StoreError {
    Error::not_found(format!("pool {name} of organisation {org} not found")).into()
}

/// Reads one pool row inside a transaction (a macro: the transaction's type
/// differs per backend).
macro_rules! pool_in_tx {
    ($tx:expr, $org:expr, $name:expr) => {{
        let row = sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE org_id = $1 AND name = $2"))
            .bind($org.as_str())
            .bind($name)
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            Some(r) => pool_from_row(&r)?,
            None => return Err(not_found($org, $name)),
        }
    }};
}

macro_rules! write_pool {
    ($tx:expr, $p:expr) => {{
        let p: &Pool = $p;
        sqlx::query(
            "UPDATE pools SET spec = $3, desired = $4, version = $5, updated_at = $6, scaled_at = $7
             WHERE org_id = $1 AND name = $2",
        )
        .bind(p.org_id.as_str())
        .bind(&p.name)
        .bind(to_json(&p.spec))
        .bind(i64::from(p.desired))
        .bind(p.version as i64)
        .bind(p.updated_at)
        .bind(p.scaled_at)
        .execute(&mut *$tx)
        .await?;
    }};
}

impl Store {
    /// Creates a pool (ALREADY_EXISTS when the organisation has one by that
    /// name), with a `pool.created` event.
    pub async fn pool_create(
        &self,
        org: &OrgId,
        name: &str,
        spec: &PoolSpec,
        desired: u32,
        now: UnixMillis,
    ) -> Result<Committed<Pool>> {
        in_tx_committed!(self, |tx| {
            let live: Option<String> =
                sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1 AND deleted_at IS NULL")
                    .bind(org.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if live.is_none() {
                return Err(Error::not_found(format!("organisation {org} not found")).into());
            }
            let p = Pool {
                org_id: org.clone(),
                name: name.to_owned(),
                spec: spec.clone(),
                desired: spec.clamp(desired),
                version: 1,
                created_at: now,
                updated_at: now,
                scaled_at: now,
            };
            let n = sqlx::query(
                "INSERT INTO pools (org_id, name, spec, desired, version, created_at, updated_at, scaled_at)
                 VALUES ($1, $2, $3, $4, 1, $5, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(org.as_str())
            .bind(name)
            .bind(to_json(&p.spec))
            .bind(i64::from(p.desired))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(Error::new(ErrorCode::AlreadyExists, format!("pool {name} exists")).into());
            }
            append_event!(tx, now, Some(org.as_str()), None::<&str>, "pool.created", name, pool_payload(&p));
            Ok(p)
        })
    }

    /// Replaces a pool's spec (the next version; the desired count kept
    /// within the new limits), with a `pool.updated` event. ABORTED when
    /// `expected` (not 0) is no longer the version. `merge` builds the new
    /// spec from the stored one (a webhook's token is kept when not given).
    pub async fn pool_update(
        &self,
        org: &OrgId,
        name: &str,
        expected: u64,
        merge: impl Fn(&PoolSpec) -> std::result::Result<PoolSpec, Error> + Send + Sync,
        now: UnixMillis,
    ) -> Result<Committed<Pool>> {
        in_tx_committed!(self, |tx| {
            let mut p = pool_in_tx!(tx, org, name);
            if expected != 0 && expected != p.version {
                return Err(Error::new(
                    ErrorCode::Aborted,
                    format!("pool {name} is at version {}, not {expected}: read it and update again", p.version),
                )
                .into());
            }
            p.spec = merge(&p.spec)?;
            let clamped = p.spec.clamp(p.desired);
            if clamped != p.desired {
                p.desired = clamped;
                p.scaled_at = now;
            }
            p.version += 1;
            p.updated_at = now;
            write_pool!(tx, &p);
            append_event!(tx, now, Some(org.as_str()), None::<&str>, "pool.updated", name, pool_payload(&p));
            Ok(p)
        })
    }

    /// Sets a pool's desired count (within its limits, else
    /// FAILED_PRECONDITION), with a `pool.scaled` event carrying `from`,
    /// `to`, `reason` and the fields of `extra` (the autoscaler's figures).
    /// Returns the pool and the count it had.
    pub async fn pool_scale(
        &self,
        org: &OrgId,
        name: &str,
        desired: u32,
        reason: &str,
        extra: serde_json::Value,
        now: UnixMillis,
    ) -> Result<Committed<(Pool, u32)>> {
        in_tx_committed!(self, |tx| {
            let mut p = pool_in_tx!(tx, org, name);
            if p.spec.provider.is_none() {
                return Err(Error::precondition(format!(
                    "pool {name} has no provider: nothing could add or remove its machines"
                ))
                .into());
            }
            if desired < p.spec.min || desired > p.spec.max {
                return Err(Error::precondition(format!(
                    "pool {name} is kept between {} and {} nodes, not {desired}",
                    p.spec.min, p.spec.max
                ))
                .into());
            }
            let from = p.desired;
            p.desired = desired;
            p.scaled_at = now;
            p.updated_at = now;
            write_pool!(tx, &p);
            let mut payload = serde_json::json!({"name": name, "from": from, "to": desired, "reason": reason});
            if let (Some(m), serde_json::Value::Object(e)) = (payload.as_object_mut(), extra.clone()) {
                m.extend(e);
            }
            append_event!(tx, now, Some(org.as_str()), None::<&str>, "pool.scaled", name, payload.to_string());
            Ok((p, from))
        })
    }

    /// Deletes a pool's record and its requests (its nodes stay), with a
    /// `pool.deleted` event.
    pub async fn pool_delete(&self, org: &OrgId, name: &str, now: UnixMillis) -> Result<Committed<Pool>> {
        in_tx_committed!(self, |tx| {
            let p = pool_in_tx!(tx, org, name);
            sqlx::query("DELETE FROM pool_scale_requests WHERE org_id = $1 AND pool = $2")
                .bind(org.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pools WHERE org_id = $1 AND name = $2")
                .bind(org.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?;
            append_event!(tx, now, Some(org.as_str()), None::<&str>, "pool.deleted", name, pool_payload(&p));
            Ok(p)
        })
    }

    pub async fn pool_get(&self, org: &OrgId, name: &str) -> Result<Option<Pool>> {
        on_read!(self, |db| {
            sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE org_id = $1 AND name = $2"))
                .bind(org.as_str())
                .bind(name)
                .fetch_optional(db)
                .await?
                .map(|r| pool_from_row(&r))
                .transpose()
        })
    }

    /// An organisation's pools (every organisation's with None), by name.
    pub async fn pool_list(&self, org: Option<&OrgId>) -> Result<Vec<Pool>> {
        on_read!(self, |db| {
            sqlx::query(&format!("SELECT {POOL_COLS} FROM pools WHERE $1 = '' OR org_id = $1 ORDER BY org_id, name"))
                .bind(org.map_or("", |o| o.as_str()))
                .fetch_all(db)
                .await?
                .iter()
                .map(pool_from_row)
                .collect()
        })
    }

    /// Writes a scale request (new or changed) and, with `kind`, its event
    /// (payload: the request).
    pub async fn scale_request_put(&self, r: &ScaleRequest, kind: Option<&'static str>) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            let nodes: Vec<&str> = r.nodes.iter().map(|n| n.as_str()).collect();
            sqlx::query(&format!(
                "INSERT INTO pool_scale_requests ({REQUEST_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (id) DO UPDATE SET state = $6, nodes = $7, reason = $8, updated_at = $10"
            ))
            .bind(&r.id)
            .bind(r.org_id.as_str())
            .bind(&r.pool)
            .bind(r.action.as_str())
            .bind(i64::from(r.count))
            .bind(r.state.as_str())
            .bind(to_json(&nodes))
            .bind(&r.reason)
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.deadline)
            .execute(&mut *tx)
            .await?;
            if let Some(kind) = kind {
                let payload = serde_json::json!({
                    "id": r.id,
                    "pool": r.pool,
                    "action": r.action,
                    "count": r.count,
                    "state": r.state,
                    "nodes": nodes,
                    "reason": r.reason,
                    "deadline": r.deadline,
                })
                .to_string();
                append_event!(tx, r.updated_at, Some(r.org_id.as_str()), None::<&str>, kind, &r.pool, payload);
            }
            Ok(())
        })
    }

    /// Every open request (draining or requested), oldest first.
    pub async fn scale_requests_open(&self) -> Result<Vec<ScaleRequest>> {
        on_read!(self, |db| {
            sqlx::query(&format!(
                "SELECT {REQUEST_COLS} FROM pool_scale_requests WHERE state IN ('draining', 'requested')
                 ORDER BY created_at, id"
            ))
            .fetch_all(db)
            .await?
            .iter()
            .map(request_from_row)
            .collect()
        })
    }

    /// A pool's requests, newest first.
    pub async fn scale_requests(&self, org: &OrgId, pool: &str, limit: u32) -> Result<Vec<ScaleRequest>> {
        on_read!(self, |db| {
            sqlx::query(&format!(
                "SELECT {REQUEST_COLS} FROM pool_scale_requests WHERE org_id = $1 AND pool = $2
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ))
            .bind(org.as_str())
            .bind(pool)
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?
            .iter()
            .map(request_from_row)
            .collect()
        })
    }

    /// An event about a pool that changes no row (the autoscaler's
    /// decisions not taken).
    pub async fn pool_event(
        &self,
        org: &OrgId,
        pool: &str,
        kind: &'static str,
        payload: serde_json::Value,
        now: UnixMillis,
    ) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            append_event!(tx, now, Some(org.as_str()), None::<&str>, kind, pool, payload.to_string());
            Ok(())
        })
    }
}
