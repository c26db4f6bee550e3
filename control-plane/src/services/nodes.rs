//! `tether.v1.NodeService`: the registry as operators see it.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::pb;
use tether_store::{Event, NodeFilter, NodeScope};
use tether_types::{DesiredNodeState, Error, LabelSelector, Node, NodeId, NodeStatus, OrgRole, Role};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::{App, now_ms};
use crate::auth::Caller;

use crate::stream::BoxStream;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// How often a watcher looks at the log without a local wake-up, to see
/// commits made by other replicas.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);

pub struct NodeApi {
    app: Arc<App>,
}

impl NodeApi {
    pub fn new(app: Arc<App>) -> Self {
        NodeApi { app }
    }

    async fn visible(&self, who: &Caller, id: &str) -> Result<Node, Status> {
        visible(&self.app, who, id).await
    }

    fn to_pb(&self, n: &Node) -> pb::Node {
        let (usage, last_seen) = self.app.registry.live(&n.id);
        let mut pb = n.to_pb(usage);
        if last_seen > n.last_seen_at {
            pb.last_seen_at = Some(tether_types::millis_to_timestamp(last_seen));
        }
        pb
    }
}

/// A node the caller may see; NOT_FOUND for any other, as for one that does
/// not exist.
pub(super) async fn visible(app: &App, who: &Caller, id: &str) -> Result<Node, Status> {
    let id = NodeId::parse(id).map_err(status)?;
    match app.store.node_get(&id).await.map_err(store_status)? {
        Some(n) if who.sees_node(n.place()) => Ok(n),
        _ => Err(status(Error::not_found(format!("node {id} not found")))),
    }
}

/// Which nodes the caller sees, with at least a viewer's standing: a
/// project's nodes when the call acts on a project, else the organisation's.
pub(super) fn scope(who: &Caller) -> Result<NodeScope, Status> {
    if let Some(p) = &who.project {
        who.in_project(Role::Viewer)?;
        return Ok(NodeScope::Project { org: p.org().clone(), project: p.id().clone() });
    }
    let org = who.org_id().cloned().ok_or_else(|| status(Error::invalid("name a project or an organisation")))?;
    who.in_org(&org, OrgRole::Viewer)?;
    Ok(NodeScope::Org(org))
}

/// Whether a node is in `scope` as the tenancy records stand now.
pub(super) fn sees(app: &App, scope: &NodeScope, n: &Node) -> bool {
    match scope {
        NodeScope::Org(o) => &n.org_id == o,
        NodeScope::Project { project, .. } => {
            app.auth.tenants.get().access.get(project).is_some_and(|a| a.may_use(n.place()))
        }
    }
}

fn parse_page_token(t: &str) -> Result<Option<(i64, NodeId)>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || status(Error::invalid("page_token is malformed; pass next_page_token unchanged"));
    let (at, id) = t.split_once('.').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, NodeId::parse(id).map_err(|_| bad())?)))
}

fn event_to_pb(ev: &Event) -> Option<(Node, pb::WatchNodesResponse)> {
    let node: Node = match serde_json::from_value(ev.payload.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(seq = ev.seq, error = &e as &dyn std::error::Error, "node event payload does not decode");
            return None;
        }
    };
    let kind = match ev.kind.as_str() {
        "node.registered" => pb::NodeEventType::Added,
        "node.deregistered" => pb::NodeEventType::Removed,
        _ => pb::NodeEventType::Updated,
    };
    let msg = pb::WatchNodesResponse {
        r#type: kind as i32,
        node: Some(node.to_pb(None)),
        sequence: ev.seq as u64,
        kind: ev.kind.clone(),
    };
    Some((node, msg))
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for NodeApi {
    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let req = req.into_inner();
        let selector = LabelSelector::parse(&req.label_selector).map_err(status)?;
        let filter = NodeFilter {
            scope: scope(&who)?,
            status: NodeStatus::from_pb(req.status).map_err(status)?,
            pool: (!req.pool.is_empty()).then(|| req.pool.clone()),
        };
        let want = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let mut after = parse_page_token(&req.page_token)?;
        let mut nodes = Vec::new();
        let mut next = None;
        // The selector is applied here, so keep reading until the page is full.
        loop {
            let page = self.app.store.node_list(&filter, after.as_ref(), want).await.map_err(store_status)?;
            let exhausted = page.next.is_none();
            for n in page.nodes {
                if !selector.matches(&n.labels) || !who.sees_node(n.place()) {
                    continue;
                }
                if nodes.len() == want as usize {
                    next = after.clone();
                    break;
                }
                after = Some((n.registered_at, n.id.clone()));
                nodes.push(self.to_pb(&n));
            }
            if next.is_some() {
                break;
            }
            if exhausted {
                break;
            }
            after = page.next;
        }
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            next_page_token: next.map(|(at, id)| format!("{at}.{id}")).unwrap_or_default(),
        }))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        scope(&who)?;
        let n = self.visible(&who, &req.get_ref().node_id).await?;
        let mut node = self.to_pb(&n);
        if n.transport == tether_types::NodeTransport::Http
            && let Some((json, at)) = self.app.store.http_agent_report(&n.id).await.map_err(store_status)?
        {
            // Checked when it arrived: read back as it was stored (a row that
            // no longer decodes is skipped).
            node.report = serde_json::from_str::<tether_types::NodeReport>(&json).ok().map(|r| r.to_pb(at));
        } else if let Some((r, at)) = self.app.node_reports.get(&n.id) {
            node.report = Some(r.to_pb(at));
        }
        Ok(Response::new(pb::GetNodeResponse { node: Some(node) }))
    }

    type WatchNodesStream = BoxStream<pb::WatchNodesResponse>;

    async fn watch_nodes(
        &self,
        req: Request<pb::WatchNodesRequest>,
    ) -> Result<Response<Self::WatchNodesStream>, Status> {
        let who = self.app.auth.caller(&req)?;
        let scope = scope(&who)?;
        let req = req.into_inner();
        let org = match &scope {
            NodeScope::Org(o) | NodeScope::Project { org: o, .. } => o.clone(),
        };
        let cursor = match req.since_sequence {
            0 => self.app.store.events_head().await.map_err(store_status)?,
            n => {
                let n = i64::try_from(n).map_err(|_| status(Error::invalid("since_sequence is out of range")))?;
                crate::events::check_resumable(&self.app.store, n).await?;
                n
            }
        };
        let (tx, rx) = crate::stream::channel(64);
        if req.send_initial {
            let filter = NodeFilter { scope: scope.clone(), status: None, pool: None };
            let mut after = None;
            loop {
                let page = self.app.store.node_list(&filter, after.as_ref(), 500).await.map_err(store_status)?;
                for n in page.nodes.iter().filter(|n| who.sees_node(n.place())) {
                    let msg = pb::WatchNodesResponse {
                        r#type: pb::NodeEventType::Added as i32,
                        node: Some(self.to_pb(n)),
                        sequence: 0,
                        kind: "node.snapshot".into(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return Err(Status::cancelled("watcher went away"));
                    }
                }
                match page.next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
        let app = self.app.clone();
        // A token confined to one node hears only of that one.
        let only = who.claims.node.clone();
        let q = tether_store::EventQuery {
            kind_prefix: "node.".into(),
            ..tether_store::EventQuery::new(tether_store::EventScope::Org(org), cursor)
        };
        self.app.tasks.spawn(async move {
            let app = &app;
            crate::events::follow(&app.events, &app.store, &app.shutdown, q, tx, move |ev| {
                // Only the nodes the caller sees, by the grants as they are
                // now (a pool granted later shows from then on).
                let (node, msg) = event_to_pb(ev)?;
                (sees(app, &scope, &node) && only.as_ref().is_none_or(|only| only == &node.id)).then_some(msg)
            })
            .await
        });
        Ok(Response::new(crate::stream::idle_limited(rx, self.app.config.stream_idle_timeout)))
    }

    async fn set_desired_state(
        &self,
        req: Request<pb::SetDesiredStateRequest>,
    ) -> Result<Response<pb::SetDesiredStateResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let node = self.visible(&who, &req.get_ref().node_id).await?;
        who.may_operate_node(node.place())?;
        let req = req.into_inner();
        let id = node.id;
        let state = DesiredNodeState::from_pb(req.state).map_err(status)?;
        tether_types::validate_text("reason", &req.reason).map_err(status)?;
        if state == DesiredNodeState::Quarantined && req.reason.is_empty() {
            return Err(status(Error::invalid("quarantine requires a reason")));
        }
        let now = now_ms();
        let deadline = (state == DesiredNodeState::Draining)
            .then(|| super::ttl(req.drain_deadline, DEFAULT_DRAIN_DEADLINE).map(|d| now + d.as_millis() as i64))
            .transpose()?;
        let node =
            crate::ops::nodes::set_desired(&self.app, &id, state, &req.reason, deadline).await.map_err(store_status)?;
        Ok(Response::new(pb::SetDesiredStateResponse { node: Some(self.to_pb(&node)) }))
    }

    async fn deregister_node(
        &self,
        req: Request<pb::DeregisterNodeRequest>,
    ) -> Result<Response<pb::DeregisterNodeResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let node = self.visible(&who, &req.get_ref().node_id).await?;
        who.may_operate_node(node.place())?;
        let node = crate::ops::nodes::deregister(&self.app, &node.id).await.map_err(store_status)?;
        Ok(Response::new(pb::DeregisterNodeResponse { node: Some(node.to_pb(None)) }))
    }
}
