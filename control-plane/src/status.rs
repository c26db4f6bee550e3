//! The one conversion of errors to gRPC statuses: a domain error keeps its
//! code (and its exact [`tether_types::ErrorCode`] in the `tether-error-code`
//! metadata, for the REST bridge); a store failure is logged once, here, with
//! its whole chain.

/// The one conversion from a domain error to a gRPC status.
pub fn status(e: tether_types::Error) -> tonic::Status {
    let mut st = tonic::Status::new(tonic::Code::from_i32(e.code.grpc_code()), e.message);
    st.metadata_mut()
        .insert(tether_types::ErrorCode::METADATA_KEY, tonic::metadata::MetadataValue::from_static(e.code.as_str()));
    st
}

pub fn store_status(e: tether_store::StoreError) -> tonic::Status {
    if !matches!(e, tether_store::StoreError::Domain(_)) {
        tracing::error!(error = &e as &dyn std::error::Error, "store operation failed");
    }
    status(e.into())
}
