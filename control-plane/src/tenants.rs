//! The organisations, projects and pool grants, kept in memory: every call
//! is authorised against them and every placement pass reads each project's
//! access from them. Read whole from the store at start, again after each
//! tenancy write on this process, and by a background refresh for writes on
//! other replicas.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tether_store::{Store, StoreError, Tenants};
use tether_types::{OrgId, Project, ProjectAccess, ProjectId};

/// One consistent copy of the tenancy records, with each project's access.
#[derive(Debug, Default)]
pub struct TenantView {
    pub tenants: Tenants,
    pub access: HashMap<ProjectId, Arc<ProjectAccess>>,
}

impl TenantView {
    pub fn of(tenants: Tenants) -> Self {
        let access = tenants
            .projects
            .values()
            .map(|p| {
                let a = ProjectAccess {
                    project: p.id.clone(),
                    org: p.org_id.clone(),
                    pools: tenants.grants.get(&p.id).cloned().unwrap_or_default(),
                    quota: p.quota,
                };
                (p.id.clone(), Arc::new(a))
            })
            .collect();
        TenantView { tenants, access }
    }

    pub fn project(&self, id: &ProjectId) -> Option<&Project> {
        self.tenants.projects.get(id)
    }

    pub fn org_exists(&self, id: &OrgId) -> bool {
        self.tenants.orgs.contains_key(id)
    }
}

#[derive(Default)]
pub struct TenantCache {
    view: RwLock<Arc<TenantView>>,
    /// One reload at a time, so that a slower read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl TenantCache {
    pub fn get(&self) -> Arc<TenantView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads every record again; answers how many projects there are.
    pub async fn reload(&self, store: &Store) -> Result<usize, StoreError> {
        let _one = self.reloading.lock().await;
        let t = store.tenants().await?;
        let n = t.projects.len();
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(TenantView::of(t));
        Ok(n)
    }
}
