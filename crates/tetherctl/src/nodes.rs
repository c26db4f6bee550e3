//! `tetherctl nodes`.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use tether_types::duration_to_pb;

#[derive(Subcommand)]
pub(crate) enum NodesCmd {
    /// List nodes.
    List {
        #[arg(long, value_enum)]
        status: Option<NodeStatusArg>,
        /// Label selector, e.g. `zone in (a,b),!gpu`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Show one node.
    Get { node_id: String },
    /// Stream registry changes until interrupted.
    Watch {
        /// List current nodes first.
        #[arg(long)]
        initial: bool,
    },
    /// Stop placing new work on the node.
    Pause {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Make the node active again.
    Resume { node_id: String },
    /// Move work off the node; jobs get until the deadline.
    Drain {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// e.g. 10m, 1h.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
    },
    /// Stop all work on the node now.
    Stop {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Exclude the node from scheduling, with a reason.
    Quarantine {
        node_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a quarantine.
    Unquarantine { node_id: String },
    /// The node's reliability score and what makes it.
    Insights { node_id: String },
    /// The riskiest nodes, lowest score first, with their reasons.
    Risk {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NodeStatusArg {
    Pending,
    Ready,
    Unreachable,
    Down,
    Left,
}

pub(crate) async fn set_state(
    c: &Clients,
    out: &Out,
    node_id: String,
    state: pb::DesiredNodeState,
    reason: String,
    deadline: Option<Duration>,
) -> anyhow::Result<i32> {
    let r = c
        .nodes()
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id,
            state: state as i32,
            reason,
            drain_deadline: deadline.map(duration_to_pb),
        })
        .await?
        .into_inner();
    out.node(r.node.as_ref().expect("a node"));
    Ok(0)
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: NodesCmd) -> anyhow::Result<i32> {
    use pb::DesiredNodeState as D;
    match cmd {
        NodesCmd::List { status, selector, pool } => {
            let status = status.map(|s| match s {
                NodeStatusArg::Pending => pb::NodeStatus::Pending,
                NodeStatusArg::Ready => pb::NodeStatus::Ready,
                NodeStatusArg::Unreachable => pb::NodeStatus::Unreachable,
                NodeStatusArg::Down => pb::NodeStatus::Down,
                NodeStatusArg::Left => pb::NodeStatus::Left,
            });
            let mut all = pb::ListNodesResponse::default();
            let mut token = String::new();
            loop {
                let page = c
                    .nodes()
                    .list_nodes(pb::ListNodesRequest {
                        status: status.map(|s| s as i32).unwrap_or(0),
                        label_selector: selector.clone().unwrap_or_default(),
                        pool: pool.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.nodes.extend(page.nodes);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            out.nodes(&all);
        }
        NodesCmd::Get { node_id } => {
            let r = c.nodes().get_node(pb::GetNodeRequest { node_id }).await?.into_inner();
            out.node(r.node.as_ref().expect("a node"));
        }
        NodesCmd::Watch { initial } => {
            let mut s = c
                .nodes()
                .watch_nodes(pb::WatchNodesRequest { send_initial: initial, since_sequence: 0 })
                .await?
                .into_inner();
            while let Some(ev) = s.message().await? {
                out.node_event(&ev);
            }
        }
        NodesCmd::Pause { node_id, reason } => return set_state(c, out, node_id, D::Paused, reason, None).await,
        NodesCmd::Resume { node_id } => return set_state(c, out, node_id, D::Active, String::new(), None).await,
        NodesCmd::Drain { node_id, reason, deadline } => {
            return set_state(c, out, node_id, D::Draining, reason, deadline).await;
        }
        NodesCmd::Stop { node_id, reason } => return set_state(c, out, node_id, D::Stopped, reason, None).await,
        NodesCmd::Quarantine { node_id, reason } => {
            return set_state(c, out, node_id, D::Quarantined, reason, None).await;
        }
        NodesCmd::Insights { node_id } => {
            let r = c.insights().get_node_insights(pb::GetNodeInsightsRequest { node_id }).await?.into_inner();
            out.insights(r.insights.as_ref().expect("insights"));
        }
        NodesCmd::Risk { limit } => {
            let r = c.insights().list_node_risk(pb::ListNodeRiskRequest { limit }).await?.into_inner();
            out.risk(&r);
        }
        NodesCmd::Unquarantine { node_id } => return set_state(c, out, node_id, D::Active, String::new(), None).await,
    }
    Ok(0)
}
