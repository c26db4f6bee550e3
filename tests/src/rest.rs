//! The REST bridge end to end: every annotated RPC answers over HTTP with
//! proto3 JSON, SSE streams events as they happen, errors carry the shared
//! status mapping, and schemathesis finds nothing wrong with the OpenAPI
//! document's promises.

use std::time::Duration;

use futures_util::StreamExt;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Value, json};
use tether_proto::pb;

use crate::harness::*;

both_backends!(
    every_annotated_rpc_answers_over_rest,
    sse_streams_a_node_joining,
    schemathesis_finds_nothing_wrong_in_organization_routes,
    schemathesis_finds_nothing_wrong_in_other_routes,
);

/// Streams never end; the SSE test covers them.
const STREAMS: &str = ":watch$|/logs$";

/// The operations are fuzzed in two halves that run in parallel (each
/// schemathesis run is one Python thread, and the slowest test).
async fn schemathesis_finds_nothing_wrong_in_organization_routes(backend: Backend) {
    schemathesis_finds_nothing_wrong(
        backend,
        &["--include-path-regex", "^/v1/organizations", "--exclude-path-regex", STREAMS],
    )
    .await;
}

async fn schemathesis_finds_nothing_wrong_in_other_routes(backend: Backend) {
    let exclude = format!("{STREAMS}|^/v1/organizations");
    schemathesis_finds_nothing_wrong(backend, &["--exclude-path-regex", &exclude]).await;
}

struct Rest {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Rest {
    fn new(cp: &ControlPlane) -> Rest {
        Rest {
            base: format!("http://{}", cp.http_addr),
            token: cp.admin_token.clone(),
            http: crate::harness::http_client(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method.parse().unwrap(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}")))
    }
}

/// Fills a route template with real ids.
fn fill(template: &str, ids: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (field, id) in ids {
        out = out.replace(&format!("{{{field}}}"), id);
    }
    assert!(!out.contains('{'), "no id for {template}");
    out
}

async fn every_annotated_rpc_answers_over_rest(backend: Backend) {
    // ResolveAccessKey answers the internal token only.
    let secrets = tempfile::tempdir().unwrap();
    let internal = "internal-token-of-the-rest-test";
    std::fs::write(secrets.path().join("internal"), internal).unwrap();
    let opts = Options {
        extra_args: vec!["--internal-token-file".into(), secrets.path().join("internal").display().to_string()],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let agent = Agent::start(&cp, "rest", &["--labels", "zone=r"]);
    let node_id = agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let rest = Rest::new(&cp);

    // Real ids to put in paths: a job, a workload, a join token.
    let (s, job) = rest
        .call("POST", "/v1/jobs", Some(json!({"spec": {"driver": "exec", "exec": {"command": "/bin/sleep", "args": ["100"]}}, "labels": {"via": "rest"}})))
        .await;
    assert_eq!(s, 200, "{job}");
    let job_id = job["job"]["jobId"].as_str().unwrap().to_owned();
    assert_eq!(job["job"]["status"], "JOB_STATUS_PENDING", "enums by name");
    assert!(job["job"]["createdAt"].as_str().unwrap().ends_with('Z'), "RFC 3339 timestamps");
    let (s, wl) = rest
        .call("POST", "/v1/workloads", Some(json!({"name": "api", "replicas": 1, "spec": {"driver": "exec", "exec": {"command": "/bin/sleep", "args": ["100"]}}})))
        .await;
    assert_eq!(s, 200, "{wl}");
    let workload_id = wl["workload"]["workloadId"].as_str().unwrap().to_owned();
    let (s, jt) = rest.call("POST", "/v1/join-tokens", Some(json!({"ttl": "3600s", "maxUses": 2}))).await;
    assert_eq!(s, 200, "{jt}");
    assert_eq!(jt["joinToken"]["maxUses"], 2);
    let join_token_id = jt["joinToken"]["joinTokenId"].as_str().unwrap().to_owned();
    let (s, tok) = rest.call("POST", "/v1/tokens", Some(json!({"role": "ROLE_VIEWER", "ttl": "600s"}))).await;
    assert_eq!(s, 200, "{tok}");
    let token_id = tok["tokenId"].as_str().unwrap().to_owned();
    let (s, ak) = rest.call("POST", "/v1/access-keys", Some(json!({"role": "ROLE_VIEWER"}))).await;
    assert_eq!(s, 200, "{ak}");
    assert!(ak["secretAccessKey"].as_str().is_some_and(|s| s.len() >= 40), "{ak}");
    let access_key_id = ak["accessKey"]["accessKeyId"].as_str().unwrap().to_owned();
    // A second organisation with a project and a join token, for the
    // organisation and project calls (deleted with force at the end).
    let (s, org) = rest.call("POST", "/v1/organizations", Some(json!({"name": "spare"}))).await;
    assert_eq!(s, 200, "{org}");
    let spare_org = org["organization"]["organizationId"].as_str().unwrap().to_owned();
    let (s, prj) =
        rest.call("POST", "/v1/projects", Some(json!({"organizationId": spare_org, "name": "spare-project"}))).await;
    assert_eq!(s, 200, "{prj}");
    let spare_project = prj["project"]["projectId"].as_str().unwrap().to_owned();
    let (s, ojt) = rest.call("POST", &format!("/v1/organizations/{spare_org}/join-tokens"), Some(json!({}))).await;
    assert_eq!(s, 200, "{ojt}");
    assert_eq!(ojt["joinToken"]["pool"], "default");
    let spare_join_token = ojt["joinToken"]["joinTokenId"].as_str().unwrap().to_owned();
    let org_ids =
        [("organization_id", spare_org.as_str()), ("join_token_id", spare_join_token.as_str()), ("name", "rest-pool")];
    let project_ids = [("project_id", spare_project.as_str())];
    let ids = [
        ("token_id", token_id.as_str()),
        ("node_id", node_id.as_str()),
        ("job_id", job_id.as_str()),
        ("workload_id", workload_id.as_str()),
        ("join_token_id", join_token_id.as_str()),
        ("access_key_id", access_key_id.as_str()),
        ("name", "rest-secret"),
    ];
    let as_internal = Rest { token: internal.into(), ..Rest::new(&cp) };
    let (s, sec) = rest.call("POST", "/v1/secrets", Some(json!({"name": "rest-secret", "value": "dg=="}))).await;
    assert_eq!(s, 200, "{sec}");
    // A PutSealedSecret body sealed here for the one node.
    let (s, r) = rest.call("GET", "/v1/secret-recipients?name=sealed-by-rest", None).await;
    assert_eq!(s, 200, "{r}");
    let rest_sealed = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rcpt = &r["recipients"][0];
        let key = b64.decode(rcpt["publicKey"].as_str().unwrap()).unwrap();
        let node = rcpt["nodeId"].as_str().unwrap();
        let version = r["nextVersion"].as_u64().unwrap() as u32;
        let label = tether_auth::seal::CopyLabel {
            project: r["projectId"].as_str().unwrap(),
            name: "sealed-by-rest",
            version,
            node,
        };
        let s = tether_auth::seal::seal(&key, &label, b"v").unwrap();
        json!({"name": "sealed-by-rest", "version": version, "sealed": [
            {"nodeId": node, "enc": b64.encode(s.enc), "ciphertext": b64.encode(s.ciphertext), "publicKey": b64.encode(&key)}
        ]})
    };

    // int64 as strings, query parameters by JSON and by proto name.
    let (_, nodes) = rest.call("GET", "/v1/nodes?labelSelector=zone%3Dr&page_size=5", None).await;
    let n = &nodes["nodes"][0];
    assert!(n["desiredStateVersion"].is_string(), "uint64 is a string: {n}");
    assert!(n["capabilities"]["memoryMb"].is_string());
    let (_, none) = rest.call("GET", "/v1/nodes?label_selector=zone%3Dnope", None).await;
    assert_eq!(none, json!({}), "empty fields are omitted");

    // Walk the descriptor set: every route answers, with JSON that decodes as
    // the method's output under the proto3 mapping (unknown fields refused).
    let bridge = tether_rest::Bridge::from_descriptors(tether_proto::FILE_DESCRIPTOR_SET).unwrap();
    // No operator RPC is forgotten: each has at least one route.
    for svc in bridge.pool.services().filter(|s| s.package_name() == "tether.v1") {
        for m in svc.methods() {
            assert!(
                bridge.routes.iter().any(|r| r.method.full_name() == m.full_name()),
                "{} has no HTTP route",
                m.full_name()
            );
        }
    }
    let body_for = |grpc: &str| -> Option<Value> {
        Some(match grpc {
            "/tether.v1.NodeService/SetDesiredState" => json!({"state": "DESIRED_NODE_STATE_PAUSED", "reason": "rest"}),
            "/tether.v1.JobService/SubmitJob" => json!({"spec": {"exec": {"command": "/bin/true"}}}),
            "/tether.v1.WorkloadService/CreateWorkload" => {
                json!({"name": "other", "replicas": 0, "spec": {"exec": {"command": "/bin/true"}}})
            }
            "/tether.v1.WorkloadService/UpdateWorkload" => {
                json!({"spec": {"exec": {"command": "/bin/sleep", "args": ["200"]}}})
            }
            "/tether.v1.WorkloadService/ScaleWorkload" => json!({"replicas": 2}),
            "/tether.v1.TenancyService/CreateToken" => json!({"role": "ROLE_VIEWER", "ttl": "60s"}),
            "/tether.v1.TenancyService/CreateJoinToken" => json!({}),
            "/tether.v1.TenancyService/VerifyToken" => json!({"token": rest.token}),
            "/tether.v1.AccessKeyService/CreateAccessKey" => json!({"role": "ROLE_VIEWER"}),
            "/tether.v1.AccessKeyService/ResolveAccessKey" => json!({}),
            "/tether.v1.SecretService/PutSecret" => json!({"name": "rest-secret", "value": "dg=="}),
            "/tether.v1.SecretService/PutSealedSecret" => rest_sealed.clone(),
            "/tether.v1.PlacementService/SuggestPlacement" => {
                json!({"resources": {"cpuMillis": "100"}, "objective": "OBJECTIVE_COST"})
            }
            "/tether.v1.OrganizationService/CreateOrganization" => json!({"name": "made-by-rest"}),
            "/tether.v1.OrganizationService/UpdateOrganization" => json!({"description": "renamed by rest"}),
            "/tether.v1.OrganizationService/GrantPool" | "/tether.v1.OrganizationService/RevokePool" => {
                json!({"pool": "gpu", "projectId": spare_project})
            }
            "/tether.v1.OrganizationService/CreateOrganizationJoinToken" => json!({"pool": "gpu"}),
            "/tether.v1.ProjectService/CreateProject" => json!({"name": "made-by-rest"}),
            "/tether.v1.PoolService/CreatePool" => {
                json!({"name": "rest-pool", "spec": {"max": 3, "provider": {"webhook": {"url": "http://127.0.0.1:9/x"}}}})
            }
            "/tether.v1.PoolService/UpdatePool" => {
                json!({"spec": {"max": 4, "provider": {"webhook": {"url": "http://127.0.0.1:9/x"}}}})
            }
            "/tether.v1.PoolService/ScalePool" => json!({"desired": 0}),
            "/tether.v1.UsageService/QuotePrice" => json!({"tier": "archive", "quantities": {"cpu_seconds": "10"}}),
            "/tether.v1.UsageService/IngestUsage" => {
                json!({"records": [{"metric": "api_operations", "quantity": "3", "idempotencyKey": "rest-1"}]})
            }
            "/tether.v1.SettingsService/UpdateSettings" => json!({"settings": {"fleet": {"staleNodeTtl": "3600s"}}}),
            "/tether.v1.ProjectService/UpdateProject" => json!({"description": "described by rest"}),
            "/tether.v1.ProjectService/SetProjectQuota" => json!({"quota": {"cpuMillis": "1000"}}),
            _ => return None,
        })
    };
    // Destructive calls last.
    let mut routes: Vec<_> = bridge.routes.iter().collect();
    routes.sort_by_key(|r| {
        (
            r.grpc_path.ends_with("/DeleteOrganization"),
            r.http_method == reqwest::Method::DELETE,
            r.grpc_path.contains("Cancel") || r.grpc_path.contains("Revoke"),
        )
    });
    for r in routes {
        let mut path = if r.grpc_path.starts_with("/tether.v1.OrganizationService/")
            || r.grpc_path.starts_with("/tether.v1.SettingsService/")
            || r.grpc_path.starts_with("/tether.v1.PoolService/")
            || r.grpc_path == "/tether.v1.UsageService/PreviewPayouts"
            || r.grpc_path.starts_with("/tether.v1.SummaryService/")
        {
            fill(&r.template, &org_ids)
        } else if r.grpc_path.starts_with("/tether.v1.ProjectService/") {
            fill(&r.template, &project_ids)
        } else {
            fill(&r.template, &ids)
        };
        if r.grpc_path.ends_with("/DeleteOrganization") {
            // Its project is deleted (or gone already) with it.
            path.push_str("?force=true");
        }
        let method = r.http_method.as_str();
        if r.server_streaming() {
            let query = if r.grpc_path.ends_with("WatchNodes") { "?sendInitial=true" } else { "" };
            let resp =
                rest.http.get(format!("{}{path}{query}", rest.base)).bearer_auth(&rest.token).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{method} {path}");
            assert_eq!(resp.headers()["content-type"], "text/event-stream", "{path}");
            // The first event arrives (a job without output has a log stream
            // that simply ends); then hang up.
            let mut body = resp.bytes_stream();
            let first = tokio::time::timeout(Duration::from_secs(20), body.next()).await;
            let ended_empty = r.grpc_path.ends_with("StreamJobLogs") && matches!(first, Ok(None));
            assert!(matches!(first, Ok(Some(Ok(_)))) || ended_empty, "{path}: no event: {first:?}");
            continue;
        }
        let caller = if r.grpc_path.ends_with("/ResolveAccessKey") { &as_internal } else { &rest };
        let (status, value) = caller.call(method, &path, body_for(&r.grpc_path)).await;
        assert_eq!(status, 200, "{method} {path} ({}): {value}", r.grpc_path);
        let out = DynamicMessage::deserialize_with_options(
            r.method.output(),
            value.clone(),
            &DeserializeOptions::new().deny_unknown_fields(true),
        );
        assert!(out.is_ok(), "{path}: {value} is not a {}: {:?}", r.method.output().name(), out.err());
    }

    // Errors: JSON with the shared status mapping.
    let cases = [
        ("GET", "/v1/nodes/nd-00000000000000000000", None, 404, "not_found"),
        ("GET", "/v1/nodes/garbage", None, 400, "invalid_argument"),
        ("GET", "/v1/nodes?bogus=1", None, 400, "invalid_argument"),
        ("GET", "/v1/nodes?status=NOT_A_STATUS", None, 400, "invalid_argument"),
        ("POST", "/v1/jobs", Some(json!({"spec": {"exec": {"command": "x"}}, "unknown": 1})), 400, "invalid_argument"),
        (
            "POST",
            "/v1/jobs",
            Some(json!({"spec": {"driver": "docker", "exec": {"command": "x"}}})),
            400,
            "invalid_argument",
        ),
        ("POST", &format!("/v1/jobs/{job_id}:cancel"), None, 409, "failed_precondition"),
        ("GET", "/v1/no-such-thing", None, 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = rest.call(method, path, body).await;
        assert_eq!((s, v["code"].as_str().unwrap_or_default()), (status, code), "{method} {path}: {v}");
        assert!(v["message"].is_string());
    }
    let anon = rest.http.get(format!("{}/v1/nodes", rest.base)).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let wrong_method =
        rest.http.patch(format!("{}/v1/nodes", rest.base)).bearer_auth(&rest.token).send().await.unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);
    // REST calls go through the same metrics as gRPC.
    let (_, metrics) = cp.http_get("/metrics").await;
    assert!(metrics.contains(r#"tether_grpc_requests_total{method="/tether.v1.NodeService/ListNodes",code="OK"}"#));
    drop(agent);
}

async fn sse_streams_a_node_joining(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let rest = Rest::new(&cp);
    let resp = rest.http.get(format!("{}/v1/nodes:watch", rest.base)).bearer_auth(&rest.token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let agent = Agent::start(&cp, "sse", &[]);
    let node_id = agent.node_id().await;
    let mut buf = String::new();
    let mut events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < 2 {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("events in time").unwrap().unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
    }
    assert_eq!(events[0]["kind"], "node.registered");
    assert_eq!(events[0]["type"], "NODE_EVENT_TYPE_ADDED");
    assert_eq!(events[0]["node"]["nodeId"], node_id.as_str());
    assert_eq!(events[1]["node"]["status"], "NODE_STATUS_READY");
    assert!(
        events[0]["sequence"].as_str().unwrap().parse::<u64>().unwrap()
            < events[1]["sequence"].as_str().unwrap().parse().unwrap()
    );
    drop(agent);
}

async fn schemathesis_finds_nothing_wrong(backend: Backend, filter: &[&str]) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "fuzzed", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let st = schemathesis();
    let config = workspace_root().join("tests/schemathesis.toml");
    let out = tokio::process::Command::new(&st)
        .args([
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &format!("http://{}/openapi.json", cp.http_addr),
            "--header",
            &format!("Authorization: Bearer {}", cp.admin_token),
            // Every check: no 5xx, responses as documented, schema-valid
            // requests accepted and schema-violating ones refused.
            "--checks",
            "all",
            "--max-examples",
            "100",
            // Each run starts fresh: no examples remembered from the last.
            "--generation-database",
            "none",
            // One worker: hypothesis is not thread-safe in every version.
            "--workers",
            "1",
            "--suppress-health-check",
            "all",
        ])
        .args(filter)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    // It really exercised the API (the summary counts operations).
    assert!(stdout.contains("passed"), "{stdout}");
    drop(agent);
}
