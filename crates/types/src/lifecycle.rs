//! The job and allocation state machines: which transitions are legal and
//! what each leads to. Plain code, tested here; the store only reads the
//! rows, asks these, and writes what they decided (with the event each
//! returns).
//!
//! ```text
//! job:        pending -> scheduled -> running -> succeeded
//!                ^          |            |   \-> failed | lost  (no attempts left)
//!                '----------'------------'------ retrying (attempts left)
//!             any not finished -> cancelled
//!
//! allocation: scheduled -> running -> succeeded | failed
//!             scheduled | running -> stopping -> stopped (nobody waits) | lost (a job waits)
//!             scheduled | running | stopping -> lost (its node is down, or the node gave it up)
//! ```

use crate::{AllocStatus, Allocation, Error, Job, JobStatus, NodeId, UnixMillis};

/// What a job transition records in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    Scheduled,
    Running,
    Succeeded,
    /// The attempt ended without success and another follows (pending again).
    Retrying,
    Failed,
    Lost,
    Cancelled,
}

impl JobEvent {
    pub const fn kind(self) -> &'static str {
        match self {
            JobEvent::Scheduled => "job.scheduled",
            JobEvent::Running => "job.running",
            JobEvent::Succeeded => "job.succeeded",
            JobEvent::Retrying => "job.retrying",
            JobEvent::Failed => "job.failed",
            JobEvent::Lost => "job.lost",
            JobEvent::Cancelled => "job.cancelled",
        }
    }
}

/// How an attempt ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// It ran and failed (a non-zero exit, a timeout, a start failure).
    Failed,
    /// Its result is lost (its node went down, the control plane stopped it
    /// first, or the node gave it up).
    Lost,
}

impl Job {
    /// Placed as `attempt` on `node`. Legal only from `pending` with the next
    /// attempt number (a job cancelled, or placed by someone else meanwhile,
    /// is left alone: `None`).
    pub fn schedule(&mut self, attempt: u32, node: &NodeId, now: UnixMillis) -> Option<JobEvent> {
        if self.status != JobStatus::Pending || self.attempt + 1 != attempt {
            return None;
        }
        self.status = JobStatus::Scheduled;
        self.attempt = attempt;
        self.node_id = Some(node.clone());
        self.updated_at = now;
        Some(JobEvent::Scheduled)
    }

    /// Its attempt `attempt` started. Legal only from `scheduled`, for the
    /// current attempt.
    pub fn start(&mut self, attempt: u32, now: UnixMillis) -> Option<JobEvent> {
        if self.status != JobStatus::Scheduled || self.attempt != attempt {
            return None;
        }
        self.status = JobStatus::Running;
        self.updated_at = now;
        Some(JobEvent::Running)
    }

    /// Cancelled by an operator: refused once the job has finished.
    pub fn cancel(&mut self, now: UnixMillis) -> Result<JobEvent, Error> {
        if self.status.is_terminal() {
            return Err(Error::precondition(format!("job {} already {}", self.id, self.status.as_str())));
        }
        self.status = JobStatus::Cancelled;
        self.error = "cancelled by an operator".into();
        self.updated_at = now;
        Ok(JobEvent::Cancelled)
    }

    /// Its current attempt succeeded.
    pub fn succeed(&mut self, exit_code: i32, now: UnixMillis) -> JobEvent {
        self.status = JobStatus::Succeeded;
        self.exit_code = Some(exit_code);
        self.error.clear();
        self.updated_at = now;
        JobEvent::Succeeded
    }

    /// Its current attempt ended without success: another attempt while
    /// attempts remain (pending again), else `failed` or `lost`.
    pub fn attempt_ended(
        &mut self,
        how: Shortfall,
        error: String,
        exit_code: Option<i32>,
        now: UnixMillis,
    ) -> JobEvent {
        self.error = error;
        self.exit_code = exit_code;
        self.updated_at = now;
        if self.attempt < self.spec.max_attempts {
            self.status = JobStatus::Pending;
            self.node_id = None;
            return JobEvent::Retrying;
        }
        match how {
            Shortfall::Failed => {
                self.status = JobStatus::Failed;
                JobEvent::Failed
            }
            Shortfall::Lost => {
                self.status = JobStatus::Lost;
                JobEvent::Lost
            }
        }
    }

    /// Whether this job waits for the result of allocation `a`: it is the
    /// job's current attempt and the job has not finished.
    pub fn waits_for(&self, a: &Allocation) -> bool {
        a.job_id.as_ref() == Some(&self.id) && self.attempt == a.attempt && !self.status.is_terminal()
    }
}

impl AllocStatus {
    /// Whether an allocation may go from `self` to `next`.
    pub fn can_become(self, next: AllocStatus) -> bool {
        use AllocStatus::*;
        match self {
            Scheduled => matches!(next, Running | Stopping | Succeeded | Failed | Stopped | Lost),
            // Running -> running: a replica restarted in place.
            Running => matches!(next, Running | Stopping | Succeeded | Failed | Stopped | Lost),
            Stopping => matches!(next, Succeeded | Stopped | Lost),
            Succeeded | Failed | Stopped | Lost => false,
        }
    }
}

impl Allocation {
    fn become_(&mut self, next: AllocStatus) -> bool {
        if !self.status.can_become(next) {
            return false;
        }
        self.status = next;
        true
    }

    /// Its node reports it started (again, for a restarted replica: with a
    /// new restart count). False when that changes nothing or is not legal
    /// (a stopping or finished allocation).
    pub fn start(&mut self, restarts: u32, now: UnixMillis) -> bool {
        if !matches!(self.status, AllocStatus::Scheduled | AllocStatus::Running)
            || (self.status == AllocStatus::Running && self.restarts == restarts)
        {
            return false;
        }
        self.become_(AllocStatus::Running);
        self.restarts = restarts;
        self.started_at = Some(now);
        true
    }

    /// The control plane asks it to stop. False when it is not active or
    /// already stopping.
    pub fn stop(&mut self) -> bool {
        self.status != AllocStatus::Stopping && self.status.is_active() && self.become_(AllocStatus::Stopping)
    }

    /// Its node reports it ended with `exit_code` (and `error`, empty when it
    /// ran to its end). `job_waits`: a job waits for this result (see
    /// [`Job::waits_for`]). Returns the new status; `None` when it had
    /// already ended.
    pub fn finish(&mut self, exit_code: i32, error: &str, job_waits: bool, now: UnixMillis) -> Option<AllocStatus> {
        if !self.status.is_active() {
            return None;
        }
        let stopping = self.status == AllocStatus::Stopping;
        let ok = exit_code == 0 && error.is_empty();
        let next = match (stopping, ok) {
            // Stopped while nobody waits for it: a cancelled job, a replica.
            (true, _) if !job_waits => AllocStatus::Stopped,
            (_, true) => AllocStatus::Succeeded,
            // Stopped by the control plane (a drain deadline, a stopped node)
            // before it had a result: lost, and retried.
            (true, false) => AllocStatus::Lost,
            (false, false) => AllocStatus::Failed,
        };
        self.status = next;
        self.exit_code = Some(exit_code);
        self.error = error.to_owned();
        self.finished_at = Some(now);
        Some(next)
    }

    /// Its result is lost (its node is down, or the node gave it up). One
    /// that was asked to stop and that nobody waits for simply stopped.
    /// `None` when it had already ended.
    pub fn lose(&mut self, reason: &str, job_waits: bool, now: UnixMillis) -> Option<AllocStatus> {
        if !self.status.is_active() {
            return None;
        }
        let next =
            if self.status == AllocStatus::Stopping && !job_waits { AllocStatus::Stopped } else { AllocStatus::Lost };
        self.status = next;
        self.error = reason.to_owned();
        self.finished_at = Some(now);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AllocKind, ExecSpec, JobId, JobSpec, ProjectId, Resources};

    const ALL_ALLOC: [AllocStatus; 7] = [
        AllocStatus::Scheduled,
        AllocStatus::Running,
        AllocStatus::Stopping,
        AllocStatus::Succeeded,
        AllocStatus::Failed,
        AllocStatus::Stopped,
        AllocStatus::Lost,
    ];
    const ALL_JOB: [JobStatus; 7] = [
        JobStatus::Pending,
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Lost,
    ];

    fn job(status: JobStatus, attempt: u32, max_attempts: u32) -> Job {
        Job {
            id: JobId::from_random([1; 10]),
            project_id: ProjectId::from_random([2; 10]),
            spec: JobSpec {
                exec: ExecSpec { command: "/bin/true".into(), ..Default::default() },
                resources: Resources::default(),
                constraints: Default::default(),
                max_attempts,
                priority: 0,
            },
            labels: Default::default(),
            status,
            attempt,
            node_id: None,
            exit_code: None,
            error: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn alloc(status: AllocStatus) -> Allocation {
        let j = job(JobStatus::Running, 1, 1);
        Allocation {
            key: crate::AllocKey::Attempt(j.id.clone(), 1),
            project_id: j.project_id.clone(),
            kind: AllocKind::Job,
            job_id: Some(j.id.clone()),
            attempt: 1,
            workload_id: None,
            spec_version: 0,
            node_id: NodeId::from_random([3; 10]),
            status,
            resources: Resources::default(),
            exit_code: None,
            error: String::new(),
            restarts: 0,
            scheduled_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn allocation_transitions_legal_and_illegal() {
        use AllocStatus::*;
        for from in ALL_ALLOC {
            for to in ALL_ALLOC {
                let legal = match from {
                    Scheduled | Running => to != Scheduled,
                    Stopping => matches!(to, Succeeded | Stopped | Lost),
                    _ => false,
                };
                assert_eq!(from.can_become(to), legal, "{from:?} -> {to:?}");
            }
        }
        // Nothing leaves an end state, whatever is reported.
        for end in [Succeeded, Failed, Stopped, Lost] {
            let mut a = alloc(end);
            assert!(!a.start(1, 5));
            assert!(!a.stop());
            assert_eq!(a.finish(0, "", true, 5), None);
            assert_eq!(a.lose("down", true, 5), None);
            assert_eq!(a.status, end);
        }
    }

    #[test]
    fn allocation_reports() {
        use AllocStatus::*;
        let mut a = alloc(Scheduled);
        assert!(a.start(0, 10));
        assert_eq!((a.status, a.started_at), (Running, Some(10)));
        assert!(!a.start(0, 11), "the same start again changes nothing");
        assert!(a.start(1, 12), "a replica restarted in place");
        assert_eq!(a.restarts, 1);

        // Finished, by exit code and error, and whether someone waits.
        for (stopping, code, error, waits, want) in [
            (false, 0, "", true, Succeeded),
            (false, 3, "", true, Failed),
            (false, 0, "timed out", true, Failed),
            (true, 0, "", false, Stopped),
            (true, 137, "", false, Stopped),
            (true, 0, "", true, Succeeded),
            (true, 137, "", true, Lost),
        ] {
            let mut a = alloc(Running);
            if stopping {
                assert!(a.stop());
                assert!(!a.stop(), "already stopping");
            }
            assert_eq!(a.finish(code, error, waits, 20), Some(want), "{stopping} {code} {error:?} {waits}");
            assert_eq!((a.exit_code, a.finished_at), (Some(code), Some(20)));
        }
        // Lost with its node.
        assert_eq!(alloc(Running).lose("node down", true, 30), Some(Lost));
        assert_eq!(alloc(Scheduled).lose("node down", false, 30), Some(Lost));
        let mut stopping = alloc(Running);
        stopping.stop();
        assert_eq!(stopping.clone().lose("node down", false, 30), Some(Stopped), "nobody waits: it stopped");
        assert_eq!(stopping.lose("node down", true, 30), Some(Lost));
    }

    #[test]
    fn job_transitions_legal_and_illegal() {
        let node = NodeId::from_random([4; 10]);
        for from in ALL_JOB {
            // Scheduling: only a pending job, only with the next attempt.
            let mut j = job(from, 1, 3);
            let ok = from == JobStatus::Pending;
            assert_eq!(j.schedule(2, &node, 5).is_some(), ok, "schedule from {from:?}");
            assert!(job(from, 1, 3).schedule(3, &node, 5).is_none(), "skipping an attempt from {from:?}");
            // Starting: only a scheduled job, only its current attempt.
            let mut j = job(from, 1, 3);
            assert_eq!(j.start(1, 5).is_some(), from == JobStatus::Scheduled, "start from {from:?}");
            assert!(job(from, 1, 3).start(2, 5).is_none(), "another attempt's start from {from:?}");
            // Cancelling: anything not finished.
            let mut j = job(from, 1, 3);
            let r = j.cancel(9);
            assert_eq!(r.is_ok(), !from.is_terminal(), "cancel from {from:?}");
            if from.is_terminal() {
                assert_eq!(j.status, from, "a refused cancel changes nothing");
                assert_eq!(r.unwrap_err().code, crate::ErrorCode::FailedPrecondition);
            } else {
                assert_eq!(j.status, JobStatus::Cancelled);
            }
        }
        let mut j = job(JobStatus::Pending, 0, 2);
        assert_eq!(j.schedule(1, &node, 1), Some(JobEvent::Scheduled));
        assert_eq!((j.status, j.attempt, j.node_id.as_ref()), (JobStatus::Scheduled, 1, Some(&node)));
        assert_eq!(j.start(1, 2), Some(JobEvent::Running));
        assert_eq!(j.succeed(0, 3), JobEvent::Succeeded);
        assert_eq!((j.status, j.exit_code), (JobStatus::Succeeded, Some(0)));
    }

    #[test]
    fn attempts_retry_until_none_are_left() {
        let node = NodeId::from_random([4; 10]);
        for how in [Shortfall::Failed, Shortfall::Lost] {
            let mut j = job(JobStatus::Pending, 0, 3);
            for attempt in 1..=3 {
                j.schedule(attempt, &node, 1).unwrap();
                j.start(attempt, 2).unwrap();
                let ev = j.attempt_ended(how, format!("attempt {attempt}"), Some(1), 3);
                if attempt < 3 {
                    assert_eq!(ev, JobEvent::Retrying);
                    assert_eq!((j.status, j.node_id.as_ref()), (JobStatus::Pending, None));
                } else {
                    let (want_ev, want) = match how {
                        Shortfall::Failed => (JobEvent::Failed, JobStatus::Failed),
                        Shortfall::Lost => (JobEvent::Lost, JobStatus::Lost),
                    };
                    assert_eq!((ev, j.status), (want_ev, want));
                    assert_eq!(j.error, "attempt 3");
                }
            }
        }
    }

    #[test]
    fn a_job_waits_only_for_its_current_attempt() {
        let j = job(JobStatus::Running, 2, 3);
        let mut a = alloc(AllocStatus::Running);
        a.job_id = Some(j.id.clone());
        a.attempt = 2;
        assert!(j.waits_for(&a));
        a.attempt = 1;
        assert!(!j.waits_for(&a), "an older attempt's result is not awaited");
        a.attempt = 2;
        assert!(!job(JobStatus::Cancelled, 2, 3).waits_for(&a), "a cancelled job awaits nothing");
    }
}
