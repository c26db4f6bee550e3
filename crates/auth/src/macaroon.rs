use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use tether_types::{NodeId, OrgId, OrgRole, ProjectId, Role, TokenId, UnixMillis, WorkloadId};

use crate::AuthError;

const PREFIX: &str = "tm1_";
/// Version 1 had no key id (it is key 0); version 2 names its root key.
const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
const MAX_CAVEATS: usize = 32;
const MAX_FIELD: usize = 512;

/// A secret macaroons chain from, with the id macaroons name it by.
#[derive(Clone)]
pub struct RootKey {
    id: u32,
    key: hmac::Key,
}

impl RootKey {
    pub fn new(id: u32, bytes: &[u8]) -> Self {
        RootKey { id, key: hmac::Key::new(hmac::HMAC_SHA256, bytes) }
    }

    /// Key 0: the first key of a deployment (and of every version 1 macaroon).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        RootKey::new(0, bytes)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// HMAC-SHA256 of `msg` under this key, for secrets derived from it
    /// (access keys' secrets), never for macaroons' signatures.
    pub fn derive(&self, msg: &[u8]) -> [u8; 32] {
        chain(&self.key, msg)
    }
}

/// The root keys a deployment accepts: the newest signs, every one verifies
/// (until the macaroons it signed expire).
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<RootKey>,
}

impl KeyRing {
    /// None when `keys` is empty.
    pub fn new(mut keys: Vec<RootKey>) -> Option<Self> {
        keys.sort_by_key(RootKey::id);
        keys.dedup_by_key(|k| k.id);
        (!keys.is_empty()).then_some(KeyRing { keys })
    }

    /// The key new macaroons are signed with: the newest.
    pub fn current(&self) -> &RootKey {
        self.keys.last().expect("a key ring is never empty")
    }

    pub fn get(&self, id: u32) -> Option<&RootKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(RootKey::id)
    }
}

/// Whose credential this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A person or a program using the operator APIs.
    Operator,
    /// A node's agent.
    Agent,
}

/// A first-party caveat. Every caveat must hold for the macaroon to be valid;
/// adding one can only narrow what a macaroon allows.
///
/// Scope narrows from everything: a macaroon without an `org` caveat spans
/// every organisation (the platform administrator's), `org` confines it to
/// one, `project` to one project (and takes away every organisation power).
/// `role` caps the project role and `org-role` the organisation role (None:
/// no organisation power); each is unrestricted when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caveat {
    Kind(CredentialKind),
    Org(OrgId),
    Project(ProjectId),
    Role(Role),
    OrgRole(Option<OrgRole>),
    Node(NodeId),
    /// Only calls about this workload (and WhoAmI).
    Workload(WorkloadId),
    /// Only calls that change nothing.
    ReadOnly,
    ExpiresAt(UnixMillis),
}

impl Caveat {
    fn encode(&self) -> String {
        match self {
            Caveat::Kind(CredentialKind::Operator) => "kind = operator".into(),
            Caveat::Kind(CredentialKind::Agent) => "kind = agent".into(),
            Caveat::Org(id) => format!("org = {id}"),
            Caveat::Project(id) => format!("project = {id}"),
            Caveat::Role(r) => format!("role = {}", r.as_str()),
            Caveat::OrgRole(r) => format!("org-role = {}", r.map_or("none", OrgRole::as_str)),
            Caveat::Node(id) => format!("node = {id}"),
            Caveat::Workload(id) => format!("workload = {id}"),
            Caveat::ReadOnly => "access = read-only".into(),
            Caveat::ExpiresAt(ms) => format!("expires = {ms}"),
        }
    }

    fn decode(s: &str) -> Result<Self, AuthError> {
        let (k, v) = s.split_once(" = ").ok_or(AuthError::Malformed)?;
        let m = |_| AuthError::Malformed;
        Ok(match k {
            "kind" => Caveat::Kind(match v {
                "operator" => CredentialKind::Operator,
                "agent" => CredentialKind::Agent,
                _ => return Err(AuthError::Malformed),
            }),
            "org" => Caveat::Org(OrgId::parse(v).map_err(m)?),
            "project" => Caveat::Project(ProjectId::parse(v).map_err(m)?),
            "role" => Caveat::Role(Role::parse(v).map_err(m)?),
            "org-role" => Caveat::OrgRole(match v {
                "none" => None,
                v => Some(OrgRole::parse(v).map_err(m)?),
            }),
            "node" => Caveat::Node(NodeId::parse(v).map_err(m)?),
            "workload" => Caveat::Workload(WorkloadId::parse(v).map_err(m)?),
            "access" if v == "read-only" => Caveat::ReadOnly,
            "expires" => Caveat::ExpiresAt(v.parse().map_err(|_| AuthError::Malformed)?),
            // Unknown caveats fail closed.
            _ => return Err(AuthError::Malformed),
        })
    }
}

/// What a verified macaroon grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub token_id: TokenId,
    pub kind: CredentialKind,
    /// None: every organisation.
    pub org: Option<OrgId>,
    /// None: every project in scope.
    pub project: Option<ProjectId>,
    /// The lowest role any caveat names.
    pub role: Role,
    /// The lowest organisation role any caveat names (org-admin when none
    /// does); always None for a project's macaroon.
    pub org_role: Option<OrgRole>,
    pub node: Option<NodeId>,
    pub workload: Option<WorkloadId>,
    pub read_only: bool,
    /// The earliest expiry any caveat names.
    pub expires_at: Option<UnixMillis>,
    /// The root key that signed it.
    pub key_id: u32,
}

/// An HMAC-SHA256 chain: `sig0 = HMAC(root, id)`, `sig_i = HMAC(sig_{i-1}, caveat_i)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macaroon {
    key_id: u32,
    id: TokenId,
    caveats: Vec<String>,
    sig: [u8; 32],
}

fn chain(key: &hmac::Key, msg: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(key, msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl Macaroon {
    pub fn mint(root: &RootKey, id: TokenId, caveats: &[Caveat]) -> Self {
        let mut m =
            Macaroon { key_id: root.id, sig: chain(&root.key, id.as_str().as_bytes()), id, caveats: Vec::new() };
        for c in caveats {
            m = m.attenuate(c);
        }
        m
    }

    /// Adds a caveat. Anyone holding a macaroon can do this without the root key.
    pub fn attenuate(mut self, caveat: &Caveat) -> Self {
        let c = caveat.encode();
        self.sig = chain(&hmac::Key::new(hmac::HMAC_SHA256, &self.sig), c.as_bytes());
        self.caveats.push(c);
        self
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The id of the root key it claims to be signed with.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(64 + self.caveats.iter().map(|c| c.len() + 2).sum::<usize>());
        if self.key_id == 0 {
            buf.push(VERSION_1);
        } else {
            buf.push(VERSION);
            buf.extend_from_slice(&self.key_id.to_be_bytes());
        }
        put(&mut buf, self.id.as_str().as_bytes());
        buf.push(self.caveats.len() as u8);
        for c in &self.caveats {
            put(&mut buf, c.as_bytes());
        }
        buf.extend_from_slice(&self.sig);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(buf))
    }

    pub fn decode(s: &str) -> Result<Self, AuthError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(AuthError::Malformed)?;
        if body.len() > 24 * 1024 {
            return Err(AuthError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| AuthError::Malformed)?;
        let mut r = Reader(&bytes);
        let key_id = match r.byte()? {
            VERSION_1 => 0,
            VERSION => u32::from_be_bytes([r.byte()?, r.byte()?, r.byte()?, r.byte()?]),
            _ => return Err(AuthError::Malformed),
        };
        let id = TokenId::parse(r.str()?).map_err(|_| AuthError::Malformed)?;
        let n = r.byte()? as usize;
        if n > MAX_CAVEATS {
            return Err(AuthError::Malformed);
        }
        let caveats = (0..n).map(|_| r.str().map(str::to_owned)).collect::<Result<Vec<_>, _>>()?;
        let sig: [u8; 32] = r.0.try_into().map_err(|_| AuthError::Malformed)?;
        Ok(Macaroon { key_id, id, caveats, sig })
    }

    /// The caveats as written, oldest first.
    pub fn caveats(&self) -> &[String] {
        &self.caveats
    }

    /// [`Macaroon::verify`] with the key of the ring it names.
    pub fn verify_in(&self, ring: &KeyRing, now: UnixMillis) -> Result<Claims, AuthError> {
        self.verify(ring.get(self.key_id).ok_or(AuthError::BadSignature)?, now)
    }

    /// Checks the signature chain against `root` in constant time, then the
    /// caveats against `now`.
    pub fn verify(&self, root: &RootKey, now: UnixMillis) -> Result<Claims, AuthError> {
        if root.id != self.key_id {
            return Err(AuthError::BadSignature);
        }
        let mut key_bytes = chain(&root.key, self.id.as_str().as_bytes());
        let (last, init) = match self.caveats.split_last() {
            Some(x) => x,
            None => {
                // Zero caveats never grant anything: no project, no role.
                return Err(AuthError::Malformed);
            }
        };
        for c in init {
            key_bytes = chain(&hmac::Key::new(hmac::HMAC_SHA256, &key_bytes), c.as_bytes());
        }
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key_bytes), last.as_bytes(), &self.sig)
            .map_err(|_| AuthError::BadSignature)?;

        let mut kind = None;
        let mut org: Option<OrgId> = None;
        let mut project: Option<ProjectId> = None;
        let mut role: Option<Role> = None;
        let mut org_role: Option<OrgRole> = Some(OrgRole::Admin);
        let mut node: Option<NodeId> = None;
        let mut workload: Option<WorkloadId> = None;
        let mut read_only = false;
        let mut expires_at: Option<UnixMillis> = None;
        for c in &self.caveats {
            match Caveat::decode(c)? {
                Caveat::Kind(k) => same(&mut kind, k)?,
                Caveat::Org(o) => same(&mut org, o)?,
                Caveat::Project(p) => same(&mut project, p)?,
                Caveat::Node(n) => same(&mut node, n)?,
                Caveat::Workload(w) => same(&mut workload, w)?,
                Caveat::ReadOnly => read_only = true,
                Caveat::Role(r) => role = Some(role.map_or(r, |old| old.min(r))),
                Caveat::OrgRole(r) => org_role = org_role.min(r),
                Caveat::ExpiresAt(t) => expires_at = Some(expires_at.map_or(t, |old| old.min(t))),
            }
        }
        if expires_at.is_some_and(|t| now >= t) {
            return Err(AuthError::Expired);
        }
        let kind = kind.ok_or(AuthError::Malformed)?;
        if project.is_some() {
            org_role = None;
        }
        let role = match kind {
            CredentialKind::Operator => role.ok_or(AuthError::Malformed)?,
            // Agents act only through the agent protocol; they hold no operator role.
            CredentialKind::Agent => {
                if node.is_none() {
                    return Err(AuthError::Malformed);
                }
                Role::Viewer
            }
        };
        Ok(Claims {
            token_id: self.id.clone(),
            kind,
            org,
            project,
            role,
            org_role,
            node,
            workload,
            read_only,
            expires_at,
            key_id: self.key_id,
        })
    }
}

/// Repeated caveats of a kind that cannot be narrowed must agree.
fn same<T: PartialEq>(slot: &mut Option<T>, v: T) -> Result<(), AuthError> {
    match slot {
        Some(old) if *old != v => Err(AuthError::Malformed),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

fn put(buf: &mut Vec<u8>, b: &[u8]) {
    let len = b.len().min(MAX_FIELD);
    buf.extend_from_slice(&(len as u16).to_be_bytes());
    buf.extend_from_slice(&b[..len]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, AuthError> {
        let (&b, rest) = self.0.split_first().ok_or(AuthError::Malformed)?;
        self.0 = rest;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, AuthError> {
        if self.0.len() < 2 {
            return Err(AuthError::Malformed);
        }
        let len = u16::from_be_bytes([self.0[0], self.0[1]]) as usize;
        if len > MAX_FIELD || self.0.len() < 2 + len {
            return Err(AuthError::Malformed);
        }
        let s = std::str::from_utf8(&self.0[2..2 + len]).map_err(|_| AuthError::Malformed)?;
        self.0 = &self.0[2 + len..];
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootKey {
        RootKey::from_bytes(&[7u8; 32])
    }

    fn operator(role: Role, expires: Option<UnixMillis>) -> Macaroon {
        let mut caveats = vec![
            Caveat::Kind(CredentialKind::Operator),
            Caveat::Project(ProjectId::from_random([1; 10])),
            Caveat::Role(role),
        ];
        if let Some(t) = expires {
            caveats.push(Caveat::ExpiresAt(t));
        }
        Macaroon::mint(&root(), TokenId::from_random([9; 10]), &caveats)
    }

    #[test]
    fn mint_encode_decode_verify() {
        let m = operator(Role::Admin, Some(1000));
        let s = m.encode();
        let back = Macaroon::decode(&s).unwrap();
        assert_eq!(back, m);
        let claims = back.verify(&root(), 999).unwrap();
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.kind, CredentialKind::Operator);
        assert_eq!(claims.expires_at, Some(1000));
        assert_eq!(back.verify(&root(), 1000), Err(AuthError::Expired));
    }

    #[test]
    fn wrong_root_or_tampering_fails() {
        let m = operator(Role::Viewer, None);
        assert_eq!(m.verify(&RootKey::from_bytes(&[8u8; 32]), 0), Err(AuthError::BadSignature));
        assert_eq!(m.verify(&RootKey::new(1, &[7u8; 32]), 0), Err(AuthError::BadSignature), "another key id");

        // Swap the role caveat for admin while keeping the signature.
        let mut forged = m.clone();
        forged.caveats[2] = "role = admin".into();
        assert_eq!(forged.verify(&root(), 0), Err(AuthError::BadSignature));

        // Drop the last caveat (the role): the signature no longer matches.
        let mut dropped = m.clone();
        dropped.caveats.pop();
        assert_eq!(dropped.verify(&root(), 0), Err(AuthError::BadSignature));

        // Flip one byte of the encoded form.
        let mut s = m.encode().into_bytes();
        let i = s.len() - 3;
        s[i] = if s[i] == b'A' { b'B' } else { b'A' };
        let s = String::from_utf8(s).unwrap();
        assert!(Macaroon::decode(&s).map(|m| m.verify(&root(), 0)).map_or(true, |r| r.is_err()));
    }

    #[test]
    fn attenuation_only_narrows() {
        let m = operator(Role::Admin, Some(10_000));
        let narrowed = m.attenuate(&Caveat::Role(Role::Viewer)).attenuate(&Caveat::ExpiresAt(500));
        let claims = narrowed.verify(&root(), 0).unwrap();
        assert_eq!(claims.role, Role::Viewer);
        assert_eq!(claims.expires_at, Some(500));
        // A broader role caveat cannot widen it.
        let widened = narrowed.attenuate(&Caveat::Role(Role::Admin));
        assert_eq!(widened.verify(&root(), 0).unwrap().role, Role::Viewer);
        // An organisation role cannot be added back to a project's macaroon.
        let org = widened.clone().attenuate(&Caveat::OrgRole(Some(OrgRole::Admin)));
        assert_eq!(org.verify(&root(), 0).unwrap().org_role, None);
        // A second, different project makes it invalid.
        let two = widened.attenuate(&Caveat::Project(ProjectId::from_random([2; 10])));
        assert_eq!(two.verify(&root(), 0), Err(AuthError::Malformed));
    }

    #[test]
    fn scope_narrows_from_everything() {
        let platform = Macaroon::mint(
            &root(),
            TokenId::from_random([5; 10]),
            &[Caveat::Kind(CredentialKind::Operator), Caveat::Role(Role::Admin)],
        );
        let c = platform.verify(&root(), 0).unwrap();
        assert_eq!((c.org, c.project, c.org_role), (None, None, Some(OrgRole::Admin)));
        let org = OrgId::from_random([6; 10]);
        let viewer = platform.attenuate(&Caveat::Org(org.clone())).attenuate(&Caveat::OrgRole(Some(OrgRole::Viewer)));
        let c = viewer.verify(&root(), 0).unwrap();
        assert_eq!((c.org, c.org_role), (Some(org), Some(OrgRole::Viewer)));
        let none = viewer.attenuate(&Caveat::OrgRole(None)).attenuate(&Caveat::OrgRole(Some(OrgRole::Admin)));
        assert_eq!(none.verify(&root(), 0).unwrap().org_role, None, "none stays none");
    }

    #[test]
    fn a_key_ring_verifies_with_the_key_named() {
        let (old, new) = (root(), RootKey::new(3, &[8u8; 32]));
        let ring = KeyRing::new(vec![new.clone(), old.clone()]).unwrap();
        assert_eq!(ring.current().id(), 3);
        let by_old = operator(Role::Viewer, None);
        let by_new = Macaroon::mint(
            ring.current(),
            TokenId::from_random([4; 10]),
            &[Caveat::Kind(CredentialKind::Operator), Caveat::Role(Role::Admin)],
        );
        let back = Macaroon::decode(&by_new.encode()).unwrap();
        assert_eq!(back.key_id(), 3);
        assert_eq!(back.verify_in(&ring, 0).unwrap().key_id, 3);
        assert_eq!(Macaroon::decode(&by_old.encode()).unwrap().verify_in(&ring, 0).unwrap().key_id, 0);
        // Naming another key in the ring does not verify.
        let mut lying = back.clone();
        lying.key_id = 0;
        assert_eq!(lying.verify_in(&ring, 0), Err(AuthError::BadSignature));
        // Without the old key, its macaroons fail.
        let only_new = KeyRing::new(vec![new]).unwrap();
        assert_eq!(by_old.verify_in(&only_new, 0), Err(AuthError::BadSignature));
    }

    #[test]
    fn confining_caveats_round_trip() {
        let w = WorkloadId::from_random([2; 10]);
        let m = operator(Role::Admin, None).attenuate(&Caveat::Workload(w.clone())).attenuate(&Caveat::ReadOnly);
        let c = Macaroon::decode(&m.encode()).unwrap().verify(&root(), 0).unwrap();
        assert_eq!((c.workload, c.read_only), (Some(w), true));
        let two = m.attenuate(&Caveat::Workload(WorkloadId::from_random([3; 10])));
        assert_eq!(two.verify(&root(), 0), Err(AuthError::Malformed), "two workloads");
    }

    #[test]
    fn garbage_is_malformed() {
        for s in ["", "tm1_", "tm1_!!!", "Bearer x", "tm1_AAAA"] {
            assert!(Macaroon::decode(s).is_err(), "{s}");
        }
    }

    #[test]
    fn agent_credential_requires_node() {
        let p = ProjectId::from_random([1; 10]);
        let m = Macaroon::mint(
            &root(),
            TokenId::from_random([3; 10]),
            &[Caveat::Kind(CredentialKind::Agent), Caveat::Project(p.clone())],
        );
        assert_eq!(m.verify(&root(), 0), Err(AuthError::Malformed));
        let n = NodeId::from_random([4; 10]);
        let m = m.attenuate(&Caveat::Node(n.clone()));
        let c = m.verify(&root(), 0).unwrap();
        assert_eq!(c.node, Some(n));
        assert_eq!(c.kind, CredentialKind::Agent);
    }
}
