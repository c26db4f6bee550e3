//! Work: job and workload specs, their validation, and job/allocation states.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, LabelSelector, Labels, MAX_TEXT_LEN, validate_labels};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub gpus: u64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_mb <= free.memory_mb && self.gpus <= free.gpus
    }
    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }
    pub fn add(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory_mb: self.memory_mb + o.memory_mb,
            gpus: self.gpus + o.gpus,
        }
    }
    pub fn to_pb(self) -> pb::Resources {
        pb::Resources { cpu_millis: self.cpu_millis as i64, memory_mb: self.memory_mb as i64, gpus: self.gpus as i64 }
    }
}

impl TryFrom<Option<pb::Resources>> for Resources {
    type Error = Error;
    fn try_from(r: Option<pb::Resources>) -> Result<Self, Error> {
        let r = r.unwrap_or_default();
        let check = |name: &str, v: i64, max: i64| -> Result<u64, Error> {
            if v < 0 {
                return Err(Error::invalid(format!("resources.{name} must not be negative, got {v}")));
            }
            if v > max {
                return Err(Error::invalid(format!("resources.{name} is at most {max}, got {v}")));
            }
            Ok(v as u64)
        };
        Ok(Resources {
            cpu_millis: check("cpu_millis", r.cpu_millis, 1_000_000)?,
            memory_mb: check("memory_mb", r.memory_mb, 64 * 1024 * 1024)?,
            gpus: check("gpus", r.gpus, 64)?,
        })
    }
}

/// Where work may run. The selector is kept as text (validated), parsed on use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    pub pool: String,
    pub label_selector: String,
    pub gpu_model: String,
}

impl Constraints {
    pub fn selector(&self) -> LabelSelector {
        // Validated at the edge; a stored selector always parses.
        LabelSelector::parse(&self.label_selector).unwrap_or_default()
    }
    pub fn to_pb(&self) -> pb::Constraints {
        pb::Constraints {
            pool: self.pool.clone(),
            label_selector: self.label_selector.clone(),
            gpu_model: self.gpu_model.clone(),
        }
    }
}

impl TryFrom<Option<pb::Constraints>> for Constraints {
    type Error = Error;
    fn try_from(c: Option<pb::Constraints>) -> Result<Self, Error> {
        let c = c.unwrap_or_default();
        LabelSelector::parse(&c.label_selector)?;
        if chars(&c.pool) > 255 || chars(&c.gpu_model) > 255 {
            return Err(Error::invalid("constraints.pool and constraints.gpu_model are at most 255 characters"));
        }
        Ok(Constraints { pool: c.pool, label_selector: c.label_selector, gpu_model: c.gpu_model })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    pub timeout_ms: Option<u64>,
    /// Sealed secrets the process gets (see [`crate::secret`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretRef>,
}

impl ExecSpec {
    /// Validates an exec spec from the wire.
    pub fn from_pb(e: Option<pb::ExecSpec>) -> Result<Self, Error> {
        let e = e.ok_or_else(|| Error::invalid("exec is required for the exec driver"))?;
        if e.command.is_empty() {
            return Err(Error::invalid("exec.command is required"));
        }
        if chars(&e.command) > 4096 || chars(&e.working_dir) > 4096 {
            return Err(Error::invalid("exec.command and exec.working_dir are at most 4096 characters"));
        }
        if e.args.len() > 1024 || e.args.iter().any(|a| chars(a) > 64 * 1024) {
            return Err(Error::invalid("exec.args: at most 1024 arguments of 65536 characters"));
        }
        if e.env.len() > 256 {
            return Err(Error::invalid("exec.env: at most 256 variables"));
        }
        // What reaches execve(2) and chdir(2) cannot hold NUL; control
        // characters in a path or command are refused too (args may carry
        // newlines and tabs: scripts do).
        if has_control(&e.command) {
            return Err(Error::invalid("exec.command must not contain NUL or control characters"));
        }
        if has_control(&e.working_dir) {
            return Err(Error::invalid("exec.working_dir must not contain NUL or control characters"));
        }
        if let Some(i) = e.args.iter().position(|a| a.contains('\0')) {
            return Err(Error::invalid(format!("exec.args[{i}] must not contain NUL")));
        }
        for (k, v) in &e.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') || chars(v) > 64 * 1024 {
                return Err(Error::invalid(format!("exec.env: invalid variable {k:?}")));
            }
        }
        let timeout_ms = match e.timeout {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                return Err(Error::invalid("exec.timeout must be positive"));
            }
            Some(d) if d.seconds > MAX_TIMEOUT_SECS || (d.seconds == MAX_TIMEOUT_SECS && d.nanos > 0) => {
                return Err(Error::invalid("exec.timeout is at most 365 days"));
            }
            // Whole milliseconds, rounded up: a positive timeout stays positive.
            Some(d) => Some(Duration::new(d.seconds as u64, d.nanos as u32).as_nanos().div_ceil(1_000_000) as u64),
        };
        let env: BTreeMap<String, String> = e.env.into_iter().collect();
        let secrets = crate::SecretRef::list_from_pb(e.secrets)?;
        Ok(ExecSpec { command: e.command, args: e.args, env, working_dir: e.working_dir, timeout_ms, secrets })
    }

    pub fn to_pb(&self) -> pb::ExecSpec {
        pb::ExecSpec {
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone().into_iter().collect(),
            working_dir: self.working_dir.clone(),
            timeout: self.timeout_ms.map(|ms| crate::duration_to_pb(Duration::from_millis(ms))),
            secrets: self.secrets.iter().map(crate::SecretRef::to_pb).collect(),
        }
    }
}

fn driver(d: &str) -> Result<(), Error> {
    match d {
        "exec" | "" => Ok(()),
        other => Err(Error::invalid(format!("unknown driver {other:?}: the only driver is \"exec\""))),
    }
}

pub const MAX_ATTEMPTS: u32 = 10;

/// A validated job spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub exec: ExecSpec,
    pub resources: Resources,
    pub constraints: Constraints,
    pub max_attempts: u32,
    pub priority: i32,
}

impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = Error;
    fn try_from(s: pb::JobSpec) -> Result<Self, Error> {
        driver(&s.driver)?;
        let max_attempts = match s.max_attempts {
            0 => 1,
            n if n > MAX_ATTEMPTS => {
                return Err(Error::invalid(format!("max_attempts is at most {MAX_ATTEMPTS}, got {n}")));
            }
            n => n,
        };
        if !(-1000..=1000).contains(&s.priority) {
            return Err(Error::invalid(format!("priority must be in -1000..=1000, got {}", s.priority)));
        }
        Ok(JobSpec {
            exec: ExecSpec::from_pb(s.exec)?,
            resources: s.resources.try_into()?,
            constraints: s.constraints.try_into()?,
            max_attempts,
            priority: s.priority,
        })
    }
}

impl JobSpec {
    pub fn to_pb(&self) -> pb::JobSpec {
        pb::JobSpec {
            driver: "exec".into(),
            exec: Some(self.exec.to_pb()),
            resources: Some(self.resources.to_pb()),
            constraints: Some(self.constraints.to_pb()),
            max_attempts: self.max_attempts,
            priority: self.priority,
        }
    }
}

pub fn validate_job_labels(labels: &Labels) -> Result<(), Error> {
    validate_labels(labels)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// A validated workload spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub exec: ExecSpec,
    pub resources: Resources,
    pub constraints: Constraints,
    pub restart: RestartPolicy,
    pub max_parallel: u32,
}

impl TryFrom<pb::WorkloadSpec> for WorkloadSpec {
    type Error = Error;
    fn try_from(s: pb::WorkloadSpec) -> Result<Self, Error> {
        driver(&s.driver)?;
        let restart = match pb::RestartPolicy::try_from(s.restart_policy) {
            Ok(pb::RestartPolicy::Unspecified | pb::RestartPolicy::Always) => RestartPolicy::Always,
            Ok(pb::RestartPolicy::OnFailure) => RestartPolicy::OnFailure,
            Ok(pb::RestartPolicy::Never) => RestartPolicy::Never,
            Err(_) => return Err(Error::invalid(format!("unknown restart policy {}", s.restart_policy))),
        };
        let exec = ExecSpec::from_pb(s.exec)?;
        if exec.timeout_ms.is_some() {
            return Err(Error::invalid("a workload runs until stopped: exec.timeout is not allowed"));
        }
        Ok(WorkloadSpec {
            exec,
            resources: s.resources.try_into()?,
            constraints: s.constraints.try_into()?,
            restart,
            max_parallel: s.max_parallel.clamp(1, 1000),
        })
    }
}

impl WorkloadSpec {
    pub fn to_pb(&self) -> pb::WorkloadSpec {
        pb::WorkloadSpec {
            driver: "exec".into(),
            exec: Some(self.exec.to_pb()),
            resources: Some(self.resources.to_pb()),
            constraints: Some(self.constraints.to_pb()),
            restart_policy: match self.restart {
                RestartPolicy::Always => pb::RestartPolicy::Always,
                RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
                RestartPolicy::Never => pb::RestartPolicy::Never,
            } as i32,
            max_parallel: self.max_parallel,
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(format!("name {name:?} must be 1-63 characters of [a-z0-9-]")));
    }
    Ok(())
}

/// NUL or another control character (`char::is_control`).
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Length in characters (Unicode scalar values), as the protos' field rules
/// and JSON Schema count.
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The longest timeout a job may set: 365 days.
const MAX_TIMEOUT_SECS: i64 = 365 * 86400;

pub fn validate_text(field: &str, s: &str) -> Result<(), Error> {
    if chars(s) > MAX_TEXT_LEN {
        return Err(Error::invalid(format!("{field} is longer than {MAX_TEXT_LEN} characters")));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

impl JobStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Lost => "lost",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "scheduled" => JobStatus::Scheduled,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "lost" => JobStatus::Lost,
            o => return Err(Error::invalid(format!("unknown job status {o:?}"))),
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Lost)
    }
    pub fn to_pb(self) -> pb::JobStatus {
        match self {
            JobStatus::Pending => pb::JobStatus::Pending,
            JobStatus::Scheduled => pb::JobStatus::Scheduled,
            JobStatus::Running => pb::JobStatus::Running,
            JobStatus::Succeeded => pb::JobStatus::Succeeded,
            JobStatus::Failed => pb::JobStatus::Failed,
            JobStatus::Cancelled => pb::JobStatus::Cancelled,
            JobStatus::Lost => pb::JobStatus::Lost,
        }
    }
    pub fn from_pb(v: i32) -> Result<Option<Self>, Error> {
        Ok(match pb::JobStatus::try_from(v) {
            Ok(pb::JobStatus::Unspecified) => None,
            Ok(pb::JobStatus::Pending) => Some(JobStatus::Pending),
            Ok(pb::JobStatus::Scheduled) => Some(JobStatus::Scheduled),
            Ok(pb::JobStatus::Running) => Some(JobStatus::Running),
            Ok(pb::JobStatus::Succeeded) => Some(JobStatus::Succeeded),
            Ok(pb::JobStatus::Failed) => Some(JobStatus::Failed),
            Ok(pb::JobStatus::Cancelled) => Some(JobStatus::Cancelled),
            Ok(pb::JobStatus::Lost) => Some(JobStatus::Lost),
            Err(_) => return Err(Error::invalid(format!("unknown job status {v}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::JobSpec {
        pb::JobSpec {
            driver: "exec".into(),
            exec: Some(pb::ExecSpec { command: "/bin/true".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_sub_millisecond_timeout_rounds_up_to_one_millisecond() {
        let exec = |nanos| pb::ExecSpec {
            command: "/bin/true".into(),
            timeout: Some(prost_types::Duration { seconds: 0, nanos }),
            ..Default::default()
        };
        assert_eq!(ExecSpec::from_pb(Some(exec(1))).unwrap().timeout_ms, Some(1));
        assert_eq!(ExecSpec::from_pb(Some(exec(1_500_000))).unwrap().timeout_ms, Some(2));
        assert_eq!(ExecSpec::from_pb(Some(exec(2_000_000))).unwrap().timeout_ms, Some(2));
    }

    #[test]
    fn job_spec_validation() {
        let ok = JobSpec::try_from(spec()).unwrap();
        assert_eq!(ok.max_attempts, 1);
        let bad = |f: &dyn Fn(&mut pb::JobSpec)| {
            let mut s = spec();
            f(&mut s);
            JobSpec::try_from(s).unwrap_err()
        };
        assert!(bad(&|s| s.driver = "docker".into()).message.contains("unknown driver"));
        assert!(bad(&|s| s.exec = None).message.contains("exec"));
        assert!(
            bad(&|s| s.resources = Some(pb::Resources { cpu_millis: -1, ..Default::default() }))
                .message
                .contains("negative")
        );
        assert!(
            bad(&|s| s.constraints = Some(pb::Constraints { label_selector: "a in (".into(), ..Default::default() }))
                .message
                .contains("selector")
        );
        assert!(bad(&|s| s.max_attempts = 11).message.contains("max_attempts"));
        assert!(bad(&|s| s.priority = 5000).message.contains("priority"));
        assert!(
            bad(&|s| s.exec.as_mut().unwrap().timeout = Some(prost_types::Duration { seconds: -1, nanos: 0 }))
                .message
                .contains("timeout")
        );
        assert!(bad(&|s| s.exec.as_mut().unwrap().command = "/bin/true\0x".into()).message.contains("exec.command"));
        assert!(bad(&|s| s.exec.as_mut().unwrap().command = "/bin/\x1btrue".into()).message.contains("control"));
        assert!(bad(&|s| s.exec.as_mut().unwrap().working_dir = "/tmp\0".into()).message.contains("working_dir"));
        assert!(bad(&|s| s.exec.as_mut().unwrap().args = vec!["ok".into(), "a\0b".into()]).message.contains("args[1]"));
        let mut multi_line = spec();
        multi_line.exec.as_mut().unwrap().args = vec!["-c".into(), "echo a\n\techo b".into()];
        JobSpec::try_from(multi_line).expect("scripts may hold newlines and tabs");
    }

    #[test]
    fn resources_arithmetic() {
        let cap = Resources { cpu_millis: 2000, memory_mb: 1024, gpus: 1 };
        let want = Resources { cpu_millis: 1500, memory_mb: 512, gpus: 0 };
        assert!(want.fits_in(&cap));
        let left = cap.saturating_sub(&want);
        assert!(!want.fits_in(&left));
        assert_eq!(left.add(&want), cap);
    }
}

/// A batch job's durable record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: crate::JobId,
    pub project_id: crate::ProjectId,
    pub spec: JobSpec,
    pub labels: Labels,
    pub status: JobStatus,
    /// The current or last attempt, from 1; 0 before the first placement.
    pub attempt: u32,
    pub node_id: Option<crate::NodeId>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub created_at: crate::UnixMillis,
    pub updated_at: crate::UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub id: crate::WorkloadId,
    pub project_id: crate::ProjectId,
    pub name: String,
    pub spec: WorkloadSpec,
    pub spec_version: u64,
    pub replicas: u32,
    pub created_at: crate::UnixMillis,
    pub updated_at: crate::UnixMillis,
}
