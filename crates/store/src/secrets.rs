//! Sealed secrets: versions (metadata) and their copies, each sealed to
//! one node's key. The store never holds a plaintext; a copy is opaque
//! bytes to it.

use std::collections::BTreeMap;

use serde::Serialize;
use tether_types::{Error, ErrorCode, NodeId, ProjectId, UnixMillis};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx_committed, on_read};

/// One version of a secret, and which nodes hold a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretVersionRecord {
    pub project_id: ProjectId,
    pub name: String,
    pub version: u32,
    pub created_at: UnixMillis,
    /// Who stored it (the request's principal).
    pub created_by: String,
    pub sealed_to: Vec<NodeId>,
}

/// A secret's live versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSummary {
    pub name: String,
    /// Oldest first.
    pub versions: Vec<u32>,
    pub updated_at: UnixMillis,
}

/// One copy, sealed to `node_id`'s key `public_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCopy {
    pub node_id: NodeId,
    pub public_key: Vec<u8>,
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A version, as the reseal task sees it: who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHolders {
    pub project_id: ProjectId,
    pub name: String,
    pub version: u32,
    pub holders: Vec<NodeId>,
}

fn version_of(r: &impl Get) -> Result<u32> {
    Ok(u32::try_from(r.int("version")?).unwrap_or(u32::MAX))
}

/// Inserts one copy unless that node has one; evaluates to whether it did.
/// (A macro: the transaction's type differs per backend.)
macro_rules! insert_copy {
    ($tx:expr, $project:expr, $name:expr, $version:expr, $c:expr, $now:expr) => {{
        let c: &SecretCopy = $c;
        let n = sqlx::query(
            "INSERT INTO secret_copies (project_id, name, version, node_id, public_key, enc, ciphertext, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind($project.as_str())
        .bind($name)
        .bind(i64::from($version))
        .bind(c.node_id.as_str())
        .bind(&c.public_key)
        .bind(&c.enc)
        .bind(&c.ciphertext)
        .bind($now)
        .execute(&mut *$tx)
        .await?
        .rows_affected();
        n == 1
    }};
}

impl Store {
    /// The version a put of `name` stores next (numbers are never reused,
    /// not even after a delete).
    pub async fn secret_next_version(&self, project: &ProjectId, name: &str) -> Result<u32> {
        on_read!(self, |pool| {
            let last: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM secrets WHERE project_id = $1 AND name = $2")
                    .bind(project.as_str())
                    .bind(name)
                    .fetch_one(pool)
                    .await?;
            Ok(u32::try_from(last + 1).unwrap_or(u32::MAX))
        })
    }

    /// Stores `version` of `name` with its copies; ABORTED unless it is the
    /// next version (another put took it: the copies name the wrong one).
    pub async fn secret_put(
        &self,
        project: &ProjectId,
        name: &str,
        version: u32,
        copies: &[SecretCopy],
        now: UnixMillis,
    ) -> Result<Committed<SecretVersionRecord>> {
        in_tx_committed!(self, |tx| {
            let last: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM secrets WHERE project_id = $1 AND name = $2")
                    .bind(project.as_str())
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
            if i64::from(version) != last + 1 {
                return Err(Error::new(
                    ErrorCode::Aborted,
                    format!("secret {name}: version {} is next, not {version}; seal again for it", last + 1),
                )
                .into());
            }
            let created_by = tx.principal().unwrap_or_default();
            sqlx::query(
                "INSERT INTO secrets (project_id, name, version, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(i64::from(version))
            .bind(now)
            .bind(&created_by)
            .execute(&mut *tx)
            .await?;
            let mut sealed_to = Vec::new();
            for c in copies {
                if insert_copy!(tx, project, name, version, c, now) {
                    sealed_to.push(c.node_id.clone());
                }
            }
            sealed_to.sort();
            let rec = SecretVersionRecord {
                project_id: project.clone(),
                name: name.to_owned(),
                version,
                created_at: now,
                created_by,
                sealed_to,
            };
            append_event!(tx, now, Some(project.as_str()), "secret.put", &format!("{name}@{version}"), to_json(&rec));
            Ok(rec)
        })
    }

    /// One live version (`None`: the latest), with its holders.
    pub async fn secret_get(
        &self,
        project: &ProjectId,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<SecretVersionRecord>> {
        on_read!(self, |pool| {
            let row = sqlx::query(
                "SELECT version, created_at, created_by FROM secrets
                 WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL AND ($3 = 0 OR version = $3)
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(i64::from(version.unwrap_or(0)))
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let v = version_of(&row)?;
            let holders: Vec<String> = sqlx::query_scalar(
                "SELECT node_id FROM secret_copies WHERE project_id = $1 AND name = $2 AND version = $3
                 ORDER BY node_id",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(i64::from(v))
            .fetch_all(pool)
            .await?;
            Ok(Some(SecretVersionRecord {
                project_id: project.clone(),
                name: name.to_owned(),
                version: v,
                created_at: row.int("created_at")?,
                created_by: row.text("created_by")?,
                sealed_to: holders.into_iter().map(NodeId::from_trusted).collect(),
            }))
        })
    }

    /// The project's secrets with their live versions, by name.
    pub async fn secret_list(&self, project: &ProjectId) -> Result<Vec<SecretSummary>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT name, version, created_at FROM secrets WHERE project_id = $1 AND deleted_at IS NULL
                 ORDER BY name, version",
            )
            .bind(project.as_str())
            .fetch_all(pool)
            .await?;
            let mut by_name: BTreeMap<String, SecretSummary> = BTreeMap::new();
            for r in &rows {
                let name = r.text("name")?;
                let s =
                    by_name.entry(name.clone()).or_insert(SecretSummary { name, versions: Vec::new(), updated_at: 0 });
                s.versions.push(version_of(r)?);
                s.updated_at = s.updated_at.max(r.int("created_at")?);
            }
            Ok(by_name.into_values().collect())
        })
    }

    /// Deletes one live version (or all: `None`) and every copy of it;
    /// answers the versions deleted.
    pub async fn secret_delete(
        &self,
        project: &ProjectId,
        name: &str,
        version: Option<u32>,
        now: UnixMillis,
    ) -> Result<Committed<Vec<u32>>> {
        in_tx_committed!(self, |tx| {
            let v = i64::from(version.unwrap_or(0));
            let versions: Vec<i64> = sqlx::query_scalar(
                "UPDATE secrets SET deleted_at = $4
                 WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL AND ($3 = 0 OR version = $3)
                 RETURNING version",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(v)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM secret_copies WHERE project_id = $1 AND name = $2 AND ($3 = 0 OR version = $3)")
                .bind(project.as_str())
                .bind(name)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            let mut versions: Vec<u32> = versions.into_iter().filter_map(|v| u32::try_from(v).ok()).collect();
            versions.sort_unstable();
            if !versions.is_empty() {
                append_event!(
                    tx,
                    now,
                    Some(project.as_str()),
                    "secret.deleted",
                    name,
                    serde_json::json!({ "name": name, "versions": versions }).to_string()
                );
            }
            Ok(versions)
        })
    }

    /// The copy of a live version sealed to `node`.
    pub async fn secret_copy(
        &self,
        project: &ProjectId,
        name: &str,
        version: u32,
        node: &NodeId,
    ) -> Result<Option<SecretCopy>> {
        on_read!(self, |pool| {
            let row = sqlx::query(
                "SELECT c.public_key, c.enc, c.ciphertext FROM secret_copies c
                 JOIN secrets s ON s.project_id = c.project_id AND s.name = c.name AND s.version = c.version
                 WHERE c.project_id = $1 AND c.name = $2 AND c.version = $3 AND c.node_id = $4
                   AND s.deleted_at IS NULL",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(i64::from(version))
            .bind(node.as_str())
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(SecretCopy {
                    node_id: node.clone(),
                    public_key: r.bytes("public_key")?,
                    enc: r.bytes("enc")?,
                    ciphertext: r.bytes("ciphertext")?,
                })
            })
            .transpose()
        })
    }

    /// Adds a copy to a live version, unless one for that node is there
    /// already or the version was deleted meanwhile; answers whether it was
    /// added.
    pub async fn secret_copy_add(
        &self,
        project: &ProjectId,
        name: &str,
        version: u32,
        copy: &SecretCopy,
        now: UnixMillis,
    ) -> Result<Committed<bool>> {
        in_tx_committed!(self, |tx| {
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM secrets
                 WHERE project_id = $1 AND name = $2 AND version = $3 AND deleted_at IS NULL",
            )
            .bind(project.as_str())
            .bind(name)
            .bind(i64::from(version))
            .fetch_optional(&mut *tx)
            .await?;
            if live.is_none() {
                return Ok(false);
            }
            let added = insert_copy!(tx, project, name, version, copy, now);
            if added {
                append_event!(
                    tx,
                    now,
                    Some(project.as_str()),
                    "secret.resealed",
                    &format!("{name}@{version}"),
                    serde_json::json!({ "name": name, "version": version, "node_id": copy.node_id.as_str() })
                        .to_string()
                );
            }
            Ok(added)
        })
    }

    /// Every live version of every project with its holders: what the
    /// reseal task compares with the recipients.
    pub async fn secret_holders_all(&self) -> Result<Vec<SecretHolders>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT s.project_id, s.name, s.version, c.node_id FROM secrets s
                 LEFT JOIN secret_copies c ON c.project_id = s.project_id AND c.name = s.name AND c.version = s.version
                 WHERE s.deleted_at IS NULL ORDER BY s.project_id, s.name, s.version, c.node_id",
            )
            .fetch_all(pool)
            .await?;
            let mut out: Vec<SecretHolders> = Vec::new();
            for r in &rows {
                let (project, name, v) = (r.text("project_id")?, r.text("name")?, version_of(r)?);
                let same =
                    out.last().is_some_and(|h| h.project_id.as_str() == project && h.name == name && h.version == v);
                if !same {
                    out.push(SecretHolders {
                        project_id: ProjectId::from_trusted(project),
                        name,
                        version: v,
                        holders: Vec::new(),
                    });
                }
                if let Some(n) = r.opt_text("node_id")? {
                    out.last_mut().expect("pushed above").holders.push(NodeId::from_trusted(n));
                }
            }
            Ok(out)
        })
    }

    /// Every stream node's sealing key (X25519, 32 bytes); nodes without one
    /// (enrolled before sealed secrets, or HTTP agents) are left out.
    pub async fn node_sealing_keys(&self) -> Result<Vec<(NodeId, Vec<u8>)>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, public_key FROM nodes WHERE transport = 'grpc' AND LENGTH(public_key) = 32 ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok((NodeId::from_trusted(r.text("id")?), r.bytes("public_key")?))).collect()
        })
    }

    /// One node's sealing key, as [`Store::node_sealing_keys`] lists it.
    pub async fn node_sealing_key(&self, node: &NodeId) -> Result<Option<Vec<u8>>> {
        on_read!(self, |pool| {
            let key: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT public_key FROM nodes WHERE id = $1 AND transport = 'grpc' AND LENGTH(public_key) = 32",
            )
            .bind(node.as_str())
            .fetch_optional(pool)
            .await?;
            Ok(key)
        })
    }
}
