//! Allocations: reads, placement, stops and losses.

use tether_types::{AllocKey, AllocKind, Allocation, Job, NodeId, UnixMillis};

use super::{ACTIVE, ALLOC_COLS, JOB_COLS, ON_LOST_NODES, alloc_from_row, job_from_row};
use crate::events::append_event;
use crate::row::to_json;
use crate::{Committed, Result, Store, StoreError, in_tx_committed, on_read};

impl Store {
    /// Every allocation that holds resources (scheduled, running, stopping).
    pub async fn allocations_active(&self) -> Result<Vec<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE {ACTIVE}"))
                .fetch_all(pool)
                .await?
                .iter()
                .map(alloc_from_row)
                .collect()
        })
    }

    /// Active allocations on one node.
    pub async fn allocations_on_node(&self, node: &NodeId) -> Result<Vec<Allocation>> {
        self.active_allocations_where("node_id", node.as_str()).await
    }

    /// Active allocations whose `column` (a fixed column name) is `value`,
    /// oldest first.
    pub(crate) async fn active_allocations_where(&self, column: &'static str, value: &str) -> Result<Vec<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!(
                "SELECT {ALLOC_COLS} FROM allocations WHERE {column} = $1 AND {ACTIVE} ORDER BY scheduled_at, key"
            ))
            .bind(value)
            .fetch_all(pool)
            .await?
            .iter()
            .map(alloc_from_row)
            .collect()
        })
    }

    pub async fn allocation_get(&self, key: &AllocKey) -> Result<Option<Allocation>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE key = $1"))
                .bind(key.to_string())
                .fetch_optional(pool)
                .await?
                .map(|r| alloc_from_row(&r))
                .transpose()
        })
    }

    /// Records placements in one transaction: each allocation is inserted and
    /// its job (if any) becomes `scheduled` with the new attempt. A job that is
    /// no longer pending (cancelled meanwhile) is skipped. Returns what was stored.
    pub async fn allocations_place(
        &self,
        allocs: &[Allocation],
        now: UnixMillis,
    ) -> Result<Committed<Vec<Allocation>>> {
        if allocs.is_empty() {
            return Ok(Committed::nothing(Vec::new()));
        }
        in_tx_committed!(self, |tx| {
            let mut stored = Vec::with_capacity(allocs.len());
            for a in allocs {
                if let Some(job_id) = &a.job_id {
                    let Some(mut job) = fetch_job!(tx, job_id.as_str()) else { continue };
                    // Cancelled or placed meanwhile: left alone.
                    let Some(ev) = job.schedule(a.attempt, &a.node_id, now) else { continue };
                    update_job!(tx, &job, ev.kind());
                } else if let Some(w) = &a.workload_id {
                    let exists: Option<i64> = sqlx::query_scalar("SELECT spec_version FROM workloads WHERE id = $1")
                        .bind(w.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if exists.is_none() {
                        continue;
                    }
                    append_event!(
                        tx,
                        now,
                        Some(a.project_id.as_str()),
                        "allocation.scheduled",
                        &a.key.to_string(),
                        to_json(a)
                    );
                }
                sqlx::query(&format!(
                    "INSERT INTO allocations ({ALLOC_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(a.key.to_string())
                .bind(a.project_id.as_str())
                .bind(if a.kind == AllocKind::Job { "job" } else { "service" })
                .bind(a.job_id.as_ref().map(|j| j.as_str()))
                .bind(i64::from(a.attempt))
                .bind(a.workload_id.as_ref().map(|w| w.as_str()))
                .bind(a.spec_version as i64)
                .bind(a.node_id.as_str())
                .bind(a.status.as_str())
                .bind(to_json(&a.resources))
                .bind(a.exit_code.map(i64::from))
                .bind(&a.error)
                .bind(i64::from(a.restarts))
                .bind(a.scheduled_at)
                .bind(a.started_at)
                .bind(a.finished_at)
                .execute(&mut *tx)
                .await?;
                stored.push(a.clone());
            }
            Ok::<_, StoreError>(stored)
        })
    }

    /// Asks for allocations to stop: active ones become `stopping`, with
    /// `reason`. Returns those that changed. A job attempt whose job still
    /// wants a result (not cancelled) is retried once it has stopped (its node
    /// reports it ended, or goes down), never before: no attempt runs on
    /// after the control plane gave up on it.
    pub async fn allocations_stop(
        &self,
        keys: &[AllocKey],
        reason: &str,
        now: UnixMillis,
    ) -> Result<Committed<Vec<Allocation>>> {
        if keys.is_empty() {
            return Ok(Committed::nothing(Vec::new()));
        }
        in_tx_committed!(self, |tx| {
            let mut out = Vec::new();
            for k in keys {
                let Some(mut a) = fetch_alloc!(tx, k) else { continue };
                if !a.stop() {
                    continue;
                }
                a.error = reason.to_owned();
                update_alloc!(tx, &a);
                append_event!(
                    tx,
                    now,
                    Some(a.project_id.as_str()),
                    "allocation.stopping",
                    &a.key.to_string(),
                    to_json(&a)
                );
                out.push(a);
            }
            Ok::<_, StoreError>(out)
        })
    }

    /// Active allocations on nodes that are `down` (or deregistered) become lost (job attempts
    /// are retried elsewhere while attempts remain). Idempotent; returns the
    /// allocations that changed.
    pub async fn allocations_lose_on_down_nodes(&self, now: UnixMillis) -> Result<Committed<Vec<Allocation>>> {
        // Usually there is nothing to do: look first, without a write transaction.
        let any: Option<String> = on_read!(self, |pool| {
            sqlx::query_scalar(&format!("SELECT key FROM allocations WHERE {ON_LOST_NODES} LIMIT 1"))
                .fetch_optional(pool)
                .await?
        });
        if any.is_none() {
            return Ok(Committed::nothing(Vec::new()));
        }
        in_tx_committed!(self, |tx| {
            let rows = sqlx::query(&format!("SELECT {ALLOC_COLS} FROM allocations WHERE {ON_LOST_NODES}"))
                .fetch_all(&mut *tx)
                .await?;
            let allocs = rows.iter().map(alloc_from_row).collect::<Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(allocs.len());
            for a in allocs {
                out.push(lose_allocation!(tx, a, "node is down or was deregistered", now));
            }
            Ok::<_, StoreError>(out)
        })
    }
}
