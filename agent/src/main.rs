use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = <Cli as clap::Parser>::parse();
    if let Some(Cmd::Report(args)) = cli.cmd {
        std::process::exit(report(args).await);
    }
    let config = cli.config;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("tether-agent: cannot install signal handlers");
            std::process::exit(1);
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM, signing off"),
            _ = int.recv() => tracing::info!("received SIGINT, signing off"),
        }
        on_signal.cancel();
    });
    if let Err(e) = tether_agent::run(config, shutdown).await {
        tracing::error!(error = format!("{e:#}"), "agent stopped");
        std::process::exit(e.exit_code());
    }
}

/// The agent, or one of its subcommands.
#[derive(clap::Parser)]
#[command(
    name = "tether-agent",
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: tether_agent::Config,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Tell the running agent about this node (health, gauges, counters,
    /// alerts, backups, SLO figures); it forwards the report with its next
    /// beat. Prints the report as it now stands.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The running agent's state directory (its socket is `agent.sock` there).
    #[arg(long, env = "TETHER_STATE_DIR", default_value = "./tether-agent-state")]
    state_dir: std::path::PathBuf,
    /// ok, degraded or failing.
    #[arg(long)]
    health: Option<String>,
    /// Why, with --health.
    #[arg(long, requires = "health")]
    message: Option<String>,
    /// NAME=VALUE, a value that goes up and down; repeatable.
    #[arg(long = "gauge", value_parser = metric)]
    gauges: Vec<(String, f64)>,
    /// NAME=VALUE, a total that only grows; repeatable.
    #[arg(long = "counter", value_parser = metric)]
    counters: Vec<(String, f64)>,
    /// Drop a gauge or counter; repeatable.
    #[arg(long)]
    clear: Vec<String>,
    /// LEVEL=MESSAGE (warning, critical); repeatable; replaces the alerts.
    #[arg(long = "alert", value_parser = pair)]
    alerts: Vec<(String, String)>,
    /// QUEUE=MESSAGE; repeatable; replaces the job failures.
    #[arg(long = "job-failure", value_parser = pair)]
    job_failures: Vec<(String, String)>,
    #[arg(long)]
    backup_status: Option<String>,
    /// RFC 3339, such as 2026-02-11T02:00:00Z.
    #[arg(long)]
    last_backup_at: Option<String>,
    #[arg(long)]
    slo_p95_ms: Option<f64>,
    #[arg(long)]
    slo_error_rate: Option<f64>,
    #[arg(long)]
    slo_webhook_retry_rate: Option<f64>,
    /// Print the report without changing it.
    #[arg(long, conflicts_with = "reset")]
    show: bool,
    /// Empty the report.
    #[arg(long)]
    reset: bool,
}

fn metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be NAME=VALUE"))?;
    let v: f64 = v.trim().parse().map_err(|_| format!("{v:?} is not a number"))?;
    Ok((k.trim().to_owned(), v))
}

fn pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} must be KEY=MESSAGE"))?;
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// Sends the update to the agent's socket; the process's exit code.
async fn report(a: ReportArgs) -> i32 {
    use serde_json::{Map, Value, json};
    let (method, body) = if a.show {
        ("GET", Value::Null)
    } else if a.reset {
        ("DELETE", Value::Null)
    } else {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        if let Some(h) = a.health {
            put("health", json!(h));
            put("health_message", json!(a.message.unwrap_or_default()));
        }
        if !a.gauges.is_empty() {
            put("gauges", Value::Object(a.gauges.into_iter().map(|(k, v)| (k, json!(v))).collect()));
        }
        if !a.counters.is_empty() {
            put("counters", Value::Object(a.counters.into_iter().map(|(k, v)| (k, json!(v))).collect()));
        }
        if !a.clear.is_empty() {
            put("clear", json!(a.clear));
        }
        if !a.alerts.is_empty() {
            put("alerts", a.alerts.iter().map(|(l, msg)| json!({"level": l, "message": msg})).collect());
        }
        if !a.job_failures.is_empty() {
            put("job_failures", a.job_failures.iter().map(|(q, msg)| json!({"queue": q, "message": msg})).collect());
        }
        for (k, v) in [("backup_status", a.backup_status), ("last_backup_at", a.last_backup_at)] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        for (k, v) in [
            ("slo_p95_ms", a.slo_p95_ms),
            ("slo_error_rate", a.slo_error_rate),
            ("slo_webhook_retry_rate", a.slo_webhook_retry_rate),
        ] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        ("POST", Value::Object(m))
    };
    let body = if body.is_null() { String::new() } else { body.to_string() };
    match tether_agent::report::send(&a.state_dir, method, &body).await {
        Ok(now) => {
            println!("{now}");
            0
        }
        Err(e) => {
            eprintln!("tether-agent report: {e}");
            1
        }
    }
}
