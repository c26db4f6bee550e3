//! Organisations, projects, pool grants, tokens and join tokens.
//!
//! Every write here changes who may do what, or where work may go: after
//! it commits, the in-memory tenancy records are read again (so that the
//! next call on this replica is authorised by them) and the work pass is
//! woken (a grant or a quota may let pending work run).

use tether_store::{StoreError, TenantUpdate, TokenRecord, TokenScope};
use tether_types::{
    JoinToken, JoinTokenId, OrgId, Organization, PoolGrant, Project, ProjectId, Quota, TokenId, UnixMillis,
};

use crate::app::{App, now_ms};
use crate::effects::Signal;

/// Reads the tenancy records again after a write. A failed read leaves the
/// old ones until the background refresh: the write itself stands.
async fn reload(app: &App) {
    if let Err(e) = app.auth.tenants.reload(&app.store).await {
        tracing::warn!(error = &e as &dyn std::error::Error, "reading the tenancy records again failed");
    }
}

pub async fn token_record(app: &App, t: &TokenRecord) -> Result<(), StoreError> {
    app.effects().commit(app.store.token_record(t).await?);
    Ok(())
}

/// Adds a root key and signs with it from now on; returns its id. Other
/// replicas take it within their revocation refresh (until then they still
/// sign with the previous key, which every replica verifies).
pub async fn rotate_root_key(app: &App) -> Result<u32, StoreError> {
    let id = app.effects().commit(app.store.root_key_rotate(&tether_auth::random_bytes::<32>(), now_ms()).await?);
    app.auth.set_keys(&app.store.root_keys().await?);
    Ok(id)
}

/// Revokes an operator token; this replica refuses it at once, others
/// within their revocation refresh.
pub async fn token_revoke(app: &App, scope: TokenScope<'_>, id: &TokenId) -> Result<TokenRecord, StoreError> {
    let t = app.effects().commit(app.store.token_revoke(scope, id, now_ms()).await?);
    app.auth.revoke(id.clone());
    Ok(t)
}

pub async fn join_token_create(app: &App, t: &JoinToken, secret_hash: &[u8]) -> Result<(), StoreError> {
    app.effects().commit(app.store.join_token_create(t, secret_hash).await?);
    Ok(())
}

pub async fn join_token_revoke(app: &App, scope: TokenScope<'_>, id: &JoinTokenId) -> Result<JoinToken, StoreError> {
    Ok(app.effects().commit(app.store.join_token_revoke(scope, id, now_ms()).await?))
}

pub async fn org_create(app: &App, o: &Organization) -> Result<Organization, StoreError> {
    let o = app.effects().commit(app.store.org_create(o).await?);
    reload(app).await;
    Ok(o)
}

pub async fn org_update(app: &App, id: &OrgId, u: &TenantUpdate) -> Result<Organization, StoreError> {
    let o = app.effects().commit(app.store.org_update(id, u, now_ms()).await?);
    reload(app).await;
    Ok(o)
}

/// Deletes an organisation; with `force`, its projects first (stopping
/// their work) and then its nodes.
pub async fn org_delete(app: &App, id: &OrgId, force: bool) -> Result<Organization, StoreError> {
    if force {
        let projects: Vec<ProjectId> = app
            .auth
            .tenants
            .get()
            .tenants
            .projects
            .values()
            .filter(|p| &p.org_id == id)
            .map(|p| p.id.clone())
            .collect();
        for p in &projects {
            project_delete(app, p, true).await?;
        }
        for n in app.store.org_nodes(id).await? {
            super::nodes::deregister(app, &n).await?;
        }
    }
    let o = app.effects().commit(app.store.org_delete(id, now_ms()).await?);
    reload(app).await;
    Ok(o)
}

pub async fn project_create(app: &App, p: &Project) -> Result<Project, StoreError> {
    let p = app.effects().commit(app.store.project_create(p).await?);
    reload(app).await;
    Ok(p)
}

pub async fn project_update(app: &App, id: &ProjectId, u: &TenantUpdate) -> Result<Project, StoreError> {
    let p = app.effects().commit(app.store.project_update(id, u, None, now_ms()).await?);
    reload(app).await;
    Ok(p)
}

/// Sets a quota; a raised one may let pending work run at once.
pub async fn project_set_quota(app: &App, id: &ProjectId, quota: Quota) -> Result<Project, StoreError> {
    let mut fx = app.effects();
    let p = fx.commit(app.store.project_update(id, &TenantUpdate::default(), Some(quota), now_ms()).await?);
    reload(app).await;
    fx.wake(Signal::Placement);
    Ok(p)
}

/// Deletes a project; with `force`, its jobs are cancelled, its workloads
/// deleted and its dedicated nodes deregistered first. Its tokens stop
/// working at once here (its records are gone from the tenancy view).
pub async fn project_delete(app: &App, id: &ProjectId, force: bool) -> Result<Project, StoreError> {
    if force {
        let work = app.store.project_work(id).await?;
        for j in &work.jobs {
            match super::jobs::cancel(app, id, j).await {
                // Finished meanwhile.
                Err(StoreError::Domain(e)) if e.code == tether_types::ErrorCode::FailedPrecondition => {}
                r => {
                    r?;
                }
            }
        }
        for w in &work.workloads {
            super::workloads::delete(app, id, w).await?;
        }
        for n in &work.nodes {
            super::nodes::deregister(app, n).await?;
        }
    }
    let p = app.effects().commit(app.store.project_delete(id, now_ms()).await?);
    reload(app).await;
    Ok(p)
}

pub async fn pool_grant(app: &App, g: &PoolGrant) -> Result<PoolGrant, StoreError> {
    let mut fx = app.effects();
    let g = fx.commit(app.store.pool_grant(g).await?);
    reload(app).await;
    fx.wake(Signal::Placement);
    Ok(g)
}

pub async fn pool_revoke(
    app: &App,
    org: &OrgId,
    pool: &str,
    project: &ProjectId,
    now: UnixMillis,
) -> Result<PoolGrant, StoreError> {
    let g = app.effects().commit(app.store.pool_revoke(org, pool, project, now).await?);
    reload(app).await;
    Ok(g)
}
