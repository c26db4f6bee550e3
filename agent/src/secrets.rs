//! Sealed secrets on the node: the node's X25519 key opens the copies an
//! assignment carries; the values go to the process as environment
//! variables and as files (mode 0400) in a directory of its own (0700) on a
//! tmpfs where the node has one, removed when the run ends. A node that
//! holds a copy also seals it again for a newcomer when the control plane
//! asks, without the value leaving the agent unsealed.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tether_auth::seal::{CopyLabel, SealKey, Sealed};
use tether_types::{ResealRequest, Resealed, SealedSecret};
use zeroize::Zeroizing;

/// The node's sealing key and what copies sealed to it are labelled with.
pub struct Keyring {
    pub node_id: String,
    pub key: Option<SealKey>,
    /// Where each run's secrets directory is made.
    pub base: PathBuf,
}

/// Whether `dir` is a tmpfs mount point, from /proc/self/mounts.
fn is_tmpfs(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(dir) && l.split(' ').nth(2) == Some("tmpfs")))
        .unwrap_or(false)
}

/// `/dev/shm/tether-<node>` when /dev/shm is a tmpfs (values never reach a
/// disk), else `<state-dir>/secrets`.
pub fn base_dir(state_dir: &Path, node_id: &str) -> PathBuf {
    if is_tmpfs("/dev/shm") {
        PathBuf::from(format!("/dev/shm/tether-{node_id}"))
    } else {
        tracing::warn!("/dev/shm is not a tmpfs: secrets files go to the state directory (on disk)");
        state_dir.join("secrets")
    }
}

impl Keyring {
    /// Makes the base directory (0700) and removes what a previous agent
    /// process left: its runs died with it.
    pub fn open(node_id: String, key: Option<SealKey>, base: PathBuf) -> std::io::Result<Keyring> {
        if base.exists() {
            std::fs::remove_dir_all(&base)?;
        }
        std::fs::create_dir_all(&base)?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
        Ok(Keyring { node_id, key, base })
    }

    fn key(&self) -> Result<&SealKey, String> {
        self.key.as_ref().ok_or_else(|| {
            "this node has no sealing key (it enrolled before sealed secrets); enrol it again to receive secrets"
                .to_owned()
        })
    }

    fn open_copy(&self, s: &SealedSecret) -> Result<Zeroizing<Vec<u8>>, String> {
        if s.enc.is_empty() {
            return Err(format!("secret {} version {} is not sealed to this node", s.reference.name, s.version));
        }
        let label =
            CopyLabel { project: &s.project_id, name: &s.reference.name, version: s.version, node: &self.node_id };
        let sealed = Sealed { enc: s.enc.clone(), ciphertext: s.ciphertext.clone() };
        self.key()?
            .open(&label, &sealed)
            .map(Zeroizing::new)
            .map_err(|e| format!("secret {} version {}: {e}", s.reference.name, s.version))
    }

    /// Opens every secret of a run; writes its files. Any failure leaves
    /// nothing behind and says which secret.
    pub fn deliver(&self, run: &str, secrets: &[SealedSecret]) -> Result<Delivered, String> {
        let mut out = Delivered { env: Vec::new(), dir: None };
        if secrets.is_empty() {
            return Ok(out);
        }
        for s in secrets {
            let value = self.open_copy(s)?;
            if !s.reference.env.is_empty() {
                if value.contains(&0) {
                    return Err(format!(
                        "secret {} holds a NUL byte: it cannot be an environment variable, only a file",
                        s.reference.name
                    ));
                }
                out.env.push((s.reference.env.clone(), OsString::from_vec(value.to_vec())));
            }
            if !s.reference.file.is_empty() {
                let dir = match &out.dir {
                    Some(d) => d.clone(),
                    None => {
                        let d = self.base.join(run);
                        std::fs::create_dir_all(&d).map_err(|e| format!("making {}: {e}", d.display()))?;
                        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                            .map_err(|e| format!("securing {}: {e}", d.display()))?;
                        out.dir = Some(d.clone());
                        d
                    }
                };
                let path = dir.join(&s.reference.file);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&path)
                    .map_err(|e| format!("writing secret {}: {e}", s.reference.name))?;
                f.write_all(&value).map_err(|e| format!("writing secret {}: {e}", s.reference.name))?;
            }
        }
        Ok(out)
    }

    /// Seals a copy this node holds again for another node.
    pub fn reseal(&self, r: &ResealRequest) -> Resealed {
        let mut out = Resealed {
            project_id: r.project_id.clone(),
            name: r.name.clone(),
            version: r.version,
            target_node: r.target_node.clone(),
            target_public_key: r.target_public_key.clone(),
            enc: Vec::new(),
            ciphertext: Vec::new(),
            error: String::new(),
        };
        let from = CopyLabel { project: &r.project_id, name: &r.name, version: r.version, node: &self.node_id };
        let to = CopyLabel { node: &r.target_node, ..from };
        let sealed = Sealed { enc: r.enc.clone(), ciphertext: r.ciphertext.clone() };
        match self.key().and_then(|k| k.reseal(&from, &sealed, &r.target_public_key, &to).map_err(|e| e.to_string())) {
            Ok(s) => {
                out.enc = s.enc;
                out.ciphertext = s.ciphertext;
            }
            Err(e) => out.error = e,
        }
        out
    }
}

/// A run's secrets: environment variables, and the directory of its files,
/// removed when this is dropped.
pub struct Delivered {
    pub env: Vec<(String, OsString)>,
    dir: Option<PathBuf>,
}

impl Delivered {
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if let Some(d) = &self.dir
            && let Err(e) = std::fs::remove_dir_all(d)
        {
            tracing::error!(dir = %d.display(), error = %e, "removing a run's secrets failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_types::SecretRef;

    fn sealed(key: &SealKey, node: &str, name: &str, env: &str, file: &str, value: &[u8]) -> SealedSecret {
        let label = CopyLabel { project: "prj-1", name, version: 1, node };
        let s = tether_auth::seal::seal(&key.public_key(), &label, value).unwrap();
        SealedSecret {
            reference: SecretRef { name: name.into(), version: 0, env: env.into(), file: file.into() },
            project_id: "prj-1".into(),
            version: 1,
            enc: s.enc,
            ciphertext: s.ciphertext,
        }
    }

    #[test]
    fn delivers_env_and_0400_files_and_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let key = SealKey::generate();
        let pk = key.public_key();
        let k = Keyring::open("nd-1".into(), Some(key), tmp.path().join("base")).unwrap();
        let a = sealed(k.key.as_ref().unwrap(), "nd-1", "db", "DB", "db.txt", b"s3cret");
        let b = sealed(k.key.as_ref().unwrap(), "nd-1", "blob", "", "blob", b"a\0b");
        let d = k.deliver("job-1-1", &[a.clone(), b]).unwrap();
        assert_eq!(d.env, vec![("DB".to_string(), OsString::from("s3cret"))]);
        let dir = d.dir().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let f = dir.join("db.txt");
        assert_eq!(std::fs::read(&f).unwrap(), b"s3cret");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::read(dir.join("blob")).unwrap(), b"a\0b");
        drop(d);
        assert!(!dir.exists());

        // NUL in an env var, a copy for another node, none at all: refused.
        let nul = sealed(k.key.as_ref().unwrap(), "nd-1", "blob", "B", "", b"a\0b");
        assert!(k.deliver("r", &[nul]).err().unwrap().contains("NUL"));
        let other = sealed(k.key.as_ref().unwrap(), "nd-2", "db", "DB", "", b"x");
        assert!(k.deliver("r", &[other]).err().unwrap().contains("does not open"));
        let missing = SealedSecret { enc: vec![], ..a.clone() };
        assert!(k.deliver("r", &[missing]).err().unwrap().contains("not sealed to this node"));

        // Reseal for another node's key.
        let other_key = SealKey::generate();
        let r = ResealRequest {
            project_id: "prj-1".into(),
            name: "db".into(),
            version: 1,
            enc: a.enc.clone(),
            ciphertext: a.ciphertext.clone(),
            target_node: "nd-2".into(),
            target_public_key: other_key.public_key(),
        };
        let ans = k.reseal(&r);
        assert_eq!(ans.error, "");
        let label = CopyLabel { project: "prj-1", name: "db", version: 1, node: "nd-2" };
        let got = other_key.open(&label, &Sealed { enc: ans.enc, ciphertext: ans.ciphertext }).unwrap();
        assert_eq!(got, b"s3cret");
        assert_ne!(pk, other_key.public_key());
        // A start removes what an earlier process left.
        std::fs::create_dir_all(tmp.path().join("base/job-9-1")).unwrap();
        let _k = Keyring::open("nd-1".into(), None, tmp.path().join("base")).unwrap();
        assert!(!tmp.path().join("base/job-9-1").exists());
    }
}
