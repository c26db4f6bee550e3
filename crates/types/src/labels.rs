use std::collections::BTreeMap;

use crate::Error;

/// Node labels. Sorted, so that their JSON form is stable.
pub type Labels = BTreeMap<String, String>;

const MAX_LABELS: usize = 64;
const MAX_KEY_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 256;

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && k.as_bytes()[0].is_ascii_alphanumeric()
}

fn valid_value(v: &str) -> bool {
    v.len() <= MAX_VALUE_LEN && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b))
}

/// Checks label keys and values: keys start alphanumeric and use `[A-Za-z0-9-_./]`,
/// values use `[A-Za-z0-9-_./:]`, with length and count limits.
pub fn validate_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), Error> {
    let mut n = 0;
    for (k, v) in labels {
        n += 1;
        if !valid_key(k) {
            return Err(Error::invalid(format!(
                "label key {k:?} is invalid: 1-{MAX_KEY_LEN} characters of [A-Za-z0-9-_./], starting alphanumeric"
            )));
        }
        if !valid_value(v) {
            return Err(Error::invalid(format!(
                "label value {v:?} of {k:?} is invalid: at most {MAX_VALUE_LEN} characters of [A-Za-z0-9-_./:]"
            )));
        }
    }
    if n > MAX_LABELS {
        return Err(Error::invalid(format!("at most {MAX_LABELS} labels, got {n}")));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A Kubernetes-style label selector: comma-separated requirements that must
/// all hold. `k=v` (or `k==v`), `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::invalid(format!("label selector {input:?}: {why}"));
        if input.len() > 4096 {
            return Err(bad("longer than 4096 bytes"));
        }
        let mut requirements = Vec::new();
        for part in split_top_level(input).map_err(&bad)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(bad("empty requirement"));
            }
            let key_ok = |k: &str| -> Result<String, Error> {
                let k = k.trim();
                if valid_key(k) { Ok(k.to_owned()) } else { Err(bad(&format!("invalid key {k:?}"))) }
            };
            let val_ok = |v: &str| -> Result<String, Error> {
                let v = v.trim();
                if valid_value(v) { Ok(v.to_owned()) } else { Err(bad(&format!("invalid value {v:?}"))) }
            };
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(key_ok(k)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(key_ok(k)?, val_ok(v)?)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(key_ok(k)?, val_ok(v)?)
            } else if let Some((k, op, set)) = set_requirement(part) {
                let set = set.split(',').map(val_ok).collect::<Result<Vec<_>, _>>()?;
                if set.iter().any(|v| v.is_empty()) {
                    return Err(bad("empty value in set"));
                }
                if op == "in" { Requirement::In(key_ok(k)?, set) } else { Requirement::NotIn(key_ok(k)?, set) }
            } else {
                Requirement::Exists(key_ok(part)?)
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parenthesis")?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parenthesis");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// `key in (a,b)` / `key notin (a,b)` -> (key, op, "a,b").
fn set_requirement(part: &str) -> Option<(&str, &'static str, &str)> {
    let open = part.find('(')?;
    let inner = part[open + 1..].strip_suffix(')')?;
    let head = part[..open].trim_end();
    for op in ["notin", "in"] {
        if let Some(key) = head.strip_suffix(op)
            && key.ends_with(char::is_whitespace)
        {
            return Some((key.trim(), op, inner));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selector_semantics() {
        let l = labels(&[("zone", "a"), ("gpu", "true"), ("tier", "web")]);
        for (sel, want) in [
            ("", true),
            ("zone=a", true),
            ("zone==a", true),
            ("zone=b", false),
            ("zone!=b", true),
            ("missing!=b", true),
            ("zone in (a, b)", true),
            ("zone in (b,c)", false),
            ("zone notin (b,c)", true),
            ("missing notin (b)", true),
            ("gpu", true),
            ("!gpu", false),
            ("!missing", true),
            ("zone=a,tier in (web,api),!missing", true),
            ("zone=a,tier=db", false),
        ] {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn selector_rejects_garbage() {
        for sel in ["zone in (a", "zone=a,,tier=b", "=a", "zone=a b", "zone in ()", "in (a)", "!", "a)(", "z=\u{e9}"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel} should fail");
        }
    }

    #[test]
    fn label_validation() {
        assert!(validate_labels(&labels(&[("zone", "eu-west-1a"), ("team.io/owner", "a_b")])).is_ok());
        assert!(validate_labels(&labels(&[("-bad", "x")])).is_err());
        assert!(validate_labels(&labels(&[("ok", "sp ace")])).is_err());
        let many: Labels = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(validate_labels(&many).is_err());
    }

    /// The grammar the protos state (`tether_proto::rules`, the OpenAPI
    /// pattern, enforced before a request reaches a handler) and this parser
    /// agree: on thousands of strings made of the grammar's own characters,
    /// the pattern matches exactly when the parser accepts.
    #[test]
    fn selector_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(&tether_proto::rules::label_selector_pattern()).unwrap();
        let alphabet: Vec<char> = "ab. !=(),intoa".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut matched, mut refused) = (0, 0);
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (seed >> 60) as usize;
            let mut s = String::new();
            let mut x = seed;
            for _ in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            let parsed = LabelSelector::parse(&s).is_ok();
            assert_eq!(re.is_match(&s), parsed, "{s:?}: pattern and parser disagree");
            if parsed { matched += 1 } else { refused += 1 }
        }
        assert!(matched > 1000 && refused > 1000, "the corpus exercises both sides: {matched} / {refused}");
    }
}
