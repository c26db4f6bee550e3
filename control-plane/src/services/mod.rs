//! The gRPC services. Each converts `pb` requests to domain types once, with
//! validation, authorises the caller, and maps errors through the shared
//! [`tether_types::ErrorCode`].

pub mod admin;
pub mod agent;
pub mod jobs;
pub mod nodes;
pub mod placement;
pub mod tenancy;
pub mod workloads;

use std::time::Duration;

use tether_types::{Error, ErrorCode};

/// The one conversion from a domain error to a gRPC status.
pub fn status(e: Error) -> tonic::Status {
    let mut st = tonic::Status::new(tonic::Code::from_i32(e.code.grpc_code()), e.message);
    st.metadata_mut().insert(ErrorCode::METADATA_KEY, tonic::metadata::MetadataValue::from_static(e.code.as_str()));
    st
}

pub fn store_status(e: tether_store::StoreError) -> tonic::Status {
    if !matches!(e, tether_store::StoreError::Domain(_)) {
        tracing::error!(error = &e as &dyn std::error::Error, "store operation failed");
    }
    status(e.into())
}

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
