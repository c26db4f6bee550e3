//! HTTP agents: the Python example client in docs/ enrols and beats; the
//! node shows in the registry with its report and its liveness comes from
//! its posts; a tampered body, a replayed nonce, an old timestamp, a
//! missing header or a deregistered node get 401 and change nothing.

use std::os::unix::fs::PermissionsExt;

use tether_auth::heartbeat::sign;
use tether_proto::pb;

use crate::harness::*;

both_backends!(http_agent_enrols_beats_and_refuses_forgeries);

const REPORT: &str = r#"{"instance_id": "acme-001", "domain": "acme.com", "client": "Acme SA", "version": "1.2.3",
 "release_channel": "stable", "health": "ok", "backup_status": "ok", "last_backup_at": "2026-02-11T02:00:00Z",
 "alerts": [{"level": "warning", "message": "Low disk"}], "job_failures": [{"queue": "billing", "message": "Timeout"}],
 "slo_p95_ms": 180, "slo_error_rate": 0.002}"#;

fn example_client() -> std::path::PathBuf {
    workspace_root().join("docs/examples/http_agent.py")
}

async fn python(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(venv_python())
        .arg(example_client())
        .args(args)
        .output()
        .await
        .expect("run the example HTTP agent");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A heartbeat as an agent would post it, with every part chosen by the test.
struct Post<'a> {
    node: &'a str,
    timestamp: String,
    nonce: String,
    signature: String,
    body: String,
}

impl<'a> Post<'a> {
    fn signed(secret: &[u8], node: &'a str, nonce: &str, body: &str) -> Self {
        let timestamp = unix_now().to_string();
        Post {
            node,
            signature: sign(secret, &timestamp, nonce, body.as_bytes()),
            timestamp,
            nonce: nonce.to_owned(),
            body: body.to_owned(),
        }
    }

    async fn send(&self, cp: &ControlPlane) -> (u16, String) {
        let resp = crate::harness::http_client()
            .post(format!("http://{}/v1/agent/heartbeat", cp.http_addr))
            .header("content-type", "application/json")
            .header("x-tether-node", self.node)
            .header("x-tether-timestamp", &self.timestamp)
            .header("x-tether-nonce", &self.nonce)
            .header("x-tether-signature", &self.signature)
            .body(self.body.clone())
            .send()
            .await
            .expect("POST a heartbeat");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    }
}

async fn get_node(cp: &ControlPlane, id: &str) -> pb::Node {
    cp.nodes().await.get_node(pb::GetNodeRequest { node_id: id.to_owned() }).await.unwrap().into_inner().node.unwrap()
}

/// What a refused heartbeat must leave alone: the report and when it came,
/// and the nonces spent.
async fn footprint(cp: &ControlPlane, node: &str) -> (Vec<(String, String)>, i64) {
    let report = cp
        .sql_pairs(&format!("SELECT report, CAST(reported_at AS TEXT) FROM http_agents WHERE node_id = '{node}'"))
        .await;
    let nonces = cp.sql_i64(&format!("SELECT count(*) FROM agent_nonces WHERE node_id = '{node}'")).await;
    (report, nonces)
}

async fn http_agent_enrols_beats_and_refuses_forgeries(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let dir = cp.dir.path();
    let state = dir.join("http-agent.json");
    let report = dir.join("report.json");
    std::fs::write(&report, REPORT).unwrap();
    let url = format!("http://{}", cp.http_addr);

    // A bad join token enrols nothing.
    let (ok, out) =
        python(&["enroll", "--url", &url, "--join-token", "jt_bad", "--state", state.to_str().unwrap()]).await;
    assert!(!ok && out.contains("401"), "{out}");
    assert!(cp.list_nodes().await.is_empty());

    let (ok, out) = python(&[
        "enroll",
        "--url",
        &url,
        "--join-token",
        &cp.join_token,
        "--state",
        state.to_str().unwrap(),
        "--hostname",
        "shop-1",
        "--label",
        "site=lisbon",
    ])
    .await;
    assert!(ok, "{out}");
    let node_id = out.trim().to_owned();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600,
        "the state file holds the secret"
    );
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let secret = tether_auth::hex_decode(saved["secret"].as_str().unwrap()).unwrap();
    assert_eq!(secret.len(), 32);

    let n = get_node(&cp, &node_id).await;
    assert_eq!(n.transport(), pb::NodeTransport::Http);
    assert_eq!(n.status(), pb::NodeStatus::Pending);
    assert_eq!(n.labels.get("site").map(String::as_str), Some("lisbon"));
    assert!(n.report.is_none(), "no report before the first heartbeat");

    // The example client beats; the node is ready with its report.
    let (ok, out) = python(&[
        "beat",
        "--state",
        state.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--count",
        "2",
        "--interval",
        "0.05",
    ])
    .await;
    assert!(ok, "{out}");
    let n = get_node(&cp, &node_id).await;
    assert_eq!(n.status(), pb::NodeStatus::Ready);
    let r = n.report.clone().expect("the report is kept");
    assert_eq!((r.instance_id.as_str(), r.version.as_str(), r.health.as_str()), ("acme-001", "1.2.3", "ok"));
    assert_eq!(r.alerts[0].message, "Low disk");
    assert_eq!(r.job_failures[0].queue, "billing");
    assert_eq!(r.slo_p95_ms, Some(180.0));
    assert_eq!(r.last_backup_at.unwrap().seconds, 1_770_775_200);
    assert!(n.last_seen_at.is_some());
    // Listed with the others (no report in lists).
    assert!(cp.list_nodes().await.iter().any(|x| x.node_id == node_id && x.report.is_none()));

    let before = footprint(&cp, &node_id).await;
    assert_eq!(before.1, 2, "one nonce per accepted heartbeat");
    let newer = REPORT.replace("1.2.3", "1.2.4");

    // A body changed after signing.
    let mut p = Post::signed(&secret, &node_id, "tampered-000000001", &newer);
    p.body = newer.replace("\"ok\"", "\"degraded\"");
    let (code, body) = p.send(&cp).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("signature"), "{body}");
    // Signed with another secret.
    let (code, _) = Post::signed(&[7; 32], &node_id, "othersecret-00000001", &newer).send(&cp).await;
    assert_eq!(code, 401);
    // A timestamp more than 5 minutes old, correctly signed.
    let old = (unix_now() - 301).to_string();
    let p = Post {
        node: &node_id,
        signature: sign(&secret, &old, "oldtimestamp-000001", newer.as_bytes()),
        timestamp: old,
        nonce: "oldtimestamp-000001".into(),
        body: newer.clone(),
    };
    let (code, body) = p.send(&cp).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("5 minutes"), "{body}");
    // A missing header; a node that does not exist.
    let mut p = Post::signed(&secret, &node_id, "noheader-000000001", &newer);
    p.signature.clear();
    assert_eq!(p.send(&cp).await.0, 401);
    let (code, _) = Post::signed(&secret, "nd_doesnotexist0000", "unknown-0000000001", &newer).send(&cp).await;
    assert_eq!(code, 401);
    assert_eq!(footprint(&cp, &node_id).await, before, "refused heartbeats change nothing");

    // An authenticated body that is not a report: 400, and its nonce is
    // not spent, so the agent may send the corrected report with it.
    let (code, body) = Post::signed(&secret, &node_id, "corrected-00000001", r#"{"helth": "ok"}"#).send(&cp).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field"), "{body}");
    assert_eq!(footprint(&cp, &node_id).await, before);
    let good = Post::signed(&secret, &node_id, "corrected-00000001", &newer);
    assert_eq!(good.send(&cp).await.0, 200);
    assert_eq!(get_node(&cp, &node_id).await.report.unwrap().version, "1.2.4");

    // The same request again: a replay.
    let after = footprint(&cp, &node_id).await;
    let (code, body) = good.send(&cp).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("nonce"), "{body}");
    assert_eq!(footprint(&cp, &node_id).await, after, "a replay changes nothing");

    // Liveness comes from the posts: silent, it becomes unreachable; a
    // post brings it back.
    eventually(GRACE * 4, "the silent HTTP node to be unreachable", || async {
        (get_node(&cp, &node_id).await.status() == pb::NodeStatus::Unreachable).then_some(())
    })
    .await;
    assert_eq!(Post::signed(&secret, &node_id, "comeback-000000001", &newer).send(&cp).await.0, 200);
    assert_eq!(get_node(&cp, &node_id).await.status(), pb::NodeStatus::Ready);

    // Deregistered: its heartbeats are refused and its rows are gone.
    cp.nodes().await.deregister_node(pb::DeregisterNodeRequest { node_id: node_id.clone() }).await.unwrap();
    let (code, _) = Post::signed(&secret, &node_id, "afterwards-0000001", &newer).send(&cp).await;
    assert_eq!(code, 401);
    let (ok, out) =
        python(&["beat", "--state", state.to_str().unwrap(), "--report", report.to_str().unwrap(), "--count", "1"])
            .await;
    assert!(!ok && out.contains("401"), "{out}");
    assert_eq!(footprint(&cp, &node_id).await, (vec![], 0));
}
