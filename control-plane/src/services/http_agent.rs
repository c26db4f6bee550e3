//! HTTP agents, for hosts that cannot hold a gRPC stream: `POST
//! /v1/agent/enroll` (a join token buys a node and its heartbeat secret) and
//! `POST /v1/agent/heartbeat` (the node's report, HMAC-signed over the raw
//! body). A refused heartbeat changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tether_auth::heartbeat;
use tether_rest::{domain_error, json_error};
use tether_types::{Error, NodeCapabilities, NodeId, NodeReport};

use crate::app::{App, now_ms};

/// Largest body either route reads.
const MAX_BODY: usize = 64 * 1024;

pub const NODE_HEADER: &str = "x-tether-node";
pub const TIMESTAMP_HEADER: &str = "x-tether-timestamp";
pub const NONCE_HEADER: &str = "x-tether-nonce";
pub const SIGNATURE_HEADER: &str = "x-tether-signature";

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/agent/enroll", post(enroll))
        .route("/v1/agent/heartbeat", post(beat))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Every write records who made it (the join token, the node).
        .layer(axum::middleware::from_fn(|req, next: axum::middleware::Next| tether_store::audited(next.run(req))))
        .with_state(app)
}

fn error(e: Error) -> Response {
    domain_error(&e)
}

fn unauthorized(message: &str) -> Response {
    json_error(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    join_token: String,
    hostname: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    agent_version: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The agent's X25519 public key (hex), for sealed secrets.
    #[serde(default)]
    public_key: String,
}

async fn enroll(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let body: EnrollBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(Error::invalid(format!("the enrolment request is not valid: {e}"))),
    };
    let capabilities = match NodeCapabilities::try_from(tether_proto::pb::NodeCapabilities {
        hostname: body.hostname,
        os: body.os,
        arch: body.arch,
        agent_version: body.agent_version,
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let Some(public_key) = tether_auth::hex_decode(&body.public_key) else {
        return error(Error::invalid("public_key must be hex"));
    };
    let enrolment = crate::ops::nodes::Enrolment {
        join_token: &body.join_token,
        capabilities,
        labels: body.labels.into_iter().collect(),
        public_key,
        csr: &[],
        http: true,
    };
    match crate::ops::nodes::enroll_with_token(&app, enrolment).await {
        Ok(e) => axum::Json(serde_json::json!({
            "node_id": e.node.id.to_string(),
            "organization_id": e.node.org_id.to_string(),
            "project_id": e.node.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            "pool": e.node.pool,
            "secret": tether_auth::hex_encode(&e.http_secret.unwrap_or_default()),
            "heartbeat_interval_seconds": app.config.heartbeat_interval.as_secs_f64(),
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn beat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (Some(node), Some(timestamp), Some(nonce), Some(signature)) = (
        header(&headers, NODE_HEADER),
        header(&headers, TIMESTAMP_HEADER),
        header(&headers, NONCE_HEADER),
        header(&headers, SIGNATURE_HEADER),
    ) else {
        return unauthorized(
            "a heartbeat needs x-tether-node, x-tether-timestamp, x-tether-nonce and x-tether-signature",
        );
    };
    let refused = || unauthorized("the node or its signature is not valid");
    let Ok(node) = NodeId::parse(node) else { return refused() };
    let agent = match app.store.http_agent_get(&node).await {
        Ok(Some(a)) => a,
        Ok(None) => return refused(),
        Err(e) => return error(e.into()),
    };
    let Some(root) = app.auth.root_key(agent.root_key_id) else {
        tracing::error!(node_id = %node, root_key = agent.root_key_id, "an HTTP agent's root key is missing");
        return refused();
    };
    let secret = heartbeat::http_agent_secret(&root, &node);
    let now = now_ms();
    if let Err(e) = heartbeat::verify(&secret, timestamp, nonce, &body, signature, now) {
        return unauthorized(&e.to_string());
    }
    // Authenticated: now the body may be read, and refused for what it says.
    let report = match NodeReport::parse(&body) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let json = serde_json::to_string(&report).unwrap_or_default();
    tether_store::set_actor(tether_store::Actor::new(node.as_str(), "agent"));
    match app.store.http_agent_beat(&node, nonce, &json, now).await {
        Ok(true) => {}
        Ok(false) => return unauthorized("this nonce was used already: each heartbeat needs a new one"),
        Err(e) => return error(e.into()),
    }
    app.registry.http_beat(&node).await;
    axum::Json(serde_json::json!({
        "node_id": node.to_string(),
        "heartbeat_interval_seconds": app.config.heartbeat_interval.as_secs_f64(),
    }))
    .into_response()
}
