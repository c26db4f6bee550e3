//! Server-streaming methods as Server-Sent Events, resumable.
//!
//! A streamed message with a top-level `sequence` field carries it as its
//! SSE `id` (when not 0), and a `Last-Event-ID` header on a streaming route
//! whose request has a top-level `since_sequence` sets it (over any
//! `since_sequence` in the query: a reconnecting EventSource repeats its
//! first URL).

use std::convert::Infallible;

use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::BytesMut;
use http_body_util::BodyExt;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use serde_json::json;
use tether_types::ErrorCode;

use crate::frames::{GrpcBody, grpc_status, take_messages, to_json};

/// The streamed message's field that is its SSE `id`.
pub const SSE_ID_FIELD: &str = "sequence";
/// The streaming request's field that `Last-Event-ID` sets.
pub const RESUME_FIELD: &str = "since_sequence";

/// Sets the request's resume point from `Last-Event-ID`, if both are there.
pub(crate) fn resume_from(input: &mut DynamicMessage, headers: &http::HeaderMap) -> Result<(), String> {
    let (Some(last), Some(field)) = (headers.get("last-event-id"), input.descriptor().get_field_by_name(RESUME_FIELD))
    else {
        return Ok(());
    };
    // An empty Last-Event-ID is no resume point (the SSE spec's reset).
    let text = last.to_str().unwrap_or("!").trim();
    if text.is_empty() {
        return Ok(());
    }
    match text.parse::<u64>() {
        Ok(n) if n <= i64::MAX as u64 => {
            input.set_field(&field, prost_reflect::Value::U64(n));
            Ok(())
        }
        _ => Err(format!("Last-Event-ID must be an event sequence number, not {text:?}")),
    }
}

pub(crate) fn stream(body: GrpcBody, desc: MessageDescriptor) -> impl IntoResponse {
    let stream = futures_util::stream::unfold(
        (body, BytesMut::new(), Vec::<Event>::new(), false),
        move |(mut body, mut buf, mut pending, mut done)| {
            let desc = desc.clone();
            async move {
                loop {
                    if !pending.is_empty() {
                        let ev = pending.remove(0);
                        return Some((Ok::<_, Infallible>(ev), (body, buf, pending, done)));
                    }
                    if done {
                        return None;
                    }
                    match body.frame().await {
                        None => done = true,
                        Some(Err(e)) => {
                            pending.push(error_event(14, &format!("the stream failed: {e}")));
                            done = true;
                        }
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                buf.extend_from_slice(data);
                                match take_messages(&mut buf, &desc) {
                                    Ok(msgs) => pending.extend(msgs.iter().map(sse_event)),
                                    Err(e) => {
                                        pending.push(error_event(13, &e));
                                        done = true;
                                    }
                                }
                            } else if let Some(t) = frame.trailers_ref() {
                                if let Some((code, ours, msg)) = grpc_status(t)
                                    && code != 0
                                {
                                    pending.push(error_event_as(ours, &msg));
                                }
                                done = true;
                            }
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One streamed message as an SSE event, with its sequence as the id.
fn sse_event(m: &DynamicMessage) -> Event {
    let ev = Event::default().data(to_json(m).to_string());
    match m.descriptor().get_field_by_name(SSE_ID_FIELD).map(|f| m.get_field(&f).as_u64()) {
        Some(Some(seq)) if seq != 0 => ev.id(seq.to_string()),
        _ => ev,
    }
}

fn error_event(code: i32, message: &str) -> Event {
    error_event_as(ErrorCode::from_grpc(code), message)
}

fn error_event_as(code: Option<ErrorCode>, message: &str) -> Event {
    let name = code.map(ErrorCode::as_str).unwrap_or("unknown");
    Event::default().event("error").data(json!({"code": name, "message": message}).to_string())
}
