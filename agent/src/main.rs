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
    let config = <tether_agent::Config as clap::Parser>::parse();
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
