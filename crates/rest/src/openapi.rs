//! OpenAPI 3.1 from the same descriptors as the routes.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::routes::{BodyRule, Bridge, Route};

fn schema_name(m: &MessageDescriptor) -> String {
    m.full_name().to_owned()
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Where a value is written: a JSON body takes proto3 JSON in full; a URL
/// query parameter takes the string form only (enums by name).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Body,
    Query,
}

/// The proto3 JSON schema of one field's (single) value.
fn kind_schema(kind: &Kind, wanted: &mut Vec<MessageDescriptor>, place: Place) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        // proto3 JSON writes 32-bit integers as numbers and 64-bit ones as
        // strings, and reads either form for both: the schema takes both,
        // bounded by the type's range (and by a field's rules).
        k @ (Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64) => {
            let (lo, hi, format) = int_range(k);
            int_schema(lo, hi, format)
        }
        Kind::Bool => json!({"type": "boolean"}),
        // No request string may hold NUL (tether_proto::rules).
        Kind::String => json!({"type": "string", "pattern": "^[^\\x00]*$"}),
        // What proto3 JSON reads as bytes: standard or URL-safe base64
        // (one alphabet per value), padding optional.
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64", "pattern": BASE64}),
        // proto3 JSON reads an enum from its name or its number.
        Kind::Enum(e) => {
            let mut values: Vec<Value> = e.values().map(|v| json!(v.name())).collect();
            if place == Place::Body {
                values.extend(e.values().map(|v| json!(v.number())));
                json!({"type": ["string", "integer"], "enum": values})
            } else {
                json!({"type": "string", "enum": values})
            }
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            // What prost-types reads: a fraction of any length, cut at nanoseconds.
            "google.protobuf.Duration" => json!({"type": "string", "pattern": "^-?[0-9]+([.][0-9]+)?s$"}),
            "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
            // Any JSON object (an event's payload).
            "google.protobuf.Struct" => json!({"type": "object"}),
            _ => {
                if !wanted.iter().any(|w| w.full_name() == m.full_name()) {
                    wanted.push(m.clone());
                }
                reference(&schema_name(m))
            }
        },
    }
}

/// Base64 as the bridge decodes it (prost-reflect: the standard alphabet,
/// else the URL-safe one; padding optional, but never a lone last symbol).
const BASE64: &str = "^(?:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?|(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}(?:==)?|[A-Za-z0-9_-]{3}=?)?)$";

/// The id kind a string field holds, by its name: the prefix its values
/// carry (see `tether_types` ids).
fn id_prefix(field: &str) -> Option<&'static str> {
    use tether_types::*;
    Some(match field {
        "node_id" => NodeId::PREFIX,
        "job_id" => JobId::PREFIX,
        "workload_id" => WorkloadId::PREFIX,
        "token_id" => TokenId::PREFIX,
        "join_token_id" => JoinTokenId::PREFIX,
        "project_id" => ProjectId::PREFIX,
        "organization_id" => OrgId::PREFIX,
        "allocation_id" => AllocId::PREFIX,
        "access_key_id" => AccessKeyId::PREFIX,
        _ => return None,
    })
}

/// The schema of an id: its prefix and 20 lowercase hex digits, or empty
/// where the field is optional (a filter, a job not placed yet).
fn id_schema(prefix: &str, optional: bool) -> Value {
    let pattern = if optional { format!("^({prefix}[0-9a-f]{{20}})?$") } else { format!("^{prefix}[0-9a-f]{{20}}$") };
    json!({"type": "string", "pattern": pattern, "description": format!("an id: {prefix} and 20 hex digits")})
}

fn field_schema(f: &FieldDescriptor, wanted: &mut Vec<MessageDescriptor>, place: Place) -> Value {
    if let (Kind::String, Some(prefix)) = (f.kind(), id_prefix(f.name()))
        && !f.is_list()
        && !f.is_map()
    {
        return id_schema(prefix, true);
    }
    let rules = tether_proto::rules::field_rules(f);
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else { return json!({"type": "object"}) };
        let value_field = entry.map_entry_value_field();
        let mut value = kind_schema(&value_field.kind(), wanted, place);
        let mut schema = json!({"type": "object"});
        if let Some(r) = &rules {
            if let Some(each) = r.items.as_deref() {
                apply_rules(each, &value_field.kind(), &mut value);
            }
            if let Some(keys) = r.keys.as_deref() {
                let mut names = json!({"type": "string"});
                apply_rules(keys, &Kind::String, &mut names);
                schema["propertyNames"] = names;
            }
            if let Some(max) = r.max_items {
                schema["maxProperties"] = json!(max);
            }
        }
        schema["additionalProperties"] = value;
        return schema;
    }
    let mut one = kind_schema(&f.kind(), wanted, place);
    if f.is_list() {
        let mut schema = json!({"type": "array"});
        if let Some(r) = &rules {
            if let Some(each) = r.items.as_deref() {
                apply_rules(each, &f.kind(), &mut one);
            }
            if let Some(max) = r.max_items {
                schema["maxItems"] = json!(max);
            }
        }
        schema["items"] = one;
        return schema;
    }
    if let Some(r) = &rules {
        apply_rules(r, &f.kind(), &mut one);
    }
    one
}

/// States a field's `(tether.v1.rules)` in its value's schema.
fn apply_rules(r: &tether_proto::pb::FieldRules, kind: &Kind, schema: &mut Value) {
    match kind {
        Kind::String => {
            if let Some(max) = r.max_len {
                schema["maxLength"] = json!(max);
            }
            if !r.pattern.is_empty() {
                schema["pattern"] = json!(r.pattern);
            }
            if !r.pattern_hint.is_empty() {
                schema["description"] = json!(r.pattern_hint);
            }
        }
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => {
            let (lo, hi, format) = int_range(kind);
            let lo = r.min.map_or(lo, |m| i128::from(m).max(lo));
            let hi = r.max.map_or(hi, |m| i128::from(m).min(hi));
            *schema = int_schema(lo, hi, format);
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Duration" => {
            if let Some(max) = r.max_seconds
                && r.positive
            {
                schema["pattern"] = json!(positive_duration_pattern(max as u64));
                schema["description"] = json!(format!("more than 0s, at most {max}s"));
            }
        }
        Kind::Message(_) if !r.unset.is_empty() => {
            let props: Map<String, Value> =
                r.unset.iter().map(|name| (json_name(name), json!({"type": "null"}))).collect();
            *schema = json!({
                "allOf": [schema.clone(), {"properties": props}],
                "description": format!("without {} here", r.unset.join(", ")),
            });
        }
        _ => {}
    }
}

/// proto3 JSON's name for a field: lowerCamelCase.
fn json_name(proto: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in proto.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// An integer type's range and OpenAPI format.
fn int_range(kind: &Kind) -> (i128, i128, &'static str) {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => (i32::MIN.into(), i32::MAX.into(), "int32"),
        Kind::Uint32 | Kind::Fixed32 => (0, u32::MAX.into(), "uint32"),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => (i64::MIN.into(), i64::MAX.into(), "int64"),
        _ => (0, u64::MAX.into(), "uint64"),
    }
}

/// An integer in `lo..=hi` written as a number or as a decimal string (what
/// Rust's parsers take: an optional sign, leading zeros).
fn int_schema(lo: i128, hi: i128, format: &str) -> Value {
    assert!(lo <= 1 && hi >= 0, "integer ranges start at or below 1 and reach 0 or more");
    let mut forms = vec![format!("[+]?0*({})", uint_range(lo.max(0) as u64, hi as u64))];
    if lo < 0 {
        forms.push(format!("-0*({})", uint_range(0, lo.unsigned_abs() as u64)));
    }
    json!({
        "type": ["integer", "string"],
        "format": format,
        "minimum": lo,
        "maximum": hi,
        "pattern": format!("^({})$", forms.join("|")),
    })
}

/// A regular expression (no anchors, no leading zeros) for the decimal
/// integers in `lo..=hi`.
fn uint_range(lo: u64, hi: u64) -> String {
    fn upto(hi: &str) -> Vec<String> {
        // Every number in 0..=hi with as many digits as hi, or fewer.
        let d = hi.len();
        let mut alts = Vec::new();
        if d > 1 {
            alts.push("0".to_owned());
            alts.push(if d == 2 { "[1-9]".to_owned() } else { format!("[1-9][0-9]{{0,{}}}", d - 2) });
        }
        let digits: Vec<u8> = hi.bytes().map(|b| b - b'0').collect();
        for i in 0..d {
            let first = if i == 0 && d > 1 { 1 } else { 0 };
            if digits[i] > first {
                let top = digits[i] - 1;
                let class = if top == first { format!("{first}") } else { format!("[{first}-{top}]") };
                let rest = d - i - 1;
                let tail = match rest {
                    0 => String::new(),
                    1 => "[0-9]".to_owned(),
                    n => format!("[0-9]{{{n}}}"),
                };
                alts.push(format!("{}{class}{tail}", &hi[..i]));
            }
        }
        alts.push(hi.to_owned());
        alts
    }
    assert!(lo <= 1, "uint_range: only 0.. or 1.. ranges");
    let mut alts = upto(&hi.to_string());
    if lo == 1 {
        alts.retain(|a| a != "0");
        if hi < 10 {
            return if hi == 1 { "1".into() } else { format!("[1-{hi}]") };
        }
    }
    alts.join("|")
}

/// A proto3 JSON duration of more than zero and at most `max` seconds, as
/// prost-types reads it (a fraction of any length, cut at nanoseconds).
fn positive_duration_pattern(max: u64) -> String {
    let below = uint_range(1, max - 1);
    format!("^(0*({below})([.][0-9]+)?|0*{max}([.](0{{1,9}}|0{{9}}[0-9]+))?|0+[.]0{{0,8}}[1-9][0-9]*)s$")
}

fn message_schema(m: &MessageDescriptor, wanted: &mut Vec<MessageDescriptor>) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    let mut conditions = Vec::new();
    for f in m.fields() {
        let mut schema = field_schema(&f, wanted, Place::Body);
        if tether_proto::rules::is_required(&f) {
            required.push(f.json_name().to_owned());
            required_shape(&f, &mut schema);
        } else {
            if let Some(when) = tether_proto::rules::field_rules(&f).and_then(|r| r.required_when)
                && let Some(sibling) = m.get_field_by_name(&when.field)
                && let Kind::Enum(e) = sibling.kind()
                && let Some(v) = e.get_value_by_name(&when.equals)
            {
                let mut then = schema.clone();
                required_shape(&f, &mut then);
                conditions.push(json!({
                    "if": {"properties": {sibling.json_name(): {"enum": [v.name(), v.number()]}}, "required": [sibling.json_name()]},
                    "then": {"properties": {f.json_name(): then}, "required": [f.json_name()]},
                }));
            }
            nullable(&mut schema);
        }
        props.insert(f.json_name().to_owned(), schema);
    }
    let mut out = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !required.is_empty() {
        out["required"] = json!(required);
    }
    if !conditions.is_empty() {
        out["allOf"] = json!(conditions);
    }
    out
}

/// proto3 JSON takes `null` for any field as "not set": say so, except for
/// required fields (where not set is refused).
fn nullable(schema: &mut Value) {
    if schema.get("$ref").is_some() || schema.get("allOf").is_some() {
        *schema = json!({"anyOf": [schema.clone(), {"type": "null"}]});
        return;
    }
    if let Some(list) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        list.push(Value::Null);
    }
    match schema.get("type").cloned() {
        Some(Value::String(t)) => schema["type"] = json!([t, "null"]),
        Some(Value::Array(mut ts)) => {
            ts.push(json!("null"));
            schema["type"] = Value::Array(ts);
        }
        None if schema.is_object() => schema["type"] = json!(["object", "null"]),
        _ => {}
    }
}

/// What REQUIRED means for the value itself: a string is not empty, an enum
/// is not its zero value, a list has an element.
fn required_shape(f: &FieldDescriptor, schema: &mut Value) {
    if f.is_list() {
        schema["minItems"] = json!(1);
        return;
    }
    match f.kind() {
        Kind::String => match id_prefix(f.name()) {
            Some(prefix) => *schema = id_schema(prefix, false),
            None => schema["minLength"] = json!(1),
        },
        Kind::Enum(e) => {
            let zero = e.values().find(|v| v.number() == 0).map(|v| v.name().to_owned());
            if let Some(list) = schema.get_mut("enum").and_then(Value::as_array_mut) {
                list.retain(|v| v != &json!(0) && zero.as_deref().is_none_or(|z| v != &json!(z)));
            }
        }
        _ => {}
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {}}
        }
    })
}

fn operation(route: &Route, wanted: &mut Vec<MessageDescriptor>) -> Value {
    let input = route.method.input();
    let path_fields = route.path_fields();
    let mut params = Vec::new();
    for name in &path_fields {
        let schema = match id_prefix(name) {
            Some(prefix) => id_schema(prefix, false),
            None => input
                .get_field_by_name(name)
                .map(|f| field_schema(&f, wanted, Place::Query))
                .unwrap_or_else(|| json!({"type": "string"})),
        };
        params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
    }
    if route.body == BodyRule::None {
        for f in input.fields() {
            if path_fields.contains(&f.name()) || f.is_map() {
                continue;
            }
            if matches!(f.kind(), Kind::Message(ref m) if !m.full_name().starts_with("google.protobuf.")) {
                continue;
            }
            let schema = field_schema(&f, wanted, Place::Query);
            params.push(json!({"name": f.json_name(), "in": "query", "required": false, "schema": schema}));
        }
    }
    if route.server_streaming() && input.get_field_by_name(crate::sse::RESUME_FIELD).is_some() {
        params.push(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Resume after this event sequence (the last SSE `id` received); wins over the query's",
            "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"},
        }));
    }
    let mut op = Map::new();
    op.insert("operationId".into(), json!(route.method.full_name().replace('.', "_")));
    op.insert("tags".into(), json!([route.method.parent_service().name()]));
    op.insert("summary".into(), json!(route.method.name()));
    op.insert("parameters".into(), Value::Array(params));
    match &route.body {
        BodyRule::None => {}
        BodyRule::All => {
            let mut schema = message_schema(&input, wanted);
            for name in &path_fields {
                if let Some(f) = input.get_field_by_name(name) {
                    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                        props.remove(f.json_name());
                    }
                    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
                        req.retain(|r| r != f.json_name());
                    }
                }
            }
            // A body is required exactly when some field of it is.
            let needed = schema.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
            if !needed && let Some(o) = schema.as_object_mut() {
                o.remove("required");
            }
            op.insert(
                "requestBody".into(),
                json!({"required": needed, "content": {"application/json": {"schema": schema}}}),
            );
        }
        BodyRule::Field(f) => {
            let schema = input
                .get_field_by_name(f)
                .map(|fd| field_schema(&fd, wanted, Place::Body))
                .unwrap_or_else(|| json!({}));
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema}}}),
            );
        }
    }
    let output = route.method.output();
    let ok = if route.server_streaming() {
        // OpenAPI 3.1 has no item schema for event streams; JSON Schema's
        // contentMediaType/contentSchema say what each `data:` line holds.
        wanted.push(output.clone());
        json!({
            "description": format!(
                "Server-Sent Events: each `data:` is one JSON {}; a failure ends the stream with `event: error` \
                 and a `{{code, message}}` JSON",
                output.name()
            ),
            "content": {"text/event-stream": {"schema": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": reference(&schema_name(&output)),
            }}}
        })
    } else {
        wanted.push(output.clone());
        json!({"description": "OK", "content": {"application/json": {"schema": reference(&schema_name(&output))}}})
    };
    let err = json!({"description": "Error", "content": {"application/json": {"schema": reference("tether.Error")}}});
    op.insert("responses".into(), json!({"200": ok, "default": err}));
    op.insert(
        "security".into(),
        json!(if route.method.parent_service().name() == "AgentService" { json!([]) } else { json!([{"bearer": []}]) }),
    );
    Value::Object(op)
}

/// The OpenAPI 3.1 document of every route.
pub fn openapi(bridge: &Bridge, version: &str) -> Value {
    let mut wanted: Vec<MessageDescriptor> = Vec::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in &bridge.routes {
        // OpenAPI paths use `{name}` for each binding; `{field=**}` keeps its name.
        let mut path = String::new();
        for part in r.template.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            match part.strip_prefix('{').and_then(|p| p.split_once('}')) {
                Some((inner, rest)) => {
                    path.push('{');
                    path.push_str(inner.split('=').next().unwrap_or(inner));
                    path.push('}');
                    path.push_str(rest);
                }
                None => path.push_str(part),
            }
        }
        let op = operation(r, &mut wanted);
        paths.entry(path).or_default().insert(r.http_method.as_str().to_lowercase(), op);
    }
    let mut schemas = Map::new();
    schemas.insert("tether.Error".into(), error_schema());
    let mut i = 0;
    while i < wanted.len() {
        let m = wanted[i].clone();
        i += 1;
        let name = schema_name(&m);
        if !schemas.contains_key(&name) {
            let s = message_schema(&m, &mut wanted);
            schemas.insert(name, s);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tether",
            "version": version,
            "description": "Generated from the protos' google.api.http options. JSON follows the proto3 mapping."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A Tether macaroon"}}
        }
    })
}

#[cfg(test)]
mod tests;
