use tether_types::{
    DesiredNodeState, Error, ErrorCode, JoinTokenId, Labels, Node, NodeCapabilities, NodeId, NodeStatus, NodeTransport,
    OrgId, ProjectId, UnixMillis,
};

use crate::events::append_event;
use crate::row::{Get, to_json};
use crate::{Committed, Result, Store, StoreError, in_tx, in_tx_committed, on_read};

pub(crate) const NODE_COLS: &str =
    "id, org_id, project_id, status, desired_state, desired_state_version, capabilities, labels, pool,
     registered_at, status_changed_at, last_seen_at, session_generation, join_token_id, desired_state_reason,
     acked_desired_state_version, desired_state_nack, drain_deadline, transport";

/// Appends an event about a node (its last record as the payload), with its
/// organisation and the project it is dedicated to, if any.
macro_rules! append_node_event {
    ($tx:expr, $at:expr, $kind:expr, $node:expr) => {{
        let n: &Node = $node;
        append_event!(
            $tx,
            $at,
            Some(n.org_id.as_str()),
            n.project_id.as_ref().map(ProjectId::as_str),
            $kind,
            n.id.as_str(),
            to_json(n)
        )
    }};
}
pub(crate) use append_node_event;

/// An opened session's node and the events its opening appended (kind, seq).
pub type OpenedSession = (Node, Vec<(String, i64)>);

/// One heartbeat session to open (see [`Store::node_sessions_open`]).
#[derive(Debug, Clone)]
pub struct SessionOpen<'a> {
    pub id: &'a NodeId,
    pub generation: u64,
    pub capabilities: Option<&'a NodeCapabilities>,
}

pub(crate) fn node_from_row(r: &impl Get) -> Result<Node> {
    Ok(Node {
        id: NodeId::from_trusted(r.text("id")?),
        org_id: OrgId::from_trusted(r.text("org_id")?),
        project_id: r.opt_text("project_id")?.map(ProjectId::from_trusted),
        status: NodeStatus::parse(&r.text("status")?)?,
        desired_state: DesiredNodeState::parse(&r.text("desired_state")?)?,
        desired_state_version: r.int("desired_state_version")? as u64,
        capabilities: r.json("capabilities", "node capabilities")?,
        labels: r.json("labels", "node labels")?,
        pool: r.text("pool")?,
        registered_at: r.int("registered_at")?,
        status_changed_at: r.int("status_changed_at")?,
        last_seen_at: r.int("last_seen_at")?,
        session_generation: r.int("session_generation")? as u64,
        join_token_id: r.opt_text("join_token_id")?.map(JoinTokenId::from_trusted),
        desired_state_reason: r.text("desired_state_reason")?,
        acked_desired_state_version: r.int("acked_desired_state_version")? as u64,
        desired_state_nack: r.text("desired_state_nack")?,
        drain_deadline: r.opt_int("drain_deadline")?,
        transport: NodeTransport::parse(&r.text("transport")?)?,
    })
}

/// A node to register, with its join token's labels already applied.
#[derive(Debug, Clone)]
pub struct NodeEnroll {
    pub id: NodeId,
    pub org_id: OrgId,
    /// Set when enrolled with a project join token: dedicated to it.
    pub project_id: Option<ProjectId>,
    pub capabilities: NodeCapabilities,
    pub labels: Labels,
    pub pool: String,
    pub join_token_id: JoinTokenId,
    pub public_key: Vec<u8>,
    /// For an HTTP agent: the root key its heartbeat secret derives from.
    pub http_agent_key: Option<u32>,
    pub now: UnixMillis,
}

/// Which nodes a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeScope {
    /// Every node of the organisation.
    Org(OrgId),
    /// A project's dedicated nodes and those of the pools granted to it.
    Project { org: OrgId, project: ProjectId },
}

impl NodeScope {
    /// The SQL condition (on `$1`, and `$2` for a project) and its binds.
    fn clause(&self) -> (&'static str, Vec<&str>) {
        match self {
            NodeScope::Org(o) => ("org_id = $1", vec![o.as_str()]),
            NodeScope::Project { org, project } => (
                "(project_id = $2 OR (project_id IS NULL AND org_id = $1 AND pool IN
                    (SELECT pool FROM pool_grants WHERE org_id = $1 AND project_id = $2)))",
                vec![org.as_str(), project.as_str()],
            ),
        }
    }
}

/// Filters `node_list` applies in SQL. Label selectors are applied by the caller.
#[derive(Debug, Clone)]
pub struct NodeFilter {
    pub scope: NodeScope,
    pub status: Option<NodeStatus>,
    pub pool: Option<String>,
}

/// One page of nodes, ordered by (registered_at, id).
#[derive(Debug, Clone, PartialEq)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// The key to pass as `after` for the next page; None on the last page.
    pub next: Option<(UnixMillis, NodeId)>,
}

/// A liveness transition decided by the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub id: NodeId,
    pub status: NodeStatus,
    pub at: UnixMillis,
    pub last_seen_at: UnixMillis,
}

impl Store {
    /// Registers a node, spending one use of its join token, in one transaction.
    pub async fn node_enroll(&self, e: &NodeEnroll) -> Result<Committed<Node>> {
        let node = Node {
            id: e.id.clone(),
            org_id: e.org_id.clone(),
            project_id: e.project_id.clone(),
            status: NodeStatus::Pending,
            desired_state: DesiredNodeState::Active,
            desired_state_version: 1,
            capabilities: e.capabilities.clone(),
            labels: e.labels.clone(),
            pool: e.pool.clone(),
            registered_at: e.now,
            status_changed_at: e.now,
            last_seen_at: 0,
            session_generation: 0,
            join_token_id: Some(e.join_token_id.clone()),
            desired_state_reason: String::new(),
            acked_desired_state_version: 0,
            desired_state_nack: String::new(),
            drain_deadline: None,
            transport: if e.http_agent_key.is_some() { NodeTransport::Http } else { NodeTransport::Grpc },
        };
        let out = in_tx_committed!(self, |tx| {
            let spent = sqlx::query(
                "UPDATE join_tokens SET uses = uses + 1
                 WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL AND expires_at > $3
                   AND (max_uses = 0 OR uses < max_uses)",
            )
            .bind(e.join_token_id.as_str())
            .bind(e.org_id.as_str())
            .bind(e.now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if spent != 1 {
                return Err(Error::unauthenticated("join token is not valid").into());
            }
            sqlx::query(
                "INSERT INTO nodes (id, org_id, project_id, status, desired_state, desired_state_version,
                                    capabilities, labels, pool, registered_at, status_changed_at, last_seen_at,
                                    lease_replica, session_generation, join_token_id, public_key, transport)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, '', $13, $14, $15, $16)",
            )
            .bind(node.id.as_str())
            .bind(node.org_id.as_str())
            .bind(node.project_id.as_ref().map(ProjectId::as_str))
            .bind(node.status.as_str())
            .bind(node.desired_state.as_str())
            .bind(node.desired_state_version as i64)
            .bind(to_json(&node.capabilities))
            .bind(to_json(&node.labels))
            .bind(&node.pool)
            .bind(node.registered_at)
            .bind(node.status_changed_at)
            .bind(node.last_seen_at)
            .bind(node.session_generation as i64)
            .bind(e.join_token_id.as_str())
            .bind(&e.public_key)
            .bind(node.transport.as_str())
            .execute(&mut *tx)
            .await?;
            if let Some(key) = e.http_agent_key {
                sqlx::query(
                    "INSERT INTO http_agents (node_id, root_key_id, report, reported_at) VALUES ($1, $2, '', 0)",
                )
                .bind(node.id.as_str())
                .bind(i64::from(key))
                .execute(&mut *tx)
                .await?;
            }
            append_node_event!(tx, e.now, "node.registered", &node);
            Ok(node.clone())
        });
        self.node_changed();
        out
    }

    pub async fn node_get(&self, id: &NodeId) -> Result<Option<Node>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
                .map(|r| node_from_row(&r))
                .transpose()
        })
    }

    /// Nodes matching `filter` after the key `after`, at most `limit`.
    pub async fn node_list(
        &self,
        filter: &NodeFilter,
        after: Option<&(UnixMillis, NodeId)>,
        limit: u32,
    ) -> Result<NodePage> {
        let (after_at, after_id) = after.map(|(t, id)| (*t, id.as_str())).unwrap_or((i64::MIN, ""));
        let (scope, binds) = filter.scope.clause();
        let n = binds.len();
        let sql = format!(
            "SELECT {NODE_COLS} FROM nodes
             WHERE {scope}
               AND (${a} = '' OR status = ${a})
               AND (${b} = '' OR pool = ${b})
               AND (registered_at > ${c} OR (registered_at = ${c} AND id > ${d}))
             ORDER BY registered_at, id
             LIMIT ${e}",
            a = n + 1,
            b = n + 2,
            c = n + 3,
            d = n + 4,
            e = n + 5,
        );
        let nodes: Vec<Node> = on_read!(self, |pool| {
            let mut q = sqlx::query(&sql);
            for b in &binds {
                q = q.bind(*b);
            }
            q.bind(filter.status.map(NodeStatus::as_str).unwrap_or(""))
                .bind(filter.pool.as_deref().unwrap_or(""))
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(limit) + 1)
                .fetch_all(pool)
                .await?
                .iter()
                .map(node_from_row)
                .collect::<Result<_>>()
        })?;
        let mut nodes = nodes;
        let next = if nodes.len() > limit as usize {
            nodes.truncate(limit as usize);
            nodes.last().map(|n| (n.registered_at, n.id.clone()))
        } else {
            None
        };
        Ok(NodePage { nodes, next })
    }

    /// Every node of every project; the control plane's start-up load.
    pub async fn node_list_all(&self) -> Result<Vec<Node>> {
        on_read!(self, |pool| {
            sqlx::query(&format!("SELECT {NODE_COLS} FROM nodes ORDER BY registered_at, id"))
                .fetch_all(pool)
                .await?
                .iter()
                .map(node_from_row)
                .collect()
        })
    }

    /// Opens a heartbeat session: marks the node ready, records the session
    /// generation and, when given, new capabilities. Refuses a generation lower
    /// than the stored one (ABORTED), which fences stale agent processes even
    /// across control-plane restarts. Returns the node and the events appended.
    pub async fn node_session_open(
        &self,
        id: &NodeId,
        generation: u64,
        capabilities: Option<&NodeCapabilities>,
        replica: &str,
        now: UnixMillis,
    ) -> Result<(Node, Vec<(String, i64)>)> {
        let open = SessionOpen { id, generation, capabilities };
        self.node_sessions_open(&[open], replica, now).await?.pop().expect("one answer per open")
    }

    /// [`Store::node_session_open`] for many nodes in one transaction with
    /// three statements however many there are (group commit for reconnect
    /// storms): one read, one update, and an event insert per node whose
    /// status or capabilities changed. Each open gets its own answer; a
    /// refused one (not registered, fenced) changes nothing. A node named
    /// twice is opened in order: its later opens go in a further round of the
    /// same transaction, which sees the earlier ones.
    pub async fn node_sessions_open(
        &self,
        opens: &[SessionOpen<'_>],
        replica: &str,
        now: UnixMillis,
    ) -> Result<Vec<Result<OpenedSession>>> {
        if opens.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "SELECT {NODE_COLS} FROM nodes WHERE id IN (SELECT i.id FROM {})",
            self.json_rows("i", &[("id", "text")])
        );
        // `u` has an id too: name the returned columns by table.
        let returning = NODE_COLS.split(',').map(|c| format!("nodes.{}", c.trim())).collect::<Vec<_>>().join(", ");
        let update = format!(
            "UPDATE nodes SET status = 'ready',
                    status_changed_at = CASE WHEN status = 'ready' THEN status_changed_at ELSE $2 END,
                    last_seen_at = $2, session_generation = u.generation, lease_replica = $3,
                    capabilities = u.caps
             FROM {}
             WHERE nodes.id = u.id RETURNING {returning}",
            self.json_rows("u", &[("id", "text"), ("generation", "bigint"), ("caps", "text")])
        );
        let out = in_tx!(self, |tx| {
            let mut answered: Vec<Option<Result<OpenedSession>>> = opens.iter().map(|_| None).collect();
            let mut pending: Vec<usize> = (0..opens.len()).collect();
            while !pending.is_empty() {
                let mut seen = std::collections::HashSet::new();
                let (round, later): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| seen.insert(opens[i].id));
                pending = later;
                let ids: Vec<serde_json::Value> =
                    round.iter().map(|&i| serde_json::json!({"id": opens[i].id.as_str()})).collect();
                let ids = serde_json::Value::Array(ids).to_string();
                let mut before: std::collections::HashMap<String, Node> = std::collections::HashMap::new();
                for r in sqlx::query(&select).bind(&ids).fetch_all(&mut *tx).await? {
                    let n = node_from_row(&r)?;
                    before.insert(n.id.as_str().to_owned(), n);
                }
                // Decide each open; collect the rows to write.
                let mut answers: Vec<Option<Result<()>>> = Vec::with_capacity(round.len());
                let mut rows = Vec::new();
                for o in round.iter().map(|&i| &opens[i]) {
                    let Some(b) = before.get(o.id.as_str()) else {
                        answers.push(Some(Err(Error::unauthenticated("node is not registered").into())));
                        continue;
                    };
                    if o.generation < b.session_generation {
                        answers.push(Some(Err(Error::new(
                            ErrorCode::Aborted,
                            format!(
                                "session generation {} is older than {}: a newer agent process holds this node",
                                o.generation, b.session_generation
                            ),
                        )
                        .into())));
                        continue;
                    }
                    answers.push(None);
                    rows.push(serde_json::json!({
                        "id": o.id.as_str(),
                        "generation": o.generation as i64,
                        "caps": to_json(o.capabilities.unwrap_or(&b.capabilities)),
                    }));
                }
                let mut after: std::collections::HashMap<String, Node> = std::collections::HashMap::new();
                if !rows.is_empty() {
                    let rows = serde_json::Value::Array(rows).to_string();
                    for r in sqlx::query(&update).bind(rows).bind(now).bind(replica).fetch_all(&mut *tx).await? {
                        let n = node_from_row(&r)?;
                        after.insert(n.id.as_str().to_owned(), n);
                    }
                }
                for (&i, answer) in round.iter().zip(answers) {
                    let o = &opens[i];
                    if let Some(Err(e)) = answer {
                        answered[i] = Some(Err(e));
                        continue;
                    }
                    let (Some(b), Some(node)) = (before.get(o.id.as_str()), after.remove(o.id.as_str())) else {
                        answered[i] = Some(Err(Error::unauthenticated("node is not registered").into()));
                        continue;
                    };
                    let mut events = Vec::new();
                    if o.capabilities.is_some_and(|c| *c != b.capabilities) {
                        let seq = append_node_event!(tx, now, "node.updated", &node);
                        events.push(("node.updated".to_owned(), seq));
                    }
                    if b.status != NodeStatus::Ready {
                        let seq = append_node_event!(tx, now, "node.status_changed", &node);
                        events.push(("node.status_changed".to_owned(), seq));
                    }
                    answered[i] = Some(Ok((node, events)));
                }
            }
            Ok::<_, StoreError>(
                answered.into_iter().map(|a| a.expect("every open is answered in its round")).collect::<Vec<_>>(),
            )
        });
        if out.as_ref().is_ok_and(|r| r.iter().any(|x| x.as_ref().is_ok_and(|(_, ev)| !ev.is_empty()))) {
            self.node_changed();
        }
        out
    }

    /// Applies liveness transitions in one transaction; a change to the status a
    /// node already has is skipped. Returns the changed nodes with their event
    /// sequence numbers.
    pub async fn node_status_apply(&self, changes: &[StatusChange]) -> Result<Vec<(Node, i64)>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let out = in_tx!(self, |tx| {
            let mut out = Vec::with_capacity(changes.len());
            for c in changes {
                let row = sqlx::query(&format!(
                    "UPDATE nodes SET status = $2, status_changed_at = $3,
                            last_seen_at = CASE WHEN last_seen_at > $4 THEN last_seen_at ELSE $4 END
                     WHERE id = $1 AND status <> $2 RETURNING {NODE_COLS}"
                ))
                .bind(c.id.as_str())
                .bind(c.status.as_str())
                .bind(c.at)
                .bind(c.last_seen_at)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    let node = node_from_row(&row)?;
                    let seq = append_node_event!(tx, c.at, "node.status_changed", &node);
                    out.push((node, seq));
                }
            }
            Ok::<_, StoreError>(out)
        });
        self.node_changed();
        out
    }

    /// Records coarse leases (last seen, holding replica) in one transaction,
    /// one statement per thousand nodes (a statement per node held SQLite's
    /// single writer for half a second at ten thousand nodes). Not an event:
    /// leases change with every flush.
    pub async fn node_leases_flush(&self, leases: &[(NodeId, UnixMillis)], replica: &str) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        // The rows travel as one JSON array: [{"id": ..., "ts": ...}, ...].
        let sql = format!(
            "UPDATE nodes SET last_seen_at = l.ts, lease_replica = $2 FROM {}
             WHERE nodes.id = l.id AND nodes.last_seen_at < l.ts",
            self.json_rows("l", &[("id", "text"), ("ts", "bigint")])
        );
        let batches: Vec<String> = leases
            .chunks(1000)
            .map(|chunk| {
                let rows: Vec<serde_json::Value> =
                    chunk.iter().map(|(id, ts)| serde_json::json!({"id": id.as_str(), "ts": ts})).collect();
                serde_json::Value::Array(rows).to_string()
            })
            .collect();
        in_tx!(self, |tx| {
            for batch in &batches {
                sqlx::query(&sql).bind(batch).bind(replica).execute(&mut *tx).await?;
            }
            Ok::<_, StoreError>(())
        })
    }

    /// Sets a node's desired state; its version increases so the agent can
    /// acknowledge it.
    pub async fn node_set_desired(
        &self,
        id: &NodeId,
        state: DesiredNodeState,
        reason: &str,
        drain_deadline: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<Committed<Node>> {
        let out = in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE nodes SET desired_state = $2, desired_state_version = desired_state_version + 1,
                        desired_state_reason = $3, drain_deadline = $4, desired_state_nack = ''
                 WHERE id = $1 RETURNING {NODE_COLS}"
            ))
            .bind(id.as_str())
            .bind(state.as_str())
            .bind(reason)
            .bind(drain_deadline)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("node {id} not found")))?;
            let node = node_from_row(&row)?;
            append_node_event!(tx, now, "node.desired_state_changed", &node);
            Ok(node)
        });
        self.node_changed();
        out
    }

    /// Records the agent's answer to a desired-state version. Stale answers
    /// (for an older version than the current one) are ignored.
    pub async fn node_desired_ack(
        &self,
        id: &NodeId,
        version: u64,
        accepted: bool,
        reason: &str,
        now: UnixMillis,
    ) -> Result<Committed<Option<Node>>> {
        let out = in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!(
                "UPDATE nodes SET acked_desired_state_version = CASE WHEN $3 = 1 THEN $2 ELSE acked_desired_state_version END,
                        desired_state_nack = CASE WHEN $3 = 1 THEN '' ELSE $4 END
                 WHERE id = $1 AND desired_state_version = $2 RETURNING {NODE_COLS}"
            ))
            .bind(id.as_str())
            .bind(version as i64)
            .bind(i64::from(accepted))
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let node = node_from_row(&row)?;
            let kind = if accepted { "node.desired_state_acked" } else { "node.desired_state_rejected" };
            // The agent's answer, whichever task carries it.
            tx.actor = Some(crate::events::Actor::new(id.as_str(), "agent"));
            append_node_event!(tx, now, kind, &node);
            Ok(Some(node))
        });
        self.node_changed();
        out
    }

    /// Appends an event about a node without changing it (e.g. `node.drain_completed`).
    pub async fn node_event(&self, node: &Node, kind: &str, now: UnixMillis) -> Result<Committed<()>> {
        in_tx_committed!(self, |tx| {
            append_node_event!(tx, now, kind, &node);
            Ok(())
        })
    }

    /// Removes a node; its event carries the last record.
    pub async fn node_deregister(&self, id: &NodeId, now: UnixMillis) -> Result<Committed<Node>> {
        let out = in_tx_committed!(self, |tx| {
            let row = sqlx::query(&format!("DELETE FROM nodes WHERE id = $1 RETURNING {NODE_COLS}"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::not_found(format!("node {id} not found")))?;
            let node = node_from_row(&row)?;
            append_node_event!(tx, now, "node.deregistered", &node);
            Ok(node)
        });
        self.node_changed();
        out
    }
}
