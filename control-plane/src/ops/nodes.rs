//! Nodes: enrolment, desired state and its answers, deregistration.

use tether_auth::{Caveat, CredentialKind, Macaroon, hash_join_secret, hashes_equal, parse_join_token, random_bytes};
use tether_store::{NodeEnroll, StoreError};
use tether_types::{
    DesiredNodeState, DesiredState, Error, Labels, Node, NodeCapabilities, NodeId, OrgId, TokenId, UnixMillis,
    validate_labels,
};

use crate::app::{App, now_ms};
use crate::effects::Signal;

/// What an agent sends to enrol, over gRPC or HTTP.
pub struct Enrolment<'a> {
    pub join_token: &'a str,
    pub capabilities: NodeCapabilities,
    pub labels: Labels,
    /// The agent's X25519 public key, secrets are sealed to.
    pub public_key: Vec<u8>,
    /// With mTLS: the agent's CSR (PEM).
    pub csr: &'a [u8],
    /// An HTTP agent: it gets a heartbeat secret instead of a credential.
    pub http: bool,
}

/// What an enrolled agent is given.
pub struct Enrolled {
    pub node: Node,
    /// A node macaroon (gRPC agents without mTLS).
    pub credential: String,
    /// The client certificate (PEM) and the CA that issued it (mTLS).
    pub certificate: String,
    pub ca_certificate: String,
    /// An HTTP agent's heartbeat secret.
    pub http_secret: Option<[u8; 32]>,
}

/// Enrols a node with a join token: checks the token, applies its forced
/// labels and pool, issues what the agent authenticates with, and spends
/// one use of the token. Nothing is written when any check fails.
pub async fn enroll_with_token(app: &App, req: Enrolment<'_>) -> Result<Enrolled, Error> {
    let refused = || Error::unauthenticated("join token is not valid");
    let (jt_id, secret) = parse_join_token(req.join_token).map_err(|_| refused())?;
    // The node's sealing key (raw X25519): secrets are sealed to it.
    if !req.public_key.is_empty() && req.public_key.len() != tether_auth::seal::KEY_LEN {
        return Err(Error::invalid(format!(
            "public_key is a raw X25519 key of {} bytes, not {}",
            tether_auth::seal::KEY_LEN,
            req.public_key.len()
        )));
    }
    let mut labels = req.labels;
    validate_labels(&labels)?;
    let (token, hash) = app.store.join_token_lookup(&jt_id).await?.ok_or_else(refused)?;
    if !hashes_equal(&hash_join_secret(&secret), &hash) {
        return Err(refused());
    }
    let now = now_ms();
    if let Some(why) = token.unusable_reason(now) {
        return Err(Error::unauthenticated(why));
    }
    tether_store::set_actor(tether_store::Actor::new(jt_id.as_str(), "join-token"));
    // The token's labels are forced: they override what the agent asked for.
    labels.extend(token.labels.clone());
    // An organisation join token's pool, unless the node's labels name
    // another; a project's dedicated node keeps its label's pool (or the
    // default) for constraints only.
    let pool = labels
        .get("pool")
        .cloned()
        .or_else(|| (!token.pool.is_empty()).then(|| token.pool.clone()))
        .unwrap_or_else(|| tether_types::DEFAULT_POOL.to_owned());
    let node_id = NodeId::from_random(random_bytes());
    // With mTLS the CSR is checked (and the certificate issued) before
    // anything is written: a bad CSR spends no use of the join token.
    let mtls = !req.http && app.auth.agents_by_certificate();
    let certificate = if mtls { issue_certificate(app, &token.org_id, &node_id, req.csr)? } else { String::new() };
    let root = app.auth.signing_key();
    let node = enroll(
        app,
        &NodeEnroll {
            id: node_id.clone(),
            org_id: token.org_id.clone(),
            project_id: token.project_id.clone(),
            capabilities: req.capabilities,
            labels,
            pool,
            join_token_id: token.id.clone(),
            public_key: req.public_key,
            http_agent_key: req.http.then(|| root.id()),
            now,
        },
    )
    .await?;
    let credential = if mtls || req.http {
        String::new()
    } else {
        Macaroon::mint(
            &root,
            TokenId::from_random(random_bytes()),
            &[Caveat::Kind(CredentialKind::Agent), Caveat::Org(node.org_id.clone()), Caveat::Node(node_id.clone())],
        )
        .encode()
    };
    let ca_certificate = match (&app.ca, mtls) {
        (Some(ca), true) => ca.cert_pem().to_owned(),
        _ => String::new(),
    };
    let http_secret = req.http.then(|| tether_auth::heartbeat::http_agent_secret(&root, &node_id));
    tracing::info!(node_id = %node_id, hostname = node.capabilities.hostname, mtls, http = req.http, "node enrolled");
    metrics::counter!("tether_enrollments_total").increment(1);
    Ok(Enrolled { node, credential, certificate, ca_certificate, http_secret })
}

/// A client certificate for `node` from the agent's CSR (PEM), issued by
/// the control plane's CA for `--agent-cert-lifetime`.
pub fn issue_certificate(app: &App, org: &OrgId, node: &NodeId, csr: &[u8]) -> Result<String, Error> {
    let ca =
        app.ca.as_ref().ok_or_else(|| Error::precondition("this control plane issues no certificates (TLS is off)"))?;
    if csr.is_empty() {
        return Err(Error::invalid("a CSR is required: this control plane authenticates agents by mTLS"));
    }
    if csr.len() > 16 * 1024 {
        return Err(Error::invalid("the CSR is longer than 16 KiB"));
    }
    ca.issue_node(csr, org, node, now_ms(), app.config.agent_cert_lifetime).map_err(|e| Error::invalid(e.to_string()))
}

/// Registers a node (spending one use of its join token).
pub async fn enroll(app: &App, e: &NodeEnroll) -> Result<Node, StoreError> {
    let mut fx = app.effects();
    let node = fx.commit(app.store.node_enroll(e).await?);
    app.registry.enrolled(&node);
    // A new recipient of its project's secrets.
    fx.wake(Signal::Reseal);
    // A node that may be joining for a pool's request.
    fx.wake(Signal::Pools);
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
