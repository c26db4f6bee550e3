//! Access keys: REST requests signed with botocore's SigV4Auth act as the
//! key's project and role; a changed header, body, path, query or date, a
//! clock 20 minutes off, another region or a revoked key is refused and
//! changes nothing. ResolveAccessKey takes the internal token and nothing
//! else does.

use serde_json::{Value, json};
use tether_proto::pb;
use tether_proto::pb::access_key_service_client::AccessKeyServiceClient;
use tonic::Code;

use crate::harness::*;

both_backends!(signed_requests_act_as_the_key_and_any_change_fails, only_the_internal_token_resolves_keys);

const REGION: &str = "test-region-1";

struct Key {
    id: String,
    secret: String,
}

async fn create_key(cp: &ControlPlane, role: pb::Role) -> Key {
    let mut c = AccessKeyServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    let r = c
        .create_access_key(pb::CreateAccessKeyRequest { role: role as i32, description: "test".into() })
        .await
        .unwrap()
        .into_inner();
    Key { id: r.access_key.unwrap().access_key_id, secret: r.secret_access_key }
}

/// One request signed by botocore (tests/sigv4_client.py), optionally
/// changed after signing: (HTTP status, JSON body).
async fn signed(cp: &ControlPlane, key: &Key, call: Value) -> (u16, Value) {
    let mut args = json!({
        "base": format!("http://{}", cp.http_addr),
        "key": key.id,
        "secret": key.secret,
        "region": REGION,
        "query": "",
        "body": "",
    });
    for (k, v) in call.as_object().unwrap() {
        args[k] = v.clone();
    }
    let out = tokio::process::Command::new(venv_python())
        .arg(workspace_root().join("tests/sigv4_client.py"))
        .arg(args.to_string())
        .output()
        .await
        .expect("run the botocore client");
    assert!(out.status.success(), "sigv4_client.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let body = serde_json::from_str(v["body"].as_str().unwrap()).unwrap_or(Value::Null);
    (v["status"].as_u64().unwrap() as u16, body)
}

async fn signed_requests_act_as_the_key_and_any_change_fails(backend: Backend) {
    let opts = Options { extra_args: vec!["--sigv4-region".into(), REGION.into()], ..Options::default() };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let key = create_key(&cp, pb::Role::Operator).await;
    let submit = json!({"method": "POST", "path": "/v1/jobs", "body": json!({"spec": {"exec": {"command": "/bin/true"}}}).to_string()});

    // Signed requests pass, as the key's project and role.
    let (status, body) = signed(&cp, &key, json!({"method": "GET", "path": "/v1/jobs"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = signed(&cp, &key, submit.clone()).await;
    assert_eq!(status, 200, "{body}");
    let job = body["job"]["jobId"].as_str().unwrap().to_owned();
    let (status, body) = signed(&cp, &key, json!({"method": "GET", "path": format!("/v1/jobs/{job}")})).await;
    assert_eq!((status, body["job"]["jobId"].as_str()), (200, Some(job.as_str())), "{body}");
    // A query with characters that are encoded, in an order that is sorted.
    let query = "pageSize=5&labelSelector=team%3Dweb%2Cenv%21%3Dprod";
    let (status, body) = signed(&cp, &key, json!({"method": "GET", "path": "/v1/jobs", "query": query})).await;
    assert_eq!(status, 200, "{body}");
    let who = cp
        .sql_pairs(&format!(
            "SELECT principal, principal_role FROM events WHERE kind = 'job.submitted' AND subject = '{job}'"
        ))
        .await;
    assert_eq!(who, [(key.id.clone(), "operator".to_owned())], "the audit names the access key");
    let (status, body) = signed(&cp, &key, json!({"method": "GET", "path": "/v1/whoami"})).await;
    assert_eq!((status, body["tokenId"].as_str()), (200, Some(key.id.as_str())), "{body}");

    // Any part changed after signing, a clock 20 minutes off, another region.
    let jobs_before = cp.sql_i64("SELECT COUNT(*) FROM jobs").await;
    let other = format!("/v1/jobs/{}", "job-00000000000000000000");
    let cases = [
        ("header", json!({"method": "GET", "path": "/v1/jobs", "tamper": "header"})),
        ("body", json!({"tamper": "body"})),
        ("path", json!({"method": "GET", "path": format!("/v1/jobs/{job}"), "tamper": "path", "tampered_path": other})),
        ("query", json!({"method": "GET", "path": "/v1/jobs", "query": "pageSize=5", "tamper": "query"})),
        ("date", json!({"method": "GET", "path": "/v1/jobs", "tamper": "date"})),
        ("skew", json!({"method": "GET", "path": "/v1/jobs", "skew_seconds": -1200})),
        ("region", json!({"method": "GET", "path": "/v1/jobs", "region": "elsewhere"})),
    ];
    for (what, mut call) in cases {
        if what == "body" {
            call = json!({"method": "POST", "path": "/v1/jobs", "body": submit["body"], "tamper": "body"});
        }
        let (status, body) = signed(&cp, &key, call).await;
        assert_eq!(status, 401, "a changed {what} must fail: {body}");
        assert_eq!(body["code"], "unauthenticated", "{what}: {body}");
    }
    assert_eq!(cp.sql_i64("SELECT COUNT(*) FROM jobs").await, jobs_before, "refused requests changed nothing");

    // A viewer's key reads and may not write.
    let viewer = create_key(&cp, pb::Role::Viewer).await;
    assert_eq!(signed(&cp, &viewer, json!({"method": "GET", "path": "/v1/jobs"})).await.0, 200);
    assert_eq!(signed(&cp, &viewer, submit.clone()).await.0, 403);

    // Listed without secrets; revoked, it fails at once.
    let mut c = AccessKeyServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    let listed = c.list_access_keys(pb::ListAccessKeysRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.access_keys.len(), 2);
    assert!(!format!("{listed:?}").contains(&key.secret), "a list never shows secrets");
    c.revoke_access_key(pb::RevokeAccessKeyRequest { access_key_id: key.id.clone() }).await.unwrap();
    let (status, body) = signed(&cp, &key, json!({"method": "GET", "path": "/v1/jobs"})).await;
    assert_eq!(status, 401, "{body}");
    let got = c.get_access_key(pb::GetAccessKeyRequest { access_key_id: key.id.clone() }).await.unwrap().into_inner();
    assert!(got.access_key.unwrap().revoked_at.is_some());
}

async fn only_the_internal_token_resolves_keys(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let internal = "internal-token-for-the-gateway-0123456789";
    let file = dir.path().join("internal.token");
    std::fs::write(&file, internal).unwrap();
    let opts = Options {
        extra_args: vec![
            "--sigv4-region".into(),
            REGION.into(),
            "--internal-token-file".into(),
            file.display().to_string(),
        ],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let key = create_key(&cp, pb::Role::Support).await;
    let resolve = |token: &str, id: &str| {
        let req = pb::ResolveAccessKeyRequest { access_key_id: id.to_owned(), date: "20261202".into() };
        let token = token.to_owned();
        let cp = &cp;
        async move {
            let mut c = AccessKeyServiceClient::with_interceptor(cp.channel().await, bearer(Some(&token)));
            c.resolve_access_key(req).await.map(tonic::Response::into_inner)
        }
    };
    let r = resolve(internal, &key.id).await.unwrap();
    let k = r.access_key.unwrap();
    assert_eq!((k.role, r.region.as_str(), r.service.as_str()), (pb::Role::Support as i32, REGION, "tether"));
    let expected = tether_auth::sigv4::signing_key(&key.secret, "20261202", REGION, "tether");
    assert_eq!(r.signing_key, expected.to_vec(), "the signing key of the key's secret");
    // Nothing else resolves, and the internal token opens nothing else.
    let err = resolve(&cp.admin_token, &key.id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut jobs =
        pb::job_service_client::JobServiceClient::with_interceptor(cp.channel().await, bearer(Some(internal)));
    let err = jobs.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let (status, _) = cp.http_get_as("/v1/jobs", internal, 0).await;
    assert_eq!(status, 401);
    // A revoked key resolves to nothing.
    let mut c = AccessKeyServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)));
    c.revoke_access_key(pb::RevokeAccessKeyRequest { access_key_id: key.id.clone() }).await.unwrap();
    assert_eq!(resolve(internal, &key.id).await.unwrap_err().code(), Code::NotFound);
}
