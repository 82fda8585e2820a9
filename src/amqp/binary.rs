//! CloudEvents' binary content mode over AMQP (contract section 3.1): the attributes travel in
//! `ce-` headers (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, ...), the message's
//! `content_type` is the event's `datacontenttype`, and the body is the event's `data` alone.
//! Inbound, such a message is turned into the structured envelope the decoders read; outbound,
//! with `amqp.event_mode = "binary"`, a stored structured event is split the other way.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Map, Value};

use crate::domain::{
    login::{Rejection, RejectionKind},
    strict_json::{self, StrictError},
};

/// The header prefix of a CloudEvents attribute.
pub const PREFIX: &str = "ce-";

/// Whether a message is in binary mode: it carries `ce-specversion`.
pub fn is_binary(headers: Option<&FieldTable>) -> bool {
    headers.is_some_and(|h| {
        h.inner()
            .contains_key(format!("{PREFIX}specversion").as_str())
    })
}

/// The structured envelope of a binary-mode message: its `ce-` headers as attributes and its
/// body, read as JSON, as `data`. Counted against `max_bytes` with its headers; a header that is
/// not text, a body that is not JSON or a `content_type` that is not JSON is refused as the
/// structured form would be.
pub fn envelope(
    headers: &FieldTable,
    content_type: Option<&str>,
    body: &[u8],
    max_bytes: usize,
) -> Result<Vec<u8>, Rejection> {
    let mut size = body.len();
    let mut envelope = Map::new();
    for (name, value) in headers.inner() {
        let Some(attribute) = name.as_str().strip_prefix(PREFIX) else {
            continue;
        };
        size += name.as_str().len();
        let text = match value {
            AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
        .ok_or_else(|| invalid(format!("header {name} must be a text value")))?;
        size += text.len();
        if attribute.is_empty() || attribute == "data" || attribute == "data_base64" {
            return Err(invalid(format!(
                "header {name} is not a CloudEvents attribute"
            )));
        }
        envelope.insert(attribute.to_owned(), Value::String(text));
    }
    if size > max_bytes {
        return Err(Rejection::new(
            RejectionKind::TooLarge,
            format!("body and ce- headers are {size} bytes, the limit is {max_bytes}"),
        ));
    }
    if let Some(kind) = content_type
        && !is_json(kind)
    {
        return Err(invalid(format!(
            "datacontenttype must be JSON, got {:?}",
            kind.chars().take(64).collect::<String>()
        )));
    }
    if let Some(kind) = content_type {
        envelope.insert("datacontenttype".into(), Value::String(kind.to_owned()));
    }
    let data = match strict_json::parse(body) {
        Ok(data) => data,
        Err(StrictError::Syntax(message)) => {
            return Err(Rejection::new(RejectionKind::NotJson, message));
        }
        Err(StrictError::DuplicateKey(message)) => return Err(invalid(message)),
    };
    envelope.insert("data".into(), data);
    Ok(serde_json::to_vec(&Value::Object(envelope)).expect("JSON serialises"))
}

/// `application/json`, `application/cloudevents+json` or any `+json` type, parameters aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn invalid(detail: String) -> Rejection {
    Rejection::new(RejectionKind::InvalidEvent, detail)
}

/// A structured event split into binary mode: its attributes as `ce-` headers (text), its
/// `datacontenttype` for the message's `content_type`, and its `data` as the body.
pub fn split(event: &Value) -> (FieldTable, Option<String>, Vec<u8>) {
    let mut headers = FieldTable::default();
    let mut content_type = None;
    let mut body = b"null".to_vec();
    if let Value::Object(map) = event {
        for (name, value) in map {
            match name.as_str() {
                "data" => body = serde_json::to_vec(value).expect("JSON serialises"),
                "datacontenttype" => content_type = value.as_str().map(str::to_owned),
                _ => {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    headers.insert(
                        ShortString::from(format!("{PREFIX}{name}")),
                        AMQPValue::LongString(LongString::from(text)),
                    );
                }
            }
        }
    }
    (headers, content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(
                ShortString::from(k.to_string()),
                AMQPValue::LongString(LongString::from(v.to_string())),
            );
        }
        table
    }

    #[test]
    fn a_binary_message_becomes_the_structured_envelope() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "urn:test"),
            ("ce-type", "login.completed"),
            ("x-other", "ignored"),
        ]);
        assert!(is_binary(Some(&h)));
        let body = br#"{"user_pool_id": "pool-1"}"#;
        let bytes = envelope(&h, Some("application/json"), body, 65536).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"specversion": "1.0", "id": "e-1", "source": "urn:test",
                   "type": "login.completed", "datacontenttype": "application/json",
                   "data": {"user_pool_id": "pool-1"}})
        );
        // And back.
        let (h2, content_type, body2) = split(&value);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<Value>(&body2).unwrap(),
            json!({"user_pool_id": "pool-1"})
        );
        assert_eq!(
            envelope(&h2, content_type.as_deref(), &body2, 65536).unwrap(),
            bytes
        );
    }

    #[test]
    fn what_the_structured_form_refuses_is_refused() {
        let h = headers(&[("ce-specversion", "1.0"), ("ce-id", "e-1")]);
        let kind = |r: Result<Vec<u8>, Rejection>| r.unwrap_err().kind;
        assert_eq!(
            kind(envelope(&h, None, b"{nope", 65536)),
            RejectionKind::NotJson
        );
        assert_eq!(
            kind(envelope(&h, None, br#"{"a":1,"a":2}"#, 65536)),
            RejectionKind::InvalidEvent
        );
        assert_eq!(
            kind(envelope(&h, Some("text/plain"), b"{}", 65536)),
            RejectionKind::InvalidEvent
        );
        assert_eq!(kind(envelope(&h, None, b"{}", 10)), RejectionKind::TooLarge);
        let mut numeric = h.clone();
        numeric.insert(ShortString::from("ce-time"), AMQPValue::LongLongInt(5));
        assert_eq!(
            kind(envelope(&numeric, None, b"{}", 65536)),
            RejectionKind::InvalidEvent
        );
        let data = headers(&[("ce-specversion", "1.0"), ("ce-data", "{}")]);
        assert_eq!(
            kind(envelope(&data, None, b"{}", 65536)),
            RejectionKind::InvalidEvent
        );
        assert!(!is_binary(Some(&headers(&[("x-idsync", "1")]))));
        assert!(!is_binary(None));
        assert!(is_json("application/cloudevents+json; charset=utf-8"));
    }
}
