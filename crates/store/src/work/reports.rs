//! Agents' started and finished reports, applied in batches.

use tether_types::{AllocKey, AllocStatus, Allocation, Job, NodeId, Shortfall, UnixMillis};

use super::{ALLOC_COLS, JOB_COLS, alloc_from_row, job_from_row};
use crate::events::append_event;
use crate::row::to_json;
use crate::{Committed, Result, Store, StoreError, in_tx_committed};

/// An agent's report about one allocation (see [`Store::allocation_reports`]).
#[derive(Debug, Clone, Copy)]
pub enum AgentReport<'a> {
    Started {
        key: &'a AllocKey,
        node: &'a NodeId,
        restarts: u32,
    },
    /// `lost`: the agent gave the attempt up without a result (it fenced
    /// itself after losing contact); counted as lost, not failed.
    Finished {
        key: &'a AllocKey,
        node: &'a NodeId,
        exit_code: i32,
        error: &'a str,
        lost: bool,
    },
}

/// The answer to one [`AgentReport`], as the single-report calls give it.
// Short-lived, one per report in a batch: boxing a variant would only add an
// allocation per report.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ReportOutcome {
    Started(Option<Allocation>),
    Finished(Option<Finished>),
}

/// What a finished report changed.
#[derive(Debug, Clone)]
pub struct Finished {
    pub allocation: Allocation,
    /// The job after the change, for job attempts.
    pub job: Option<Job>,
}

impl Store {
    /// The node reports the allocation's process started. Only the node that
    /// holds it may say so; a report for an allocation that is no longer
    /// active changes nothing and returns None.
    pub async fn allocation_started(
        &self,
        key: &AllocKey,
        node: &NodeId,
        restarts: u32,
        now: UnixMillis,
    ) -> Result<Committed<Option<Allocation>>> {
        Ok(self.allocation_reports(&[AgentReport::Started { key, node, restarts }], now).await?.map(|mut v| {
            match v.pop() {
                Some(ReportOutcome::Started(a)) => a,
                _ => unreachable!("one started answer per started report"),
            }
        }))
    }

    /// The node reports the allocation's process ended. Idempotent: a report
    /// for an allocation that already ended returns None.
    pub async fn allocation_finished(
        &self,
        key: &AllocKey,
        node: &NodeId,
        exit_code: i32,
        error: &str,
        now: UnixMillis,
    ) -> Result<Committed<Option<Finished>>> {
        Ok(self
            .allocation_reports(&[AgentReport::Finished { key, node, exit_code, error, lost: false }], now)
            .await?
            .map(|mut v| match v.pop() {
                Some(ReportOutcome::Finished(f)) => f,
                _ => unreachable!("one finished answer per finished report"),
            }))
    }

    /// Applies agents' started and finished reports in order, all in one
    /// transaction (group commit: the control plane batches what arrives
    /// together). Each report gets the answer
    /// [`Store::allocation_started`] or [`Store::allocation_finished`] would
    /// give; a database error fails them all.
    pub async fn allocation_reports(
        &self,
        reports: &[AgentReport<'_>],
        now: UnixMillis,
    ) -> Result<Committed<Vec<ReportOutcome>>> {
        in_tx_committed!(self, |tx| {
            let mut out = Vec::with_capacity(reports.len());
            for r in reports {
                // Each report is the agent's own doing.
                let (AgentReport::Started { node, .. } | AgentReport::Finished { node, .. }) = *r;
                tx.actor = Some(crate::events::Actor::new(node.as_str(), "agent"));
                match *r {
                    AgentReport::Started { key, node, restarts } => {
                        let started = 'report: {
                            let Some(mut a) = fetch_alloc!(tx, key) else { break 'report None };
                            if &a.node_id != node || !matches!(a.status, AllocStatus::Scheduled | AllocStatus::Running)
                            {
                                break 'report None;
                            }
                            if !a.start(restarts, now) {
                                // The same report again: nothing changes.
                                break 'report Some(a);
                            }
                            update_alloc!(tx, &a);
                            if let Some(job_id) = &a.job_id {
                                if let Some(mut job) = fetch_job!(tx, job_id.as_str())
                                    && let Some(ev) = job.start(a.attempt, now)
                                {
                                    update_job!(tx, &job, ev.kind());
                                }
                            } else {
                                append_event!(
                                    tx,
                                    now,
                                    Some(a.project_id.as_str()),
                                    "allocation.running",
                                    &a.key.to_string(),
                                    to_json(&a)
                                );
                            }
                            Some(a)
                        };
                        out.push(ReportOutcome::Started(started));
                    }
                    AgentReport::Finished { key, node, exit_code, error, lost } => {
                        let finished = 'report: {
                            let Some(mut a) = fetch_alloc!(tx, key) else { break 'report None };
                            if &a.node_id != node || !a.status.is_active() {
                                break 'report None;
                            }
                            if lost {
                                let reason = if error.is_empty() { "given up by the node" } else { error };
                                let a = lose_allocation!(tx, a, reason, now);
                                let job = match &a.job_id {
                                    Some(id) => fetch_job!(tx, id.as_str()),
                                    None => None,
                                };
                                break 'report Some(Finished { allocation: a, job });
                            }
                            // Why the control plane asked it to stop, if it did.
                            let stopped_because = (a.status == AllocStatus::Stopping).then(|| a.error.clone());
                            let ok = exit_code == 0 && error.is_empty();
                            // The job still waiting for this attempt's result, if any.
                            let waiting = waiting_job!(tx, &a);
                            a.finish(exit_code, error, waiting.is_some(), now);
                            update_alloc!(tx, &a);
                            let mut job_after = None;
                            if let Some(mut job) = waiting {
                                let ev = if ok {
                                    job.succeed(exit_code, now)
                                } else if let Some(why) = stopped_because {
                                    job.attempt_ended(Shortfall::Lost, why, Some(exit_code), now)
                                } else {
                                    let why = if error.is_empty() {
                                        format!("exited with code {exit_code}")
                                    } else {
                                        error.to_owned()
                                    };
                                    job.attempt_ended(Shortfall::Failed, why, Some(exit_code), now)
                                };
                                update_job!(tx, &job, ev.kind());
                                job_after = Some(job);
                            } else if a.job_id.is_none() {
                                append_event!(
                                    tx,
                                    now,
                                    Some(a.project_id.as_str()),
                                    "allocation.finished",
                                    &a.key.to_string(),
                                    to_json(&a)
                                );
                            }
                            Some(Finished { allocation: a, job: job_after })
                        };
                        out.push(ReportOutcome::Finished(finished));
                    }
                }
            }
            Ok::<_, StoreError>(out)
        })
    }
}
