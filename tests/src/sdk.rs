//! The generated SDKs' smoke tests against a real control plane and agent:
//! list nodes, submit a job, watch it to completion, read its logs.
//! `./scripts/test` generates the code (`scripts/generate-sdk`) and builds the
//! TypeScript package first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_proto::pb;

use crate::harness::*;

both_backends!(python_sdk_smoke_test, typescript_sdk_smoke_test);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

async fn ready(backend: Backend) -> (ControlPlane, Agent) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "sdk", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    (cp, agent)
}

async fn python_sdk_smoke_test(backend: Backend) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.exists(), "the repo's .venv is missing: ./scripts/test creates it");
    assert!(sdk_dir().join("python/tether/v1/node_pb2.py").exists(), "run scripts/generate-sdk first");
    let (cp, agent) = ready(backend).await;
    let out = tokio::process::Command::new(python)
        .arg(sdk_dir().join("python/smoke_test.py"))
        .env("TETHER_GRPC", &cp.grpc_addr)
        .env("TETHER_TOKEN", &cp.admin_token)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python smoke test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("python sdk ok"), "{stdout}");
    drop(agent);
}

async fn typescript_sdk_smoke_test(backend: Backend) {
    let script = sdk_dir().join("typescript/dist/smoke.js");
    assert!(script.exists(), "build the TypeScript SDK first (scripts/generate-sdk; npm run build in sdk/typescript)");
    let (cp, agent) = ready(backend).await;
    let out = tokio::process::Command::new("node")
        .arg(script)
        .env("TETHER_URL", cp.url())
        .env("TETHER_TOKEN", &cp.admin_token)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "typescript smoke test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("typescript sdk ok"), "{stdout}");
    drop(agent);
}
