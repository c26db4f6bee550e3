//! The work loop (scheduler and reconcilers) and the control plane's side of
//! the Jobs stream.
//!
//! The loop is idempotent and takes no input: each pass reads the durable
//! state, decides, writes its decisions in transactions, then tells agents.
//! It is woken by changes (submits, finishes, node changes) and by a timer.

mod messages;
mod reconcile;
mod secrets;
mod stream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tether_scheduler::{Ledger, NodeView, Objective, Request, place_batch_from};
use tether_store::StoreError;
use tether_types::{
    AllocId, AllocKey, AllocKind, AllocStatus, Allocation, DesiredNodeState, ExecSpec, NodeId, RestartPolicy,
};

use crate::fleet::snapshot::{NodeSnapshot, apply_usage};
use messages::new_assignment;
use reconcile::reconcile;
pub use stream::{on_agent_message, resync, retry_transient};

use crate::app::{App, now_ms};
use crate::effects::{Effects, Signal};

/// A pass runs at least this often, to catch deadlines and other replicas' work.
pub const PASS_PERIOD: Duration = Duration::from_millis(500);
const PENDING_BATCH: u32 = 2000;
/// Output cap per job attempt.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// What the work pass keeps between activations.
#[derive(Default)]
pub struct PassState {
    /// Rows already logged as undecodable (logged once, skipped every pass).
    reported_bad: HashSet<String>,
    /// Drains already reported complete.
    draining_done: HashSet<NodeId>,
    /// Scheduler views of `views_of`'s nodes, kept between passes so that a
    /// pass only recomputes what is allocated on them.
    views: Vec<NodeView>,
    views_of: Option<Arc<NodeSnapshot>>,
}

/// What one pass did, for the background task's record.
#[derive(Debug, Default)]
pub struct PassSummary {
    pub placed: usize,
    pub lost: usize,
    /// Rows that did not decode (a corrupt job or workload), left alone.
    pub skipped: u64,
}

impl std::fmt::Display for PassSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "placed {}, lost {}", self.placed, self.lost)?;
        if self.skipped > 0 {
            write!(f, ", skipped {} rows that do not decode", self.skipped)?;
        }
        Ok(())
    }
}

impl PassState {
    /// The views for this pass: rebuilt from the snapshot's when the node
    /// list changed, then what is allocated applied.
    ///
    /// A node takes new work only while its Jobs stream is open here: work
    /// placed on a node that cannot hear of it would wait for a reconnect.
    fn prepare_views(
        &mut self,
        snap: &Arc<NodeSnapshot>,
        active: &[Allocation],
        scores: &crate::scoring::Board,
        hub: &crate::fleet::hub::JobsHub,
    ) {
        if !self.views_of.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            self.views = snap.base_views.clone();
            self.views_of = Some(snap.clone());
        }
        for (v, base) in self.views.iter_mut().zip(&snap.base_views) {
            v.ready = base.ready && hub.has(&v.id);
        }
        apply_usage(&mut self.views, &snap.nodes, &snap.index, active, scores);
    }
}

/// Places a batch, resuming the scheduler's candidate scan where the last
/// batch left it (see `tether_scheduler::place_batch_from`).
fn place(app: &App, views: &mut [NodeView], ledger: &mut Ledger, reqs: &[Request]) -> Vec<Option<usize>> {
    use std::sync::atomic::Ordering::Relaxed;
    let (placed, next) = place_batch_from(views, ledger, reqs, app.placement_cursor.load(Relaxed));
    app.placement_cursor.store(next, Relaxed);
    placed
}

/// What each project's active allocations hold (scheduled, running and
/// stopping: all hold their node's resources).
pub fn usage(active: &[Allocation]) -> Ledger {
    let mut ledger = Ledger::default();
    for a in active {
        ledger.charge(&a.project_id, &a.resources);
    }
    ledger
}

/// Logs each row that does not decode once, by id; counts them every pass.
fn skip_bad(state: &mut PassState, what: &str, bad: &[tether_store::BadRow], summary: &mut PassSummary) {
    for b in bad {
        if state.reported_bad.insert(format!("{what}/{}", b.id)) {
            tracing::error!(
                id = %b.id,
                error = &b.error as &dyn std::error::Error,
                "{what} row does not decode; skipped until repaired"
            );
        }
    }
    summary.skipped += bad.len() as u64;
}

/// One pass over everything.
pub async fn pass(app: &App, state: &mut PassState) -> Result<PassSummary, StoreError> {
    let now = now_ms();
    let store = &app.store;
    let mut summary = PassSummary::default();
    // Agents hear of this pass's decisions once the pass ends (or fails
    // after some of them were written).
    let mut fx = app.effects();

    // Work on nodes that are down is lost (and retried while attempts remain).
    let lost = fx.commit(store.allocations_lose_on_down_nodes(now).await?);
    summary.lost = lost.len();
    if !lost.is_empty() {
        tracing::info!(allocations = lost.len(), "allocations lost on down nodes");
        metrics::counter!("tether_allocations_lost_total").increment(lost.len() as u64);
        // Should a lost node still hold a stream here (a partition that
        // TCP has not noticed), it hears of the loss first when it heals,
        // and its session is closed so that it reconnects and resyncs.
        let mut nodes_hit = HashSet::new();
        for a in &lost {
            fx.cancel(a, "the node was declared down; this attempt is lost");
            nodes_hit.insert(a.node_id.clone());
        }
        for n in &nodes_hit {
            fx.resync(n);
        }
    }

    let snap = app.nodes.get(store).await?;
    let nodes = snap.nodes.as_slice();
    let mut active = store.allocations_active().await?;

    // Node desired states that stop work: stopped nodes stop everything; a
    // draining node's jobs are stopped at the deadline. A stopped job attempt
    // is retried elsewhere once it has really stopped.
    let mut evict = Vec::new();
    for n in nodes {
        let jobs_only = match n.desired_state {
            DesiredNodeState::Stopped => false,
            DesiredNodeState::Draining if n.drain_deadline.is_some_and(|d| now >= d) => true,
            _ => continue,
        };
        evict.extend(
            active
                .iter()
                .filter(|a| a.node_id == n.id && a.status != AllocStatus::Stopping)
                .filter(|a| !jobs_only || a.kind == AllocKind::Job)
                .map(|a| a.key.clone()),
        );
    }
    stop_and_cancel(app, &mut fx, &evict, "node stopped or drain deadline passed", now).await?;
    let mut stop = Vec::new();

    // What each project's active allocations hold, against its quota.
    let mut ledger = usage(&active);
    let tenants = app.auth.tenants.get();

    // Which nodes hold the secrets work needs, read once for the pass.
    let mut held = secrets::Holders::default();

    // Workloads.
    let workloads = store.workloads_all().await?;
    skip_bad(state, "workload", &workloads.bad, &mut summary);
    let workloads = workloads.items;
    // Built only when something is to be placed: at ten thousand nodes
    // building them is most of an idle pass.
    let mut views_ready = false;
    let mut new_allocs: Vec<(Allocation, ExecSpec, Option<RestartPolicy>)> = Vec::new();
    for w in &workloads {
        let mine: Vec<&Allocation> = active.iter().filter(|a| a.workload_id.as_ref() == Some(&w.id)).collect();
        let plan = reconcile(w, &mine, |id| snap.node(id));
        stop.extend(plan.stop);
        // A deleted project's workloads were deleted with it.
        let Some(access) = tenants.access.get(&w.project_id) else { continue };
        if plan.create == 0 {
            continue;
        }
        let holders = held.all(app, &w.project_id, &w.spec.exec.secrets).await?;
        let reqs: Vec<Request> = (0..plan.create)
            .map(|_| {
                let mut r =
                    Request::new(access.clone(), w.spec.resources, w.spec.constraints.clone(), Objective::Balanced);
                r.group = Some(w.id.to_string());
                r.holders = holders.clone();
                r
            })
            .collect();
        if !views_ready {
            state.prepare_views(&snap, &active, &app.scores.get(), &app.hub);
            views_ready = true;
        }
        let views = &mut state.views;
        for i in place(app, views, &mut ledger, &reqs).into_iter().flatten() {
            let a = Allocation {
                key: AllocKey::Replica(AllocId::from_random(tether_auth::random_bytes())),
                project_id: w.project_id.clone(),
                kind: AllocKind::Service,
                job_id: None,
                attempt: 1,
                workload_id: Some(w.id.clone()),
                spec_version: w.spec_version,
                node_id: views[i].id.clone(),
                status: AllocStatus::Scheduled,
                resources: w.spec.resources,
                exit_code: None,
                error: String::new(),
                restarts: 0,
                scheduled_at: now,
                started_at: None,
                finished_at: None,
            };
            new_allocs.push((a, w.spec.exec.clone(), Some(w.spec.restart)));
        }
    }
    stop_and_cancel(app, &mut fx, &stop, "stopped by the reconciler", now).await?;

    // Pending jobs, highest priority first.
    let pending = store.jobs_pending(PENDING_BATCH).await?;
    skip_bad(state, "job", &pending.bad, &mut summary);
    // A deleted project's jobs were cancelled with it.
    let pending: Vec<_> = pending.items.into_iter().filter(|j| tenants.access.contains_key(&j.project_id)).collect();
    let mut reqs: Vec<Request> = Vec::with_capacity(pending.len());
    for j in &pending {
        let access = tenants.access[&j.project_id].clone();
        let mut r = Request::new(access, j.spec.resources, j.spec.constraints.clone(), Objective::Balanced);
        r.holders = held.all(app, &j.project_id, &j.spec.exec.secrets).await?;
        reqs.push(r);
    }
    let placed = if reqs.is_empty() {
        Vec::new()
    } else {
        if !views_ready {
            state.prepare_views(&snap, &active, &app.scores.get(), &app.hub);
        }
        place(app, &mut state.views, &mut ledger, &reqs)
    };
    let views = &state.views;
    for (j, i) in pending.iter().zip(placed) {
        let Some(i) = i else { continue };
        let attempt = j.attempt + 1;
        let a = Allocation {
            key: AllocKey::Attempt(j.id.clone(), attempt),
            project_id: j.project_id.clone(),
            kind: AllocKind::Job,
            job_id: Some(j.id.clone()),
            attempt,
            workload_id: None,
            spec_version: 0,
            node_id: views[i].id.clone(),
            status: AllocStatus::Scheduled,
            resources: j.spec.resources,
            exit_code: None,
            error: String::new(),
            restarts: 0,
            scheduled_at: now,
            started_at: None,
            finished_at: None,
        };
        new_allocs.push((a, j.spec.exec.clone(), None));
    }

    if !new_allocs.is_empty() {
        // The messages first (they read the secrets' copies): once placed,
        // an allocation must be sent. One whose node lost a copy since the
        // pass read the holders (a delete raced it) is not placed: its job
        // stays pending, and the next pass says why.
        let mut msgs = Vec::with_capacity(new_allocs.len());
        let mut placeable = Vec::with_capacity(new_allocs.len());
        for (a, exec, restart) in new_allocs {
            let msg = new_assignment(app, &a, &exec, restart).await?;
            if let tether_types::Command::Assign(asg) = &msg
                && asg.secrets.iter().any(|s| s.ciphertext.is_empty())
            {
                tracing::debug!(alloc = %a.key, node_id = %a.node_id, "a secret's copy is gone since the pass began: not placed");
                continue;
            }
            msgs.push(msg);
            placeable.push((a, exec, restart));
        }
        let new_allocs = placeable;
        let allocs: Vec<Allocation> = new_allocs.iter().map(|(a, _, _)| a.clone()).collect();
        // Durable before sent.
        let stored: HashSet<AllocKey> =
            fx.commit(store.allocations_place(&allocs, now).await?).into_iter().map(|a| a.key).collect();
        metrics::counter!("tether_allocations_placed_total").increment(stored.len() as u64);
        summary.placed = stored.len();
        for ((a, _, _), msg) in new_allocs.iter().zip(msgs) {
            if stored.contains(&a.key) {
                fx.send(&a.node_id, msg);
            }
        }
        active.extend(allocs.into_iter().filter(|a| stored.contains(&a.key)));
    }

    // Drains complete when the node's work has really stopped.
    for n in nodes.iter().filter(|n| n.desired_state == DesiredNodeState::Draining) {
        let busy = active.iter().any(|a| a.node_id == n.id);
        if !busy && state.draining_done.insert(n.id.clone()) {
            fx.commit(store.node_event(n, "node.drain_completed", now).await?);
            tracing::info!(node_id = %n.id, "drain completed");
        }
    }
    state.draining_done.retain(|id| snap.node(id).is_some_and(|n| n.desired_state == DesiredNodeState::Draining));
    Ok(summary)
}

/// Asks the allocations to stop and tells their nodes. A job attempt among
/// them is retried elsewhere once its node reports it stopped (or is down).
async fn stop_and_cancel(
    app: &App,
    fx: &mut Effects<'_>,
    keys: &[AllocKey],
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    for a in fx.commit(app.store.allocations_stop(keys, reason, now).await?) {
        fx.cancel(&a, reason);
    }
    Ok(())
}

/// Stops all work on a node that was just set to `stopped`, before the agent
/// hears of it: the control plane decides what the stops mean (job attempts
/// are retried elsewhere once stopped; replicas are replaced), not the order
/// in which the agent's reports arrive.
pub async fn stop_node_work(app: &App, fx: &mut Effects<'_>, node: &NodeId) -> Result<(), StoreError> {
    let now = now_ms();
    let keys: Vec<AllocKey> = app
        .store
        .allocations_on_node(node)
        .await?
        .into_iter()
        .filter(|a| a.status != AllocStatus::Stopping)
        .map(|a| a.key)
        .collect();
    stop_and_cancel(app, fx, &keys, "node stopped", now).await?;
    fx.wake(Signal::Placement);
    Ok(())
}
