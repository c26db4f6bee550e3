//! `tether.v1.PlacementService`: the scheduler, dry.

use std::sync::Arc;

use tether_proto::pb;
use tether_scheduler::{NodeView, Objective, Request as Placement, rank};
use tether_types::{Constraints, Error, ProjectAccess, Resources, Role};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::App;

pub struct PlacementApi {
    app: Arc<App>,
}

impl PlacementApi {
    pub fn new(app: Arc<App>) -> Self {
        PlacementApi { app }
    }
}

/// The scheduler's view of the nodes a project may use, as of now, and what
/// the project's active allocations hold.
pub async fn views(app: &App, access: &ProjectAccess) -> Result<(Vec<NodeView>, tether_scheduler::Ledger), Status> {
    let snap = app.nodes.get(&app.store).await.map_err(store_status)?;
    let nodes: Vec<_> = snap.nodes.iter().filter(|n| access.may_use(n.place())).cloned().collect();
    let active = app.store.allocations_active().await.map_err(store_status)?;
    Ok((crate::fleet::snapshot::node_views(&nodes, &active, &app.scores.get()), crate::dispatch::usage(&active)))
}

fn objective(v: i32) -> Result<Objective, Status> {
    match pb::Objective::try_from(v) {
        Ok(pb::Objective::Unspecified | pb::Objective::Balanced) => Ok(Objective::Balanced),
        Ok(pb::Objective::Durability) => Ok(Objective::Durability),
        Ok(pb::Objective::Latency) => Ok(Objective::Latency),
        Ok(pb::Objective::Cost) => Ok(Objective::Cost),
        Err(_) => Err(status(Error::invalid(format!("unknown objective {v}")))),
    }
}

#[tonic::async_trait]
impl pb::placement_service_server::PlacementService for PlacementApi {
    async fn suggest_placement(
        &self,
        req: Request<pb::SuggestPlacementRequest>,
    ) -> Result<Response<pb::SuggestPlacementResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let p = who.in_project(Role::Viewer)?;
        let req = req.into_inner();
        let resources = Resources::try_from(req.resources).map_err(status)?;
        let constraints = Constraints::try_from(req.constraints).map_err(status)?;
        let placement = Placement::new(p.access.clone(), resources, constraints, objective(req.objective)?);
        let (nodes, ledger) = views(&self.app, &p.access).await?;
        let (ranked, filtered) = rank(&nodes, &placement);
        let limit = if req.limit == 0 { 10 } else { req.limit.min(1000) } as usize;
        // Over quota, no node is a candidate: each says why.
        if let Some(why) = ledger.over_quota(&placement) {
            let all = ranked.iter().map(|s| s.node.clone()).chain(filtered.iter().map(|f| f.node.clone()));
            return Ok(Response::new(pb::SuggestPlacementResponse {
                candidates: Vec::new(),
                filtered: all.map(|n| pb::FilteredNode { node_id: n.to_string(), reason: why.clone() }).collect(),
                quota_exceeded: why,
            }));
        }
        Ok(Response::new(pb::SuggestPlacementResponse {
            candidates: ranked
                .into_iter()
                .take(limit)
                .map(|s| pb::Candidate { node_id: s.node.to_string(), score: s.score, reasons: s.reasons })
                .collect(),
            filtered: filtered
                .into_iter()
                .map(|f| pb::FilteredNode { node_id: f.node.to_string(), reason: f.reason })
                .collect(),
            quota_exceeded: String::new(),
        }))
    }
}
