//! REST route matching on any method and path: never panics, and a match
//! binds each of the route's variables to a non-empty segment.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether_rest::Bridge;

fn bridge() -> &'static Bridge {
    static B: OnceLock<Bridge> = OnceLock::new();
    B.get_or_init(|| Bridge::from_descriptors(tether_proto::FILE_DESCRIPTOR_SET).expect("the bridge builds"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, path)) = data.split_first() else { return };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let methods = [http::Method::GET, http::Method::POST, http::Method::PATCH, http::Method::DELETE];
    let method = methods[usize::from(m % 4)].clone();
    if let Ok((route, bound)) = bridge().find(&method, path) {
        assert!(route.grpc_path.starts_with('/'));
        assert!(bound.iter().all(|(_, v)| !v.is_empty()), "{path} bound an empty value: {bound:?}");
    }
});
