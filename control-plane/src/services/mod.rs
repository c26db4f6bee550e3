//! The gRPC services. Each converts `pb` requests to domain types once, with
//! validation, authorises the caller, and maps errors through the shared
//! [`tether_types::ErrorCode`].

pub mod access_keys;
pub mod admin;
pub mod agent;
pub mod events;
pub mod http_agent;
pub mod insights;
pub mod jobs;
pub mod nodes;
pub mod organizations;
pub mod placement;
pub mod pools;
pub mod projects;
pub mod secrets;
pub mod settings;
pub mod summary;
pub mod tenancy;
pub mod usage;
pub mod workloads;

use std::time::Duration;

use tether_types::{Error, ErrorCode};

pub use crate::status::{status, store_status};

/// Validates an optional TTL: defaults to `default`, at most a year, positive.
pub fn ttl(d: Option<prost_types::Duration>, default: Duration) -> Result<Duration, tonic::Status> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Err(status(Error::invalid("ttl must be positive")));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d > Duration::from_secs(365 * 86400) {
        return Err(status(Error::new(ErrorCode::InvalidArgument, "ttl is at most 365 days")));
    }
    Ok(d)
}
