//! Properties of the messages identity-sync publishes. Every property is built here, never copied
//! whole from a delivery: the broker validates some of them against the publishing connection
//! (`user_id` must be its own user) and acts on others (`expiration` would drop a dead letter from
//! its queue), so a property chosen by whoever published the original must not reach a publish of
//! ours as is. What must be kept travels in `x-original-*` headers.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

pub const JSON: &str = "application/json";

/// The header carrying the reason of a dead-lettered message.
pub const ERROR_HEADER: &str = "x-idsync-error";

/// Properties of every JSON message identity-sync publishes.
pub fn json(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(JSON.into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
        .with_app_id("identity-sync".into())
}

/// Whether a reply may be sent to `queue`: a server-named queue (`amq.gen-...`), direct reply-to
/// (`amq.rabbitmq.reply-to...`), or a queue named with the configured prefix. Anything else could
/// be a subscriber's queue that a publisher wants to inject messages into.
pub fn reply_allowed(queue: &str, prefix: &str) -> bool {
    queue.starts_with("amq.gen-")
        || queue.starts_with("amq.rabbitmq.reply-to")
        || (!prefix.is_empty() && queue.starts_with(prefix))
}

/// The properties of a dead letter: the original's descriptive properties and headers, the reason
/// in `x-idsync-error`, and the properties the broker would check or act on moved into headers.
pub fn dead_letter(original: &BasicProperties, reason: &str) -> BasicProperties {
    // The publisher's own headers, but none that could pass for ours, and none at all when they
    // are large enough to push the dead letter past the broker's frame size.
    let mut headers = FieldTable::default();
    if let Some(theirs) = original.headers()
        && approximate_size(theirs) <= MAX_COPIED_HEADERS
    {
        for (name, value) in theirs.inner() {
            let name_text = name.as_str();
            if !name_text.starts_with("x-original-") && !name_text.starts_with("x-idsync-") {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    let mut keep = |name: &str, value: &Option<ShortString>| {
        if let Some(value) = value {
            headers.insert(name.into(), long_string(value.as_str()));
        }
    };
    keep("x-original-user-id", original.user_id());
    keep("x-original-reply-to", original.reply_to());
    keep("x-original-expiration", original.expiration());
    if let Some(priority) = original.priority() {
        headers.insert(
            "x-original-priority".into(),
            AMQPValue::ShortShortUInt(*priority),
        );
    }
    headers.insert(ERROR_HEADER.into(), long_string(reason));

    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        properties = properties.with_app_id(v.clone());
    }
    properties
}

/// Headers of the original copied onto its dead letter, at most (approximately, in bytes).
const MAX_COPIED_HEADERS: usize = 16 * 1024;

/// Roughly the encoded size of a header table: enough to tell a normal table from one meant to
/// fill a frame.
fn approximate_size(table: &FieldTable) -> usize {
    fn value(v: &AMQPValue) -> usize {
        match v {
            AMQPValue::LongString(s) => s.as_bytes().len() + 5,
            AMQPValue::ShortString(s) => s.as_str().len() + 2,
            AMQPValue::FieldTable(t) => approximate_size(t) + 5,
            AMQPValue::FieldArray(items) => items.as_slice().iter().map(value).sum::<usize>() + 5,
            AMQPValue::ByteArray(bytes) => bytes.as_slice().len() + 5,
            _ => 9,
        }
    }
    table
        .inner()
        .iter()
        .map(|(k, v)| k.as_str().len() + 1 + value(v))
        .sum()
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A header's text, if it has one.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_only_to_reply_queues() {
        let prefix = "idsync.reply.";
        for queue in [
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNjQ0Mjk.1",
            "idsync.reply.platform-1",
        ] {
            assert!(reply_allowed(queue, prefix), "{queue}");
        }
        for queue in [
            "downstream.user-events",
            "idsync.login-completed",
            "idsync.login-completed.dlq",
            "amq.gen",
            "idsync.replyx",
            "",
        ] {
            assert!(!reply_allowed(queue, prefix), "{queue}");
        }
    }

    #[test]
    fn a_dead_letter_carries_nothing_the_broker_checks_or_acts_on() {
        let mut headers = FieldTable::default();
        headers.insert("x-trace".into(), long_string("t-1"));
        headers.insert(ERROR_HEADER.into(), long_string("forged by the publisher"));
        headers.insert("x-original-user-id".into(), long_string("someone-else"));
        headers.insert("x-idsync-anything".into(), long_string("forged"));
        let original = json("m-1")
            .with_user_id("platform".into())
            .with_reply_to("downstream.queue".into())
            .with_expiration("1000".into())
            .with_priority(9)
            .with_correlation_id("c-1".into())
            .with_type("login.completed".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        let dead = dead_letter(&original, "not_json: expected value");
        assert_eq!(dead.user_id(), &None);
        assert_eq!(dead.reply_to(), &None);
        assert_eq!(dead.expiration(), &None);
        assert_eq!(dead.priority(), &None);
        assert_eq!(dead.delivery_mode(), &Some(2));
        assert_eq!(dead.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(
            dead.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-1")
        );
        assert_eq!(dead.content_type().as_ref().map(|c| c.as_str()), Some(JSON));
        assert_eq!(dead.timestamp(), &Some(1_700_000_000));
        let headers = dead.headers().clone().unwrap();
        let text = |name| header_text(&headers, name);
        assert_eq!(
            text(ERROR_HEADER).as_deref(),
            Some("not_json: expected value")
        );
        assert_eq!(text("x-original-user-id").as_deref(), Some("platform"));
        assert_eq!(
            text("x-original-reply-to").as_deref(),
            Some("downstream.queue")
        );
        assert_eq!(text("x-original-expiration").as_deref(), Some("1000"));
        assert_eq!(text("x-trace").as_deref(), Some("t-1"));
        assert_eq!(
            headers.inner().get("x-original-priority"),
            Some(&AMQPValue::ShortShortUInt(9))
        );
        assert_eq!(text("x-idsync-anything"), None);

        // Without the property, a forged x-original-* header is not passed on either.
        let mut forged = FieldTable::default();
        forged.insert("x-original-user-id".into(), long_string("platform"));
        let dead = dead_letter(&json("m-2").with_headers(forged), "not_json: x");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(header_text(&headers, "x-original-user-id"), None);
    }

    #[test]
    fn headers_too_large_to_pass_on_are_dropped() {
        let mut big = FieldTable::default();
        big.insert("x-filler".into(), long_string(&"x".repeat(100_000)));
        let dead = dead_letter(&json("m-3").with_headers(big), "too_large: x");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(header_text(&headers, "x-filler"), None);
        assert_eq!(
            header_text(&headers, ERROR_HEADER).as_deref(),
            Some("too_large: x")
        );
    }
}
