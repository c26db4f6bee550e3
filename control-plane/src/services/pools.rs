//! `tether.v1.PoolService`: an organisation's pools, their desired counts
//! and the requests made to their providers (the loops are in
//! `crate::pools`).

use std::collections::BTreeSet;
use std::sync::Arc;

use tether_proto::pb;
use tether_types::pool::{Pool, PoolSpec, Provider, ScaleRequest};
use tether_types::{Error, OrgId, OrgRole};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::{App, now_ms};
use crate::pools::{Facts, facts, members, to_pb};

/// The node snapshot and the active allocations.
type Fleet = (Arc<crate::fleet::snapshot::NodeSnapshot>, Vec<tether_types::Allocation>);

pub struct PoolApi {
    app: Arc<App>,
}

impl PoolApi {
    pub fn new(app: Arc<App>) -> Self {
        PoolApi { app }
    }

    /// The organisation, with the caller's role in it checked.
    fn org(&self, req: &Request<impl Sized>, id: &str, role: OrgRole) -> Result<OrgId, Status> {
        let who = self.app.auth.caller(req)?;
        let org = OrgId::parse(id).map_err(status)?;
        who.in_org(&org, role)?;
        Ok(org)
    }

    /// Refuses a command provider this control plane has not registered,
    /// and a webhook to a host `--webhook-allow` leaves out.
    fn check_provider(&self, spec: &PoolSpec) -> Result<(), Status> {
        if let Some(Provider::Webhook { url, .. }) = &spec.provider {
            self.app.providers.webhook_allowed(url).map_err(|e| status(Error::precondition(e)))?;
        }
        if let Some(Provider::Command { name }) = &spec.provider
            && !self.app.providers.has_command(name)
        {
            return Err(status(Error::precondition(format!(
                "no command {name:?} is registered on this control plane (--pool-command {name}=PATH)"
            ))));
        }
        Ok(())
    }

    /// What a pool's facts are computed from: the nodes and the active
    /// allocations, read once per call.
    async fn fleet(&self) -> Result<Fleet, Status> {
        let app = &self.app;
        let snap = app.nodes.get(&app.store).await.map_err(store_status)?;
        let active = app.store.allocations_active().await.map_err(store_status)?;
        Ok((snap, active))
    }

    /// Pools with their facts (nodes, capacity, requests), and each pool's
    /// open requests.
    async fn views(
        &self,
        pools: &[Pool],
        (snap, active): &Fleet,
    ) -> Result<Vec<(pb::Pool, Vec<ScaleRequest>)>, Status> {
        let app = &self.app;
        let open = app.store.scale_requests_open().await.map_err(store_status)?;
        let mut out = Vec::new();
        for p in pools {
            let mine: Vec<&ScaleRequest> = open.iter().filter(|r| r.org_id == p.org_id && r.pool == p.name).collect();
            let f = facts(p, &snap.nodes, active, &mine);
            let recent = app.store.scale_requests(&p.org_id, &p.name, 1).await.map_err(store_status)?;
            out.push((to_pb(p, &f, crate::pools::provider_error(&recent)), mine.into_iter().cloned().collect()));
        }
        Ok(out)
    }

    async fn view(&self, p: &Pool) -> Result<pb::Pool, Status> {
        Ok(self.views(std::slice::from_ref(p), &self.fleet().await?).await?.remove(0).0)
    }

    /// A pool its nodes name without a record.
    fn unmanaged(&self, org: &OrgId, names: Option<&str>, (snap, active): &Fleet) -> Vec<pb::Pool> {
        let found: BTreeSet<&str> = snap
            .nodes
            .iter()
            .filter(|n| &n.org_id == org && n.project_id.is_none())
            .map(|n| n.pool.as_str())
            .filter(|p| names.is_none_or(|want| want == *p))
            .collect();
        found
            .into_iter()
            .map(|name| {
                let p = Pool {
                    org_id: org.clone(),
                    name: name.to_owned(),
                    spec: PoolSpec::default(),
                    desired: 0,
                    version: 0,
                    created_at: 0,
                    updated_at: 0,
                    scaled_at: 0,
                };
                let f: Facts = facts(&p, &snap.nodes, active, &[]);
                let mut v = to_pb(&p, &f, None);
                v.managed = false;
                v.spec = None;
                (v.created_at, v.updated_at, v.scaled_at) = (None, None, None);
                v.desired = members(&snap.nodes, org, name).count() as u32;
                v
            })
            .filter(|v| v.nodes > 0)
            .collect()
    }
}

#[tonic::async_trait]
impl pb::pool_service_server::PoolService for PoolApi {
    async fn create_pool(
        &self,
        req: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let spec = PoolSpec::from_pb(req.spec.as_ref(), None).map_err(status)?;
        self.check_provider(&spec)?;
        let c =
            self.app.store.pool_create(&org, &req.name, &spec, req.desired, now_ms()).await.map_err(store_status)?;
        let p = self.app.effects().commit(c);
        self.app.signals.pools().notify_one();
        tracing::info!(organization = %org, pool = %p.name, desired = p.desired, "pool created");
        Ok(Response::new(pb::CreatePoolResponse { pool: Some(self.view(&p).await?) }))
    }

    async fn update_pool(
        &self,
        req: Request<pb::UpdatePoolRequest>,
    ) -> Result<Response<pb::UpdatePoolResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        // Checked before the write, against no stored spec: the command name.
        self.check_provider(&PoolSpec::from_pb(req.spec.as_ref(), None).map_err(status)?)?;
        let spec = req.spec.clone();
        let c = self
            .app
            .store
            .pool_update(
                &org,
                &req.name,
                req.expected_version,
                move |stored| PoolSpec::from_pb(spec.as_ref(), Some(stored)),
                now_ms(),
            )
            .await
            .map_err(store_status)?;
        let p = self.app.effects().commit(c);
        self.app.signals.pools().notify_one();
        tracing::info!(organization = %org, pool = %p.name, version = p.version, "pool updated");
        Ok(Response::new(pb::UpdatePoolResponse { pool: Some(self.view(&p).await?) }))
    }

    async fn get_pool(&self, req: Request<pb::GetPoolRequest>) -> Result<Response<pb::GetPoolResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Viewer)?;
        let name = &req.get_ref().name;
        let fleet = self.fleet().await?;
        match self.app.store.pool_get(&org, name).await.map_err(store_status)? {
            Some(p) => {
                let (pool, open) = self.views(&[p], &fleet).await?.remove(0);
                Ok(Response::new(pb::GetPoolResponse {
                    pool: Some(pool),
                    requests: open.iter().map(ScaleRequest::to_pb).collect(),
                }))
            }
            None => match self.unmanaged(&org, Some(name), &fleet).pop() {
                Some(pool) => Ok(Response::new(pb::GetPoolResponse { pool: Some(pool), requests: vec![] })),
                None => Err(status(Error::not_found(format!("pool {name} of organisation {org} not found")))),
            },
        }
    }

    async fn list_pools(&self, req: Request<pb::ListPoolsRequest>) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Viewer)?;
        let records = self.app.store.pool_list(Some(&org)).await.map_err(store_status)?;
        let fleet = self.fleet().await?;
        let mut pools: Vec<pb::Pool> = self.views(&records, &fleet).await?.into_iter().map(|(p, _)| p).collect();
        let named: BTreeSet<String> = records.iter().map(|p| p.name.clone()).collect();
        pools.extend(self.unmanaged(&org, None, &fleet).into_iter().filter(|p| !named.contains(&p.name)));
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn scale_pool(&self, req: Request<pb::ScalePoolRequest>) -> Result<Response<pb::ScalePoolResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Admin)?;
        let req = req.into_inner();
        let c = self
            .app
            .store
            .pool_scale(&org, &req.name, req.desired, &req.reason, serde_json::json!({}), now_ms())
            .await
            .map_err(store_status)?;
        let (p, from) = self.app.effects().commit(c);
        self.app.signals.pools().notify_one();
        tracing::info!(organization = %org, pool = %p.name, from, to = p.desired, "pool scaled");
        Ok(Response::new(pb::ScalePoolResponse { pool: Some(self.view(&p).await?) }))
    }

    async fn delete_pool(
        &self,
        req: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Admin)?;
        let c = self.app.store.pool_delete(&org, &req.get_ref().name, now_ms()).await.map_err(store_status)?;
        let p = self.app.effects().commit(c);
        tracing::info!(organization = %org, pool = %p.name, "pool deleted");
        let mut v = to_pb(&p, &Facts::default(), None);
        v.managed = false;
        Ok(Response::new(pb::DeletePoolResponse { pool: Some(v) }))
    }

    async fn list_scale_requests(
        &self,
        req: Request<pb::ListScaleRequestsRequest>,
    ) -> Result<Response<pb::ListScaleRequestsResponse>, Status> {
        let org = self.org(&req, &req.get_ref().organization_id, OrgRole::Viewer)?;
        let req = req.into_inner();
        if self.app.store.pool_get(&org, &req.name).await.map_err(store_status)?.is_none() {
            return Err(status(Error::not_found(format!("pool {} of organisation {org} not found", req.name))));
        }
        let limit = if req.limit == 0 { 100 } else { req.limit };
        let rs = self.app.store.scale_requests(&org, &req.name, limit).await.map_err(store_status)?;
        Ok(Response::new(pb::ListScaleRequestsResponse { requests: rs.iter().map(ScaleRequest::to_pb).collect() }))
    }
}
