//! The edge: bad input refused at the door with a JSON error and nothing
//! changed, and no way for an admin to lock the project out.

use std::time::Duration;

use serde_json::{Value, json};
use tether_proto::pb;
use tonic::Code;

use crate::harness::*;

both_backends!(malformed_input_is_refused_and_changes_nothing, last_admin_token_cannot_be_revoked_and_recovery_works);

mod transport {
    use super::*;

    /// The HTTP port's limits do not depend on the database: SQLite only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_clients_are_cut_off_and_others_served() {
        slow_clients().await;
    }

    /// A quiet watch is ended after the idle timeout (in memory: SQLite only).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_stream_is_ended() {
        let opts =
            Options { extra_args: ["--stream-idle-timeout", "1s"].map(String::from).to_vec(), ..Options::default() };
        let cp = ControlPlane::start_opts(Backend::Sqlite, opts).await;
        let mut nodes = cp.nodes_as(Some(&cp.admin_token)).await;
        let started = std::time::Instant::now();
        let mut watch = nodes.watch_nodes(pb::WatchNodesRequest::default()).await.unwrap().into_inner();
        let end = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("ended within 10 s");
        let err = end.expect_err("an idle watch ends with an error, not quietly");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(started.elapsed() >= Duration::from_secs(1), "not before the idle timeout");
        // The same over REST (SSE): the stream ends.
        let (status, body) = cp.http_get_as("/v1/nodes:watch", &cp.admin_token, 5000).await;
        assert_eq!(status, 200);
        assert!(body.contains("no message for"), "the SSE stream says why it ended: {body}");
    }

    /// Rate limits live in memory, not in the database: SQLite only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_one_principal_leaves_others_alone() {
        flood().await;
    }
}

/// One principal calls at ten times its limit (20 calls/s, bursts of 20)
/// over REST and gRPC: it gets 429 / RESOURCE_EXHAUSTED with a retry-after
/// and no more than its share, while another principal's calls at the same
/// time all succeed.
async fn flood() {
    let opts = Options {
        extra_args: ["--rate-limit", "20", "--rate-burst", "20"].map(String::from).to_vec(),
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(Backend::Sqlite, opts).await;
    let mut tenancy = cp.tenancy_as(Some(&cp.admin_token)).await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let req = pb::CreateTokenRequest { role: pb::Role::Viewer as i32, ..Default::default() };
        tokens.push(tenancy.create_token(req).await.unwrap().into_inner().token);
    }
    let (flooder, other) = (tokens[0].clone(), tokens[1].clone());
    let http = crate::harness::http_client();
    let url = format!("http://{}/v1/jobs", cp.http_addr);
    let started = std::time::Instant::now();
    // 200 calls a second for 2 s, each in its own task: ten times the limit.
    let flood = {
        let (http, url, token) = (http.clone(), url.clone(), flooder.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut calls = Vec::new();
            for _ in 0..400 {
                tick.tick().await;
                let (http, url, token) = (http.clone(), url.clone(), token.clone());
                calls.push(tokio::spawn(async move {
                    let r = http.get(url).bearer_auth(token).send().await.unwrap();
                    (r.status().as_u16(), r.headers().get("retry-after").is_some())
                }));
            }
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        })
    };
    // Meanwhile the other principal: 15 calls at 10 a second, half over gRPC.
    let mut jobs = tether_proto::pb::job_service_client::JobServiceClient::with_interceptor(
        cp.channel().await,
        bearer(Some(&other)),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..15 {
        tick.tick().await;
        if i % 2 == 0 {
            let r = http.get(&url).bearer_auth(&other).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "the other principal's REST call {i} during the flood");
        } else {
            jobs.list_jobs(pb::ListJobsRequest::default()).await.unwrap_or_else(|e| panic!("gRPC call {i}: {e:?}"));
        }
    }
    let flood = flood.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let ok = flood.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = flood.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok + limited.len(), flood.len(), "only 200 or 429: {flood:?}");
    assert!(limited.iter().all(|(_, retry)| *retry), "every 429 says when to retry");
    // The burst, plus the rate for the time it ran, plus slack for timing.
    let allowed = 20.0 + 20.0 * secs + 5.0;
    assert!((ok as f64) <= allowed, "{ok} of the flood's calls passed in {secs:.1} s; at most {allowed:.0} may");
    assert!(limited.len() >= 200, "only {} refused", limited.len());
    // Over gRPC the flooder is refused the same way.
    let mut flood_jobs = tether_proto::pb::job_service_client::JobServiceClient::with_interceptor(
        cp.channel().await,
        bearer(Some(&flooder)),
    );
    let mut refused = None;
    for _ in 0..50 {
        if let Err(e) = flood_jobs.list_jobs(pb::ListJobsRequest::default()).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("50 calls at once exceed a burst of 20");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.metadata().get("retry-after").is_some(), "{e:?}");
    eprintln!("flood: {ok} passed, {} refused in {secs:.1} s", limited.len());
}

async fn slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opts = Options {
        extra_args: ["--http-header-timeout", "1s", "--http-body-timeout", "1s"].map(String::from).to_vec(),
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(Backend::Sqlite, opts).await;
    // Headers that never finish.
    let mut slow = tokio::net::TcpStream::connect(&cp.http_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let opened = std::time::Instant::now();
    // Others are served meanwhile.
    for _ in 0..3 {
        assert_eq!(cp.http_get("/healthz").await.0, 200);
    }
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the unfinished request's connection is still open after 10 s");
    let took = opened.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?} with a 1 s header timeout");
    eprintln!("unfinished headers: connection closed after {took:?}");

    // A body that never finishes: 408, as JSON, after the body timeout.
    let answer = post_jobs_raw(&cp, 100, "{\"sp").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");

    // Errors made outside the REST bridge are JSON too, 405 with its Allow.
    let (status, headers, body) = rest(&cp, "POST", "/metrics", None).await;
    assert_eq!(status, 405);
    assert!(headers.get("allow").is_some_and(|v| v.to_str().unwrap().contains("GET")), "{headers:?}");
    assert_eq!(body["code"], "method_not_allowed", "{body}");
}

async fn rest(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = crate::harness::http_client()
        .request(method.parse().unwrap(), format!("http://{}{path}", cp.http_addr))
        .bearer_auth(&cp.admin_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
    (status, headers, json)
}

/// Counts of what a refused request must not have changed.
async fn counts(cp: &ControlPlane) -> (usize, usize, usize) {
    let jobs = cp.jobs().await.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner().jobs.len();
    let tokens = cp
        .tenancy_as(Some(&cp.admin_token))
        .await
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens
        .len();
    (jobs, cp.list_nodes().await.len(), tokens)
}

/// POST /v1/jobs declaring `length` bytes and sending `body`, raw.
async fn post_jobs_raw(cp: &ControlPlane, length: u64, body: &str) -> String {
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n{body}",
        cp.admin_token
    );
    raw_http(&cp.http_addr, head.as_bytes()).await
}

/// Sends raw bytes on a fresh connection and reads the answer.
async fn raw_http(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn malformed_input_is_refused_and_changes_nothing(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let before = counts(&cp).await;

    // NUL and control characters in what would reach execve.
    for (field, exec) in [
        ("command", json!({"command": "/bin/true\u{0}x"})),
        ("command", json!({"command": "/bin/\u{1b}true"})),
        ("args", json!({"command": "/bin/echo", "args": ["a\u{0}b"]})),
        ("working_dir", json!({"command": "/bin/true", "workingDir": "/tmp\u{0}"})),
    ] {
        let (status, _, body) =
            rest(&cp, "POST", "/v1/jobs", Some(json!({"spec": {"driver": "exec", "exec": exec}}))).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["code"], "invalid_argument", "{body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
    let mut jobs = cp.jobs().await;
    let err = jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                driver: "exec".into(),
                exec: Some(pb::ExecSpec { command: "/bin/true\0".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A key named twice is refused (a plain parser would keep the last).
    let resp = crate::harness::http_client()
        .post(format!("http://{}/v1/jobs", cp.http_addr))
        .bearer_auth(&cp.admin_token)
        .header("content-type", "application/json")
        .body(r#"{"spec": 5, "spec": {"driver": "exec", "exec": {"command": "/bin/true"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("duplicate key \"spec\""), "{body}");

    // A body over the limit is refused from its declared length, at once,
    // with 413 (not 429, which invites a retry).
    let answer = post_jobs_raw(&cp, 10_737_418_240, "{}").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    // 405 names the allowed methods, as JSON.
    let (status, headers, body) = rest(&cp, "DELETE", "/v1/nodes", None).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some("GET"));
    assert_eq!(body["code"], "method_not_allowed");

    // gRPC: bytes that are not the message are the caller's fault.
    for (what, payload) in [
        ("garbage", vec![0xff, 0xff, 0xff, 0xff, 0xff]),
        ("truncated varint", vec![0x08, 0x80]),
        ("string not UTF-8", vec![0x0a, 0x02, 0xc3, 0x28]),
    ] {
        let mut grpc = tonic::client::Grpc::new(cp.channel().await);
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(payload);
        req.metadata_mut().insert("authorization", format!("Bearer {}", cp.admin_token).parse().unwrap());
        let path = http::uri::PathAndQuery::from_static("/tether.v1.JobService/GetJob");
        let err = grpc.unary(req, path, RawCodec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }

    assert_eq!(counts(&cp).await, before, "a refused request changed something");
}

async fn last_admin_token_cannot_be_revoked_and_recovery_works(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let mut tenancy = cp.tenancy_as(Some(&cp.admin_token)).await;
    let me = tenancy.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    // Revoking itself, the only admin token: refused, nothing changed.
    let (status, _, body) = rest(&cp, "POST", &format!("/v1/tokens/{}:revoke", me.token_id), None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "failed_precondition", "{body}");
    assert!(body["message"].as_str().unwrap().contains("admin-token"), "names the recovery path: {body}");
    tenancy.who_am_i(pb::WhoAmIRequest {}).await.expect("still valid");

    // The host operator mints a new admin token offline, with the control
    // plane running; it works at once.
    let out = tokio::process::Command::new(bin_dir().join("tether-control-plane"))
        .args(cp.database_args())
        .args(["admin-token", "--ttl", "1h"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "admin-token: {}", String::from_utf8_lossy(&out.stderr));
    let recovered = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(recovered.starts_with("tm1_"), "stdout is the token alone: {recovered:?}");
    let mut as_recovered = cp.tenancy_as(Some(&recovered)).await;
    let who = as_recovered.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(who.role, pb::Role::Admin as i32);
    assert_ne!(who.token_id, me.token_id);

    // With another admin token alive, the first may go.
    as_recovered.revoke_token(pb::RevokeTokenRequest { token_id: me.token_id.clone() }).await.unwrap();
    let err = tenancy.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // And now the recovered one is the last.
    let err = as_recovered.revoke_token(pb::RevokeTokenRequest { token_id: who.token_id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The offline command refuses a data dir without a database.
    let empty = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin_dir().join("tether-control-plane"))
        .arg("--data-dir")
        .arg(empty.path())
        .arg("admin-token")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"), "{}", String::from_utf8_lossy(&out.stderr));
}
