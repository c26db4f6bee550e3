//! `tetherctl placement`.

use clap::{Subcommand, ValueEnum};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;
use crate::spec::Placement;

#[derive(Subcommand)]
pub(crate) enum PlacementCmd {
    /// Rank nodes for a job shape without placing anything.
    Suggest {
        #[command(flatten)]
        placement: Placement,
        #[arg(long, value_enum, default_value_t = ObjectiveArg::Balanced)]
        objective: ObjectiveArg,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ObjectiveArg {
    Balanced,
    Durability,
    Latency,
    Cost,
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: PlacementCmd) -> anyhow::Result<i32> {
    let PlacementCmd::Suggest { placement, objective, limit } = cmd;
    let objective = match objective {
        ObjectiveArg::Balanced => pb::Objective::Balanced,
        ObjectiveArg::Durability => pb::Objective::Durability,
        ObjectiveArg::Latency => pb::Objective::Latency,
        ObjectiveArg::Cost => pb::Objective::Cost,
    };
    let r = c
        .placement()
        .suggest_placement(pb::SuggestPlacementRequest {
            resources: Some(placement.resources()),
            constraints: Some(placement.constraints()),
            objective: objective as i32,
            limit,
        })
        .await?
        .into_inner();
    out.suggestions(&r);
    Ok(0)
}
