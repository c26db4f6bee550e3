//! Secrets as work references them, and as an assignment carries them:
//! a name and version, where the value goes (an environment variable, a
//! file, or both), and the copy sealed to the node that runs the work.

use serde::{Deserialize, Serialize};
use tether_proto::{agent_pb, pb};

use crate::Error;

/// The most secrets one exec spec references.
pub const MAX_SECRET_REFS: usize = 64;
/// The largest value a secret holds.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret's name: lowercase letters, digits and dashes, starting with a
/// letter and not ending with a dash, at most 63 characters.
pub fn validate_secret_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "secret name {name:?}: lowercase letters, digits and dashes, starting with a letter, at most 63"
        )))
    }
}

fn env_name_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn file_name_ok(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 255
        && f != "."
        && f != ".."
        && f.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A secret that work needs, and where the agent puts its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    /// 0: the latest version when the work is placed.
    #[serde(default)]
    pub version: u32,
    /// The environment variable that holds the value ("" for none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env: String,
    /// The file (in `$TETHER_SECRETS_DIR`, mode 0400) that holds it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
}

impl SecretRef {
    pub fn from_pb(r: pb::SecretRef) -> Result<SecretRef, Error> {
        validate_secret_name(&r.name)?;
        // Neither: a file named after the secret.
        let file = if r.env.is_empty() && r.file.is_empty() { r.name.clone() } else { r.file };
        if !r.env.is_empty() && !env_name_ok(&r.env) {
            return Err(Error::invalid(format!(
                "secret {:?}: env {:?} is not a variable name (letters, digits, _; not starting with a digit)",
                r.name, r.env
            )));
        }
        if !file.is_empty() && !file_name_ok(&file) {
            return Err(Error::invalid(format!(
                "secret {:?}: file {:?} is not a plain file name (letters, digits, . _ -)",
                r.name, file
            )));
        }
        Ok(SecretRef { name: r.name, version: r.version, env: r.env, file })
    }

    pub fn to_pb(&self) -> pb::SecretRef {
        pb::SecretRef { name: self.name.clone(), version: self.version, env: self.env.clone(), file: self.file.clone() }
    }

    /// The validated list of an exec spec. Where two refs fill the same
    /// variable or file, the later wins (as with repeated `-e` flags), and
    /// a secret's variable wins over the spec's own `env` of that name.
    pub fn list_from_pb(refs: Vec<pb::SecretRef>) -> Result<Vec<SecretRef>, Error> {
        if refs.len() > MAX_SECRET_REFS {
            return Err(Error::invalid(format!("exec.secrets: at most {MAX_SECRET_REFS}")));
        }
        let mut refs = refs.into_iter().map(SecretRef::from_pb).collect::<Result<Vec<_>, _>>()?;
        let mut vars = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for r in refs.iter_mut().rev() {
            if !r.env.is_empty() && !vars.insert(r.env.clone()) {
                r.env.clear();
            }
            if !r.file.is_empty() && !files.insert(r.file.clone()) {
                r.file.clear();
            }
        }
        refs.retain(|r| !r.env.is_empty() || !r.file.is_empty());
        Ok(refs)
    }
}

/// A secret as an assignment carries it: the reference, the version it
/// resolved to, and the copy sealed to the node it is sent to (`None`
/// when the node holds no copy: the agent fails the attempt saying so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub reference: SecretRef,
    pub project_id: String,
    pub version: u32,
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl SealedSecret {
    pub fn to_pb(&self) -> agent_pb::SealedSecret {
        agent_pb::SealedSecret {
            name: self.reference.name.clone(),
            project_id: self.project_id.clone(),
            version: self.version,
            env: self.reference.env.clone(),
            file: self.reference.file.clone(),
            enc: self.enc.clone(),
            ciphertext: self.ciphertext.clone(),
        }
    }

    pub fn from_pb(s: agent_pb::SealedSecret) -> SealedSecret {
        SealedSecret {
            reference: SecretRef { name: s.name, version: s.version, env: s.env, file: s.file },
            project_id: s.project_id,
            version: s.version,
            enc: s.enc,
            ciphertext: s.ciphertext,
        }
    }
}

/// The control plane asks a node that holds a copy to seal the value
/// again for another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResealRequest {
    pub project_id: String,
    pub name: String,
    pub version: u32,
    /// The holder's own copy.
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub target_node: String,
    pub target_public_key: Vec<u8>,
}

/// The holder's answer: the newcomer's copy, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    pub project_id: String,
    pub name: String,
    pub version: u32,
    pub target_node: String,
    pub target_public_key: Vec<u8>,
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, env: &str, file: &str) -> pb::SecretRef {
        pb::SecretRef { name: name.into(), version: 0, env: env.into(), file: file.into() }
    }

    #[test]
    fn refs_are_checked() {
        assert!(SecretRef::list_from_pb(vec![r("db-password", "DB_PASSWORD", "db")]).is_ok());
        for (bad, why) in [
            (r("Db", "X", ""), "secret name"),
            (r("db-", "X", ""), "secret name"),
            (r("db", "1X", ""), "not a variable name"),
            (r("db", "A=B", ""), "not a variable name"),
            (r("db", "", "../x"), "plain file name"),
            (r("db", "", ".."), "plain file name"),
            (r("db", "", "a/b"), "plain file name"),
        ] {
            let e = SecretRef::list_from_pb(vec![bad.clone()]).unwrap_err();
            assert!(e.message.contains(why), "{bad:?}: {e:?}");
        }
        let plain = SecretRef::list_from_pb(vec![r("db", "", "")]).unwrap();
        assert_eq!(plain[0].file, "db", "neither env nor file: a file named after it");
        // The later of two refs filling one variable or file wins.
        let got = SecretRef::list_from_pb(vec![r("a", "X", "f"), r("b", "X", ""), r("c", "", "f")]).unwrap();
        let got: Vec<(&str, &str, &str)> = got.iter().map(|r| (&*r.name, &*r.env, &*r.file)).collect();
        assert_eq!(got, [("b", "X", ""), ("c", "", "f")]);
        let many = (0..65).map(|i| r("a", &format!("V{i}"), "")).collect();
        assert!(SecretRef::list_from_pb(many).is_err());
    }
}
