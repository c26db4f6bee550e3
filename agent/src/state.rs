//! The agent's identity on disk: `<state-dir>/identity.json`, mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub project_id: String,
    /// The node macaroon; empty when the node authenticates by certificate.
    pub credential: String,
    /// Bumped at every process start; fences older processes using this state.
    pub generation: u64,
    /// The node's client certificate and its key, with mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<NodeCertificate>,
    /// The node's X25519 private key (hex) for sealed secrets; its public
    /// key was registered at enrolment. Absent for a node enrolled before
    /// sealed secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
}

/// A client certificate and its private key, both PEM. It lives in
/// `identity.json` (mode 0600), so that a renewal replaces both at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("identity.json")
    }

    pub fn load(&self) -> std::io::Result<Option<Identity>> {
        match std::fs::read(self.path()) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically: a crash leaves the old or the new file, never half.
    pub fn save(&self, id: &Identity) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("identity.json.{}.tmp", std::process::id()));
        {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(id).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())
    }
}
