//! `tether.v1.InsightsService`: nodes' reliability scores, explained
//! (`crate::scoring`).

use std::sync::Arc;

use tether_proto::pb;
use tether_types::{Node, NodeId, NodeStatus, millis_to_timestamp};
use tonic::{Request, Response, Status};

use super::store_status;
use crate::app::App;
use crate::scoring::{Board, HoldView};

const DEFAULT_LIMIT: u32 = 20;

pub struct InsightsApi {
    app: Arc<App>,
}

impl InsightsApi {
    pub fn new(app: Arc<App>) -> Self {
        InsightsApi { app }
    }
}

fn to_pb(id: &NodeId, board: &Board, hold: Option<&HoldView>) -> pb::NodeInsights {
    let mut out = pb::NodeInsights {
        node_id: id.to_string(),
        score: 1.0,
        auto_quarantined_at: hold.map(|h| millis_to_timestamp(h.quarantined_at)),
        release_at: hold.and_then(|h| h.release_at).map(millis_to_timestamp),
        ..Default::default()
    };
    if let Some(i) = board.nodes.get(id) {
        let explained = i.explain();
        out.score = i.score;
        out.scored = true;
        out.beats = i.figures.beats;
        out.computed_at = Some(millis_to_timestamp(i.computed_at));
        out.reasons = explained.reasons;
        out.components = explained
            .components
            .iter()
            .map(|c| pb::ScoreComponent {
                name: c.name.to_string(),
                penalty: c.penalty,
                weight: c.weight,
                value: c.value,
                detail: c.detail.clone(),
            })
            .collect();
    }
    out
}

#[tonic::async_trait]
impl pb::insights_service_server::InsightsService for InsightsApi {
    async fn get_node_insights(
        &self,
        req: Request<pb::GetNodeInsightsRequest>,
    ) -> Result<Response<pb::GetNodeInsightsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let node = super::nodes::visible(&self.app, &who, &req.get_ref().node_id).await?;
        let insights = to_pb(&node.id, &self.app.scores.get(), self.app.scores.holds().get(&node.id));
        Ok(Response::new(pb::GetNodeInsightsResponse { insights: Some(insights) }))
    }

    async fn list_node_risk(
        &self,
        req: Request<pb::ListNodeRiskRequest>,
    ) -> Result<Response<pb::ListNodeRiskResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let scope = super::nodes::scope(&who)?;
        let limit = match req.get_ref().limit {
            0 => DEFAULT_LIMIT,
            n => n.min(1000),
        } as usize;
        let snap = self.app.nodes.get(&self.app.store).await.map_err(store_status)?;
        let (board, holds) = (self.app.scores.get(), self.app.scores.holds());
        let mut ranked: Vec<(&Node, f64)> = snap
            .nodes
            .iter()
            .filter(|n| {
                n.status != NodeStatus::Left && super::nodes::sees(&self.app, &scope, n) && who.sees_node(n.place())
            })
            .filter_map(|n| board.score(&n.id).map(|s| (n, s)))
            .collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)));
        let nodes = ranked.into_iter().take(limit).map(|(n, _)| to_pb(&n.id, &board, holds.get(&n.id))).collect();
        Ok(Response::new(pb::ListNodeRiskResponse { nodes }))
    }
}
