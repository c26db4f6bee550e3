//! The Tether control plane: wires the store, the node registry, the gRPC
//! services and the HTTP endpoints, and runs until shut down.
//!
//! `main.rs` only parses configuration and signals; everything else starts
//! from [`run`].

mod app;
mod auth;
mod background;
mod batch;
mod bootstrap;
mod clock;
mod config;
mod db;
mod dispatch;
mod effects;
mod events;
mod fleet;
mod notify;
mod ops;
mod pools;
mod scoring;
mod server;
mod services;
mod status;
mod stream;
mod tenants;
mod writers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tether_proto::agent_pb::agent_service_server::AgentServiceServer;
use tether_proto::pb::access_key_service_server::AccessKeyServiceServer;
use tether_proto::pb::admin_service_server::AdminServiceServer;
use tether_proto::pb::event_service_server::EventServiceServer;
use tether_proto::pb::insights_service_server::InsightsServiceServer;
use tether_proto::pb::job_service_server::JobServiceServer;
use tether_proto::pb::node_service_server::NodeServiceServer;
use tether_proto::pb::organization_service_server::OrganizationServiceServer;
use tether_proto::pb::placement_service_server::PlacementServiceServer;
use tether_proto::pb::pool_service_server::PoolServiceServer;
use tether_proto::pb::project_service_server::ProjectServiceServer;
use tether_proto::pb::secret_service_server::SecretServiceServer;
use tether_proto::pb::settings_service_server::SettingsServiceServer;
use tether_proto::pb::summary_service_server::SummaryServiceServer;
use tether_proto::pb::tenancy_service_server::TenancyServiceServer;
use tether_proto::pb::usage_service_server::UsageServiceServer;
use tether_proto::pb::workload_service_server::WorkloadServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use app::{App, now_ms};
pub use config::{Command, Config};

/// `tether-control-plane admin-token`: mints an admin token offline from the
/// root key in the configured database (see [`Command::AdminToken`]).
pub async fn admin_token(config: &Config, ttl: Option<Duration>, description: &str) -> anyhow::Result<String> {
    if config.database_url.is_none() {
        let db = config.data_dir.join("tether.db");
        anyhow::ensure!(
            db.exists(),
            "no database at {}: pass the --data-dir (or --database-url) the control plane runs with",
            db.display()
        );
    }
    let store = db::open(config).await?;
    let boot = bootstrap::run(&store, &config.data_dir).await?;
    let expires_at = ttl.map(|t| now_ms() + t.as_millis() as i64);
    let token = bootstrap::mint_admin(&store, &boot, expires_at, description).await?;
    store.close().await;
    Ok(token)
}

/// Every background task, with how it is run.
fn register_tasks(driver: &background::Driver, app: &Arc<App>, registry: &Arc<fleet::registry::Registry>) {
    use background::{Spec, *};
    let config = &app.config;
    driver.register(
        Spec {
            name: "database_probe",
            description: "probes the database for /readyz and the database gauges",
            period: background::PROBE_PERIOD,
            wake: None,
            leader_only: false,
        },
        Probe(app.store.clone()),
    );
    driver.register(
        Spec {
            name: "liveness",
            description: "marks nodes unreachable, then down, when their heartbeats stop",
            period: (config.heartbeat_interval / 4).max(Duration::from_millis(20)),
            wake: None,
            leader_only: false,
        },
        Liveness(registry.clone()),
    );
    driver.register(
        Spec {
            name: "lease_flush",
            description: "writes the last-seen times of the nodes whose streams this replica holds",
            period: config.lease_flush_interval,
            wake: None,
            leader_only: false,
        },
        LeaseFlush(registry.clone()),
    );
    driver.register(
        Spec {
            name: "placement",
            description: "the work pass: lost work, evictions and drains, the workload reconciler, job placement",
            period: dispatch::PASS_PERIOD,
            wake: Some(app.signals.placement()),
            leader_only: true,
        },
        Placement { app: app.clone(), state: Default::default() },
    );
    driver.register(
        Spec {
            name: "secret_reseal",
            description: "asks nodes that hold a sealed secret to seal it again for recipients without a copy",
            period: Duration::from_secs(1),
            wake: Some(app.signals.reseal()),
            leader_only: true,
        },
        Reseal::new(app.clone()),
    );
    driver.register(
        Spec {
            name: "event_tail",
            description: "reads newly committed events into the in-memory tail that event watchers are served from",
            period: Duration::from_secs(1),
            wake: Some(app.notify.wake()),
            leader_only: false,
        },
        EventTailFill(app.clone()),
    );
    driver.register(
        Spec {
            name: "event_retention",
            description: "removes events older than --event-retention or beyond --event-retention-count",
            period: app.config.event_retention_interval,
            wake: None,
            leader_only: true,
        },
        EventRetention {
            app: app.clone(),
            max_age: app.config.event_retention,
            keep: app.config.event_retention_count,
        },
    );
    driver.register(
        Spec {
            name: "stale_nodes",
            description: "deregisters nodes down for longer than their organisation's stale-node TTL \
                          (settings, else --stale-node-ttl)",
            period: background::STALE_NODES_PERIOD,
            wake: None,
            leader_only: true,
        },
        StaleNodes { app: app.clone() },
    );
    driver.register(
        Spec {
            name: "pools",
            description: "asks pools' providers for the difference between desired and present nodes, drains \
                          nodes before their removal, and tracks each request to fulfilled or failed",
            period: Duration::from_secs(1),
            wake: Some(app.signals.pools()),
            leader_only: true,
        },
        PoolsTask(app.clone()),
    );
    driver.register(
        Spec {
            name: "autoscaler",
            description: "moves autoscaled pools' desired counts by their metric, within limits, steps and cooldown",
            // A pool's own period is at least this (each pool is decided
            // at its period; this is how often the task looks).
            period: pools::autoscale::TICK,
            wake: None,
            leader_only: true,
        },
        AutoscalerTask { app: app.clone(), state: Default::default() },
    );
    driver.register(
        Spec {
            name: "scoring",
            description: "scores every node's reliability from its heartbeats, job outcomes, uptime and flaps",
            // A node's figures change with its beats: scoring more often
            // than they arrive would only spend CPU (~17 ms a round at 10k
            // nodes, docs/benchmarks.md).
            period: background::SCORING_PERIOD.max(config.heartbeat_interval),
            wake: None,
            leader_only: false,
        },
        background::ScoringTask { app: app.clone(), state: Default::default() },
    );
    driver.register(
        Spec {
            name: "quarantine",
            description: "quarantines nodes whose score falls below their organisation's threshold and releases \
                          them after probation, where the organisation enabled it",
            period: background::SCORING_PERIOD,
            wake: None,
            leader_only: true,
        },
        background::QuarantineTask { app: app.clone(), state: Default::default() },
    );
    driver.register(
        Spec {
            name: "node_snapshot_refresh",
            description: "reads every node row again, for changes made elsewhere",
            period: fleet::snapshot::NODES_MAX_AGE,
            wake: None,
            leader_only: false,
        },
        NodeSnapshotRefresh(app.clone()),
    );
    driver.register(
        Spec {
            name: "revocation_refresh",
            description: "reloads the revoked token ids the authenticator refuses, and the organisations, \
                          projects and pool grants calls are authorised against",
            period: Duration::from_secs(5),
            wake: None,
            leader_only: false,
        },
        RevocationRefresh(app.clone()),
    );
}

/// Runs the control plane until `shutdown` is cancelled, then stops gracefully:
/// new connections are refused, open streams end with UNAVAILABLE, leases are
/// flushed and the database is closed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // It holds the database, the admin token and the join token.
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let prometheus = server::http::install_metrics()?;
    let store = db::open(&config).await?;
    tracing::info!(backend = store.backend_name(), "database ready");

    let boot = bootstrap::run(&store, &config.data_dir).await?;
    let tls = server::tls::setup(&config, now_ms())?;
    let notify = notify::Notifier::new(store.events_head().await?);
    let replica = config.replica();
    let tasks = TaskTracker::new();
    let registry = Arc::new(fleet::registry::Registry::new(
        store.clone(),
        notify.clone(),
        fleet::registry::Liveness { grace: config.heartbeat_grace, down_after: config.down_after },
        replica.clone(),
        shutdown.child_token(),
        &tasks,
    ));
    registry.load().await?;

    let tenants = Arc::new(tenants::TenantCache::default());
    tenants.reload(&store).await?;
    let app = Arc::new(App {
        store: store.clone(),
        auth: {
            let mut auth = auth::Authenticator::new(boot.keys.clone(), tenants, boot.project_id.clone());
            if config.agent_auth()? == config::AgentAuth::Mtls {
                auth = auth.with_agent_certificates();
            }
            match &config.internal_token_file {
                Some(path) => {
                    let token = std::fs::read_to_string(path)
                        .with_context(|| format!("reading the internal token from {}", path.display()))?;
                    anyhow::ensure!(token.trim().len() >= 16, "the internal token must be at least 16 characters");
                    auth.with_internal_token(&token)
                }
                None => auth,
            }
        },
        registry: registry.clone(),
        events: events::EventTail::new(notify.head(), events::TAIL_CAPACITY),
        notify,
        admission: tokio::sync::Semaphore::new(config.admission_concurrency),
        config: config.clone(),
        ca: tls.as_ref().map(|t| t.ca.clone()),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        ready: AtomicBool::new(true),
        hub: fleet::hub::JobsHub::default(),
        node_reports: Default::default(),
        signals: Default::default(),
        providers: pools::provider::Providers::new(
            pools::provider::parse_commands(&config.pool_command)?,
            pools::provider::Allow::parse(&config.webhook_allow)?,
        )?,
        scores: Default::default(),
        placement_cursor: Default::default(),
        nodes: Default::default(),
        reports: writers::report_batcher(store.clone(), &tasks, shutdown.clone()),
        submits: writers::submit_batcher(store.clone(), &tasks, shutdown.clone()),
    });

    // Background tasks, under one driver (see background/).
    app.auth.set_revoked(store.tokens_revoked().await?);
    let driver = background::Driver::new(tasks.clone(), shutdown.clone(), background::Leadership);
    register_tasks(&driver, &app, &registry);
    if let Some(tls) = &tls {
        let wake = Arc::new(tokio::sync::Notify::new());
        driver.register(
            background::Spec {
                name: "tls_reload",
                description: "reads the TLS certificate files again when they change (and on SIGHUP)",
                period: server::tls::RELOAD_PERIOD,
                wake: Some(wake.clone()),
                leader_only: false,
            },
            server::tls::Reload(tls.cert.clone()),
        );
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = hup.recv() => {
                        tracing::info!("received SIGHUP: reading the TLS certificate again");
                        wake.notify_one();
                    }
                }
            }
        });
    } else {
        tracing::warn!(
            %config.grpc_addr, %config.http_addr,
            "serving plaintext gRPC and HTTP: for local trials only (see --tls)"
        );
    }
    let task_statuses = driver.status_handle();

    // gRPC.
    let grpc_listener =
        TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_listener =
        TcpListener::bind(config.http_addr).await.with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    write_addr(&config, "grpc.addr", grpc_addr)?;
    write_addr(&config, "http.addr", http_addr)?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // One set of routes serves gRPC and, in-process, the REST bridge, so both
    // pass the same edge layer, the same auth and the same limits. Every
    // service added here is also reported serving by grpc.health.v1.
    let limit = config.max_message_bytes;
    let mut routes =
        tonic::service::Routes::new(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let mut serving: Vec<&'static str> = vec![""];
    macro_rules! serve {
        ($server:ident, $api:expr) => {{
            let svc = $server::new($api).max_decoding_message_size(limit).max_encoding_message_size(limit);
            serving.push(service_name(&svc));
            routes = routes.add_service(svc);
        }};
    }
    serve!(AgentServiceServer, services::agent::AgentApi::new(app.clone()));
    serve!(NodeServiceServer, services::nodes::NodeApi::new(app.clone()));
    serve!(TenancyServiceServer, services::tenancy::TenancyApi::new(app.clone()));
    serve!(JobServiceServer, services::jobs::JobApi::new(app.clone()));
    serve!(WorkloadServiceServer, services::workloads::WorkloadApi::new(app.clone()));
    serve!(PlacementServiceServer, services::placement::PlacementApi::new(app.clone()));
    serve!(OrganizationServiceServer, services::organizations::OrganizationApi::new(app.clone()));
    serve!(ProjectServiceServer, services::projects::ProjectApi::new(app.clone()));
    serve!(AccessKeyServiceServer, services::access_keys::AccessKeyApi::new(app.clone()));
    serve!(SecretServiceServer, services::secrets::SecretApi::new(app.clone()));
    serve!(EventServiceServer, services::events::EventApi::new(app.clone()));
    serve!(SettingsServiceServer, services::settings::SettingsApi::new(app.clone()));
    serve!(PoolServiceServer, services::pools::PoolApi::new(app.clone()));
    serve!(InsightsServiceServer, services::insights::InsightsApi::new(app.clone()));
    serve!(UsageServiceServer, services::usage::UsageApi::new(app.clone()));
    serve!(SummaryServiceServer, services::summary::SummaryApi::new(app.clone()));
    serve!(AdminServiceServer, services::admin::AdminApi::new(app.clone(), task_statuses));
    for name in serving {
        health_reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    // One set of limits for both ports: a principal's bucket is the same
    // whether it calls over gRPC or REST.
    let limits = {
        let settings = server::limits::LimitSettings {
            rate: config.rate_limit,
            burst: config.rate_burst,
            service_concurrency: config.service_concurrency,
            request_timeout: config.request_timeout,
        };
        let app = app.clone();
        let identify: server::limits::Identify = Box::new(move |t| app.auth.signed_by_us(t).ok());
        Arc::new(server::limits::Limits::new(settings, identify, server::edge::services()))
    };
    let bridge = Arc::new(tether_rest::Bridge::from_descriptors(tether_proto::FILE_DESCRIPTOR_SET)?);
    let openapi = Arc::new(tether_rest::openapi(&bridge, env!("CARGO_PKG_VERSION")));
    let signed: tether_rest::SignedAuth = {
        let app = app.clone();
        Arc::new(move |call| {
            let app = app.clone();
            Box::pin(async move {
                let caller = services::access_keys::verify_signed(&app, &call).await?;
                let mut ext = http::Extensions::new();
                ext.insert(caller);
                Ok(ext)
            })
        })
    };
    let rest = tether_rest::router(
        bridge,
        tower::Layer::layer(&server::edge::EdgeLayer::new(limits.clone()), routes.clone()),
        config.http_body_timeout,
        Some(signed),
    )
    .merge(services::http_agent::router(app.clone()));

    let grpc_shutdown = shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(server::edge::EdgeLayer::new(limits.clone()))
        .add_routes(routes);
    let grpc_stop = async move { grpc_shutdown.cancelled().await };
    let grpc: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            Some(t) => Box::pin(grpc_server.serve_with_incoming_shutdown(
                server::tls::incoming(grpc_listener, t.grpc.clone(), shutdown.clone()),
                grpc_stop,
            )),
            None => {
                Box::pin(grpc_server.serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_stop))
            }
        };
    let http = server::http::serve(
        http_listener,
        tls.as_ref().map(|t| t.http.clone()),
        app.clone(),
        prometheus,
        rest,
        openapi,
        shutdown.clone(),
    );

    tracing::info!(%grpc_addr, %http_addr, replica, tls = tls.is_some(), "tether control plane is serving");
    if boot.created {
        bootstrap::announce(&boot, &config.data_dir, grpc_addr);
    }

    let (grpc_res, http_res) = tokio::join!(grpc, http);
    // Either server may have failed on its own: make sure everything stops.
    shutdown.cancel();
    app.ready.store(false, Ordering::SeqCst);
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    tasks.close();
    tasks.wait().await;
    registry.flush_leases().await;
    store.close().await;
    tracing::info!("control plane stopped");
    grpc_res.context("gRPC server")?;
    http_res.context("HTTP server")?;
    Ok(())
}

fn write_addr(config: &Config, name: &str, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let path = config.data_dir.join(name);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// A gRPC service's full name, as routing and grpc.health.v1 know it.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}
