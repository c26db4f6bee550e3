//! Enrolment and the session loop: connect, hello, beat, reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_proto::Bearer;
use tether_proto::agent_pb::agent_service_client::AgentServiceClient;
use tether_proto::agent_pb::{self, heartbeat_request, heartbeat_response};
use tether_types::Command;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::Config;
use crate::backoff::Backoff;
use crate::fence::Fence;
use crate::host::{self, Sampler};
use crate::runner::Runner;
use crate::state::{Identity, NodeCertificate, StateDir};

/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// The beat rate until a session's configuration arrives.
const PRE_CONFIG_INTERVAL: Duration = Duration::from_millis(500);
/// How long a sign-off waits for the control plane to close the stream.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("state directory")]
    State(#[source] std::io::Error),
    #[error("enrolment refused: {0}")]
    EnrollRefused(String),
    #[error("a newer agent process took over this node: {0}")]
    Superseded(String),
    #[error("the control plane rejected this node's identity ({0}); remove the state directory and enrol again")]
    IdentityRejected(String),
}

impl AgentError {
    /// Distinct exit codes, so supervisors can tell a takeover from a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) | AgentError::State(_) => 1,
            AgentError::EnrollRefused(_) | AgentError::IdentityRejected(_) => 2,
            AgentError::Superseded(_) => 3,
        }
    }
}

enum End {
    /// Signed off after shutdown was requested.
    Shutdown,
    /// Reconnect after a delay.
    Retry(String),
    /// The client certificate was renewed: reconnect with it at once.
    Renewed,
}

pub struct Agent {
    config: Config,
    shutdown: CancellationToken,
    identity: Identity,
    state: StateDir,
    /// The CA to trust for https URLs (--ca-file).
    ca: Option<tonic::transport::Certificate>,
    next_endpoint: usize,
    backoff: Backoff,
    runner: Runner,
    fence: Arc<Fence>,
    sampler: Sampler,
    /// Beat sequence numbers grow across sessions, so that a late
    /// acknowledgement from an old session is never mistaken for a new one.
    seq: u64,
    /// The beat interval the control plane chose last.
    interval: Duration,
    /// What the node's applications report (see [`crate::report`]).
    reports: crate::report::Reports,
    /// The report version this session sent last (u64::MAX: none yet).
    report_sent: u64,
}

/// An endpoint for `url`: TLS for https (trusting `ca`, else the web PKI
/// roots), presenting `cert` when the node has one.
fn endpoint(
    url: &str,
    ca: Option<&tonic::transport::Certificate>,
    cert: Option<&NodeCertificate>,
) -> Result<Endpoint, AgentError> {
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| AgentError::Config(format!("control-plane URL {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match ca {
            Some(ca) => tls.ca_certificate(ca.clone()),
            None => tls.with_webpki_roots(),
        };
        if let Some(c) = cert {
            tls = tls.identity(tonic::transport::Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        ep = ep.tls_config(tls).map_err(|e| AgentError::Config(format!("TLS for {url:?}: {e}")))?;
    }
    Ok(ep)
}

/// When to renew a certificate: two thirds into its lifetime.
fn renew_at(cert: &NodeCertificate) -> Option<tokio::time::Instant> {
    let (from, to) = tether_auth::pki::validity_pem(&cert.cert_pem).ok()?;
    let at_ms = from + (to - from) * 2 / 3;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(tokio::time::Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms).max(0) as u64))
}

fn classify(s: &Status) -> Option<AgentError> {
    match s.code() {
        Code::Aborted => Some(AgentError::Superseded(s.message().to_owned())),
        Code::Unauthenticated | Code::PermissionDenied => Some(AgentError::IdentityRejected(s.message().to_owned())),
        _ => None,
    }
}

impl Agent {
    /// Loads or creates the identity (enrolling if needed) and bumps the
    /// session generation.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Agent, AgentError> {
        if config.control_planes.is_empty() {
            return Err(AgentError::Config("at least one --control-plane URL is required".into()));
        }
        let ca = match &config.ca_file {
            Some(p) => Some(tonic::transport::Certificate::from_pem(
                std::fs::read(p)
                    .map_err(|e| AgentError::Config(format!("reading the CA file {}: {e}", p.display())))?,
            )),
            None => None,
        };
        let endpoints =
            config.control_planes.iter().map(|u| endpoint(u, ca.as_ref(), None)).collect::<Result<Vec<_>, _>>()?;
        let state = StateDir::open(&config.state_dir).map_err(AgentError::State)?;
        let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
        let mut next_endpoint = 0;
        let mut identity = match state.load().map_err(AgentError::State)? {
            Some(id) => id,
            None => {
                let token = match (&config.join_token, &config.join_token_file) {
                    (Some(t), _) => t.trim().to_owned(),
                    (None, Some(p)) => std::fs::read_to_string(p).map_err(AgentError::State)?.trim().to_owned(),
                    (None, None) => {
                        return Err(AgentError::Config(
                            "this node is not enrolled yet: pass --join-token or --join-token-file".into(),
                        ));
                    }
                };
                loop {
                    let ep = &endpoints[next_endpoint % endpoints.len()];
                    match enroll(ep, &token, &config).await {
                        Ok(id) => break id,
                        Err(s)
                            if matches!(
                                s.code(),
                                Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied
                            ) =>
                        {
                            return Err(AgentError::EnrollRefused(s.message().to_owned()));
                        }
                        Err(s) => {
                            next_endpoint += 1;
                            let d = backoff.next_delay();
                            tracing::warn!(code = ?s.code(), error = s.message(), retry_in = ?d, "enrolment failed");
                            tokio::select! {
                                _ = shutdown.cancelled() => return Err(AgentError::Config("stopped before enrolment".into())),
                                _ = tokio::time::sleep(d) => {}
                            }
                        }
                    }
                }
            }
        };
        backoff.reset();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        identity.generation = (identity.generation + 1).max(now);
        state.save(&identity).map_err(AgentError::State)?;
        let seal_key = match identity.seal_key.as_deref().map(tether_auth::hex_decode) {
            Some(Some(b)) => {
                Some(tether_auth::seal::SealKey::from_bytes(&b).map_err(|e| AgentError::Config(e.to_string()))?)
            }
            Some(None) => return Err(AgentError::Config("identity.json: seal_key is not hex".into())),
            None => {
                tracing::warn!("this node enrolled before sealed secrets: it cannot receive them until enrolled again");
                None
            }
        };
        let base = crate::secrets::base_dir(&config.state_dir, &identity.node_id);
        let keyring =
            crate::secrets::Keyring::open(identity.node_id.clone(), seal_key, base).map_err(AgentError::State)?;
        let runner = Runner::open(&config.state_dir, keyring).map_err(AgentError::State)?;
        let fence = Arc::new(Fence::new());
        tokio::spawn(crate::fence::watchdog(fence.clone(), runner.clone(), shutdown.clone()));
        let reports = crate::report::Reports::default();
        crate::report::serve(&config.state_dir, reports.clone(), shutdown.clone())
            .await
            .map_err(|e| AgentError::Config(format!("the report socket in {}: {e}", config.state_dir.display())))?;
        tracing::info!(
            node_id = identity.node_id,
            generation = identity.generation,
            mtls = identity.certificate.is_some(),
            "agent identity ready"
        );
        Ok(Agent {
            config,
            shutdown,
            identity,
            state,
            ca,
            next_endpoint,
            backoff,
            runner,
            fence,
            sampler: Sampler::new(),
            seq: 0,
            interval: Duration::from_secs(5),
            reports,
            report_sent: u64::MAX,
        })
    }

    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut sent_capabilities = false;
        let mut applied_version = 0u64;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            let url = &self.config.control_planes[self.next_endpoint % self.config.control_planes.len()];
            let ep = endpoint(url, self.ca.as_ref(), self.identity.certificate.as_ref())?;
            let started = Instant::now();
            let span = tracing::info_span!("session", node_id = %self.identity.node_id, endpoint = %ep.uri());
            let result = self.session(&ep, &mut sent_capabilities, &mut applied_version).instrument(span).await;
            match result {
                Ok(End::Shutdown) => return Ok(()),
                Ok(End::Renewed) => {
                    tracing::info!("client certificate renewed; reconnecting with it");
                }
                Ok(End::Retry(why)) => {
                    if started.elapsed() >= STABLE_SESSION {
                        self.backoff.reset();
                    } else {
                        self.next_endpoint += 1;
                    }
                    let d = self.backoff.next_delay();
                    tracing::warn!(reason = why, retry_in = ?d, "session ended; reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn session(
        &mut self,
        ep: &Endpoint,
        sent_capabilities: &mut bool,
        applied_version: &mut u64,
    ) -> Result<End, AgentError> {
        let channel = match ep.connect().await {
            Ok(c) => c,
            Err(e) => return Ok(End::Retry(format!("connect: {e}"))),
        };
        let client = client(channel, &self.identity.credential);
        // A new session's first beat carries the report again, even empty
        // (the control plane then drops what an earlier process reported).
        self.report_sent = u64::MAX;
        let result = self.session_loop(client, sent_capabilities, applied_version).await;
        self.runner.detach();
        result
    }

    /// The next beat, recorded for the fence.
    fn beat(&mut self) -> agent_pb::HeartbeatRequest {
        self.seq += 1;
        let (cpu, mem, disk) = self.sampler.sample(&self.config.state_dir);
        let beat = agent_pb::Beat {
            seq: self.seq,
            cpu_percent: cpu,
            memory_used_mb: mem,
            disk_used_mb: disk,
            running_allocations: self.runner.running(),
            rtt: self.fence.take_rtt().map(tether_types::duration_to_pb),
            report: self.reports.changed_since(self.report_sent).map(|(r, version)| {
                self.report_sent = version;
                tether_proto::pb::NodeReport { reported_at: None, ..r.to_pb(0) }
            }),
        };
        self.fence.sent(self.seq);
        agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Beat(beat)) }
    }

    /// One session: the Heartbeat stream (Hello, then beats at once and on
    /// the interval, never waiting for an answer), then the Jobs stream once
    /// the control plane has answered the Heartbeat call. A slow link delays
    /// the answers, never the beats.
    async fn session_loop(
        &mut self,
        client: AuthedClient,
        sent_capabilities: &mut bool,
        applied_version: &mut u64,
    ) -> Result<End, AgentError> {
        let (hb_tx, hb_rx) = mpsc::channel(8);
        let hello = agent_pb::Hello {
            node_id: self.identity.node_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: (!*sent_capabilities)
                .then(|| host::capabilities(&self.config.state_dir, self.config.hostname.as_deref())),
            session_generation: self.identity.generation,
            desired_state_version: *applied_version,
        };
        let _ = hb_tx.try_send(agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Hello(hello)) });
        let _ = hb_tx.try_send(self.beat());
        let mut hb_open = {
            let mut c = client.clone();
            Box::pin(async move { c.heartbeat(ReceiverStream::new(hb_rx)).await })
        };
        let mut inbound: Option<tonic::Streaming<agent_pb::HeartbeatResponse>> = None;
        type JobsOpen = std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<tonic::Response<tonic::Streaming<agent_pb::JobsResponse>>, Status>,
                    > + Send,
            >,
        >;
        let mut jobs_open: Option<JobsOpen> = None;
        let mut jobs_in: Option<tonic::Streaming<agent_pb::JobsResponse>> = None;

        // Until this session's configuration arrives (a round trip, long on
        // a slow link), beat at least twice a second, so that the control
        // plane hears from the node within any sensible grace.
        let mut interval = self.interval.min(PRE_CONFIG_INTERVAL);
        let mut jitter = Duration::ZERO;
        let jitter_src = Backoff::new(Duration::ZERO, Duration::ZERO);
        let mut next_beat = tokio::time::Instant::now() + interval;
        // Certificate renewal: the key waiting for its certificate, and when
        // to ask (again).
        let mut renewing: Option<String> = None;
        let mut renew_next = self.identity.certificate.as_ref().and_then(renew_at);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let bye = agent_pb::HeartbeatRequest {
                        msg: Some(heartbeat_request::Msg::Goodbye(agent_pb::Goodbye { reason: "agent stopping".into() })),
                    };
                    if let Some(mut inbound) = inbound
                        && hb_tx.send(bye).await.is_ok()
                    {
                        drop(hb_tx);
                        // Wait for the control plane to record it and end the stream.
                        let _ = tokio::time::timeout(GOODBYE_WAIT, async {
                            while let Ok(Some(_)) = inbound.message().await {}
                        })
                        .await;
                    }
                    tracing::info!("signed off");
                    return Ok(End::Shutdown);
                }
                opened = &mut hb_open, if inbound.is_none() => match opened {
                    Ok(r) => {
                        inbound = Some(r.into_inner());
                        *sent_capabilities = true;
                        tracing::info!("heartbeat session open");
                        // Jobs: first report everything held, then updates.
                        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
                        let _ = jobs_tx.send((tether_types::AgentMessage::Holding(self.runner.report()), None));
                        self.runner.attach(jobs_tx);
                        let outbound = UnboundedReceiverStream::new(jobs_rx).map(|(m, _permit): crate::runner::Outbound| m.into_pb());
                        let mut c = client.clone();
                        jobs_open = Some(Box::pin(async move { c.jobs(outbound).await }));
                    }
                    Err(s) => return classify(&s).map_or_else(|| Ok(End::Retry(format!("heartbeat: {s}"))), Err),
                },
                opened = async { jobs_open.as_mut().expect("guarded").await }, if jobs_open.is_some() => {
                    jobs_open = None;
                    match opened {
                        Ok(r) => {
                            jobs_in = Some(r.into_inner());
                            tracing::info!("connected");
                        }
                        Err(s) => {
                            return classify(&s).map_or_else(|| Ok(End::Retry(format!("jobs stream refused: {s}"))), Err);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(renew_next.expect("guarded")).await }, if renew_next.is_some() && inbound.is_some() => {
                    renew_next = None;
                    match tether_auth::pki::new_node_key() {
                        Ok((key, csr)) => {
                            let renew = agent_pb::RenewCertificate { csr: csr.into_bytes() };
                            if hb_tx.try_send(agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Renew(renew)) }).is_ok() {
                                tracing::info!("renewing the client certificate");
                                renewing = Some(key);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "making a key for renewal failed"),
                    }
                    if renewing.is_none() {
                        renew_next = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                }
                msg = next_message(&mut inbound) => match msg {
                    Some(Ok(agent_pb::HeartbeatResponse { msg: Some(m) })) => match m {
                        heartbeat_response::Msg::Config(c) => {
                            interval = c.interval.as_ref().map(tether_types::duration_from_pb).unwrap_or(self.interval).max(Duration::from_millis(50));
                            self.interval = interval;
                            jitter = c.jitter.as_ref().map(tether_types::duration_from_pb).unwrap_or(Duration::ZERO);
                            self.fence.set_after(c.fence_after.as_ref().map(tether_types::duration_from_pb));
                            next_beat = next_beat.min(tokio::time::Instant::now() + interval);
                            tracing::debug!(?interval, ?jitter, "heartbeat configuration");
                        }
                        heartbeat_response::Msg::BeatAck(a) => self.fence.acked(a.seq),
                        heartbeat_response::Msg::Certificate(c) => {
                            let Some(key_pem) = renewing.take() else { continue };
                            if c.certificate.is_empty() {
                                tracing::warn!(error = c.error, "certificate renewal refused; retrying later");
                                renew_next = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                                continue;
                            }
                            self.identity.certificate = Some(NodeCertificate { cert_pem: c.certificate, key_pem });
                            self.state.save(&self.identity).map_err(AgentError::State)?;
                            return Ok(End::Renewed);
                        }
                        heartbeat_response::Msg::DesiredState(d) => {
                            let ack = self.desired_state(tether_types::DesiredState::from_pb(&d));
                            if ack.accepted {
                                *applied_version = d.version;
                            }
                            if hb_tx.try_send(agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Ack(ack)) }).is_err() {
                                tracing::warn!(version = d.version, "heartbeat stream full; desired-state answer dropped");
                            }
                        }
                    },
                    Some(Ok(_)) => {}
                    None => return Ok(End::Retry("control plane closed the heartbeat stream".into())),
                    Some(Err(s)) => return classify(&s).map_or_else(|| Ok(End::Retry(format!("heartbeat: {s}"))), Err),
                },
                msg = next_message(&mut jobs_in) => match msg {
                    Some(Ok(m)) => match Command::from_pb(m) {
                        Some(Ok(Command::Cancel { key, reason })) => {
                            tracing::info!(job_id = key.0, attempt = key.1, reason, "cancel");
                            self.runner.cancel(&key.0, key.1, &reason);
                        }
                        Some(Ok(Command::Assign(a))) => self.runner.assign(a),
                        Some(Ok(Command::Release(key))) => self.runner.release(&key.0, key.1),
                        Some(Ok(Command::Reseal(r))) => self.runner.reseal(&r),
                        Some(Err((key, e))) => self.runner.refuse(key, e.message),
                        // From a newer control plane: not for this agent.
                        None => {}
                    },
                    // Either stream ending ends the session: both reconnect.
                    Some(Err(s)) => {
                        return classify(&s).map_or_else(|| Ok(End::Retry(format!("jobs stream: {s}"))), Err);
                    }
                    None => return Ok(End::Retry("control plane closed the jobs stream".into())),
                },
                _ = tokio::time::sleep_until(next_beat) => {
                    // Never wait for room: a stream that does not drain is a
                    // link that does not carry beats anyway.
                    match hb_tx.try_send(self.beat()) {
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Ok(End::Retry("heartbeat stream closed".into()));
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => tracing::debug!("heartbeat stream full; beat skipped"),
                        Ok(()) => {}
                    }
                    next_beat = tokio::time::Instant::now() + interval + jitter.mul_f64(jitter_src.unit());
                }
            }
        }
    }

    /// Applies a desired state. Placement-related states (paused, draining,
    /// quarantined) are enforced by the control plane; `stopped` stops all
    /// work here too. Unknown states are NACKed, and not resent.
    fn desired_state(
        &self,
        d: Result<tether_types::DesiredState, (u64, tether_types::Error)>,
    ) -> agent_pb::DesiredStateAck {
        match d {
            Ok(d) => {
                if d.state == tether_types::DesiredNodeState::Stopped {
                    self.runner.stop_all("node is stopped");
                }
                tracing::info!(state = d.state.as_str(), version = d.version, "desired state");
                agent_pb::DesiredStateAck { version: d.version, accepted: true, reason: String::new() }
            }
            Err((version, e)) => {
                tracing::warn!(version, error = %e.message, "desired state refused");
                agent_pb::DesiredStateAck { version, accepted: false, reason: e.message }
            }
        }
    }
}

async fn next_message<T>(s: &mut Option<tonic::Streaming<T>>) -> Option<Result<T, Status>> {
    match s {
        Some(s) => s.message().await.transpose(),
        None => std::future::pending().await,
    }
}

type AuthedClient = AgentServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

fn client(channel: Channel, credential: &str) -> AuthedClient {
    // With mTLS the certificate speaks for the node; there is no macaroon.
    let token = (!credential.is_empty()).then_some(credential);
    AgentServiceClient::with_interceptor(channel, Bearer::new(token).expect("credential is ASCII"))
}

async fn enroll(ep: &Endpoint, token: &str, config: &Config) -> Result<Identity, Status> {
    let channel = ep.connect().await.map_err(|e| Status::unavailable(format!("connect: {e}")))?;
    let mut client = AgentServiceClient::new(channel);
    // A key and CSR for mTLS; a control plane that authenticates agents by
    // macaroon ignores it.
    let (key_pem, csr) = tether_auth::pki::new_node_key().map_err(|e| Status::internal(e.to_string()))?;
    // The key sealed secrets are sealed to; only its public half leaves.
    let seal_key = tether_auth::seal::SealKey::generate();
    let resp = client
        .enroll(agent_pb::EnrollRequest {
            join_token: token.to_owned(),
            capabilities: Some(host::capabilities(&config.state_dir, config.hostname.as_deref())),
            labels: config.labels.iter().cloned().collect(),
            public_key: seal_key.public_key(),
            csr: csr.into_bytes(),
        })
        .await?
        .into_inner();
    let certificate =
        (!resp.client_certificate.is_empty()).then_some(NodeCertificate { cert_pem: resp.client_certificate, key_pem });
    tracing::info!(node_id = resp.node_id, mtls = certificate.is_some(), "enrolled");
    Ok(Identity {
        node_id: resp.node_id,
        project_id: resp.project_id,
        credential: resp.node_credential,
        generation: 0,
        certificate,
        seal_key: Some(tether_auth::hex_encode(&seal_key.to_bytes())),
    })
}
