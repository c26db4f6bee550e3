//! Transport security: TLS on both ports (grpcurl and curl trusting the
//! control plane's CA, plaintext refused), agents enrolled from a CSR and
//! authenticated by their client certificate, the certificates that must
//! not get in, renewal without leaving `ready`, and a server certificate
//! replaced on disk while agents stay connected.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tether_auth::pki::Ca;
use tether_proto::agent_pb::{self, agent_service_client::AgentServiceClient, heartbeat_request};
use tether_proto::pb;
use tether_types::{NodeId, OrgId};
use tonic::Code;

use crate::harness::*;

both_backends!(
    tls_on_both_ports_and_agents_by_certificate,
    renewal_keeps_the_node_ready,
    certificate_files_are_reloaded_under_live_streams
);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

fn identity(agent: &Agent) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(agent.state_dir.join("identity.json")).unwrap()).unwrap()
}

/// Opens a Heartbeat stream as `node` on `channel` and returns how the
/// control plane answered it: Ok once the stream is accepted.
async fn open_heartbeat(channel: tonic::transport::Channel, node: &str) -> Result<(), tonic::Status> {
    let hello = agent_pb::HeartbeatRequest {
        msg: Some(heartbeat_request::Msg::Hello(agent_pb::Hello {
            node_id: node.to_owned(),
            agent_version: "test".into(),
            capabilities: None,
            session_generation: 1,
            desired_state_version: 0,
        })),
    };
    let mut c = AgentServiceClient::new(channel);
    c.heartbeat(tokio_stream::iter(vec![hello])).await.map(|_| ())
}

/// The certificate a fresh TLS connection to `addr` is served.
async fn served_certificate(addr: &str, ca_pem: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

async fn curl(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().await.unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn status_changes(cp: &ControlPlane) -> impl std::future::Future<Output = i64> + '_ {
    cp.sql_i64("SELECT count(*) FROM events WHERE kind = 'node.status_changed'")
}

async fn tls_on_both_ports_and_agents_by_certificate(backend: Backend) {
    let opts = Options { tls: true, extra_args: vec!["--tls".into(), "auto".into()], ..Options::default() };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let ca = cp.ca_file();

    // grpcurl trusting the CA lists the services; without TLS it gets nowhere.
    let out = tokio::process::Command::new(grpcurl())
        .args(["-cacert", ca.to_str().unwrap(), &cp.grpc_addr, "list"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "grpcurl -cacert list: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "tether.v1.NodeService"));
    let out = tokio::process::Command::new(grpcurl())
        .args(["-plaintext", "-connect-timeout", "2", &cp.grpc_addr, "list"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a plaintext gRPC client must be refused");
    // The HTTP port: https with the CA answers; plaintext does not.
    let (ok, body) = curl(&["--cacert", ca.to_str().unwrap(), &format!("https://{}/readyz", cp.http_addr)]).await;
    assert!(ok && body.contains("ready"), "curl --cacert /readyz: {body}");
    let (ok, body) = curl(&[&format!("http://{}/readyz", cp.http_addr)]).await;
    assert!(!ok && !body.contains("ready"), "plaintext HTTP must be refused: {body}");
    let (ok, _) = curl(&[&format!("https://{}/readyz", cp.http_addr)]).await;
    assert!(!ok, "a client that does not trust the CA must fail the handshake");

    // An agent enrols with a CSR and runs on its certificate alone.
    let agent = Agent::start(&cp, "m1", &[]);
    let node = agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let id = identity(&agent);
    assert_eq!(id["credential"], "", "no macaroon with mTLS: {id}");
    let cert_pem = id["certificate"]["cert_pem"].as_str().expect("a certificate").to_owned();
    let key_pem = id["certificate"]["key_pem"].as_str().expect("a key").to_owned();
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let named = tether_auth::pki::node_cert(&der).unwrap();
    assert_eq!(named.node.as_str(), node);
    let lifetime = named.not_after - named.not_before;
    assert!(lifetime >= 30 * 86_400_000, "30 days by default, got {lifetime} ms");

    // Files holding keys are 0600, their directories 0700.
    assert_eq!(mode(&agent.state_dir.join("identity.json")), 0o600);
    assert_eq!(mode(&agent.state_dir), 0o700);
    assert_eq!(mode(&cp.data_dir().join("ca.key")), 0o600);
    assert_eq!(mode(&cp.data_dir()), 0o700);
    for f in ["admin.token", "join.token"] {
        assert_eq!(mode(&cp.data_dir().join(f)), 0o600, "{f}");
    }
    if backend == Backend::Sqlite {
        for f in ["tether.db", "tether.db-wal", "tether.db-shm"] {
            assert_eq!(mode(&cp.data_dir().join(f)), 0o600, "{f} holds the root keys");
        }
    }

    // Operators keep their bearer tokens over TLS.
    assert_eq!(cp.list_nodes().await.len(), 1);

    // The agent protocol without a certificate, even with a perfectly good
    // operator token, is refused.
    let e = AgentServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
        .heartbeat(tokio_stream::iter(Vec::<agent_pb::HeartbeatRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A certificate for the same node from another CA fails the handshake.
    let now = now_ms();
    let org = OrgId::parse(named.org.as_str()).unwrap();
    let node_id = NodeId::parse(&node).unwrap();
    let (other_key, other_csr) = tether_auth::pki::new_node_key().unwrap();
    let other = Ca::generate("not ours", now).unwrap();
    let forged = other.issue_node(other_csr.as_bytes(), &org, &node_id, now, Duration::from_secs(3600)).unwrap();
    let refused = match cp.channel_with(Some((&forged, &other_key))).await {
        Err(_) => true,
        Ok(ch) => open_heartbeat(ch, &node).await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");
    // An expired certificate from our own CA: refused too.
    let ours = Ca::from_pem(
        &std::fs::read_to_string(&ca).unwrap(),
        &std::fs::read_to_string(cp.data_dir().join("ca.key")).unwrap(),
    )
    .unwrap();
    let (old_key, old_csr) = tether_auth::pki::new_node_key().unwrap();
    let expired =
        ours.issue_node(old_csr.as_bytes(), &org, &node_id, now - 7_200_000, Duration::from_secs(3600)).unwrap();
    let refused = match cp.channel_with(Some((&expired, &old_key))).await {
        Err(_) => true,
        Ok(ch) => open_heartbeat(ch, &node).await.is_err(),
    };
    assert!(refused, "an expired certificate must be refused");
    // A certificate naming another node than Hello: refused.
    let ch = cp.channel_with(Some((&cert_pem, &key_pem))).await.unwrap();
    let e = open_heartbeat(ch, NodeId::from_random([9; 10]).as_str()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(cp.list_nodes().await[0].status, pb::NodeStatus::Ready as i32, "none of that disturbed the node");

    // Deregistered: the agent's streams are closed, it stops, and its
    // certificate opens nothing any more.
    let mut agent = agent;
    cp.nodes().await.deregister_node(pb::DeregisterNodeRequest { node_id: node.clone() }).await.unwrap();
    let exit = agent.wait(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(2), "the agent stops on a rejected identity:\n{}", agent.log());
    let ch = cp.channel_with(Some((&cert_pem, &key_pem))).await.unwrap();
    let e = open_heartbeat(ch, &node).await.unwrap_err();
    assert!(matches!(e.code(), Code::PermissionDenied | Code::NotFound | Code::Unauthenticated), "{e:?}");
}

async fn renewal_keeps_the_node_ready(backend: Backend) {
    let opts = Options {
        tls: true,
        extra_args: vec!["--tls".into(), "auto".into(), "--agent-cert-lifetime".into(), "6s".into()],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let agent = Agent::start(&cp, "r1", &[]);
    agent.node_id().await;
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let first = identity(&agent)["certificate"]["cert_pem"].as_str().unwrap().to_owned();
    let changes = status_changes(&cp).await;

    // Renewal at two thirds of 6 s; watch for three lifetimes' worth of
    // renewals, polling the node's status all along.
    let mut seen = std::collections::HashSet::from([first.clone()]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "only {} certificates in 20 s:\n{}", seen.len(), agent.log());
        let nodes = cp.list_nodes().await;
        assert_eq!(nodes[0].status, pb::NodeStatus::Ready as i32, "the node left ready during renewal");
        if let Some(c) = identity(&agent)["certificate"]["cert_pem"].as_str() {
            seen.insert(c.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the first certificate's expiry, the node is still served.
    let der = CertificateDer::from_pem_slice(first.as_bytes()).unwrap();
    let first_expiry = tether_auth::pki::node_cert(&der).unwrap().not_after;
    eventually(Duration::from_secs(10), "the first certificate to expire", || async {
        (now_ms() > first_expiry + 500).then_some(())
    })
    .await;
    assert_eq!(cp.list_nodes().await[0].status, pb::NodeStatus::Ready as i32);
    assert_eq!(status_changes(&cp).await, changes, "no status change while renewing");
    assert!(cp.log().contains("client certificate renewed"), "the control plane logs renewals");
}

async fn certificate_files_are_reloaded_under_live_streams(backend: Backend) {
    // The operator's own CA and server certificate, as files.
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let ca = Ca::generate("operator CA", now).unwrap();
    let ca_file = dir.path().join("operator-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let write = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let issued = ca.issue_server(&names, now_ms(), Duration::from_secs(3600)).unwrap();
        // Key first: the pair is read whole, and a mismatch keeps the old one.
        std::fs::write(&key, &issued.key_pem).unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap().to_vec()
    };
    let first = write(&["127.0.0.1", "first.test"]);
    let opts = Options {
        tls: true,
        ca_file: Some(ca_file.clone()),
        extra_args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let agents = [Agent::start(&cp, "f1", &[]), Agent::start(&cp, "f2", &[])];
    for a in &agents {
        a.node_id().await;
    }
    cp.wait_nodes(2, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let ca_pem = ca.cert_pem().as_bytes().to_vec();
    assert_eq!(served_certificate(&cp.grpc_addr, &ca_pem).await, first);
    let changes = status_changes(&cp).await;

    // Replaced on disk: new connections get the new one, on both ports.
    let second = write(&["127.0.0.1", "second.test"]);
    eventually(Duration::from_secs(10), "the new certificate to be served", || async {
        (served_certificate(&cp.grpc_addr, &ca_pem).await == second).then_some(())
    })
    .await;
    assert_eq!(served_certificate(&cp.http_addr, &ca_pem).await, second);
    // A broken pair (a key that is not the certificate's) keeps the last good one.
    let other = ca.issue_server(&["127.0.0.1".into()], now, Duration::from_secs(3600)).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    // SIGHUP asks for a reload at once.
    signal(cp.pid(), libc::SIGHUP);
    eventually(Duration::from_secs(10), "the bad pair to be refused", || async {
        cp.log().contains("the key does not fit the certificate").then_some(())
    })
    .await;
    assert_eq!(served_certificate(&cp.grpc_addr, &ca_pem).await, second, "a bad pair changes nothing");

    // The agents' streams never dropped: one session each, no status change.
    for a in &agents {
        assert_eq!(a.log().matches("heartbeat session open").count(), 1, "agent {} reconnected:\n{}", a.name, a.log());
    }
    assert_eq!(status_changes(&cp).await, changes);
    assert!(cp.log().contains("received SIGHUP"));
    let nodes = cp.list_nodes().await;
    assert!(nodes.iter().all(|n| n.status == pb::NodeStatus::Ready as i32));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
