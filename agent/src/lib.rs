//! The Tether node agent: enrols once, keeps its identity in its state
//! directory, and holds heartbeat and job streams to the control plane,
//! reconnecting forever with capped, fully jittered exponential backoff.

mod backoff;
mod fence;
mod host;
mod journal;
pub mod report;
mod runner;
mod secrets;
mod session;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use session::AgentError;

/// The Tether node agent.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-agent", version, about)]
pub struct Config {
    /// Control-plane gRPC URL(s), comma separated; tried in turn on failure.
    #[arg(long = "control-plane", env = "TETHER_CONTROL_PLANE", value_delimiter = ',', required = true)]
    pub control_planes: Vec<String>,

    /// CA certificate (PEM) to trust for `https://` control-plane URLs, such
    /// as the control plane's `<data-dir>/ca.pem`; without it, the public web
    /// PKI's roots.
    #[arg(long, env = "TETHER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Join token for the first enrolment; not needed once enrolled.
    #[arg(long, env = "TETHER_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// File holding the join token (instead of --join-token).
    #[arg(long, env = "TETHER_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,

    /// Where the node identity is kept (mode 0700).
    #[arg(long, env = "TETHER_STATE_DIR", default_value = "./tether-agent-state")]
    pub state_dir: PathBuf,

    /// Labels asked for at enrolment, `k=v,k2=v2`; the join token's labels win.
    #[arg(long, env = "TETHER_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Hostname to report instead of the kernel's.
    #[arg(long, env = "TETHER_HOSTNAME")]
    pub hostname: Option<String>,

    /// First reconnect delay ceiling; it doubles per failure up to --backoff-max.
    #[arg(long, env = "TETHER_BACKOFF_BASE", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,

    /// Largest reconnect delay.
    #[arg(long, env = "TETHER_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} must be key=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Runs the agent until `shutdown` (then signs off) or a fatal error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    session::Agent::start(config, shutdown).await?.run().await
}
