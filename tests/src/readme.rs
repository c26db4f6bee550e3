//! The README's examples, run as written: the control plane started with no
//! arguments (SQLite in ./tether-data, ports 50051 and 8080), one agent, then
//! every `sh` block between the README's test markers in one bash.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;

fn readme_script() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("<!-- readme-test:begin -->").expect("begin marker");
    let end = readme.find("<!-- readme-test:end -->").expect("end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..end].lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(script.lines().count() > 20, "the README has runnable examples");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir();
    let log = std::fs::File::create(dir.path().join("cp.log")).unwrap();
    let mut cp = tokio::process::Command::new(bins.join("tether-control-plane"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let token_file = dir.path().join("tether-data/join.token");
    eventually(Duration::from_secs(30), "the control plane to bootstrap", || async {
        // The token files are written before the ports are bound: wait for
        // the port to accept before asking it.
        (token_file.exists()
            && tokio::net::TcpStream::connect("127.0.0.1:8080").await.is_ok()
            && http_get("127.0.0.1:8080", "/readyz").await.0 == 200)
            .then_some(())
    })
    .await;
    let alog = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = tokio::process::Command::new(bins.join("tether-agent"))
        .current_dir(dir.path())
        .args([
            "--control-plane",
            "http://127.0.0.1:50051",
            "--join-token-file",
            "tether-data/join.token",
            "--labels",
            "zone=eu-1,pool=default",
        ])
        .env("RUST_LOG", "warn")
        .stdout(alog.try_clone().unwrap())
        .stderr(alog)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the agent to connect", || async {
        let (_, m) = http_get("127.0.0.1:8080", "/metrics").await;
        m.lines().any(|l| l == "tether_agents_connected 1").then_some(())
    })
    .await;

    let grpcurl_dir = grpcurl().parent().unwrap().to_path_buf();
    let path = format!("{}:{}:{}", bins.display(), grpcurl_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_script()])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("TETHER_TOKEN")
        .env_remove("TETHER_ADDR")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cp_log = std::fs::read_to_string(dir.path().join("cp.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "README examples failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- control plane\n{cp_log}"
    );
    for expected in [
        "hello from job-",
        "tether.v1.NodeService",
        "SERVING",
        "NODE_STATUS_READY",
        "tether_agents_connected 1",
        "\"openapi\":\"3.1.0\"",
        "RANK",
        // WhoAmI over a SigV4-signed request answers as the access key.
        "\"tokenId\":\"ak-",
        "valid: tok-",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from the output:\n{stdout}");
    }
    cp.start_kill().unwrap();
    let _ = cp.wait().await;
}

/// The `sh` blocks between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn readme_blocks(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find(&format!("<!-- {name}:begin -->")).expect("begin marker");
    let end = readme.find(&format!("<!-- {name}:end -->")).expect("end marker");
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in readme[start..end].lines() {
        match (&mut block, line.trim_end()) {
            (None, "```sh") => block = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// `cargo run --release -p BIN -- ARGS` as the built binary and its arguments.
fn cargo_run(block: &str) -> (String, Vec<String>) {
    let words: Vec<String> = block.split_whitespace().map(str::to_owned).collect();
    assert_eq!(&words[..4], ["cargo", "run", "--release", "-p"], "{block}");
    assert_eq!(words[5], "--", "{block}");
    (words[4].clone(), words[6..].to_vec())
}

/// The README's TLS examples: the control plane and the agent started with
/// the README's own arguments, then its client commands in bash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tls_examples_run_as_written() {
    let blocks = readme_blocks("readme-tls");
    assert_eq!(blocks.len(), 3, "server, agent, examples");
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir();
    let spawn = |block: &str, log: &str| {
        let (bin, args) = cargo_run(block);
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        tokio::process::Command::new(bins.join(bin))
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut cp = spawn(&blocks[0], "cp.log");
    let addr_file = dir.path().join("tls-data/http.addr");
    eventually(Duration::from_secs(30), "the TLS control plane to serve", || async {
        addr_file.exists().then_some(())
    })
    .await;
    let _agent = spawn(&blocks[1], "agent.log");
    let grpcurl_dir = grpcurl().parent().unwrap().to_path_buf();
    let path = format!("{}:{}:{}", bins.display(), grpcurl_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = eventually(Duration::from_secs(30), "the README's TLS examples to show the node ready", || {
        let (path, script, dir) = (path.clone(), blocks[2].clone(), dir.path().to_path_buf());
        async move {
            let out = tokio::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(dir)
                .env("PATH", path)
                .env_remove("TETHER_TOKEN")
                .env_remove("TETHER_ADDR")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && stdout.contains(" ready ")).then_some(stdout)
        }
    })
    .await;
    for expected in ["tether.v1.NodeService", "ready\n"] {
        assert!(out.contains(expected), "{expected:?} missing from the output:\n{out}");
    }
    let agent_log = std::fs::read_to_string(dir.path().join("tls-agent-state/identity.json")).unwrap();
    assert!(agent_log.contains("BEGIN CERTIFICATE"), "the agent holds a client certificate");
    cp.start_kill().unwrap();
    let _ = cp.wait().await;
}

both_backends!(tetherctl_reports_errors_and_speaks_json);

async fn tetherctl_reports_errors_and_speaks_json(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "ctl", &["--labels", "zone=c"]);
    let node = agent.node_id().await;
    cp.wait_nodes(1, tether_proto::pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let admin = cp.admin_token.clone();

    let (code, out, _) = tetherctl(&cp, &admin, &["-o", "json", "nodes", "list", "-l", "zone=c"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"][0]["nodeId"], node.as_str());
    let (code, out, _) = tetherctl(&cp, &admin, &["-o", "id", "nodes", "list"]).await;
    assert_eq!((code, out.trim()), (0, node.as_str()));

    let (code, _, err) = tetherctl(&cp, "tm1_forged", &["nodes", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: unauthenticated:"), "{err}");
    let (code, _, err) = tetherctl(&cp, &admin, &["jobs", "get", "not-a-job"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: invalid_argument:"), "{err}");
    let (code, _, err) = tetherctl(&cp, &admin, &["jobs", "bogus"]).await;
    assert_eq!(code, 2, "usage errors exit 2: {err}");
    // A job that fails makes `submit --wait` exit 3.
    let (code, out, _) = tetherctl(&cp, &admin, &["jobs", "submit", "--wait", "--", "/bin/sh", "-c", "exit 7"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("failed") && out.contains("exit code  7"), "{out}");
    // Quarantine needs a reason and shows it.
    let (code, out, _) = tetherctl(&cp, &admin, &["nodes", "quarantine", &node, "--reason", "bad disk"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("quarantined") && out.contains("bad disk"), "{out}");
    drop(agent);
}
