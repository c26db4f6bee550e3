//! HTTP agents: which root key a node's heartbeat secret derives from, the
//! nonces of its accepted heartbeats and its latest report. The row is made
//! with the node (`node_enroll`) and goes with it.

use tether_types::{NodeId, OrgId, UnixMillis};

use crate::row::Get;
use crate::{Result, Store, in_tx, on_read};

/// What a heartbeat is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAgent {
    pub node_id: NodeId,
    pub org_id: OrgId,
    pub root_key_id: u32,
}

/// How long an accepted nonce is remembered: twice the timestamp window, so
/// a request is refused as a replay for as long as its timestamp would pass.
pub const NONCE_RETENTION_MS: i64 = 10 * 60 * 1000;

impl Store {
    /// The HTTP agent of `node`, if the node exists and is one.
    pub async fn http_agent_get(&self, node: &NodeId) -> Result<Option<HttpAgent>> {
        on_read!(self, |pool| {
            let row = sqlx::query(
                "SELECT h.node_id, n.org_id, h.root_key_id FROM http_agents h JOIN nodes n ON n.id = h.node_id
                 WHERE h.node_id = $1",
            )
            .bind(node.as_str())
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(HttpAgent {
                    node_id: NodeId::from_trusted(r.text("node_id")?),
                    org_id: OrgId::from_trusted(r.text("org_id")?),
                    root_key_id: u32::try_from(r.int("root_key_id")?).unwrap_or(u32::MAX),
                })
            })
            .transpose()
        })
    }

    /// Records an accepted heartbeat: spends its nonce and keeps its report
    /// (JSON). False, with nothing written, when the nonce was spent
    /// already (a replay). Nonces past their retention are pruned in the
    /// same transaction.
    pub async fn http_agent_beat(&self, node: &NodeId, nonce: &str, report: &str, now: UnixMillis) -> Result<bool> {
        in_tx!(self, |tx| {
            sqlx::query("DELETE FROM agent_nonces WHERE node_id = $1 AND seen_at < $2")
                .bind(node.as_str())
                .bind(now - NONCE_RETENTION_MS)
                .execute(&mut *tx)
                .await?;
            let fresh = sqlx::query(
                "INSERT INTO agent_nonces (node_id, nonce, seen_at) VALUES ($1, $2, $3)
                 ON CONFLICT (node_id, nonce) DO NOTHING",
            )
            .bind(node.as_str())
            .bind(nonce)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(false);
            }
            let updated = sqlx::query("UPDATE http_agents SET report = $2, reported_at = $3 WHERE node_id = $1")
                .bind(node.as_str())
                .bind(report)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated != 1 {
                return Err(tether_types::Error::not_found(format!("node {node} is not an HTTP agent")).into());
            }
            Ok(true)
        })
    }

    /// The latest report of an HTTP agent (JSON) and when it arrived; None
    /// before its first heartbeat or for another kind of node.
    pub async fn http_agent_report(&self, node: &NodeId) -> Result<Option<(String, UnixMillis)>> {
        on_read!(self, |pool| {
            let row = sqlx::query("SELECT report, reported_at FROM http_agents WHERE node_id = $1 AND report <> ''")
                .bind(node.as_str())
                .fetch_optional(pool)
                .await?;
            row.map(|r| Ok((r.text("report")?, r.int("reported_at")?))).transpose()
        })
    }
}
