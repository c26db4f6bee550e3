use serde::{Deserialize, Serialize};
use tether_types::{OrgId, ProjectId, UnixMillis};

use crate::row::Get;
use crate::{Result, Store, on_read};

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

impl Store {
    /// Events after `after` (exclusive) of one project whose kind starts with
    /// `kind_prefix`, oldest first, at most `limit`.
    pub async fn events_since(
        &self,
        project: &ProjectId,
        kind_prefix: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.events_where("project_id", project.as_str(), kind_prefix, after, limit).await
    }

    /// Events after `after` (exclusive) about one organisation (its own and
    /// its projects') whose kind starts with `kind_prefix`, oldest first, at
    /// most `limit`.
    pub async fn org_events_since(&self, org: &OrgId, kind_prefix: &str, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.events_where("org_id", org.as_str(), kind_prefix, after, limit).await
    }

    /// Events whose `column` (a fixed column name, never input) is `owner`.
    async fn events_where(
        &self,
        column: &'static str,
        owner: &str,
        kind_prefix: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let pattern = format!("{}%", kind_prefix.replace('%', "").replace('_', "\\_"));
        let sql = format!(
            "SELECT seq, at, org_id, project_id, kind, subject, payload, principal, principal_role FROM events
             WHERE {column} = $1 AND seq > $2 AND kind LIKE $3 ESCAPE '\\'
             ORDER BY seq LIMIT $4"
        );
        on_read!(self, |pool| {
            sqlx::query(&sql)
                .bind(owner)
                .bind(after)
                .bind(&pattern)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(event_from_row)
                .collect()
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
