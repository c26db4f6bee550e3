//! `tether-loadgen`: drives a running control plane and measures it.
//!
//! `jobs`: submits N jobs with C submitters against real agents and reports
//! submit throughput, end-to-end jobs per second (submit to finished, as
//! recorded by the control plane) and submit-to-start latency percentiles
//! (the job's creation time to its attempt's start time, both stamped by the
//! control plane, so the two clocks agree). Bounded in count and time; talks
//! only to the address it is given.

mod agents;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tether_proto::pb::job_service_client::JobServiceClient;
use tether_proto::{Bearer, pb};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "tether-loadgen", version, about)]
struct Cli {
    /// Control-plane gRPC URL.
    #[arg(long, env = "TETHER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Operator token (operator role or higher).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit jobs to real agents and measure dispatch.
    Jobs {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The command each job runs.
        #[arg(long, default_value = "/bin/true")]
        command: String,
        /// Submit at this many jobs per second in all (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Simulate a fleet: N agents, each with its own TCP connection and its
    /// own Heartbeat and Jobs streams, speaking the real agent protocol.
    Agents(agents::AgentsArgs),
    /// The scheduler alone: placements per second over a synthetic fleet.
    Placement {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        placements: usize,
    },
    /// Latency of one cheap read over gRPC and over the REST bridge, in one
    /// run, interleaved in rounds so both see the same machine.
    RestVsGrpc {
        /// The HTTP base URL of the same control plane.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        http: String,
        /// Calls per protocol.
        #[arg(long, default_value_t = 5000)]
        calls: usize,
    },
}

type Client = JobServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

fn ms(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Placement { nodes, placements } = cli.cmd {
        return placement(nodes, placements);
    }
    let channel = Channel::from_shared(cli.addr.clone())?.connect().await.context("connecting")?;
    let bearer = Bearer::new(Some(&cli.token))?;
    let client = JobServiceClient::with_interceptor(channel, bearer);
    match cli.cmd {
        Cmd::Jobs { count, concurrency, command, rate, timeout_secs } => {
            jobs(client, count, concurrency.max(1), command, rate, Duration::from_secs(timeout_secs)).await
        }
        Cmd::RestVsGrpc { http, calls } => rest_vs_grpc(&cli.addr, &cli.token, &http, calls).await,
        Cmd::Agents(args) => agents::run(&cli.addr, &cli.token, args).await,
        Cmd::Placement { nodes, placements } => placement(nodes, placements),
    }
}

async fn jobs(
    client: Client,
    count: usize,
    concurrency: usize,
    command: String,
    rate: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let spec = pb::JobSpec {
        driver: "exec".into(),
        exec: Some(pb::ExecSpec { command, ..Default::default() }),
        resources: Some(pb::Resources { cpu_millis: 1, memory_mb: 1, gpus: 0 }),
        ..Default::default()
    };
    let ids: Vec<String> =
        submit_jobs(&client, count, concurrency, rate, spec).await?.into_iter().map(|(id, _)| id).collect();
    let submit_secs = t0.elapsed().as_secs_f64();

    // Wait until every job is terminal (bounded).
    let mut c = client.clone();
    loop {
        let mut done = 0;
        let mut token = String::new();
        loop {
            let page = c
                .list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() })
                .await?
                .into_inner();
            done += page.jobs.iter().filter(|j| j.status >= pb::JobStatus::Succeeded as i32).count();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if done >= count {
            break;
        }
        if t0.elapsed() > timeout {
            bail!("only {done} of {count} jobs finished within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall_secs = t0.elapsed().as_secs_f64();

    // Per-job timings as the control plane recorded them.
    let mut start_lat = Vec::with_capacity(count);
    let mut first_created = i64::MAX;
    let mut last_finished = 0i64;
    let mut succeeded = 0usize;
    for id in &ids {
        let j = c.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job.unwrap_or_default();
        if j.status == pb::JobStatus::Succeeded as i32 {
            succeeded += 1;
        }
        let created = ms(&j.created_at).unwrap_or(0);
        first_created = first_created.min(created);
        if let Some(a) = j.attempts.first() {
            if let Some(started) = ms(&a.started_at) {
                start_lat.push((started - created) as f64);
            }
            if let Some(f) = ms(&a.finished_at) {
                last_finished = last_finished.max(f);
            }
        }
    }
    start_lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let e2e_secs = (last_finished - first_created) as f64 / 1000.0;
    let out = serde_json::json!({
        "jobs": count,
        "succeeded": succeeded,
        "concurrency": concurrency,
        "rate": rate,
        "submit_per_sec": count as f64 / submit_secs,
        "jobs_per_sec_end_to_end": count as f64 / e2e_secs.max(0.001),
        "wall_secs": wall_secs,
        "submit_to_start_ms": {
            "p50": percentile(&start_lat, 0.5),
            "p99": percentile(&start_lat, 0.99),
            "max": start_lat.last().copied().unwrap_or(f64::NAN),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Submits `count` copies of `spec` from `submitters` concurrent callers,
/// together `rate` per second (0: as fast as they go). Returns each job's id
/// with the moment its call was issued.
async fn submit_jobs(
    client: &Client,
    count: usize,
    submitters: usize,
    rate: f64,
    spec: pb::JobSpec,
) -> Result<Vec<(String, Instant)>, tonic::Status> {
    let submitters = submitters.max(1);
    // Each submitter paces itself so that all together submit `rate` per second.
    let gap = (rate > 0.0).then(|| Duration::from_secs_f64(submitters as f64 / rate));
    let per = count.div_ceil(submitters);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..submitters {
        let n = per.min(count.saturating_sub(w * per));
        let (mut c, spec) = (client.clone(), spec.clone());
        set.spawn(async move {
            let mut sent = Vec::with_capacity(n);
            let mut tick = gap.map(tokio::time::interval);
            for _ in 0..n {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let at = Instant::now();
                let job = c.submit_job(pb::SubmitJobRequest { spec: Some(spec.clone()), ..Default::default() }).await?;
                sent.push((job.into_inner().job.map(|j| j.job_id).unwrap_or_default(), at));
            }
            Ok::<_, tonic::Status>(sent)
        });
    }
    let mut sent = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        sent.extend(r.map_err(|e| tonic::Status::internal(e.to_string()))??);
    }
    Ok(sent)
}

/// Median of a sample, in microseconds.
fn median_us(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    percentile(v, 0.5)
}

async fn rest_vs_grpc(addr: &str, token: &str, http: &str, calls: usize) -> anyhow::Result<()> {
    use tether_proto::pb::tenancy_service_client::TenancyServiceClient;
    let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
    let bearer = Bearer::new(Some(token))?;
    let mut grpc = TenancyServiceClient::with_interceptor(channel, bearer);
    // In the workspace's one build reqwest has rustls without a provider
    // (the control plane's feature): ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rest = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
    let url = format!("{}/v1/whoami", http.trim_end_matches('/'));
    let auth = format!("Bearer {}", token.trim());
    // Warm both paths up.
    for _ in 0..200 {
        grpc.who_am_i(pb::WhoAmIRequest {}).await?;
        rest.get(&url).header("authorization", &auth).send().await?.error_for_status()?.bytes().await?;
    }
    let mut g = Vec::with_capacity(calls);
    let mut r = Vec::with_capacity(calls);
    // Alternate in rounds of 100 so that noise hits both alike.
    let rounds = calls.div_ceil(100);
    for _ in 0..rounds {
        for _ in 0..100 {
            let t = Instant::now();
            grpc.who_am_i(pb::WhoAmIRequest {}).await?;
            g.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..100 {
            let t = Instant::now();
            let body = rest.get(&url).header("authorization", &auth).send().await?.error_for_status()?.bytes().await?;
            r.push(t.elapsed().as_secs_f64() * 1e6);
            if body.is_empty() {
                bail!("empty REST response");
            }
        }
    }
    let (gm, rm) = (median_us(&mut g), median_us(&mut r));
    let out = serde_json::json!({
        "rpc": "TenancyService/WhoAmI (GET /v1/whoami)",
        "calls_each": g.len(),
        "grpc_median_us": gm,
        "rest_median_us": rm,
        "grpc_p99_us": percentile(&g, 0.99),
        "rest_p99_us": percentile(&r, 0.99),
        "ratio_rest_over_grpc": rm / gm,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Places `count` requests one by one (each charged before the next) over a
/// synthetic fleet with mixed sizes, labels and states, and reports the rate.
fn placement(nodes: usize, count: usize) -> anyhow::Result<()> {
    use tether_scheduler::{Ledger, NodeView, Objective, Request, place_batch_from};
    use tether_types::{Constraints, NodeId, OrgId, ProjectAccess, ProjectId, Resources};
    let org = OrgId::from_random([1; 10]);
    let project = std::sync::Arc::new(ProjectAccess {
        project: ProjectId::from_random([1; 10]),
        org: org.clone(),
        pools: ["batch".to_string(), "web".to_string()].into(),
        quota: Default::default(),
    });
    let mut fleet: Vec<NodeView> = (0..nodes)
        .map(|i| {
            let mut id = [0u8; 10];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            NodeView {
                id: NodeId::from_random(id),
                org: org.clone(),
                dedicated: None,
                ready: i % 50 != 0,
                active: i % 97 != 0,
                state: "ready".into(),
                pool: if i % 3 == 0 { "batch".into() } else { "web".into() },
                labels: [("zone".to_string(), format!("z{}", i % 4))].into(),
                gpu_models: vec![],
                capacity: Resources { cpu_millis: 16_000 + (i as u64 % 4) * 8000, memory_mb: 65_536, gpus: 0 },
                allocated: Resources::default(),
                reliability: 0.5 + (i % 10) as f64 / 20.0,
                groups: Default::default(),
            }
        })
        .collect();
    let reqs: Vec<Request> = (0..count)
        .map(|i| {
            let c = Constraints {
                pool: if i % 5 == 0 { "batch".into() } else { String::new() },
                label_selector: if i % 7 == 0 { "zone in (z1,z2)".into() } else { String::new() },
                gpu_model: String::new(),
            };
            let objective = [Objective::Balanced, Objective::Cost, Objective::Latency, Objective::Durability][i % 4];
            Request::new(project.clone(), Resources { cpu_millis: 10, memory_mb: 8, gpus: 0 }, c, objective)
        })
        .collect();
    let t = Instant::now();
    // Batches of 100, as the work loop places them, the scan resuming where
    // the previous batch stopped.
    let mut cursor = 0;
    let mut placed = 0;
    let mut ledger = Ledger::default();
    for chunk in reqs.chunks(100) {
        let (out, next) = place_batch_from(&mut fleet, &mut ledger, chunk, cursor);
        cursor = next;
        placed += out.iter().filter(|p| p.is_some()).count();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "nodes": nodes,
            "requests": count,
            "placed": placed,
            "seconds": secs,
            "placements_per_sec": count as f64 / secs,
        }))?
    );
    Ok(())
}
