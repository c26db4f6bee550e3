//! Nodes: enrolment, desired state and its answers, deregistration.

use tether_store::{NodeEnroll, StoreError};
use tether_types::{DesiredNodeState, DesiredState, Node, NodeId, OrgId, UnixMillis};

use crate::app::{App, now_ms};
use crate::effects::Signal;

/// A client certificate for `node` from the agent's CSR (PEM), issued by
/// the control plane's CA for `--agent-cert-lifetime`.
pub fn issue_certificate(app: &App, org: &OrgId, node: &NodeId, csr: &[u8]) -> Result<String, tether_types::Error> {
    let ca = app
        .ca
        .as_ref()
        .ok_or_else(|| tether_types::Error::precondition("this control plane issues no certificates (TLS is off)"))?;
    if csr.is_empty() {
        return Err(tether_types::Error::invalid("a CSR is required: this control plane authenticates agents by mTLS"));
    }
    if csr.len() > 16 * 1024 {
        return Err(tether_types::Error::invalid("the CSR is longer than 16 KiB"));
    }
    ca.issue_node(csr, org, node, now_ms(), app.config.agent_cert_lifetime)
        .map_err(|e| tether_types::Error::invalid(e.to_string()))
}

/// Registers a node (spending one use of its join token).
pub async fn enroll(app: &App, e: &NodeEnroll) -> Result<Node, StoreError> {
    let mut fx = app.effects();
    let node = fx.commit(app.store.node_enroll(e).await?);
    app.registry.enrolled(&node);
    Ok(node)
}

/// Sets a node's desired state (a new version) and pushes it to the agent.
/// `stopped` stops the node's work first: the control plane decides what the
/// stops mean (job attempts are retried elsewhere once stopped, replicas
/// replaced), not the order in which the agent's reports arrive.
pub async fn set_desired(
    app: &App,
    id: &NodeId,
    state: DesiredNodeState,
    reason: &str,
    drain_deadline: Option<UnixMillis>,
) -> Result<Node, StoreError> {
    let mut fx = app.effects();
    let node = fx.commit(app.store.node_set_desired(id, state, reason, drain_deadline, now_ms()).await?);
    if state == DesiredNodeState::Stopped {
        crate::dispatch::stop_node_work(app, &mut fx, id).await?;
    }
    fx.desired(id, DesiredState { state, version: node.desired_state_version, reason: reason.to_owned() });
    fx.wake(Signal::Placement);
    tracing::info!(node_id = %id, state = state.as_str(), version = node.desired_state_version, "desired state set");
    Ok(node)
}

/// Records the agent's answer to a desired-state version (stale answers
/// change nothing).
pub async fn desired_answered(
    app: &App,
    node: &NodeId,
    version: u64,
    accepted: bool,
    reason: &str,
) -> Result<(), StoreError> {
    let mut fx = app.effects();
    fx.commit(app.store.node_desired_ack(node, version, accepted, reason, now_ms()).await?);
    Ok(())
}

/// Removes a node; its session here is closed.
pub async fn deregister(app: &App, id: &NodeId) -> Result<Node, StoreError> {
    let mut fx = app.effects();
    let node = fx.commit(app.store.node_deregister(id, now_ms()).await?);
    fx.forget(id);
    tracing::info!(node_id = %id, "node deregistered");
    Ok(node)
}
