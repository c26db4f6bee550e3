//! `tether.agent.v1.AgentService`: enrolment, heartbeat sessions, job streams.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::agent_pb::{self, heartbeat_request, heartbeat_response};
use tether_types::{AgentMessage, Error, ErrorCode, NodeCapabilities, NodeId, NodeUsage};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::status;
use crate::app::App;
use crate::fleet::registry::{CloseReason, Session};

/// How long a new stream may take to send its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session set-up may wait for an admission permit.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

use crate::stream::BoxStream;

pub struct AgentApi {
    app: Arc<App>,
}

impl AgentApi {
    pub fn new(app: Arc<App>) -> Self {
        AgentApi { app }
    }
}

fn closed_status(app: &App, session: &Session) -> Status {
    if app.shutdown.is_cancelled() {
        return Status::unavailable("control plane is shutting down; reconnect");
    }
    match session.close_reason() {
        Some(CloseReason::Superseded) => Status::aborted("superseded by a newer session of this node"),
        Some(CloseReason::Deregistered) => Status::permission_denied("node was deregistered"),
        Some(CloseReason::Resync) => Status::unavailable(
            "the node was declared down while this session was silent; reconnect and report what it holds",
        ),
        Some(CloseReason::JobsStreamEnded) => Status::unavailable("the session's jobs stream ended; reconnect both"),
        Some(CloseReason::NoJobsStream) => Status::unavailable("no jobs stream was opened in time; reconnect"),
        None => Status::unavailable("session closed"),
    }
}

/// Maps a stream read error, turning tonic's OUT_OF_RANGE for an oversized
/// message into RESOURCE_EXHAUSTED, the code gRPC uses for size limits.
fn read_error(s: Status) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("too large") {
        Status::resource_exhausted(s.message().to_owned())
    } else {
        s
    }
}

#[tonic::async_trait]
impl agent_pb::agent_service_server::AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<agent_pb::EnrollRequest>,
    ) -> Result<Response<agent_pb::EnrollResponse>, Status> {
        let req = req.into_inner();
        let capabilities = NodeCapabilities::try_from(
            req.capabilities.ok_or_else(|| status(Error::invalid("capabilities are required")))?,
        )
        .map_err(status)?;
        let e = crate::ops::nodes::enroll_with_token(
            &self.app,
            crate::ops::nodes::Enrolment {
                join_token: &req.join_token,
                capabilities,
                labels: req.labels.into_iter().collect(),
                public_key: req.public_key,
                csr: &req.csr,
                http: false,
            },
        )
        .await
        .map_err(status)?;
        Ok(Response::new(agent_pb::EnrollResponse {
            node_id: e.node.id.to_string(),
            node_credential: e.credential,
            project_id: e.node.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            organization_id: e.node.org_id.to_string(),
            pool: e.node.pool.clone(),
            ca_certificate: e.ca_certificate,
            client_certificate: e.certificate,
        }))
    }

    type HeartbeatStream = BoxStream<agent_pb::HeartbeatResponse>;

    async fn heartbeat(
        &self,
        req: Request<Streaming<agent_pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let (node, org) = self.app.auth.agent(&req)?;
        if self.app.shutdown.is_cancelled() {
            return Err(Status::unavailable("control plane is shutting down"));
        }
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(Err(e)) => return Err(read_error(e)),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Hello(h)) }))) => h,
            Ok(Ok(Some(_))) => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.node_id != node.as_str() {
            return Err(status(Error::permission_denied("Hello names another node than the credential")));
        }
        let capabilities = hello.capabilities.map(NodeCapabilities::try_from).transpose().map_err(status)?;

        // Admission throttling: bound concurrent session set-ups so that a
        // reconnect storm queues instead of stampeding the database.
        let permit = tokio::time::timeout(ADMISSION_WAIT, self.app.admission.acquire())
            .await
            .map_err(|_| {
                metrics::counter!("tether_admission_rejected_total").increment(1);
                Status::unavailable("control plane is busy admitting sessions; retry with backoff")
            })?
            .map_err(|_| Status::unavailable("control plane is shutting down"))?;
        let (tx, rx) = crate::stream::channel(8);
        let (session, record) = self
            .app
            .registry
            .session_open(&node, org.as_ref(), hello.session_generation, capabilities.as_ref(), tx.clone())
            .await
            .map_err(|e: Error| {
                if e.code != ErrorCode::Aborted {
                    tracing::warn!(node_id = %node, error = &e as &dyn std::error::Error, "session refused");
                }
                if matches!(e.code, ErrorCode::Unavailable | ErrorCode::InsufficientStorage) {
                    self.app.registry.refused_alive(&node);
                }
                status(e)
            })?;
        drop(permit);
        // A node that can take work again.
        self.app.effects().wake(crate::effects::Signal::Placement);

        let jitter = self.app.config.jitter();
        let config = agent_pb::HeartbeatResponse {
            msg: Some(heartbeat_response::Msg::Config(agent_pb::HeartbeatConfig {
                interval: Some(tether_types::duration_to_pb(self.app.config.heartbeat_interval)),
                jitter: Some(tether_types::duration_to_pb(jitter)),
                fence_after: Some(tether_types::duration_to_pb(self.app.config.fence_after())),
            })),
        };
        let _ = tx.try_send(Ok(config));
        if hello.desired_state_version < record.desired_state_version {
            let desired = tether_types::DesiredState {
                state: record.desired_state,
                version: record.desired_state_version,
                reason: record.desired_state_reason.clone(),
            };
            let _ = tx.try_send(Ok(desired.to_pb()));
        }
        tracing::info!(node_id = %node, generation = session.generation, "heartbeat session opened");
        let app = self.app.clone();
        let span = tracing::info_span!("heartbeat", node_id = %node, session = session.id);
        self.app.tasks.spawn(heartbeat_session(app, session, org, inbound, tx).instrument(span));
        Ok(Response::new(rx))
    }

    type JobsStream = BoxStream<agent_pb::JobsResponse>;

    async fn jobs(&self, req: Request<Streaming<agent_pb::JobsRequest>>) -> Result<Response<Self::JobsStream>, Status> {
        let (node, _org) = self.app.auth.agent(&req)?;
        if self.app.shutdown.is_cancelled() {
            return Err(Status::unavailable("control plane is shutting down"));
        }
        let mut inbound = req.into_inner();
        let report = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no AllocationReport within 10s")),
            Ok(Err(e)) => return Err(read_error(e)),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before AllocationReport")),
            Ok(Ok(Some(m))) => match AgentMessage::from_pb(m) {
                Some(AgentMessage::Holding(held)) => held,
                _ => return Err(Status::invalid_argument("the first message must be AllocationReport")),
            },
        };
        // The session proves the node is registered and current; the stream
        // lives and dies with it.
        let Some(attached) = self.app.registry.jobs_attach(&node) else {
            return Err(Status::unavailable("this node has no heartbeat session here; open Heartbeat first"));
        };
        let (tx, rx) = crate::stream::channel(crate::fleet::hub::STREAM_BUFFER);
        let cancel = attached.cancel.clone();
        // Register before reading what the node should hold, so that nothing
        // placed in between is missed (a duplicate send is harmless).
        let stream_id = self.app.hub.register(&node, tx.clone(), cancel.clone());
        let app = self.app.clone();
        let span = tracing::info_span!("jobs", node_id = %node);
        self.app.tasks.spawn(
            async move {
                let synced = crate::dispatch::retry_transient(&cancel, "resync after connect", || {
                    Box::pin(crate::dispatch::resync(&app, &node, &report))
                })
                .await;
                match synced {
                    Some(Ok(())) => jobs_session(&app, &node, cancel, inbound, &tx).await,
                    Some(Err(e)) => {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "resync after connect failed; closing the stream"
                        );
                        let _ = tx.send(Err(Status::unavailable("resync failed; reconnect"))).await;
                    }
                    None => {
                        let _ = tx.send(Err(jobs_closed_status(&app))).await;
                    }
                }
                app.hub.unregister(&node, stream_id);
                app.registry.jobs_detached(&node, attached.session);
            }
            .instrument(span),
        );
        Ok(Response::new(rx))
    }
}

fn jobs_closed_status(app: &App) -> Status {
    if app.shutdown.is_cancelled() {
        Status::unavailable("control plane is shutting down; reconnect")
    } else {
        Status::unavailable("session closed, jobs stream replaced or too far behind; reconnect")
    }
}

// The two per-agent session tasks live as long as the agent is connected, and
// a task's size is its future's largest state. Calls that are rare or that
// reach the database are boxed, so they take memory only while they run.
async fn heartbeat_session(
    app: Arc<App>,
    session: Session,
    org: Option<tether_types::OrgId>,
    mut inbound: Streaming<agent_pb::HeartbeatRequest>,
    tx: crate::fleet::registry::HeartbeatTx,
) {
    loop {
        tokio::select! {
            biased;
            _ = session.cancel.cancelled() => {
                let st = closed_status(&app, &session);
                tracing::info!(reason = st.message(), "closing heartbeat session");
                let _ = tx.send(Err(st)).await;
                break;
            }
            msg = inbound.message() => match msg {
                Ok(Some(agent_pb::HeartbeatRequest { msg: Some(m) })) => match m {
                    heartbeat_request::Msg::Beat(b) => {
                        let usage = NodeUsage {
                            cpu_percent: if b.cpu_percent.is_finite() { b.cpu_percent.clamp(0.0, 100_000.0) } else { 0.0 },
                            memory_used_mb: b.memory_used_mb,
                            disk_used_mb: b.disk_used_mb,
                            running_allocations: b.running_allocations,
                        };
                        // A round trip is a duration the agent measured:
                        // negative or absurd ones are dropped.
                        let rtt = b
                            .rtt
                            .filter(|d| d.seconds >= 0 && d.nanos >= 0 && d.seconds < 3600)
                            .map(|d| tether_types::duration_from_pb(&d));
                        let expected = app.config.heartbeat_interval + app.config.jitter() / 2;
                        match Box::pin(app.registry.beat(&session, usage, expected, rtt)).await {
                            crate::fleet::registry::Beat::Counted => {
                                if let Some(r) = &b.report {
                                    match tether_types::NodeReport::from_pb(r) {
                                        Ok(r) if r == tether_types::NodeReport::default() => app.node_reports.remove(&session.node),
                                        Ok(r) => app.node_reports.put(&session.node, r, crate::app::now_ms()),
                                        Err(e) => tracing::warn!(error = %e, "the node's report was refused"),
                                    }
                                }
                                // Best effort: a full queue means the agent is not
                                // reading; a later ack covers this beat too.
                                let _ = tx.try_send(Ok(agent_pb::HeartbeatResponse {
                                    msg: Some(heartbeat_response::Msg::BeatAck(agent_pb::BeatAck { seq: b.seq })),
                                }));
                            }
                            crate::fleet::registry::Beat::Stale => {
                                let _ = tx.send(Err(Status::aborted("superseded by a newer session of this node"))).await;
                                break;
                            }
                            // The session was closed: the cancel branch answers.
                            crate::fleet::registry::Beat::Resync => {}
                        }
                    }
                    heartbeat_request::Msg::Ack(ack) => {
                        if ack.accepted {
                            tracing::info!(version = ack.version, "desired state acknowledged");
                        } else {
                            tracing::warn!(version = ack.version, reason = ack.reason, "desired state rejected by agent");
                        }
                        let reason = tether_types::agent_text(&ack.reason);
                        if let Err(e) = Box::pin(crate::ops::nodes::desired_answered(&app, &session.node, ack.version, ack.accepted, &reason)).await {
                            tracing::warn!(error = &e as &dyn std::error::Error, "recording the desired-state answer failed");
                        }
                    }
                    heartbeat_request::Msg::Goodbye(g) => {
                        tracing::info!(reason = g.reason, "agent signed off");
                        Box::pin(app.registry.goodbye(&session)).await;
                        break;
                    }
                    heartbeat_request::Msg::Renew(r) => {
                        let answer = match (&org, app.auth.agents_by_certificate()) {
                            (Some(org), true) => crate::ops::nodes::issue_certificate(&app, org, &session.node, &r.csr),
                            _ => Err(Error::precondition("this control plane does not authenticate agents by certificate")),
                        };
                        let certificate = match answer {
                            Ok(pem) => {
                                tracing::info!("client certificate renewed");
                                metrics::counter!("tether_agent_certificates_renewed_total").increment(1);
                                agent_pb::Certificate { certificate: pem, error: String::new() }
                            }
                            Err(e) => {
                                tracing::warn!(error = &e as &dyn std::error::Error, "client certificate renewal refused");
                                agent_pb::Certificate { certificate: String::new(), error: e.to_string() }
                            }
                        };
                        let _ = tx.send(Ok(agent_pb::HeartbeatResponse { msg: Some(heartbeat_response::Msg::Certificate(certificate)) })).await;
                    }
                    heartbeat_request::Msg::Hello(_) => {
                        let _ = tx.send(Err(Status::invalid_argument("Hello may only be sent first"))).await;
                        break;
                    }
                },
                Ok(Some(agent_pb::HeartbeatRequest { msg: None })) => {
                    let _ = tx.send(Err(Status::invalid_argument("empty heartbeat message"))).await;
                    break;
                }
                Ok(None) => {
                    tracing::info!("agent closed the heartbeat stream");
                    break;
                }
                Err(e) => {
                    let e = read_error(e);
                    tracing::info!(code = ?e.code(), message = e.message(), "heartbeat stream failed");
                    if e.code() == tonic::Code::ResourceExhausted {
                        let _ = tx.send(Err(e)).await;
                    }
                    break;
                }
            }
        }
    }
    app.registry.session_closed(&session);
}

async fn jobs_session(
    app: &Arc<App>,
    node: &NodeId,
    cancel: tokio_util::sync::CancellationToken,
    mut inbound: Streaming<agent_pb::JobsRequest>,
    tx: &crate::fleet::hub::JobsTx,
) {
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = tx.send(Err(jobs_closed_status(app))).await;
                break;
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    let Some(m) = AgentMessage::from_pb(m) else { continue };
                    // A transient failure (the database down or busy) is
                    // retried here, holding the stream, until it succeeds: an
                    // agent's report is never dropped and never acknowledged
                    // (released) before it is durable.
                    let handled = crate::dispatch::retry_transient(&cancel, "handling a job update", || {
                        Box::pin(crate::dispatch::on_agent_message(app, node, &m))
                    })
                    .await;
                    match handled {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = &e as &dyn std::error::Error, "handling a job update failed; closing the stream to resync");
                            let _ = tx.send(Err(Status::unavailable("update failed; reconnect"))).await;
                            break;
                        }
                        None => {
                            let _ = tx.send(Err(jobs_closed_status(app))).await;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(code = ?e.code(), message = e.message(), "jobs stream ended");
                    break;
                }
            }
        }
    }
}
