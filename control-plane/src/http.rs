//! HTTP endpoints: /healthz, /readyz, /metrics, /openapi.json, and the REST bridge.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::App;

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
    // Documented series exist from the start, at zero.
    metrics::gauge!("tether_agents_connected").set(0.0);
    for c in [
        "tether_heartbeats_total",
        "tether_enrollments_total",
        "tether_admission_rejected_total",
        "tether_jobs_submitted_total",
        "tether_allocations_placed_total",
        "tether_allocations_lost_total",
        "tether_lease_flush_rows_total",
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
    app: Arc<App>,
    prometheus: PrometheusHandle,
    rest: Router,
    openapi: Arc<serde_json::Value>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .with_state(HttpState { app, prometheus })
        .merge(rest);
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
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
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.prometheus.render())
}
