//! Field rules: what a request field's value may be, read from the protos'
//! `(google.api.field_behavior) = REQUIRED` and `(tether.v1.rules)` options.
//!
//! One source, three uses: the codec checks every decoded request against
//! them before a handler runs (so gRPC and the REST bridge, which calls the
//! same services, refuse the same values with the same message), and the REST
//! crate writes them into the OpenAPI document.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use regex::Regex;

use crate::pb::FieldRules;

/// `google.api.FieldBehavior.REQUIRED`.
const REQUIRED: i32 = 2;

/// A label key: starts alphanumeric, then `[A-Za-z0-9._/-]`, 1-128 in all.
pub const LABEL_KEY: &str = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$";
/// A label value: at most 256 of `[A-Za-z0-9._/:-]`.
pub const LABEL_VALUE: &str = "^[A-Za-z0-9._/:-]{0,256}$";
/// The most bytes (and characters: the grammar is ASCII) of a selector.
pub const LABEL_SELECTOR_MAX: u32 = 4096;

/// A Kubernetes-style label selector (`tether_types::LabelSelector`):
/// requirements separated by commas, each `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k` or `!k`, with spaces around the parts;
/// or nothing but spaces (matches everything).
pub fn label_selector_pattern() -> String {
    let key = "[A-Za-z0-9][A-Za-z0-9._/-]{0,127}";
    let value = "[A-Za-z0-9._/:-]{0,256}";
    let set_value = "[A-Za-z0-9._/:-]{1,256}";
    let set = format!(r" *\( *{set_value} *(, *{set_value} *)*\)");
    let requirement = format!(
        " *(!? *{key}|{key} *(=|==|!=) *{value}|{key} +(in|notin){set}) *",
        key = key,
        value = value,
        set = set
    );
    format!("^( *|{requirement}(,{requirement})*)$")
}

/// A named format's pattern and what it means in words.
pub fn format(name: &str) -> Option<(String, &'static str)> {
    Some(match name {
        "label_key" => (LABEL_KEY.to_owned(), "a label key: 1-128 of [A-Za-z0-9._/-], starting alphanumeric"),
        "label_value" => (LABEL_VALUE.to_owned(), "a label value: at most 256 of [A-Za-z0-9._/:-]"),
        "label_selector" => (
            label_selector_pattern(),
            "a label selector: comma-separated k=v, k!=v, k in (a,b), k notin (a,b), k or !k",
        ),
        _ => return None,
    })
}

/// The descriptor pool of every Tether proto, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).expect("the built-in descriptor set decodes")
    })
}

/// Whether `f` is annotated `(google.api.field_behavior) = REQUIRED`.
pub fn is_required(f: &FieldDescriptor) -> bool {
    let Some(ext) = f.parent_pool().get_extension_by_name("google.api.field_behavior") else { return false };
    let opts = f.options();
    if !opts.has_extension(&ext) {
        return false;
    }
    match opts.get_extension(&ext).as_ref() {
        Value::List(values) => values.iter().any(|v| v.as_enum_number() == Some(REQUIRED)),
        v => v.as_enum_number() == Some(REQUIRED),
    }
}

/// The `(tether.v1.rules)` of `f`, with a named format resolved into its
/// pattern (and hint) at every level.
pub fn field_rules(f: &FieldDescriptor) -> Option<FieldRules> {
    let ext = f.parent_pool().get_extension_by_name("tether.v1.rules")?;
    let opts = f.options();
    if !opts.has_extension(&ext) {
        return None;
    }
    let Value::Message(m) = opts.get_extension(&ext).into_owned() else { return None };
    let mut rules = FieldRules::decode(m.encode_to_vec().as_slice()).ok()?;
    resolve_formats(&mut rules);
    Some(rules)
}

fn resolve_formats(r: &mut FieldRules) {
    if !r.format.is_empty()
        && let Some((pattern, hint)) = format(&r.format)
    {
        r.pattern = pattern;
        if r.pattern_hint.is_empty() {
            r.pattern_hint = hint.to_owned();
        }
        if r.format == "label_selector" && r.max_len.is_none() {
            r.max_len = Some(LABEL_SELECTOR_MAX);
        }
    }
    if let Some(items) = r.items.as_deref_mut() {
        resolve_formats(items);
    }
    if let Some(keys) = r.keys.as_deref_mut() {
        resolve_formats(keys);
    }
}

/// Every pattern the protos use, compiled once.
fn regexes() -> &'static HashMap<String, Regex> {
    static RE: OnceLock<HashMap<String, Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        let mut out = HashMap::new();
        for m in pool().all_messages() {
            for f in m.fields() {
                let Some(r) = field_rules(&f) else { continue };
                for p in [Some(&r), r.items.as_deref(), r.keys.as_deref()].into_iter().flatten().map(|r| &r.pattern) {
                    if !p.is_empty() && !out.contains_key(p) {
                        let re = Regex::new(p).unwrap_or_else(|e| panic!("pattern of {}: {e}", f.full_name()));
                        out.insert(p.clone(), re);
                    }
                }
            }
        }
        out
    })
}

/// Whether a message (or one it holds) has a required field or a rule.
fn has_rules(m: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|s| s == m.full_name()) {
        return false;
    }
    seen.push(m.full_name().to_owned());
    m.fields().any(|f| {
        is_required(&f)
            || field_rules(&f).is_some()
            || f.kind() == Kind::String
            || match f.kind() {
                Kind::Message(inner) => has_rules(&inner, seen),
                _ => false,
            }
    })
}

/// The descriptor of a request message (the input of some unary or
/// server-streaming RPC) that has rules to check, by full name; `None` for
/// anything else: responses, requests with nothing to check, and the messages
/// of client streams (the agents' heartbeats and reports), which are not
/// refused one by one (a stream an agent holds must not end over one odd
/// string; the handlers clean what agents report).
pub fn checked_request(full_name: &str) -> Option<&'static MessageDescriptor> {
    static CHECKED: OnceLock<HashMap<String, MessageDescriptor>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let mut out = HashMap::new();
            for s in pool().services() {
                for m in s.methods().filter(|m| !m.is_client_streaming()) {
                    let input = m.input();
                    if has_rules(&input, &mut Vec::new()) {
                        out.insert(input.full_name().to_owned(), input);
                    }
                }
            }
            out
        })
        .get(full_name)
}

/// A value that breaks a rule: the field's path (proto names, `[i]` for an
/// element, `[key]` for a map entry) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

/// Checks `msg` and every message it holds; the first violation found.
pub fn check(msg: &DynamicMessage) -> Result<(), Violation> {
    check_at(msg, "")
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

fn bad(field: &str, problem: impl Into<String>) -> Result<(), Violation> {
    Err(Violation { field: field.to_owned(), problem: problem.into() })
}

fn check_at(msg: &DynamicMessage, prefix: &str) -> Result<(), Violation> {
    for f in msg.descriptor().fields() {
        let path = join(prefix, f.name());
        let set = msg.has_field(&f);
        let rules = field_rules(&f);
        if is_required(&f) && (!set || is_empty(&msg.get_field(&f))) {
            return bad(&path, "is required");
        }
        if let Some(when) = rules.as_ref().and_then(|r| r.required_when.as_ref())
            && !set
            && let Some(sibling) = msg.descriptor().get_field_by_name(&when.field)
            && let (Kind::Enum(e), Some(n)) = (sibling.kind(), msg.get_field(&sibling).as_enum_number())
            && e.get_value(n).is_some_and(|v| v.name() == when.equals)
        {
            return bad(&path, format!("is required when {} is {}", join(prefix, &when.field), when.equals));
        }
        if !set {
            continue;
        }
        let value = msg.get_field(&f);
        nul_free(&value, &path)?;
        match &*value {
            Value::List(items) => {
                if let Some(r) = &rules {
                    if let Some(max) = r.max_items
                        && items.len() > max as usize
                    {
                        return bad(&path, format!("has at most {max} elements, got {}", items.len()));
                    }
                    if let Some(each) = r.items.as_deref() {
                        for (i, v) in items.iter().enumerate() {
                            check_value(each, v, &format!("{path}[{i}]"))?;
                        }
                    }
                }
                for (i, v) in items.iter().enumerate() {
                    if let Value::Message(m) = v {
                        check_at(m, &format!("{path}[{i}]"))?;
                    }
                }
            }
            Value::Map(entries) => {
                if let Some(r) = &rules {
                    if let Some(max) = r.max_items
                        && entries.len() > max as usize
                    {
                        return bad(&path, format!("has at most {max} entries, got {}", entries.len()));
                    }
                    for (k, v) in entries {
                        let at = format!("{path}[{}]", key_text(k));
                        if let (Some(keys), MapKey::String(s)) = (r.keys.as_deref(), k) {
                            check_value(keys, &Value::String(s.clone()), &format!("{path} key {s:?}"))?;
                        }
                        if let Some(each) = r.items.as_deref() {
                            check_value(each, v, &at)?;
                        }
                    }
                }
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        check_at(m, &format!("{path}[{}]", key_text(k)))?;
                    }
                }
            }
            Value::Message(m) => {
                if let Some(r) = &rules {
                    check_value(r, &value, &path)?;
                }
                if !m.descriptor().full_name().starts_with("google.protobuf.") {
                    check_at(m, &path)?;
                }
            }
            v => {
                if let Some(r) = &rules {
                    check_value(r, v, &path)?;
                }
            }
        }
    }
    Ok(())
}

/// No string in a request holds NUL: nothing downstream can take it (a
/// process's argv and environment, a path, PostgreSQL's text).
fn nul_free(v: &Value, path: &str) -> Result<(), Violation> {
    let has = |s: &str| s.contains('\0');
    match v {
        Value::String(s) if has(s) => bad(path, "must not contain NUL"),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Value::String(s) = item
                    && has(s)
                {
                    return bad(&format!("{path}[{i}]"), "must not contain NUL");
                }
            }
            Ok(())
        }
        Value::Map(entries) => {
            for (k, item) in entries {
                if let MapKey::String(key) = k
                    && has(key)
                {
                    return bad(&format!("{path} key {key:?}"), "must not contain NUL");
                }
                if let Value::String(s) = item
                    && has(s)
                {
                    return bad(&format!("{path}[{}]", key_text(k)), "must not contain NUL");
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn key_text(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => format!("{s:?}"),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

/// "Not set" for a REQUIRED field: an empty string, list or map, a zero
/// enum. (Other scalars are set when not zero, as `has_field` says.)
fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::EnumNumber(0) => true,
        Value::List(l) => l.is_empty(),
        Value::Map(m) => m.is_empty(),
        _ => false,
    }
}

/// One value against the rules of its field (not its element or entry
/// rules, which the caller applies to each).
fn check_value(r: &FieldRules, v: &Value, path: &str) -> Result<(), Violation> {
    match v {
        Value::String(s) => {
            if let Some(max) = r.max_len
                && s.chars().count() > max as usize
            {
                return bad(path, format!("is at most {max} characters"));
            }
            if !r.pattern.is_empty() {
                let re = regexes().get(&r.pattern).expect("every pattern is compiled");
                if !re.is_match(s) {
                    let hint =
                        if r.pattern_hint.is_empty() { format!("match {}", r.pattern) } else { r.pattern_hint.clone() };
                    return bad(path, format!("must be {hint}, got {s:?}"));
                }
            }
        }
        Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_) => {
            let n: i128 = match v {
                Value::I32(n) => (*n).into(),
                Value::I64(n) => (*n).into(),
                Value::U32(n) => (*n).into(),
                Value::U64(n) => (*n).into(),
                _ => unreachable!(),
            };
            if let Some(min) = r.min
                && n < min.into()
            {
                return bad(path, format!("must be at least {min}, got {n}"));
            }
            if let Some(max) = r.max
                && n > max.into()
            {
                return bad(path, format!("must be at most {max}, got {n}"));
            }
        }
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Duration" => {
            let d = prost_types::Duration::decode(m.encode_to_vec().as_slice()).unwrap_or_default();
            if r.positive && (d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0)) {
                return bad(path, "must be more than zero");
            }
            if let Some(max) = r.max_seconds
                && (d.seconds > max || (d.seconds == max && d.nanos > 0))
            {
                return bad(path, format!("must be at most {max}s"));
            }
        }
        Value::Message(m) => {
            for name in &r.unset {
                if let Some(sub) = m.descriptor().get_field_by_name(name)
                    && m.has_field(&sub)
                {
                    return bad(&join(path, name), "must not be set here");
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn dynamic<M: Message + prost::Name>(m: &M) -> DynamicMessage {
        let desc = pool().get_message_by_name(&M::full_name()).unwrap();
        DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).unwrap()
    }

    fn violation<M: Message + prost::Name>(m: &M) -> Option<String> {
        check(&dynamic(m)).err().map(|v| v.to_string())
    }

    fn job(exec: pb::ExecSpec) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            spec: Some(pb::JobSpec { exec: Some(exec), ..Default::default() }),
            ..Default::default()
        }
    }

    fn exec(command: &str) -> pb::ExecSpec {
        pb::ExecSpec { command: command.into(), ..Default::default() }
    }

    #[test]
    fn every_pattern_compiles_and_is_anchored() {
        assert!(!regexes().is_empty());
        for p in regexes().keys() {
            assert!(p.starts_with('^') && p.ends_with('$'), "{p} is not anchored");
        }
    }

    #[test]
    fn required_fields_at_any_depth() {
        assert_eq!(violation(&pb::SubmitJobRequest::default()).as_deref(), Some("spec is required"));
        let r = pb::SubmitJobRequest { spec: Some(Default::default()), ..Default::default() };
        assert_eq!(violation(&r).as_deref(), Some("spec.exec is required"));
        assert_eq!(violation(&job(exec(""))).as_deref(), Some("spec.exec.command is required"));
        assert_eq!(violation(&job(exec("/bin/true"))), None);
        assert_eq!(violation(&pb::CreateTokenRequest::default()).as_deref(), Some("role is required"));
    }

    #[test]
    fn strings_numbers_durations_maps() {
        assert_eq!(violation(&job(exec("/bin/true\0x"))).as_deref(), Some("spec.exec.command must not contain NUL"));
        assert!(
            violation(&job(exec("/bin/true\x01"))).unwrap().starts_with("spec.exec.command must be free of control")
        );
        let mut e = exec("/bin/echo");
        e.args = vec!["ok\nnewline".into(), "bad\0".into()];
        assert_eq!(violation(&job(e)).as_deref(), Some("spec.exec.args[1] must not contain NUL"));
        let t = pb::CreateJoinTokenRequest { description: "a\0b".into(), ..Default::default() };
        assert_eq!(violation(&t).as_deref(), Some("description must not contain NUL"), "every string, rules or not");
        let mut e = exec("/bin/true");
        e.timeout = Some(prost_types::Duration { seconds: 0, nanos: 0 });
        assert_eq!(violation(&job(e.clone())).as_deref(), Some("spec.exec.timeout must be more than zero"));
        e.timeout = Some(prost_types::Duration { seconds: 31_536_000, nanos: 1 });
        assert_eq!(violation(&job(e.clone())).as_deref(), Some("spec.exec.timeout must be at most 31536000s"));
        e.timeout = Some(prost_types::Duration { seconds: 0, nanos: 1 });
        assert_eq!(violation(&job(e)), None);
        let mut r = job(exec("/bin/true"));
        r.spec.as_mut().unwrap().resources = Some(pb::Resources { cpu_millis: -1, ..Default::default() });
        assert_eq!(violation(&r).as_deref(), Some("spec.resources.cpu_millis must be at least 0, got -1"));
        r.spec.as_mut().unwrap().resources = None;
        r.labels.insert("-bad".into(), "v".into());
        assert!(violation(&r).unwrap().starts_with("labels key \"-bad\" must be a label key"), "{:?}", violation(&r));
        r.labels.clear();
        r.labels.insert("zone".into(), "a b".into());
        assert!(violation(&r).unwrap().starts_with("labels[\"zone\"] must be a label value"));
        r.labels.clear();
        r.idempotency_key = "é".repeat(255);
        assert_eq!(violation(&r), None, "255 characters, 510 bytes");
        r.idempotency_key.push('x');
        assert_eq!(violation(&r).as_deref(), Some("idempotency_key is at most 255 characters"));
    }

    #[test]
    fn unset_and_required_when() {
        let mut e = exec("/bin/sleep");
        e.timeout = Some(prost_types::Duration { seconds: 5, nanos: 0 });
        let w = pb::CreateWorkloadRequest {
            name: "web".into(),
            spec: Some(pb::WorkloadSpec { exec: Some(e), ..Default::default() }),
            replicas: 1,
        };
        assert_eq!(violation(&w).as_deref(), Some("spec.exec.timeout must not be set here"));
        let q = pb::SetDesiredStateRequest {
            node_id: "nd-00000000000000000000".into(),
            state: pb::DesiredNodeState::Quarantined as i32,
            ..Default::default()
        };
        assert_eq!(violation(&q).as_deref(), Some("reason is required when state is DESIRED_NODE_STATE_QUARANTINED"));
        let p = pb::SetDesiredStateRequest { state: pb::DesiredNodeState::Paused as i32, ..q.clone() };
        assert_eq!(violation(&p), None);
        let q = pb::SetDesiredStateRequest { reason: "flaky disk".into(), ..q };
        assert_eq!(violation(&q), None);
    }

    #[test]
    fn label_selector_pattern_accepts_the_grammar() {
        let re = Regex::new(&label_selector_pattern()).unwrap();
        for ok in [
            "",
            "  ",
            "a",
            "!a",
            "! a",
            "a=b",
            "a==b",
            "a!=b",
            "a=",
            " a = b ",
            "a in (x)",
            "a notin (x, y)",
            "a in(x)",
            "k/x.y=v:1,b,!c",
            "in",
            "a in ( x , y )",
        ] {
            assert!(re.is_match(ok), "{ok:?} should match");
        }
        for bad in
            [",", "a,", "a=b=c", "!a=b", "a in ()", "a in (x,)", "a in x", "a b", "-a", "a=(b)", "a\n", "a in (x) y"]
        {
            assert!(!re.is_match(bad), "{bad:?} should not match");
        }
    }

    #[test]
    fn only_requests_with_rules_are_checked() {
        assert!(checked_request("tether.v1.SubmitJobRequest").is_some());
        assert!(checked_request("tether.v1.SubmitJobResponse").is_none(), "responses are not checked");
        assert!(checked_request("tether.v1.ListWorkloadsRequest").is_none(), "nothing to check");
        assert!(checked_request("tether.v1.WhoAmIRequest").is_none(), "nothing to check");
        assert!(checked_request("tether.agent.v1.EnrollRequest").is_some());
        assert!(checked_request("tether.agent.v1.HeartbeatRequest").is_none(), "a stream's messages");
        assert!(checked_request("tether.agent.v1.JobsRequest").is_none(), "a stream's messages");
    }
}

/// The paths (`/tether.v1.Service/Method`) of every RPC marked
/// `(tether.v1.read_only) = true`: those that change nothing.
pub fn read_only_methods() -> &'static std::collections::HashSet<String> {
    static SET: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        let pool = pool();
        let Some(ext) = pool.get_extension_by_name("tether.v1.read_only") else { return Default::default() };
        pool.services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .filter(|m| m.options().get_extension(&ext).as_bool() == Some(true))
            .map(|m| format!("/{}/{}", m.parent_service().full_name(), m.name()))
            .collect()
    })
}
