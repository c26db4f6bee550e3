//! Any string offered as a token: decoding never panics, and what decodes
//! encodes back to itself and verifies (or not) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_auth::{KeyRing, Macaroon, RootKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(m) = Macaroon::decode(s) else { return };
    let again = Macaroon::decode(&m.encode()).expect("an encoded macaroon decodes");
    assert_eq!(again, m, "decode(encode(m)) == m");
    let ring = KeyRing::new(vec![RootKey::new(0, &[7; 32]), RootKey::new(1, &[8; 32])]).unwrap();
    let _ = m.verify_in(&ring, 1_000);
    let _ = m.verify(ring.current(), i64::MAX);
});
