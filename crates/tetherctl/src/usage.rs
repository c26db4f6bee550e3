//! `tetherctl usage`: the project's metered usage, and ingesting usage
//! measured elsewhere.

use clap::Subcommand;
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;

#[derive(Subcommand)]
pub(crate) enum UsageCmd {
    /// The project's usage in a month (default: this one).
    Get {
        /// YYYY-MM.
        #[arg(long)]
        period: Option<String>,
    },
    /// Record usage measured elsewhere; a key sent again counts once.
    Ingest {
        /// e.g. storage_bytes, egress_bytes, api_operations.
        #[arg(long)]
        metric: String,
        #[arg(long)]
        quantity: u64,
        /// Unique per project.
        #[arg(long)]
        key: String,
    },
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: UsageCmd) -> anyhow::Result<i32> {
    match cmd {
        UsageCmd::Get { period } => {
            let r = c.usage().get_usage(pb::GetUsageRequest { period: period.unwrap_or_default() }).await?.into_inner();
            out.usage(&r);
        }
        UsageCmd::Ingest { metric, quantity, key } => {
            let record = pb::UsageRecord { metric, quantity, time: None, idempotency_key: key };
            let r = c.usage().ingest_usage(pb::IngestUsageRequest { records: vec![record] }).await?.into_inner();
            out.ingested(&r);
        }
    }
    Ok(0)
}
