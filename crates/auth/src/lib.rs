//! Credentials for Tether: macaroons, roles and join-token secrets.
//!
//! Owns token formats and their cryptography (ring HMAC-SHA256, constant-time
//! verification). It does not know where root keys or token records are
//! stored, and it never reads a clock: callers pass `now`.

pub mod heartbeat;
mod join;
mod macaroon;
pub mod pki;
pub mod seal;
pub mod sigv4;

pub use join::{JoinSecret, hash_join_secret, hashes_equal, parse_join_token};
pub use macaroon::{Caveat, Claims, CredentialKind, KeyRing, Macaroon, RootKey};
pub use sigv4::{hex_decode, hex_encode};

use ring::rand::{SecureRandom, SystemRandom};

/// Why a credential was refused. Deliberately coarse: clients learn that a
/// credential is bad, not which check it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credential is malformed")]
    Malformed,
    #[error("credential signature is invalid")]
    BadSignature,
    #[error("credential has expired")]
    Expired,
}

impl From<AuthError> for tether_types::Error {
    fn from(e: AuthError) -> Self {
        tether_types::Error::unauthenticated(e.to_string())
    }
}

/// Fills `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("the OS random source failed");
    b
}
