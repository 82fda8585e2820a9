//! JSON parsing that refuses an object with the same key twice, at any depth. Parsers disagree on
//! which of two values wins (serde_json keeps the last, many keep the first), so a message that
//! repeats `user_pool_id` or `connection` could be routed to one tenant by identity-sync and to
//! another by a component reading it differently: such a message is invalid, not guessed at.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictError {
    /// Not JSON at all (syntax, encoding, truncation, nesting beyond the parser's limit).
    Syntax(String),
    /// Valid JSON with a key repeated inside one object.
    DuplicateKey(String),
}

/// Parses `bytes` into a `Value`, refusing repeated keys.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict
        .deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v));
    value.map_err(|e| match e.classify() {
        // Only the visitor below raises data errors.
        serde_json::error::Category::Data => StrictError::DuplicateKey(
            e.to_string()
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => StrictError::Syntax(e.to_string()),
    })
}

#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
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
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
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

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {}", brief(&key))));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn brief(key: &str) -> String {
    if key.chars().count() <= 40 {
        format!("{key:?}")
    } else {
        "(a long key)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_serde_json_parses() {
        let text = r#"{"a": [1, -2, 3.5, true, null, "x"], "b": {"c": {}}}"#;
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        for text in [
            r#"{"id": 1, "id": 2}"#,
            r#"{"data": {"connection": "a", "connection": "b"}}"#,
            r#"[{"x": {"y": 1, "y": 1}}]"#,
        ] {
            assert!(
                matches!(parse(text.as_bytes()), Err(StrictError::DuplicateKey(_))),
                "{text}"
            );
        }
        let Err(StrictError::DuplicateKey(message)) = parse(br#"{"a": {"k": 1, "k": 2}}"#) else {
            panic!("duplicate expected");
        };
        assert_eq!(message, r#"duplicate key "k""#);
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for text in [&b"{"[..], b"nope", b"{} {}", b"\xff"] {
            assert!(
                matches!(parse(text), Err(StrictError::Syntax(_))),
                "{text:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(StrictError::Syntax(_))
        ));
    }
}
