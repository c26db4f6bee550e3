//! Sealed secrets end to end: tetherctl seals a value on the client, a job
//! gets it as an environment variable and as a 0400 file that is gone
//! after the job; a plaintext put over REST is sealed on arrival; a node
//! enrolled later gets a copy from a node that holds one and runs work
//! that needs it; the database (a SQL dump, the SQLite files' bytes) and
//! the control plane's log never hold a plaintext.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tether_proto::pb;

use crate::harness::*;

both_backends!(secrets_reach_jobs_sealed_and_a_later_node_gets_them);

const DB_PASSWORD: &str = "pl41n-db-password-7f3a9c1e";
const API_KEY: &str = "pl41n-api-key-42c81b0d";

/// A script that writes what the job got into `marks` (outside the
/// control plane, whose log store would otherwise hold it) and checks the
/// file's mode.
fn script(marks: &Path, tag: &str) -> String {
    let m = marks.display();
    format!(
        r#"set -e
d="$TETHER_SECRETS_DIR"
printf %s "$DB_PASSWORD" > {m}/{tag}-env
cp "$d/db" {m}/{tag}-file
stat -c %a "$d/db" > {m}/{tag}-mode
printf %s "$d" > {m}/{tag}-dir
if [ -n "$API_KEY_FILE" ]; then cp "$d/$API_KEY_FILE" {m}/{tag}-api; fi"#
    )
}

fn read(marks: &Path, name: &str) -> String {
    std::fs::read_to_string(marks.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn secrets_reach_jobs_sealed_and_a_later_node_gets_them(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let marks = tempfile::tempdir().unwrap();
    let first = Agent::start(&cp, "first", &["--labels", "role=first"]);
    let first_id = first.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let admin = cp.admin_token.clone();

    // Sealed by tetherctl, to the one recipient.
    let (code, out, err) = tetherctl(&cp, &admin, &["secrets", "recipients"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&first_id), "{out}");
    let (code, out, err) = tetherctl(&cp, &admin, &["secrets", "put", "db-password", "--value", DB_PASSWORD]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "db-password version 1 sealed to 1 node(s)");
    let (code, out, err) = tetherctl(&cp, &admin, &["-o", "json", "secrets", "get", "db-password"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["secret"]["sealedTo"], json!([first_id]), "{v}");

    // A job gets it as a variable and as a 0400 file, gone afterwards.
    let (code, out, err) = tetherctl(
        &cp,
        &admin,
        &[
            "jobs",
            "submit",
            "--wait",
            "-l",
            "role=first",
            "--secret",
            "db-password=env:DB_PASSWORD",
            "--secret",
            "db-password:1=file:db",
            "--",
            "/bin/sh",
            "-c",
            &script(marks.path(), "one"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read(marks.path(), "one-env"), DB_PASSWORD);
    assert_eq!(read(marks.path(), "one-file"), DB_PASSWORD);
    assert_eq!(read(marks.path(), "one-mode").trim(), "400");
    let dir = read(marks.path(), "one-dir");
    if std::fs::read_to_string("/proc/self/mounts").unwrap().contains(" /dev/shm tmpfs ") {
        assert!(dir.starts_with("/dev/shm/"), "on the tmpfs: {dir}");
    }
    assert!(!Path::new(&dir).exists(), "{dir} is removed with the job");

    // A plaintext put over REST is sealed on arrival.
    let b64 = base64::engine::general_purpose::STANDARD.encode(API_KEY);
    let (status, body) =
        cp.http_post_as("/v1/secrets", &admin, &json!({"name": "api-key", "value": b64}).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["secret"]["version"].clone(), v["secret"]["sealedTo"].clone()), (json!(1), json!([first_id])));
    // Bad puts are refused and store nothing.
    let (status, body) =
        cp.http_post_as("/v1/secrets", &admin, &json!({"name": "Bad_Name", "value": b64}).to_string()).await;
    assert_eq!(status, 400, "{body}");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 64 * 1024 + 1]);
    let (status, body) =
        cp.http_post_as("/v1/secrets", &admin, &json!({"name": "big", "value": big}).to_string()).await;
    assert_eq!(status, 400, "{body}");
    let forged = json!({"name": "forged", "version": 1, "sealed": [{"nodeId": first_id, "enc": b64, "ciphertext": b64, "publicKey": b64}]});
    let (status, body) = cp.http_post_as("/v1/secrets:sealed", &admin, &forged.to_string()).await;
    assert_eq!(status, 409, "a copy sealed to another key than the node's: {body}");
    let (status, body) =
        cp.http_post_as("/v1/secrets:sealed", &admin, &json!({"name": "forged", "version": 1}).to_string()).await;
    assert_eq!(status, 409, "no copies: {body}");
    let (code, out, err) = tetherctl(&cp, &admin, &["-o", "json", "secrets", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = serde_json::from_str::<Value>(&out).unwrap()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["api-key", "db-password"]);

    // A node enrolled later: a holder seals both again for it, and work
    // that needs them runs there.
    let second = Agent::start(&cp, "second", &["--labels", "role=second"]);
    let second_id = second.node_id().await;
    cp.wait_nodes(2, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut client = secrets_client(&cp).await;
    for name in ["db-password", "api-key"] {
        eventually(Duration::from_secs(20), "the newcomer to hold a copy", || {
            let mut client = client.clone();
            let second_id = second_id.clone();
            async move {
                let s = client.get_secret(pb::GetSecretRequest { name: name.into(), version: 0 }).await.ok()?;
                s.into_inner().secret?.sealed_to.contains(&second_id).then_some(())
            }
        })
        .await;
    }
    let spec = pb::ExecSpec {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script(marks.path(), "two")],
        env: [("API_KEY_FILE".to_string(), "api".to_string())].into(),
        secrets: vec![
            pb::SecretRef { name: "db-password".into(), version: 0, env: "DB_PASSWORD".into(), file: "db".into() },
            pb::SecretRef { name: "api-key".into(), version: 1, env: String::new(), file: "api".into() },
        ],
        ..Default::default()
    };
    let req = pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            exec: Some(spec),
            constraints: Some(pb::Constraints { label_selector: "role=second".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut jobs = cp.jobs().await;
    let job = jobs.submit_job(req).await.unwrap().into_inner().job.unwrap();
    let done = eventually(Duration::from_secs(30), "the job on the newcomer", || {
        let jobs = jobs.clone();
        let id = job.job_id.clone();
        async move {
            let j = crate::work::get_job(&jobs, &id).await;
            (j.status >= pb::JobStatus::Succeeded as i32).then_some(j)
        }
    })
    .await;
    assert_eq!(done.status, pb::JobStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.node_id, second_id);
    assert_eq!(read(marks.path(), "two-env"), DB_PASSWORD);
    assert_eq!(read(marks.path(), "two-api"), API_KEY);
    assert!(!Path::new(&read(marks.path(), "two-dir")).exists());

    // Deleting a secret: its copies go, and work that needs it does not place.
    let (code, out, err) = tetherctl(&cp, &admin, &["secrets", "delete", "api-key"]).await;
    assert_eq!((code, out.trim()), (0, "deleted api-key version(s) 1"), "{err}");
    let gone = client.get_secret(pb::GetSecretRequest { name: "api-key".into(), version: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let needs_deleted = pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            exec: Some(pb::ExecSpec {
                command: "/bin/true".into(),
                secrets: vec![pb::SecretRef { name: "api-key".into(), file: "api".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let waiting = jobs.submit_job(needs_deleted).await.unwrap().into_inner().job.unwrap();
    let j = eventually(Duration::from_secs(10), "a pending reason", || {
        let jobs = jobs.clone();
        let id = waiting.job_id.clone();
        async move {
            let j = crate::work::get_job(&jobs, &id).await;
            (!j.pending_reason.is_empty()).then_some(j)
        }
    })
    .await;
    assert_eq!((j.status, j.pending_reason.as_str()), (pb::JobStatus::Pending as i32, "secret api-key not found"));

    // Nowhere in the database, nor in the control plane's log, in the clear.
    let db = cp.database_bytes().await;
    assert!(contains(&db, b"db-password"), "the dump holds the secrets' rows");
    for plain in [DB_PASSWORD, API_KEY, b64.as_str()] {
        assert!(!contains(&db, plain.as_bytes()), "the database holds {plain}");
        assert!(!cp.log().contains(plain), "the control plane's log holds {plain}");
    }
    drop((first, second));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn secrets_client(cp: &ControlPlane) -> pb::secret_service_client::SecretServiceClient<Authed> {
    pb::secret_service_client::SecretServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
}
