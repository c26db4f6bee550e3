//! Routes from `google.api.http` rules, and path-template matching.

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, MethodDescriptor, Value};

use crate::BridgeError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{field.path}` (one segment) or `{field=**}` (the rest).
    Var {
        field: String,
        rest: bool,
    },
}

/// How the HTTP body maps onto the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    None,
    /// `body: "*"`: every field not bound by the path.
    All,
    /// `body: "field"`: the body is that field.
    Field(String),
}

/// One HTTP binding of one gRPC method.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: http::Method,
    /// The template as written, e.g. `/v1/nodes/{node_id}`.
    pub template: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    pub body: BodyRule,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

impl Route {
    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }

    /// Fields bound by the path, in order.
    pub fn path_fields(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Var { field, .. } => Some(field.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// Matches a request path; returns the bound (field, value) pairs.
    fn matches(&self, path: &str) -> Option<Bindings> {
        let (path, verb) = split_verb(path);
        if verb.map(str::to_owned) != self.verb {
            return None;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut bound = Vec::new();
        let mut i = 0;
        for (si, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Var { field, rest: false } => {
                    let v = parts.get(i).filter(|v| !v.is_empty())?;
                    bound.push((field.clone(), percent_decode(v, true)?));
                    i += 1;
                }
                Segment::Var { field, rest: true } => {
                    if si + 1 != self.segments.len() || i >= parts.len() {
                        return None;
                    }
                    let v = parts[i..].iter().map(|p| percent_decode(p, true)).collect::<Option<Vec<_>>>()?.join("/");
                    bound.push((field.clone(), v));
                    i = parts.len();
                }
            }
        }
        (i == parts.len()).then_some(bound)
    }
}

/// A verb is a `:suffix` on the last segment.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind('/').unwrap_or(0);
    match path[last..].find(':') {
        Some(c) => (&path[..last + c], Some(&path[last + c + 1..])),
        None => (path, None),
    }
}

/// Decodes `%XX` escapes. Strict (path bindings): a bad escape or non-UTF-8
/// result is `None`. Lenient (query strings, grpc-message): a bad escape is
/// kept as written and invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str, strict: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match v {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None if strict => return None,
                None => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    if strict { String::from_utf8(out).ok() } else { Some(String::from_utf8_lossy(&out).into_owned()) }
}

fn parse_template(method: &str, t: &str) -> Result<(Vec<Segment>, Option<String>), BridgeError> {
    let bad = |why: &str| BridgeError::Rule { method: method.to_owned(), why: format!("{why} in {t:?}") };
    let path = t.strip_prefix('/').ok_or_else(|| bad("template must start with /"))?;
    // The verb follows the last segment, outside any braces.
    let (path, verb) = match path.rfind(':') {
        Some(c) if !path[c..].contains('}') && path[..c].matches('{').count() == path[..c].matches('}').count() => {
            (&path[..c], Some(path[c + 1..].to_owned()))
        }
        _ => (path, None),
    };
    let mut segments = Vec::new();
    for part in path.split('/') {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
            let rest = match pattern {
                "*" => false,
                "**" => true,
                other => return Err(bad(&format!("unsupported variable pattern {other:?}"))),
            };
            segments.push(Segment::Var { field: field.to_owned(), rest });
        } else if part.contains('{') || part.contains('}') || part.is_empty() {
            return Err(bad("malformed segment"));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok((segments, verb))
}

/// Path variables bound by a match: (field path, decoded value).
pub type Bindings = Vec<(String, String)>;

/// Every HTTP route of the services in a descriptor set.
pub struct Bridge {
    pub pool: DescriptorPool,
    pub routes: Vec<Route>,
}

fn text(msg: &DynamicMessage, field: &str) -> String {
    match msg.get_field_by_name(field).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn rules_of(method: &MethodDescriptor, ext: &ExtensionDescriptor) -> Vec<DynamicMessage> {
    let opts = method.options();
    if !opts.has_extension(ext) {
        return Vec::new();
    }
    let Value::Message(rule) = opts.get_extension(ext).into_owned() else { return Vec::new() };
    let mut all = vec![rule.clone()];
    if let Some(Value::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for v in extra {
            if let Value::Message(m) = v {
                all.push(m.clone());
            }
        }
    }
    all
}

impl Bridge {
    /// Builds the routes of every method with a `google.api.http` option.
    pub fn from_descriptors(fds: &[u8]) -> Result<Bridge, BridgeError> {
        let pool = DescriptorPool::decode(fds)?;
        let mut routes = Vec::new();
        let Some(ext) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Bridge { pool, routes });
        };
        for svc in pool.services() {
            for m in svc.methods() {
                if m.is_client_streaming() {
                    continue; // no HTTP mapping for client streams
                }
                for rule in rules_of(&m, &ext) {
                    let (verb, template) = ["get", "put", "post", "delete", "patch"]
                        .iter()
                        .map(|v| (*v, text(&rule, v)))
                        .find(|(_, t)| !t.is_empty())
                        .ok_or_else(|| BridgeError::Rule {
                            method: m.full_name().to_owned(),
                            why: "no HTTP method in the rule".into(),
                        })?;
                    let (segments, path_verb) = parse_template(m.full_name(), &template)?;
                    let body = match text(&rule, "body").as_str() {
                        "" => BodyRule::None,
                        "*" => BodyRule::All,
                        f => BodyRule::Field(f.to_owned()),
                    };
                    routes.push(Route {
                        http_method: verb.to_uppercase().parse().expect("a valid HTTP method name"),
                        template,
                        segments,
                        verb: path_verb,
                        body,
                        grpc_path: format!("/{}/{}", svc.full_name(), m.name()),
                        method: m.clone(),
                    });
                }
            }
        }
        Ok(Bridge { pool, routes })
    }

    /// The route for a request, with its path bindings. Otherwise the
    /// methods the path has (405 with `Allow`), empty when it has none (404).
    pub fn find(&self, method: &http::Method, path: &str) -> Result<(&Route, Bindings), Vec<http::Method>> {
        let mut allowed = Vec::new();
        for r in &self.routes {
            if let Some(bound) = r.matches(path) {
                if r.http_method == *method {
                    return Ok((r, bound));
                }
                if !allowed.contains(&r.http_method) {
                    allowed.push(r.http_method.clone());
                }
            }
        }
        Err(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_matching() {
        let b = Bridge::from_descriptors(tether_proto::FILE_DESCRIPTOR_SET).unwrap();
        let (r, bound) = b.find(&http::Method::GET, "/v1/nodes/nd-0123").unwrap();
        assert_eq!(r.grpc_path, "/tether.v1.NodeService/GetNode");
        assert_eq!(bound, [("node_id".to_string(), "nd-0123".to_string())]);
        let (r, _) = b.find(&http::Method::GET, "/v1/nodes").unwrap();
        assert_eq!(r.grpc_path, "/tether.v1.NodeService/ListNodes");
        let (r, _) = b.find(&http::Method::GET, "/v1/nodes:watch").unwrap();
        assert!(r.server_streaming());
        let (r, bound) = b.find(&http::Method::POST, "/v1/jobs/job-1:cancel").unwrap();
        assert_eq!(r.grpc_path, "/tether.v1.JobService/CancelJob");
        assert_eq!(bound[0].1, "job-1");
        let (r, _) = b.find(&http::Method::POST, "/v1/nodes/nd-1:setDesiredState").unwrap();
        assert_eq!(r.body, BodyRule::All);
        assert_eq!(b.find(&http::Method::PATCH, "/v1/nodes").err(), Some(vec![http::Method::GET]));
        assert_eq!(b.find(&http::Method::GET, "/v1/nope").err(), Some(vec![]));
        assert_eq!(b.find(&http::Method::GET, "/v1/nodes/a/b").err(), Some(vec![]));
        // Percent-encoded bindings are decoded.
        let (_, bound) = b.find(&http::Method::GET, "/v1/nodes/nd%2D1").unwrap();
        assert_eq!(bound[0].1, "nd-1");
    }

    #[test]
    fn template_parser() {
        let (s, v) = parse_template("m", "/v1/{name=**}:get").unwrap();
        assert_eq!(v.as_deref(), Some("get"));
        assert_eq!(s.last(), Some(&Segment::Var { field: "name".into(), rest: true }));
        assert!(parse_template("m", "v1/x").is_err());
        assert!(parse_template("m", "/v1/{a=foo/*}").is_err());
        assert!(parse_template("m", "/v1//x").is_err());
    }
}
