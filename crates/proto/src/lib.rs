//! Generated protobuf types and gRPC stubs for Tether's APIs.
//!
//! This crate owns nothing but generated code and the encoded descriptor set.
//! Generated types stay at the edges: the control plane and agent convert them
//! to `tether-types` domain types once, with validation.

#![allow(clippy::all, rust_2018_idioms)]

pub mod tether {
    pub mod v1 {
        tonic::include_proto!("tether.v1");
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("tether.agent.v1");
        }
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod codec;
pub mod rules;

/// The agent protocol (`tether.agent.v1`).
pub use tether::agent::v1 as agent_pb;
/// Operator-facing API (`tether.v1`).
pub use tether::v1 as pb;

/// A client interceptor that sends `authorization: Bearer <token>` on every
/// call (or nothing, without a token). Shared by the agent, the CLI, the load
/// generator and the tests.
#[derive(Clone, Debug)]
pub struct Bearer {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    project: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    /// Fails when the token holds characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        let token = token.map(|t| format!("Bearer {}", t.trim()).parse()).transpose()?;
        Ok(Bearer { token, project: None })
    }

    /// Names the project an organisation or platform token acts on
    /// (`x-tether-project`).
    pub fn with_project(
        mut self,
        project: Option<&str>,
    ) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        self.project = project.map(|p| p.trim().parse()).transpose()?;
        Ok(self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.token {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.project {
            req.metadata_mut().insert("x-tether-project", v.clone());
        }
        Ok(req)
    }
}

/// The encoded `FileDescriptorSet` of every Tether proto and its imports, with
/// extension options (`google.api.http`) kept. Feed it to server reflection
/// and the REST bridge.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tether_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_keeps_http_annotations() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let node = fds.file.iter().find(|f| f.name() == "tether/v1/node.proto").expect("node.proto in descriptor set");
        assert_eq!(node.service[0].method[0].name(), "ListNodes");
        // prost-types drops extensions on decode, so look in the raw bytes:
        // the path appears only inside the google.api.http option.
        let needle = b"/v1/nodes/{node_id}";
        assert!(
            FILE_DESCRIPTOR_SET.windows(needle.len()).any(|w| w == needle),
            "http path missing from the encoded descriptor set"
        );
    }
}
