use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use tether_types::JoinTokenId;

use crate::{AuthError, random_bytes};

const PREFIX: &str = "tjt1_";

/// A freshly generated join token: the string handed to agents, and the hash
/// the store keeps instead of the secret.
pub struct JoinSecret {
    pub token: String,
    pub secret_hash: Vec<u8>,
}

impl JoinSecret {
    pub fn generate(id: &JoinTokenId) -> Self {
        let secret: [u8; 32] = random_bytes();
        let token = format!("{PREFIX}{id}.{}", URL_SAFE_NO_PAD.encode(secret));
        JoinSecret { token, secret_hash: hash_join_secret(&secret) }
    }
}

pub fn hash_join_secret(secret: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret).as_ref().to_vec()
}

/// Splits a join token into its id and secret. Compare the secret's hash to
/// the stored one with [`hashes_equal`].
pub fn parse_join_token(s: &str) -> Result<(JoinTokenId, Vec<u8>), AuthError> {
    let body = s.trim().strip_prefix(PREFIX).ok_or(AuthError::Malformed)?;
    let (id, secret) = body.split_once('.').ok_or(AuthError::Malformed)?;
    let id = JoinTokenId::parse(id).map_err(|_| AuthError::Malformed)?;
    let secret = URL_SAFE_NO_PAD.decode(secret).map_err(|_| AuthError::Malformed)?;
    if secret.len() != 32 {
        return Err(AuthError::Malformed);
    }
    Ok((id, secret))
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_and_parse() {
        let id = JoinTokenId::from_random([5; 10]);
        let js = JoinSecret::generate(&id);
        let (pid, secret) = parse_join_token(&js.token).unwrap();
        assert_eq!(pid, id);
        assert!(hashes_equal(&hash_join_secret(&secret), &js.secret_hash));
        assert!(!hashes_equal(&hash_join_secret(b"other"), &js.secret_hash));
        assert!(parse_join_token("tjt1_nope").is_err());
        assert!(parse_join_token(&js.token.replace("tjt1_", "x")).is_err());
    }
}
