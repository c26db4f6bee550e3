//! The control plane's side of a node's Jobs stream: the resync on connect,
//! the agent's reports (written by group commit) and retries while the
//! database is away.

use std::collections::HashSet;
use std::time::Duration;

use tether_store::StoreError;
use tether_types::{AgentMessage, AllocKey, AllocStatus, Command, Held, NodeId, WireKey};
use tokio_util::sync::CancellationToken;

use super::messages::assignment;
use crate::app::{App, now_ms};
use crate::effects::{Effects, Signal};
use crate::writers::ReportItem;

/// Brings a node and the control plane in line after the node (re)connects:
/// results it holds are recorded and released, work it runs that is no
/// longer wanted is cancelled, and work it lacks is (re)sent.
pub async fn resync(app: &App, node: &NodeId, report: &[Held]) -> Result<(), StoreError> {
    let now = now_ms();
    let mut fx = app.effects();
    let mut held = HashSet::new();
    for h in report {
        let Ok(key) = AllocKey::from_wire(&h.key.0, h.key.1) else {
            // Nothing the control plane could have assigned: forget it.
            let wire = h.key.clone();
            fx.send(node, if h.finished.is_some() { Command::Release(wire) } else { stale_cancel(wire) });
            continue;
        };
        held.insert(key.clone());
        let current = app.store.allocation_get(&key).await?;
        let mine = current.as_ref().filter(|a| &a.node_id == node && a.status.is_active());
        if let Some(o) = &h.finished {
            if mine.is_some() {
                finished(app, &mut fx, node, &key, o.exit_code, &o.error, o.lost).await?;
            }
            fx.send(node, Command::Release(h.key.clone()));
        } else if let Some(a) = mine {
            if a.status == AllocStatus::Stopping {
                fx.cancel(a, "stopped by the control plane");
            } else if a.status == AllocStatus::Scheduled {
                fx.commit(app.store.allocation_started(&key, node, 0, now).await?);
            }
        } else {
            // To the node that reported it, whichever node the record names.
            fx.send(node, stale_cancel(key.wire()));
        }
    }
    for a in app.store.allocations_on_node(node).await? {
        if held.contains(&a.key) {
            continue;
        }
        if a.status == AllocStatus::Stopping {
            // Asked to stop, and the node does not have it: it is stopped.
            finished(app, &mut fx, node, &a.key, -1, "stopped before the node started it", false).await?;
        } else if let Some(msg) = assignment(app, &a).await? {
            fx.send(node, msg);
        }
    }
    fx.wake(Signal::Placement);
    Ok(())
}

/// Cancels what a node holds that the control plane does not (named as the
/// node named it).
fn stale_cancel(key: WireKey) -> Command {
    Command::Cancel { key, reason: "the control plane holds no such allocation on this node".into() }
}

async fn report(app: &App, fx: &mut Effects<'_>, item: ReportItem) -> Result<tether_store::ReportOutcome, StoreError> {
    match app.reports.call(item).await {
        Some(r) => Ok(fx.commit(r?)),
        None => Err(tether_types::Error::unavailable("control plane is shutting down").into()),
    }
}

async fn finished(
    app: &App,
    fx: &mut Effects<'_>,
    node: &NodeId,
    key: &AllocKey,
    code: i32,
    error: &str,
    lost: bool,
) -> Result<(), StoreError> {
    let error = tether_types::agent_text(error);
    let item = ReportItem::Finished { key: key.clone(), node: node.clone(), exit_code: code, error, lost };
    let tether_store::ReportOutcome::Finished(f) = report(app, fx, item).await? else {
        unreachable!("a finished report gets a finished answer")
    };
    if let Some(f) = f {
        metrics::counter!("tether_allocations_finished_total", "status" => f.allocation.status.as_str()).increment(1);
        if let Some(j) = &f.job {
            tracing::info!(job_id = %j.id, attempt = f.allocation.attempt, status = j.status.as_str(), code, "job attempt finished");
        }
        fx.wake(Signal::Placement);
    }
    fx.wake(Signal::JobOutput);
    Ok(())
}

/// Runs `op` until it succeeds or fails for good, waiting between tries
/// (100 ms doubling to 5 s) while it fails transiently: the database down,
/// busy or full. None when `cancel` fired first.
pub async fn retry_transient<'a, T, F>(
    cancel: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<Result<T, StoreError>>
where
    F: FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "{what} failed; retrying until the database recovers"
                    );
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            out => {
                if failures > 0 && out.is_ok() {
                    tracing::info!(failures, "{what} succeeded after retries");
                }
                return Some(out);
            }
        }
    }
}

/// Handles one message of a node's Jobs stream.
pub async fn on_agent_message(app: &App, node: &NodeId, m: &AgentMessage) -> Result<(), StoreError> {
    let mut fx = app.effects();
    match m {
        // Only the first message of a stream; later ones change nothing.
        AgentMessage::Holding(_) | AgentMessage::Accepted(_) | AgentMessage::Progress { .. } => {}
        AgentMessage::Started { key: wire, restarts, .. } => {
            let Ok(key) = AllocKey::from_wire(&wire.0, wire.1) else {
                fx.send(node, stale_cancel(wire.clone()));
                return Ok(());
            };
            let item = ReportItem::Started { key: key.clone(), node: node.clone(), restarts: *restarts };
            let tether_store::ReportOutcome::Started(started) = report(app, &mut fx, item).await? else {
                unreachable!("a started report gets a started answer")
            };
            match started {
                Some(a) if a.status == AllocStatus::Stopping => {
                    fx.cancel(&a, "stopped by the control plane");
                }
                Some(_) => {}
                None => {
                    // Started something the control plane no longer wants here.
                    let a = app.store.allocation_get(&key).await?;
                    if !a.is_some_and(|a| a.status == AllocStatus::Running && &a.node_id == node) {
                        fx.send(node, Command::Cancel { key: key.wire(), reason: "no longer wanted".into() });
                    }
                }
            }
        }
        AgentMessage::Output { key, offset, data, truncated, .. } => {
            // Output is kept for job attempts, from the node that holds them.
            if let Ok(key @ AllocKey::Attempt(..)) = AllocKey::from_wire(&key.0, key.1)
                && app.store.allocation_get(&key).await?.is_some_and(|a| &a.node_id == node)
            {
                let AllocKey::Attempt(job, attempt) = &key else { unreachable!("matched above") };
                if app.store.job_log_append(job, *attempt, *offset, data, *truncated).await? {
                    fx.wake(Signal::JobOutput);
                }
            }
        }
        AgentMessage::Finished { key: wire, outcome: o } => {
            if let Ok(key) = AllocKey::from_wire(&wire.0, wire.1) {
                finished(app, &mut fx, node, &key, o.exit_code, &o.error, o.lost).await?;
            }
            fx.send(node, Command::Release(wire.clone()));
        }
        AgentMessage::Resealed(r) => super::secrets::resealed(app, &mut fx, node, r).await?,
    }
    Ok(())
}
