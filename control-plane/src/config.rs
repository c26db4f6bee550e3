//! Configuration: flags, `TETHER_*` environment variables and an optional TOML
//! file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;

/// The Tether control plane.
#[derive(Debug, Clone, Parser)]
#[command(name = "tether-control-plane", version, about)]
pub struct Config {
    /// TOML file with any of these settings (snake_case keys); flags and env win.
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address of the gRPC API (agents and operators). Port 0 picks a free port
    /// and writes it to `<data-dir>/grpc.addr`.
    #[arg(long, env = "TETHER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP endpoints: /healthz, /readyz, /metrics.
    #[arg(long, env = "TETHER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Where the embedded database, bootstrap tokens and address files live.
    #[arg(long, env = "TETHER_DATA_DIR", default_value = "./tether-data")]
    pub data_dir: PathBuf,

    /// `postgres://...` selects PostgreSQL; unset means SQLite in the data dir.
    #[arg(long, env = "TETHER_DATABASE_URL")]
    pub database_url: Option<String>,

    /// How often agents beat; the control plane tells them.
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Random extra delay agents add to each interval, spreading beats out.
    /// Defaults to a fifth of the interval.
    #[arg(long, env = "TETHER_HEARTBEAT_JITTER", value_parser = humantime::parse_duration)]
    pub heartbeat_jitter: Option<Duration>,

    /// Silence after which a node becomes `unreachable`.
    #[arg(long, env = "TETHER_HEARTBEAT_GRACE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_grace: Duration,

    /// Silence after which a node becomes `down` (its work is lost).
    #[arg(long, env = "TETHER_DOWN_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub down_after: Duration,

    /// A node `down` for longer than this is deregistered (0s: never).
    #[arg(long, env = "TETHER_STALE_NODE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub stale_node_ttl: Duration,

    /// How often coarse leases (last seen) are written to the database.
    #[arg(long, env = "TETHER_LEASE_FLUSH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_flush_interval: Duration,

    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "TETHER_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// HTTP port: a request's headers must arrive within this long, and an
    /// idle keep-alive connection is closed after it.
    #[arg(long, env = "TETHER_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,

    /// HTTP port: a request body must arrive within this long (408 if not).
    #[arg(long, env = "TETHER_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Duration,

    /// HTTP port: open connections at most; more wait in the kernel's backlog.
    #[arg(long, env = "TETHER_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Sessions that may be set up at once; more wait (reconnect storms).
    #[arg(long, env = "TETHER_ADMISSION_CONCURRENCY", default_value_t = 64)]
    pub admission_concurrency: usize,

    /// Operator API calls (gRPC and REST) each principal may make per second,
    /// on average; more are answered RESOURCE_EXHAUSTED / HTTP 429 with a
    /// retry-after. 0 turns the limit off.
    #[arg(long, env = "TETHER_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,

    /// Calls a principal may make at once after a quiet spell (at least the rate).
    #[arg(long, env = "TETHER_RATE_BURST", default_value_t = 1000)]
    pub rate_burst: u32,

    /// Operator API calls in progress per service at most; more are refused
    /// with RESOURCE_EXHAUSTED until one ends.
    #[arg(long, env = "TETHER_SERVICE_CONCURRENCY", default_value_t = 512)]
    pub service_concurrency: usize,

    /// Time an operator API call may take to answer (a stream: to open);
    /// DEADLINE_EXCEEDED after it.
    #[arg(long, env = "TETHER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// An operator's server stream (a watch, a log) that carries nothing for
    /// this long is ended with DEADLINE_EXCEEDED; clients resume.
    #[arg(long, env = "TETHER_STREAM_IDLE_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,

    /// Events older than this are removed from the event log (and with
    /// them the chance to resume a watch from before them).
    #[arg(long, env = "TETHER_EVENT_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,

    /// At most this many events are kept; the oldest beyond it are removed.
    #[arg(long, env = "TETHER_EVENT_RETENTION_COUNT", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub event_retention_count: u64,

    /// How often retention runs.
    #[arg(long, env = "TETHER_EVENT_RETENTION_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub event_retention_interval: Duration,

    /// A command pools may name as their provider, `NAME=PATH` (repeat for
    /// more). It runs on this host with the request as JSON on its standard
    /// input; only the commands named here can run.
    #[arg(long = "pool-command", env = "TETHER_POOL_COMMANDS", value_delimiter = ',')]
    pub pool_command: Vec<String>,

    /// Where pools' webhooks may be sent: networks (CIDR) that an address in
    /// the URL must be in, and host names that a name must be (others are
    /// refused without being resolved). Unset: anywhere.
    #[arg(long = "webhook-allow", env = "TETHER_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,

    /// The region SigV4-signed requests name in their credential scope
    /// (service `tether`).
    #[arg(long, env = "TETHER_SIGV4_REGION", default_value = "local")]
    pub sigv4_region: String,

    /// A file holding the internal token: the only credential
    /// ResolveAccessKey accepts (and nothing else accepts it). Unset: the
    /// RPC is refused.
    #[arg(long, env = "TETHER_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,

    /// This replica's name in leases. Defaults to hostname:pid.
    #[arg(long, env = "TETHER_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// `auto`: TLS on both ports with a certificate issued at start by the
    /// control plane's CA for the --tls-name names. `off` (the default
    /// without --tls-cert): plaintext, allowed only while both ports listen
    /// on loopback unless --insecure-plaintext.
    #[arg(long, env = "TETHER_TLS", value_parser = ["off", "auto"])]
    pub tls: Option<String>,

    /// Server certificate chain (PEM) for both ports; with --tls-key. The
    /// files are read again when they change and on SIGHUP; open
    /// connections keep theirs.
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The server certificate's private key (PEM).
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Names and addresses a `--tls auto` certificate is issued for
    /// (repeat, or comma separated). Default: localhost, 127.0.0.1, ::1,
    /// the host name and the listen addresses.
    #[arg(long = "tls-name", env = "TETHER_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,

    /// Serve plaintext on addresses other than loopback. Tokens and node
    /// credentials then cross the network in the clear.
    #[arg(long, env = "TETHER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// The CA certificate (PEM) that issues agents' client certificates
    /// (and the --tls auto server certificate). Default:
    /// `<data-dir>/ca.pem`, made at the first start with TLS.
    #[arg(long, env = "TETHER_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// The CA's private key (PEM). Default: `<data-dir>/ca.key` (mode 0600).
    #[arg(long, env = "TETHER_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// How agents prove who they are: `mtls` (a client certificate from
    /// their CSR; the default with TLS) or `macaroon` (a bearer node
    /// credential; the default without TLS, and behind a TLS-terminating
    /// proxy).
    #[arg(long, env = "TETHER_AGENT_AUTH", value_parser = ["mtls", "macaroon"])]
    pub agent_auth: Option<String>,

    /// How long an agent's client certificate is valid; agents renew at two
    /// thirds of it.
    #[arg(long, env = "TETHER_AGENT_CERT_LIFETIME", default_value = "30d", value_parser = humantime::parse_duration)]
    pub agent_cert_lifetime: Duration,

    /// Without a command: run the control plane.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands run against the configured database instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Mints a new admin token for the bootstrap project from the root key
    /// in the database and prints it: the recovery path when every admin
    /// token is lost. Needs only the data dir (or database URL), not a
    /// running control plane; a running one accepts the token at once.
    AdminToken {
        /// How long the token is valid; without it, it does not expire.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Shown in ListTokens.
        #[arg(long, default_value = "recovery admin token (minted offline)")]
        description: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    heartbeat_interval: Option<String>,
    heartbeat_jitter: Option<String>,
    heartbeat_grace: Option<String>,
    down_after: Option<String>,
    stale_node_ttl: Option<String>,
    lease_flush_interval: Option<String>,
    max_message_bytes: Option<usize>,
    http_header_timeout: Option<String>,
    http_body_timeout: Option<String>,
    http_max_connections: Option<usize>,
    admission_concurrency: Option<usize>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
    service_concurrency: Option<usize>,
    request_timeout: Option<String>,
    stream_idle_timeout: Option<String>,
    event_retention: Option<String>,
    event_retention_count: Option<u64>,
    event_retention_interval: Option<String>,
    sigv4_region: Option<String>,
    pool_command: Option<Vec<String>>,
    webhook_allow: Option<Vec<String>>,
    internal_token_file: Option<PathBuf>,
    replica_id: Option<String>,
    tls: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_names: Option<Vec<String>>,
    insecure_plaintext: Option<bool>,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    agent_auth: Option<String>,
    agent_cert_lifetime: Option<String>,
}

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    Auto,
    Files { cert: PathBuf, key: PathBuf },
}

/// How agents authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuth {
    Mtls,
    Macaroon,
}

impl Config {
    /// Parses the command line and environment, then fills what they left at
    /// defaults from the TOML file, if one is named.
    pub fn load() -> anyhow::Result<Self> {
        let matches = Config::command().get_matches();
        let mut cfg = Config::from_arg_matches(&matches)?;
        if let Some(path) = cfg.config.clone() {
            cfg.merge_file(&path, &matches)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn merge_file(&mut self, path: &Path, m: &ArgMatches) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: FileConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let unset = |id: &str| matches!(m.value_source(id), None | Some(ValueSource::DefaultValue));
        let dur = |s: &str| humantime::parse_duration(s).map_err(anyhow::Error::from);
        macro_rules! take {
            ($field:ident) => {
                if let (true, Some(v)) = (unset(stringify!($field)), f.$field) {
                    self.$field = v.into();
                }
            };
            ($field:ident, duration) => {
                if let (true, Some(v)) = (unset(stringify!($field)), f.$field.as_deref()) {
                    self.$field = dur(v)?.into();
                }
            };
        }
        take!(grpc_addr);
        take!(http_addr);
        take!(data_dir);
        take!(database_url);
        take!(heartbeat_interval, duration);
        take!(heartbeat_jitter, duration);
        take!(heartbeat_grace, duration);
        take!(down_after, duration);
        take!(stale_node_ttl, duration);
        take!(lease_flush_interval, duration);
        take!(max_message_bytes);
        take!(http_header_timeout, duration);
        take!(http_body_timeout, duration);
        take!(http_max_connections);
        take!(admission_concurrency);
        take!(rate_limit);
        take!(rate_burst);
        take!(service_concurrency);
        take!(request_timeout, duration);
        take!(stream_idle_timeout, duration);
        take!(event_retention, duration);
        take!(event_retention_count);
        take!(event_retention_interval, duration);
        take!(sigv4_region);
        take!(pool_command);
        take!(webhook_allow);
        take!(internal_token_file);
        take!(replica_id);
        take!(tls);
        take!(tls_cert);
        take!(tls_key);
        take!(tls_names);
        take!(insecure_plaintext);
        take!(ca_cert);
        take!(ca_key);
        take!(agent_auth);
        take!(agent_cert_lifetime, duration);
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.heartbeat_interval >= Duration::from_millis(50), "heartbeat interval is below 50ms");
        anyhow::ensure!(
            self.heartbeat_grace > self.heartbeat_interval + self.jitter(),
            "heartbeat grace must exceed interval plus jitter, or healthy nodes flap"
        );
        anyhow::ensure!(self.down_after > self.heartbeat_grace, "down-after must exceed the heartbeat grace");
        anyhow::ensure!(self.event_retention_count >= 1, "event retention count must be at least 1");
        anyhow::ensure!(
            self.event_retention_interval >= Duration::from_millis(10),
            "event retention interval is below 10ms"
        );
        anyhow::ensure!(self.max_message_bytes >= 4096, "max message size below 4 KiB");
        anyhow::ensure!(self.admission_concurrency >= 1, "admission concurrency must be at least 1");
        anyhow::ensure!(self.http_max_connections >= 1, "HTTP max connections must be at least 1");
        anyhow::ensure!(!self.http_header_timeout.is_zero(), "HTTP header timeout must be positive");
        anyhow::ensure!(!self.http_body_timeout.is_zero(), "HTTP body timeout must be positive");
        anyhow::ensure!(self.service_concurrency >= 1, "service concurrency must be at least 1");
        anyhow::ensure!(!self.request_timeout.is_zero(), "request timeout must be positive");
        anyhow::ensure!(!self.stream_idle_timeout.is_zero(), "stream idle timeout must be positive");
        let tls = self.tls_mode()?;
        if tls == TlsMode::Off && !self.insecure_plaintext {
            for (port, addr) in [("gRPC", self.grpc_addr), ("HTTP", self.http_addr)] {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "the {port} port listens on {addr} without TLS: pass --tls auto or --tls-cert/--tls-key, \
                     or --insecure-plaintext to serve plaintext beyond loopback"
                );
            }
        }
        if self.agent_auth()? == AgentAuth::Mtls {
            anyhow::ensure!(tls != TlsMode::Off, "--agent-auth mtls needs TLS (--tls auto or --tls-cert/--tls-key)");
        }
        anyhow::ensure!(
            self.agent_cert_lifetime >= Duration::from_secs(3),
            "the agent certificate lifetime must be at least 3s"
        );
        Ok(())
    }

    pub fn tls_mode(&self) -> anyhow::Result<TlsMode> {
        match (self.tls.as_deref(), &self.tls_cert, &self.tls_key) {
            (Some("auto"), None, None) => Ok(TlsMode::Auto),
            (Some("auto"), _, _) => anyhow::bail!("--tls auto and --tls-cert/--tls-key exclude each other"),
            (Some("off"), None, None) => Ok(TlsMode::Off),
            (Some("off"), _, _) => anyhow::bail!("--tls off and --tls-cert/--tls-key exclude each other"),
            (_, Some(cert), Some(key)) => Ok(TlsMode::Files { cert: cert.clone(), key: key.clone() }),
            (None, None, None) => Ok(TlsMode::Off),
            (None, _, _) => anyhow::bail!("--tls-cert and --tls-key go together"),
            (Some(other), _, _) => anyhow::bail!("--tls {other:?}: expected off or auto"),
        }
    }

    pub fn agent_auth(&self) -> anyhow::Result<AgentAuth> {
        Ok(match self.agent_auth.as_deref() {
            Some("mtls") => AgentAuth::Mtls,
            Some("macaroon") => AgentAuth::Macaroon,
            None if self.tls_mode()? == TlsMode::Off => AgentAuth::Macaroon,
            None => AgentAuth::Mtls,
            Some(other) => anyhow::bail!("--agent-auth {other:?}: expected mtls or macaroon"),
        })
    }

    /// The CA certificate and key files.
    pub fn ca_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.ca_cert, &self.ca_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (self.data_dir.join("ca.pem"), self.data_dir.join("ca.key")),
        }
    }

    pub fn jitter(&self) -> Duration {
        self.heartbeat_jitter.unwrap_or(self.heartbeat_interval / 5)
    }

    /// How long an agent keeps its job attempts running without a beat
    /// acknowledged: three quarters of the way from the grace to the down
    /// timeout, so that it has given them up before the control plane can
    /// declare them lost (which counts from a later beat's arrival).
    pub fn fence_after(&self) -> Duration {
        self.heartbeat_grace + (self.down_after.saturating_sub(self.heartbeat_grace)) * 3 / 4
    }

    pub fn replica(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), std::process::id())
        })
    }

    /// A configuration for tests: ports picked by the OS, data in `dir`.
    pub fn for_tests(dir: &Path) -> Self {
        let mut cfg = Config::parse_from(["tether-control-plane"]);
        cfg.grpc_addr = "127.0.0.1:0".parse().expect("literal address");
        cfg.http_addr = "127.0.0.1:0".parse().expect("literal address");
        cfg.data_dir = dir.to_path_buf();
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_only_what_flags_left_at_default() {
        let dir = tempfile_dir();
        let path = dir.join("tether.toml");
        std::fs::write(
            &path,
            "heartbeat_interval = \"2s\"\nheartbeat_grace = \"9s\"\ngrpc_addr = \"127.0.0.1:6000\"\n",
        )
        .unwrap();
        let m = Config::command().get_matches_from(["x", "--heartbeat-grace", "20s"]);
        let mut cfg = Config::from_arg_matches(&m).unwrap();
        cfg.merge_file(&path, &m).unwrap();
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(cfg.heartbeat_grace, Duration::from_secs(20), "flag wins over file");
        assert_eq!(cfg.grpc_addr.port(), 6000);
        std::fs::write(&path, "nonsense = 1\n").unwrap();
        assert!(cfg.merge_file(&path, &m).is_err(), "unknown keys are rejected");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plaintext_beyond_loopback_needs_a_flag_and_mtls_needs_tls() {
        let parse = |args: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap()
        };
        assert!(parse(&[]).validate().is_ok(), "loopback plaintext is the default");
        let e = parse(&["--grpc-addr", "0.0.0.0:50051"]).validate().unwrap_err().to_string();
        assert!(e.contains("--insecure-plaintext") && e.contains("gRPC"), "{e}");
        let e = parse(&["--http-addr", "10.1.2.3:8080"]).validate().unwrap_err().to_string();
        assert!(e.contains("HTTP"), "{e}");
        assert!(parse(&["--grpc-addr", "0.0.0.0:50051", "--insecure-plaintext"]).validate().is_ok());
        assert!(parse(&["--grpc-addr", "0.0.0.0:50051", "--tls", "auto"]).validate().is_ok());
        let c = parse(&["--tls", "auto"]);
        assert_eq!(c.agent_auth().unwrap(), AgentAuth::Mtls, "mTLS is the default with TLS");
        assert_eq!(parse(&[]).agent_auth().unwrap(), AgentAuth::Macaroon);
        assert!(parse(&["--agent-auth", "mtls"]).validate().is_err(), "mTLS needs TLS");
        assert!(parse(&["--tls", "auto", "--agent-auth", "macaroon"]).validate().is_ok());
        assert!(Config::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err(), "a certificate needs its key");
        assert!(
            parse(&["--tls", "auto", "--tls-cert", "c", "--tls-key", "k"]).validate().is_err(),
            "auto and files exclude each other"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
