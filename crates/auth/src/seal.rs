//! Sealed secrets: one copy of a value per node, sealed to the node's own
//! X25519 key with HPKE (RFC 9180, base mode) through the `hpke` crate:
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
//!
//! The HPKE `info` names what a copy is (project, secret, version, node),
//! so that a copy moved to another name, version or node does not open.

use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// The suite, as the API names it to clients that seal by themselves.
pub const SUITE: &str = "HPKE base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";
/// Length of a public key, a private key and an encapsulated key.
pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a sealing public key is {KEY_LEN} bytes (X25519), not {0}")]
    BadPublicKey(usize),
    #[error("a sealing private key is {KEY_LEN} bytes (X25519), not {0}")]
    BadPrivateKey(usize),
    #[error("an encapsulated key is {KEY_LEN} bytes, not {0}")]
    BadEnc(usize),
    #[error("sealing failed")]
    Seal,
    /// Wrong key, wrong label or a changed ciphertext: nothing says which.
    #[error("the copy does not open with this node's key")]
    Open,
}

/// What a copy is: the HPKE `info` it is sealed under.
#[derive(Debug, Clone, Copy)]
pub struct CopyLabel<'a> {
    pub project: &'a str,
    pub name: &'a str,
    pub version: u32,
    pub node: &'a str,
}

impl CopyLabel<'_> {
    /// `tether secret v1 NUL project NUL name NUL version NUL node NUL`: no
    /// field may hold NUL (ids and names never do), so it is unambiguous.
    pub fn info(&self) -> Vec<u8> {
        let version = self.version.to_string();
        let mut info = b"tether secret v1\0".to_vec();
        for part in [self.project, self.name, &version, self.node] {
            info.extend_from_slice(part.as_bytes());
            info.push(0);
        }
        info
    }
}

/// One sealed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The encapsulated key.
    pub enc: Vec<u8>,
    /// The ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` to `public_key` as `label`.
pub fn seal(public_key: &[u8], label: &CopyLabel<'_>, plaintext: &[u8]) -> Result<Sealed, SealError> {
    if public_key.len() != KEY_LEN {
        return Err(SealError::BadPublicKey(public_key.len()));
    }
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key).map_err(|_| SealError::BadPublicKey(KEY_LEN))?;
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, &label.info(), plaintext, b"")
            .map_err(|_| SealError::Seal)?;
    Ok(Sealed { enc: enc.to_bytes().to_vec(), ciphertext })
}

/// A node's private sealing key.
pub struct SealKey {
    private: <Kem as hpke::Kem>::PrivateKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", crate::hex_encode(&self.public_key()))
    }
}

impl SealKey {
    /// A new key from the system's random source.
    pub fn generate() -> SealKey {
        let (private, _) = Kem::gen_keypair();
        SealKey { private }
    }

    pub fn from_bytes(b: &[u8]) -> Result<SealKey, SealError> {
        if b.len() != KEY_LEN {
            return Err(SealError::BadPrivateKey(b.len()));
        }
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(b).map_err(|_| SealError::BadPrivateKey(KEY_LEN))?;
        Ok(SealKey { private })
    }

    /// The private key's bytes, for the node's 0600 state file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.private.to_bytes().to_vec()
    }

    pub fn public_key(&self) -> Vec<u8> {
        Kem::sk_to_pk(&self.private).to_bytes().to_vec()
    }

    /// Opens a copy sealed to this key as `label`.
    pub fn open(&self, label: &CopyLabel<'_>, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        if sealed.enc.len() != KEY_LEN {
            return Err(SealError::BadEnc(sealed.enc.len()));
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| SealError::Open)?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &self.private,
            &enc,
            &label.info(),
            &sealed.ciphertext,
            b"",
        )
        .map_err(|_| SealError::Open)
    }

    /// Opens a copy sealed to this key as `from` and seals the value again
    /// to `public_key` as `to`: how a node that holds a secret hands it to
    /// a newcomer without the control plane seeing it.
    pub fn reseal(
        &self,
        from: &CopyLabel<'_>,
        sealed: &Sealed,
        public_key: &[u8],
        to: &CopyLabel<'_>,
    ) -> Result<Sealed, SealError> {
        let plain = zeroize::Zeroizing::new(self.open(from, sealed)?);
        seal(public_key, to, &plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label<'a>(node: &'a str) -> CopyLabel<'a> {
        CopyLabel { project: "prj-1", name: "db-password", version: 2, node }
    }

    #[test]
    fn a_copy_opens_only_with_its_key_and_as_its_label() {
        let a = SealKey::generate();
        let b = SealKey::generate();
        assert_eq!(a.public_key().len(), KEY_LEN);
        assert_ne!(a.public_key(), b.public_key());
        let sealed = seal(&a.public_key(), &label("nd-a"), b"hunter2").unwrap();
        assert_eq!(sealed.enc.len(), KEY_LEN);
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open(&label("nd-a"), &sealed).unwrap(), b"hunter2");
        // Another key, another node, name or version: no.
        assert_eq!(b.open(&label("nd-a"), &sealed), Err(SealError::Open));
        assert_eq!(a.open(&label("nd-b"), &sealed), Err(SealError::Open));
        let other = CopyLabel { name: "db-passwore", ..label("nd-a") };
        assert_eq!(a.open(&other, &sealed), Err(SealError::Open));
        let other = CopyLabel { version: 3, ..label("nd-a") };
        assert_eq!(a.open(&other, &sealed), Err(SealError::Open));
        // Any changed byte: no.
        for i in 0..sealed.ciphertext.len() {
            let mut t = sealed.clone();
            t.ciphertext[i] ^= 1;
            assert_eq!(a.open(&label("nd-a"), &t), Err(SealError::Open), "byte {i}");
        }
        let mut t = sealed.clone();
        t.enc[0] ^= 1;
        assert_eq!(a.open(&label("nd-a"), &t), Err(SealError::Open));
        // Two seals of one value differ (a fresh ephemeral key each).
        assert_ne!(seal(&a.public_key(), &label("nd-a"), b"hunter2").unwrap(), sealed);
    }

    #[test]
    fn keys_round_trip_and_reseal_hands_the_value_on() {
        let a = SealKey::generate();
        let a2 = SealKey::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(a.public_key(), a2.public_key());
        let b = SealKey::generate();
        let sealed = seal(&a.public_key(), &label("nd-a"), b"v").unwrap();
        let for_b = a2.reseal(&label("nd-a"), &sealed, &b.public_key(), &label("nd-b")).unwrap();
        assert_eq!(b.open(&label("nd-b"), &for_b).unwrap(), b"v");
        assert_eq!(a.open(&label("nd-b"), &for_b), Err(SealError::Open));
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(seal(&[0; 31], &label("n"), b"x"), Err(SealError::BadPublicKey(31)));
        assert_eq!(SealKey::from_bytes(&[1; 33]).unwrap_err(), SealError::BadPrivateKey(33));
        let a = SealKey::generate();
        let s = Sealed { enc: vec![0; 5], ciphertext: vec![] };
        assert_eq!(a.open(&label("n"), &s), Err(SealError::BadEnc(5)));
    }

    #[test]
    fn the_info_names_every_part() {
        assert_eq!(label("nd-a").info(), b"tether secret v1\0prj-1\0db-password\x002\0nd-a\0".to_vec());
    }
}
