//! `tetherctl pools`: an organisation's pools, their desired counts and
//! providers, and the requests made to them.

use clap::{Args, Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;

#[derive(Subcommand)]
pub(crate) enum PoolsCmd {
    /// The organisation's pools (managed and unmanaged).
    List {
        #[arg(long)]
        org: Option<String>,
    },
    /// A pool with its nodes, capacity and open requests.
    Get {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Create a managed pool.
    Create {
        name: String,
        #[arg(long)]
        org: Option<String>,
        /// The first desired count (default: min).
        #[arg(long, default_value_t = 0)]
        desired: u32,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Replace a pool's limits, provider and autoscaling.
    Update {
        name: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Set a pool's desired count.
    Scale {
        name: String,
        desired: u32,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete a pool's record (its nodes stay, unmanaged).
    Delete {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// A pool's provider requests, newest first.
    Requests {
        name: String,
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Metric {
    Cpu,
    Memory,
    PendingJobs,
}

#[derive(Args)]
pub(crate) struct SpecArgs {
    #[arg(long, default_value_t = 0)]
    min: u32,
    /// 0: 10000.
    #[arg(long, default_value_t = 0)]
    max: u32,
    /// The provider's webhook URL.
    #[arg(long, conflicts_with = "command")]
    webhook: Option<String>,
    /// The webhook's bearer token (on update, unset keeps the stored one).
    #[arg(long, env = "TETHER_POOL_WEBHOOK_TOKEN", requires = "webhook")]
    webhook_token: Option<String>,
    /// A command registered on the control plane with --pool-command.
    #[arg(long)]
    command: Option<String>,
    /// A request fails if its nodes have not joined (or gone) by then.
    #[arg(long)]
    request_timeout: Option<humantime::Duration>,
    /// Scale-down drains a node for at most this long.
    #[arg(long)]
    drain_timeout: Option<humantime::Duration>,
    /// Turn autoscaling on, by this metric.
    #[arg(long)]
    autoscale: Option<Metric>,
    /// CPU or memory: the allocated percentage to keep.
    #[arg(long, default_value_t = 0)]
    target_percent: u32,
    /// Pending jobs: count a job once it has waited this long.
    #[arg(long)]
    pending_after: Option<humantime::Duration>,
    /// Pending jobs: waiting jobs per extra node.
    #[arg(long, default_value_t = 0)]
    jobs_per_node: u32,
    #[arg(long)]
    period: Option<humantime::Duration>,
    #[arg(long)]
    cooldown: Option<humantime::Duration>,
    #[arg(long, default_value_t = 0)]
    max_step_up: u32,
    #[arg(long, default_value_t = 0)]
    max_step_down: u32,
    /// Apply a scale-up in steps, the first this percentage of it.
    #[arg(long, default_value_t = 0)]
    canary_percent: u32,
}

fn dur(d: Option<humantime::Duration>) -> anyhow::Result<Option<prost_types::Duration>> {
    Ok(match d {
        Some(d) => Some(prost_types::Duration::try_from(*d)?),
        None => None,
    })
}

impl SpecArgs {
    fn to_pb(&self) -> anyhow::Result<pb::PoolSpec> {
        let provider = match (&self.webhook, &self.command) {
            (Some(url), _) => Some(pb::PoolProvider {
                webhook: Some(pb::WebhookProvider {
                    url: url.clone(),
                    bearer_token: self.webhook_token.clone().unwrap_or_default(),
                    has_bearer_token: false,
                }),
                command: None,
            }),
            (None, Some(name)) => {
                Some(pb::PoolProvider { webhook: None, command: Some(pb::CommandProvider { name: name.clone() }) })
            }
            (None, None) => None,
        };
        let autoscale = match self.autoscale {
            None => None,
            Some(m) => Some(pb::Autoscale {
                enabled: true,
                metric: match m {
                    Metric::Cpu => pb::AutoscaleMetric::Cpu,
                    Metric::Memory => pb::AutoscaleMetric::Memory,
                    Metric::PendingJobs => pb::AutoscaleMetric::PendingJobs,
                } as i32,
                target_percent: self.target_percent,
                pending_after: dur(self.pending_after)?,
                jobs_per_node: self.jobs_per_node,
                period: dur(self.period)?,
                cooldown: dur(self.cooldown)?,
                max_step_up: self.max_step_up,
                max_step_down: self.max_step_down,
                canary_percent: self.canary_percent,
            }),
        };
        Ok(pb::PoolSpec {
            min: self.min,
            max: self.max,
            provider,
            request_timeout: dur(self.request_timeout)?,
            drain_timeout: dur(self.drain_timeout)?,
            autoscale,
        })
    }
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: PoolsCmd) -> anyhow::Result<i32> {
    let org = |o: Option<String>| crate::settings::org_of(c, o);
    match cmd {
        PoolsCmd::List { org: o } => {
            let organization_id = org(o).await?;
            let r = c.pools().list_pools(pb::ListPoolsRequest { organization_id }).await?.into_inner();
            out.pools(&r);
        }
        PoolsCmd::Get { name, org: o } => {
            let organization_id = org(o).await?;
            let r = c.pools().get_pool(pb::GetPoolRequest { organization_id, name }).await?.into_inner();
            out.pool(&r);
        }
        PoolsCmd::Create { name, org: o, desired, spec } => {
            let organization_id = org(o).await?;
            let req = pb::CreatePoolRequest { organization_id, name, spec: Some(spec.to_pb()?), desired };
            let r = c.pools().create_pool(req).await?.into_inner();
            out.pool(&pb::GetPoolResponse { pool: r.pool, requests: vec![] });
        }
        PoolsCmd::Update { name, org: o, spec } => {
            let organization_id = org(o).await?;
            let req = pb::UpdatePoolRequest { organization_id, name, spec: Some(spec.to_pb()?), expected_version: 0 };
            let r = c.pools().update_pool(req).await?.into_inner();
            out.pool(&pb::GetPoolResponse { pool: r.pool, requests: vec![] });
        }
        PoolsCmd::Scale { name, desired, org: o, reason } => {
            let organization_id = org(o).await?;
            let req = pb::ScalePoolRequest { organization_id, name, desired, reason };
            let r = c.pools().scale_pool(req).await?.into_inner();
            out.pool(&pb::GetPoolResponse { pool: r.pool, requests: vec![] });
        }
        PoolsCmd::Delete { name, org: o } => {
            let organization_id = org(o).await?;
            let r = c.pools().delete_pool(pb::DeletePoolRequest { organization_id, name: name.clone() }).await?;
            out.message(&r.into_inner(), &format!("pool {name} deleted"));
        }
        PoolsCmd::Requests { name, org: o, limit } => {
            let organization_id = org(o).await?;
            let req = pb::ListScaleRequestsRequest { organization_id, name, limit };
            let r = c.pools().list_scale_requests(req).await?.into_inner();
            out.scale_requests(&r);
        }
    }
    Ok(0)
}
