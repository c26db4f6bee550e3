//! Strict JSON for request bodies: JSON whitespace only, and no object that
//! names a key twice (plain parsers keep the last).

use serde_json::{Map, Value};

/// A body of JSON whitespace alone (space, tab, LF, CR): no body, for a
/// method that takes none. Other ASCII blanks (form feed, for one) are not
/// JSON whitespace.
pub(crate) fn is_blank_json(body: &[u8]) -> bool {
    body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Parses JSON, refusing an object that names a key twice (plain parsers
/// keep the last, so `{"spec": 5, "spec": {...}}` would pass).
pub(crate) fn strict_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(body).map(|s| s.0)
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_json_whitespace_is_an_empty_body() {
        for blank in [&b""[..], b" ", b"\t\r\n "] {
            assert!(is_blank_json(blank), "{blank:?}");
        }
        // Form feed and the other ASCII blanks Rust counts as whitespace are
        // not JSON whitespace (schemathesis sent "\x0c" and got 200).
        for not_blank in [&b"\x0c"[..], b" \x0c", b"\x0b", b"{}"] {
            assert!(!is_blank_json(not_blank), "{not_blank:?}");
            assert!(strict_json(not_blank).is_err() || not_blank == b"{}");
        }
        for blank in [&b" "[..], b"\r"] {
            assert!(strict_json(blank).is_err(), "whitespace alone is not a JSON text: {blank:?}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert_eq!(
            strict_json(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap(),
            json!({"a": [1, {"b": null}], "c": 1.5})
        );
        let e = strict_json(br#"{"spec": 5, "spec": {}}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"spec\""), "{e}");
        assert!(strict_json(br#"{"a": [{"x": 1, "x": 2}]}"#).is_err());
        assert!(strict_json(br#"{"a": 1,}"#).is_err(), "still strict JSON");
        assert_eq!(strict_json(b"18446744073709551615").unwrap(), json!(u64::MAX));
        assert!(strict_json(b"18446744073709551616").unwrap().as_u64().is_none(), "2^64 parses as a float");
    }
}
