//! The scoring and quarantine loops. The scoring loop scores every node
//! from the figures this replica's registry keeps and publishes the board;
//! the quarantine loop (leader only) decides on each organisation's nodes
//! (`crate::scoring::quarantine`) and writes its decisions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tether_store::StoreError;
use tether_types::settings::{OrgSettings, Quarantine, Scoring};
use tether_types::{DesiredState, Node, NodeId, NodeStatus, OrgId};
use tokio::time::Instant;

use super::{Activation, ActivationFuture, BackgroundTask};
use crate::app::{App, now_ms};
use crate::effects::Signal;
use crate::scoring::formula::{self, Figures, Fleet};
use crate::scoring::quarantine::{self, Action, Facts, Memory};
use crate::scoring::{Board, HoldView, NodeInsight};

/// How often quarantine is decided, and nodes are scored at least (they are
/// scored every heartbeat interval when that is longer).
pub const SCORING_PERIOD: Duration = Duration::from_secs(1);

/// Scores every node from the heartbeats this replica holds.
pub struct ScoringTask {
    pub app: Arc<App>,
    pub state: Scorer,
}

impl BackgroundTask for ScoringTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.state.round(&self.app).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}

/// Quarantines and releases nodes by their scores.
pub struct QuarantineTask {
    pub app: Arc<App>,
    pub state: Quarantiner,
}

impl BackgroundTask for QuarantineTask {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            match self.state.round(&self.app).await {
                Ok(summary) => Activation::Done(summary),
                Err(e) => Activation::Failed(Box::new(e)),
            }
        })
    }
}

/// Job outcomes are read again after this long (one grouped query).
const OUTCOMES_MAX_AGE: Duration = Duration::from_secs(15);

/// Per node: job attempts finished within a window, and of them failed or lost.
type Outcomes = HashMap<NodeId, (u64, u64)>;

/// The scoring loop's state: the job outcomes last read, per failure window.
#[derive(Default)]
pub struct Scorer {
    outcomes: HashMap<Duration, (Instant, Outcomes)>,
}

impl Scorer {
    async fn outcomes(&mut self, app: &App, window: Duration) -> Result<&Outcomes, StoreError> {
        let fresh = self.outcomes.get(&window).is_some_and(|(at, _)| at.elapsed() < OUTCOMES_MAX_AGE);
        if !fresh {
            let since = now_ms().saturating_sub(window.as_millis() as i64);
            let rows = app.store.node_job_outcomes(since).await?;
            let map = rows.into_iter().map(|(n, finished, failed)| (n, (finished, failed))).collect();
            self.outcomes.insert(window, (Instant::now(), map));
        }
        Ok(&self.outcomes[&window].1)
    }

    /// Scores every registered node (but those that left) and publishes the board.
    pub async fn round(&mut self, app: &App) -> Result<String, StoreError> {
        let snap = app.nodes.get(&app.store).await?;
        let settings = app.store.org_settings_all().await?;
        let stats: HashMap<NodeId, crate::scoring::stats::BeatStats> = app.registry.stats().into_iter().collect();
        let (now, inow) = (now_ms(), Instant::now());
        let mut by_org: HashMap<&OrgId, Vec<&Node>> = HashMap::new();
        for n in snap.nodes.iter().filter(|n| n.status != NodeStatus::Left) {
            by_org.entry(&n.org_id).or_default().push(n);
        }
        // Windows no organisation uses any more are dropped.
        let windows: Vec<Duration> = by_org
            .keys()
            .map(|o| scoring_of(&settings, o).failure_window)
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        self.outcomes.retain(|w, _| windows.contains(w));
        let mut board = Board::default();
        for (org, nodes) in by_org {
            let s = scoring_of(&settings, org);
            let outcomes = self.outcomes(app, s.failure_window).await?;
            let figures: Vec<Figures> = nodes
                .iter()
                .map(|n| {
                    let st = stats.get(&n.id).cloned().unwrap_or_default();
                    let (finished, failed) = outcomes.get(&n.id).copied().unwrap_or((0, 0));
                    Figures {
                        beats: st.beats,
                        jitter: st.jitter,
                        rtts: st.rtts,
                        rtt_short_ms: st.rtt_short_ms,
                        rtt_long_ms: st.rtt_long_ms,
                        spikes: st.spikes,
                        flaps: st.flaps_at_time(inow, s.flap_half_life),
                        ready_for: (n.status == NodeStatus::Ready)
                            .then(|| Duration::from_millis(now.saturating_sub(n.status_changed_at).max(0) as u64)),
                        finished,
                        failed,
                    }
                })
                .collect();
            let fleet = Fleet::of(
                nodes.iter().zip(&figures).filter(|(n, _)| n.status == NodeStatus::Ready).map(|(_, f)| f),
                &s,
            );
            for (n, f) in nodes.iter().zip(figures) {
                let score = formula::value(&f, &fleet, &s);
                board
                    .nodes
                    .insert(n.id.clone(), NodeInsight { score, figures: f, fleet, scoring: s, computed_at: now });
            }
        }
        let n = board.nodes.len();
        app.scores.publish(board);
        Ok(if n == 0 { String::new() } else { format!("scored {n}") })
    }
}

fn scoring_of(settings: &HashMap<OrgId, OrgSettings>, org: &OrgId) -> Scoring {
    settings.get(org).map(OrgSettings::scoring_effective).unwrap_or_default()
}

fn quarantine_of(settings: &HashMap<OrgId, OrgSettings>, org: &OrgId) -> Quarantine {
    settings.get(org).map(OrgSettings::quarantine_effective).unwrap_or_default()
}

/// The quarantine loop's state.
#[derive(Default)]
pub struct Quarantiner {
    mem: Memory,
}

/// Sends a node's new desired state (as its row now holds it) to its agent,
/// and wakes placement.
fn push_desired(fx: &mut crate::effects::Effects<'_>, n: &Node) {
    let d = DesiredState {
        state: n.desired_state,
        version: n.desired_state_version,
        reason: n.desired_state_reason.clone(),
    };
    fx.desired(&n.id, d).wake(Signal::Placement);
}

/// A decision's event payload (`quarantine_decision` in docs/events.md).
fn decision(
    node: &NodeId,
    insight: Option<&NodeInsight>,
    q: &Quarantine,
    reason: &str,
    detail: String,
) -> serde_json::Value {
    let explained = insight.map(NodeInsight::explain);
    let insight = explained.as_ref();
    json!({
        "node_id": node,
        "score": insight.map(|i| i.score),
        "below": q.below,
        "release": q.release,
        "probation_ms": q.probation.as_millis() as u64,
        "reasons": insight.map(|i| i.reasons.clone()).unwrap_or_default(),
        "components": insight.map(|i| i.components.iter().map(|c| json!({
            "name": c.name, "penalty": c.penalty, "weight": c.weight, "value": c.value,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "reason": reason,
        "detail": detail,
    })
}

impl Quarantiner {
    pub async fn round(&mut self, app: &App) -> Result<String, StoreError> {
        let settings = app.store.org_settings_all().await?;
        let holds = app.store.auto_quarantines().await?;
        if holds.is_empty() && !settings.values().any(|s| s.quarantine.enabled) {
            app.scores.publish_holds(HashMap::new());
            return Ok(String::new());
        }
        let snap = app.nodes.get(&app.store).await?;
        let board = app.scores.get();
        let holds_of: HashMap<&NodeId, &tether_store::AutoQuarantine> = holds.iter().map(|h| (&h.node_id, h)).collect();
        let mut by_org: HashMap<&OrgId, Vec<&Node>> = HashMap::new();
        for n in &snap.nodes {
            by_org.entry(&n.org_id).or_default().push(n);
        }
        let now = now_ms();
        let (mut applied, mut released, mut overridden) = (0, 0, 0);
        for (org, nodes) in by_org {
            let q = quarantine_of(&settings, org);
            if !q.enabled && !nodes.iter().any(|n| holds_of.contains_key(&n.id)) {
                continue;
            }
            let facts: Vec<Facts<'_>> = nodes
                .iter()
                .map(|n| Facts {
                    node: n,
                    score: board.nodes.get(&n.id).map(|i| (i.score, i.figures.beats)),
                    hold: holds_of.get(&n.id).copied(),
                })
                .collect();
            for (id, action) in quarantine::decide(&facts, &q, now, &mut self.mem) {
                let Some(node) = snap.node(&id) else { continue };
                let insight = board.nodes.get(&id);
                match action {
                    Action::Quarantine => {
                        let score = insight.map_or(0.0, |i| i.score);
                        let why = insight.and_then(|i| i.explain().reasons.first().cloned()).unwrap_or_default();
                        let reason = format!("automatic: reliability score {score:.2} below {:.2}; {why}", q.below);
                        let payload = decision(&id, insight, &q, "below_threshold", reason.clone());
                        let mut fx = app.effects();
                        let done = fx.commit(
                            app.store.auto_quarantine(&id, node.desired_state_version, &reason, &payload, now).await?,
                        );
                        if let Some(n) = done {
                            applied += 1;
                            tracing::warn!(node_id = %id, score, "node quarantined automatically");
                            push_desired(&mut fx, &n);
                        }
                    }
                    Action::Release => {
                        let detail = format!(
                            "score at or above {:.2} for the probation of {}s",
                            q.release,
                            q.probation.as_secs()
                        );
                        let payload = decision(&id, insight, &q, "probation_passed", detail);
                        let mut fx = app.effects();
                        if let Some(n) = fx.commit(app.store.auto_release(&id, &payload, now).await?) {
                            released += 1;
                            tracing::info!(node_id = %id, "node released from automatic quarantine");
                            push_desired(&mut fx, &n);
                        }
                    }
                    Action::Overridden => {
                        let detail = format!(
                            "an operator set the desired state to {} since: it is not released automatically",
                            node.desired_state.as_str()
                        );
                        let payload = decision(&id, insight, &q, "operator", detail);
                        overridden += 1;
                        app.effects()
                            .commit(app.store.quarantine_event(node, "quarantine.overridden", &payload, now).await?);
                    }
                    Action::Held(reason) => {
                        let detail = format!(
                            "automatic quarantine already holds its most of this organisation's ready nodes ({:.0}%, at least one)",
                            q.max_share * 100.0
                        );
                        let payload = decision(&id, insight, &q, reason, detail);
                        app.effects().commit(app.store.quarantine_event(node, "quarantine.held", &payload, now).await?);
                    }
                }
            }
        }
        // The holds as they stand after this round, for GetNodeInsights: read
        // again only when the round changed them.
        let holds = if applied + released + overridden > 0 { app.store.auto_quarantines().await? } else { holds };
        let view = holds
            .iter()
            .map(|h| {
                let q = quarantine_of(&settings, &h.org_id);
                (
                    h.node_id.clone(),
                    HoldView { quarantined_at: h.quarantined_at, release_at: self.mem.release_at(&h.node_id, &q) },
                )
            })
            .collect();
        app.scores.publish_holds(view);
        let mut parts = Vec::new();
        if applied > 0 {
            parts.push(format!("quarantined {applied}"));
        }
        if released > 0 {
            parts.push(format!("released {released}"));
        }
        Ok(parts.join(", "))
    }
}
