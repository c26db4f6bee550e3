//! `tetherctl events`: the event log, listed and followed.

use clap::{Args, Subcommand};
use tether_proto::pb;

use crate::Clients;
use crate::output::Out;

#[derive(Args)]
pub(crate) struct Filter {
    /// Kinds starting with this (`node.`, `job.succeeded`).
    #[arg(long)]
    kind: Option<String>,
    /// Events about this resource id.
    #[arg(long)]
    subject: Option<String>,
    /// Events this token or access key id caused.
    #[arg(long)]
    principal: Option<String>,
    /// The whole organisation's events (needs org-viewer) instead of the project's.
    #[arg(long)]
    org: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum EventsCmd {
    /// Events oldest first, a page at a time.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Events after this sequence (the last page's last).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Committed at or after this time (RFC 3339).
        #[arg(long)]
        since_time: Option<humantime::Timestamp>,
        /// Committed before this time (RFC 3339).
        #[arg(long)]
        until_time: Option<humantime::Timestamp>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow events as they are committed; resume with --since.
    Watch {
        #[command(flatten)]
        filter: Filter,
        /// Resume after this sequence (default: from now).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

impl Filter {
    /// (kind_prefix, subject, principal, organization_id), as both requests take them.
    fn fields(self) -> (String, String, String, String) {
        (
            self.kind.unwrap_or_default(),
            self.subject.unwrap_or_default(),
            self.principal.unwrap_or_default(),
            self.org.unwrap_or_default(),
        )
    }
}

fn timestamp(t: Option<humantime::Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(|t| prost_types::Timestamp::from(std::time::SystemTime::from(t)))
}

pub(crate) async fn run(c: &Clients, out: &Out, cmd: EventsCmd) -> anyhow::Result<i32> {
    match cmd {
        EventsCmd::List { filter, after, since_time, until_time, limit } => {
            let (kind_prefix, subject, principal, organization_id) = filter.fields();
            let r = c
                .events()
                .list_events(pb::ListEventsRequest {
                    kind_prefix,
                    subject,
                    principal,
                    organization_id,
                    start_time: timestamp(since_time),
                    end_time: timestamp(until_time),
                    after_sequence: after,
                    page_size: limit,
                })
                .await?
                .into_inner();
            out.events(&r);
        }
        EventsCmd::Watch { filter, since, count } => {
            let (kind_prefix, subject, principal, organization_id) = filter.fields();
            let mut s = c
                .events()
                .watch_events(pb::WatchEventsRequest {
                    kind_prefix,
                    subject,
                    principal,
                    organization_id,
                    since_sequence: since,
                })
                .await?
                .into_inner();
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n)
                && let Some(ev) = s.message().await?
            {
                out.event(&ev);
                seen += 1;
            }
        }
    }
    Ok(0)
}
