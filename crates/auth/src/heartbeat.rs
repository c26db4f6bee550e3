//! Signed heartbeats of HTTP agents: the per-node secret (derived from a
//! root key, never stored) and `hex(HMAC-SHA256(secret, timestamp "." nonce
//! "." body))` over the raw body.

use ring::hmac;
use tether_types::{NodeId, UnixMillis};

use crate::RootKey;
use crate::sigv4::{hex_decode, hex_encode};

/// How far a heartbeat's timestamp may be from the control plane's clock.
pub const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// The heartbeat secret of `node`, from the root key its record names.
pub fn http_agent_secret(root: &RootKey, node: &NodeId) -> [u8; 32] {
    let mut msg = b"tether http agent v1\0".to_vec();
    msg.extend_from_slice(node.as_str().as_bytes());
    root.derive(&msg)
}

fn message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 2);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'.');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// The signature an agent sends in `x-tether-signature` (lowercase hex).
pub fn sign(secret: &[u8], timestamp: &str, nonce: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hex_encode(hmac::sign(&key, &message(timestamp, nonce, body)).as_ref())
}

/// Why a heartbeat was refused. The agent learns which rule it broke,
/// never anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("x-tether-timestamp must be the request's time in whole seconds since the Unix epoch")]
    BadTimestamp,
    #[error("the timestamp is more than 5 minutes from the control plane's clock")]
    Skewed,
    #[error("x-tether-nonce must be 16 to 128 characters of A-Z, a-z, 0-9, '-' and '_'")]
    BadNonce,
    #[error("the signature does not match")]
    BadSignature,
}

/// Checks a heartbeat's timestamp (seconds), nonce and signature (hex, any
/// case) against `secret`, at `now`. Whether the nonce was seen before is
/// the caller's to check, after this passes.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    nonce: &str,
    body: &[u8],
    signature: &str,
    now: UnixMillis,
) -> Result<(), HeartbeatError> {
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeartbeatError::BadTimestamp);
    }
    let at: i64 = timestamp.parse().map_err(|_| HeartbeatError::BadTimestamp)?;
    if (at.saturating_mul(1000) - now).abs() > MAX_SKEW_MS {
        return Err(HeartbeatError::Skewed);
    }
    if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HeartbeatError::BadNonce);
    }
    let given = hex_decode(&signature.to_ascii_lowercase()).ok_or(HeartbeatError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &message(timestamp, nonce, body), &given).map_err(|_| HeartbeatError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = {
        let mut s = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            s[i] = i as u8;
            i += 1;
        }
        s
    };

    /// Python's `hmac.new(bytes(range(32)), b'1770775200.abc123.{"health":"ok"}',
    /// hashlib.sha256).hexdigest()`: what the documented construction gives
    /// in another implementation.
    #[test]
    fn signature_matches_an_independent_implementation() {
        assert_eq!(
            sign(&SECRET, "1770775200", "abc123", br#"{"health":"ok"}"#),
            "b92f87f1635f969db3bdd4969a4a2acb00da8f339970126d3d3b8b21ce1c2e51"
        );
    }

    #[test]
    fn verification_refuses_each_broken_rule() {
        let now = 1_770_775_200_000;
        let (ts, nonce, body) = ("1770775200", "n0nce-0123456789", &br#"{"health":"ok"}"#[..]);
        let sig = sign(&SECRET, ts, nonce, body);
        assert_eq!(verify(&SECRET, ts, nonce, body, &sig, now), Ok(()));
        assert_eq!(verify(&SECRET, ts, nonce, body, &sig.to_uppercase(), now), Ok(()));
        assert_eq!(verify(&SECRET, ts, nonce, br#"{"health":"ko"}"#, &sig, now), Err(HeartbeatError::BadSignature));
        assert_eq!(verify(&[1; 32], ts, nonce, body, &sig, now), Err(HeartbeatError::BadSignature));
        assert_eq!(verify(&SECRET, ts, nonce, body, "zz", now), Err(HeartbeatError::BadSignature));
        assert_eq!(verify(&SECRET, ts, nonce, body, &sig, now + MAX_SKEW_MS + 1000), Err(HeartbeatError::Skewed));
        assert_eq!(verify(&SECRET, ts, nonce, body, &sig, now - MAX_SKEW_MS - 1000), Err(HeartbeatError::Skewed));
        assert_eq!(verify(&SECRET, ts, nonce, body, &sig, now + MAX_SKEW_MS), Ok(()));
        assert_eq!(verify(&SECRET, "-1", nonce, body, &sig, now), Err(HeartbeatError::BadTimestamp));
        assert_eq!(verify(&SECRET, "1.5", nonce, body, &sig, now), Err(HeartbeatError::BadTimestamp));
        assert_eq!(verify(&SECRET, ts, "short", body, &sig, now), Err(HeartbeatError::BadNonce));
        assert_eq!(verify(&SECRET, ts, "has a space 0123456", body, &sig, now), Err(HeartbeatError::BadNonce));
        // The timestamp and the nonce are signed too.
        assert_eq!(verify(&SECRET, "1770775201", nonce, body, &sig, now), Err(HeartbeatError::BadSignature));
        assert_eq!(verify(&SECRET, ts, "n0nce-0123456780", body, &sig, now), Err(HeartbeatError::BadSignature));
    }
}
