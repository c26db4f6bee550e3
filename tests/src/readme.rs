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
        (token_file.exists() && http_get("127.0.0.1:8080", "/readyz").await.0 == 200).then_some(())
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
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from the output:\n{stdout}");
    }
    cp.start_kill().unwrap();
    let _ = cp.wait().await;
}
