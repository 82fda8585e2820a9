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

/// The header counting how often a message was sent to wait (see [`waiting`]).
pub const WAITS_HEADER: &str = "x-idsync-waits";
/// The header saying why a message waits.
pub const WAIT_REASON_HEADER: &str = "x-idsync-wait-reason";

/// Headers the broker adds when it dead-letters or redelivers a message: not passed on to a copy
/// of ours (a copy starts afresh).
fn broker_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// The properties of a copy of `original` sent to wait in the wait queue (a login that cannot be
/// decided yet): the same body, headers and descriptive properties, `expiration` = the wait, and
/// `user_id` = the worker's own broker user, which RabbitMQ validates, so that the worker knows
/// the copy for its own when it comes back. The original's `user_id` and `reply_to` travel in
/// `x-original-*` headers, which only such a copy is believed for (see [`returned`]).
pub fn waiting(
    original: &BasicProperties,
    returned: Option<&Returned>,
    own_user: &str,
    wait_millis: u128,
    reason: &str,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut waits = 0;
    if let Some(theirs) = original.headers() {
        for (name, value) in theirs.inner() {
            let name_text = name.as_str();
            if !name_text.starts_with("x-original-")
                && !name_text.starts_with("x-idsync-")
                && !broker_header(name_text)
            {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    let (user, reply_to) = match returned {
        Some(returned) => {
            waits = returned.waits;
            (returned.user_id.clone(), returned.reply_to.clone())
        }
        None => (
            original.user_id().as_ref().map(|u| u.to_string()),
            original.reply_to().as_ref().map(|r| r.to_string()),
        ),
    };
    if let Some(user) = user {
        headers.insert("x-original-user-id".into(), long_string(&user));
    }
    if let Some(reply_to) = reply_to {
        headers.insert("x-original-reply-to".into(), long_string(&reply_to));
    }
    headers.insert(
        WAITS_HEADER.into(),
        AMQPValue::LongUInt(waits.saturating_add(1)),
    );
    headers.insert(WAIT_REASON_HEADER.into(), long_string(reason));
    let mut properties = descriptive(original)
        .with_delivery_mode(2)
        .with_headers(headers)
        .with_user_id(own_user.into())
        .with_expiration(ShortString::from(wait_millis.to_string()));
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    properties
}

/// What a copy of ours that waited carries of its original publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The original's `user_id` (who published it).
    pub user_id: Option<String>,
    /// The original's `reply_to`.
    pub reply_to: Option<String>,
    /// How often it was sent to wait.
    pub waits: u32,
}

/// The original publisher of a message that is a waiting copy of ours come back: its `user_id`
/// is the worker's own broker user (which RabbitMQ validates: nobody else can set it) and it
/// carries the waits header. `None` for anything else, whatever headers it carries.
pub fn returned(properties: &BasicProperties, own_user: &str) -> Option<Returned> {
    let user = properties.user_id().as_ref()?;
    if user.as_str() != own_user {
        return None;
    }
    let headers = properties.headers().as_ref()?;
    let waits = match headers.inner().get(WAITS_HEADER)? {
        AMQPValue::LongUInt(n) => *n,
        AMQPValue::LongInt(n) => u32::try_from(*n).ok()?,
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok()?,
        _ => return None,
    };
    Some(Returned {
        user_id: header_text(headers, "x-original-user-id"),
        reply_to: header_text(headers, "x-original-reply-to"),
        waits,
    })
}

/// The descriptive properties of `original`, copied onto a message of ours.
fn descriptive(original: &BasicProperties) -> BasicProperties {
    let mut properties = BasicProperties::default();
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
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

/// The times a message was handed back to its queue before this delivery (the quorum queue's
/// `x-delivery-count`; 0 on a first delivery).
pub fn delivery_count(properties: &BasicProperties) -> u64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => (*n).max(0) as u64,
        Some(AMQPValue::LongInt(n)) => (*n).max(0) as u64,
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => (*n).max(0) as u64,
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

/// The properties of a dead letter: the original's descriptive properties and headers, the reason
/// in `x-idsync-error`, and the properties the broker would check or act on moved into headers.
/// For a waiting copy of ours come back (`returned`), the original publisher's.
pub fn dead_letter(
    original: &BasicProperties,
    returned: Option<&Returned>,
    reason: &str,
) -> BasicProperties {
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
    match returned {
        Some(returned) => {
            let user = returned.user_id.as_deref().map(ShortString::from);
            let reply_to = returned.reply_to.as_deref().map(ShortString::from);
            keep("x-original-user-id", &user);
            keep("x-original-reply-to", &reply_to);
        }
        None => {
            keep("x-original-user-id", original.user_id());
            keep("x-original-reply-to", original.reply_to());
        }
    }
    keep("x-original-expiration", original.expiration());
    if let Some(priority) = original.priority() {
        headers.insert(
            "x-original-priority".into(),
            AMQPValue::ShortShortUInt(*priority),
        );
    }
    headers.insert(ERROR_HEADER.into(), long_string(reason));

    let mut properties = descriptive(original)
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
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
        let dead = dead_letter(&original, None, "not_json: expected value");
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
        let dead = dead_letter(&json("m-2").with_headers(forged), None, "not_json: x");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(header_text(&headers, "x-original-user-id"), None);
    }

    #[test]
    fn a_waiting_copy_is_believed_only_when_it_is_the_workers_own() {
        let mut headers = FieldTable::default();
        headers.insert("ce-id".into(), long_string("e-1"));
        headers.insert("x-original-user-id".into(), long_string("forged"));
        headers.insert(WAITS_HEADER.into(), AMQPValue::LongUInt(7));
        headers.insert("x-death".into(), long_string("broker's"));
        let original = json("m-1")
            .with_user_id("platform".into())
            .with_reply_to("amq.gen-abc".into())
            .with_correlation_id("c-1".into())
            .with_priority(9)
            .with_headers(headers);
        // Sent by the platform: the forged headers are not believed, nor passed on.
        assert_eq!(returned(&original, "worker"), None);
        let copy = waiting(&original, None, "worker", 500, "connection_unreadable");
        assert_eq!(copy.user_id().as_ref().map(|u| u.as_str()), Some("worker"));
        assert_eq!(copy.reply_to(), &None);
        assert_eq!(copy.priority(), &None);
        assert_eq!(copy.expiration().as_ref().map(|e| e.as_str()), Some("500"));
        assert_eq!(
            copy.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-1")
        );
        let copied = copy.headers().clone().unwrap();
        assert_eq!(header_text(&copied, "ce-id").as_deref(), Some("e-1"));
        assert!(copied.inner().get("x-death").is_none());
        let back = returned(&copy, "worker").expect("the worker's own copy");
        assert_eq!(
            back,
            Returned {
                user_id: Some("platform".into()),
                reply_to: Some("amq.gen-abc".into()),
                waits: 1,
            }
        );
        // Sent to wait again: still the platform's, counted.
        let again = waiting(&copy, Some(&back), "worker", 500, "connection_unreadable");
        let back = returned(&again, "worker").unwrap();
        assert_eq!((back.user_id.as_deref(), back.waits), (Some("platform"), 2));
        // Another user cannot pass for the worker, whatever the headers say.
        assert_eq!(
            returned(&copy.clone().with_user_id("mallory".into()), "worker"),
            None
        );
        // A dead letter of a copy names the original publisher.
        let dead = dead_letter(&again, Some(&back), "unknown_connection: x");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(
            header_text(&headers, "x-original-user-id").as_deref(),
            Some("platform")
        );
    }

    #[test]
    fn the_delivery_count_is_read_whatever_its_integer_type() {
        assert_eq!(delivery_count(&json("m")), 0);
        for value in [
            AMQPValue::LongLongInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongUInt(3),
        ] {
            let mut headers = FieldTable::default();
            headers.insert("x-delivery-count".into(), value);
            assert_eq!(delivery_count(&json("m").with_headers(headers)), 3);
        }
    }

    #[test]
    fn headers_too_large_to_pass_on_are_dropped() {
        let mut big = FieldTable::default();
        big.insert("x-filler".into(), long_string(&"x".repeat(100_000)));
        let dead = dead_letter(&json("m-3").with_headers(big), None, "too_large: x");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(header_text(&headers, "x-filler"), None);
        assert_eq!(
            header_text(&headers, ERROR_HEADER).as_deref(),
            Some("too_large: x")
        );
    }
}
