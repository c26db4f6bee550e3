//! TLS on both ports (rustls, ring provider): the server certificate from
//! files (reloaded when they change or on SIGHUP, without touching open
//! connections) or issued at start by the control plane's CA (`--tls
//! auto`); the CA that issues agents' client certificates; and the accept
//! loop that hands finished handshakes to tonic.
//!
//! The gRPC port asks for a client certificate but does not require one:
//! operators present bearer tokens, agents their node certificate, which
//! the handshake verifies against the CA (signature and validity) and the
//! authenticator then maps to its node on every call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tether_auth::pki::Ca;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::background::{Activation, ActivationFuture, BackgroundTask};
use crate::config::{Config, TlsMode};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most on the gRPC port; more wait in the backlog.
const HANDSHAKES: usize = 256;
/// How long a `--tls auto` server certificate is valid (made anew at start).
const AUTO_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// How often the certificate files are looked at for changes.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(2);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What TLS set-up gives the rest of the control plane.
pub struct Tls {
    pub grpc: TlsAcceptor,
    pub http: TlsAcceptor,
    pub cert: Arc<ServerCert>,
    /// Issues agents' client certificates.
    pub ca: Arc<Ca>,
}

/// The server certificate in use, swapped whole on reload.
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// The files it came from, and their bytes as last loaded; None for
    /// `--tls auto`.
    files: Option<(PathBuf, PathBuf)>,
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate PEM")?;
    anyhow::ensure!(!chain.is_empty(), "the certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the key PEM")?;
    CertifiedKey::from_der(chain, key, &provider()).context("the key does not fit the certificate")
}

impl ServerCert {
    fn from_files(cert: &Path, key: &Path) -> anyhow::Result<ServerCert> {
        let (c, k) = read_pair(cert, key)?;
        let ck = certified_key(&c, &k).with_context(|| format!("TLS certificate {}", cert.display()))?;
        Ok(ServerCert {
            current: RwLock::new(Arc::new(ck)),
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            loaded: Mutex::new((c, k)),
        })
    }

    fn issued(cert_pem: &str, key_pem: &str) -> anyhow::Result<ServerCert> {
        let ck = certified_key(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok(ServerCert { current: RwLock::new(Arc::new(ck)), files: None, loaded: Mutex::new(Default::default()) })
    }

    /// Loads the files again if their bytes changed. A pair that does not
    /// load (half-written, a key that does not fit) keeps the old one in
    /// service and is an error.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let Some((cert, key)) = &self.files else { return Ok(false) };
        let (c, k) = read_pair(cert, key)?;
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.0 == c && loaded.1 == k {
            return Ok(false);
        }
        let ck = certified_key(&c, &k).with_context(|| format!("TLS certificate {}", cert.display()))?;
        *self.current.write().expect("not poisoned") = Arc::new(ck);
        *loaded = (c, k);
        Ok(true)
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    Ok((c, k))
}

/// Writes `bytes` to `path` atomically with `mode`.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The CA: the operator's (`--ca-cert`/`--ca-key`), else the one in the
/// data dir, made at the first start with TLS (key mode 0600).
fn load_ca(config: &Config, now: i64) -> anyhow::Result<Ca> {
    let (cert, key) = config.ca_paths();
    if cert.exists() || key.exists() || config.ca_cert.is_some() {
        let c = std::fs::read_to_string(&cert).with_context(|| format!("reading the CA {}", cert.display()))?;
        let k = std::fs::read_to_string(&key).with_context(|| format!("reading the CA key {}", key.display()))?;
        return Ca::from_pem(&c, &k).with_context(|| format!("the CA in {}", cert.display()));
    }
    let ca = Ca::generate("Tether development CA", now)?;
    write_private(&key, ca.key_pem().as_bytes(), 0o600)?;
    write_private(&cert, ca.cert_pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "made a development CA; clients trust it with --ca-file / -cacert");
    Ok(ca)
}

/// The names a `--tls auto` certificate is issued for: `--tls-name`, else
/// localhost, the loopback addresses, this host's name and the addresses
/// the ports listen on (when they name one).
fn auto_names(config: &Config) -> Vec<String> {
    if !config.tls_names.is_empty() {
        return config.tls_names.clone();
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_owned());
    }
    for a in [config.grpc_addr, config.http_addr] {
        if !a.ip().is_unspecified() {
            names.push(a.ip().to_string());
        }
    }
    names.sort();
    names.dedup();
    names.retain(|n| !n.is_empty());
    names
}

/// Sets TLS up as configured; None when the ports speak plaintext.
pub fn setup(config: &Config, now: i64) -> anyhow::Result<Option<Tls>> {
    let cert = match config.tls_mode()? {
        TlsMode::Off => return Ok(None),
        TlsMode::Files { cert, key } => ServerCert::from_files(&cert, &key)?,
        TlsMode::Auto => {
            let ca = load_ca(config, now)?;
            let issued = ca.issue_server(&auto_names(config), now, AUTO_LIFETIME)?;
            ServerCert::issued(&issued.cert_pem, &issued.key_pem)?
        }
    };
    let ca = Arc::new(load_ca(config, now)?);
    let cert = Arc::new(cert);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).context("the CA certificate as a trust root")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .context("the client certificate verifier")?;
    let builder = || rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions();
    let mut grpc = builder()?.with_client_cert_verifier(verifier).with_cert_resolver(cert.clone());
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut http = builder()?.with_no_client_auth().with_cert_resolver(cert.clone());
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Tls { grpc: TlsAcceptor::from(Arc::new(grpc)), http: TlsAcceptor::from(Arc::new(http)), cert, ca }))
}

/// The gRPC port's connections after their handshake. Handshakes run in
/// their own tasks (a slow client holds up no one), at most
/// [`HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`].
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("never closed"),
            };
            let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = &e as &dyn std::error::Error, "accepting a gRPC connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        drop(permit);
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("tether_tls_handshake_failures_total").increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("tether_tls_handshake_failures_total").increment(1);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Accepts TLS on one HTTP connection, within [`HANDSHAKE_TIMEOUT`].
pub async fn accept_http(acceptor: &TlsAcceptor, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        _ => {
            metrics::counter!("tether_tls_handshake_failures_total").increment(1);
            None
        }
    }
}

/// Looks at the certificate files every [`RELOAD_PERIOD`] and on SIGHUP.
pub struct Reload(pub Arc<ServerCert>);

impl BackgroundTask for Reload {
    fn activate(&mut self) -> ActivationFuture<'_> {
        Box::pin(async move {
            let cert = self.0.clone();
            match tokio::task::spawn_blocking(move || cert.reload()).await.expect("reload does not panic") {
                Ok(true) => {
                    tracing::info!("TLS certificate reloaded; new connections get it");
                    metrics::counter!("tether_tls_reloads_total").increment(1);
                    Activation::Done("reloaded".into())
                }
                Ok(false) => Activation::Done(String::new()),
                Err(e) => Activation::Failed(e.into()),
            }
        })
    }
}
