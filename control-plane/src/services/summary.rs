//! `tether.v1.SummaryService`: an organisation at a glance.

use std::collections::HashMap;
use std::sync::Arc;

use tether_proto::pb;
use tether_types::usage::{Usage, meter, price};
use tether_types::{OrgId, OrgRole, millis_to_timestamp};
use tonic::{Request, Response, Status};

use super::usage::{cost_pb, period_of, price_book};
use super::{status, store_status};
use crate::app::{App, now_ms};

pub struct SummaryApi {
    app: Arc<App>,
}

impl SummaryApi {
    pub fn new(app: Arc<App>) -> Self {
        SummaryApi { app }
    }
}

#[tonic::async_trait]
impl pb::summary_service_server::SummaryService for SummaryApi {
    async fn get_summary(
        &self,
        req: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = OrgId::parse(&req.get_ref().organization_id).map_err(status)?;
        who.in_org(&org, OrgRole::Viewer)?;
        let now = now_ms();
        let period = period_of(&req.get_ref().period, now)?;
        let app = &self.app;

        let snap = app.nodes.get(&app.store).await.map_err(store_status)?;
        let (mut by_status, mut by_desired) = (HashMap::new(), HashMap::new());
        for n in snap.nodes.iter().filter(|n| n.org_id == org) {
            *by_status.entry(n.status.as_str().to_string()).or_insert(0u32) += 1;
            *by_desired.entry(n.desired_state.as_str().to_string()).or_insert(0u32) += 1;
        }
        let holds = app.scores.holds();
        let auto = snap.nodes.iter().filter(|n| n.org_id == org && holds.contains_key(&n.id)).count() as u32;
        let pools = app
            .store
            .pool_list(Some(&org))
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|p| {
                let members: Vec<_> = crate::pools::members(&snap.nodes, &org, &p.name).collect();
                pb::PoolSummary {
                    ready: members.iter().filter(|n| crate::pools::is_ready(n)).count() as u32,
                    nodes: members.len() as u32,
                    desired: p.desired,
                    name: p.name,
                }
            })
            .collect();
        let jobs = app.store.job_counts(&org, period.start(), period.end()).await.map_err(store_status)?;

        // Usage over the organisation's projects, priced once.
        let projects: Vec<_> =
            app.auth.tenants.get().access.values().filter(|a| a.org == org).map(|a| a.project.clone()).collect();
        let mut total = Usage::default();
        for p in &projects {
            let (held, nodes, ingested) =
                app.store.usage_rows(p, period.start(), period.end()).await.map_err(store_status)?;
            total.add(&meter(period, now, &held, &nodes, &ingested));
        }
        let (book, version) = price_book(app, &org).await?;
        let cost = cost_pb(price(&book, "", &total.quantities()), &book, version);
        Ok(Response::new(pb::GetSummaryResponse {
            period: period.to_string(),
            nodes_by_status: by_status,
            nodes_by_desired_state: by_desired,
            nodes_auto_quarantined: auto,
            pools,
            jobs_by_status: jobs.into_iter().map(|(s, n)| (s, n.min(u64::from(u32::MAX)) as u32)).collect(),
            cpu_seconds: total.cpu_seconds,
            memory_mb_seconds: total.memory_mb_seconds,
            gpu_seconds: total.gpu_seconds,
            cost: Some(cost),
            computed_at: Some(millis_to_timestamp(now)),
        }))
    }
}
