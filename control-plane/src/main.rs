use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr; stdout carries what commands print (a token).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = tether_control_plane::Config::load()?;
    if let Some(tether_control_plane::Command::AdminToken { ttl, description }) = &config.command {
        let token = tether_control_plane::admin_token(&config, *ttl, description).await?;
        println!("{token}");
        return Ok(());
    }
    let files = raise_open_files_limit();
    tracing::info!(open_files = files, "open-file limit (each agent holds one connection)");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        }
        on_signal.cancel();
    });
    if let Err(e) = tether_control_plane::run(config, shutdown).await {
        tracing::error!(error = format!("{e:#}"), "control plane failed");
        std::process::exit(1);
    }
    Ok(())
}

/// Every agent holds a TCP connection, so lift the soft open-file limit to the
/// hard one; returns the limit in force.
#[allow(unsafe_code)]
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}
