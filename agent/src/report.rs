//! The node's report: what applications on the node tell the agent about
//! themselves (health, gauges and counters, alerts, job failures, backups,
//! SLO figures), forwarded to the control plane with the next beat.
//!
//! Applications reach the agent through a small HTTP API on a unix socket in
//! the state directory (`<state-dir>/agent.sock`, reachable by the agent's
//! user: the directory is 0700), or through `tether-agent report`, which
//! calls it:
//!
//! - `GET /v1/report`: the report as it stands.
//! - `POST /v1/report`: a JSON report (`tether.v1.NodeReport`'s fields in
//!   snake_case) merged in: fields it sets replace, gauges and counters merge
//!   by name, `"clear": [names]` drops gauges or counters. 400 with the
//!   reason if the result breaks a bound, and nothing changes.
//! - `DELETE /v1/report`: empties it.
//!
//! The report lives in memory: after an agent restart applications report
//! again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tether_types::NodeReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The socket's name in the state directory.
pub const SOCKET: &str = "agent.sock";
/// Largest request body the socket takes.
const MAX_BODY: usize = 256 * 1024;

/// The current report and a version that grows with every change.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<(NodeReport, u64)>>);

impl Reports {
    /// The report if it changed after version `seen`, with its version.
    pub fn changed_since(&self, seen: u64) -> Option<(NodeReport, u64)> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (g.1 != seen).then(|| (g.0.clone(), g.1))
    }

    fn current(&self) -> NodeReport {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Merges an update (a JSON object, with an optional `clear` list).
    fn apply(&self, body: &[u8]) -> Result<NodeReport, String> {
        let mut v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the report is not valid JSON: {e}"))?;
        let obj = v.as_object_mut().ok_or("the report must be a JSON object")?;
        let clear: Vec<String> = match obj.remove("clear") {
            None => Vec::new(),
            Some(c) => serde_json::from_value(c).map_err(|_| "clear must be a list of metric names".to_string())?,
        };
        let update = NodeReport::parse(&serde_json::to_vec(&v).map_err(|e| e.to_string())?).map_err(|e| e.message)?;
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = g.0.clone();
        next.merge(update, &clear);
        next.check().map_err(|e| e.message)?;
        if next != g.0 {
            g.0 = next;
            g.1 += 1;
        }
        Ok(g.0.clone())
    }

    fn reset(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = NodeReport::default();
        g.1 += 1;
    }
}

fn json(status: StatusCode, v: impl serde::Serialize) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Serves the report API on `<state_dir>/agent.sock` until `shutdown`.
pub async fn serve(state_dir: &Path, reports: Reports, shutdown: CancellationToken) -> std::io::Result<()> {
    let path = state_dir.join(SOCKET);
    // A socket left by an earlier process (a SIGKILL leaves it).
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    let ours = {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::metadata(&path)?.ino()
    };
    let app = Router::new()
        .route(
            "/v1/report",
            get(|State(r): State<Reports>| async move { json(StatusCode::OK, r.current()) })
                .post(|State(r): State<Reports>, body: axum::body::Bytes| async move {
                    match r.apply(&body) {
                        Ok(now) => json(StatusCode::OK, now),
                        Err(e) => json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
                    }
                })
                .delete(|State(r): State<Reports>| async move {
                    r.reset();
                    json(StatusCode::OK, NodeReport::default())
                }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(reports);
    tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
            tracing::warn!(error = %e, "the report socket stopped");
        }
        // Only our own: a newer process may have bound the path since.
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&path).is_ok_and(|m| m.ino() == ours) {
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok(())
}

/// `tether-agent report`: sends one update to the running agent's socket
/// and answers the report as it now stands.
pub async fn send(state_dir: &Path, method: &str, body: &str) -> Result<String, String> {
    let path: PathBuf = state_dir.join(SOCKET);
    let mut s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        format!("cannot reach the agent at {}: {e} (is it running with this --state-dir?)", path.display())
    })?;
    let req = format!(
        "{method} /v1/report HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text.split_once("\r\n\r\n").ok_or("the agent's answer is not HTTP")?;
    let ok = head.starts_with("HTTP/1.1 200");
    // The body may come chunked; the JSON is the one line that parses.
    let json = payload.lines().find(|l| l.trim_start().starts_with('{')).map(str::trim).unwrap_or_default().to_string();
    if ok {
        Ok(json)
    } else {
        let why = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| head.lines().next().unwrap_or_default().to_string());
        Err(why)
    }
}
