//! Workloads: long-running services with N replicas.

use tether_types::{Allocation, Error, ErrorCode, ProjectId, UnixMillis, Workload, WorkloadId, WorkloadSpec};

use crate::events::append_event;
use crate::row::{Decoded, Get, decode_each, to_json};
use crate::work::{ALLOC_COLS, alloc_from_row};
use crate::{Committed, Result, Store, StoreError, in_tx_committed, on_read};

const WL_COLS: &str = "id, project_id, name, spec, spec_version, replicas, created_at, updated_at";

fn workload_from_row(r: &impl Get) -> Result<Workload> {
    Ok(Workload {
        id: WorkloadId::from_trusted(r.text("id")?),
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        name: r.text("name")?,
        spec: r.json("spec", "workload spec")?,
        spec_version: r.int("spec_version")? as u64,
        replicas: r.int("replicas")? as u32,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

macro_rules! fetch_workload {
    ($tx:expr, $project:expr, $id:expr) => {{
        let row = sqlx::query(&format!("SELECT {WL_COLS} FROM workloads WHERE id = $1 AND project_id = $2"))
            .bind($id.as_str())
            .bind($project.as_str())
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            Some(r) => workload_from_row(&r)?,
            None => return Err(Error::not_found(format!("workload {} not found", $id)).into()),
        }
    }};
}

macro_rules! save_workload {
    ($tx:expr, $w:expr, $kind:expr) => {{
        let w: &Workload = $w;
        sqlx::query("UPDATE workloads SET spec = $2, spec_version = $3, replicas = $4, updated_at = $5 WHERE id = $1")
            .bind(w.id.as_str())
            .bind(to_json(&w.spec))
            .bind(w.spec_version as i64)
            .bind(i64::from(w.replicas))
            .bind(w.updated_at)
            .execute(&mut *$tx)
            .await?;
        append_event!($tx, w.updated_at, Some(w.project_id.as_str()), $kind, w.id.as_str(), to_json(w));
    }};
}

impl Store {
    pub async fn workload_create(&self, w: &Workload) -> Result<Committed<Workload>> {
        in_tx_committed!(self, |tx| {
            let taken: Option<String> =
                sqlx::query_scalar("SELECT id FROM workloads WHERE project_id = $1 AND name = $2")
                    .bind(w.project_id.as_str())
                    .bind(&w.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(
                    Error::new(ErrorCode::AlreadyExists, format!("workload {:?} already exists", w.name)).into()
                );
            }
            sqlx::query(&format!("INSERT INTO workloads ({WL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
                .bind(w.id.as_str())
                .bind(w.project_id.as_str())
                .bind(&w.name)
                .bind(to_json(&w.spec))
                .bind(w.spec_version as i64)
                .bind(i64::from(w.replicas))
                .bind(w.created_at)
                .bind(w.updated_at)
                .execute(&mut *tx)
                .await?;
            append_event!(tx, w.created_at, Some(w.project_id.as_str()), "workload.created", w.id.as_str(), to_json(w));
            Ok(w.clone())
        })
    }

    pub async fn workload_get(&self, project: &ProjectId, id: &WorkloadId) -> Result<Option<Workload>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {WL_COLS} FROM workloads WHERE id = $1 AND project_id = $2"))
                .bind(id.as_str())
                .bind(project.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| workload_from_row(&r))
                .transpose()
        })
    }

    /// Workloads of one project, or of all projects when `project` is None.
    pub async fn workload_list(&self, project: Option<&ProjectId>) -> Result<Vec<Workload>> {
        on_read!(self, |pool| {
            sqlx::query(&format!(
                "SELECT {WL_COLS} FROM workloads WHERE ($1 = '' OR project_id = $1) ORDER BY created_at, id"
            ))
            .bind(project.map(ProjectId::as_str).unwrap_or(""))
            .fetch_all(pool)
            .await?
            .iter()
            .map(workload_from_row)
            .collect()
        })
    }

    /// Every workload, for the reconciler; a row that does not decode is
    /// reported in `bad`, not an error for all.
    pub async fn workloads_all(&self) -> Result<Decoded<Workload>> {
        on_read!(self, |pool| {
            let rows = sqlx::query(&format!("SELECT {WL_COLS} FROM workloads ORDER BY created_at, id"))
                .fetch_all(pool)
                .await?;
            Ok(decode_each(&rows, "id", workload_from_row))
        })
    }

    pub async fn workload_update_spec(
        &self,
        project: &ProjectId,
        id: &WorkloadId,
        spec: &WorkloadSpec,
        now: UnixMillis,
    ) -> Result<Committed<Workload>> {
        in_tx_committed!(self, |tx| {
            let mut w = fetch_workload!(tx, project, id);
            if &w.spec != spec {
                w.spec = spec.clone();
                w.spec_version += 1;
                w.updated_at = now;
                save_workload!(tx, &w, "workload.updated");
            }
            Ok(w)
        })
    }

    pub async fn workload_scale(
        &self,
        project: &ProjectId,
        id: &WorkloadId,
        replicas: u32,
        now: UnixMillis,
    ) -> Result<Committed<Workload>> {
        in_tx_committed!(self, |tx| {
            let mut w = fetch_workload!(tx, project, id);
            if w.replicas != replicas {
                w.replicas = replicas;
                w.updated_at = now;
                save_workload!(tx, &w, "workload.scaled");
            }
            Ok(w)
        })
    }

    /// Removes a workload; its active replicas become `stopping` and are returned.
    pub async fn workload_delete(
        &self,
        project: &ProjectId,
        id: &WorkloadId,
        now: UnixMillis,
    ) -> Result<Committed<(Workload, Vec<Allocation>)>> {
        in_tx_committed!(self, |tx| {
            let w = fetch_workload!(tx, project, id);
            sqlx::query("DELETE FROM workloads WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
            let rows = sqlx::query(&format!(
                "UPDATE allocations SET status = 'stopping', error = 'workload deleted'
                 WHERE workload_id = $1 AND status IN ('scheduled', 'running') RETURNING {ALLOC_COLS}"
            ))
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await?;
            let stopping = rows.iter().map(alloc_from_row).collect::<Result<Vec<_>>>()?;
            append_event!(tx, now, Some(project.as_str()), "workload.deleted", id.as_str(), to_json(&w));
            Ok::<_, StoreError>((w, stopping))
        })
    }

    /// A workload's replicas that still hold resources.
    pub async fn workload_allocations(&self, id: &WorkloadId) -> Result<Vec<Allocation>> {
        self.active_allocations_where("workload_id", id.as_str()).await
    }
}
