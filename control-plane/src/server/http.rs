//! HTTP endpoints: /healthz, /readyz, /metrics, /openapi.json, and the REST bridge.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Installs the process-wide Prometheus recorder.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("tether_agents_connected", "Agents with an open heartbeat session on this replica");
    describe_counter!("tether_heartbeats_total", "Heartbeats received");
    describe_counter!("tether_grpc_requests_total", "gRPC requests by method and status code name");
    describe_histogram!("tether_grpc_request_duration_seconds", "Time to the response headers by method");
    describe_counter!("tether_enrollments_total", "Nodes enrolled");
    describe_counter!("tether_admission_rejected_total", "Session set-ups refused by admission throttling");
    describe_counter!("tether_rate_limited_total", "Operator calls refused by their principal's rate limit");
    describe_counter!("tether_service_saturated_total", "Operator calls refused at a service's concurrency cap");
    describe_gauge!("tether_database_up", "1 while the database answers the health probe");
    describe_gauge!("tether_database_writable", "1 while database writes succeed");
    describe_counter!("tether_jobs_submitted_total", "Jobs accepted by SubmitJob");
    describe_counter!("tether_allocations_placed_total", "Allocations placed by the scheduler and reconciler");
    describe_counter!("tether_allocations_finished_total", "Allocations that ended, by status");
    describe_counter!("tether_allocations_lost_total", "Allocations lost with their node");
    describe_counter!("tether_lease_flush_rows_total", "Node leases written by the lease flush");
    describe_histogram!("tether_lease_flush_seconds", "Time to write one lease flush");
    describe_histogram!("tether_work_pass_seconds", "Time of one work pass (scheduler and reconcilers)");
    describe_histogram!("tether_group_commit_batch_size", "Items written in one group-commit transaction");
    describe_counter!(
        "tether_background_task_activations_total",
        "Background task activations by task and outcome (ok, partial, failed)"
    );
    describe_counter!(
        "tether_background_task_items_skipped_total",
        "Items a background task skipped because they do not decode, by task"
    );
    describe_histogram!("tether_background_task_seconds", "Time of one background task activation, by task");
    describe_counter!("tether_events_pruned_total", "Events removed by retention");
    // Documented series exist from the start, at zero.
    metrics::gauge!("tether_agents_connected").set(0.0);
    for c in [
        "tether_heartbeats_total",
        "tether_enrollments_total",
        "tether_admission_rejected_total",
        "tether_rate_limited_total",
        "tether_service_saturated_total",
        "tether_jobs_submitted_total",
        "tether_allocations_placed_total",
        "tether_allocations_lost_total",
        "tether_lease_flush_rows_total",
        "tether_events_pruned_total",
    ] {
        metrics::counter!(c).increment(0);
    }
    Ok(handle)
}

#[derive(Clone)]
struct HttpState {
    app: Arc<App>,
    prometheus: PrometheusHandle,
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App>,
    prometheus: PrometheusHandle,
    rest: Router,
    openapi: Arc<serde_json::Value>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits =
        Limits { header_timeout: app.config.http_header_timeout, max_connections: app.config.http_max_connections };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .with_state(HttpState { app, prometheus })
        .merge(rest)
        .layer(axum::middleware::map_response(json_errors));
    serve_with_limits(listener, tls, router, limits, shutdown).await
}

/// What the HTTP port allows a client, as a reverse proxy would.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Headers must arrive within this long; it also closes idle keep-alive
    /// connections (hyper starts the clock when it waits for a request).
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// axum's `serve`, with the limits it does not expose: a header-read
/// timeout, a connection cap (further connections wait in the backlog) and
/// a bounded drain at shutdown.
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, _) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = &e as &dyn std::error::Error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        use tower::ServiceExt;
        let service = TowerToHyperService::new(
            router.clone().map_request(|req: http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new)),
        );
        match &tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task; the graceful
                // drain watches the connection once it is up.
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    if let Some(tls) = crate::server::tls::accept_http(&acceptor, stream).await {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
                        let _ = watcher.watch(conn).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!("HTTP connections still open after the drain; closing them");
    }
    Ok(())
}

/// Every error answer is `{code, message}` JSON, also those made outside
/// the REST bridge (axum's 405 with its `Allow`, a plain-text 503 from
/// /readyz): the text, if any, becomes the message.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = resp.status();
    let is_json = resp.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = if text.is_empty() { reason.to_lowercase() } else { text };
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => "unavailable".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase().replace([' ', '-'], "_"),
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    let body = serde_json::json!({"code": code, "message": message, "details": []}).to_string();
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

/// Ready while serving and while the database answers and takes writes, as
/// the background probe last found it: answers at once, never waits on the
/// database.
async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    if !s.app.ready.load(Ordering::SeqCst) || s.app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match s.app.store.health() {
        tether_store::DbHealth::Ok => (StatusCode::OK, "ready\n".into()),
        h => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", h.describe())),
    }
}

async fn metrics_text(State(s): State<HttpState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut text = s.prometheus.render();
    text.push_str(&s.app.node_reports.render(crate::fleet::reports::MAX_SERIES));
    text.push_str(&s.app.scores.render(crate::scoring::MAX_SCORE_SERIES));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
