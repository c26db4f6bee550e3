//! Tenancy end to end: isolation between tenants and the role each RPC
//! requires, for every RPC of every `tether.v1` service (walked from the
//! descriptor set, so that a new RPC the tables below do not classify fails
//! the test), and quotas.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use serde_json::{Value, json};
use tether_proto::pb;
use tonic::Code;

use crate::harness::*;

both_backends!(
    every_rpc_keeps_tenants_apart_and_asks_its_role,
    quota_holds_work_until_there_is_room,
    attenuated_tokens_only_narrow,
    rotated_root_keys_and_verify_token,
    every_change_names_who_made_it,
);

/// Calls any RPC by name with a JSON body, through its descriptor.
struct Dyn {
    pool: DescriptorPool,
    channel: tonic::transport::Channel,
}

/// Who calls, and on which project (the `x-tether-project` header).
#[derive(Clone)]
struct As {
    token: String,
    project: Option<String>,
}

impl Dyn {
    async fn new(cp: &ControlPlane) -> Dyn {
        Dyn { pool: DescriptorPool::decode(tether_proto::FILE_DESCRIPTOR_SET).unwrap(), channel: cp.channel().await }
    }

    fn method(&self, name: &str) -> MethodDescriptor {
        let (svc, m) = name.rsplit_once('/').unwrap();
        let svc = self.pool.get_service_by_name(svc).unwrap_or_else(|| panic!("no service {svc}"));
        svc.methods().find(|x| x.name() == m).unwrap_or_else(|| panic!("no method {name}"))
    }

    fn request(&self, m: &MethodDescriptor, who: &As, body: &Value) -> tonic::Request<Vec<u8>> {
        let msg = DynamicMessage::deserialize(m.input(), body.clone())
            .unwrap_or_else(|e| panic!("{}: {body} is not a {}: {e}", m.full_name(), m.input().name()));
        let mut req = tonic::Request::new(msg.encode_to_vec());
        req.metadata_mut().insert("authorization", format!("Bearer {}", who.token).parse().unwrap());
        if let Some(p) = &who.project {
            req.metadata_mut().insert("x-tether-project", p.parse().unwrap());
        }
        req
    }

    fn decode(m: &MethodDescriptor, bytes: &[u8]) -> Value {
        let msg = DynamicMessage::decode(m.output(), bytes).unwrap();
        serde_json::to_value(&msg).unwrap()
    }

    /// A unary call, or a server stream read for up to `listen` (every
    /// message, as a JSON array).
    async fn call(&self, name: &str, who: &As, body: &Value, listen: Duration) -> Result<Value, tonic::Status> {
        let m = self.method(name);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        let path: http::uri::PathAndQuery =
            format!("/{}/{}", m.parent_service().full_name(), m.name()).parse().unwrap();
        let req = self.request(&m, who, body);
        if !m.is_server_streaming() {
            let out = grpc.unary(req, path, RawCodec).await?;
            return Ok(Self::decode(&m, out.get_ref()));
        }
        let mut stream = grpc.server_streaming(req, path, RawCodec).await?.into_inner();
        let mut all = Vec::new();
        let deadline = Instant::now() + listen;
        while let Ok(next) = tokio::time::timeout_at(deadline.into(), stream.message()).await {
            match next? {
                Some(b) => all.push(Self::decode(&m, &b)),
                None => break,
            }
        }
        Ok(Value::Array(all))
    }

    async fn ok(&self, name: &str, who: &As, body: Value) -> Value {
        self.call(name, who, &body, Duration::from_millis(500)).await.unwrap_or_else(|e| panic!("{name} {body}: {e:?}"))
    }
}

/// Every RPC's required role, from its comment in `proto/`: "Requires X."
fn required_roles() -> HashMap<String, String> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(workspace_root().join("proto/tether/v1")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let (mut service, mut comment) = (String::new(), Vec::new());
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim().to_owned();
            } else if let Some(c) = line.strip_prefix("//") {
                comment.push(c.trim().to_owned());
                continue;
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                let text = comment.join(" ");
                let role = text
                    .split("Requires ")
                    .nth(1)
                    .and_then(|r| r.split('.').next())
                    .unwrap_or_else(|| panic!("{service}/{name} states no required role: {text:?}"));
                out.insert(format!("tether.v1.{service}/{name}"), role.to_owned());
            }
            comment.clear();
        }
    }
    out
}

/// A managed pool whose provider is never called (nothing scales it up).
fn pool_spec() -> Value {
    json!({"max": 3, "provider": {"webhook": {"url": "http://127.0.0.1:9/scale"}}})
}

/// The roles tokens are minted with, lowest first in each line.
const ROLES: [&str; 7] = ["viewer", "support", "operator", "admin", "org-viewer", "org-admin", "platform-admin"];

/// Whether a token of `role` has what `need` names (for node operations, on
/// a node of the organisation's pools).
fn includes(role: &str, need: &str) -> bool {
    let project_rank = |r: &str| match r {
        "viewer" | "org-viewer" => 1,
        "support" => 2,
        "operator" => 3,
        "admin" | "org-admin" | "platform-admin" => 4,
        _ => 0,
    };
    let org_rank = |r: &str| match r {
        "org-viewer" => 1,
        "org-admin" | "platform-admin" => 2,
        _ => 0,
    };
    match need {
        "viewer" | "support" | "operator" | "admin" => project_rank(role) >= project_rank(need),
        "org-viewer" => org_rank(role) >= 1,
        "org-admin" | "operator (on the project's dedicated nodes) or org-admin" => org_rank(role) >= 2,
        "platform-admin" => role == "platform-admin",
        // No operator token has it (tests/src/access_keys.rs uses it).
        "the internal token" => false,
        other => panic!("unknown required role {other:?}"),
    }
}

/// How an RPC is checked. `foreign` names B's resources (A's callers must
/// get NOT_FOUND); `own` names A's (for the role matrix); a listing's answer
/// must not mention B.
enum Case {
    Named {
        foreign: Value,
        own: Value,
    },
    Listing(Value),
    /// Names no existing resource (creates; the caller's own credential).
    Unnamed(Value),
}

struct World {
    org1: String,
    org2: String,
    a: String,
    b: String,
    a_job: String,
    b_job: String,
    a_workload: String,
    b_workload: String,
    a_join_token: String,
    b_join_token: String,
    org1_join_token: String,
    org2_join_token: String,
    a_spare_token: String,
    b_token: String,
    a_node: String,
    b_nodes: Vec<String>,
    a_access_key: String,
    b_access_key: String,
    /// A PutSealedSecret body with a real copy for A's node.
    a_sealed: Value,
}

impl World {
    fn case(&self, rpc: &str) -> Option<Case> {
        use Case::*;
        let w = self;
        let sleep = json!({"driver": "exec", "exec": {"command": "/bin/sleep", "args": ["300"]}});
        Some(match rpc.split_once('/').unwrap().1 {
            "ListNodes" => Listing(json!({})),
            "GetNode" => Named { foreign: json!({"nodeId": w.b_nodes[0]}), own: json!({"nodeId": w.a_node}) },
            "WatchNodes" => Listing(json!({"sendInitial": true})),
            "GetNodeInsights" => Named { foreign: json!({"nodeId": w.b_nodes[0]}), own: json!({"nodeId": w.a_node}) },
            "ListNodeRisk" => Listing(json!({"limit": 1000})),
            "IngestUsage" => {
                Unnamed(json!({"records": [{"metric": "egress_bytes", "quantity": "1", "idempotencyKey": "matrix"}]}))
            }
            "GetUsage" => Unnamed(json!({})),
            "QuotePrice" => Unnamed(json!({"quantities": {"cpu_seconds": "10"}})),
            "GetSummary" => {
                Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) }
            }
            "PreviewPayouts" => {
                Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) }
            }
            "SetDesiredState" => Named {
                foreign: json!({"nodeId": w.b_nodes[0], "state": "DESIRED_NODE_STATE_PAUSED"}),
                own: json!({"nodeId": w.a_node, "state": "DESIRED_NODE_STATE_PAUSED"}),
            },
            "DeregisterNode" => Named { foreign: json!({"nodeId": w.b_nodes[1]}), own: json!({"nodeId": w.a_node}) },
            "SubmitJob" => Unnamed(json!({"spec": sleep})),
            "GetJob" | "CancelJob" | "WatchJob" | "StreamJobLogs" => {
                Named { foreign: json!({"jobId": w.b_job}), own: json!({"jobId": w.a_job}) }
            }
            "ListJobs" => Listing(json!({})),
            "CreateWorkload" => Unnamed(json!({"name": "made", "replicas": 0, "spec": sleep})),
            "GetWorkload" | "DeleteWorkload" => {
                Named { foreign: json!({"workloadId": w.b_workload}), own: json!({"workloadId": w.a_workload}) }
            }
            "UpdateWorkload" => Named {
                foreign: json!({"workloadId": w.b_workload, "spec": sleep}),
                own: json!({"workloadId": w.a_workload, "spec": sleep}),
            },
            "ScaleWorkload" => Named {
                foreign: json!({"workloadId": w.b_workload, "replicas": 0}),
                own: json!({"workloadId": w.a_workload, "replicas": 0}),
            },
            "ListWorkloads" => Listing(json!({})),
            "SuggestPlacement" => Listing(json!({"resources": {"cpuMillis": "10"}})),
            "CreateJoinToken" => Unnamed(json!({})),
            "ListJoinTokens" => Listing(json!({"includeInactive": true})),
            "RevokeJoinToken" => {
                Named { foreign: json!({"joinTokenId": w.b_join_token}), own: json!({"joinTokenId": w.a_join_token}) }
            }
            "CreateToken" => Unnamed(json!({"role": "ROLE_VIEWER", "ttl": "60s"})),
            "ListTokens" => Listing(json!({})),
            "RevokeToken" => Named { foreign: json!({"tokenId": w.b_token}), own: json!({"tokenId": w.a_spare_token}) },
            "WhoAmI" => Unnamed(json!({})),
            // Holding a token tells all its answer does: nothing to isolate.
            "VerifyToken" => Unnamed(json!({"token": "tm1_AAAA"})),
            "RotateRootKey" => Unnamed(json!({})),
            "CreateAccessKey" => Unnamed(json!({"role": "ROLE_VIEWER"})),
            "ListAccessKeys" => Listing(json!({})),
            "GetAccessKey" | "RevokeAccessKey" => {
                Named { foreign: json!({"accessKeyId": w.b_access_key}), own: json!({"accessKeyId": w.a_access_key}) }
            }
            "ResolveAccessKey" => Unnamed(json!({"accessKeyId": w.a_access_key})),
            "ListSecretRecipients" | "ListSecrets" => Listing(json!({})),
            "PutSecret" => Unnamed(json!({"name": "made-in-matrix", "value": "dg=="})),
            "PutSealedSecret" => Unnamed(w.a_sealed.clone()),
            "GetSecret" | "DeleteSecret" => {
                Named { foreign: json!({"name": "b-secret"}), own: json!({"name": "a-secret"}) }
            }
            "ListBackgroundTasks" => Unnamed(json!({})),
            "ListEvents" => Listing(json!({"pageSize": 1000})),
            "GetSettings" => {
                Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) }
            }
            "UpdateSettings" => Named {
                foreign: json!({"organizationId": w.org2, "settings": {"fleet": {"keepDownNodes": true}}}),
                own: json!({"organizationId": w.org1, "settings": {"fleet": {"keepDownNodes": true}}}),
            },
            "CreatePool" => Named {
                foreign: json!({"organizationId": w.org2, "name": "intruder", "spec": pool_spec()}),
                own: json!({"organizationId": w.org1, "name": "made-in-matrix", "spec": pool_spec()}),
            },
            "UpdatePool" => Named {
                foreign: json!({"organizationId": w.org2, "name": "matrix", "spec": pool_spec()}),
                own: json!({"organizationId": w.org1, "name": "matrix", "spec": pool_spec()}),
            },
            "GetPool" | "DeletePool" | "ListScaleRequests" => Named {
                foreign: json!({"organizationId": w.org2, "name": "matrix"}),
                own: json!({"organizationId": w.org1, "name": "matrix"}),
            },
            "ListPools" => Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) },
            "ScalePool" => Named {
                foreign: json!({"organizationId": w.org2, "name": "matrix", "desired": 0}),
                own: json!({"organizationId": w.org1, "name": "matrix", "desired": 0}),
            },
            // Everything A's log holds, as it streams past.
            "WatchEvents" => Listing(json!({"sinceSequence": "1"})),
            "CreateOrganization" => Unnamed(json!({"name": "made-in-matrix"})),
            "GetOrganization" | "DeleteOrganization" | "ListPoolGrants" | "ListOrganizationJoinTokens" => {
                Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) }
            }
            "ListOrganizations" | "ListProjects" => Listing(json!({})),
            "UpdateOrganization" => Named {
                foreign: json!({"organizationId": w.org2, "description": "x"}),
                own: json!({"organizationId": w.org1, "description": "x"}),
            },
            "GrantPool" | "RevokePool" => Named {
                foreign: json!({"organizationId": w.org2, "pool": "default", "projectId": w.b}),
                own: json!({"organizationId": w.org1, "pool": "extra", "projectId": w.a}),
            },
            "CreateOrganizationJoinToken" => {
                Named { foreign: json!({"organizationId": w.org2}), own: json!({"organizationId": w.org1}) }
            }
            "RevokeOrganizationJoinToken" => Named {
                foreign: json!({"organizationId": w.org2, "joinTokenId": w.org2_join_token}),
                own: json!({"organizationId": w.org1, "joinTokenId": w.org1_join_token}),
            },
            "CreateProject" => Named {
                foreign: json!({"organizationId": w.org2, "name": "intruder"}),
                own: json!({"organizationId": w.org1, "name": "made-in-matrix"}),
            },
            "GetProject" | "DeleteProject" => {
                Named { foreign: json!({"projectId": w.b}), own: json!({"projectId": w.a}) }
            }
            "UpdateProject" => Named {
                foreign: json!({"projectId": w.b, "description": "x"}),
                own: json!({"projectId": w.a, "description": "x"}),
            },
            "SetProjectQuota" => {
                Named { foreign: json!({"projectId": w.b, "quota": {}}), own: json!({"projectId": w.a, "quota": {}}) }
            }
            _ => return None,
        })
    }

    /// Every id of B's that A must never see.
    fn b_ids(&self) -> Vec<&str> {
        let mut v = vec![
            self.org2.as_str(),
            &self.b,
            &self.b_job,
            &self.b_workload,
            &self.b_join_token,
            &self.org2_join_token,
            &self.b_token,
            &self.b_access_key,
            "b-secret",
        ];
        v.extend(self.b_nodes.iter().map(String::as_str));
        v
    }
}

/// Destructive calls last, and among them the organisation's deletion.
fn order(rpc: &str) -> (bool, bool, bool) {
    let m = rpc.split_once('/').unwrap().1;
    (
        m == "DeleteOrganization",
        m.starts_with("Delete") || m == "DeregisterNode",
        m.starts_with("Cancel") || m.starts_with("Revoke") || m == "SetDesiredState",
    )
}

async fn every_rpc_keeps_tenants_apart_and_asks_its_role(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let d = Dyn::new(&cp).await;
    let platform = As { token: cp.admin_token.clone(), project: None };
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &platform, json!({})).await;
    assert_eq!(me["platformAdmin"], true, "{me}");
    let (org1, a) = (me["organizationId"].as_str().unwrap().to_owned(), me["projectId"].as_str().unwrap().to_owned());

    // A second organisation with project B; each gets tokens minted by the
    // platform administrator acting on the project.
    let org2 = d.ok("tether.v1.OrganizationService/CreateOrganization", &platform, json!({"name": "other"})).await;
    let org2 = org2["organization"]["organizationId"].as_str().unwrap().to_owned();
    let b =
        d.ok("tether.v1.ProjectService/CreateProject", &platform, json!({"organizationId": org2, "name": "b"})).await;
    let b = b["project"]["projectId"].as_str().unwrap().to_owned();
    let on = |p: &str| As { token: cp.admin_token.clone(), project: Some(p.to_owned()) };
    let mint = |p: String, role: &'static str, org_role: &'static str| {
        let d = &d;
        let who = on(&p);
        async move {
            let t = d
                .ok(
                    "tether.v1.TenancyService/CreateToken",
                    &who,
                    json!({"role": role, "orgRole": org_role, "ttl": "3600s"}),
                )
                .await;
            (t["token"].as_str().unwrap().to_owned(), t["tokenId"].as_str().unwrap().to_owned())
        }
    };
    let mut tokens: BTreeMap<&str, As> = BTreeMap::new();
    for (name, role, org_role) in [
        ("viewer", "ROLE_VIEWER", "ORG_ROLE_UNSPECIFIED"),
        ("support", "ROLE_SUPPORT", "ORG_ROLE_UNSPECIFIED"),
        ("operator", "ROLE_OPERATOR", "ORG_ROLE_UNSPECIFIED"),
        ("admin", "ROLE_ADMIN", "ORG_ROLE_UNSPECIFIED"),
        ("org-viewer", "ROLE_ADMIN", "ORG_ROLE_VIEWER"),
        ("org-admin", "ROLE_ADMIN", "ORG_ROLE_ADMIN"),
    ] {
        let (token, _) = mint(a.clone(), role, org_role).await;
        // Organisation tokens act on A by naming it.
        let project = org_role.ne("ORG_ROLE_UNSPECIFIED").then(|| a.clone());
        tokens.insert(name, As { token, project });
    }
    tokens.insert("platform-admin", on(&a));
    let (_, a_spare_token) = mint(a.clone(), "ROLE_VIEWER", "ORG_ROLE_UNSPECIFIED").await;
    let (b_admin, b_token) = mint(b.clone(), "ROLE_ADMIN", "ORG_ROLE_UNSPECIFIED").await;
    let b_admin = As { token: b_admin, project: None };

    // Nodes: A's through the first start's pool; B's dedicated one and one
    // of its organisation's pool "shared", granted to B.
    let a_agent = Agent::start(&cp, "a-pool", &[]);
    let bjt = d.ok("tether.v1.TenancyService/CreateJoinToken", &b_admin, json!({})).await;
    let b_join_token = bjt["joinToken"]["joinTokenId"].as_str().unwrap().to_owned();
    assert_eq!(bjt["joinToken"]["projectId"], b.as_str());
    let b_dedicated = Agent::start_joining(&cp, "b-dedicated", bjt["token"].as_str().unwrap(), &[]);
    let ojt = d
        .ok(
            "tether.v1.OrganizationService/CreateOrganizationJoinToken",
            &platform,
            json!({"organizationId": org2, "pool": "shared"}),
        )
        .await;
    let org2_join_token = ojt["joinToken"]["joinTokenId"].as_str().unwrap().to_owned();
    let b_pool = Agent::start_joining(&cp, "b-pool", ojt["token"].as_str().unwrap(), &[]);
    d.ok(
        "tether.v1.OrganizationService/GrantPool",
        &platform,
        json!({"organizationId": org2, "pool": "shared", "projectId": b}),
    )
    .await;
    let a_node = a_agent.node_id().await;
    let b_nodes = vec![b_dedicated.node_id().await, b_pool.node_id().await];
    let org2_admin = As { token: mint(b.clone(), "ROLE_ADMIN", "ORG_ROLE_ADMIN").await.0, project: None };
    eventually(Duration::from_secs(20), "B's nodes ready", || async {
        let n = d.ok("tether.v1.NodeService/ListNodes", &org2_admin, json!({"status": "NODE_STATUS_READY"})).await;
        (n["nodes"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    let b_sees = d.ok("tether.v1.NodeService/ListNodes", &b_admin, json!({})).await.to_string();
    assert!(b_nodes.iter().all(|n| b_sees.contains(n.as_str())), "B sees its dedicated and granted nodes: {b_sees}");
    assert!(!b_sees.contains(&a_node), "B does not see org1's pool: {b_sees}");

    // Work on both sides, and A's own join tokens.
    let sleep = json!({"spec": {"driver": "exec", "exec": {"command": "/bin/sleep", "args": ["300"]}}});
    let job = |who: As| {
        let d = &d;
        let sleep = sleep.clone();
        async move { d.ok("tether.v1.JobService/SubmitJob", &who, sleep).await["job"]["jobId"].as_str().unwrap().to_owned() }
    };
    let a_admin = tokens["admin"].clone();
    let (a_job, b_job) = (job(a_admin.clone()).await, job(b_admin.clone()).await);
    let workload = |who: As, name: &'static str| {
        let d = &d;
        let spec = sleep["spec"].clone();
        async move {
            let w = d
                .ok(
                    "tether.v1.WorkloadService/CreateWorkload",
                    &who,
                    json!({"name": name, "replicas": 1, "spec": spec}),
                )
                .await;
            w["workload"]["workloadId"].as_str().unwrap().to_owned()
        }
    };
    let (a_workload, b_workload) = (workload(a_admin.clone(), "web").await, workload(b_admin.clone(), "web").await);
    // A keeps a workload the matrix never deletes: the project always has work.
    workload(a_admin.clone(), "keep").await;
    let ajt = d.ok("tether.v1.TenancyService/CreateJoinToken", &a_admin, json!({})).await;
    let a_join_token = ajt["joinToken"]["joinTokenId"].as_str().unwrap().to_owned();
    let org1_jts = d
        .ok("tether.v1.OrganizationService/ListOrganizationJoinTokens", &platform, json!({"organizationId": org1}))
        .await;
    let org1_join_token = org1_jts["joinTokens"][0]["joinTokenId"].as_str().unwrap().to_owned();
    // Quiet before the refusals are counted: every job and replica runs.
    eventually(Duration::from_secs(30), "the jobs and replicas to run", || async {
        for (who, job) in [(&a_admin, &a_job), (&b_admin, &b_job)] {
            let j = d.ok("tether.v1.JobService/GetJob", who, json!({"jobId": job})).await;
            if j["job"]["status"] != "JOB_STATUS_RUNNING" {
                return None;
            }
        }
        for who in [&a_admin, &b_admin] {
            let l = d.ok("tether.v1.WorkloadService/ListWorkloads", who, json!({})).await;
            if !l["workloads"].as_array()?.iter().all(|w| w["runningReplicas"] == 1) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let access_key = |who: As| {
        let d = &d;
        async move {
            let k = d.ok("tether.v1.AccessKeyService/CreateAccessKey", &who, json!({"role": "ROLE_VIEWER"})).await;
            k["accessKey"]["accessKeyId"].as_str().unwrap().to_owned()
        }
    };
    let (a_access_key, b_access_key) = (access_key(a_admin.clone()).await, access_key(b_admin.clone()).await);
    // A secret on each side, sealed to each project's nodes.
    for (who, name) in [(&a_admin, "a-secret"), (&b_admin, "b-secret")] {
        let s = d.ok("tether.v1.SecretService/PutSecret", who, json!({"name": name, "value": "c2VjcmV0"})).await;
        assert!(!s["secret"]["sealedTo"].as_array().unwrap().is_empty(), "{s}");
    }
    let a_sealed = {
        let r = d.ok("tether.v1.SecretService/ListSecretRecipients", &a_admin, json!({"name": "made-sealed"})).await;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rcpt = &r["recipients"][0];
        let (node, key) = (rcpt["nodeId"].as_str().unwrap(), b64.decode(rcpt["publicKey"].as_str().unwrap()).unwrap());
        let version = r["nextVersion"].as_u64().unwrap() as u32;
        let project = r["projectId"].as_str().unwrap();
        let label = tether_auth::seal::CopyLabel { project, name: "made-sealed", version, node };
        let s = tether_auth::seal::seal(&key, &label, b"v").unwrap();
        json!({"name": "made-sealed", "version": version, "sealed": [
            {"nodeId": node, "enc": b64.encode(s.enc), "ciphertext": b64.encode(s.ciphertext), "publicKey": b64.encode(&key)}
        ]})
    };
    // A pool of org1's, for the pool RPCs' own cases.
    d.ok(
        "tether.v1.PoolService/CreatePool",
        &platform,
        json!({"organizationId": org1, "name": "matrix", "spec": pool_spec()}),
    )
    .await;
    let w = World {
        a_sealed,
        a_access_key,
        b_access_key,
        org1,
        org2,
        a,
        b,
        a_job,
        b_job,
        a_workload,
        b_workload,
        a_join_token,
        b_join_token,
        org1_join_token,
        org2_join_token,
        a_spare_token,
        b_token,
        a_node,
        b_nodes,
    };

    // Every RPC is classified and states its role.
    let roles = required_roles();
    let mut rpcs: Vec<String> = Vec::new();
    for svc in d.pool.services().filter(|s| s.package_name() == "tether.v1") {
        for m in svc.methods() {
            let name = format!("{}/{}", svc.full_name(), m.name());
            assert!(w.case(&name).is_some(), "{name} is not classified by the tenancy matrix: add it to World::case");
            assert!(roles.contains_key(&name), "{name} states no required role in its proto comment");
            rpcs.push(name);
        }
    }
    rpcs.sort_by_key(|r| order(r));
    let listen = Duration::from_millis(300);

    // Isolation: A's admin and org1's admin (acting on A) on B's resources.
    let head = cp.sql_i64("SELECT COALESCE(MAX(seq), 0) FROM events").await;
    for role in ["admin", "org-admin"] {
        let who = &tokens[role];
        for rpc in &rpcs {
            match w.case(rpc).unwrap() {
                Case::Named { foreign, .. } => {
                    let err = d.call(rpc, who, &foreign, listen).await.err();
                    assert_eq!(err.as_ref().map(tonic::Status::code), Some(Code::NotFound), "{rpc} {foreign}: {err:?}");
                }
                // Below the required role the answer is a refusal, which
                // tells nothing either.
                Case::Listing(body) if !includes(role, &roles[rpc]) => {
                    let err = d.call(rpc, who, &body, listen).await.err();
                    assert_eq!(err.as_ref().map(tonic::Status::code), Some(Code::PermissionDenied), "{rpc}: {err:?}");
                }
                Case::Listing(body) => {
                    let out = d.call(rpc, who, &body, listen).await.unwrap_or_else(|e| panic!("{rpc}: {e:?}"));
                    let text = out.to_string();
                    for id in w.b_ids() {
                        assert!(!text.contains(id), "{rpc} shows B's {id}: {text}");
                    }
                }
                Case::Unnamed(_) => {}
            }
        }
    }
    assert_eq!(cp.sql_i64("SELECT COALESCE(MAX(seq), 0) FROM events").await, head, "refused calls changed something");

    // A watch of A's nodes hears nothing of B's, even as they change.
    let watch = {
        let d = Dyn::new(&cp).await;
        let who = tokens["viewer"].clone();
        tokio::spawn(async move {
            d.call("tether.v1.NodeService/WatchNodes", &who, &json!({}), Duration::from_secs(3)).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in &w.b_nodes {
        d.ok(
            "tether.v1.NodeService/SetDesiredState",
            &org2_admin,
            json!({"nodeId": n, "state": "DESIRED_NODE_STATE_PAUSED", "reason": "isolation"}),
        )
        .await;
    }
    d.ok(
        "tether.v1.NodeService/SetDesiredState",
        &platform,
        json!({"nodeId": w.a_node, "state": "DESIRED_NODE_STATE_ACTIVE"}),
    )
    .await;
    let seen = watch.await.unwrap().to_string();
    assert!(seen.contains(&w.a_node), "A's own change arrives: {seen}");
    for id in w.b_ids() {
        assert!(!seen.contains(id), "the watch shows B's {id}: {seen}");
    }
    // And over REST (SSE), likewise.
    let (status, sse) = cp.http_get_as("/v1/nodes:watch?sendInitial=true", &tokens["viewer"].token, 1000).await;
    assert_eq!(status, 200);
    assert!(sse.contains(&w.a_node) && !w.b_ids().iter().any(|id| sse.contains(id)), "{sse}");

    // Roles: every role below the required one is refused and changes nothing.
    let head = cp.sql_i64("SELECT COALESCE(MAX(seq), 0) FROM events").await;
    for rpc in &rpcs {
        let need = &roles[rpc];
        let body = match w.case(rpc).unwrap() {
            Case::Named { own, .. } => own,
            Case::Listing(b) | Case::Unnamed(b) => b,
        };
        for role in ROLES.iter().filter(|r| !includes(r, need)) {
            let err = d.call(rpc, &tokens[role], &body, listen).await.err();
            assert_eq!(
                err.as_ref().map(tonic::Status::code),
                Some(Code::PermissionDenied),
                "{rpc} needs {need}; {role} got {err:?}"
            );
        }
    }
    // A read-only platform administrator may call exactly the RPCs marked
    // read-only (`(tether.v1.read_only)`), whatever its role allows.
    let read_only = As { token: attenuate_offline(&cp.admin_token, "--read-only").await, project: Some(w.a.clone()) };
    let marked = read_only_rpcs();
    for rpc in &rpcs {
        if !ROLES.iter().any(|r| includes(r, &roles[rpc])) {
            continue;
        }
        let body = match w.case(rpc).unwrap() {
            Case::Named { own, .. } => own,
            Case::Listing(b) | Case::Unnamed(b) => b,
        };
        let res = d.call(rpc, &read_only, &body, listen).await;
        if marked.contains(rpc) {
            assert!(res.is_ok(), "{rpc} is read-only; a read-only token got {res:?}");
        } else {
            let err = res.err();
            assert_eq!(err.as_ref().map(tonic::Status::code), Some(Code::PermissionDenied), "{rpc}: {err:?}");
            assert!(err.unwrap().message().contains("read-only"), "{rpc}");
        }
    }
    assert!(marked.len() >= 15 && marked.len() < rpcs.len(), "{marked:?}");
    assert_eq!(cp.sql_i64("SELECT COALESCE(MAX(seq), 0) FROM events").await, head, "refused calls changed something");

    // ... and the lowest role that has it is not refused (destructive calls
    // last). RotateRootKey among them: every token above keeps working.
    for rpc in &rpcs {
        let need = &roles[rpc];
        let body = match w.case(rpc).unwrap() {
            Case::Named { own, .. } => own,
            Case::Listing(b) | Case::Unnamed(b) => b,
        };
        // The internal token's RPC is tried with it in tests/src/access_keys.rs.
        let Some(role) = ROLES.iter().find(|r| includes(r, need)) else { continue };
        match d.call(rpc, &tokens[role], &body, listen).await {
            Ok(_) => {}
            // Deleting A (it has work) or org1 (it has projects) is refused for that.
            Err(e) if e.code() == Code::FailedPrecondition && rpc.contains("/Delete") => {}
            Err(e) => panic!("{rpc} with {role} (needs {need}): {e:?}"),
        }
    }

    // A project operator may operate its dedicated nodes, not its pools'.
    d.ok(
        "tether.v1.NodeService/SetDesiredState",
        &b_admin,
        json!({"nodeId": w.b_nodes[0], "state": "DESIRED_NODE_STATE_ACTIVE"}),
    )
    .await;
    let err = d
        .call(
            "tether.v1.NodeService/SetDesiredState",
            &b_admin,
            &json!({"nodeId": w.b_nodes[1], "state": "DESIRED_NODE_STATE_ACTIVE"}),
            listen,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A deleted project's tokens stop at once; force stops its work first.
    let err = d.call("tether.v1.ProjectService/DeleteProject", &platform, &json!({"projectId": w.b}), listen).await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    d.ok("tether.v1.ProjectService/DeleteProject", &platform, json!({"projectId": w.b, "force": true})).await;
    let err = d.call("tether.v1.JobService/ListJobs", &b_admin, &json!({}), listen).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let job = d.ok("tether.v1.JobService/GetJob", &on(&w.a), json!({"jobId": w.a_job})).await;
    assert_eq!(job["job"]["status"], "JOB_STATUS_CANCELLED", "cancelled by the matrix above: {job}");
}

/// With a 1000 m CPU quota, three 500 m jobs: two run, the third waits with
/// the reason "quota" and runs once one finishes.
async fn quota_holds_work_until_there_is_room(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let d = Dyn::new(&cp).await;
    let platform = As { token: cp.admin_token.clone(), project: None };
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &platform, json!({})).await;
    let project = me["projectId"].as_str().unwrap().to_owned();
    let _agent = Agent::start(&cp, "q", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let p = d
        .ok(
            "tether.v1.ProjectService/SetProjectQuota",
            &platform,
            json!({"projectId": project, "quota": {"cpuMillis": "1000"}}),
        )
        .await;
    assert_eq!(p["project"]["quota"]["cpuMillis"], "1000", "{p}");
    let marker = cp.dir.path().join("release");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", marker.display());
    let spec = |s: &str| json!({"spec": {"exec": {"command": "/bin/sh", "args": ["-c", s]}, "resources": {"cpuMillis": "500"}}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let j = d.ok("tether.v1.JobService/SubmitJob", &platform, spec(&script)).await;
        ids.push(j["job"]["jobId"].as_str().unwrap().to_owned());
    }
    let status = |id: String| {
        let d = &d;
        let platform = platform.clone();
        async move { d.ok("tether.v1.JobService/GetJob", &platform, json!({"jobId": id})).await["job"].clone() }
    };
    for id in &ids {
        eventually(Duration::from_secs(20), "the first two run", || async {
            (status(id.clone()).await["status"] == "JOB_STATUS_RUNNING").then_some(())
        })
        .await;
    }
    let third = d.ok("tether.v1.JobService/SubmitJob", &platform, spec("true")).await;
    let third = third["job"]["jobId"].as_str().unwrap().to_owned();
    // Several passes go by; it stays pending, for the quota.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = status(third.clone()).await;
    assert_eq!(j["status"], "JOB_STATUS_PENDING", "{j}");
    assert!(j["pendingReason"].as_str().unwrap_or("").starts_with("quota: cpu 1000m in use"), "{j}");
    let usage = d.ok("tether.v1.ProjectService/GetProject", &platform, json!({"projectId": project})).await;
    assert_eq!(usage["usage"]["cpuMillis"], "1000", "{usage}");
    assert_eq!(usage["usage"]["allocations"], "2", "{usage}");
    let s = d
        .ok("tether.v1.PlacementService/SuggestPlacement", &platform, json!({"resources": {"cpuMillis": "500"}}))
        .await;
    assert!(s["quotaExceeded"].as_str().unwrap_or("").starts_with("quota:"), "{s}");
    assert!(s.get("candidates").is_none(), "{s}");
    // One finishes: the third runs (and finishes).
    std::fs::write(&marker, b"").unwrap();
    eventually(Duration::from_secs(20), "the third to run once there is room", || async {
        (status(third.clone()).await["status"] == "JOB_STATUS_SUCCEEDED").then_some(())
    })
    .await;
}

/// The RPCs the protos mark `(tether.v1.read_only) = true`, named as the
/// matrix names them (`tether.v1.Service/Method`).
fn read_only_rpcs() -> std::collections::HashSet<String> {
    tether_proto::rules::read_only_methods().iter().map(|m| m.trim_start_matches('/').to_owned()).collect()
}

/// `tetherctl --token T tokens attenuate ARGS`: the narrowed token.
async fn attenuate_offline(token: &str, args: &str) -> String {
    let out = tokio::process::Command::new(bin_dir().join("tetherctl"))
        .args(["--token", token, "tokens", "attenuate"])
        .args(args.split_whitespace())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "attenuate {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `tetherctl tokens attenuate` narrows a token offline; the control plane
/// honours the narrower role and expiry, a wider caveat changes nothing, and
/// revoking the original stops every copy at once.
async fn attenuated_tokens_only_narrow(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let d = Dyn::new(&cp).await;
    let platform = As { token: cp.admin_token.clone(), project: None };
    // An operator token: the project's last admin token could not be revoked below.
    let t =
        d.ok("tether.v1.TenancyService/CreateToken", &platform, json!({"role": "ROLE_OPERATOR", "ttl": "3600s"})).await;
    let (admin, admin_id) = (t["token"].as_str().unwrap().to_owned(), t["tokenId"].as_str().unwrap().to_owned());
    let viewer = attenuate_offline(&admin, "--role viewer --ttl 10m").await;
    let as_viewer = As { token: viewer.clone(), project: None };
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &as_viewer, json!({})).await;
    assert_eq!(me["role"], "ROLE_VIEWER", "{me}");
    assert_eq!(me["tokenId"], admin_id.as_str(), "the same token, narrowed");
    assert!(me["expiresAt"].as_str().unwrap() < t["expiresAt"].as_str().unwrap(), "{me} expires before {t}");
    d.ok("tether.v1.JobService/ListJobs", &as_viewer, json!({})).await;
    let spec = json!({"spec": {"exec": {"command": "/bin/true"}}});
    let err = d.call("tether.v1.JobService/SubmitJob", &as_viewer, &spec, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A wider role on top narrows nothing back.
    let wider = As { token: attenuate_offline(&viewer, "--role admin").await, project: None };
    assert_eq!(d.ok("tether.v1.TenancyService/WhoAmI", &wider, json!({})).await["role"], "ROLE_VIEWER");
    let err = d.call("tether.v1.JobService/SubmitJob", &wider, &spec, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // One node: calls about it, no other node, nothing else.
    let agents = [Agent::start(&cp, "one", &[]), Agent::start(&cp, "two", &[])];
    let (one, two) = (agents[0].node_id().await, agents[1].node_id().await);
    cp.wait_nodes(2, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let on_node = As { token: attenuate_offline(&admin, &format!("--node {one}")).await, project: None };
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &on_node, json!({})).await;
    assert_eq!(me["nodeId"], one.as_str(), "{me}");
    d.ok("tether.v1.NodeService/GetNode", &on_node, json!({"nodeId": one})).await;
    let err = d.call("tether.v1.NodeService/GetNode", &on_node, &json!({"nodeId": two}), Duration::ZERO).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    let listed = d.ok("tether.v1.NodeService/ListNodes", &on_node, json!({})).await.to_string();
    assert!(listed.contains(&one) && !listed.contains(&two), "{listed}");
    let watched = d.ok("tether.v1.NodeService/WatchNodes", &on_node, json!({"sendInitial": true})).await.to_string();
    assert!(watched.contains(&one) && !watched.contains(&two), "{watched}");
    d.ok(
        "tether.v1.NodeService/SetDesiredState",
        &platform,
        json!({"nodeId": one, "state": "DESIRED_NODE_STATE_ACTIVE"}),
    )
    .await;
    let err = d.call("tether.v1.JobService/SubmitJob", &on_node, &spec, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("confined to node"), "{err:?}");

    // One workload: likewise.
    let wl = |name: &str| json!({"name": name, "replicas": 0, "spec": {"exec": {"command": "/bin/true"}}});
    let w1 = d.ok("tether.v1.WorkloadService/CreateWorkload", &platform, wl("w1")).await;
    let w2 = d.ok("tether.v1.WorkloadService/CreateWorkload", &platform, wl("w2")).await;
    let (w1, w2) = (w1["workload"]["workloadId"].as_str().unwrap(), w2["workload"]["workloadId"].as_str().unwrap());
    let on_w1 = As { token: attenuate_offline(&admin, &format!("--workload {w1}")).await, project: None };
    d.ok("tether.v1.WorkloadService/ScaleWorkload", &on_w1, json!({"workloadId": w1, "replicas": 0})).await;
    let err = d
        .call(
            "tether.v1.WorkloadService/ScaleWorkload",
            &on_w1,
            &json!({"workloadId": w2, "replicas": 1}),
            Duration::ZERO,
        )
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    let listed = d.ok("tether.v1.WorkloadService/ListWorkloads", &on_w1, json!({})).await.to_string();
    assert!(listed.contains(w1) && !listed.contains(w2), "{listed}");
    let err = d.call("tether.v1.WorkloadService/CreateWorkload", &on_w1, &wl("w3"), Duration::ZERO).await;
    assert_eq!(err.unwrap_err().code(), Code::PermissionDenied);
    let err = d.call("tether.v1.JobService/ListJobs", &on_w1, &json!({}), Duration::ZERO).await;
    assert_eq!(err.unwrap_err().code(), Code::PermissionDenied);

    // Read-only: reads pass, changes are refused, also over REST.
    let ro = attenuate_offline(&admin, "--read-only").await;
    let as_ro = As { token: ro.clone(), project: None };
    d.ok("tether.v1.JobService/ListJobs", &as_ro, json!({})).await;
    let err = d.call("tether.v1.JobService/SubmitJob", &as_ro, &spec, Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let (code, body) = cp.http_post_as("/v1/jobs", &ro, &spec.to_string()).await;
    assert_eq!(code, 403, "{body}");
    let (code, _) = cp.http_get_as("/v1/jobs", &ro, 0).await;
    assert_eq!(code, 200);

    // Revoking the original stops its narrowed copies at once.
    d.ok("tether.v1.TenancyService/RevokeToken", &platform, json!({"tokenId": admin_id})).await;
    for who in [&as_viewer, &wider, &on_node, &on_w1, &as_ro] {
        let err = d.call("tether.v1.JobService/ListJobs", who, &json!({}), Duration::ZERO).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
}

/// RotateRootKey: new tokens are signed with the new key, old ones stay
/// valid (also after a restart); VerifyToken tells another service what a
/// token grants, and that a revoked or forged one is not valid.
async fn rotated_root_keys_and_verify_token(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let d = Dyn::new(&cp).await;
    let platform = As { token: cp.admin_token.clone(), project: None };
    let mint = |role: &'static str| {
        let (d, platform) = (&d, platform.clone());
        async move {
            let t =
                d.ok("tether.v1.TenancyService/CreateToken", &platform, json!({"role": role, "ttl": "3600s"})).await;
            (t["token"].as_str().unwrap().to_owned(), t["tokenId"].as_str().unwrap().to_owned())
        }
    };
    let (old, _) = mint("ROLE_OPERATOR").await;
    let old = As { token: old, project: None };
    assert_eq!(d.ok("tether.v1.TenancyService/WhoAmI", &old, json!({})).await.get("rootKeyId"), None, "key 0");
    let r = d.ok("tether.v1.TenancyService/RotateRootKey", &platform, json!({})).await;
    assert_eq!(r["rootKeyId"], 1, "{r}");
    assert_eq!(r["rootKeyIds"], json!([0, 1]), "{r}");
    let err = d.call("tether.v1.TenancyService/RotateRootKey", &old, &json!({}), Duration::ZERO).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "only the platform administrator rotates");

    let (new, new_id) = mint("ROLE_VIEWER").await;
    let new = As { token: new, project: None };
    assert_eq!(d.ok("tether.v1.TenancyService/WhoAmI", &new, json!({})).await["rootKeyId"], 1);
    d.ok("tether.v1.JobService/ListJobs", &old, json!({})).await;

    let v = d.ok("tether.v1.TenancyService/VerifyToken", &old, json!({"token": new.token})).await;
    assert_eq!(
        (v["valid"].clone(), v["role"].clone(), v["rootKeyId"].clone()),
        (json!(true), json!("ROLE_VIEWER"), json!(1)),
        "{v}"
    );
    assert_eq!(v["tokenId"], new_id.as_str());
    assert!(v["projectId"].as_str().is_some_and(|p| p.starts_with("prj-")), "{v}");
    // Over REST, as the storage reference system's /v1/tokens/verify.
    let (code, body) = cp.http_post_as("/v1/tokens:verify", &old.token, &json!({"token": new.token}).to_string()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"valid\":true"), "{body}");
    // A narrowed copy answers narrowed.
    let narrowed = attenuate_offline(&new.token, "--read-only --ttl 5m").await;
    let v = d.ok("tether.v1.TenancyService/VerifyToken", &old, json!({"token": narrowed})).await;
    assert_eq!((v["valid"].clone(), v["readOnly"].clone()), (json!(true), json!(true)), "{v}");
    // Forged, garbage, revoked: not valid, and said why.
    let mut forged = new.token.clone().into_bytes();
    let i = forged.len() - 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    for bad in [String::from_utf8(forged).unwrap(), "tm1_garbage".to_owned()] {
        let v = d.ok("tether.v1.TenancyService/VerifyToken", &old, json!({"token": bad})).await;
        assert_eq!(v.get("valid"), None, "not valid: {v}");
        assert!(!v["reason"].as_str().unwrap().is_empty(), "{v}");
    }
    d.ok("tether.v1.TenancyService/RevokeToken", &platform, json!({"tokenId": new_id})).await;
    let v = d.ok("tether.v1.TenancyService/VerifyToken", &old, json!({"token": new.token})).await;
    assert!(v.get("valid").is_none() && v["reason"].as_str().unwrap().contains("revoked"), "{v}");

    // The keys are durable: after a restart both generations still verify.
    let (newer, _) = mint("ROLE_VIEWER").await;
    cp.stop(libc::SIGTERM).await;
    cp.restart().await;
    let d = Dyn::new(&cp).await;
    for t in [&old.token, &newer] {
        d.ok("tether.v1.JobService/ListJobs", &As { token: t.clone(), project: None }, json!({})).await;
    }
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &platform, json!({})).await;
    assert!(me["platformAdmin"] == true, "{me}");
}

/// Audit: each change's event records its principal (token, node, join
/// token) and the role it acted with, over gRPC and REST alike.
async fn every_change_names_who_made_it(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let d = Dyn::new(&cp).await;
    let platform = As { token: cp.admin_token.clone(), project: None };
    let me = d.ok("tether.v1.TenancyService/WhoAmI", &platform, json!({})).await;
    let platform_id = me["tokenId"].as_str().unwrap().to_owned();
    let t = d.ok("tether.v1.TenancyService/CreateToken", &platform, json!({"role": "ROLE_OPERATOR"})).await;
    let (op, op_id) = (t["token"].as_str().unwrap().to_owned(), t["tokenId"].as_str().unwrap().to_owned());
    let agent = Agent::start(&cp, "audited", &[]);
    let node = agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let spec = json!({"spec": {"exec": {"command": "/bin/true"}}});
    let job = d.ok("tether.v1.JobService/SubmitJob", &As { token: op.clone(), project: None }, spec.clone()).await;
    let job = job["job"]["jobId"].as_str().unwrap().to_owned();
    let (code, body) = cp.http_post_as("/v1/jobs", &op, &spec.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let rest_job = serde_json::from_str::<Value>(&body).unwrap()["job"]["jobId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), "the job to finish", || async {
        let j = d.ok("tether.v1.JobService/GetJob", &platform, json!({"jobId": job})).await;
        (j["job"]["status"] == "JOB_STATUS_SUCCEEDED").then_some(())
    })
    .await;
    let who = |kind: &str, subject: &str| {
        let q = format!(
            "SELECT principal, principal_role FROM events WHERE kind = '{kind}' AND subject = '{subject}' ORDER BY seq"
        );
        let cp = &cp;
        async move { cp.sql_pairs(&q).await }
    };
    assert_eq!(who("token.created", &op_id).await, [(platform_id.clone(), "platform-admin".into())]);
    assert_eq!(who("job.submitted", &job).await, [(op_id.clone(), "operator".into())]);
    assert_eq!(who("job.submitted", &rest_job).await, [(op_id.clone(), "operator".into())], "over REST");
    let jt = cp
        .sql_pairs(&format!(
            "SELECT principal, principal_role FROM events WHERE kind = 'node.registered' AND subject = '{node}'"
        ))
        .await;
    assert!(jt.len() == 1 && jt[0].0.starts_with("jt-") && jt[0].1 == "join-token", "{jt:?}");
    let acked = who("node.desired_state_acked", &node).await;
    assert!(acked.iter().all(|r| r == &(node.clone(), "agent".to_owned())), "{acked:?}");
    // The agent's own reports are the node's doing.
    let reports = cp
        .sql_pairs(&format!(
            "SELECT principal, principal_role FROM events WHERE subject = '{job}' \
             AND kind IN ('job.running', 'job.succeeded')"
        ))
        .await;
    assert!(reports.len() == 2 && reports.iter().all(|r| r == &(node.clone(), "agent".to_owned())), "{reports:?}");
    // The scheduler's placement is the control plane's own.
    let placed = cp
        .sql_pairs(&format!(
            "SELECT principal, principal_role FROM events WHERE kind = 'job.scheduled' AND subject = '{job}'"
        ))
        .await;
    assert!(!placed.is_empty() && placed.iter().all(|r| r.0.is_empty()), "{placed:?}");
}
