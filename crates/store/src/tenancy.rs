//! Organisations, projects and pool grants: the tenancy model's records.

use std::collections::{BTreeSet, HashMap};

use tether_types::{
    DEFAULT_POOL, Error, ErrorCode, JobId, Labels, NodeId, OrgId, Organization, PoolGrant, Project, ProjectId, Quota,
    UnixMillis, WorkloadId,
};

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

/// Every live organisation, project and grant: small, read whole, and kept
/// in memory by the control plane (authorisation and placement read it on
/// every call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenants {
    pub orgs: HashMap<OrgId, Organization>,
    pub projects: HashMap<ProjectId, Project>,
    /// Pools granted, per project.
    pub grants: HashMap<ProjectId, BTreeSet<String>>,
}

/// What a project still has that deleting it would orphan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectWork {
    /// Unfinished jobs.
    pub jobs: Vec<JobId>,
    pub workloads: Vec<WorkloadId>,
    /// Nodes dedicated to it.
    pub nodes: Vec<NodeId>,
}

/// Changes to an organisation or project's name, description and labels.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Replaces the labels when set.
    pub labels: Option<Labels>,
}

const DEFAULT: &str = "default";
const ORG_COLS: &str = "id, name, description, labels, created_at, updated_at";
const PROJECT_COLS: &str = "id, org_id, name, description, labels, created_at, updated_at, quota_cpu_millis, \
                            quota_memory_mb, quota_gpus, quota_allocations";

fn org_from_row(r: &impl Get) -> Result<Organization> {
    Ok(Organization {
        id: OrgId::from_trusted(r.text("id")?),
        name: r.text("name")?,
        description: r.text("description")?,
        labels: r.json("labels", "organisation labels")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

fn project_from_row(r: &impl Get) -> Result<Project> {
    let q = |c: &str| -> Result<Option<u64>> { Ok(r.opt_int(c)?.map(|v| v.max(0) as u64)) };
    Ok(Project {
        id: ProjectId::from_trusted(r.text("id")?),
        org_id: OrgId::from_trusted(r.text("org_id")?),
        name: r.text("name")?,
        description: r.text("description")?,
        labels: r.json("labels", "project labels")?,
        quota: Quota {
            cpu_millis: q("quota_cpu_millis")?,
            memory_mb: q("quota_memory_mb")?,
            gpus: q("quota_gpus")?,
            allocations: q("quota_allocations")?,
        },
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

fn grant_from_row(r: &impl Get) -> Result<PoolGrant> {
    Ok(PoolGrant {
        org_id: OrgId::from_trusted(r.text("org_id")?),
        pool: r.text("pool")?,
        project_id: ProjectId::from_trusted(r.text("project_id")?),
        created_at: r.int("created_at")?,
    })
}

fn exists(what: &str, name: &str) -> crate::StoreError {
    Error::new(ErrorCode::AlreadyExists, format!("{what} {name:?} already exists")).into()
}

/// What a project still has (see [`ProjectWork`]), after `SELECT`.
const PROJECT_JOBS: &str = "FROM jobs WHERE project_id = $1 AND status IN ('pending', 'scheduled', 'running')";
const PROJECT_WORKLOADS: &str = "FROM workloads WHERE project_id = $1";
const PROJECT_NODES: &str = "FROM nodes WHERE project_id = $1";

/// An i64 column for a quota (values past i64::MAX are stored as the max).
fn q(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A deleted record's name: unique, and not a valid name, so that the name
/// is free for a new record.
fn tombstone(name: &str, id: &str) -> String {
    format!("{name}.deleted.{id}")
}

impl Store {
    /// Finds the default organisation and project, or creates both with the
    /// given ids, the project granted the organisation's default pool. Safe
    /// to race: one caller creates, the others find.
    pub async fn bootstrap(&self, org_id: OrgId, project_id: ProjectId, now: UnixMillis) -> Result<Bootstrap> {
        in_tx!(self, |tx| {
            let inserted = sqlx::query(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(org_id.as_str())
            .bind(DEFAULT)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                sqlx::query(
                    "INSERT INTO projects (id, org_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(project_id.as_str())
                .bind(org_id.as_str())
                .bind(DEFAULT)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO pool_grants (org_id, pool, project_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(org_id.as_str())
                    .bind(DEFAULT_POOL)
                    .bind(project_id.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // The same payload schemas as any organisation's and project's.
                let org = Organization {
                    id: org_id.clone(),
                    name: DEFAULT.into(),
                    description: String::new(),
                    labels: Default::default(),
                    created_at: now,
                    updated_at: now,
                };
                let payload = to_json(&org);
                append_event!(
                    tx,
                    now,
                    Some(org_id.as_str()),
                    None::<&str>,
                    "organization.created",
                    org_id.as_str(),
                    payload
                );
                let project = Project {
                    id: project_id.clone(),
                    org_id: org_id.clone(),
                    name: DEFAULT.into(),
                    description: String::new(),
                    labels: Default::default(),
                    quota: Default::default(),
                    created_at: now,
                    updated_at: now,
                };
                let payload = to_json(&project);
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

    /// Every live organisation, project and pool grant.
    pub async fn tenants(&self) -> Result<Tenants> {
        on_read!(self, |pool| {
            let mut t = Tenants::default();
            let orgs = sqlx::query(&format!("SELECT {ORG_COLS} FROM organizations WHERE deleted_at IS NULL"))
                .fetch_all(pool)
                .await?;
            for r in &orgs {
                let o = org_from_row(r)?;
                t.orgs.insert(o.id.clone(), o);
            }
            let projects = sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE deleted_at IS NULL"))
                .fetch_all(pool)
                .await?;
            for r in &projects {
                let p = project_from_row(r)?;
                t.projects.insert(p.id.clone(), p);
            }
            let grants =
                sqlx::query("SELECT org_id, pool, project_id, created_at FROM pool_grants").fetch_all(pool).await?;
            for r in &grants {
                let g = grant_from_row(r)?;
                t.grants.entry(g.project_id).or_default().insert(g.pool);
            }
            Ok(t)
        })
    }

    pub async fn org_create(&self, o: &Organization) -> Result<Committed<Organization>> {
        in_tx_committed!(self, |tx| {
            let taken: Option<String> = sqlx::query_scalar("SELECT id FROM organizations WHERE name = $1")
                .bind(&o.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(exists("organisation", &o.name));
            }
            sqlx::query(&format!("INSERT INTO organizations ({ORG_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"))
                .bind(o.id.as_str())
                .bind(&o.name)
                .bind(&o.description)
                .bind(to_json(&o.labels))
                .bind(o.created_at)
                .bind(o.updated_at)
                .execute(&mut *tx)
                .await?;
            append_event!(
                tx,
                o.created_at,
                Some(o.id.as_str()),
                None::<&str>,
                "organization.created",
                o.id.as_str(),
                to_json(o)
            );
            Ok(o.clone())
        })
    }

    pub async fn org_get(&self, id: &OrgId) -> Result<Option<Organization>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {ORG_COLS} FROM organizations WHERE id = $1 AND deleted_at IS NULL"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(org_from_row)
                .transpose()
        })
    }

    pub async fn org_update(&self, id: &OrgId, u: &TenantUpdate, now: UnixMillis) -> Result<Committed<Organization>> {
        in_tx_committed!(self, |tx| {
            let row =
                sqlx::query(&format!("SELECT {ORG_COLS} FROM organizations WHERE id = $1 AND deleted_at IS NULL"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("organisation {id} not found")))?;
            let mut o = org_from_row(&row)?;
            if let Some(name) = &u.name
                && name != &o.name
            {
                let taken: Option<String> = sqlx::query_scalar("SELECT id FROM organizations WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Err(exists("organisation", name));
                }
                o.name = name.clone();
            }
            if let Some(d) = &u.description {
                o.description = d.clone();
            }
            if let Some(l) = &u.labels {
                o.labels = l.clone();
            }
            o.updated_at = now;
            sqlx::query(
                "UPDATE organizations SET name = $2, description = $3, labels = $4, updated_at = $5 WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(&o.name)
            .bind(&o.description)
            .bind(to_json(&o.labels))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_event!(tx, now, Some(id.as_str()), None::<&str>, "organization.updated", id.as_str(), to_json(&o));
            Ok(o)
        })
    }

    /// Deletes an organisation that has no live project and no node left;
    /// revokes its join tokens and grants.
    pub async fn org_delete(&self, id: &OrgId, now: UnixMillis) -> Result<Committed<Organization>> {
        in_tx_committed!(self, |tx| {
            let row =
                sqlx::query(&format!("SELECT {ORG_COLS} FROM organizations WHERE id = $1 AND deleted_at IS NULL"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("organisation {id} not found")))?;
            let o = org_from_row(&row)?;
            let projects: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE org_id = $1 AND deleted_at IS NULL")
                    .bind(id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            let nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE org_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if projects > 0 || nodes > 0 {
                return Err(Error::precondition(format!(
                    "organisation {id} still has {projects} project(s) and {nodes} node(s); delete them first, \
                     or delete with force"
                ))
                .into());
            }
            sqlx::query("UPDATE organizations SET deleted_at = $2, name = $3, updated_at = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(now)
                .bind(tombstone(&o.name, id.as_str()))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE org_id = $1")
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE org_id = $1")
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pool_grants WHERE org_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
            append_event!(tx, now, Some(id.as_str()), None::<&str>, "organization.deleted", id.as_str(), to_json(&o));
            Ok(o)
        })
    }

    pub async fn project_create(&self, p: &Project) -> Result<Committed<Project>> {
        in_tx_committed!(self, |tx| {
            let org: Option<String> =
                sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1 AND deleted_at IS NULL")
                    .bind(p.org_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if org.is_none() {
                return Err(Error::not_found(format!("organisation {} not found", p.org_id)).into());
            }
            let taken: Option<String> = sqlx::query_scalar("SELECT id FROM projects WHERE org_id = $1 AND name = $2")
                .bind(p.org_id.as_str())
                .bind(&p.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(exists("project", &p.name));
            }
            sqlx::query(&format!(
                "INSERT INTO projects ({PROJECT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(p.id.as_str())
            .bind(p.org_id.as_str())
            .bind(&p.name)
            .bind(&p.description)
            .bind(to_json(&p.labels))
            .bind(p.created_at)
            .bind(p.updated_at)
            .bind(q(p.quota.cpu_millis))
            .bind(q(p.quota.memory_mb))
            .bind(q(p.quota.gpus))
            .bind(q(p.quota.allocations))
            .execute(&mut *tx)
            .await?;
            append_event!(tx, p.created_at, Some(p.id.as_str()), "project.created", p.id.as_str(), to_json(p));
            Ok(p.clone())
        })
    }

    pub async fn project_get(&self, id: &ProjectId) -> Result<Option<Project>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1 AND deleted_at IS NULL"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(project_from_row)
                .transpose()
        })
    }

    /// The organisation a project belongs to.
    pub async fn project_org(&self, project: &ProjectId) -> Result<Option<OrgId>> {
        Ok(self.project_get(project).await?.map(|p| p.org_id))
    }

    /// Changes a project's name, description, labels and (when `quota` is
    /// set) its quota.
    pub async fn project_update(
        &self,
        id: &ProjectId,
        u: &TenantUpdate,
        quota: Option<Quota>,
        now: UnixMillis,
    ) -> Result<Committed<Project>> {
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1 AND deleted_at IS NULL"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::not_found(format!("project {id} not found")))?;
            let mut p = project_from_row(&row)?;
            if let Some(name) = &u.name
                && name != &p.name
            {
                let taken: Option<String> =
                    sqlx::query_scalar("SELECT id FROM projects WHERE org_id = $1 AND name = $2")
                        .bind(p.org_id.as_str())
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if taken.is_some() {
                    return Err(exists("project", name));
                }
                p.name = name.clone();
            }
            if let Some(d) = &u.description {
                p.description = d.clone();
            }
            if let Some(l) = &u.labels {
                p.labels = l.clone();
            }
            if let Some(quota) = quota {
                p.quota = quota;
            }
            p.updated_at = now;
            sqlx::query(
                "UPDATE projects SET name = $2, description = $3, labels = $4, updated_at = $5,
                        quota_cpu_millis = $6, quota_memory_mb = $7, quota_gpus = $8, quota_allocations = $9
                 WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(&p.name)
            .bind(&p.description)
            .bind(to_json(&p.labels))
            .bind(now)
            .bind(q(p.quota.cpu_millis))
            .bind(q(p.quota.memory_mb))
            .bind(q(p.quota.gpus))
            .bind(q(p.quota.allocations))
            .execute(&mut *tx)
            .await?;
            let kind = if quota.is_some() { "project.quota_set" } else { "project.updated" };
            append_event!(tx, now, Some(id.as_str()), kind, id.as_str(), to_json(&p));
            Ok(p)
        })
    }

    /// What a project still has: unfinished jobs, workloads, dedicated nodes.
    pub async fn project_work(&self, id: &ProjectId) -> Result<ProjectWork> {
        on_read!(self, |pool| {
            let mut found: [Vec<String>; 3] = Default::default();
            for (ids, what) in found.iter_mut().zip([PROJECT_JOBS, PROJECT_WORKLOADS, PROJECT_NODES]) {
                *ids = sqlx::query_scalar(&format!("SELECT id {what}")).bind(id.as_str()).fetch_all(pool).await?;
            }
            let [jobs, workloads, nodes] = found;
            Ok(ProjectWork {
                jobs: jobs.into_iter().map(JobId::from_trusted).collect(),
                workloads: workloads.into_iter().map(WorkloadId::from_trusted).collect(),
                nodes: nodes.into_iter().map(NodeId::from_trusted).collect(),
            })
        })
    }

    /// The nodes of an organisation.
    pub async fn org_nodes(&self, id: &OrgId) -> Result<Vec<NodeId>> {
        on_read!(self, |pool| {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM nodes WHERE org_id = $1").bind(id.as_str()).fetch_all(pool).await?;
            Ok(ids.into_iter().map(NodeId::from_trusted).collect())
        })
    }

    /// Deletes a project that has no unfinished job, workload or dedicated
    /// node (FAILED_PRECONDITION otherwise, nothing changed); revokes its
    /// tokens and join tokens and drops its grants.
    pub async fn project_delete(&self, id: &ProjectId, now: UnixMillis) -> Result<Committed<Project>> {
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!("SELECT {PROJECT_COLS} FROM projects WHERE id = $1 AND deleted_at IS NULL"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::not_found(format!("project {id} not found")))?;
            let p = project_from_row(&row)?;
            let mut counts = [0i64; 3];
            for (n, what) in counts.iter_mut().zip([PROJECT_JOBS, PROJECT_WORKLOADS, PROJECT_NODES]) {
                *n = sqlx::query_scalar(&format!("SELECT COUNT(*) {what}"))
                    .bind(id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            }
            let [jobs, workloads, nodes] = counts;
            if jobs > 0 || workloads > 0 || nodes > 0 {
                return Err(Error::precondition(format!(
                    "project {id} still has {jobs} unfinished job(s), {workloads} workload(s) and {nodes} dedicated \
                     node(s); stop them first, or delete with force"
                ))
                .into());
            }
            sqlx::query("UPDATE projects SET deleted_at = $2, name = $3, updated_at = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(now)
                .bind(tombstone(&p.name, id.as_str()))
                .execute(&mut *tx)
                .await?;
            for table in ["tokens", "join_tokens"] {
                sqlx::query(&format!("UPDATE {table} SET revoked_at = COALESCE(revoked_at, $2) WHERE project_id = $1"))
                    .bind(id.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM pool_grants WHERE project_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
            // Its secrets' copies go; the versions stay as tombstones.
            sqlx::query("DELETE FROM secret_copies WHERE project_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
            sqlx::query("UPDATE secrets SET deleted_at = $2 WHERE project_id = $1 AND deleted_at IS NULL")
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            append_event!(tx, now, Some(id.as_str()), "project.deleted", id.as_str(), to_json(&p));
            Ok(p)
        })
    }

    /// Grants a pool of the project's organisation to the project.
    /// Granting again answers the existing grant.
    pub async fn pool_grant(&self, g: &PoolGrant) -> Result<Committed<PoolGrant>> {
        in_tx_committed!(self, |tx| {
            let org: Option<String> =
                sqlx::query_scalar("SELECT org_id FROM projects WHERE id = $1 AND deleted_at IS NULL")
                    .bind(g.project_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if org.as_deref() != Some(g.org_id.as_str()) {
                return Err(Error::not_found(format!("project {} not found", g.project_id)).into());
            }
            let existing = sqlx::query(
                "SELECT org_id, pool, project_id, created_at FROM pool_grants
                 WHERE org_id = $1 AND pool = $2 AND project_id = $3",
            )
            .bind(g.org_id.as_str())
            .bind(&g.pool)
            .bind(g.project_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = existing {
                return grant_from_row(&r);
            }
            sqlx::query("INSERT INTO pool_grants (org_id, pool, project_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(g.org_id.as_str())
                .bind(&g.pool)
                .bind(g.project_id.as_str())
                .bind(g.created_at)
                .execute(&mut *tx)
                .await?;
            let subject = format!("{}/{}", g.pool, g.project_id);
            append_event!(tx, g.created_at, Some(g.project_id.as_str()), "pool.granted", &subject, to_json(g));
            Ok(g.clone())
        })
    }

    pub async fn pool_revoke(
        &self,
        org: &OrgId,
        pool: &str,
        project: &ProjectId,
        now: UnixMillis,
    ) -> Result<Committed<PoolGrant>> {
        in_tx_committed!(self, |tx| {
            let row = sqlx::query(
                "DELETE FROM pool_grants WHERE org_id = $1 AND pool = $2 AND project_id = $3
                 RETURNING org_id, pool, project_id, created_at",
            )
            .bind(org.as_str())
            .bind(pool)
            .bind(project.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("project {project} has no grant of pool {pool:?}")))?;
            let g = grant_from_row(&row)?;
            let subject = format!("{pool}/{project}");
            append_event!(tx, now, Some(project.as_str()), "pool.revoked", &subject, to_json(&g));
            Ok(g)
        })
    }

    pub async fn pool_grants(&self, org: &OrgId) -> Result<Vec<PoolGrant>> {
        on_read!(self, |pool| {
            sqlx::query(
                "SELECT org_id, pool, project_id, created_at FROM pool_grants WHERE org_id = $1
                 ORDER BY pool, project_id",
            )
            .bind(org.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(grant_from_row)
            .collect()
        })
    }
}
