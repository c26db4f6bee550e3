//! Simulated agents: real connections, real protocol, no processes.

#![allow(unsafe_code)] // setrlimit

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tether_proto::agent_pb::agent_service_client::AgentServiceClient;
use tether_proto::agent_pb::{self, heartbeat_request, heartbeat_response, jobs_request, jobs_response};
use tether_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use tether_proto::Bearer;

use crate::percentile;

#[derive(Args)]
pub struct AgentsArgs {
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Join token for enrolment (e.g. tether-data/join.token's contents).
    #[arg(long, env = "TETHER_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,
    /// Identities file: reused when it holds enough enrolled agents, written otherwise.
    #[arg(long, default_value = "loadgen-identities.json")]
    identities: PathBuf,
    /// Agents started per second.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Run this long after the ramp, then stop. With `--submit`, the run
    /// ends once the jobs are measured instead (at most ten minutes on).
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Local source addresses to spread connections over (127.0.0.0/8 only).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// How long a simulated job "runs" before it is reported finished.
    #[arg(long, default_value_t = 0)]
    job_ms: u64,
    /// Submit this many jobs once all agents are connected, at `submit_rate` per second.
    #[arg(long, default_value_t = 0)]
    submit: usize,
    /// Jobs per second over all submitters; 0 submits as fast as they go.
    #[arg(long, default_value_t = 100.0)]
    submit_rate: f64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 1)]
    submitters: usize,
    /// Write the summary JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Identity {
    node_id: String,
    credential: String,
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    sessions: AtomicU64,
    beats: AtomicU64,
    assigned: AtomicU64,
    finished: AtomicU64,
    failures: AtomicU64,
    /// Job id -> when its assignment arrived.
    arrivals: Mutex<HashMap<String, Instant>>,
    /// Time from losing a session to having a new one, in ms.
    reconnects: Mutex<Vec<f64>>,
}

/// What a simulated agent holds, kept across its sessions so that the
/// allocation report after a reconnect tells the truth (as the real agent's
/// journal does), and the Jobs stream of its current session, where results
/// go.
/// One lock for both, so that a result is either in a session's report or
/// sent on that session's stream after the report.
#[derive(Default)]
struct AgentState {
    /// (job, attempt) -> finished.
    held: HashMap<(String, u32), bool>,
    jobs_tx: Option<mpsc::Sender<agent_pb::JobsRequest>>,
}

type Held = Arc<Mutex<AgentState>>;

fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

async fn enroll_all(addr: &str, token: &str, n: usize, path: &PathBuf) -> anyhow::Result<Vec<Identity>> {
    if let Ok(bytes) = std::fs::read(path) {
        let ids: Vec<Identity> = serde_json::from_slice(&bytes).context("identities file")?;
        if ids.len() >= n {
            return Ok(ids.into_iter().take(n).collect());
        }
    }
    let channel = Endpoint::from_shared(addr.to_owned())?.connect().await?;
    let mut set = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    for _ in 0..32 {
        let (mut c, next, out, token) =
            (AgentServiceClient::new(channel.clone()), next.clone(), out.clone(), token.to_owned());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, tonic::Status>(());
                }
                let r = c
                    .enroll(agent_pb::EnrollRequest {
                        join_token: token.clone(),
                        capabilities: Some(pb::NodeCapabilities {
                            hostname: format!("sim-{i}"),
                            os: "linux".into(),
                            arch: "x86_64".into(),
                            cpu_count: 8,
                            memory_mb: 16384,
                            disk_mb: 100_000,
                            agent_version: "loadgen".into(),
                            ..Default::default()
                        }),
                        labels: [("sim".to_string(), "true".to_string())].into(),
                        public_key: vec![],
                        csr: vec![],
                    })
                    .await?
                    .into_inner();
                out.lock().unwrap().push(Identity { node_id: r.node_id, credential: r.node_credential });
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let ids = Arc::try_unwrap(out).map_err(|_| anyhow::anyhow!("still shared"))?.into_inner().unwrap();
    std::fs::write(path, serde_json::to_vec(&ids)?)?;
    Ok(ids)
}

/// When the simulated agents stop: at a deadline, or earlier when told.
#[derive(Clone)]
struct Stop {
    at: Instant,
    early: tokio::sync::watch::Receiver<bool>,
}

impl Stop {
    fn done(&self) -> bool {
        Instant::now() >= self.at || *self.early.borrow()
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.at.into()) => {}
            _ = self.early.wait_for(|v| *v) => {}
        }
    }
}

/// One simulated agent, reconnecting until `stop`.
async fn agent(
    addr: String,
    source: IpAddr,
    id: Identity,
    generation: u64,
    job_ms: u64,
    stats: Arc<Stats>,
    mut stop: Stop,
) {
    let mut lost_at: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let held = Held::default();
    while !stop.done() {
        match session(&addr, source, &id, generation, job_ms, &stats, &mut stop, &mut lost_at, &held).await {
            Ok(()) => return,
            Err(_) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                lost_at.get_or_insert_with(Instant::now);
                // Full jitter, capped.
                let jitter = (now_ms() % 1000) as f64 / 1000.0;
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    addr: &str,
    source: IpAddr,
    id: &Identity,
    generation: u64,
    job_ms: u64,
    stats: &Arc<Stats>,
    stop: &mut Stop,
    lost_at: &mut Option<Instant>,
    held: &Held,
) -> anyhow::Result<()> {
    let channel: Channel = Endpoint::from_shared(addr.to_owned())?
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let bearer = Bearer::new(Some(&id.credential))?;
    let mut client = AgentServiceClient::with_interceptor(channel, bearer);
    let (hb_tx, hb_rx) = mpsc::channel(4);
    hb_tx
        .send(agent_pb::HeartbeatRequest {
            msg: Some(heartbeat_request::Msg::Hello(agent_pb::Hello {
                node_id: id.node_id.clone(),
                agent_version: "loadgen".into(),
                capabilities: None,
                session_generation: generation,
                desired_state_version: u64::MAX,
            })),
        })
        .await?;
    let mut inbound = client.heartbeat(ReceiverStream::new(hb_rx)).await?.into_inner();
    let (jobs_tx, jobs_rx) = mpsc::channel(64);
    {
        let mut state = held.lock().unwrap();
        let report = agent_pb::AllocationReport {
            allocations: state
                .held
                .iter()
                .map(|((job_id, attempt), &finished)| agent_pb::HeldAllocation {
                    job_id: job_id.clone(),
                    attempt: *attempt,
                    running: !finished,
                    finished,
                    ..Default::default()
                })
                .collect(),
        };
        jobs_tx.try_send(agent_pb::JobsRequest { msg: Some(jobs_request::Msg::Report(report)) })?;
        state.jobs_tx = Some(jobs_tx.clone());
    }
    let mut jobs_in = client.jobs(ReceiverStream::new(jobs_rx)).await?.into_inner();
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    if let Some(t) = lost_at.take() {
        stats.reconnects.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut interval = Duration::from_secs(5);
    let mut next_beat = tokio::time::Instant::now() + interval;
    let mut seq = 0;
    let result = loop {
        tokio::select! {
            _ = stop.wait() => break Ok(()),
            m = inbound.message() => match m {
                Ok(Some(agent_pb::HeartbeatResponse { msg: Some(heartbeat_response::Msg::Config(c)) })) => {
                    if let Some(d) = c.interval {
                        interval = Duration::new(d.seconds as u64, d.nanos as u32);
                    }
                    // Spread the first beat over the interval.
                    next_beat = tokio::time::Instant::now() + interval.mul_f64((now_ms() % 997) as f64 / 997.0);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err(anyhow::anyhow!("heartbeat stream ended")),
                Err(s) => break Err(s.into()),
            },
            m = jobs_in.message() => match m {
                Ok(Some(agent_pb::JobsResponse { msg: Some(jobs_response::Msg::Assign(a)) })) => {
                    // A repeated assignment (resync) of something held is not a new job.
                    if held.lock().unwrap().held.insert((a.job_id.clone(), a.attempt), false).is_some() {
                        continue;
                    }
                    stats.assigned.fetch_add(1, Ordering::Relaxed);
                    stats.arrivals.lock().unwrap().entry(a.job_id.clone()).or_insert_with(Instant::now);
                    let tx = jobs_tx.clone();
                    let stats = stats.clone();
                    let held = held.clone();
                    tokio::spawn(async move {
                        let started = jobs_request::Msg::Started(agent_pb::JobStarted { job_id: a.job_id.clone(), attempt: a.attempt, pid: 1, restarts: 0 });
                        let _ = tx.send(agent_pb::JobsRequest { msg: Some(started) }).await;
                        if job_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(job_ms)).await;
                        }
                        let current = {
                            let mut state = held.lock().unwrap();
                            if let Some(f) = state.held.get_mut(&(a.job_id.clone(), a.attempt)) {
                                *f = true;
                            }
                            // To the current session; if it goes, the next
                            // one's report carries the result.
                            state.jobs_tx.clone()
                        };
                        stats.finished.fetch_add(1, Ordering::Relaxed);
                        let fin = jobs_request::Msg::Finished(agent_pb::JobFinished { job_id: a.job_id, attempt: a.attempt, ..Default::default() });
                        if let Some(tx) = current {
                            let _ = tx.send(agent_pb::JobsRequest { msg: Some(fin) }).await;
                        }
                    });
                }
                Ok(Some(agent_pb::JobsResponse { msg: Some(jobs_response::Msg::Release(r)) })) => {
                    held.lock().unwrap().held.remove(&(r.job_id, r.attempt));
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err(anyhow::anyhow!("jobs stream ended")),
                Err(s) => break Err(s.into()),
            },
            _ = tokio::time::sleep_until(next_beat) => {
                seq += 1;
                let beat = agent_pb::Beat { seq, cpu_percent: 1.0, memory_used_mb: 100, disk_used_mb: 100, running_allocations: 0, report: None, rtt: None };
                if hb_tx.send(agent_pb::HeartbeatRequest { msg: Some(heartbeat_request::Msg::Beat(beat)) }).await.is_err() {
                    break Err(anyhow::anyhow!("heartbeat send failed"));
                }
                stats.beats.fetch_add(1, Ordering::Relaxed);
                next_beat = tokio::time::Instant::now() + interval;
            }
        }
    };
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

pub async fn run(addr: &str, token: &str, a: AgentsArgs) -> anyhow::Result<()> {
    for s in &a.sources {
        anyhow::ensure!(s.is_loopback(), "source {s} is not a loopback address");
    }
    let fds = raise_fd_limit();
    // One socket per agent, plus a margin for the enrolment and submit channels.
    anyhow::ensure!(a.count as u64 + 128 < fds, "{} agents need more than the {fds} open files allowed", a.count);
    let t_enroll = Instant::now();
    let ids = enroll_all(addr, &a.join_token, a.count, &a.identities).await?;
    let enroll_secs = t_enroll.elapsed().as_secs_f64();
    let stats = Arc::new(Stats::default());
    let generation = now_ms();
    let ramp_secs = a.count as f64 / a.ramp.max(1.0);
    let hold = if a.submit > 0 { Duration::from_secs(a.hold_secs.max(600)) } else { Duration::from_secs(a.hold_secs) };
    let (stop_early, early) = tokio::sync::watch::channel(false);
    let stop = Stop { at: Instant::now() + Duration::from_secs_f64(ramp_secs) + hold, early };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(i as f64 / a.ramp.max(1.0));
        tokio::time::sleep_until(due.into()).await;
        let source = a.sources[i % a.sources.len()];
        tasks.spawn(agent(addr.to_owned(), source, id, generation, a.job_ms, stats.clone(), stop.clone()));
    }
    // Wait until all are connected (or the hold ends).
    let mut all_connected_secs = None;
    while !stop.done() {
        if stats.connected.load(Ordering::Relaxed) as usize == a.count {
            all_connected_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From then on, watch for outages (a control-plane restart): when the
    // first session was lost and when all agents were connected again.
    let outages = tokio::spawn(watch_outages(stats.clone(), a.count, stop.clone()));
    let submitted = if a.submit > 0 && all_connected_secs.is_some() {
        let measured = submit(addr, token, &a, &stats).await;
        // Hold on for the rest of --hold-secs after the ramp (an outage to
        // ride out), then stop everything.
        let until = t0 + Duration::from_secs_f64(ramp_secs) + Duration::from_secs(a.hold_secs);
        tokio::time::sleep_until(until.into()).await;
        let _ = stop_early.send(true);
        measured?
    } else {
        json!(null)
    };
    while let Some(_r) = tasks.join_next().await {}
    let outages = outages.await?;
    let mut rec = stats.reconnects.lock().unwrap().clone();
    rec.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let out = json!({
        "agents": a.count,
        "enroll_secs": enroll_secs,
        "all_connected_secs": all_connected_secs,
        "sessions_opened": stats.sessions.load(Ordering::Relaxed),
        "session_failures": stats.failures.load(Ordering::Relaxed),
        "beats_sent": stats.beats.load(Ordering::Relaxed),
        "jobs_assigned": stats.assigned.load(Ordering::Relaxed),
        "jobs_finished": stats.finished.load(Ordering::Relaxed),
        "reconnects": rec.len(),
        "reconnect_ms": {"p50": percentile(&rec, 0.5), "p99": percentile(&rec, 0.99), "max": rec.last()},
        "outages": outages,
        "jobs": submitted,
    });
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(p) = a.out {
        std::fs::write(p, text)?;
    }
    Ok(())
}

/// Samples the connected count until `stop`. Each outage is (seconds from
/// the first lost session to all agents connected again, fewest connected).
async fn watch_outages(stats: Arc<Stats>, count: usize, stop: Stop) -> serde_json::Value {
    let mut outages = Vec::new();
    let mut current: Option<(Instant, usize)> = None;
    while !stop.done() {
        let n = stats.connected.load(Ordering::Relaxed) as usize;
        match current.as_mut() {
            None if n < count => current = Some((Instant::now(), n)),
            Some((since, low)) => {
                *low = (*low).min(n);
                if n == count {
                    outages.push(json!({"recovered_secs": since.elapsed().as_secs_f64(), "fewest_connected": *low}));
                    current = None;
                }
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some((since, low)) = current {
        outages.push(
            json!({"recovered_secs": null, "lost_for_secs": since.elapsed().as_secs_f64(), "fewest_connected": low}),
        );
    }
    json!(outages)
}

/// Submits `a.submit` jobs for the simulated fleet and measures them:
/// submit-to-agent on the load generator's clock (submit call issued to the
/// assignment arriving), submit-to-finished and jobs per second as the
/// control plane recorded them (created to attempt finished, both durable).
async fn submit(addr: &str, token: &str, a: &AgentsArgs, stats: &Arc<Stats>) -> anyhow::Result<serde_json::Value> {
    let channel = Endpoint::from_shared(addr.to_owned())?.connect().await?;
    let client = pb::job_service_client::JobServiceClient::with_interceptor(channel, Bearer::new(Some(token))?);
    let t0 = Instant::now();
    let spec = pb::JobSpec {
        driver: "exec".into(),
        exec: Some(pb::ExecSpec { command: "/bin/true".into(), ..Default::default() }),
        resources: Some(pb::Resources { cpu_millis: 1, memory_mb: 1, gpus: 0 }),
        constraints: Some(pb::Constraints { label_selector: "sim".into(), ..Default::default() }),
        ..Default::default()
    };
    let sent = crate::submit_jobs(&client, a.submit, a.submitters, a.submit_rate, spec).await?;
    let submit_secs = t0.elapsed().as_secs_f64();
    // Wait (bounded) for the simulated agents to have finished them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && (stats.finished.load(Ordering::Relaxed) as usize) < sent.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut to_agent: Vec<f64> = {
        let arrivals = stats.arrivals.lock().unwrap();
        sent.iter()
            .filter_map(|(id, at)| arrivals.get(id).map(|got| got.duration_since(*at).as_secs_f64() * 1e3))
            .collect()
    };
    to_agent.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    // Then read what the control plane recorded, until every job is terminal.
    let mut c = client.clone();
    let mut to_finished = Vec::with_capacity(sent.len());
    let (mut first_created, mut last_finished, mut succeeded) = (i64::MAX, 0i64, 0usize);
    for (id, _) in &sent {
        let job = loop {
            let j = c.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job.unwrap_or_default();
            if j.status >= pb::JobStatus::Succeeded as i32 || Instant::now() > deadline {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        succeeded += usize::from(job.status == pb::JobStatus::Succeeded as i32);
        let created = crate::ms(&job.created_at).unwrap_or(0);
        first_created = first_created.min(created);
        if let Some(f) = job.attempts.last().and_then(|at| crate::ms(&at.finished_at)) {
            last_finished = last_finished.max(f);
            to_finished.push((f - created) as f64);
        }
    }
    to_finished.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let e2e_secs = (last_finished - first_created) as f64 / 1000.0;
    Ok(json!({
        "submitted": sent.len(),
        "succeeded": succeeded,
        "submitters": a.submitters.max(1),
        "rate": a.submit_rate,
        "submit_per_sec": sent.len() as f64 / submit_secs,
        "jobs_per_sec_end_to_end": sent.len() as f64 / e2e_secs.max(0.001),
        "submit_to_agent_ms": {"p50": percentile(&to_agent, 0.5), "p99": percentile(&to_agent, 0.99), "max": to_agent.last(), "arrived": to_agent.len()},
        "submit_to_finished_ms": {"p50": percentile(&to_finished, 0.5), "p99": percentile(&to_finished, 0.99), "max": to_finished.last()},
    }))
}
