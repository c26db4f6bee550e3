//! The HTTP side: request to message, in-process gRPC call, message (or SSE
//! stream of messages) to JSON.
//! Streams are served by [`crate::sse`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use tether_types::ErrorCode;
use tower::ServiceExt;

use crate::frames::{GrpcBody, MAX_MESSAGE, grpc_status, percent_decode, take_messages, to_json};
use crate::routes::{BodyRule, Bridge, Route};
use crate::strict::{is_blank_json, strict_json};

/// Largest request body accepted, in bytes.
const MAX_BODY: usize = 1024 * 1024;

/// What the REST routes call: the same tonic service stack that serves gRPC.
pub trait Grpc:
    tower::Service<http::Request<GrpcBody>, Response = http::Response<GrpcBody>, Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Grpc for S where
    S: tower::Service<http::Request<GrpcBody>, Response = http::Response<GrpcBody>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A REST request signed with AWS Signature Version 4, as it arrived.
pub struct SignedCall {
    pub method: http::Method,
    /// The path as sent (not decoded).
    pub path: String,
    /// The query as sent, without the `?`.
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Checks a signed request; what it answers goes into the gRPC request's
/// extensions (where no client can put anything) for the services to read.
pub type SignedAuth = Arc<
    dyn Fn(SignedCall) -> std::pin::Pin<Box<dyn Future<Output = Result<http::Extensions, tether_types::Error>> + Send>>
        + Send
        + Sync,
>;

/// The scheme of a SigV4 `Authorization` header.
const SIGV4: &str = "AWS4-HMAC-SHA256 ";

struct Shared<S> {
    bridge: Arc<Bridge>,
    grpc: S,
    body_timeout: std::time::Duration,
    signed: Option<SignedAuth>,
}

/// An axum router serving every HTTP route of the bridge (as a fallback, so
/// it can be merged with other routes).
/// A request body must arrive within `body_timeout` (408 if not). Requests
/// signed with SigV4 are checked by `signed` (refused when there is none).
pub fn router<S: Grpc>(
    bridge: Arc<Bridge>,
    grpc: S,
    body_timeout: std::time::Duration,
    signed: Option<SignedAuth>,
) -> Router
where
    S::Future: Send,
{
    let shared = Arc::new(Shared { bridge, grpc, body_timeout, signed });
    Router::new().fallback(handle::<S>).with_state(shared)
}

/// A JSON error with the HTTP status of the shared error code.
fn error(grpc_code: i32, message: &str) -> Response {
    error_as(grpc_code, ErrorCode::from_grpc(grpc_code), message)
}

/// [`error`] for a status whose code [`grpc_status`] resolved.
fn error_as(grpc_code: i32, code: Option<ErrorCode>, message: &str) -> Response {
    let (status, name) = match code {
        Some(c) => (c.http_status(), c.as_str()),
        None => match grpc_code {
            1 => (499, "cancelled"),
            11 => (400, "out_of_range"),
            12 => (501, "unimplemented"),
            15 => (500, "data_loss"),
            _ => (500, "unknown"),
        },
    };
    let body = json!({"code": name, "message": message, "details": []});
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

/// A domain error as the bridge answers it: `{code, message}` with the
/// code's HTTP status.
pub fn domain_error(e: &tether_types::Error) -> Response {
    error_as(e.code.grpc_code(), Some(e.code), &e.message)
}

/// A JSON error with an HTTP status of its own (not from a gRPC code).
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"code": code, "message": message, "details": []}))).into_response()
}

/// 405 with the methods the path has in `Allow`.
pub fn method_not_allowed(method: &http::Method, path: &str, allowed: &[http::Method]) -> Response {
    let mut r =
        json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("{method} is not allowed on {path}"));
    let allow = allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

fn too_large() -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("request body is larger than {MAX_BODY} bytes"),
    )
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn invalid(message: impl Into<String>) -> Response {
    error(ErrorCode::InvalidArgument.grpc_code(), &message.into())
}

async fn handle<S: Grpc>(State(st): State<Arc<Shared<S>>>, req: Request) -> Response
where
    S::Future: Send,
{
    let (parts, body) = req.into_parts();
    let (route, bound) = match st.bridge.find(&parts.method, parts.uri.path()) {
        Ok(x) => x,
        Err(allowed) if !allowed.is_empty() => {
            return method_not_allowed(&parts.method, parts.uri.path(), &allowed);
        }
        Err(_) => return error(5, &format!("no route for {}", parts.uri.path())),
    };
    // Refused from the declared length before a byte of the body is read.
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if is_length_limit(&e) => return too_large(),
        Ok(Err(e)) => return invalid(format!("reading the request body failed: {e}")),
        Err(_) => {
            return json_error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!("the request body did not arrive within {:?}", st.body_timeout),
            );
        }
    };
    // A signed request is checked against the body as it arrived.
    let signed =
        parts.headers.get(http::header::AUTHORIZATION).is_some_and(|v| v.as_bytes().starts_with(SIGV4.as_bytes()));
    let verified = if signed {
        let Some(check) = &st.signed else {
            return error(16, "signed requests are not accepted here");
        };
        let call = SignedCall {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        match check(call).await {
            Ok(ext) => Some(ext),
            Err(e) => return domain_error(&e),
        }
    } else {
        None
    };
    let mut input = match build_input(route, &bound, parts.uri.query().unwrap_or(""), &body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if route.server_streaming()
        && let Err(e) = crate::sse::resume_from(&mut input, &parts.headers)
    {
        return invalid(e);
    }
    // The gRPC request, through the same stack as any gRPC client's.
    let mut frame = BytesMut::with_capacity(5 + input.encoded_len());
    frame.put_u8(0);
    frame.put_u32(input.encoded_len() as u32);
    input.encode(&mut frame).expect("BytesMut grows");
    let mut grpc_req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://tether.rest{}", route.grpc_path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(GrpcBody::new(http_body_util::Full::new(frame.freeze())))
        .expect("a valid request");
    // The credential (a bearer token, or what the signature check found),
    // and the project an organisation's token acts on.
    match verified {
        Some(ext) => grpc_req.extensions_mut().extend(ext),
        None => {
            for h in [http::header::AUTHORIZATION, http::HeaderName::from_static("x-tether-project")] {
                if let Some(v) = parts.headers.get(&h) {
                    grpc_req.headers_mut().insert(h, v.clone());
                }
            }
        }
    }
    let resp = match st.grpc.clone().oneshot(grpc_req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    // Errors before any message come back as headers only.
    if let Some((code, exact, msg)) = grpc_status(resp.headers())
        && code != 0
    {
        let mut out = error_as(code, exact, &msg);
        // A rate limit says when to come back.
        if let Some(v) = resp.headers().get(http::header::RETRY_AFTER) {
            out.headers_mut().insert(http::header::RETRY_AFTER, v.clone());
        }
        return out;
    }
    let output = route.method.output();
    if route.server_streaming() {
        crate::sse::stream(resp.into_body(), output).into_response()
    } else {
        unary(resp.into_body(), output).await
    }
}

async fn unary(mut body: GrpcBody, desc: MessageDescriptor) -> Response {
    let mut buf = BytesMut::new();
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return error(14, &format!("the call failed: {e}")),
        };
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            if buf.len() > MAX_MESSAGE + 5 {
                return error(8, "response too large");
            }
        } else if let Some(t) = frame.trailers_ref() {
            status = grpc_status(t);
        }
    }
    match status {
        Some((0, _, _)) => {}
        Some((code, exact, msg)) => return error_as(code, exact, &msg),
        None => return error(13, "the call ended without a status"),
    }
    match take_messages(&mut buf, &desc) {
        Ok(mut msgs) if msgs.len() == 1 => {
            let json = to_json(&msgs.remove(0));
            let mut r = axum::Json(json).into_response();
            r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Ok(msgs) => error(13, &format!("expected one response message, got {}", msgs.len())),
        Err(e) => error(13, &e),
    }
}

/// Builds the request message from the path bindings, the query string and
/// the body, per the route's body rule, and validates it as proto3 JSON.
#[allow(clippy::result_large_err)]
fn build_input(
    route: &Route,
    bound: &[(String, String)],
    query: &str,
    body: &Bytes,
) -> Result<DynamicMessage, Response> {
    let desc = route.method.input();
    let parsed_body = || -> Result<Value, Response> {
        // No body at all is an empty message; whitespace alone is not a
        // JSON text (schemathesis sends "\r" and expects a 400).
        if body.is_empty() {
            return Ok(Value::Object(Map::new()));
        }
        strict_json(body).map_err(|e| invalid(format!("request body is not JSON: {e}")))
    };
    let mut obj = match &route.body {
        BodyRule::None => {
            if !is_blank_json(body) {
                return Err(invalid(format!("{} {} takes no request body", route.http_method, route.template)));
            }
            Map::new()
        }
        BodyRule::All => match parsed_body()? {
            Value::Object(m) => m,
            _ => return Err(invalid("request body must be a JSON object")),
        },
        BodyRule::Field(f) => {
            let mut m = Map::new();
            m.insert(f.clone(), parsed_body()?);
            m
        }
    };
    for (field, value) in bound {
        set_path(&mut obj, &desc, field, value, false)?;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "));
        let v = percent_decode(&v.replace('+', " "));
        if route.body == BodyRule::All {
            return Err(invalid(format!("unknown query parameter {k:?}: this method takes its fields in the body")));
        }
        if route.path_fields().contains(&k.as_str()) {
            return Err(invalid(format!("query parameter {k:?} is bound by the path")));
        }
        set_path(&mut obj, &desc, &k, &v, true)?;
    }
    let obj = Value::Object(obj);
    integers_in_range(&desc, &obj, "").map_err(invalid)?;
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), obj, &opts)
        .map_err(|e| invalid(format!("invalid {}: {e}", desc.name())))?;
    Ok(msg)
}

/// Refuses a JSON number beyond every 64-bit integer (it parses as a float)
/// in an integer field: the decoder would saturate it (2^64 read as
/// u64::MAX) instead of refusing it.
fn integers_in_range(desc: &prost_reflect::MessageDescriptor, v: &Value, at: &str) -> Result<(), String> {
    use prost_reflect::Kind;
    let Value::Object(m) = v else { return Ok(()) };
    for (k, v) in m {
        let Some(f) = desc.get_field_by_json_name(k).or_else(|| desc.get_field_by_name(k)) else { continue };
        let path = if at.is_empty() { f.name().to_owned() } else { format!("{at}.{}", f.name()) };
        let values: Vec<&Value> = match v {
            Value::Array(a) if f.is_list() => a.iter().collect(),
            Value::Object(o) if f.is_map() => o.values().collect(),
            v => vec![v],
        };
        let kind = if f.is_map() {
            match f.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                k => k,
            }
        } else {
            f.kind()
        };
        for v in values {
            match (&kind, v) {
                (Kind::Message(inner), v) => integers_in_range(inner, v, &path)?,
                (
                    Kind::Int32
                    | Kind::Int64
                    | Kind::Uint32
                    | Kind::Uint64
                    | Kind::Sint32
                    | Kind::Sint64
                    | Kind::Fixed32
                    | Kind::Fixed64
                    | Kind::Sfixed32
                    | Kind::Sfixed64,
                    Value::Number(n),
                ) if n.is_f64() && n.as_f64().is_some_and(|x| x.fract() == 0.0 && x.abs() >= 2f64.powi(63)) => {
                    return Err(format!("{path}: {n} is out of range for {}", kind_name(&kind)));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn kind_name(k: &prost_reflect::Kind) -> &'static str {
    use prost_reflect::Kind;
    match k {
        Kind::Uint32 | Kind::Fixed32 => "uint32",
        Kind::Uint64 | Kind::Fixed64 => "uint64",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32",
        _ => "int64",
    }
}

/// Sets a (possibly dotted) field from a string, typed per the descriptor.
#[allow(clippy::result_large_err)]
fn set_path(
    obj: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    path: &str,
    raw: &str,
    repeat: bool,
) -> Result<(), Response> {
    let mut parts = path.split('.').peekable();
    let mut desc = desc.clone();
    let mut obj = obj;
    while let Some(name) = parts.next() {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
            .ok_or_else(|| invalid(format!("unknown field {path:?} for {}", desc.name())))?;
        let key = field.name().to_owned();
        if parts.peek().is_some() {
            let Kind::Message(inner) = field.kind() else {
                return Err(invalid(format!("{path:?}: {name} is not a message")));
            };
            let slot = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = slot else { return Err(invalid(format!("{path:?} conflicts with the body"))) };
            obj = next;
            desc = inner;
            continue;
        }
        if field.is_map() {
            return Err(invalid(format!("map field {path:?} cannot be set from the URL")));
        }
        let value = match field.kind() {
            Kind::Bool => match raw {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err(invalid(format!("{path:?} must be true or false"))),
            },
            Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") => {
                return Err(invalid(format!("message field {path:?} cannot be set from the URL")));
            }
            // Numbers, enums, strings, bytes and well-known types all accept
            // their proto3 JSON string form.
            _ => Value::String(raw.to_owned()),
        };
        if field.is_list() && repeat {
            match obj.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(a) => a.push(value),
                _ => return Err(invalid(format!("{path:?} conflicts with the body"))),
            }
        } else if field.is_list() {
            obj.insert(key, Value::Array(vec![value]));
        } else {
            obj.insert(key, value);
        }
        return Ok(());
    }
    Ok(())
}
