//! The work loop (scheduler and reconcilers) and the control plane's side of
//! the Jobs stream.
//!
//! The loop is idempotent and takes no input: each pass reads the durable
//! state, decides, writes its decisions in transactions, then tells agents.
//! It is woken by changes (submits, finishes, node changes) and by a timer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tether_proto::agent_pb::{self, jobs_request, jobs_response};
use tether_scheduler::{NodeView, Objective, Request, place_batch_from};
use tether_store::StoreError;
use tether_types::{
    AllocId, AllocKind, AllocStatus, Allocation, DesiredNodeState, ExecSpec, Node, NodeId, NodeStatus, RestartPolicy,
    Workload, alloc_key,
};
use tokio_util::sync::CancellationToken;

use crate::{App, now_ms};

/// A pass runs at least this often, to catch deadlines and other replicas' work.
const PASS_PERIOD: Duration = Duration::from_millis(500);
const PENDING_BATCH: u32 = 2000;
/// Output cap per job attempt.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// Reliability grows to 1 over this much time ready.
const RELIABILITY_RAMP_MS: i64 = 10 * 60 * 1000;

fn assign_msg(a: &Allocation, exec: &ExecSpec, restart: Option<RestartPolicy>) -> agent_pb::JobsResponse {
    let (job_id, attempt) = a.wire_id();
    agent_pb::JobsResponse {
        msg: Some(jobs_response::Msg::Assign(agent_pb::AssignJob {
            job_id,
            attempt,
            exec: Some(exec.to_pb()),
            kind: match a.kind {
                AllocKind::Job => agent_pb::AllocationKind::Job,
                AllocKind::Service => agent_pb::AllocationKind::Service,
            } as i32,
            restart: match restart {
                None => agent_pb::ServiceRestart::Unspecified,
                Some(RestartPolicy::Always) => agent_pb::ServiceRestart::Always,
                Some(RestartPolicy::OnFailure) => agent_pb::ServiceRestart::OnFailure,
                Some(RestartPolicy::Never) => agent_pb::ServiceRestart::Never,
            } as i32,
            max_log_bytes: MAX_LOG_BYTES,
        })),
    }
}

pub fn cancel_msg(a: &Allocation, reason: &str) -> agent_pb::JobsResponse {
    let (job_id, attempt) = a.wire_id();
    agent_pb::JobsResponse {
        msg: Some(jobs_response::Msg::Cancel(agent_pb::CancelJob { job_id, attempt, reason: reason.to_owned() })),
    }
}

fn release_msg(job_id: String, attempt: u32) -> agent_pb::JobsResponse {
    agent_pb::JobsResponse { msg: Some(jobs_response::Msg::Release(agent_pb::ReleaseJob { job_id, attempt })) }
}

/// The assignment message for an allocation, loading its spec.
async fn assignment(app: &App, a: &Allocation) -> Result<Option<agent_pb::JobsResponse>, StoreError> {
    if let Some(job_id) = &a.job_id {
        Ok(app.store.job_get(job_id).await?.map(|j| assign_msg(a, &j.spec.exec, None)))
    } else if let Some(w) = &a.workload_id {
        Ok(app.store.workload_get(&a.project_id, w).await?.map(|w| assign_msg(a, &w.spec.exec, Some(w.spec.restart))))
    } else {
        Ok(None)
    }
}

/// Brings a node and the control plane in line after the node (re)connects:
/// results it holds are recorded and released, work it runs that is no
/// longer wanted is cancelled, and work it lacks is (re)sent.
pub async fn resync(app: &App, node: &NodeId, report: &agent_pb::AllocationReport) -> Result<(), StoreError> {
    let now = now_ms();
    let mut held = HashSet::new();
    for h in &report.allocations {
        let key = alloc_key(&h.job_id, h.attempt);
        held.insert(key.clone());
        let current = app.store.allocation_get(&key).await?;
        let mine = current.as_ref().filter(|a| &a.node_id == node && a.status.is_active());
        if h.finished {
            if mine.is_some() {
                finished(app, node, &key, h.exit_code, &h.error, h.lost).await?;
            }
            app.hub.send(node, release_msg(h.job_id.clone(), h.attempt));
        } else if let Some(a) = mine {
            if a.status == AllocStatus::Stopping {
                app.hub.send(node, cancel_msg(a, "stopped by the control plane"));
            } else if a.status == AllocStatus::Scheduled {
                app.store.allocation_started(&key, node, 0, now).await?;
            }
        } else {
            let stale = Allocation {
                key: key.clone(),
                ..current.clone().unwrap_or_else(|| placeholder(node, &h.job_id, h.attempt))
            };
            app.hub.send(node, cancel_msg(&stale, "the control plane holds no such allocation on this node"));
        }
    }
    for a in app.store.allocations_on_node(node).await? {
        if held.contains(&a.key) {
            continue;
        }
        if a.status == AllocStatus::Stopping {
            // Asked to stop, and the node does not have it: it is stopped.
            finished(app, node, &a.key, -1, "stopped before the node started it", false).await?;
        } else if let Some(msg) = assignment(app, &a).await? {
            app.hub.send(node, msg);
        }
    }
    app.work_wake.notify_one();
    Ok(())
}

fn placeholder(node: &NodeId, wire_id: &str, attempt: u32) -> Allocation {
    Allocation {
        key: String::new(),
        project_id: tether_types::ProjectId::from_trusted(String::new()),
        kind: if wire_id.starts_with(tether_types::JobId::PREFIX) { AllocKind::Job } else { AllocKind::Service },
        job_id: wire_id
            .starts_with(tether_types::JobId::PREFIX)
            .then(|| tether_types::JobId::from_trusted(wire_id.to_owned())),
        attempt,
        workload_id: None,
        spec_version: 0,
        node_id: node.clone(),
        status: AllocStatus::Lost,
        resources: Default::default(),
        exit_code: None,
        error: String::new(),
        restarts: 0,
        scheduled_at: 0,
        started_at: None,
        finished_at: None,
    }
}

/// An agent's started or finished report, queued for group commit.
pub enum ReportItem {
    Started { key: String, node: NodeId, restarts: u32 },
    Finished { key: String, node: NodeId, exit_code: i32, error: String, lost: bool },
}

pub type Reports = crate::batch::Batcher<ReportItem, Result<tether_store::ReportOutcome, tether_types::Error>>;

/// Most agent reports written in one transaction.
const REPORT_BATCH: usize = 512;

/// The group-commit writer of agents' started and finished reports: what
/// arrives together (from any agents) is written in one transaction.
pub fn report_batcher(store: tether_store::Store) -> Reports {
    crate::batch::Batcher::spawn(REPORT_BATCH, move |items: Vec<ReportItem>| {
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
            crate::batch::answers(
                items.len(),
                "writing agent reports",
                store.allocation_reports(&reports, now_ms()).await,
            )
        }
    })
}

async fn report(app: &App, item: ReportItem) -> Result<tether_store::ReportOutcome, StoreError> {
    match app.reports.call(item).await {
        Some(r) => r.map_err(StoreError::from),
        None => Err(tether_types::Error::unavailable("control plane is shutting down").into()),
    }
}

async fn finished(app: &App, node: &NodeId, key: &str, code: i32, error: &str, lost: bool) -> Result<(), StoreError> {
    let error: String = error.chars().take(tether_types::MAX_TEXT_LEN).collect();
    let item = ReportItem::Finished { key: key.to_owned(), node: node.clone(), exit_code: code, error, lost };
    let tether_store::ReportOutcome::Finished(f) = report(app, item).await? else {
        unreachable!("a finished report gets a finished answer")
    };
    if let Some(f) = f {
        metrics::counter!("tether_allocations_finished_total", "status" => f.allocation.status.as_str()).increment(1);
        if let Some(j) = &f.job {
            tracing::info!(job_id = %j.id, attempt = f.allocation.attempt, status = j.status.as_str(), code, "job attempt finished");
        }
        app.work_wake.notify_one();
    }
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
pub async fn on_agent_message(app: &App, node: &NodeId, m: &jobs_request::Msg) -> Result<(), StoreError> {
    match m {
        jobs_request::Msg::Report(_) => {}
        jobs_request::Msg::Accepted(_) | jobs_request::Msg::Progress(_) => {}
        jobs_request::Msg::Started(s) => {
            let key = alloc_key(&s.job_id, s.attempt);
            let item = ReportItem::Started { key: key.clone(), node: node.clone(), restarts: s.restarts };
            let tether_store::ReportOutcome::Started(started) = report(app, item).await? else {
                unreachable!("a started report gets a started answer")
            };
            match started {
                Some(a) if a.status == AllocStatus::Stopping => {
                    app.hub.send(node, cancel_msg(&a, "stopped by the control plane"));
                }
                Some(_) => {}
                None => {
                    // Started something the control plane no longer wants here.
                    let a = app.store.allocation_get(&key).await?;
                    let stale = a.unwrap_or_else(|| placeholder(node, &s.job_id, s.attempt));
                    if stale.status != AllocStatus::Running || &stale.node_id != node {
                        app.hub.send(node, cancel_msg(&Allocation { key, ..stale }, "no longer wanted"));
                    }
                }
            }
        }
        jobs_request::Msg::Log(l) => {
            if l.job_id.starts_with(tether_types::JobId::PREFIX) {
                let key = alloc_key(&l.job_id, l.attempt);
                // Only output from the node that holds the attempt is kept.
                if app.store.allocation_get(&key).await?.is_some_and(|a| &a.node_id == node) {
                    let job = tether_types::JobId::from_trusted(l.job_id.clone());
                    if app.store.job_log_append(&job, l.attempt, l.offset, &l.data, l.truncated).await? {
                        app.logs.notify_waiters();
                    }
                }
            }
        }
        jobs_request::Msg::Finished(f) => {
            let key = alloc_key(&f.job_id, f.attempt);
            finished(app, node, &key, f.exit_code, &f.error, f.lost).await?;
            app.hub.send(node, release_msg(f.job_id.clone(), f.attempt));
            app.logs.notify_waiters();
        }
    }
    Ok(())
}

/// What the work loop keeps between passes.
#[derive(Default)]
struct PassState {
    /// Drains already reported complete.
    draining_done: HashSet<NodeId>,
    /// Scheduler views of `views_of`'s nodes, kept between passes so that a
    /// pass only recomputes what is allocated on them.
    views: Vec<NodeView>,
    views_of: Option<Arc<NodeSnapshot>>,
}

/// The node list is read again at once when this process wrote a node, and
/// in the background this often in any case, for writes by other processes on
/// the same database (none today: one control plane per database). Reading
/// ten thousand rows costs ~100 ms of a core, which showed as the submit-to-
/// agent p99 (26-36 ms with a 5 s refresh, 11-14 ms with 60 s).
const NODES_MAX_AGE: Duration = Duration::from_secs(60);

/// A copy of every node row, shared by the work loop and job submission,
/// read again when this process changed a node, and refreshed in the
/// background every [`NODES_MAX_AGE`]. At ten thousand nodes a read costs
/// about a hundred milliseconds, which no placement should wait for.
#[derive(Default)]
pub struct NodeCache(tokio::sync::Mutex<NodeCacheInner>);

#[derive(Default)]
struct NodeCacheInner {
    snapshot: Arc<NodeSnapshot>,
    version: Option<u64>,
}

/// The node rows, their scheduler views with nothing allocated, and where
/// each node is in both.
#[derive(Default)]
pub struct NodeSnapshot {
    pub nodes: Vec<Node>,
    pub base_views: Vec<NodeView>,
    pub index: HashMap<NodeId, usize>,
}

impl NodeSnapshot {
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }
}

impl NodeSnapshot {
    async fn read(store: &tether_store::Store) -> Result<Self, StoreError> {
        let nodes = store.node_list_all().await?;
        let base_views = nodes.iter().map(base_view).collect();
        let index = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        Ok(NodeSnapshot { nodes, base_views, index })
    }
}

impl NodeCache {
    pub async fn get(&self, store: &tether_store::Store) -> Result<Arc<NodeSnapshot>, StoreError> {
        // Held across the read, so that concurrent callers share one read.
        let mut c = self.0.lock().await;
        // Read before the rows: a write counted after this is read next time.
        let version = store.node_version();
        if c.version != Some(version) {
            c.snapshot = Arc::new(NodeSnapshot::read(store).await?);
            c.version = Some(version);
        }
        Ok(c.snapshot.clone())
    }

    /// Reads the rows without holding up readers, and swaps them in unless
    /// this process wrote a node meanwhile (then `get` reads anyway).
    async fn refresh(&self, store: &tether_store::Store) -> Result<(), StoreError> {
        let version = store.node_version();
        let snapshot = Arc::new(NodeSnapshot::read(store).await?);
        let mut c = self.0.lock().await;
        // Unchanged but for leases: keep the snapshot, so that work passes
        // keep their views instead of rebuilding them (a latency spike every
        // refresh at ten thousand nodes).
        if c.version == Some(version)
            && store.node_version() == version
            && !same_but_leases(&c.snapshot.nodes, &snapshot.nodes)
        {
            c.snapshot = snapshot;
        }
        Ok(())
    }
}

/// Whether two node lists differ only in what every lease flush or
/// reconnect changes (last seen, session generation), which nothing that
/// reads the snapshot uses.
fn same_but_leases(old: &[Node], new: &[Node]) -> bool {
    old.len() == new.len()
        && old.iter().zip(new).all(|(a, b)| {
            let mut b = b.clone();
            b.last_seen_at = a.last_seen_at;
            b.session_generation = a.session_generation;
            *a == b
        })
}

/// Refreshes the node cache every [`NODES_MAX_AGE`].
pub async fn node_cache_loop(app: Arc<App>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(NODES_MAX_AGE) => {}
        }
        if let Err(e) = app.nodes.refresh(&app.store).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "refreshing the node list failed");
        }
    }
}

pub async fn work_loop(app: Arc<App>, shutdown: CancellationToken) {
    let mut state = PassState::default();
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = app.work_wake.notified() => {}
            _ = tokio::time::sleep(PASS_PERIOD) => {}
        }
        let started = std::time::Instant::now();
        match pass(&app, &mut state).await {
            Ok(()) => backoff = Duration::ZERO,
            Err(e) => {
                // 200 ms doubling to 5 s while the database is away; logged
                // once per outage.
                if backoff.is_zero() {
                    tracing::warn!(error = &e as &dyn std::error::Error, "work pass failed; retrying");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
        metrics::histogram!("tether_work_pass_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// A node as the scheduler sees it, with nothing allocated.
fn base_view(n: &Node) -> NodeView {
    let ready = n.status == NodeStatus::Ready;
    NodeView {
        id: n.id.clone(),
        project: n.project_id.clone(),
        ready,
        active: n.desired_state.accepts_work(),
        state: if !ready { n.status.as_str().into() } else { n.desired_state.as_str().into() },
        pool: n.pool.clone(),
        labels: n.labels.clone(),
        gpu_models: n.capabilities.gpus.iter().map(|g| g.model.clone()).collect(),
        capacity: tether_types::Resources {
            cpu_millis: u64::from(n.capabilities.cpu_count) * 1000,
            memory_mb: n.capabilities.memory_mb,
            gpus: n.capabilities.gpus.len() as u64,
        },
        allocated: Default::default(),
        reliability: 0.0,
        groups: HashMap::new(),
    }
}

/// Sets what is allocated on each node (and per group) from the active
/// allocations, and the reliability as of `now`. `views[i]` is `nodes[i]`.
fn apply_usage(
    views: &mut [NodeView],
    nodes: &[Node],
    index: &HashMap<NodeId, usize>,
    active: &[Allocation],
    now: i64,
) {
    for (v, n) in views.iter_mut().zip(nodes) {
        let up_for = (now - n.status_changed_at).clamp(0, RELIABILITY_RAMP_MS);
        v.reliability = 0.5 + 0.5 * (up_for as f64 / RELIABILITY_RAMP_MS as f64);
        v.allocated = Default::default();
        v.groups.clear();
    }
    for a in active {
        let Some(v) = index.get(&a.node_id).map(|&i| &mut views[i]) else { continue };
        v.allocated = v.allocated.add(&a.resources);
        if let Some(w) = &a.workload_id
            && a.status != AllocStatus::Stopping
        {
            *v.groups.entry(w.to_string()).or_default() += 1;
        }
    }
}

/// Scheduler views of `nodes` with `active` allocated on them.
pub fn node_views(nodes: &[Node], active: &[Allocation], now: i64) -> Vec<NodeView> {
    let mut views: Vec<NodeView> = nodes.iter().map(base_view).collect();
    let index: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    apply_usage(&mut views, nodes, &index, active, now);
    views
}

impl PassState {
    /// The views for this pass: rebuilt from the snapshot's when the node
    /// list changed, then what is allocated applied.
    ///
    /// A node takes new work only while its Jobs stream is open here: work
    /// placed on a node that cannot hear of it would wait for a reconnect.
    fn prepare_views(&mut self, snap: &Arc<NodeSnapshot>, active: &[Allocation], now: i64, hub: &crate::hub::JobsHub) {
        if !self.views_of.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            self.views = snap.base_views.clone();
            self.views_of = Some(snap.clone());
        }
        for (v, base) in self.views.iter_mut().zip(&snap.base_views) {
            v.ready = base.ready && hub.has(&v.id);
        }
        apply_usage(&mut self.views, &snap.nodes, &snap.index, active, now);
    }
}

/// Places a batch, resuming the scheduler's candidate scan where the last
/// batch left it (see `tether_scheduler::place_batch_from`).
fn place(app: &App, views: &mut [NodeView], reqs: &[Request]) -> Vec<Option<usize>> {
    use std::sync::atomic::Ordering::Relaxed;
    let (placed, next) = place_batch_from(views, reqs, app.placement_cursor.load(Relaxed));
    app.placement_cursor.store(next, Relaxed);
    placed
}

/// One pass over everything.
async fn pass(app: &App, state: &mut PassState) -> Result<(), StoreError> {
    let now = now_ms();
    let store = &app.store;

    // Work on nodes that are down is lost (and retried while attempts remain).
    let lost = store.allocations_lose_on_down_nodes(now).await?;
    if !lost.is_empty() {
        tracing::info!(allocations = lost.len(), "allocations lost on down nodes");
        metrics::counter!("tether_allocations_lost_total").increment(lost.len() as u64);
        // Should a lost node still hold a stream here (a partition that
        // TCP has not noticed), it hears of the loss first when it heals,
        // and its session is closed so that it reconnects and resyncs.
        let mut nodes_hit = HashSet::new();
        for a in &lost {
            app.hub.send(&a.node_id, cancel_msg(a, "the node was declared down; this attempt is lost"));
            nodes_hit.insert(a.node_id.clone());
        }
        for n in &nodes_hit {
            app.registry.resync(n);
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
    stop_and_cancel(app, &evict, "node stopped or drain deadline passed", now).await?;
    let mut stop = Vec::new();

    // Workloads.
    let workloads = store.workload_list(None).await?;
    // Built only when something is to be placed: at ten thousand nodes
    // building them is most of an idle pass.
    let mut views_ready = false;
    let mut new_allocs: Vec<(Allocation, ExecSpec, Option<RestartPolicy>)> = Vec::new();
    for w in &workloads {
        let mine: Vec<&Allocation> = active.iter().filter(|a| a.workload_id.as_ref() == Some(&w.id)).collect();
        let plan = reconcile(w, &mine, |id| snap.node(id));
        stop.extend(plan.stop);
        let reqs: Vec<Request> = (0..plan.create)
            .map(|_| {
                let mut r = Request::new(
                    w.project_id.clone(),
                    w.spec.resources,
                    w.spec.constraints.clone(),
                    Objective::Balanced,
                );
                r.group = Some(w.id.to_string());
                r
            })
            .collect();
        if reqs.is_empty() {
            continue;
        }
        if !views_ready {
            state.prepare_views(&snap, &active, now, &app.hub);
            views_ready = true;
        }
        let views = &mut state.views;
        for i in place(app, views, &reqs).into_iter().flatten() {
            let a = Allocation {
                key: AllocId::from_random(tether_auth::random_bytes()).to_string(),
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
    if !stop.is_empty() {
        for a in store.allocations_stop(&stop, "stopped by the reconciler", now).await? {
            app.hub.send(&a.node_id, cancel_msg(&a, "stopped by the reconciler"));
        }
    }

    // Pending jobs, highest priority first.
    let pending = store.jobs_pending(PENDING_BATCH).await?;
    let reqs: Vec<Request> = pending
        .iter()
        .map(|j| Request::new(j.project_id.clone(), j.spec.resources, j.spec.constraints.clone(), Objective::Balanced))
        .collect();
    let placed = if reqs.is_empty() {
        Vec::new()
    } else {
        if !views_ready {
            state.prepare_views(&snap, &active, now, &app.hub);
        }
        place(app, &mut state.views, &reqs)
    };
    let views = &state.views;
    for (j, i) in pending.iter().zip(placed) {
        let Some(i) = i else { continue };
        let attempt = j.attempt + 1;
        let a = Allocation {
            key: alloc_key(j.id.as_str(), attempt),
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
        let allocs: Vec<Allocation> = new_allocs.iter().map(|(a, _, _)| a.clone()).collect();
        // Durable before sent.
        let stored: HashSet<String> = store.allocations_place(&allocs, now).await?.into_iter().map(|a| a.key).collect();
        metrics::counter!("tether_allocations_placed_total").increment(stored.len() as u64);
        for (a, exec, restart) in &new_allocs {
            if stored.contains(&a.key) {
                app.hub.send(&a.node_id, assign_msg(a, exec, *restart));
            }
        }
        active.extend(allocs.into_iter().filter(|a| stored.contains(&a.key)));
    }

    // Drains complete when the node's work has really stopped.
    for n in nodes.iter().filter(|n| n.desired_state == DesiredNodeState::Draining) {
        let busy = active.iter().any(|a| a.node_id == n.id);
        if !busy && state.draining_done.insert(n.id.clone()) {
            let seq = store.node_event(n, "node.drain_completed", now).await?;
            app.notify.committed(seq);
            tracing::info!(node_id = %n.id, "drain completed");
        }
    }
    state.draining_done.retain(|id| snap.node(id).is_some_and(|n| n.desired_state == DesiredNodeState::Draining));
    Ok(())
}

/// Asks the allocations to stop and tells their nodes. A job attempt among
/// them is retried elsewhere once its node reports it stopped (or is down).
async fn stop_and_cancel(app: &App, keys: &[String], reason: &str, now: i64) -> Result<(), StoreError> {
    for a in app.store.allocations_stop(keys, reason, now).await? {
        app.hub.send(&a.node_id, cancel_msg(&a, reason));
    }
    Ok(())
}

/// Stops all work on a node that was just set to `stopped`, before the agent
/// hears of it: the control plane decides what the stops mean (job attempts
/// are retried elsewhere once stopped; replicas are replaced), not the order
/// in which the agent's reports arrive.
pub async fn stop_node_work(app: &App, node: &NodeId) -> Result<(), StoreError> {
    let now = now_ms();
    let keys: Vec<String> = app
        .store
        .allocations_on_node(node)
        .await?
        .into_iter()
        .filter(|a| a.status != AllocStatus::Stopping)
        .map(|a| a.key)
        .collect();
    stop_and_cancel(app, &keys, "node stopped", now).await?;
    app.work_wake.notify_one();
    Ok(())
}

/// What the reconciler does for one workload in one pass.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    create: usize,
    stop: Vec<String>,
}

/// Keeps `replicas` running: replaces replicas that are gone, migrates those
/// on draining or stopped nodes and rolls out spec changes `max_parallel` at
/// a time, always starting a replacement before stopping what it replaces.
fn reconcile<'n>(w: &Workload, allocs: &[&Allocation], node: impl Fn(&NodeId) -> Option<&'n Node>) -> Plan {
    let n = w.replicas as usize;
    let live: Vec<&&Allocation> = allocs.iter().filter(|a| a.status != AllocStatus::Stopping).collect();
    let node_ok = |a: &Allocation| {
        node(&a.node_id).is_some_and(|n| {
            !matches!(n.desired_state, DesiredNodeState::Draining | DesiredNodeState::Stopped)
                && n.status != NodeStatus::Down
                && n.status != NodeStatus::Left
        })
    };
    let (keep, replace): (Vec<&&Allocation>, Vec<&&Allocation>) =
        live.iter().partition(|a| a.spec_version == w.spec_version && node_ok(a));
    let mut plan = Plan::default();

    // Scale down: stop the extra current replicas, youngest (least proven) first.
    if keep.len() > n {
        let mut extra: Vec<&&Allocation> = keep.clone();
        extra.sort_by_key(|a| (a.status == AllocStatus::Running, std::cmp::Reverse(a.scheduled_at)));
        plan.stop.extend(extra.iter().take(keep.len() - n).map(|a| a.key.clone()));
        plan.stop.extend(replace.iter().map(|a| a.key.clone()));
        return plan;
    }

    // Replicas that are simply missing are created at once.
    let missing = n.saturating_sub(keep.len() + replace.len());
    // Replacements surge up to max_parallel starting at a time.
    let starting = keep.iter().filter(|a| a.status == AllocStatus::Scheduled).count();
    let surge_room = (w.spec.max_parallel as usize).saturating_sub(starting);
    let wanted_replacements = replace.len().min(n.saturating_sub(keep.len() + missing));
    plan.create = missing + wanted_replacements.min(surge_room);

    // Stop a replaced replica only once enough current ones run.
    let running_keep = keep.iter().filter(|a| a.status == AllocStatus::Running).count();
    let mut replace_sorted = replace.clone();
    replace_sorted.sort_by_key(|a| (a.status == AllocStatus::Running, a.scheduled_at));
    let mut still_running_replace = replace.iter().filter(|a| a.status == AllocStatus::Running).count();
    for a in replace_sorted {
        let is_running = a.status == AllocStatus::Running;
        let can_stop = if is_running {
            running_keep + still_running_replace > n
        } else {
            // Never started: stopping it loses nothing once replacements exist.
            keep.len() + plan.create >= n
        };
        if can_stop {
            plan.stop.push(a.key.clone());
            if is_running {
                still_running_replace -= 1;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_types::{Constraints, JoinTokenId, ProjectId, Resources, WorkloadId, WorkloadSpec};

    #[test]
    fn leases_alone_do_not_change_the_snapshot() {
        let old = vec![node(1, DesiredNodeState::Active), node(2, DesiredNodeState::Active)];
        let mut new = old.clone();
        new[0].last_seen_at += 10_000;
        new[1].session_generation += 1;
        assert!(same_but_leases(&old, &new));
        new[1].desired_state = DesiredNodeState::Paused;
        assert!(!same_but_leases(&old, &new), "a desired state is not a lease");
        let mut moved = old.clone();
        moved[0].status = NodeStatus::Unreachable;
        assert!(!same_but_leases(&old, &moved));
        assert!(!same_but_leases(&old, &old[..1]), "a node gone");
    }

    fn node(i: u8, desired: DesiredNodeState) -> Node {
        Node {
            id: NodeId::from_random([i; 10]),
            project_id: ProjectId::from_random([1; 10]),
            status: NodeStatus::Ready,
            desired_state: desired,
            desired_state_version: 1,
            capabilities: Default::default(),
            labels: Default::default(),
            pool: String::new(),
            registered_at: 0,
            status_changed_at: 0,
            last_seen_at: 0,
            session_generation: 0,
            join_token_id: Some(JoinTokenId::from_random([0; 10])),
            desired_state_reason: String::new(),
            acked_desired_state_version: 0,
            desired_state_nack: String::new(),
            drain_deadline: None,
        }
    }

    fn workload(replicas: u32, version: u64) -> Workload {
        Workload {
            id: WorkloadId::from_random([5; 10]),
            project_id: ProjectId::from_random([1; 10]),
            name: "web".into(),
            spec: WorkloadSpec {
                exec: ExecSpec { command: "/bin/sleep".into(), ..Default::default() },
                resources: Resources::default(),
                constraints: Constraints::default(),
                restart: RestartPolicy::Always,
                max_parallel: 1,
            },
            spec_version: version,
            replicas,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn alloc(key: &str, node: &Node, status: AllocStatus, version: u64) -> Allocation {
        Allocation {
            key: key.into(),
            project_id: node.project_id.clone(),
            kind: AllocKind::Service,
            job_id: None,
            attempt: 1,
            workload_id: Some(WorkloadId::from_random([5; 10])),
            spec_version: version,
            node_id: node.id.clone(),
            status,
            resources: Resources::default(),
            exit_code: None,
            error: String::new(),
            restarts: 0,
            scheduled_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    fn run(w: &Workload, nodes: &[Node], allocs: &[Allocation]) -> Plan {
        let by_id: HashMap<&NodeId, &Node> = nodes.iter().map(|n| (&n.id, n)).collect();
        let refs: Vec<&Allocation> = allocs.iter().collect();
        reconcile(w, &refs, |id| by_id.get(id).copied())
    }

    #[test]
    fn creates_missing_and_stops_extras() {
        let nodes = [node(1, DesiredNodeState::Active)];
        let w = workload(3, 1);
        let one = [alloc("a", &nodes[0], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &one), Plan { create: 2, stop: vec![] });
        let w = workload(1, 1);
        let three = [
            alloc("a", &nodes[0], AllocStatus::Running, 1),
            alloc("b", &nodes[0], AllocStatus::Running, 1),
            alloc("c", &nodes[0], AllocStatus::Scheduled, 1),
        ];
        let plan = run(&w, &nodes, &three);
        assert_eq!(plan.create, 0);
        assert_eq!(plan.stop.len(), 2);
        assert!(plan.stop.contains(&"c".to_string()), "a replica not yet started goes first");
    }

    #[test]
    fn drain_starts_the_replacement_before_stopping() {
        let nodes = [node(1, DesiredNodeState::Draining), node(2, DesiredNodeState::Active)];
        let w = workload(2, 1);
        let before = [alloc("old", &nodes[0], AllocStatus::Running, 1), alloc("b", &nodes[1], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &before), Plan { create: 1, stop: vec![] });
        // Replacement scheduled, not running yet: nothing more, nothing stopped.
        let starting = [before[0].clone(), before[1].clone(), alloc("new", &nodes[1], AllocStatus::Scheduled, 1)];
        assert_eq!(run(&w, &nodes, &starting), Plan { create: 0, stop: vec![] });
        // Replacement running: now the old one stops.
        let up = [before[0].clone(), before[1].clone(), alloc("new", &nodes[1], AllocStatus::Running, 1)];
        assert_eq!(run(&w, &nodes, &up), Plan { create: 0, stop: vec!["old".into()] });
    }

    #[test]
    fn rollout_goes_max_parallel_at_a_time() {
        let nodes = [node(1, DesiredNodeState::Active)];
        let w = workload(3, 2);
        let old: Vec<_> = ["a", "b", "c"].iter().map(|k| alloc(k, &nodes[0], AllocStatus::Running, 1)).collect();
        assert_eq!(run(&w, &nodes, &old), Plan { create: 1, stop: vec![] });
        let mut next = old.clone();
        next.push(alloc("n1", &nodes[0], AllocStatus::Running, 2));
        // The new replica runs: one old replica stops, and the next new one starts.
        let plan = run(&w, &nodes, &next);
        assert_eq!(plan.create, 1);
        assert_eq!(plan.stop.len(), 1, "one old replica per new one: {plan:?}");
        // While that one is starting, nothing else starts.
        let mut starting = next.clone();
        starting[0].status = AllocStatus::Stopping;
        starting.push(alloc("n2", &nodes[0], AllocStatus::Scheduled, 2));
        assert_eq!(run(&w, &nodes, &starting), Plan { create: 0, stop: vec![] });
    }
}
