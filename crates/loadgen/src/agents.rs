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
    /// Run this long after the ramp, then stop.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Local source addresses to spread connections over (127.0.0.0/8 only).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// How long a simulated job "runs" before it is reported finished.
    #[arg(long, default_value_t = 0)]
    job_ms: u64,
    /// Submit this many jobs during the hold, at `submit_rate` per second.
    #[arg(long, default_value_t = 0)]
    submit: usize,
    #[arg(long, default_value_t = 100.0)]
    submit_rate: f64,
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

/// One simulated agent, reconnecting until `stop`.
async fn agent(
    addr: String,
    source: IpAddr,
    id: Identity,
    generation: u64,
    job_ms: u64,
    stats: Arc<Stats>,
    stop: Instant,
) {
    let mut lost_at: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    while Instant::now() < stop {
        match session(&addr, source, &id, generation, job_ms, &stats, stop, &mut lost_at).await {
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
    stop: Instant,
    lost_at: &mut Option<Instant>,
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
    jobs_tx
        .send(agent_pb::JobsRequest { msg: Some(jobs_request::Msg::Report(agent_pb::AllocationReport::default())) })
        .await?;
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
            _ = tokio::time::sleep_until(stop.into()) => break Ok(()),
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
                    stats.assigned.fetch_add(1, Ordering::Relaxed);
                    stats.arrivals.lock().unwrap().entry(a.job_id.clone()).or_insert_with(Instant::now);
                    let tx = jobs_tx.clone();
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        let started = jobs_request::Msg::Started(agent_pb::JobStarted { job_id: a.job_id.clone(), attempt: a.attempt, pid: 1, restarts: 0 });
                        let _ = tx.send(agent_pb::JobsRequest { msg: Some(started) }).await;
                        if job_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(job_ms)).await;
                        }
                        let fin = jobs_request::Msg::Finished(agent_pb::JobFinished { job_id: a.job_id, attempt: a.attempt, exit_code: 0, error: String::new() });
                        if tx.send(agent_pb::JobsRequest { msg: Some(fin) }).await.is_ok() {
                            stats.finished.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err(anyhow::anyhow!("jobs stream ended")),
                Err(s) => break Err(s.into()),
            },
            _ = tokio::time::sleep_until(next_beat) => {
                seq += 1;
                let beat = agent_pb::Beat { seq, cpu_percent: 1.0, memory_used_mb: 100, disk_used_mb: 100, running_allocations: 0 };
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
    anyhow::ensure!((a.count as u64) * 2 + 64 < fds, "{} agents need more than the {fds} open files allowed", a.count);
    let t_enroll = Instant::now();
    let ids = enroll_all(addr, &a.join_token, a.count, &a.identities).await?;
    let enroll_secs = t_enroll.elapsed().as_secs_f64();
    let stats = Arc::new(Stats::default());
    let generation = now_ms();
    let ramp_secs = a.count as f64 / a.ramp.max(1.0);
    let stop = Instant::now() + Duration::from_secs_f64(ramp_secs) + Duration::from_secs(a.hold_secs);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(i as f64 / a.ramp.max(1.0));
        tokio::time::sleep_until(due.into()).await;
        let source = a.sources[i % a.sources.len()];
        tasks.spawn(agent(addr.to_owned(), source, id, generation, a.job_ms, stats.clone(), stop));
    }
    // Wait until all are connected (or the hold ends).
    let mut all_connected_secs = None;
    while Instant::now() < stop {
        if all_connected_secs.is_none() && stats.connected.load(Ordering::Relaxed) as usize == a.count {
            all_connected_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Optionally submit jobs and time their arrival at the simulated agents.
    let mut submit_lat = Vec::new();
    if a.submit > 0 {
        let channel = Endpoint::from_shared(addr.to_owned())?.connect().await?;
        let mut jobs = pb::job_service_client::JobServiceClient::with_interceptor(channel, Bearer::new(Some(token))?);
        let mut sent: Vec<(String, Instant)> = Vec::with_capacity(a.submit);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.submit_rate.max(0.1)));
        for _ in 0..a.submit {
            tick.tick().await;
            let at = Instant::now();
            let spec = pb::JobSpec {
                driver: "exec".into(),
                exec: Some(pb::ExecSpec { command: "/bin/true".into(), ..Default::default() }),
                resources: Some(pb::Resources { cpu_millis: 1, memory_mb: 1, gpus: 0 }),
                constraints: Some(pb::Constraints { label_selector: "sim".into(), ..Default::default() }),
                ..Default::default()
            };
            let j =
                jobs.submit_job(pb::SubmitJobRequest { spec: Some(spec), ..Default::default() }).await?.into_inner();
            sent.push((j.job.map(|j| j.job_id).unwrap_or_default(), at));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && stats.arrivals.lock().unwrap().len() < a.submit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let arrivals = stats.arrivals.lock().unwrap();
        for (id, at) in &sent {
            if let Some(got) = arrivals.get(id) {
                submit_lat.push(got.duration_since(*at).as_secs_f64() * 1000.0);
            }
        }
        submit_lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    }
    while let Some(_r) = tasks.join_next().await {}
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
        "submitted": a.submit,
        "submit_to_agent_ms": {"p50": percentile(&submit_lat, 0.5), "p99": percentile(&submit_lat, 0.99), "max": submit_lat.last(), "arrived": submit_lat.len()},
    });
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(p) = a.out {
        std::fs::write(p, text)?;
    }
    Ok(())
}
