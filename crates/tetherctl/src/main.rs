//! `tetherctl`: the operator CLI. Talks gRPC to the control plane; prints
//! tables for people and proto3 JSON (`-o json`) for scripts.

mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tether_proto::pb::job_service_client::JobServiceClient;
use tether_proto::pb::node_service_client::NodeServiceClient;
use tether_proto::pb::placement_service_client::PlacementServiceClient;
use tether_proto::pb::tenancy_service_client::TenancyServiceClient;
use tether_proto::pb::workload_service_client::WorkloadServiceClient;
use tether_proto::{Bearer, pb};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use output::{Format, Out};
use tether_types::parse_duration;

/// Operate a Tether control plane.
#[derive(Parser)]
#[command(name = "tetherctl", version, about, propagate_version = true)]
struct Cli {
    /// Control-plane gRPC address.
    #[arg(long, global = true, env = "TETHER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Bearer token (a macaroon).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token (e.g. tether-data/admin.token).
    #[arg(long, global = true, env = "TETHER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Nodes: list, inspect, watch, and set what they should do.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Batch jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Long-running workloads.
    #[command(subcommand)]
    Workloads(WorkloadsCmd),
    /// API tokens (macaroons).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Agent join tokens.
    #[command(name = "join-tokens", subcommand)]
    JoinTokens(JoinTokensCmd),
    /// Scheduler dry runs.
    #[command(subcommand)]
    Placement(PlacementCmd),
    /// Show the caller's credential.
    Whoami,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List nodes.
    List {
        #[arg(long, value_enum)]
        status: Option<NodeStatusArg>,
        /// Label selector, e.g. `zone in (a,b),!gpu`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Show one node.
    Get { node_id: String },
    /// Stream registry changes until interrupted.
    Watch {
        /// List current nodes first.
        #[arg(long)]
        initial: bool,
    },
    /// Stop placing new work on the node.
    Pause {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Make the node active again.
    Resume { node_id: String },
    /// Move work off the node; jobs get until the deadline.
    Drain {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// e.g. 10m, 1h.
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Stop all work on the node now.
    Stop {
        node_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Exclude the node from scheduling, with a reason.
    Quarantine {
        node_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a quarantine.
    Unquarantine { node_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum NodeStatusArg {
    Pending,
    Ready,
    Unreachable,
    Down,
    Left,
}

#[derive(Args)]
struct Placement {
    /// CPU in millicores.
    #[arg(long, default_value_t = 0)]
    cpu: i64,
    /// Memory in MB.
    #[arg(long, default_value_t = 0)]
    memory: i64,
    #[arg(long, default_value_t = 0)]
    gpus: i64,
    #[arg(long, default_value = "")]
    pool: String,
    /// Label selector the node must match.
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    #[arg(long, default_value = "")]
    gpu_model: String,
}

impl Placement {
    fn resources(&self) -> pb::Resources {
        pb::Resources { cpu_millis: self.cpu, memory_mb: self.memory, gpus: self.gpus }
    }
    fn constraints(&self) -> pb::Constraints {
        pb::Constraints {
            pool: self.pool.clone(),
            label_selector: self.selector.clone(),
            gpu_model: self.gpu_model.clone(),
        }
    }
}

#[derive(Args)]
struct Exec {
    /// Environment variables, KEY=VALUE.
    #[arg(short, long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    #[arg(long, default_value = "")]
    workdir: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl Exec {
    fn spec(&self, timeout: Option<Duration>) -> pb::ExecSpec {
        pb::ExecSpec {
            command: self.command[0].clone(),
            args: self.command[1..].to_vec(),
            env: self.env.iter().cloned().collect(),
            working_dir: self.workdir.clone(),
            timeout: timeout
                .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
        }
    }
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Submit a job: `tetherctl jobs submit -- /bin/echo hello`.
    Submit {
        #[command(flatten)]
        placement: Placement,
        /// Attempts in all.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Job labels, KEY=VALUE.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// A retried submit with the same key returns the first job.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Wait for the job to finish and exit with its status.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        exec: Exec,
    },
    /// Show one job with its attempts.
    Get { job_id: String },
    /// List jobs, newest first.
    List {
        #[arg(long, value_enum)]
        status: Option<JobStatusArg>,
        #[arg(long, default_value = "")]
        node: String,
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print a job's output.
    Logs {
        job_id: String,
        /// Keep streaming until the job ends.
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Cancel a job; its process tree is killed.
    Cancel { job_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum JobStatusArg {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

#[derive(Subcommand)]
enum WorkloadsCmd {
    /// Create a workload: `tetherctl workloads create web --replicas 3 -- /usr/bin/server`.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        #[arg(long, default_value_t = 1)]
        max_parallel: u32,
        #[arg(long, value_enum, default_value_t = RestartArg::Always)]
        restart: RestartArg,
        #[command(flatten)]
        placement: Placement,
        #[command(flatten)]
        exec: Exec,
    },
    Get {
        workload_id: String,
    },
    List,
    Scale {
        workload_id: String,
        replicas: u32,
    },
    Delete {
        workload_id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RestartArg {
    Always,
    OnFailure,
    Never,
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Mint a token for this project.
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        token_id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Viewer,
    Support,
    Operator,
    Admin,
}

#[derive(Subcommand)]
enum JoinTokensCmd {
    Create {
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// 0 means unlimited.
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// Labels forced on nodes that join with it, KEY=VALUE.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List {
        /// Include revoked and expired ones.
        #[arg(long)]
        all: bool,
    },
    Revoke {
        join_token_id: String,
    },
}

#[derive(Subcommand)]
enum PlacementCmd {
    /// Rank nodes for a job shape without placing anything.
    Suggest {
        #[command(flatten)]
        placement: Placement,
        #[arg(long, value_enum, default_value_t = ObjectiveArg::Balanced)]
        objective: ObjectiveArg,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Balanced,
    Durability,
    Latency,
    Cost,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn duration_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

type Svc = InterceptedService<Channel, Bearer>;

struct Clients {
    channel: Channel,
    bearer: Bearer,
}

impl Clients {
    fn nodes(&self) -> NodeServiceClient<Svc> {
        NodeServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn jobs(&self) -> JobServiceClient<Svc> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn workloads(&self) -> WorkloadServiceClient<Svc> {
        WorkloadServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn tenancy(&self) -> TenancyServiceClient<Svc> {
        TenancyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn placement(&self) -> PlacementServiceClient<Svc> {
        PlacementServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

/// Exit codes: 0 ok, 1 API or connection error, 2 usage (clap), 3 a job that
/// did not succeed under `--wait`.
#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {}: {}", code_name(s.code()), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            1
        }
    };
    std::process::exit(code);
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}").chars().fold(String::new(), |mut s, ch| {
        if ch.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(ch.to_ascii_lowercase());
        s
    })
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let bearer = Bearer::new(token.as_deref())
        .map_err(|_| anyhow::anyhow!("the token contains characters that cannot be sent"))?;
    let channel = Channel::from_shared(cli.addr.clone())
        .map_err(|e| anyhow::anyhow!("invalid --addr {:?}: {e}", cli.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", cli.addr))?;
    let c = Clients { channel, bearer };
    let out = Out::new(cli.output);
    match cli.cmd {
        Cmd::Nodes(cmd) => nodes(&c, &out, cmd).await,
        Cmd::Jobs(cmd) => jobs(&c, &out, cmd).await,
        Cmd::Workloads(cmd) => workloads(&c, &out, cmd).await,
        Cmd::Tokens(cmd) => tokens(&c, &out, cmd).await,
        Cmd::JoinTokens(cmd) => join_tokens(&c, &out, cmd).await,
        Cmd::Placement(PlacementCmd::Suggest { placement, objective, limit }) => {
            let objective = match objective {
                ObjectiveArg::Balanced => pb::Objective::Balanced,
                ObjectiveArg::Durability => pb::Objective::Durability,
                ObjectiveArg::Latency => pb::Objective::Latency,
                ObjectiveArg::Cost => pb::Objective::Cost,
            };
            let r = c
                .placement()
                .suggest_placement(pb::SuggestPlacementRequest {
                    resources: Some(placement.resources()),
                    constraints: Some(placement.constraints()),
                    objective: objective as i32,
                    limit,
                })
                .await?
                .into_inner();
            out.suggestions(&r);
            Ok(0)
        }
        Cmd::Whoami => {
            let r = c.tenancy().who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            out.whoami(&r);
            Ok(0)
        }
    }
}

async fn set_state(
    c: &Clients,
    out: &Out,
    node_id: String,
    state: pb::DesiredNodeState,
    reason: String,
    deadline: Option<Duration>,
) -> anyhow::Result<i32> {
    let r = c
        .nodes()
        .set_desired_state(pb::SetDesiredStateRequest {
            node_id,
            state: state as i32,
            reason,
            drain_deadline: deadline.map(duration_pb),
        })
        .await?
        .into_inner();
    out.node(r.node.as_ref().expect("a node"));
    Ok(0)
}

async fn nodes(c: &Clients, out: &Out, cmd: NodesCmd) -> anyhow::Result<i32> {
    use pb::DesiredNodeState as D;
    match cmd {
        NodesCmd::List { status, selector, pool } => {
            let status = status.map(|s| match s {
                NodeStatusArg::Pending => pb::NodeStatus::Pending,
                NodeStatusArg::Ready => pb::NodeStatus::Ready,
                NodeStatusArg::Unreachable => pb::NodeStatus::Unreachable,
                NodeStatusArg::Down => pb::NodeStatus::Down,
                NodeStatusArg::Left => pb::NodeStatus::Left,
            });
            let mut all = pb::ListNodesResponse::default();
            let mut token = String::new();
            loop {
                let page = c
                    .nodes()
                    .list_nodes(pb::ListNodesRequest {
                        status: status.map(|s| s as i32).unwrap_or(0),
                        label_selector: selector.clone().unwrap_or_default(),
                        pool: pool.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.nodes.extend(page.nodes);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            out.nodes(&all);
        }
        NodesCmd::Get { node_id } => {
            let r = c.nodes().get_node(pb::GetNodeRequest { node_id }).await?.into_inner();
            out.node(r.node.as_ref().expect("a node"));
        }
        NodesCmd::Watch { initial } => {
            let mut s = c
                .nodes()
                .watch_nodes(pb::WatchNodesRequest { send_initial: initial, since_sequence: 0 })
                .await?
                .into_inner();
            while let Some(ev) = s.message().await? {
                out.node_event(&ev);
            }
        }
        NodesCmd::Pause { node_id, reason } => return set_state(c, out, node_id, D::Paused, reason, None).await,
        NodesCmd::Resume { node_id } => return set_state(c, out, node_id, D::Active, String::new(), None).await,
        NodesCmd::Drain { node_id, reason, deadline } => {
            return set_state(c, out, node_id, D::Draining, reason, deadline).await;
        }
        NodesCmd::Stop { node_id, reason } => return set_state(c, out, node_id, D::Stopped, reason, None).await,
        NodesCmd::Quarantine { node_id, reason } => {
            return set_state(c, out, node_id, D::Quarantined, reason, None).await;
        }
        NodesCmd::Unquarantine { node_id } => return set_state(c, out, node_id, D::Active, String::new(), None).await,
    }
    Ok(0)
}

async fn jobs(c: &Clients, out: &Out, cmd: JobsCmd) -> anyhow::Result<i32> {
    match cmd {
        JobsCmd::Submit { placement, attempts, priority, timeout, labels, idempotency_key, wait, exec } => {
            let spec = pb::JobSpec {
                driver: "exec".into(),
                exec: Some(exec.spec(timeout)),
                resources: Some(placement.resources()),
                constraints: Some(placement.constraints()),
                max_attempts: attempts,
                priority,
            };
            let labels: HashMap<_, _> = labels.into_iter().collect();
            let job = c
                .jobs()
                .submit_job(pb::SubmitJobRequest { spec: Some(spec), labels, idempotency_key })
                .await?
                .into_inner()
                .job
                .expect("a job");
            if !wait {
                out.job(&job);
                return Ok(0);
            }
            let mut s = c.jobs().watch_job(pb::WatchJobRequest { job_id: job.job_id.clone() }).await?.into_inner();
            let mut last = job;
            while let Some(ev) = s.message().await? {
                if let Some(j) = ev.job {
                    last = j;
                }
            }
            let full = c.jobs().get_job(pb::GetJobRequest { job_id: last.job_id.clone() }).await?.into_inner().job;
            out.job(full.as_ref().unwrap_or(&last));
            return Ok(if last.status == pb::JobStatus::Succeeded as i32 { 0 } else { 3 });
        }
        JobsCmd::Get { job_id } => {
            let r = c.jobs().get_job(pb::GetJobRequest { job_id }).await?.into_inner();
            out.job(r.job.as_ref().expect("a job"));
        }
        JobsCmd::List { status, node, selector, limit } => {
            let status = status.map(|s| match s {
                JobStatusArg::Pending => pb::JobStatus::Pending,
                JobStatusArg::Scheduled => pb::JobStatus::Scheduled,
                JobStatusArg::Running => pb::JobStatus::Running,
                JobStatusArg::Succeeded => pb::JobStatus::Succeeded,
                JobStatusArg::Failed => pb::JobStatus::Failed,
                JobStatusArg::Cancelled => pb::JobStatus::Cancelled,
                JobStatusArg::Lost => pb::JobStatus::Lost,
            });
            let r = c
                .jobs()
                .list_jobs(pb::ListJobsRequest {
                    status: status.map(|s| s as i32).unwrap_or(0),
                    node_id: node,
                    label_selector: selector,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            out.jobs(&r);
        }
        JobsCmd::Logs { job_id, follow, offset } => {
            let mut s =
                c.jobs().stream_job_logs(pb::StreamJobLogsRequest { job_id, offset, follow }).await?.into_inner();
            while let Some(chunk) = s.message().await? {
                out.log_chunk(&chunk);
            }
        }
        JobsCmd::Cancel { job_id } => {
            let r = c.jobs().cancel_job(pb::CancelJobRequest { job_id }).await?.into_inner();
            out.job(r.job.as_ref().expect("a job"));
        }
    }
    Ok(0)
}

async fn workloads(c: &Clients, out: &Out, cmd: WorkloadsCmd) -> anyhow::Result<i32> {
    match cmd {
        WorkloadsCmd::Create { name, replicas, max_parallel, restart, placement, exec } => {
            let spec = pb::WorkloadSpec {
                driver: "exec".into(),
                exec: Some(exec.spec(None)),
                resources: Some(placement.resources()),
                constraints: Some(placement.constraints()),
                restart_policy: match restart {
                    RestartArg::Always => pb::RestartPolicy::Always,
                    RestartArg::OnFailure => pb::RestartPolicy::OnFailure,
                    RestartArg::Never => pb::RestartPolicy::Never,
                } as i32,
                max_parallel,
            };
            let r = c
                .workloads()
                .create_workload(pb::CreateWorkloadRequest { name, spec: Some(spec), replicas })
                .await?
                .into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::Get { workload_id } => {
            let r = c.workloads().get_workload(pb::GetWorkloadRequest { workload_id }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::List => {
            let r = c.workloads().list_workloads(pb::ListWorkloadsRequest {}).await?.into_inner();
            out.workloads(&r);
        }
        WorkloadsCmd::Scale { workload_id, replicas } => {
            let r =
                c.workloads().scale_workload(pb::ScaleWorkloadRequest { workload_id, replicas }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
        WorkloadsCmd::Delete { workload_id } => {
            let r = c.workloads().delete_workload(pb::DeleteWorkloadRequest { workload_id }).await?.into_inner();
            out.workload(r.workload.as_ref().expect("a workload"));
        }
    }
    Ok(0)
}

async fn tokens(c: &Clients, out: &Out, cmd: TokensCmd) -> anyhow::Result<i32> {
    match cmd {
        TokensCmd::Create { role, ttl, description } => {
            let role = match role {
                RoleArg::Viewer => pb::Role::Viewer,
                RoleArg::Support => pb::Role::Support,
                RoleArg::Operator => pb::Role::Operator,
                RoleArg::Admin => pb::Role::Admin,
            };
            let r = c
                .tenancy()
                .create_token(pb::CreateTokenRequest { role: role as i32, ttl: ttl.map(duration_pb), description })
                .await?
                .into_inner();
            out.created_token(&r);
        }
        TokensCmd::List => {
            let r = c.tenancy().list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            out.tokens(&r);
        }
        TokensCmd::Revoke { token_id } => {
            let r = c.tenancy().revoke_token(pb::RevokeTokenRequest { token_id }).await?.into_inner();
            out.message(&r, &format!("revoked {}", r.token.as_ref().map(|t| t.token_id.as_str()).unwrap_or("")));
        }
    }
    Ok(0)
}

async fn join_tokens(c: &Clients, out: &Out, cmd: JoinTokensCmd) -> anyhow::Result<i32> {
    match cmd {
        JoinTokensCmd::Create { ttl, max_uses, labels, description } => {
            let r = c
                .tenancy()
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl: ttl.map(duration_pb),
                    max_uses,
                    labels: labels.into_iter().collect(),
                    description,
                })
                .await?
                .into_inner();
            out.created_join_token(&r);
        }
        JoinTokensCmd::List { all } => {
            let r =
                c.tenancy().list_join_tokens(pb::ListJoinTokensRequest { include_inactive: all }).await?.into_inner();
            out.join_tokens(&r);
        }
        JoinTokensCmd::Revoke { join_token_id } => {
            let r = c.tenancy().revoke_join_token(pb::RevokeJoinTokenRequest { join_token_id }).await?.into_inner();
            out.message(
                &r,
                &format!("revoked {}", r.join_token.as_ref().map(|t| t.join_token_id.as_str()).unwrap_or("")),
            );
        }
    }
    Ok(0)
}
