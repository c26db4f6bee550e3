//! Job output and the events about one job.

use tether_types::{JobId, ProjectId};

use crate::row::Get;
use crate::{Result, Store, in_tx, on_read};

/// A chunk of a job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub attempt: u32,
    pub pos: u64,
    pub data: Vec<u8>,
    pub truncated: bool,
}

impl Store {
    /// Appends output of a job attempt at `pos`, unless that position is
    /// already stored (a resend). Returns false for a duplicate.
    pub async fn job_log_append(
        &self,
        job: &JobId,
        attempt: u32,
        pos: u64,
        data: &[u8],
        truncated: bool,
    ) -> Result<bool> {
        in_tx!(self, |tx| {
            let inserted = sqlx::query(
                "INSERT INTO job_logs (job_id, attempt, pos, data, truncated) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(job.as_str())
            .bind(i64::from(attempt))
            .bind(pos as i64)
            .bind(data)
            .bind(i64::from(truncated))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            Ok(inserted)
        })
    }

    /// Output chunks of one attempt at or after `from`, in order, about
    /// `max_bytes` at most.
    pub async fn job_logs(&self, job: &JobId, attempt: u32, from: u64, max_bytes: usize) -> Result<Vec<LogChunk>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(
                "SELECT pos, data, truncated FROM job_logs
                 WHERE job_id = $1 AND attempt = $2 AND pos + LENGTH(data) > $3 ORDER BY pos LIMIT 256",
            )
            .bind(job.as_str())
            .bind(i64::from(attempt))
            .bind(from as i64)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::new();
            let mut total = 0;
            for r in &rows {
                let pos = r.int("pos")? as u64;
                let mut data = r.bytes("data")?;
                if pos < from {
                    data.drain(..(from - pos) as usize);
                }
                total += data.len();
                out.push(LogChunk { attempt, pos: pos.max(from), data, truncated: r.int("truncated")? == 1 });
                if total >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Events about one subject (a job), after `after`, oldest first.
    pub async fn events_for_subject(
        &self,
        project: &ProjectId,
        subject: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::Event>> {
        on_read!(self, |pool| {
            sqlx::query(
                "SELECT seq, at, org_id, project_id, kind, subject, payload, principal, principal_role FROM events
                 WHERE project_id = $1 AND subject = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(project.as_str())
            .bind(subject)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(crate::events::event_from_row)
            .collect()
        })
    }
}
