use serde::{Deserialize, Serialize};
use tether_types::{OrgId, ProjectId, UnixMillis};

use crate::row::Get;
use crate::{Result, Store, in_tx, on_read};

/// An event kind the control plane writes: its payload schema (named in
/// docs/events.md) and that schema's version. A change to a payload that
/// removes or retypes a field is a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    pub kind: &'static str,
    pub payload: &'static str,
    pub version: u32,
}

/// Every kind written, by resource.
pub const EVENT_KINDS: &[EventKind] = &[
    EventKind { kind: "access_key.created", payload: "access_key", version: 1 },
    EventKind { kind: "access_key.revoked", payload: "access_key", version: 1 },
    EventKind { kind: "allocation.scheduled", payload: "allocation", version: 1 },
    EventKind { kind: "allocation.running", payload: "allocation", version: 1 },
    EventKind { kind: "allocation.stopping", payload: "allocation", version: 1 },
    EventKind { kind: "allocation.finished", payload: "allocation", version: 1 },
    EventKind { kind: "allocation.lost", payload: "allocation", version: 1 },
    EventKind { kind: "job.submitted", payload: "job", version: 1 },
    EventKind { kind: "job.scheduled", payload: "job", version: 1 },
    EventKind { kind: "job.running", payload: "job", version: 1 },
    EventKind { kind: "job.succeeded", payload: "job", version: 1 },
    EventKind { kind: "job.retrying", payload: "job", version: 1 },
    EventKind { kind: "job.failed", payload: "job", version: 1 },
    EventKind { kind: "job.lost", payload: "job", version: 1 },
    EventKind { kind: "job.cancelled", payload: "job", version: 1 },
    EventKind { kind: "join_token.created", payload: "join_token", version: 1 },
    EventKind { kind: "join_token.revoked", payload: "join_token", version: 1 },
    EventKind { kind: "node.registered", payload: "node", version: 1 },
    EventKind { kind: "node.updated", payload: "node", version: 1 },
    EventKind { kind: "node.status_changed", payload: "node", version: 1 },
    EventKind { kind: "node.deregistered", payload: "node", version: 1 },
    EventKind { kind: "node.desired_state_changed", payload: "node", version: 1 },
    EventKind { kind: "node.desired_state_acked", payload: "node", version: 1 },
    EventKind { kind: "node.desired_state_rejected", payload: "node", version: 1 },
    EventKind { kind: "node.drain_completed", payload: "node", version: 1 },
    EventKind { kind: "organization.created", payload: "organization", version: 1 },
    EventKind { kind: "organization.updated", payload: "organization", version: 1 },
    EventKind { kind: "organization.deleted", payload: "organization", version: 1 },
    EventKind { kind: "pool.created", payload: "pool", version: 1 },
    EventKind { kind: "pool.updated", payload: "pool", version: 1 },
    EventKind { kind: "pool.deleted", payload: "pool", version: 1 },
    EventKind { kind: "pool.scaled", payload: "pool_scale", version: 1 },
    EventKind { kind: "pool.autoscale_held", payload: "autoscale_hold", version: 1 },
    EventKind { kind: "pool.scale_requested", payload: "scale_request", version: 1 },
    EventKind { kind: "pool.scale_submitted", payload: "scale_request", version: 1 },
    EventKind { kind: "pool.scale_fulfilled", payload: "scale_request", version: 1 },
    EventKind { kind: "pool.scale_failed", payload: "scale_request", version: 1 },
    EventKind { kind: "pool.granted", payload: "pool_grant", version: 1 },
    EventKind { kind: "pool.revoked", payload: "pool_grant", version: 1 },
    EventKind { kind: "project.created", payload: "project", version: 1 },
    EventKind { kind: "project.updated", payload: "project", version: 1 },
    EventKind { kind: "project.quota_set", payload: "project", version: 1 },
    EventKind { kind: "project.deleted", payload: "project", version: 1 },
    EventKind { kind: "quarantine.applied", payload: "quarantine_decision", version: 1 },
    EventKind { kind: "quarantine.released", payload: "quarantine_decision", version: 1 },
    EventKind { kind: "quarantine.held", payload: "quarantine_decision", version: 1 },
    EventKind { kind: "quarantine.overridden", payload: "quarantine_decision", version: 1 },
    EventKind { kind: "root_key.rotated", payload: "root_key", version: 1 },
    EventKind { kind: "secret.put", payload: "secret_version", version: 1 },
    EventKind { kind: "secret.deleted", payload: "secret_deletion", version: 1 },
    EventKind { kind: "secret.resealed", payload: "secret_copy", version: 1 },
    EventKind { kind: "settings.updated", payload: "settings", version: 1 },
    EventKind { kind: "token.created", payload: "token", version: 1 },
    EventKind { kind: "token.revoked", payload: "token", version: 1 },
    EventKind { kind: "usage.ingested", payload: "usage_ingest", version: 1 },
    EventKind { kind: "workload.created", payload: "workload", version: 1 },
    EventKind { kind: "workload.updated", payload: "workload", version: 1 },
    EventKind { kind: "workload.scaled", payload: "workload", version: 1 },
    EventKind { kind: "workload.deleted", payload: "workload", version: 1 },
];

/// The kind's description, if it is one this control plane writes.
pub fn event_kind(kind: &str) -> Option<&'static EventKind> {
    EVENT_KINDS.iter().find(|k| k.kind == kind)
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic, in commit order.
    pub seq: i64,
    pub at: UnixMillis,
    /// The organisation the event is about (unset for the platform's own).
    pub org_id: Option<OrgId>,
    pub project_id: Option<ProjectId>,
    /// Dotted, resource first: `node.registered`, `join_token.revoked`.
    pub kind: String,
    /// The id of the resource the event is about.
    pub subject: String,
    /// The resource as it was after the change.
    pub payload: serde_json::Value,
    /// Who made the change; None for the control plane's own work.
    #[serde(default)]
    pub actor: Option<Actor>,
}

/// Who made a change, as the audit records it: a token id, an access key
/// id, a node id or a join token id, and the role it acted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub principal: String,
    pub role: String,
}

impl Actor {
    pub fn new(principal: impl Into<String>, role: impl Into<String>) -> Self {
        Actor { principal: principal.into(), role: role.into() }
    }
}

tokio::task_local! {
    /// The actor of the request being served, filled in once it is
    /// authenticated (see [`audited`]).
    static ACTOR: std::sync::Arc<std::sync::Mutex<Option<Actor>>>;
}

/// Runs `fut` (one request) with an empty actor slot that [`set_actor`]
/// fills; every event its writes append records that actor.
pub async fn audited<F: std::future::Future>(fut: F) -> F::Output {
    ACTOR.scope(Default::default(), fut).await
}

/// Names the actor of the request being served; outside [`audited`] it
/// does nothing.
pub fn set_actor(actor: Actor) {
    let _ = ACTOR.try_with(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor));
}

/// The actor of the request being served, if any; for work handed to
/// another task (group commit), which records it explicitly.
pub fn current_actor() -> Option<Actor> {
    ACTOR.try_with(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).clone()).ok().flatten()
}

/// Appends one event inside the caller's transaction and evaluates to its
/// sequence number. Expanded per backend by the `in_tx!` bodies. The
/// six-argument form is for a project's events (its organisation is looked
/// up); the seven-argument form names the organisation, for events about an
/// organisation's nodes, pools and grants (`project` then None, or a
/// dedicated node's project).
macro_rules! append_event {
    ($tx:expr, $at:expr, $project:expr, $kind:expr, $subject:expr, $payload:expr) => {{
        debug_assert!($crate::events::event_kind($kind).is_some(), "event kind {} is not in EVENT_KINDS", $kind);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (at, project_id, kind, subject, payload, org_id, principal, principal_role)
             VALUES ($1, $2, $3, $4, $5, (SELECT org_id FROM projects WHERE id = $2), $6, $7) RETURNING seq",
        )
        .bind($at)
        .bind($project)
        .bind($kind)
        .bind($subject)
        .bind($payload)
        .bind($tx.principal())
        .bind($tx.principal_role())
        .fetch_one(&mut *$tx)
        .await?;
        $tx.seq = Some($tx.seq.map_or(seq, |s: i64| s.max(seq)));
        seq
    }};
    ($tx:expr, $at:expr, $org:expr, $project:expr, $kind:expr, $subject:expr, $payload:expr) => {{
        debug_assert!($crate::events::event_kind($kind).is_some(), "event kind {} is not in EVENT_KINDS", $kind);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (at, org_id, project_id, kind, subject, payload, principal, principal_role)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
        )
        .bind($at)
        .bind($org)
        .bind($project)
        .bind($kind)
        .bind($subject)
        .bind($payload)
        .bind($tx.principal())
        .bind($tx.principal_role())
        .fetch_one(&mut *$tx)
        .await?;
        $tx.seq = Some($tx.seq.map_or(seq, |s: i64| s.max(seq)));
        seq
    }};
}
pub(crate) use append_event;

pub(crate) fn event_from_row(r: &impl Get) -> Result<Event> {
    Ok(Event {
        seq: r.int("seq")?,
        at: r.int("at")?,
        org_id: r.opt_text("org_id")?.map(OrgId::from_trusted),
        project_id: r.opt_text("project_id")?.map(ProjectId::from_trusted),
        kind: r.text("kind")?,
        subject: r.text("subject")?,
        payload: r.json("payload", "event payload")?,
        actor: match (r.opt_text("principal")?, r.opt_text("principal_role")?) {
            (Some(principal), role) => Some(Actor { principal, role: role.unwrap_or_default() }),
            (None, _) => None,
        },
    })
}

/// Whose events a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventScope {
    /// Every event (the control plane's own readers).
    All,
    /// An organisation's, its projects' included.
    Org(OrgId),
    /// One project's.
    Project(ProjectId),
}

/// What `events_query` reads; every set field narrows.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub scope: EventScope,
    /// Events after this sequence.
    pub after: i64,
    pub kind_prefix: String,
    pub subject: Option<String>,
    pub principal: Option<String>,
    /// Committed at or after.
    pub from_at: Option<UnixMillis>,
    /// Committed before.
    pub until_at: Option<UnixMillis>,
}

impl EventQuery {
    pub fn new(scope: EventScope, after: i64) -> Self {
        EventQuery {
            scope,
            after,
            kind_prefix: String::new(),
            subject: None,
            principal: None,
            from_at: None,
            until_at: None,
        }
    }

    /// Whether `e` is one [`Store::events_query`] would answer (its
    /// sequence aside): for readers that filter events already in memory.
    pub fn matches(&self, e: &Event) -> bool {
        let in_scope = match &self.scope {
            EventScope::All => true,
            EventScope::Org(o) => e.org_id.as_ref() == Some(o),
            EventScope::Project(p) => e.project_id.as_ref() == Some(p),
        };
        in_scope
            && e.kind.starts_with(&self.kind_prefix)
            && self.subject.as_ref().is_none_or(|s| s == &e.subject)
            && self.principal.as_ref().is_none_or(|p| e.actor.as_ref().is_some_and(|a| &a.principal == p))
            && self.from_at.is_none_or(|t| e.at >= t)
            && self.until_at.is_none_or(|t| e.at < t)
    }
}

impl Store {
    /// One page of the log for `ListEvents` and catching-up watchers:
    /// events after `q.after` in `q.scope` matching the filters, oldest
    /// first, at most `limit`.
    pub async fn events_query(&self, q: &EventQuery, limit: u32) -> Result<Vec<Event>> {
        // Column names are fixed here; every value is a bind.
        let mut sql = String::from(
            "SELECT seq, at, org_id, project_id, kind, subject, payload, principal, principal_role FROM events
             WHERE seq > $1",
        );
        let mut texts: Vec<String> = Vec::new();
        let mut push = |sql: &mut String, clause: &str, v: String| {
            texts.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", texts.len() + 1)));
        };
        match &q.scope {
            EventScope::All => {}
            EventScope::Org(o) => push(&mut sql, " AND org_id = ?", o.to_string()),
            EventScope::Project(p) => push(&mut sql, " AND project_id = ?", p.to_string()),
        }
        if !q.kind_prefix.is_empty() {
            let pattern = format!("{}%", q.kind_prefix.replace(['\\', '%'], "").replace('_', "\\_"));
            push(&mut sql, " AND kind LIKE ? ESCAPE '\\'", pattern);
        }
        if let Some(s) = &q.subject {
            push(&mut sql, " AND subject = ?", s.clone());
        }
        if let Some(p) = &q.principal {
            push(&mut sql, " AND principal = ?", p.clone());
        }
        let n = texts.len() + 2;
        sql.push_str(&format!(" AND at >= ${n} AND at < ${} ORDER BY seq LIMIT ${}", n + 1, n + 2));
        let (from, until) = (q.from_at.unwrap_or(i64::MIN), q.until_at.unwrap_or(i64::MAX));
        on_read!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(q.after);
            for t in &texts {
                query = query.bind(t);
            }
            query
                .bind(from)
                .bind(until)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(event_from_row)
                .collect()
        })
    }

    /// The highest sequence removed by retention (0 before any), and the
    /// oldest sequence still held (None when the log is empty).
    pub async fn events_bounds(&self) -> Result<(i64, Option<i64>)> {
        on_read!(self, |pool| {
            let floor: i64 = sqlx::query_scalar("SELECT floor FROM event_log WHERE id = 1").fetch_one(pool).await?;
            let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM events").fetch_one(pool).await?;
            Ok((floor, oldest))
        })
    }

    /// Removes up to `batch` of the oldest events that are older than
    /// `before_at` or beyond the newest `keep`, and raises the floor past
    /// them. Returns how many were removed (fewer than `batch`: done).
    pub async fn events_prune(&self, before_at: UnixMillis, keep: u64, batch: u32) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        in_tx!(self, |tx| {
            // The newest sequence beyond the count, and the newest too old.
            let by_count: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET $1")
                    .bind(keep)
                    .fetch_optional(&mut *tx)
                    .await?;
            let by_age: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE at < $1")
                .bind(before_at)
                .fetch_one(&mut *tx)
                .await?;
            let Some(cut) = by_count.max(by_age) else { return Ok(0) };
            // At most `batch` rows per transaction: the oldest ones.
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE seq <= $1 ORDER BY seq LIMIT $2) AS oldest",
            )
            .bind(cut)
            .bind(i64::from(batch))
            .fetch_one(&mut *tx)
            .await?;
            let Some(last) = last else { return Ok(0) };
            let deleted = sqlx::query("DELETE FROM events WHERE seq <= $1").bind(last).execute(&mut *tx).await?;
            sqlx::query("UPDATE event_log SET floor = $1 WHERE id = 1 AND floor < $1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            Ok(deleted.rows_affected())
        })
    }

    /// The highest sequence number committed so far (0 when the log is empty).
    pub async fn events_head(&self) -> Result<i64> {
        on_read!(self, |pool| {
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events").fetch_one(pool).await?;
            Ok(v.unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/events.md describes every kind with its payload schema and
    /// version, and every schema the kinds name.
    #[test]
    fn every_kind_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md")).unwrap();
        for k in EVENT_KINDS {
            let row = format!("| `{}` | [`{}`](#{}) | {} |", k.kind, k.payload, k.payload.replace('_', "-"), k.version);
            assert!(doc.contains(&row), "docs/events.md lacks the row {row}");
            let section = format!("### `{}`", k.payload);
            assert!(doc.contains(&section), "docs/events.md lacks the section {section}");
        }
        let mut names: Vec<_> = EVENT_KINDS.iter().map(|k| k.kind).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EVENT_KINDS.len(), "a kind listed twice");
    }
}
