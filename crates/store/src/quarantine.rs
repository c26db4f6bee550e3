//! Automatic quarantine's holds: a node it quarantined, with the desired
//! state version it set. A release applies only while the node's desired
//! state is still that version, so an operator's later change always wins.
//! Each change is the node's `node.desired_state_changed` event (for
//! watchers and its agent) and a `quarantine.*` event with the reasons.

use tether_types::{DesiredNodeState, Node, NodeId, OrgId, ProjectId, UnixMillis};

use crate::events::append_event;
use crate::nodes::{NODE_COLS, append_node_event, node_from_row};
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, in_tx_committed, on_read};

/// Appends a `quarantine.*` event about a node (its organisation's, and
/// its project's if dedicated) with the decision as the payload.
macro_rules! append_decision {
    ($tx:expr, $at:expr, $node:expr, $kind:expr, $decision:expr) => {{
        let n: &Node = $node;
        append_event!(
            $tx,
            $at,
            Some(n.org_id.as_str()),
            n.project_id.as_ref().map(ProjectId::as_str),
            $kind,
            n.id.as_str(),
            $decision.to_string()
        )
    }};
}

/// A node automatic quarantine holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoQuarantine {
    pub node_id: NodeId,
    pub org_id: OrgId,
    /// The desired state version the quarantine set.
    pub desired_version: u64,
    pub quarantined_at: UnixMillis,
}

fn hold_from_row(r: &impl Get) -> Result<AutoQuarantine> {
    Ok(AutoQuarantine {
        node_id: NodeId::from_trusted(r.text("node_id")?),
        org_id: OrgId::from_trusted(r.text("org_id")?),
        desired_version: r.int("desired_version")? as u64,
        quarantined_at: r.int("quarantined_at")?,
    })
}

impl Store {
    /// Every hold.
    pub async fn auto_quarantines(&self) -> Result<Vec<AutoQuarantine>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT node_id, org_id, desired_version, quarantined_at FROM node_auto_quarantines ORDER BY node_id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(hold_from_row).collect()
        })
    }

    /// Quarantines an active node whose desired state is still version
    /// `expected`, and records the hold; None (nothing written) when the
    /// node changed meanwhile. `decision` is the `quarantine.applied`
    /// payload.
    pub async fn auto_quarantine(
        &self,
        id: &NodeId,
        expected: u64,
        reason: &str,
        decision: &serde_json::Value,
        now: UnixMillis,
    ) -> Result<Committed<Option<Node>>> {
        let out = in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE nodes SET desired_state = $3, desired_state_version = desired_state_version + 1,
                        desired_state_reason = $4, drain_deadline = NULL, desired_state_nack = ''
                 WHERE id = $1 AND desired_state_version = $2 AND desired_state = $5 RETURNING {NODE_COLS}"
            ))
            .bind(id.as_str())
            .bind(expected as i64)
            .bind(DesiredNodeState::Quarantined.as_str())
            .bind(reason)
            .bind(DesiredNodeState::Active.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let node = node_from_row(&row)?;
            sqlx::query(
                "INSERT INTO node_auto_quarantines (node_id, org_id, desired_version, quarantined_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node_id) DO UPDATE SET desired_version = $3, quarantined_at = $4",
            )
            .bind(id.as_str())
            .bind(node.org_id.as_str())
            .bind(node.desired_state_version as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_node_event!(tx, now, "node.desired_state_changed", &node);
            append_decision!(tx, now, &node, "quarantine.applied", decision);
            Ok(Some(node))
        });
        self.node_changed();
        out
    }

    /// Releases a held node (back to active) if its desired state is still
    /// the one the hold set, and drops the hold either way. None when no
    /// release applied.
    pub async fn auto_release(
        &self,
        id: &NodeId,
        decision: &serde_json::Value,
        now: UnixMillis,
    ) -> Result<Committed<Option<Node>>> {
        let out = in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE nodes SET desired_state = $2, desired_state_version = desired_state_version + 1,
                        desired_state_reason = '', drain_deadline = NULL, desired_state_nack = ''
                 WHERE id = $1 AND desired_state = $3 AND desired_state_version =
                       (SELECT desired_version FROM node_auto_quarantines WHERE node_id = $1)
                 RETURNING {NODE_COLS}"
            ))
            .bind(id.as_str())
            .bind(DesiredNodeState::Active.as_str())
            .bind(DesiredNodeState::Quarantined.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM node_auto_quarantines WHERE node_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let node = node_from_row(&row)?;
            append_node_event!(tx, now, "node.desired_state_changed", &node);
            append_decision!(tx, now, &node, "quarantine.released", decision);
            Ok(Some(node))
        });
        self.node_changed();
        out
    }

    /// Drops the hold on a node whose desired state an operator changed,
    /// with `kind`'s event (`quarantine.overridden`), or records a decision
    /// not taken (`quarantine.held`) without a hold.
    pub async fn quarantine_event(
        &self,
        node: &Node,
        kind: &'static str,
        decision: &serde_json::Value,
        now: UnixMillis,
    ) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            if kind == "quarantine.overridden" {
                sqlx::query("DELETE FROM node_auto_quarantines WHERE node_id = $1")
                    .bind(node.id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            append_decision!(tx, now, node, kind, decision);
            Ok(())
        })
    }

    /// Per node, the job attempts that finished since `since` and of them
    /// those that failed or were lost.
    pub async fn node_job_outcomes(&self, since: UnixMillis) -> Result<Vec<(NodeId, u64, u64)>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT node_id, COUNT(*) AS finished,
                        SUM(CASE WHEN status IN ('failed', 'lost') THEN 1 ELSE 0 END) AS failed
                 FROM allocations
                 WHERE kind = 'job' AND finished_at >= $1 AND status IN ('succeeded', 'failed', 'lost')
                 GROUP BY node_id",
            )
            .bind(since)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        NodeId::from_trusted(r.text("node_id")?),
                        r.int("finished")?.max(0) as u64,
                        r.int("failed")?.max(0) as u64,
                    ))
                })
                .collect()
        })
    }
}
