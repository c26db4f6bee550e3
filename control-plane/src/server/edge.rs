//! The tower layer every gRPC request passes first: RPC counts and latency by
//! method, the RPC's name for the authenticator, the audit scope, and the
//! status-code fix for oversized messages.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use prost::Message;

use super::limits::Limits;

/// Every method path this server exposes; anything else is counted as
/// `other`, so that clients cannot blow up label cardinality.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut set = HashSet::new();
    for fds in [tether_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let Ok(fds) = prost_types::FileDescriptorSet::decode(fds) else { continue };
        for file in &fds.file {
            for svc in &file.service {
                for m in &svc.method {
                    set.insert(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
                }
            }
        }
    }
    for m in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        set.insert(m.to_owned());
    }
    set
});

#[derive(Clone)]
pub struct EdgeLayer {
    limits: Arc<Limits>,
}

impl EdgeLayer {
    pub fn new(limits: Arc<Limits>) -> Self {
        LazyLock::force(&KNOWN_METHODS);
        EdgeLayer { limits }
    }
}

/// The services whose calls are limited (see [`Limits`]).
pub fn services() -> impl Iterator<Item = String> {
    let mut names: Vec<String> =
        KNOWN_METHODS.iter().filter_map(|m| Some(m.strip_prefix('/')?.split_once('/')?.0.to_owned())).collect();
    names.sort();
    names.dedup();
    names.into_iter()
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, limits: self.limits.clone() }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S, B, RB> tower::Service<Request<B>> for Edge<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let method: Arc<str> = if KNOWN_METHODS.contains(path) { Arc::from(path) } else { Arc::from("other") };
        // What the authenticator checks confining caveats against.
        req.extensions_mut().insert(crate::auth::Rpc(method.clone()));
        let started = Instant::now();
        let timeout = self.limits.request_timeout();
        let call = match self.limits.admit(&method, &mut req) {
            Ok(permit) => Ok((permit, self.inner.call(req))),
            Err(refusal) => Err(refusal),
        };
        // The authenticator names the caller; the events the call appends
        // record it.
        Box::pin(tether_store::audited(async move {
            let mut res = match call {
                Err(refusal) => Ok(refusal.into_http()),
                // Not a limited service (the agent protocol, health, reflection).
                Ok((None, fut)) => fut.await,
                Ok((Some(permit), fut)) => {
                    let out = match tokio::time::timeout(timeout, fut).await {
                        Ok(r) => r,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                            "the call took longer than the server's limit of {timeout:?}"
                        ))
                        .into_http()),
                    };
                    drop(permit);
                    out
                }
            };
            let code = match &mut res {
                Ok(r) => {
                    fix_oversized(r);
                    // Errors before the body are sent as headers-only responses;
                    // a success carries its status in the trailers.
                    let n = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0");
                    grpc_code_name(n.parse().unwrap_or(2)).to_owned()
                }
                Err(_) => "transport_error".to_owned(),
            };
            metrics::counter!("tether_grpc_requests_total", "method" => method.to_string(), "code" => code)
                .increment(1);
            metrics::histogram!("tether_grpc_request_duration_seconds", "method" => method.to_string())
                .record(started.elapsed().as_secs_f64());
            res
        }))
    }
}

/// tonic answers an oversized request with OUT_OF_RANGE; gRPC's convention
/// (and grpc-go's, grpc-java's) is RESOURCE_EXHAUSTED.
fn fix_oversized<RB>(r: &mut Response<RB>) {
    let h = r.headers();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        r.headers_mut().insert("grpc-status", HeaderValue::from_static("8"));
    }
}

/// The canonical name of a gRPC status code, for the `code` label.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
