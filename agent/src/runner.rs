//! Runs allocations on this node: the `exec` driver, output streaming,
//! timeouts, cancellation of whole process groups, service restarts, and the
//! bookkeeping that makes every (job, attempt) run at most once here.

#![allow(unsafe_code)] // prctl, killpg: no safe std equivalents.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_types::{AgentMessage, AllocKind, Assignment, Held, OutputStream, RestartPolicy, WireKey};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::journal::{Entry, Journal, Outcome, Past};
use crate::secrets::{Delivered, Keyring};

type Key = (String, u32);

/// How long a cancelled process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
const DEFAULT_MAX_LOG: u64 = 1024 * 1024;
const CHUNK: usize = 16 * 1024;
/// Log chunks queued for the Jobs stream at most (16 KiB each).
const LOG_CHUNKS_QUEUED: usize = 64;

/// Why a running allocation is being stopped.
#[derive(Debug, Clone)]
struct Stop {
    why: String,
    /// Given up without a result: reported lost, not failed.
    lost: bool,
    /// SIGKILL at once instead of SIGTERM and a grace.
    kill: bool,
}

enum Slot {
    Running {
        cancel: CancellationToken,
        stop: Arc<Mutex<Option<Stop>>>,
        restarts: u32,
        /// A job attempt (not a service replica).
        job: bool,
    },
    Finished(Outcome),
    /// Released by the control plane; remembered to refuse resends, with the
    /// outcome to repeat should the control plane ask again.
    Done(Option<Outcome>),
}

/// What goes out on the Jobs stream. Control messages (started, finished)
/// are never dropped: the queue is unbounded, and they are few (one or two
/// per allocation). Log chunks carry a permit of a bounded budget, given
/// back when the stream takes them.
pub type Outbound = (AgentMessage, Option<OwnedSemaphorePermit>);

struct State {
    slots: HashMap<Key, Slot>,
    journal: Journal,
    /// The current Jobs stream, while connected.
    out: Option<mpsc::UnboundedSender<Outbound>>,
}

#[derive(Clone)]
pub struct Runner {
    state: Arc<Mutex<State>>,
    keyring: Arc<Keyring>,
    work_dir: PathBuf,
    log_budget: Arc<Semaphore>,
}

impl Runner {
    pub fn open(state_dir: &std::path::Path, keyring: Keyring) -> std::io::Result<Runner> {
        let (mut journal, past) = Journal::open(state_dir)?;
        let mut slots = HashMap::new();
        for ((job, attempt), p) in past {
            let slot = match p {
                Past::Interrupted => {
                    // Its process died with the previous agent (PDEATHSIG); report it.
                    let error = "the agent restarted while it ran".to_string();
                    journal.record(&Entry::End {
                        job: job.clone(),
                        attempt,
                        code: -1,
                        error: error.clone(),
                        lost: false,
                    })?;
                    Slot::Finished(Outcome { code: -1, error, lost: false })
                }
                Past::Ended(o) => Slot::Finished(o),
                Past::Released(o) => Slot::Done(o),
            };
            slots.insert((job, attempt), slot);
        }
        let work_dir = state_dir.join("work");
        std::fs::create_dir_all(&work_dir)?;
        Ok(Runner {
            state: Arc::new(Mutex::new(State { slots, journal, out: None })),
            keyring: Arc::new(keyring),
            work_dir,
            log_budget: Arc::new(Semaphore::new(LOG_CHUNKS_QUEUED)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything held, for the first message of a Jobs stream.
    pub fn report(&self) -> Vec<Held> {
        let st = self.lock();
        let mut held: Vec<Held> = st
            .slots
            .iter()
            .filter_map(|(key, s)| match s {
                Slot::Running { .. } => Some(Held { key: key.clone(), finished: None }),
                Slot::Finished(o) => Some(Held { key: key.clone(), finished: Some(o.to_domain()) }),
                Slot::Done(_) => None,
            })
            .collect();
        held.sort_by(|a, b| a.key.cmp(&b.key));
        held
    }

    pub fn attach(&self, out: mpsc::UnboundedSender<Outbound>) {
        self.lock().out = Some(out);
    }

    pub fn detach(&self) {
        self.lock().out = None;
    }

    pub fn running(&self) -> u32 {
        self.lock().slots.values().filter(|s| matches!(s, Slot::Running { .. })).count() as u32
    }

    /// Job attempts running (not service replicas).
    pub fn running_jobs(&self) -> usize {
        self.lock().slots.values().filter(|s| matches!(s, Slot::Running { job: true, .. })).count()
    }

    /// Queued for the current Jobs stream; while disconnected, nothing is
    /// lost: the next stream starts with a report of everything held.
    fn send(&self, m: AgentMessage) {
        let out = self.lock().out.clone();
        if let Some(out) = out {
            let _ = out.send((m, None));
        }
    }

    /// Log chunks wait for room in the budget for a while (backpressure),
    /// then are dropped.
    async fn send_log(&self, m: AgentMessage) {
        let Ok(Ok(permit)) =
            tokio::time::timeout(Duration::from_secs(2), self.log_budget.clone().acquire_owned()).await
        else {
            return;
        };
        let out = self.lock().out.clone();
        if let Some(out) = out {
            let _ = out.send((m, Some(permit)));
        }
    }

    /// Handles an assignment. Runs it unless this (job, attempt) was seen
    /// before, in which case its known state is re-sent.
    pub fn assign(&self, a: Assignment) {
        let key = a.key.clone();
        let mut st = self.lock();
        match st.slots.get(&key) {
            Some(Slot::Running { restarts, .. }) => {
                let started = AgentMessage::Started { key: key.clone(), pid: 0, restarts: *restarts };
                drop(st);
                self.send(started);
                return;
            }
            Some(Slot::Finished(o)) => {
                let fin = finished(&key, o);
                drop(st);
                self.send(fin);
                return;
            }
            Some(Slot::Done(Some(o))) => {
                // The control plane asks again for what it once stored: tell
                // it again how it ended.
                tracing::warn!(
                    job_id = key.0,
                    attempt = key.1,
                    "assignment of a released allocation; repeating its outcome"
                );
                let fin = finished(&key, o);
                drop(st);
                self.send(fin);
                return;
            }
            Some(Slot::Done(None)) => {
                tracing::warn!(job_id = key.0, attempt = key.1, "refusing to run a released allocation again");
                return;
            }
            None => {}
        }
        if let Err(e) = st.journal.record(&Entry::Start { job: key.0.clone(), attempt: key.1 }) {
            tracing::error!(error = &e as &dyn std::error::Error, "journal write failed; refusing the assignment");
            return;
        }
        let cancel = CancellationToken::new();
        let stop = Arc::new(Mutex::new(None));
        let job = a.kind == AllocKind::Job;
        st.slots.insert(key.clone(), Slot::Running { cancel: cancel.clone(), stop: stop.clone(), restarts: 0, job });
        drop(st);
        tracing::info!(job_id = key.0, attempt = key.1, command = a.exec.command, "starting");
        let runner = self.clone();
        tokio::spawn(async move { runner.run(key, a, cancel, stop).await });
    }

    /// An assignment that could not be taken (its spec does not validate):
    /// reported failed at once, so that it does not hang.
    pub fn refuse(&self, key: WireKey, why: String) {
        tracing::error!(job_id = key.0, attempt = key.1, error = why, "refusing an assignment");
        self.finish(&key, Outcome { code: -1, error: why, lost: false });
    }

    /// Seals a secret this node holds again for another node, and answers.
    pub fn reseal(&self, r: &tether_types::ResealRequest) {
        let answer = self.keyring.reseal(r);
        if !answer.error.is_empty() {
            tracing::warn!(secret = r.name, version = r.version, error = answer.error, "reseal failed");
        }
        self.send(AgentMessage::Resealed(answer));
    }

    /// Kills the allocation's process group; it is reported as finished.
    pub fn cancel(&self, job: &str, attempt: u32, why: &str) {
        self.stop(&(job.to_owned(), attempt), Stop { why: why.to_owned(), lost: false, kill: false });
    }

    fn stop(&self, key: &Key, how: Stop) {
        let st = self.lock();
        match st.slots.get(key) {
            Some(Slot::Running { cancel, stop, .. }) => {
                stop.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(how);
                cancel.cancel();
            }
            Some(Slot::Finished(o)) => {
                let fin = finished(key, o);
                drop(st);
                self.send(fin);
            }
            // Never ran here: nothing to stop. Remember it so a late
            // assignment does not start it.
            None => {
                drop(st);
                let error = format!("cancelled before it started: {}", how.why);
                self.finish(key, Outcome { code: -1, error, lost: how.lost });
            }
            Some(Slot::Done(_)) => {}
        }
    }

    /// Gives up every running job attempt at once (SIGKILL), reporting them
    /// lost: this node has lost contact with the control plane for so long
    /// that it may declare them lost and run them elsewhere. Service
    /// replicas keep running. Returns how many were given up.
    pub fn fence(&self, why: &str) -> usize {
        let keys: Vec<Key> = self
            .lock()
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Running { job: true, .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            tracing::warn!(job_id = key.0, attempt = key.1, why, "giving up the job attempt");
            self.stop(key, Stop { why: why.to_owned(), lost: true, kill: true });
        }
        keys.len()
    }

    /// The control plane recorded the result.
    pub fn release(&self, job: &str, attempt: u32) {
        let key = (job.to_owned(), attempt);
        let mut st = self.lock();
        if let Some(Slot::Finished(o)) = st.slots.get(&key) {
            let outcome = Some(o.clone());
            let _ = st.journal.record(&Entry::Release { job: key.0.clone(), attempt, outcome: outcome.clone() });
            st.slots.insert(key, Slot::Done(outcome));
        }
    }

    /// Stops everything (desired state `stopped`).
    pub fn stop_all(&self, why: &str) {
        let keys: Vec<Key> = self
            .lock()
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Running { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for (job, attempt) in keys {
            self.cancel(&job, attempt, why);
        }
    }

    fn finish(&self, key: &Key, o: Outcome) {
        {
            let mut st = self.lock();
            let entry =
                Entry::End { job: key.0.clone(), attempt: key.1, code: o.code, error: o.error.clone(), lost: o.lost };
            if let Err(e) = st.journal.record(&entry) {
                tracing::error!(error = &e as &dyn std::error::Error, "journal write failed");
            }
            st.slots.insert(key.clone(), Slot::Finished(o.clone()));
        }
        tracing::info!(job_id = key.0, attempt = key.1, code = o.code, error = o.error, lost = o.lost, "finished");
        self.send(finished(key, &o));
    }

    async fn run(&self, key: Key, a: Assignment, cancel: CancellationToken, stop: Arc<Mutex<Option<Stop>>>) {
        // The secrets are opened once for every run of the allocation, and
        // their files removed before it is reported finished.
        let run = format!("{}-{}", key.0.replace('/', "_"), key.1);
        let outcome = match self.keyring.deliver(&run, &a.secrets) {
            Ok(secrets) => {
                let o = self.run_all(&key, &a, &cancel, &stop, &secrets).await;
                drop(secrets);
                o
            }
            Err(error) => Outcome { code: -1, error, lost: false },
        };
        self.finish(&key, outcome);
    }

    /// Runs the process, again per the restart policy, until it is done.
    async fn run_all(
        &self,
        key: &Key,
        a: &Assignment,
        cancel: &CancellationToken,
        stop: &Mutex<Option<Stop>>,
        secrets: &Delivered,
    ) -> Outcome {
        let stopped = |code: i32| {
            let s = stop.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let s = s.unwrap_or(Stop { why: String::new(), lost: false, kill: false });
            Outcome { code, error: format!("cancelled: {}", s.why), lost: s.lost }
        };

        let mut restarts = 0u32;
        loop {
            let (code, error) = self.run_once(key, a, secrets, cancel, stop, restarts).await;
            if cancel.is_cancelled() {
                return stopped(code);
            }
            // Jobs run once; a replica by its restart policy.
            let again = match a.restart {
                None | Some(RestartPolicy::Never) => false,
                Some(RestartPolicy::OnFailure) => code != 0 || !error.is_empty(),
                Some(RestartPolicy::Always) => true,
            };
            if !again {
                return Outcome { code, error, lost: false };
            }
            restarts += 1;
            let delay = Duration::from_millis(250u64.saturating_mul(1 << restarts.min(7))).min(Duration::from_secs(30));
            tracing::info!(job_id = key.0, code, restarts, ?delay, "service exited; restarting");
            if let Some(Slot::Running { restarts: r, .. }) = self.lock().slots.get_mut(key) {
                *r = restarts;
            }
            tokio::select! {
                _ = cancel.cancelled() => return stopped(code),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One run of the process. Returns (exit code, error).
    async fn run_once(
        &self,
        key: &Key,
        a: &Assignment,
        secrets: &Delivered,
        cancel: &CancellationToken,
        stop: &Mutex<Option<Stop>>,
        restarts: u32,
    ) -> (i32, String) {
        let exec = &a.exec;
        let max_log = if a.max_log_bytes == 0 { DEFAULT_MAX_LOG } else { a.max_log_bytes };
        let dir = if exec.working_dir.is_empty() {
            let d = self.work_dir.join(format!("{}-{}", key.0.replace('/', "_"), key.1));
            if let Err(e) = std::fs::create_dir_all(&d) {
                return (-1, format!("creating the working directory failed: {e}"));
            }
            d
        } else {
            PathBuf::from(&exec.working_dir)
        };
        let mut cmd = tokio::process::Command::new(&exec.command);
        cmd.args(&exec.args)
            .envs(&exec.env)
            .env("TETHER_JOB_ID", &key.0)
            .env("TETHER_JOB_ATTEMPT", key.1.to_string())
            .envs(secrets.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(d) = secrets.dir() {
            cmd.env("TETHER_SECRETS_DIR", d);
        }
        // SAFETY: prctl is async-signal-safe; the closure only calls it.
        unsafe {
            cmd.pre_exec(|| {
                // The process dies with the agent, so a restarted agent never
                // finds orphans it cannot supervise.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return (-1, format!("starting {:?} failed: {e}", exec.command)),
        };
        let pid = child.id().unwrap_or(0);
        self.send(AgentMessage::Started { key: key.clone(), pid, restarts });
        let log = Arc::new(tokio::sync::Mutex::new(LogCursor { pos: 0, cap: max_log, cut: false }));
        let mut pumps = Vec::new();
        if let Some(s) = child.stdout.take() {
            pumps.push(tokio::spawn(self.pump(key.clone(), s, OutputStream::Stdout, log.clone())));
        }
        if let Some(s) = child.stderr.take() {
            pumps.push(tokio::spawn(self.pump(key.clone(), s, OutputStream::Stderr, log.clone())));
        }
        let timeout = exec.timeout_ms.map(Duration::from_millis);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let mut error = String::new();
        let status = tokio::select! {
            s = child.wait() => s,
            _ = cancel.cancelled() => {
                let kill = stop.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|s| s.kill);
                killpg(pid, if kill { libc::SIGKILL } else { libc::SIGTERM });
                match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => { killpg(pid, libc::SIGKILL); child.wait().await }
                }
            }
            _ = deadline => {
                killpg(pid, libc::SIGKILL);
                error = format!("timed out after {:?}", timeout.unwrap_or_default());
                child.wait().await
            }
        };
        // Whatever the main process left behind in its group goes too.
        killpg(pid, libc::SIGKILL);
        for p in pumps {
            let _ = p.await;
        }
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(0)
            }),
            Err(e) => {
                error = format!("waiting for the process failed: {e}");
                -1
            }
        };
        (code, error)
    }

    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
        &self,
        key: Key,
        mut r: R,
        stream: OutputStream,
        log: Arc<tokio::sync::Mutex<LogCursor>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let runner = self.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut cur = log.lock().await;
                if cur.cut {
                    continue; // keep draining so the process never blocks on a full pipe
                }
                let room = cur.cap.saturating_sub(cur.pos) as usize;
                let (data, truncated) = if n > room {
                    let mut d = buf[..room].to_vec();
                    d.extend_from_slice(format!("\n[tether: output truncated at {} bytes]\n", cur.cap).as_bytes());
                    cur.cut = true;
                    (d, true)
                } else {
                    (buf[..n].to_vec(), false)
                };
                let offset = cur.pos;
                cur.pos += data.len() as u64;
                let chunk = AgentMessage::Output { key: key.clone(), stream, offset, data, truncated };
                runner.send_log(chunk).await;
            }
        }
    }
}

struct LogCursor {
    pos: u64,
    cap: u64,
    cut: bool,
}

fn finished(key: &Key, o: &Outcome) -> AgentMessage {
    AgentMessage::Finished { key: key.clone(), outcome: o.to_domain() }
}

fn killpg(pgid: u32, sig: i32) {
    if pgid > 1 {
        // SAFETY: signals a process group we created; ESRCH (already gone) is fine.
        unsafe {
            libc::killpg(pgid as i32, sig);
        }
    }
}
