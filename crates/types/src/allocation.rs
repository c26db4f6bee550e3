//! Allocations: one placement of work on a node (a job attempt or a
//! workload replica), its key and its status.

use serde::{Deserialize, Serialize};

use crate::{Error, Resources};

/// The life of one allocation: a job attempt or a workload replica on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocStatus {
    /// Durable, sent (or to be sent) to the node.
    Scheduled,
    Running,
    /// The control plane asked the node to stop it.
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Lost,
}

impl AllocStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            AllocStatus::Scheduled => "scheduled",
            AllocStatus::Running => "running",
            AllocStatus::Stopping => "stopping",
            AllocStatus::Succeeded => "succeeded",
            AllocStatus::Failed => "failed",
            AllocStatus::Stopped => "stopped",
            AllocStatus::Lost => "lost",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "scheduled" => AllocStatus::Scheduled,
            "running" => AllocStatus::Running,
            "stopping" => AllocStatus::Stopping,
            "succeeded" => AllocStatus::Succeeded,
            "failed" => AllocStatus::Failed,
            "stopped" => AllocStatus::Stopped,
            "lost" => AllocStatus::Lost,
            o => return Err(Error::invalid(format!("unknown allocation status {o:?}"))),
        })
    }
    /// Holds resources on its node.
    pub fn is_active(self) -> bool {
        matches!(self, AllocStatus::Scheduled | AllocStatus::Running | AllocStatus::Stopping)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocKind {
    Job,
    Service,
}

/// Which allocation: a job's attempt or a workload replica. Stored, shown
/// and logged as `job-…/<attempt>` or `al-…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllocKey {
    /// Attempt `.1` (from 1) of a job.
    Attempt(crate::JobId, u32),
    /// A workload replica.
    Replica(crate::AllocId),
}

impl AllocKey {
    pub fn kind(&self) -> AllocKind {
        match self {
            AllocKey::Attempt(..) => AllocKind::Job,
            AllocKey::Replica(_) => AllocKind::Service,
        }
    }

    /// `job-…/<attempt>` or `al-…`; anything else is refused.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.starts_with(crate::JobId::PREFIX) {
            let (job, attempt) =
                s.split_once('/').ok_or_else(|| Error::invalid(format!("allocation key {s:?} has no attempt")))?;
            let attempt = attempt
                .parse::<u32>()
                .ok()
                .filter(|a| *a > 0)
                .ok_or_else(|| Error::invalid(format!("allocation key {s:?} has no valid attempt")))?;
            Ok(AllocKey::Attempt(crate::JobId::parse(job)?, attempt))
        } else {
            Ok(AllocKey::Replica(crate::AllocId::parse(s)?))
        }
    }

    /// From the agent protocol's (job id, attempt): a job id names that
    /// attempt, an allocation id a replica (its attempt is always 1).
    pub fn from_wire(id: &str, attempt: u32) -> Result<Self, Error> {
        if id.starts_with(crate::JobId::PREFIX) {
            if attempt == 0 {
                return Err(Error::invalid(format!("job {id} has no attempt 0")));
            }
            Ok(AllocKey::Attempt(crate::JobId::parse(id)?, attempt))
        } else {
            Ok(AllocKey::Replica(crate::AllocId::parse(id)?))
        }
    }

    /// The (job id, attempt) pair the agent protocol names it by.
    pub fn wire(&self) -> crate::WireKey {
        match self {
            AllocKey::Attempt(j, a) => (j.to_string(), *a),
            AllocKey::Replica(id) => (id.to_string(), 1),
        }
    }
}

impl std::fmt::Display for AllocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocKey::Attempt(j, a) => write!(f, "{j}/{a}"),
            AllocKey::Replica(id) => write!(f, "{id}"),
        }
    }
}

impl Serialize for AllocKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllocKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AllocKey::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// One placement of work on a node: a job attempt or a workload replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AllocKey,
    pub project_id: crate::ProjectId,
    /// Always `key.kind()`; kept as a field for readers of the stored rows
    /// and event payloads.
    pub kind: AllocKind,
    pub job_id: Option<crate::JobId>,
    pub attempt: u32,
    pub workload_id: Option<crate::WorkloadId>,
    pub spec_version: u64,
    pub node_id: crate::NodeId,
    pub status: AllocStatus,
    pub resources: Resources,
    pub exit_code: Option<i32>,
    pub error: String,
    pub restarts: u32,
    pub scheduled_at: crate::UnixMillis,
    pub started_at: Option<crate::UnixMillis>,
    pub finished_at: Option<crate::UnixMillis>,
}

impl Allocation {
    /// The (job id, attempt) pair the agent protocol names this allocation by.
    pub fn wire_id(&self) -> crate::WireKey {
        self.key.wire()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AllocId, JobId};

    #[test]
    fn alloc_keys_round_trip_and_refuse_what_they_are_not() {
        let attempt = AllocKey::Attempt(JobId::from_random([1; 10]), 3);
        let replica = AllocKey::Replica(AllocId::from_random([2; 10]));
        for k in [&attempt, &replica] {
            assert_eq!(AllocKey::parse(&k.to_string()).as_ref(), Ok(k));
            let (id, n) = k.wire();
            assert_eq!(AllocKey::from_wire(&id, n).as_ref(), Ok(k));
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(&serde_json::from_str::<AllocKey>(&json).unwrap(), k);
        }
        assert_eq!(attempt.kind(), AllocKind::Job);
        assert_eq!(replica.kind(), AllocKind::Service);
        assert_eq!(replica.wire().1, 1, "a replica's wire attempt is 1");
        let job = JobId::from_random([1; 10]).to_string();
        for bad in [
            String::new(),
            "x".into(),
            job.clone(),
            format!("{job}/0"),
            format!("{job}/-1"),
            format!("{job}/x"),
            "al-zz".into(),
            "job-1/1".into(),
        ] {
            assert!(AllocKey::parse(&bad).is_err(), "{bad:?} is not an allocation key");
        }
        assert!(AllocKey::from_wire(&job, 0).is_err(), "attempts count from 1");
        assert!(AllocKey::from_wire("nd-0123", 1).is_err());
        assert!(serde_json::from_str::<AllocKey>("\"al-zz\"").is_err());
    }
}
