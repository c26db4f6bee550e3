//! Background tasks under one driver (after omicron's
//! `nexus/src/app/background`).
//!
//! A task is a type with one [`BackgroundTask::activate`]: it does one round
//! of its work and says how it went. The [`Driver`] owns the loop around it:
//! it activates the task at start, then whenever the task's wake signal fires
//! or its period passes, one activation at a time; after a failure it waits
//! (200 ms doubling to 5 s) before trying again and logs the failure once per
//! streak, with its whole error chain. It records each task's last start,
//! duration and outcome for `/metrics` and `AdminService/ListBackgroundTasks`.
//!
//! A new loop is a new file here and one `register` call in `lib.rs`.

mod events;
mod pools;
mod reseal;
mod scoring;
mod stale_nodes;
mod tasks;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use events::{EventRetention, EventTailFill};
pub use pools::{AutoscalerTask, PoolsTask};
pub use reseal::Reseal;
pub use scoring::{QuarantineTask, SCORING_PERIOD, ScoringTask};
pub use stale_nodes::{STALE_NODES_PERIOD, StaleNodes};
pub use tasks::{LeaseFlush, Liveness, NodeSnapshotRefresh, PROBE_PERIOD, Placement, Probe, RevocationRefresh};

/// What one activation did.
pub enum Activation {
    /// It did its work; a short summary ("placed 3, lost 0").
    Done(String),
    /// Some items could not be handled and were skipped (each logged with
    /// its id where it failed); the rest was done.
    Partial { summary: String, skipped: u64 },
    /// It failed as a whole; retried after a backoff.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

pub type ActivationFuture<'a> = Pin<Box<dyn Future<Output = Activation> + Send + 'a>>;

/// One background task.
pub trait BackgroundTask: Send + 'static {
    fn activate(&mut self) -> ActivationFuture<'_>;
}

/// How a task is run.
pub struct Spec {
    pub name: &'static str,
    pub description: &'static str,
    /// It runs at least this often.
    pub period: Duration,
    /// It also runs when this fires.
    pub wake: Option<Arc<Notify>>,
    /// Only the leader replica runs it (see [`Leadership`]).
    pub leader_only: bool,
}

/// Whether this replica is the leader, for tasks that only the leader runs.
/// One replica today: always the leader. Scale-out plugs its election in here.
#[derive(Clone, Default)]
pub struct Leadership;

impl Leadership {
    pub fn is_leader(&self) -> bool {
        true
    }
}

/// A task's record, as `ListBackgroundTasks` shows it.
#[derive(Clone, Debug)]
pub struct TaskStatus {
    pub name: &'static str,
    pub description: &'static str,
    pub period: Duration,
    pub leader_only: bool,
    pub running: bool,
    pub activations: u64,
    /// Failed activations in a row, up to the last one.
    pub consecutive_failures: u64,
    /// Items skipped, over the process's life.
    pub items_skipped: u64,
    /// Unix milliseconds; 0 before the first activation.
    pub last_started_at: i64,
    pub last_duration: Duration,
    /// "ok", "partial", "failed" or "" before the first activation.
    pub last_outcome: &'static str,
    pub last_message: String,
}

/// Runs the registered tasks until shutdown.
pub struct Driver {
    statuses: Arc<Mutex<Vec<TaskStatus>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    leadership: Leadership,
}

impl Driver {
    pub fn new(tracker: TaskTracker, shutdown: CancellationToken, leadership: Leadership) -> Self {
        Driver { statuses: Default::default(), tracker, shutdown, leadership }
    }

    /// Every task's record, in the order they were registered.
    pub fn status_handle(&self) -> Statuses {
        Statuses(self.statuses.clone())
    }

    pub fn register(&self, spec: Spec, task: impl BackgroundTask) {
        let index = {
            let mut all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
            assert!(!all.iter().any(|s| s.name == spec.name), "background task {} registered twice", spec.name);
            all.push(TaskStatus {
                name: spec.name,
                description: spec.description,
                period: spec.period,
                leader_only: spec.leader_only,
                running: false,
                activations: 0,
                consecutive_failures: 0,
                items_skipped: 0,
                last_started_at: 0,
                last_duration: Duration::ZERO,
                last_outcome: "",
                last_message: String::new(),
            });
            all.len() - 1
        };
        for outcome in ["ok", "partial", "failed"] {
            metrics::counter!("tether_background_task_activations_total", "task" => spec.name, "outcome" => outcome)
                .absolute(0);
        }
        metrics::counter!("tether_background_task_items_skipped_total", "task" => spec.name).absolute(0);
        let run = Runner {
            spec,
            index,
            statuses: self.statuses.clone(),
            shutdown: self.shutdown.clone(),
            leadership: self.leadership.clone(),
        };
        self.tracker.spawn(run.run(task));
    }
}

/// The records, shared with the admin service.
#[derive(Clone)]
pub struct Statuses(Arc<Mutex<Vec<TaskStatus>>>);

impl Statuses {
    /// Every task's record, in the order they were registered.
    pub fn list(&self) -> Vec<TaskStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Runner {
    spec: Spec,
    index: usize,
    statuses: Arc<Mutex<Vec<TaskStatus>>>,
    shutdown: CancellationToken,
    leadership: Leadership,
}

impl Runner {
    fn update(&self, f: impl FnOnce(&mut TaskStatus)) {
        f(&mut self.statuses.lock().unwrap_or_else(|e| e.into_inner())[self.index]);
    }

    async fn run(self, mut task: impl BackgroundTask) {
        let name = self.spec.name;
        let mut backoff = Duration::ZERO;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if !self.spec.leader_only || self.leadership.is_leader() {
                let started = Instant::now();
                self.update(|s| {
                    s.running = true;
                    s.last_started_at = crate::clock::now_ms();
                });
                let activation = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => break,
                    a = task.activate() => a,
                };
                let took = started.elapsed();
                metrics::histogram!("tether_background_task_seconds", "task" => name).record(took.as_secs_f64());
                let (outcome, message, skipped, failed) = match activation {
                    Activation::Done(m) => ("ok", m, 0, false),
                    Activation::Partial { summary, skipped } => ("partial", summary, skipped, false),
                    Activation::Failed(e) => {
                        if backoff.is_zero() {
                            tracing::warn!(
                                task = name,
                                error = &*e as &dyn std::error::Error,
                                "background task failed; retrying"
                            );
                        }
                        ("failed", error_chain(&*e), 0, true)
                    }
                };
                if !failed && !backoff.is_zero() {
                    tracing::info!(task = name, "background task recovered");
                }
                metrics::counter!("tether_background_task_activations_total", "task" => name, "outcome" => outcome)
                    .increment(1);
                if skipped > 0 {
                    metrics::counter!("tether_background_task_items_skipped_total", "task" => name).increment(skipped);
                }
                self.update(|s| {
                    s.running = false;
                    s.activations += 1;
                    s.last_duration = took;
                    s.last_outcome = outcome;
                    s.last_message = message;
                    s.items_skipped += skipped;
                    s.consecutive_failures = if failed { s.consecutive_failures + 1 } else { 0 };
                });
                if failed {
                    backoff = (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
                backoff = Duration::ZERO;
            }
            let wake = self.spec.wake.clone();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = async { match &wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(self.spec.period) => {}
            }
        }
    }
}

/// An error and its sources, "a: b: c".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counting {
        n: Arc<AtomicU32>,
        fail_first: u32,
    }

    impl BackgroundTask for Counting {
        fn activate(&mut self) -> ActivationFuture<'_> {
            Box::pin(async move {
                let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= self.fail_first {
                    Activation::Failed("database unavailable".into())
                } else if n == self.fail_first + 1 {
                    Activation::Partial { summary: "one bad row".into(), skipped: 1 }
                } else {
                    Activation::Done(format!("round {n}"))
                }
            })
        }
    }

    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test(start_paused = true)]
    async fn activations_follow_period_wake_and_backoff() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let driver = Driver::new(tracker.clone(), shutdown.clone(), Leadership);
        let n = Arc::new(AtomicU32::new(0));
        let wake = Arc::new(Notify::new());
        let spec = Spec {
            name: "counting",
            description: "counts",
            period: Duration::from_secs(3600),
            wake: Some(wake.clone()),
            leader_only: true,
        };
        driver.register(spec, Counting { n: n.clone(), fail_first: 2 });
        // At start, then after 200 ms and 400 ms of backoff: two failures,
        // then a partial round.
        until(|| n.load(Ordering::SeqCst) == 3).await;
        until(|| driver.status_handle().list()[0].activations == 3).await;
        let s = &driver.status_handle().list()[0];
        assert_eq!((s.last_outcome, s.items_skipped, s.consecutive_failures), ("partial", 1, 0));
        // Nothing more until woken (the period is an hour).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
        wake.notify_one();
        until(|| driver.status_handle().list()[0].activations == 4).await;
        assert_eq!(driver.status_handle().list()[0].last_outcome, "ok");
        assert_eq!(driver.status_handle().list()[0].last_message, "round 4");
        // And by the period.
        tokio::time::sleep(Duration::from_secs(3601)).await;
        until(|| driver.status_handle().list()[0].activations == 5).await;
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[test]
    fn error_chain_keeps_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let outer = tether_store::StoreError::Database(sqlx::Error::Io(inner));
        let text = error_chain(&outer);
        assert!(text.contains("connection refused"), "{text}");
    }
}
