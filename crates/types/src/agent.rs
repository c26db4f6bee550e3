//! The agent protocol's commands in domain terms: what the control plane
//! tells an agent over its Jobs stream. Both ends convert the `pb` messages
//! here, once; the control plane's dispatch and the agent's runner work on
//! these types.

use tether_proto::agent_pb::{self, heartbeat_response, jobs_request, jobs_response};

use crate::{AllocKind, DesiredNodeState, Error, ExecSpec, ResealRequest, Resealed, RestartPolicy, SealedSecret};

/// What the control plane wants of a node, pushed on its heartbeat stream.
/// The agent answers each version once, ACK or NACK; a rejected version is
/// not sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub state: DesiredNodeState,
    pub version: u64,
    pub reason: String,
}

impl DesiredState {
    pub fn to_pb(&self) -> agent_pb::HeartbeatResponse {
        agent_pb::HeartbeatResponse {
            msg: Some(heartbeat_response::Msg::DesiredState(agent_pb::DesiredState {
                state: self.state.to_pb() as i32,
                version: self.version,
                reason: self.reason.clone(),
            })),
        }
    }

    /// A state this agent does not know (from a newer control plane, or
    /// unset) is an error naming the version, for the agent to NACK.
    pub fn from_pb(d: &agent_pb::DesiredState) -> Result<DesiredState, (u64, Error)> {
        match DesiredNodeState::from_pb(d.state) {
            Ok(state) => Ok(DesiredState { state, version: d.version, reason: d.reason.clone() }),
            Err(_) => Err((d.version, Error::invalid(format!("unknown desired state {}", d.state)))),
        }
    }
}

/// An allocation as both ends of the Jobs stream name it: (job id, attempt)
/// for a job attempt, (allocation id, 1) for a workload replica.
pub type WireKey = (String, u32);

/// Run this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: WireKey,
    pub exec: ExecSpec,
    pub kind: AllocKind,
    /// For a replica: when it is restarted after it exits. `None` for a job
    /// attempt, which runs once.
    pub restart: Option<RestartPolicy>,
    /// Output kept per run; more is cut and marked.
    pub max_log_bytes: u64,
    /// The copies of `exec.secrets` sealed to this node.
    pub secrets: Vec<SealedSecret>,
}

/// One message from the control plane on a node's Jobs stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Assign(Assignment),
    /// Stop it (its process group is killed); it is reported as finished.
    Cancel {
        key: WireKey,
        reason: String,
    },
    /// Its result is stored: forget it.
    Release(WireKey),
    /// Seal a secret this node holds again, for another node.
    Reseal(ResealRequest),
}

impl Command {
    /// Stop this allocation (the key is its wire id).
    pub fn cancel(a: &crate::Allocation, reason: &str) -> Command {
        Command::Cancel { key: a.wire_id(), reason: reason.to_owned() }
    }

    pub fn to_pb(&self) -> agent_pb::JobsResponse {
        let msg = match self {
            Command::Assign(a) => jobs_response::Msg::Assign(agent_pb::AssignJob {
                job_id: a.key.0.clone(),
                attempt: a.key.1,
                exec: Some(a.exec.to_pb()),
                kind: match a.kind {
                    AllocKind::Job => agent_pb::AllocationKind::Job,
                    AllocKind::Service => agent_pb::AllocationKind::Service,
                } as i32,
                restart: match a.restart {
                    None => agent_pb::ServiceRestart::Unspecified,
                    Some(RestartPolicy::Always) => agent_pb::ServiceRestart::Always,
                    Some(RestartPolicy::OnFailure) => agent_pb::ServiceRestart::OnFailure,
                    Some(RestartPolicy::Never) => agent_pb::ServiceRestart::Never,
                } as i32,
                max_log_bytes: a.max_log_bytes,
                secrets: a.secrets.iter().map(SealedSecret::to_pb).collect(),
            }),
            Command::Cancel { key, reason } => jobs_response::Msg::Cancel(agent_pb::CancelJob {
                job_id: key.0.clone(),
                attempt: key.1,
                reason: reason.clone(),
            }),
            Command::Release(key) => {
                jobs_response::Msg::Release(agent_pb::ReleaseJob { job_id: key.0.clone(), attempt: key.1 })
            }
            Command::Reseal(r) => jobs_response::Msg::Reseal(agent_pb::ResealSecret {
                project_id: r.project_id.clone(),
                name: r.name.clone(),
                version: r.version,
                enc: r.enc.clone(),
                ciphertext: r.ciphertext.clone(),
                target_node_id: r.target_node.clone(),
                target_public_key: r.target_public_key.clone(),
            }),
        };
        agent_pb::JobsResponse { msg: Some(msg) }
    }

    /// `None` for a message this agent does not know (from a newer control
    /// plane); an assignment whose spec does not validate is an error naming
    /// its key, so that the agent can report it failed instead of leaving it
    /// hanging.
    pub fn from_pb(m: agent_pb::JobsResponse) -> Option<Result<Command, (WireKey, Error)>> {
        Some(match m.msg? {
            jobs_response::Msg::Assign(a) => {
                let key = (a.job_id, a.attempt);
                let kind = match agent_pb::AllocationKind::try_from(a.kind) {
                    Ok(agent_pb::AllocationKind::Service) => AllocKind::Service,
                    _ => AllocKind::Job,
                };
                let restart = match (kind, agent_pb::ServiceRestart::try_from(a.restart)) {
                    (AllocKind::Job, _) => None,
                    (_, Ok(agent_pb::ServiceRestart::Never)) => Some(RestartPolicy::Never),
                    (_, Ok(agent_pb::ServiceRestart::OnFailure)) => Some(RestartPolicy::OnFailure),
                    _ => Some(RestartPolicy::Always),
                };
                let secrets = a.secrets.into_iter().map(SealedSecret::from_pb).collect();
                match ExecSpec::from_pb(a.exec) {
                    Ok(exec) => Ok(Command::Assign(Assignment {
                        key,
                        exec,
                        kind,
                        restart,
                        max_log_bytes: a.max_log_bytes,
                        secrets,
                    })),
                    Err(e) => Err((key, e)),
                }
            }
            jobs_response::Msg::Cancel(c) => Ok(Command::Cancel { key: (c.job_id, c.attempt), reason: c.reason }),
            jobs_response::Msg::Release(r) => Ok(Command::Release((r.job_id, r.attempt))),
            jobs_response::Msg::Reseal(r) => Ok(Command::Reseal(ResealRequest {
                project_id: r.project_id,
                name: r.name,
                version: r.version,
                enc: r.enc,
                ciphertext: r.ciphertext,
                target_node: r.target_node_id,
                target_public_key: r.target_public_key,
            })),
        })
    }
}

/// How an allocation's process ended, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub exit_code: i32,
    pub error: String,
    /// The agent gave it up without a result (it fenced itself after losing
    /// contact): lost, not failed.
    pub lost: bool,
}

/// One allocation an agent holds when its Jobs stream opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: WireKey,
    /// Ended, with its result not yet released; `None` while it runs.
    pub finished: Option<Outcome>,
}

/// Which of a process's outputs a chunk is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One message from an agent on its Jobs stream.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// The first message of every Jobs stream: everything the agent holds.
    Holding(Vec<Held>),
    Accepted(WireKey),
    /// Its process started (again, for a replica: `restarts` counts).
    Started {
        key: WireKey,
        pid: u32,
        restarts: u32,
    },
    /// Output at `offset` of the attempt's log; `truncated` marks the cap.
    Output {
        key: WireKey,
        stream: OutputStream,
        offset: u64,
        data: Vec<u8>,
        truncated: bool,
    },
    Progress {
        key: WireKey,
        fraction: f64,
        message: String,
    },
    Finished {
        key: WireKey,
        outcome: Outcome,
    },
    /// A copy sealed for another node, as a [`Command::Reseal`] asked.
    Resealed(Resealed),
}

impl AgentMessage {
    pub fn into_pb(self) -> agent_pb::JobsRequest {
        let msg = match self {
            AgentMessage::Holding(held) => jobs_request::Msg::Report(agent_pb::AllocationReport {
                allocations: held
                    .into_iter()
                    .map(|h| {
                        let finished = h.finished.is_some();
                        let o = h.finished.unwrap_or_default();
                        agent_pb::HeldAllocation {
                            job_id: h.key.0,
                            attempt: h.key.1,
                            running: !finished,
                            finished,
                            exit_code: o.exit_code,
                            error: o.error,
                            lost: o.lost,
                        }
                    })
                    .collect(),
            }),
            AgentMessage::Accepted(key) => {
                jobs_request::Msg::Accepted(agent_pb::JobAccepted { job_id: key.0, attempt: key.1 })
            }
            AgentMessage::Started { key, pid, restarts } => {
                jobs_request::Msg::Started(agent_pb::JobStarted { job_id: key.0, attempt: key.1, pid, restarts })
            }
            AgentMessage::Output { key, stream, offset, data, truncated } => {
                jobs_request::Msg::Log(agent_pb::LogChunk {
                    job_id: key.0,
                    attempt: key.1,
                    stream: match stream {
                        OutputStream::Stdout => agent_pb::LogStream::Stdout,
                        OutputStream::Stderr => agent_pb::LogStream::Stderr,
                    } as i32,
                    offset,
                    data,
                    truncated,
                })
            }
            AgentMessage::Progress { key, fraction, message } => {
                jobs_request::Msg::Progress(agent_pb::JobProgress { job_id: key.0, attempt: key.1, fraction, message })
            }
            AgentMessage::Finished { key, outcome } => jobs_request::Msg::Finished(agent_pb::JobFinished {
                job_id: key.0,
                attempt: key.1,
                exit_code: outcome.exit_code,
                error: outcome.error,
                lost: outcome.lost,
            }),
            AgentMessage::Resealed(r) => jobs_request::Msg::Resealed(agent_pb::SecretResealed {
                project_id: r.project_id,
                name: r.name,
                version: r.version,
                target_node_id: r.target_node,
                target_public_key: r.target_public_key,
                enc: r.enc,
                ciphertext: r.ciphertext,
                error: r.error,
            }),
        };
        agent_pb::JobsRequest { msg: Some(msg) }
    }

    /// `None` for an empty message. The control plane decides what the
    /// keys name (see `AllocKey::from_wire`); text is taken as sent.
    pub fn from_pb(m: agent_pb::JobsRequest) -> Option<AgentMessage> {
        Some(match m.msg? {
            jobs_request::Msg::Report(r) => AgentMessage::Holding(
                r.allocations
                    .into_iter()
                    .map(|h| Held {
                        key: (h.job_id, h.attempt),
                        finished: h.finished.then_some(Outcome {
                            exit_code: h.exit_code,
                            error: h.error,
                            lost: h.lost,
                        }),
                    })
                    .collect(),
            ),
            jobs_request::Msg::Accepted(a) => AgentMessage::Accepted((a.job_id, a.attempt)),
            jobs_request::Msg::Started(s) => {
                AgentMessage::Started { key: (s.job_id, s.attempt), pid: s.pid, restarts: s.restarts }
            }
            jobs_request::Msg::Log(l) => AgentMessage::Output {
                key: (l.job_id, l.attempt),
                stream: match agent_pb::LogStream::try_from(l.stream) {
                    Ok(agent_pb::LogStream::Stderr) => OutputStream::Stderr,
                    _ => OutputStream::Stdout,
                },
                offset: l.offset,
                data: l.data,
                truncated: l.truncated,
            },
            jobs_request::Msg::Progress(p) => {
                AgentMessage::Progress { key: (p.job_id, p.attempt), fraction: p.fraction, message: p.message }
            }
            jobs_request::Msg::Finished(f) => AgentMessage::Finished {
                key: (f.job_id, f.attempt),
                outcome: Outcome { exit_code: f.exit_code, error: f.error, lost: f.lost },
            },
            jobs_request::Msg::Resealed(r) => AgentMessage::Resealed(Resealed {
                project_id: r.project_id,
                name: r.name,
                version: r.version,
                target_node: r.target_node_id,
                target_public_key: r.target_public_key,
                enc: r.enc,
                ciphertext: r.ciphertext,
                error: r.error,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let exec = ExecSpec {
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            working_dir: "/tmp".into(),
            timeout_ms: Some(1500),
            secrets: vec![crate::SecretRef { name: "db".into(), version: 2, env: "DB".into(), file: "db".into() }],
        };
        for c in [
            Command::Assign(Assignment {
                key: ("job-1".into(), 2),
                exec: exec.clone(),
                kind: AllocKind::Job,
                restart: None,
                max_log_bytes: 1 << 20,
                secrets: vec![SealedSecret {
                    reference: crate::SecretRef { name: "db".into(), version: 2, env: "DB".into(), file: "db".into() },
                    project_id: "prj-1".into(),
                    version: 2,
                    enc: vec![1; 32],
                    ciphertext: vec![2; 20],
                }],
            }),
            Command::Assign(Assignment {
                key: ("al-1".into(), 1),
                exec: ExecSpec { timeout_ms: None, ..exec },
                kind: AllocKind::Service,
                restart: Some(RestartPolicy::OnFailure),
                max_log_bytes: 0,
                secrets: vec![],
            }),
            Command::Reseal(ResealRequest {
                project_id: "prj-1".into(),
                name: "db".into(),
                version: 3,
                enc: vec![1; 32],
                ciphertext: vec![2; 40],
                target_node: "nd-2".into(),
                target_public_key: vec![3; 32],
            }),
            Command::Cancel { key: ("job-1".into(), 2), reason: "cancelled by an operator".into() },
            Command::Release(("job-1".into(), 2)),
        ] {
            assert_eq!(Command::from_pb(c.to_pb()), Some(Ok(c.clone())));
        }
        assert_eq!(Command::from_pb(agent_pb::JobsResponse { msg: None }), None);
        let bad = agent_pb::JobsResponse {
            msg: Some(jobs_response::Msg::Assign(agent_pb::AssignJob {
                job_id: "job-9".into(),
                attempt: 1,
                ..Default::default()
            })),
        };
        let Some(Err((key, e))) = Command::from_pb(bad) else { panic!("an assignment without exec is refused") };
        assert_eq!(key, ("job-9".to_string(), 1));
        assert!(e.message.contains("exec"), "{e:?}");
    }

    #[test]
    fn agent_messages_round_trip() {
        let key = ("job-1".to_string(), 2);
        for m in [
            AgentMessage::Holding(vec![
                Held { key: key.clone(), finished: None },
                Held {
                    key: ("al-1".into(), 1),
                    finished: Some(Outcome { exit_code: -1, error: "fenced".into(), lost: true }),
                },
            ]),
            AgentMessage::Holding(vec![]),
            AgentMessage::Accepted(key.clone()),
            AgentMessage::Started { key: key.clone(), pid: 42, restarts: 3 },
            AgentMessage::Output {
                key: key.clone(),
                stream: OutputStream::Stderr,
                offset: 10,
                data: b"oops".to_vec(),
                truncated: true,
            },
            AgentMessage::Progress { key: key.clone(), fraction: 0.5, message: "half".into() },
            AgentMessage::Finished { key, outcome: Outcome { exit_code: 3, error: String::new(), lost: false } },
            AgentMessage::Resealed(Resealed {
                project_id: "prj-1".into(),
                name: "db".into(),
                version: 3,
                target_node: "nd-2".into(),
                target_public_key: vec![3; 32],
                enc: vec![1; 32],
                ciphertext: vec![2; 40],
                error: String::new(),
            }),
        ] {
            assert_eq!(AgentMessage::from_pb(m.clone().into_pb()), Some(m));
        }
        assert_eq!(AgentMessage::from_pb(agent_pb::JobsRequest { msg: None }), None);
    }

    #[test]
    fn desired_state_round_trips_and_unknown_states_are_refused() {
        for state in [
            DesiredNodeState::Active,
            DesiredNodeState::Paused,
            DesiredNodeState::Draining,
            DesiredNodeState::Stopped,
            DesiredNodeState::Quarantined,
        ] {
            let d = DesiredState { state, version: 7, reason: "maintenance".into() };
            let Some(heartbeat_response::Msg::DesiredState(m)) = d.to_pb().msg else { panic!("a desired state") };
            assert_eq!(DesiredState::from_pb(&m), Ok(d));
        }
        let unknown = agent_pb::DesiredState { state: 99, version: 3, reason: String::new() };
        let Err((version, e)) = DesiredState::from_pb(&unknown) else { panic!("state 99 is refused") };
        assert_eq!(version, 3);
        assert!(e.message.contains("99"), "{e:?}");
        let unset = agent_pb::DesiredState { state: 0, version: 4, reason: String::new() };
        assert!(DesiredState::from_pb(&unset).is_err());
    }
}
