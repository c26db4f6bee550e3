//! `tether.v1.UsageService`: a project's metered usage per period, and
//! usage ingested from elsewhere (`tether_types::usage`).

use std::sync::Arc;

use std::collections::BTreeMap;
use tether_proto::pb;
use tether_store::UsageIngest;

use tether_types::settings::PriceBook;
use tether_types::usage::{Cost, Period, Usage, meter, price, provided};
use tether_types::{NodeId, OrgId, OrgRole, Role, millis_to_timestamp, timestamp_to_millis};
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

/// The organisation's price book and the settings version it is from.
pub(super) async fn price_book(app: &App, org: &OrgId) -> Result<(PriceBook, u64), Status> {
    let r = app.store.org_settings(org).await.map_err(store_status)?;
    Ok((r.settings.pricing, r.version))
}

pub(super) fn cost_pb(c: Cost, book: &PriceBook, version: u64) -> pb::Cost {
    pb::Cost {
        currency: book.currency().to_string(),
        total: c.total_nanos as f64 / 1e9,
        total_nanos: c.total_nanos,
        lines: c
            .lines
            .into_iter()
            .map(|l| pb::CostLine {
                resource: l.resource,
                quantity: l.quantity,
                unit_price_nanos: l.unit_price_nanos,
                cost_nanos: l.cost_nanos,
            })
            .collect(),
        unpriced: c.unpriced,
        price_book_version: version,
    }
}

pub(super) fn period_of(s: &str, now: i64) -> Result<Period, Status> {
    match s {
        "" => Ok(Period::of(now)),
        p => Period::parse(p).map_err(status),
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
        let p = who.in_project(Role::Viewer)?;
        let (org, project) = (p.access.org.clone(), p.id().clone());
        let now = now_ms();
        let period = period_of(&req.get_ref().period, now)?;
        let (held, nodes, ingested) =
            self.app.store.usage_rows(&project, period.start(), period.end()).await.map_err(store_status)?;
        let u = meter(period, now, &held, &nodes, &ingested);
        let (book, version) = price_book(&self.app, &org).await?;
        let cost = cost_pb(price(&book, "", &u.quantities()), &book, version);
        Ok(Response::new(pb::GetUsageResponse {
            cost: Some(cost),
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

    async fn quote_price(
        &self,
        req: Request<pb::QuotePriceRequest>,
    ) -> Result<Response<pb::QuotePriceResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = who.in_project(Role::Viewer)?.access.org.clone();
        let req = req.into_inner();
        let quantities: BTreeMap<String, u64> = req.quantities.into_iter().collect();
        let quantities: Vec<(String, f64)> = quantities.into_iter().map(|(r, q)| (r, q as f64)).collect();
        let (book, version) = price_book(&self.app, &org).await?;
        Ok(Response::new(pb::QuotePriceResponse {
            cost: Some(cost_pb(price(&book, &req.tier, &quantities), &book, version)),
        }))
    }

    async fn preview_payouts(
        &self,
        req: Request<pb::PreviewPayoutsRequest>,
    ) -> Result<Response<pb::PreviewPayoutsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let org = OrgId::parse(&req.get_ref().organization_id).map_err(status)?;
        who.in_org(&org, OrgRole::Admin)?;
        let now = now_ms();
        let period = period_of(&req.get_ref().period, now)?;
        let rows = self.app.store.payout_rows(&org, period.start(), period.end()).await.map_err(store_status)?;
        let mut by_node: BTreeMap<NodeId, Vec<tether_types::usage::Held>> = BTreeMap::new();
        for (node, h) in rows {
            by_node.entry(node).or_default().push(h);
        }
        let (book, version) = price_book(&self.app, &org).await?;
        let board = self.app.scores.get();
        let mut total = 0i64;
        let payouts = by_node
            .into_iter()
            .map(|(node, held)| {
                let u: Usage = provided(period, now, &held);
                let gross = price(&book, "", &u.quantities()).total_nanos;
                let reliability = board.score(&node).unwrap_or(1.0);
                let payout = (gross as f64 * reliability).round() as i64;
                total = total.saturating_add(payout);
                pb::NodePayout {
                    node_id: node.to_string(),
                    cpu_seconds: u.cpu_seconds,
                    memory_mb_seconds: u.memory_mb_seconds,
                    gpu_seconds: u.gpu_seconds,
                    gross_nanos: gross,
                    reliability,
                    payout_nanos: payout,
                }
            })
            .collect();
        Ok(Response::new(pb::PreviewPayoutsResponse {
            period: period.to_string(),
            currency: book.currency().to_string(),
            payouts,
            total_nanos: total,
            price_book_version: version,
        }))
    }
}
