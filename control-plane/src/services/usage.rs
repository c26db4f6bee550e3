//! `tether.v1.UsageService`: a project's metered usage per period, and
//! usage ingested from elsewhere (`tether_types::usage`).

use std::sync::Arc;

use tether_proto::pb;
use tether_store::UsageIngest;
use tether_types::usage::{Period, meter};
use tether_types::{Role, millis_to_timestamp, timestamp_to_millis};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::{App, now_ms};

pub struct UsageApi {
    app: Arc<App>,
}

impl UsageApi {
    pub fn new(app: Arc<App>) -> Self {
        UsageApi { app }
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for UsageApi {
    async fn ingest_usage(
        &self,
        req: Request<pb::IngestUsageRequest>,
    ) -> Result<Response<pb::IngestUsageResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Operator)?;
        let (org, project) = (p.access.org.clone(), p.id().clone());
        let now = now_ms();
        let records: Vec<UsageIngest> = req
            .into_inner()
            .records
            .into_iter()
            .map(|r| UsageIngest {
                metric: r.metric,
                quantity: r.quantity,
                used_at: r.time.as_ref().map_or(now, timestamp_to_millis),
                idempotency_key: r.idempotency_key,
            })
            .collect();
        let c = self.app.store.usage_ingest(&org, &project, &records, now).await.map_err(store_status)?;
        let (accepted, duplicates) = self.app.effects().commit(c);
        Ok(Response::new(pb::IngestUsageResponse { accepted, duplicates }))
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let project = who.in_project(Role::Viewer)?.id().clone();
        let now = now_ms();
        let period = match req.get_ref().period.as_str() {
            "" => Period::of(now),
            p => Period::parse(p).map_err(status)?,
        };
        let (held, nodes, ingested) =
            self.app.store.usage_rows(&project, period.start(), period.end()).await.map_err(store_status)?;
        let u = meter(period, now, &held, &nodes, &ingested);
        Ok(Response::new(pb::GetUsageResponse {
            project_id: project.to_string(),
            period: period.to_string(),
            period_start: Some(millis_to_timestamp(period.start())),
            period_end: Some(millis_to_timestamp(period.end())),
            cpu_seconds: u.cpu_seconds,
            memory_mb_seconds: u.memory_mb_seconds,
            gpu_seconds: u.gpu_seconds,
            node_cpu_hours: u.node_cpu_hours,
            node_memory_mb_hours: u.node_memory_mb_hours,
            node_gpu_hours: u.node_gpu_hours,
            ingested: u.ingested.into_iter().map(|(metric, quantity)| pb::IngestedUsage { metric, quantity }).collect(),
            computed_at: Some(millis_to_timestamp(now)),
        }))
    }
}
