//! The group-commit writers of job submissions and agents' reports: what
//! arrives together (from any callers) is written in one transaction, each
//! caller answered on its own (see [`crate::batch`]).

use tether_store::Committed;
use tether_types::{AllocKey, Error, Job, NodeId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;

/// Submissions, written by group commit.
/// A submission: the job, its idempotency key and who submitted it.
pub type Submit = (Job, Option<String>, Option<tether_store::Actor>);

pub type Submits = crate::batch::Batcher<Submit, Result<Committed<(Job, bool)>, Error>>;

/// Most submissions written in one transaction.
const SUBMIT_BATCH: usize = 256;

/// The group-commit writer of submissions: those that arrive together are
/// stored in one transaction, each answered on its own.
pub fn submit_batcher(store: tether_store::Store, tasks: &TaskTracker, shutdown: CancellationToken) -> Submits {
    crate::batch::Batcher::spawn(SUBMIT_BATCH, tasks, shutdown, move |items: Vec<Submit>| {
        let store = store.clone();
        async move {
            let jobs: Vec<_> = items.iter().map(|(j, k, a)| (j, k.as_deref(), a.as_ref())).collect();
            crate::batch::committed_answers(items.len(), "storing submitted jobs", store.jobs_submit(&jobs).await)
        }
    })
}

/// An agent's started or finished report, queued for group commit.
pub enum ReportItem {
    Started { key: AllocKey, node: NodeId, restarts: u32 },
    Finished { key: AllocKey, node: NodeId, exit_code: i32, error: String, lost: bool },
}

pub type Reports = crate::batch::Batcher<ReportItem, Result<Committed<tether_store::ReportOutcome>, Error>>;

/// Most agent reports written in one transaction.
const REPORT_BATCH: usize = 512;

/// The group-commit writer of agents' started and finished reports: what
/// arrives together (from any agents) is written in one transaction.
pub fn report_batcher(store: tether_store::Store, tasks: &TaskTracker, shutdown: CancellationToken) -> Reports {
    crate::batch::Batcher::spawn(REPORT_BATCH, tasks, shutdown, move |items: Vec<ReportItem>| {
        let store = store.clone();
        async move {
            let reports: Vec<tether_store::AgentReport<'_>> = items
                .iter()
                .map(|i| match i {
                    ReportItem::Started { key, node, restarts } => {
                        tether_store::AgentReport::Started { key, node, restarts: *restarts }
                    }
                    ReportItem::Finished { key, node, exit_code, error, lost } => {
                        tether_store::AgentReport::Finished { key, node, exit_code: *exit_code, error, lost: *lost }
                    }
                })
                .collect();
            crate::batch::committed_answers(
                items.len(),
                "writing agent reports",
                store.allocation_reports(&reports, now_ms()).await,
            )
        }
    })
}
