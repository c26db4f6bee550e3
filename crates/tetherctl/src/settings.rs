//! `tetherctl settings`: an organisation's runtime settings.

use clap::Subcommand;
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;

#[derive(Subcommand)]
pub(crate) enum SettingsCmd {
    /// The settings as stored and in effect, with their version.
    Get {
        /// The organisation (default: the token's).
        #[arg(long)]
        org: Option<String>,
    },
    /// Change some settings; the others stay. Refused if someone else
    /// changed them since they were read.
    Set {
        #[arg(long)]
        org: Option<String>,
        /// Deregister nodes down for longer than this (e.g. 6h).
        #[arg(long, conflicts_with_all = ["keep_down_nodes", "default_stale_node_ttl"])]
        stale_node_ttl: Option<humantime::Duration>,
        /// Never deregister down nodes.
        #[arg(long)]
        keep_down_nodes: bool,
        /// Back to the control plane's --stale-node-ttl.
        #[arg(long, conflicts_with = "keep_down_nodes")]
        default_stale_node_ttl: bool,
        #[command(flatten)]
        scoring: ScoringArgs,
    },
}

/// Reliability scoring and automatic quarantine (0 or unset: the default).
#[derive(clap::Args)]
pub(crate) struct ScoringArgs {
    /// Heartbeat round trips up to this cost nothing (e.g. 50ms).
    #[arg(long)]
    latency_target: Option<humantime::Duration>,
    /// Ready this long without a break earns full uptime.
    #[arg(long)]
    uptime_ramp: Option<humantime::Duration>,
    /// Flaps are forgotten with this half-life.
    #[arg(long)]
    flap_half_life: Option<humantime::Duration>,
    /// Job attempts that finished this recently make the failure rate.
    #[arg(long)]
    failure_window: Option<humantime::Duration>,
    /// Automatic quarantine on or off.
    #[arg(long)]
    quarantine: Option<OnOff>,
    /// Quarantine below this score, percent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    quarantine_below: Option<u32>,
    /// Release once the score stays at or above this, percent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    quarantine_release: Option<u32>,
    /// How long the score must stay up before release.
    #[arg(long)]
    probation: Option<humantime::Duration>,
    /// Most of the organisation's ready nodes held at once, percent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    quarantine_max: Option<u32>,
    /// A price: RESOURCE[:TIER]=NANOS per unit (repeatable; replaces that
    /// resource and tier's price).
    #[arg(long = "price", value_parser = parse_price)]
    prices: Vec<(String, String, u64)>,
    /// The price book's currency (ISO 4217).
    #[arg(long)]
    currency: Option<String>,
}

fn parse_price(s: &str) -> Result<(String, String, u64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not RESOURCE[:TIER]=NANOS"))?;
    let (resource, tier) = k.split_once(':').unwrap_or((k, ""));
    Ok((resource.to_string(), tier.to_string(), v.parse().map_err(|e| format!("{v:?}: {e}"))?))
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

impl ScoringArgs {
    fn apply(&self, s: &mut pb::Settings) -> anyhow::Result<()> {
        let d = |v: &Option<humantime::Duration>| -> anyhow::Result<Option<prost_types::Duration>> {
            v.map(|v| prost_types::Duration::try_from(*v).map_err(anyhow::Error::from)).transpose()
        };
        let sc = s.scoring.get_or_insert_with(Default::default);
        for (arg, field) in [
            (&self.latency_target, &mut sc.latency_target),
            (&self.uptime_ramp, &mut sc.uptime_ramp),
            (&self.flap_half_life, &mut sc.flap_half_life),
            (&self.failure_window, &mut sc.failure_window),
        ] {
            if arg.is_some() {
                *field = d(arg)?;
            }
        }
        let q = s.quarantine.get_or_insert_with(Default::default);
        if let Some(on) = self.quarantine {
            q.enabled = matches!(on, OnOff::On);
        }
        for (arg, field) in [
            (self.quarantine_below, &mut q.below_percent),
            (self.quarantine_release, &mut q.release_percent),
            (self.quarantine_max, &mut q.max_percent),
        ] {
            if let Some(v) = arg {
                *field = v;
            }
        }
        if self.probation.is_some() {
            q.probation = d(&self.probation)?;
        }
        let book = s.pricing.get_or_insert_with(Default::default);
        if let Some(c) = &self.currency {
            book.currency = c.clone();
        }
        for (resource, tier, nanos) in &self.prices {
            book.prices.retain(|p| !(&p.resource == resource && &p.tier == tier));
            book.prices.push(pb::Price { resource: resource.clone(), tier: tier.clone(), unit_price_nanos: *nanos });
        }
        Ok(())
    }
}

pub(crate) async fn org_of(c: &Clients, org: Option<String>) -> anyhow::Result<String> {
    if let Some(o) = org {
        return Ok(o);
    }
    let me = c.tenancy().who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    anyhow::ensure!(!me.organization_id.is_empty(), "this token spans organisations: name one with --org");
    Ok(me.organization_id)
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: SettingsCmd) -> anyhow::Result<i32> {
    match cmd {
        SettingsCmd::Get { org } => {
            let organization_id = org_of(c, org).await?;
            let r = c.settings().get_settings(pb::GetSettingsRequest { organization_id }).await?.into_inner();
            out.settings(&r);
        }
        SettingsCmd::Set { org, stale_node_ttl, keep_down_nodes, default_stale_node_ttl, scoring } => {
            let organization_id = org_of(c, org).await?;
            let now = c
                .settings()
                .get_settings(pb::GetSettingsRequest { organization_id: organization_id.clone() })
                .await?
                .into_inner();
            let mut settings = now.settings.unwrap_or_default();
            let fleet = settings.fleet.get_or_insert_with(Default::default);
            if let Some(t) = stale_node_ttl {
                fleet.stale_node_ttl = Some(prost_types::Duration::try_from(*t)?);
                fleet.keep_down_nodes = false;
            }
            if keep_down_nodes {
                fleet.keep_down_nodes = true;
            }
            if default_stale_node_ttl {
                fleet.stale_node_ttl = None;
                fleet.keep_down_nodes = false;
            }
            scoring.apply(&mut settings)?;
            let r = c
                .settings()
                .update_settings(pb::UpdateSettingsRequest {
                    organization_id,
                    settings: Some(settings),
                    // 0 before the first update: over any.
                    expected_version: now.version,
                })
                .await?
                .into_inner();
            out.settings(&pb::GetSettingsResponse {
                settings: r.settings,
                effective: r.effective,
                version: r.version,
                updated_at: r.updated_at,
                updated_by: r.updated_by,
            });
        }
    }
    Ok(0)
}
