//! `tetherctl`: the operator CLI. Talks gRPC to the control plane; prints
//! tables for people and proto3 JSON (`-o json`) for scripts.

mod access_keys;
mod events;
mod jobs;
mod nodes;
mod output;
mod placement;
mod pools;
mod secrets;
mod settings;
mod spec;
mod tenants;
mod tokens;
mod usage;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tether_proto::pb::job_service_client::JobServiceClient;
use tether_proto::pb::node_service_client::NodeServiceClient;
use tether_proto::pb::organization_service_client::OrganizationServiceClient;
use tether_proto::pb::placement_service_client::PlacementServiceClient;
use tether_proto::pb::project_service_client::ProjectServiceClient;
use tether_proto::pb::tenancy_service_client::TenancyServiceClient;
use tether_proto::pb::workload_service_client::WorkloadServiceClient;
use tether_proto::{Bearer, pb};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use jobs::JobsCmd;
use nodes::NodesCmd;
use output::{Format, Out};
use placement::PlacementCmd;
use tenants::{OrgsCmd, ProjectsCmd};
use tokens::{JoinTokensCmd, TokensCmd};
use workloads::WorkloadsCmd;

/// Operate a Tether control plane.
#[derive(Parser)]
#[command(name = "tetherctl", version, about, propagate_version = true)]
struct Cli {
    /// Control-plane gRPC address.
    #[arg(long, global = true, env = "TETHER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// CA certificate (PEM) to trust for an `https://` --addr, such as the
    /// control plane's tether-data/ca.pem; without it, the web PKI's roots.
    #[arg(long, global = true, env = "TETHER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Bearer token (a macaroon).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token (e.g. tether-data/admin.token).
    #[arg(long, global = true, env = "TETHER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The project an organisation or platform token acts on (a project's
    /// own token needs none).
    #[arg(long, global = true, env = "TETHER_PROJECT")]
    project: Option<String>,
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
    /// Access keys for SigV4-signed REST requests.
    #[command(subcommand)]
    AccessKeys(access_keys::AccessKeysCmd),
    /// Sealed secrets (sealed here, to the nodes' keys).
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// An organisation's pools: desired counts, providers, autoscaling.
    #[command(subcommand)]
    Pools(pools::PoolsCmd),
    /// An organisation's runtime settings.
    #[command(subcommand)]
    Settings(settings::SettingsCmd),
    /// The project's metered usage; ingest usage measured elsewhere.
    #[command(subcommand)]
    Usage(usage::UsageCmd),
    /// The event log: list and watch.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Agent join tokens.
    #[command(name = "join-tokens", subcommand)]
    JoinTokens(JoinTokensCmd),
    /// Scheduler dry runs.
    #[command(subcommand)]
    Placement(PlacementCmd),
    /// Organisations, their pool grants and join tokens.
    #[command(subcommand)]
    Orgs(OrgsCmd),
    /// Projects and their quotas.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Show the caller's credential.
    Whoami,
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
    fn orgs(&self) -> OrganizationServiceClient<Svc> {
        OrganizationServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn projects(&self) -> ProjectServiceClient<Svc> {
        ProjectServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    fn settings(&self) -> tether_proto::pb::settings_service_client::SettingsServiceClient<Svc> {
        tether_proto::pb::settings_service_client::SettingsServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn pools(&self) -> tether_proto::pb::pool_service_client::PoolServiceClient<Svc> {
        tether_proto::pb::pool_service_client::PoolServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn insights(&self) -> tether_proto::pb::insights_service_client::InsightsServiceClient<Svc> {
        tether_proto::pb::insights_service_client::InsightsServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn usage(&self) -> tether_proto::pb::usage_service_client::UsageServiceClient<Svc> {
        tether_proto::pb::usage_service_client::UsageServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn summary(&self) -> tether_proto::pb::summary_service_client::SummaryServiceClient<Svc> {
        tether_proto::pb::summary_service_client::SummaryServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn events(&self) -> tether_proto::pb::event_service_client::EventServiceClient<Svc> {
        tether_proto::pb::event_service_client::EventServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn secrets(&self) -> tether_proto::pb::secret_service_client::SecretServiceClient<Svc> {
        tether_proto::pb::secret_service_client::SecretServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }
    fn access_keys(&self) -> tether_proto::pb::access_key_service_client::AccessKeyServiceClient<Svc> {
        tether_proto::pb::access_key_service_client::AccessKeyServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
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
    if let Cmd::Tokens(TokensCmd::Attenuate { narrow }) = &cli.cmd {
        let token = token.ok_or_else(|| anyhow::anyhow!("pass the token to narrow with --token or --token-file"))?;
        println!("{}", tokens::attenuate(&token, narrow)?);
        return Ok(0);
    }
    let bearer = Bearer::new(token.as_deref())
        .map_err(|_| anyhow::anyhow!("the token contains characters that cannot be sent"))?
        .with_project(cli.project.as_deref())
        .map_err(|_| anyhow::anyhow!("--project contains characters that cannot be sent"))?;
    let mut endpoint = Channel::from_shared(cli.addr.clone())
        .map_err(|e| anyhow::anyhow!("invalid --addr {:?}: {e}", cli.addr))?
        .connect_timeout(Duration::from_secs(5));
    if cli.addr.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match &cli.ca_file {
            Some(p) => tls.ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(p).map_err(|e| anyhow::anyhow!("reading --ca-file {}: {e}", p.display()))?,
            )),
            None => tls.with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("TLS for {}: {e}", cli.addr))?;
    }
    let channel = endpoint.connect().await.map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", cli.addr))?;
    let c = Clients { channel, bearer };
    let out = Out::new(cli.output);
    match cli.cmd {
        Cmd::Nodes(cmd) => nodes::run(&c, &out, cmd).await,
        Cmd::Jobs(cmd) => jobs::run(&c, &out, cmd).await,
        Cmd::Workloads(cmd) => workloads::run(&c, &out, cmd).await,
        Cmd::Tokens(cmd) => tokens::tokens(&c, &out, cmd).await,
        Cmd::AccessKeys(cmd) => access_keys::run(&c, &out, cmd).await,
        Cmd::Secrets(cmd) => secrets::run(&c, &out, cmd).await,
        Cmd::Events(cmd) => events::run(&c, &out, cmd).await,
        Cmd::Settings(cmd) => settings::run(&c, &out, cmd).await,
        Cmd::Pools(cmd) => pools::run(&c, &out, cmd).await,
        Cmd::Usage(cmd) => usage::run(&c, &out, cmd).await,
        Cmd::JoinTokens(cmd) => tokens::join_tokens(&c, &out, cmd).await,
        Cmd::Placement(cmd) => placement::run(&c, &out, cmd).await,
        Cmd::Orgs(cmd) => tenants::orgs(&c, &out, cmd).await,
        Cmd::Projects(cmd) => tenants::projects(&c, &out, cmd).await,
        Cmd::Whoami => {
            let r = c.tenancy().who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            out.whoami(&r);
            Ok(0)
        }
    }
}
