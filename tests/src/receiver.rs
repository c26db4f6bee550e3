//! A webhook receiver the test runs on 127.0.0.1: it records every request
//! (path, bearer token, JSON body), hands each to the test in order, and
//! answers with the status the test sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::{Mutex, mpsc};

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<String>,
    pub body: serde_json::Value,
}

struct Shared {
    answer: AtomicU16,
    tx: mpsc::UnboundedSender<Received>,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    server: tokio::task::JoinHandle<()>,
}

async fn record(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: String) -> StatusCode {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let _ = s.tx.send(Received { path: uri.path().to_owned(), bearer, body });
    StatusCode::from_u16(s.answer.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { answer: AtomicU16::new(200), tx });
        let app = axum::Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, shared, rx: Mutex::new(rx), server }
    }

    /// What the next requests are answered with.
    pub fn answer(&self, status: u16) {
        self.shared.answer.store(status, Ordering::SeqCst);
    }

    /// The next request, waiting at most `timeout`.
    pub async fn next(&self, timeout: Duration) -> Received {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook request within {timeout:?}"))
            .expect("receiver open")
    }

    /// A request that arrived already, if any.
    pub async fn try_next(&self) -> Option<Received> {
        self.rx.lock().await.try_recv().ok()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
