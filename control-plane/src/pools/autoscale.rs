//! The autoscaler (leader only): every pool whose autoscaling is on is
//! decided on at its period. [`decide`] is the rule, a pure function:
//!
//! - CPU or memory: the nodes needed to keep the allocated share at the
//!   target, `ceil(allocated / (capacity per node × target))`.
//! - Pending jobs: with jobs that may run on the pool waiting longer than
//!   `pending_after`, one more node per `jobs_per_node` of them; with no
//!   job waiting and nothing allocated on the pool, its minimum.
//!
//! The wish is kept within min and max and the step limits; a scale-up
//! with a canary percentage is applied in steps, the first that share of
//! it (at least one node), the rest once those nodes have joined. A change
//! is a `pool.scaled` event with the metric and its value; a change wanted
//! and not made is a `pool.autoscale_held` event with why (`cooldown`,
//! `at_max`, `at_min`, `provider_failing`, `requests_open`), written when
//! the reason or the wish changes rather than at every period.

use std::collections::HashMap;

use tether_store::StoreError;
use tether_types::pool::{Autoscale, AutoscaleMetric, Pool};
use tether_types::{JobStatus, OrgId};

use super::Facts;
use crate::app::{App, now_ms};

/// How often the autoscaler looks for pools due a decision: the shortest
/// period that takes effect.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// What the autoscaler measured of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measure {
    /// Jobs waiting longer than `pending_after` that may run on the pool.
    pub waiting: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to change.
    Steady,
    Scale {
        to: u32,
        wanted: u32,
        value: f64,
        canary: bool,
        reason: String,
    },
    Hold {
        wanted: u32,
        value: f64,
        reason: &'static str,
        detail: String,
    },
}

pub const fn metric_name(m: AutoscaleMetric) -> &'static str {
    match m {
        AutoscaleMetric::Cpu => "cpu",
        AutoscaleMetric::Memory => "memory",
        AutoscaleMetric::PendingJobs => "pending_jobs",
    }
}

/// What the pool's state says about its circumstances.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Circumstances {
    pub now: i64,
    /// The provider failed last, and may not be asked again yet.
    pub provider_failing: bool,
}

pub fn decide(pool: &Pool, a: &Autoscale, f: &Facts, m: Measure, c: Circumstances) -> Decision {
    let desired = pool.desired;
    let (wanted, value) = match a.metric {
        AutoscaleMetric::Cpu | AutoscaleMetric::Memory => {
            let (cap, used) = if a.metric == AutoscaleMetric::Cpu {
                (f.capacity.cpu_millis, f.allocated.cpu_millis)
            } else {
                (f.capacity.memory_mb, f.allocated.memory_mb)
            };
            if f.ready == 0 || cap == 0 {
                // Nothing measured: keep the count (but never below min).
                (desired.max(pool.spec.min), 0.0)
            } else {
                let share = used as f64 / cap as f64 * 100.0;
                let per_node = cap as f64 / f64::from(f.ready);
                let need = (used as f64 / (per_node * f64::from(a.target_percent) / 100.0)).ceil() as u32;
                (need, share)
            }
        }
        AutoscaleMetric::PendingJobs => {
            let busy = f.allocated.cpu_millis > 0 || f.allocated.memory_mb > 0 || f.allocated.gpus > 0;
            if m.waiting > 0 {
                (desired + m.waiting.div_ceil(a.jobs_per_node.max(1)), f64::from(m.waiting))
            } else if !busy {
                (pool.spec.min, 0.0)
            } else {
                (desired, 0.0)
            }
        }
    };
    let target = pool.spec.clamp(wanted);
    if target == desired {
        return if wanted > desired && desired >= pool.spec.max {
            Decision::Hold {
                wanted,
                value,
                reason: "at_max",
                detail: format!("the pool is at its max of {}", pool.spec.max),
            }
        } else if wanted < desired && desired <= pool.spec.min {
            Decision::Hold {
                wanted,
                value,
                reason: "at_min",
                detail: format!("the pool is at its min of {}", pool.spec.min),
            }
        } else {
            Decision::Steady
        };
    }
    if f.open_adds > 0 || f.open_removes > 0 {
        let detail = if f.open_adds > 0 {
            format!("{} nodes asked for have not joined yet", f.adding)
        } else {
            format!("{} nodes are being removed", f.removing)
        };
        return Decision::Hold { wanted, value, reason: "requests_open", detail };
    }
    let since = c.now - pool.scaled_at;
    if since < a.cooldown_ms as i64 {
        let left = (a.cooldown_ms as i64 - since).max(0);
        return Decision::Hold { wanted, value, reason: "cooldown", detail: format!("{left} ms of cooldown left") };
    }
    if c.provider_failing && target > desired {
        return Decision::Hold {
            wanted,
            value,
            reason: "provider_failing",
            detail: "the provider's last request failed".into(),
        };
    }
    let metric = metric_name(a.metric);
    if target > desired {
        let mut to = target.min(desired.saturating_add(a.max_step_up.max(1)));
        let mut canary = false;
        if a.canary_percent > 0 && a.canary_percent < 100 && to - desired > 1 {
            let first = ((to - desired) * a.canary_percent).div_ceil(100).max(1);
            if desired + first < to {
                to = desired + first;
                canary = true;
            }
        }
        let reason = format!("{metric} at {value:.0}: wants {wanted} nodes");
        Decision::Scale { to, wanted, value, canary, reason }
    } else {
        let to = target.max(desired.saturating_sub(a.max_step_down.max(1)));
        let reason = format!("{metric} at {value:.0}: wants {wanted} nodes");
        Decision::Scale { to, wanted, value, canary: false, reason }
    }
}

/// The autoscaler's state between rounds.
#[derive(Default)]
pub struct Autoscaler {
    /// When each pool was last decided on.
    last: HashMap<(OrgId, String), i64>,
    /// The last hold written per pool (reason, wanted), so that a hold is
    /// an event when it changes, not every period.
    held: HashMap<(OrgId, String), (&'static str, u32)>,
}

impl Autoscaler {
    pub async fn round(&mut self, app: &App) -> Result<String, StoreError> {
        let pools: Vec<Pool> = app
            .store
            .pool_list(None)
            .await?
            .into_iter()
            .filter(|p| p.spec.provider.is_some() && p.spec.autoscale.as_ref().is_some_and(|a| a.enabled))
            .collect();
        let now = now_ms();
        let keys: std::collections::HashSet<_> = pools.iter().map(|p| (p.org_id.clone(), p.name.clone())).collect();
        self.last.retain(|k, _| keys.contains(k));
        self.held.retain(|k, _| keys.contains(k));
        let due: Vec<&Pool> = pools
            .iter()
            .filter(|p| {
                let period = p.spec.autoscale.as_ref().map_or(0, |a| a.period_ms) as i64;
                self.last.get(&(p.org_id.clone(), p.name.clone())).is_none_or(|t| now - t >= period)
            })
            .collect();
        if due.is_empty() {
            return Ok(String::new());
        }
        let snap = app.nodes.get(&app.store).await?;
        let active = app.store.allocations_active().await?;
        let open = app.store.scale_requests_open().await?;
        let pending = app.store.jobs_pending(10_000).await?.items;
        let tenants = app.auth.tenants.get();
        let mut did = Vec::new();
        for pool in due {
            let key = (pool.org_id.clone(), pool.name.clone());
            self.last.insert(key.clone(), now);
            let a = pool.spec.autoscale.as_ref().expect("filtered");
            let mine: Vec<_> = open.iter().filter(|r| r.org_id == pool.org_id && r.pool == pool.name).collect();
            let f = super::facts(pool, &snap.nodes, &active, &mine);
            let waiting = pending
                .iter()
                .filter(|j| j.status == JobStatus::Pending && now - j.updated_at >= a.pending_after_ms as i64)
                .filter(|j| j.spec.constraints.pool.is_empty() || j.spec.constraints.pool == pool.name)
                .filter(|j| {
                    tenants
                        .access
                        .get(&j.project_id)
                        .is_some_and(|acc| acc.org == pool.org_id && acc.pools.contains(&pool.name))
                })
                .count() as u32;
            let recent = app.store.scale_requests(&pool.org_id, &pool.name, 16).await?;
            let failing = super::reconcile::retry_at(&recent).is_some_and(|at| now < at);
            let c = Circumstances { now, provider_failing: failing };
            let metric = metric_name(a.metric);
            match decide(pool, a, &f, Measure { waiting }, c) {
                Decision::Steady => {
                    self.held.remove(&key);
                }
                Decision::Hold { wanted, value, reason, detail } => {
                    if self.held.get(&key) != Some(&(reason, wanted)) {
                        self.held.insert(key, (reason, wanted));
                        let payload = serde_json::json!({
                            "name": pool.name, "desired": pool.desired, "wanted": wanted, "reason": reason,
                            "detail": detail, "metric": metric, "value": value,
                        });
                        let c =
                            app.store.pool_event(&pool.org_id, &pool.name, "pool.autoscale_held", payload, now).await?;
                        app.effects().commit(c);
                        did.push(format!("{} held ({reason})", pool.name));
                    }
                }
                Decision::Scale { to, wanted, value, canary, reason } => {
                    self.held.remove(&key);
                    let extra = serde_json::json!({
                        "by": "autoscaler", "metric": metric, "value": value, "wanted": wanted, "canary": canary,
                    });
                    match app.store.pool_scale(&pool.org_id, &pool.name, to, &reason, extra, now).await {
                        Ok(c) => {
                            app.effects().commit(c);
                            app.signals.pools().notify_one();
                            tracing::info!(pool = %pool.name, from = pool.desired, to, %reason, canary, "autoscaled");
                            did.push(format!("{} {} -> {to}", pool.name, pool.desired));
                        }
                        // Changed meanwhile (an operator, a limit): decided again next period.
                        Err(StoreError::Domain(e)) => {
                            tracing::info!(pool = %pool.name, error = %e.message, "autoscale skipped")
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(did.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_types::Resources;
    use tether_types::pool::{PoolSpec, Provider};

    fn pool(min: u32, max: u32, desired: u32, a: Autoscale) -> Pool {
        Pool {
            org_id: OrgId::from_random([1; 10]),
            name: "p".into(),
            spec: PoolSpec {
                min,
                max,
                provider: Some(Provider::Command { name: "x".into() }),
                request_timeout_ms: 1,
                drain_timeout_ms: 1,
                autoscale: Some(a),
            },
            desired,
            version: 1,
            created_at: 0,
            updated_at: 0,
            scaled_at: 0,
        }
    }

    fn auto(metric: AutoscaleMetric) -> Autoscale {
        Autoscale {
            enabled: true,
            metric,
            target_percent: 50,
            pending_after_ms: 1_000,
            jobs_per_node: 1,
            period_ms: 1_000,
            cooldown_ms: 10_000,
            max_step_up: 4,
            max_step_down: 1,
            canary_percent: 0,
        }
    }

    fn facts(ready: u32, cpu_cap: u64, cpu_used: u64) -> Facts {
        Facts {
            nodes: ready,
            ready,
            current: ready,
            capacity: Resources { cpu_millis: cpu_cap, memory_mb: 0, gpus: 0 },
            allocated: Resources { cpu_millis: cpu_used, memory_mb: 0, gpus: 0 },
            ..Default::default()
        }
    }

    const LATER: Circumstances = Circumstances { now: 1_000_000, provider_failing: false };

    #[test]
    fn cpu_share_sizes_the_pool_within_steps_and_limits() {
        let a = auto(AutoscaleMetric::Cpu);
        // 2 nodes of 4 cores, 6 cores allocated (75%), target 50%: 3 nodes.
        let d = decide(&pool(1, 10, 2, a.clone()), &a, &facts(2, 8000, 6000), Measure::default(), LATER);
        assert!(matches!(d, Decision::Scale { to: 3, wanted: 3, .. }), "{d:?}");
        // Idle: down by one step at a time, not below min.
        let d = decide(&pool(1, 10, 4, a.clone()), &a, &facts(4, 16000, 0), Measure::default(), LATER);
        assert!(matches!(d, Decision::Scale { to: 3, wanted: 0, .. }), "{d:?}");
        let d = decide(&pool(1, 10, 1, a.clone()), &a, &facts(1, 4000, 0), Measure::default(), LATER);
        assert!(matches!(d, Decision::Hold { reason: "at_min", .. }), "{d:?}");
        // Far over: at most max_step_up, and never past max.
        let d = decide(&pool(1, 3, 2, a.clone()), &a, &facts(2, 8000, 8000), Measure::default(), LATER);
        assert!(matches!(d, Decision::Scale { to: 3, wanted: 4, .. }), "{d:?}");
        let d = decide(&pool(1, 3, 3, a.clone()), &a, &facts(3, 12000, 12000), Measure::default(), LATER);
        assert!(matches!(d, Decision::Hold { reason: "at_max", wanted: 6, .. }), "{d:?}");
    }

    #[test]
    fn pending_jobs_grow_the_pool_and_idle_shrinks_it_to_min() {
        let a = Autoscale { jobs_per_node: 2, ..auto(AutoscaleMetric::PendingJobs) };
        let d = decide(&pool(0, 10, 1, a.clone()), &a, &facts(1, 4000, 4000), Measure { waiting: 3 }, LATER);
        assert!(matches!(d, Decision::Scale { to: 3, wanted: 3, .. }), "3 jobs, 2 per node: 2 more: {d:?}");
        let d = decide(&pool(0, 10, 3, a.clone()), &a, &facts(3, 12000, 1000), Measure::default(), LATER);
        assert_eq!(d, Decision::Steady, "busy with nothing waiting: keep");
        let a = Autoscale { max_step_down: 10, ..a };
        let d = decide(&pool(0, 10, 3, a.clone()), &a, &facts(3, 12000, 0), Measure::default(), LATER);
        assert!(matches!(d, Decision::Scale { to: 0, wanted: 0, .. }), "idle: back to min: {d:?}");
    }

    #[test]
    fn cooldown_open_requests_provider_failures_and_canaries() {
        let a = auto(AutoscaleMetric::PendingJobs);
        let p = Pool { scaled_at: 995_000, ..pool(0, 10, 1, a.clone()) };
        let d = decide(&p, &a, &facts(1, 4000, 4000), Measure { waiting: 2 }, LATER);
        assert!(matches!(d, Decision::Hold { reason: "cooldown", wanted: 3, .. }), "{d:?}");
        let open = Facts { open_adds: 1, adding: 2, ..facts(1, 4000, 4000) };
        let d = decide(&pool(0, 10, 3, a.clone()), &a, &open, Measure { waiting: 2 }, LATER);
        assert!(matches!(d, Decision::Hold { reason: "requests_open", .. }), "{d:?}");
        let failing = Circumstances { provider_failing: true, ..LATER };
        let d = decide(&pool(0, 10, 1, a.clone()), &a, &facts(1, 4000, 4000), Measure { waiting: 2 }, failing);
        assert!(matches!(d, Decision::Hold { reason: "provider_failing", .. }), "{d:?}");
        // A canary of 25% of a scale-up by 4: one node first.
        let a = Autoscale { canary_percent: 25, ..a };
        let d = decide(&pool(0, 10, 1, a.clone()), &a, &facts(1, 4000, 4000), Measure { waiting: 4 }, LATER);
        assert!(matches!(d, Decision::Scale { to: 2, wanted: 5, canary: true, .. }), "{d:?}");
    }
}
