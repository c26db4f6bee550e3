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
    /// What quantities would cost, by the organisation's price book.
    Quote {
        /// e.g. archive; default: the default tier.
        #[arg(long, default_value = "")]
        tier: String,
        /// RESOURCE=QUANTITY, e.g. storage_bytes=1000000000.
        #[arg(long = "quantity", value_parser = parse_pair)]
        quantities: Vec<(String, u64)>,
    },
    /// What each node provided to others' work in a month, priced and
    /// weighted by its reliability score.
    Payouts {
        #[arg(long)]
        org: Option<String>,
        /// YYYY-MM.
        #[arg(long)]
        period: Option<String>,
    },
    /// The organisation at a glance: nodes, pools, jobs, usage and cost.
    Summary {
        #[arg(long)]
        org: Option<String>,
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
        UsageCmd::Quote { tier, quantities } => {
            let r = c
                .usage()
                .quote_price(pb::QuotePriceRequest { tier, quantities: quantities.into_iter().collect() })
                .await?
                .into_inner();
            out.cost(r.cost.as_ref().expect("a cost"));
        }
        UsageCmd::Payouts { org, period } => {
            let organization_id = crate::settings::org_of(c, org).await?;
            let r = c
                .usage()
                .preview_payouts(pb::PreviewPayoutsRequest { organization_id, period: period.unwrap_or_default() })
                .await?
                .into_inner();
            out.payouts(&r);
        }
        UsageCmd::Summary { org, period } => {
            let organization_id = crate::settings::org_of(c, org).await?;
            let r = c
                .summary()
                .get_summary(pb::GetSummaryRequest { organization_id, period: period.unwrap_or_default() })
                .await?
                .into_inner();
            out.summary(&r);
        }
        UsageCmd::Ingest { metric, quantity, key } => {
            let record = pb::UsageRecord { metric, quantity, time: None, idempotency_key: key };
            let r = c.usage().ingest_usage(pb::IngestUsageRequest { records: vec![record] }).await?.into_inner();
            out.ingested(&r);
        }
    }
    Ok(0)
}

fn parse_pair(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not RESOURCE=QUANTITY"))?;
    Ok((k.to_string(), v.parse().map_err(|e| format!("{v:?}: {e}"))?))
}
