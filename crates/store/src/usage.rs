//! Usage metering's rows: a project's allocations and dedicated nodes that
//! overlap a period, and the records ingested for it
//! (`tether_types::usage::meter` adds them up).

use tether_types::usage::{Held, Provided};
use tether_types::{NodeCapabilities, NodeId, OrgId, ProjectId, Resources, UnixMillis};

use crate::events::append_event;
use crate::row::Get;
use crate::{Committed, Result, Store, in_tx_committed, on_read};

/// One record to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageIngest {
    pub metric: String,
    pub quantity: u64,
    pub used_at: UnixMillis,
    pub idempotency_key: String,
}

/// An allocation's claim, from its `resources`, `started_at` and
/// `finished_at` columns.
fn held_from_row(r: &impl Get) -> Result<Held> {
    Ok(Held {
        resources: r.json::<Resources>("resources", "allocation resources")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

impl Store {
    /// Writes the records whose key the project has not used, in one
    /// transaction; answers (accepted, duplicates). One `usage.ingested`
    /// event when any was accepted.
    pub async fn usage_ingest(
        &self,
        org: &OrgId,
        project: &ProjectId,
        records: &[UsageIngest],
        now: UnixMillis,
    ) -> Result<Committed<(u32, u32)>> {
        in_tx_committed!(self, |tx| {
            let mut accepted = 0u32;
            for r in records {
                let done = sqlx::query(
                    "INSERT INTO usage_records (project_id, idempotency_key, metric, quantity, used_at, recorded_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, idempotency_key) DO NOTHING",
                )
                .bind(project.as_str())
                .bind(&r.idempotency_key)
                .bind(&r.metric)
                .bind(i64::try_from(r.quantity).unwrap_or(i64::MAX))
                .bind(r.used_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                accepted += done.rows_affected() as u32;
            }
            let duplicates = records.len() as u32 - accepted;
            if accepted > 0 {
                let payload = serde_json::json!({"accepted": accepted, "duplicates": duplicates}).to_string();
                append_event!(
                    tx,
                    now,
                    Some(org.as_str()),
                    Some(project.as_str()),
                    "usage.ingested",
                    project.as_str(),
                    payload
                );
            }
            Ok((accepted, duplicates))
        })
    }

    /// The project's allocations that started before `end` and had not
    /// finished by `start`, its dedicated nodes registered before `end`, and
    /// its records used in [start, end).
    pub async fn usage_rows(
        &self,
        project: &ProjectId,
        start: UnixMillis,
        end: UnixMillis,
    ) -> Result<(Vec<Held>, Vec<Provided>, Vec<(String, u64)>)> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT resources, started_at, finished_at FROM allocations
                 WHERE project_id = $1 AND started_at IS NOT NULL AND started_at < $3
                   AND (finished_at IS NULL OR finished_at > $2)",
            )
            .bind(project.as_str())
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
            let held = rows.iter().map(held_from_row).collect::<Result<Vec<_>>>()?;
            let rows = sqlx::query(
                "SELECT capabilities, registered_at FROM nodes WHERE project_id = $1 AND registered_at < $2",
            )
            .bind(project.as_str())
            .bind(end)
            .fetch_all(pool)
            .await?;
            let nodes = rows
                .iter()
                .map(|r| {
                    let c: NodeCapabilities = r.json("capabilities", "node capabilities")?;
                    Ok(Provided {
                        resources: Resources {
                            cpu_millis: u64::from(c.cpu_count) * 1000,
                            memory_mb: c.memory_mb,
                            gpus: c.gpus.len() as u64,
                        },
                        registered_at: r.int("registered_at")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let rows = sqlx::query(
                "SELECT metric, quantity FROM usage_records WHERE project_id = $1 AND used_at >= $2 AND used_at < $3",
            )
            .bind(project.as_str())
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
            let ingested = rows
                .iter()
                .map(|r| Ok((r.text("metric")?, r.int("quantity")?.max(0) as u64)))
                .collect::<Result<Vec<_>>>()?;
            Ok((held, nodes, ingested))
        })
    }

    /// Per node of `org`: the allocations it ran in [start, end) of projects
    /// other than its own (a shared node's: all), for payout previews.
    pub async fn payout_rows(&self, org: &OrgId, start: UnixMillis, end: UnixMillis) -> Result<Vec<(NodeId, Held)>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT a.node_id, a.resources, a.started_at, a.finished_at
                 FROM allocations a JOIN nodes n ON n.id = a.node_id
                 WHERE n.org_id = $1 AND a.started_at IS NOT NULL AND a.started_at < $3
                   AND (a.finished_at IS NULL OR a.finished_at > $2)
                   AND (n.project_id IS NULL OR n.project_id <> a.project_id)
                 ORDER BY a.node_id",
            )
            .bind(org.as_str())
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok((NodeId::from_trusted(r.text("node_id")?), held_from_row(r)?))).collect()
        })
    }
}

impl Store {
    /// The organisation's jobs submitted in [start, end), by status.
    pub async fn job_counts(&self, org: &OrgId, start: UnixMillis, end: UnixMillis) -> Result<Vec<(String, u64)>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT j.status AS status, COUNT(*) AS n FROM jobs j JOIN projects p ON p.id = j.project_id
                 WHERE p.org_id = $1 AND j.created_at >= $2 AND j.created_at < $3
                 GROUP BY j.status ORDER BY j.status",
            )
            .bind(org.as_str())
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok((r.text("status")?, r.int("n")?.max(0) as u64))).collect()
        })
    }
}
