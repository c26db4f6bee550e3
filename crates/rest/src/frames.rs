//! What the bridge reads of a gRPC response: its length-prefixed message
//! frames and its status trailers. The unary handler and the SSE streams
//! both read them.

use bytes::{Buf, BytesMut};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value;
use tether_types::ErrorCode;

pub(crate) type GrpcBody = tonic::body::Body;

/// Largest response message accepted from the gRPC side.
pub(crate) const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// The gRPC status in `h`: its numeric code, our code for it (the exact one
/// when the service named it, since two codes can share a gRPC code), and
/// the message.
pub(crate) fn grpc_status(h: &http::HeaderMap) -> Option<(i32, Option<ErrorCode>, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let exact = h
        .get(ErrorCode::METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .filter(|c| c.grpc_code() == code)
        .or(ErrorCode::from_grpc(code));
    let msg = h.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some((code, exact, msg))
}

pub(crate) fn percent_decode(s: &str) -> String {
    crate::routes::percent_decode(s, false).unwrap_or_default()
}

pub(crate) fn to_json(m: &DynamicMessage) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// Takes whole gRPC messages off the front of `buf`.
pub(crate) fn take_messages(buf: &mut BytesMut, desc: &MessageDescriptor) -> Result<Vec<DynamicMessage>, String> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf[0] != 0 {
            return Err("compressed response messages are not supported".into());
        }
        if len > MAX_MESSAGE {
            return Err("response message too large".into());
        }
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        let msg = buf.split_to(len).freeze();
        out.push(DynamicMessage::decode(desc.clone(), msg).map_err(|e| format!("response does not decode: {e}"))?);
    }
    Ok(out)
}
