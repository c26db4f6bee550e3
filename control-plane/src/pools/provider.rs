//! Asks a pool's provider to add or remove machines: a webhook (POST with a
//! bearer token) or a command the control plane's operator registered with
//! `--pool-command NAME=PATH` (never a path a tenant names: the command runs
//! on the control plane's host). Both get the same JSON body; a webhook
//! accepts with a 2xx answer, a command with exit status 0. A call that
//! takes longer than [`CALL_TIMEOUT`] fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tether_types::Node;
use tether_types::pool::{Provider, ScaleAction};
use tokio::io::AsyncWriteExt;

pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What the provider is sent.
#[derive(Debug, Clone, Serialize)]
pub struct Call<'a> {
    pub pool: &'a str,
    pub organization_id: &'a str,
    pub action: ScaleAction,
    pub count: u32,
    pub request_id: &'a str,
    /// Remove: the machines to remove.
    pub nodes: Vec<CallNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallNode {
    pub id: String,
    pub hostname: String,
    pub addresses: Vec<String>,
}

impl CallNode {
    pub fn of(n: &Node) -> Self {
        CallNode {
            id: n.id.as_str().to_owned(),
            hostname: n.capabilities.hostname.clone(),
            addresses: n.capabilities.addresses.clone(),
        }
    }
}

/// Parses `--pool-command` values (`NAME=PATH`).
pub fn parse_commands(specs: &[String]) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for s in specs {
        let (name, path) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--pool-command {s:?} is not NAME=PATH"))?;
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        anyhow::ensure!(ok, "--pool-command name {name:?} is not lowercase letters, digits and dashes");
        anyhow::ensure!(!path.is_empty(), "--pool-command {name}: no path");
        anyhow::ensure!(out.insert(name.to_owned(), PathBuf::from(path)).is_none(), "--pool-command {name} twice");
    }
    Ok(out)
}

/// Where webhooks may be sent (`--webhook-allow`): IP networks, which an
/// address in the URL must be in, and host names, which a name in the URL
/// must be (a name not listed is refused without being resolved). Empty:
/// anywhere.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allow {
    nets: Vec<(std::net::IpAddr, u8)>,
    hosts: std::collections::HashSet<String>,
}

impl Allow {
    pub fn parse(specs: &[String]) -> anyhow::Result<Self> {
        let mut a = Allow::default();
        for s in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (addr, bits) = match s.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (s, None),
            };
            match addr.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = match bits {
                        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max),
                        None => Some(max),
                    };
                    let bits = bits.ok_or_else(|| anyhow::anyhow!("--webhook-allow {s:?}: bad prefix length"))?;
                    a.nets.push((ip, bits));
                }
                Err(_) if bits.is_none() && !s.contains(['/', ':', ' ']) => {
                    a.hosts.insert(s.to_ascii_lowercase());
                }
                Err(_) => anyhow::bail!("--webhook-allow {s:?} is neither a network (CIDR) nor a host name"),
            }
        }
        Ok(a)
    }

    fn contains_ip(&self, ip: std::net::IpAddr) -> bool {
        self.nets.iter().any(|&(net, bits)| match (net, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        })
    }

    /// Whether a webhook may go to `url`.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if self.nets.is_empty() && self.hosts.is_empty() {
            return Ok(());
        }
        let u = reqwest::Url::parse(url).map_err(|e| format!("webhook URL {url:?}: {e}"))?;
        let ok = match u.host() {
            Some(url::Host::Ipv4(ip)) => self.contains_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.contains_ip(ip.into()),
            Some(url::Host::Domain(d)) => self.hosts.contains(&d.to_ascii_lowercase()),
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("webhook host {:?} is not allowed here (--webhook-allow)", u.host_str().unwrap_or("")))
        }
    }
}

/// Calls providers.
pub struct Providers {
    http: reqwest::Client,
    commands: HashMap<String, PathBuf>,
    allow: Allow,
}

impl Providers {
    pub fn new(commands: HashMap<String, PathBuf>, allow: Allow) -> anyhow::Result<Self> {
        // reqwest is built without a crypto provider: the process's (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tether-control-plane/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Providers { http, commands, allow })
    }

    /// Whether a webhook may go to `url` (`--webhook-allow`).
    pub fn webhook_allowed(&self, url: &str) -> Result<(), String> {
        self.allow.check(url)
    }

    /// Whether a command provider's name is registered.
    pub fn has_command(&self, name: &str) -> bool {
        self.commands.contains_key(name)
    }

    /// Sends `call`; Err with why the provider did not accept it.
    pub async fn call(&self, provider: &Provider, call: &Call<'_>) -> Result<(), String> {
        match provider {
            Provider::Webhook { url, bearer_token } => self.webhook(url, bearer_token, call).await,
            Provider::Command { name } => {
                let path = self
                    .commands
                    .get(name)
                    .ok_or_else(|| format!("no command {name:?} is registered (--pool-command)"))?;
                command(path, call).await
            }
        }
    }

    async fn webhook(&self, url: &str, token: &str, call: &Call<'_>) -> Result<(), String> {
        self.allow.check(url)?;
        let mut req = self.http.post(url).json(call).header("Idempotency-Key", call.request_id);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| format!("webhook: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(format!("webhook answered {status}: {}", body.trim()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

async fn command(path: &std::path::Path, call: &Call<'_>) -> Result<(), String> {
    let body = serde_json::to_vec(call).expect("a call serialises");
    let nodes: Vec<&str> = call.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut child = tokio::process::Command::new(path)
        .env("TETHER_POOL", call.pool)
        .env("TETHER_ORGANIZATION_ID", call.organization_id)
        .env("TETHER_ACTION", call.action.as_str())
        .env("TETHER_COUNT", call.count.to_string())
        .env("TETHER_REQUEST_ID", call.request_id)
        .env("TETHER_NODES", nodes.join(","))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("command {}: {e}", path.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let run = async {
        // A command that does not read its input still runs.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(CALL_TIMEOUT, run).await {
        Err(_) => Err(format!("command {} took longer than {CALL_TIMEOUT:?}", path.display())),
        Ok(Err(e)) => Err(format!("command {}: {e}", path.display())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let last: String = last.chars().take(200).collect();
            Err(format!("command {} failed ({}): {last}", path.display(), out.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_and_once() {
        let m = parse_commands(&["aws=/usr/local/bin/scale".into()]).unwrap();
        assert_eq!(m["aws"], PathBuf::from("/usr/local/bin/scale"));
        assert!(parse_commands(&["Bad=/x".into()]).is_err());
        assert!(parse_commands(&["noequals".into()]).is_err());
        assert!(parse_commands(&["a=/x".into(), "a=/y".into()]).is_err());
    }

    #[test]
    fn webhooks_go_only_where_allowed() {
        let any = Allow::parse(&[]).unwrap();
        assert!(any.check("http://example.com/x").is_ok());
        let a = Allow::parse(&["127.0.0.0/8".into(), "::1".into(), "Scaler.internal".into()]).unwrap();
        assert!(a.check("http://127.0.0.1:9000/scale").is_ok());
        assert!(a.check("http://127.255.0.1/").is_ok());
        assert!(a.check("http://[::1]:80/").is_ok());
        assert!(a.check("https://scaler.INTERNAL/hook").is_ok());
        assert!(a.check("http://128.0.0.1/").is_err());
        assert!(a.check("http://[::2]/").is_err());
        assert!(a.check("http://example.com/").unwrap_err().contains("not allowed"));
        assert!(
            a.check("http://2130706433/").is_ok(),
            "a decimal IPv4 is an address: {:?}",
            a.check("http://2130706433/")
        );
        assert!(Allow::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Allow::parse(&["a b".into()]).is_err());
    }

    #[tokio::test]
    async fn a_command_gets_the_call_and_its_failure_is_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("p.sh");
        let out = dir.path().join("got.json");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {}\n[ \"$TETHER_ACTION\" = add ] && exit 0\necho noise >&2\necho \"no capacity for $TETHER_COUNT\" >&2\nexit 3\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Providers::new([("s".to_owned(), script)].into(), Allow::default()).unwrap();
        let mut call = Call {
            pool: "gpu",
            organization_id: "org-1",
            action: ScaleAction::Add,
            count: 2,
            request_id: "sr-1",
            nodes: vec![],
        };
        p.call(&Provider::Command { name: "s".into() }, &call).await.unwrap();
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            (got["pool"].as_str(), got["action"].as_str(), got["count"].as_u64()),
            (Some("gpu"), Some("add"), Some(2))
        );
        call.action = ScaleAction::Remove;
        let err = p.call(&Provider::Command { name: "s".into() }, &call).await.unwrap_err();
        assert!(err.ends_with("no capacity for 2"), "{err}");
        let err = p.call(&Provider::Command { name: "other".into() }, &call).await.unwrap_err();
        assert!(err.contains("no command"), "{err}");
    }
}
