//! The REST bridge.
//!
//! Owns the mapping from HTTP to gRPC: routes are derived at start-up from the
//! `google.api.http` options in the encoded descriptor set (no route is
//! written by hand), JSON follows the proto3 mapping via prost-reflect, and
//! each call goes in-process through the same tonic service stack as gRPC, so
//! authentication, limits and metrics apply alike. Server-streaming methods
//! are served as Server-Sent Events. It also emits an OpenAPI 3.1 document
//! from the same descriptors.
//!
//! It does not bind sockets: the binary mounts [`router`] on its HTTP server.

mod frames;
mod handler;
mod openapi;
mod routes;
mod sse;
mod strict;

pub use handler::{SignedAuth, SignedCall, domain_error, json_error, router};
pub use openapi::openapi;
pub use routes::{Bridge, Route};

/// Errors building the bridge from descriptors.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("descriptor set does not decode")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("method {method}: invalid http rule: {why}")]
    Rule { method: String, why: String },
}
