//! Both content modes of the CloudEvents AMQP binding (contract section 3.1): a login in binary
//! mode (attributes in `ce-` headers, `data` alone in the body) is decided like the structured
//! one, refused the same way when it is not an event, and events go out in binary mode when
//! `amqp.event_mode = "binary"`.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::json;
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

fn ce_headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in pairs {
        headers.insert(
            ShortString::from(format!("ce-{name}")),
            AMQPValue::LongString(LongString::from(value.to_string())),
        );
    }
    headers
}

/// Publishes a binary-mode message asking for a reply; returns the correlation id.
async fn request_binary(
    broker: &Broker,
    headers: FieldTable,
    content_type: &str,
    body: &[u8],
) -> String {
    let correlation_id = Uuid::new_v4().to_string();
    let properties = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_headers(headers)
        .with_reply_to(broker.reply_queue().into())
        .with_correlation_id(correlation_id.as_str().into());
    broker.publish_raw(body, properties).await;
    correlation_id
}

#[tokio::test]
async fn a_binary_mode_login_is_decided_like_a_structured_one() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let id = Uuid::new_v4().to_string();
    let data = json!({"user_pool_id": POOL, "connection": "plain", "external_id": "bin-1",
                      "profile": {"email": "bin@corp.example", "email_verified": true}});
    let headers = ce_headers(&[
        ("specversion", "1.0"),
        ("id", &id),
        ("source", "urn:test:binary"),
        ("type", "login.completed"),
        ("time", "2026-11-25T12:00:00Z"),
    ]);
    let correlation_id = request_binary(
        &broker,
        headers,
        "application/json",
        &serde_json::to_vec(&data).unwrap(),
    )
    .await;
    let reply = broker.reply(&correlation_id).await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    assert_eq!(reply.event_id.as_deref(), Some(id.as_str()));
    let created = broker.next_event().await;
    assert_eq!(created.body["data"]["user"]["email"], "bin@corp.example");

    // The same event in structured mode is the same event: a duplicate, the same reply.
    let structured = json!({"specversion": "1.0", "id": id, "source": "urn:test:binary",
                            "type": "login.completed", "data": data});
    let again = broker.login(&structured).await;
    assert_eq!(
        (again.outcome, again.user_id),
        (Outcome::UserCreated, reply.user_id)
    );
    broker.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_binary_mode_message_that_is_not_an_event_is_dead_lettered_with_its_reason() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let base = [
        ("specversion", "1.0"),
        ("id", "bad-1"),
        ("source", "urn:test:binary"),
        ("type", "login.completed"),
    ];
    let data = br#"{"user_pool_id": "pool-1", "connection": "plain", "external_id": "x"}"#;
    let without_type: Vec<(&str, &str)> =
        base.iter().copied().filter(|(k, _)| *k != "type").collect();
    for (headers, content_type, body, reason) in [
        (
            ce_headers(&base),
            "application/json",
            &b"{not json"[..],
            "not_json",
        ),
        (
            ce_headers(&without_type),
            "application/json",
            &data[..],
            "invalid_event: type is missing",
        ),
        (
            ce_headers(&base),
            "text/plain",
            &data[..],
            "invalid_event: datacontenttype must be JSON",
        ),
    ] {
        let correlation_id = request_binary(&broker, headers, content_type, body).await;
        let reply = broker.reply_value(&correlation_id).await;
        assert_eq!(reply["outcome"], "error", "{reply}");
        let dead = broker.dead_letter().await;
        let header = dead
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-idsync-error").cloned());
        let Some(AMQPValue::LongString(text)) = header else {
            panic!("no reason on the dead letter")
        };
        let text = String::from_utf8_lossy(text.as_bytes()).into_owned();
        assert!(text.starts_with(reason), "{text}");
        assert_eq!(&dead.data[..], body, "the original body is kept");
    }
    let db = services.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM processed_events").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn events_go_out_in_binary_mode_when_configured() {
    let services = Services::with_keys("", &[("amqp", r#"event_mode = "binary""#)]).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "plain",
            "out-1",
            json!({"email": "out@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let event = broker.next_event().await;
    // The body is the data alone; the attributes are headers.
    assert_eq!(
        event.body["user"]["email"], "out@corp.example",
        "{}",
        event.body
    );
    assert!(event.body.get("specversion").is_none());
    let headers = event.properties.headers().clone().expect("ce- headers");
    let header = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(header("ce-type"), "user.created");
    assert_eq!(header("ce-source"), "identity-sync");
    assert_eq!(header("ce-subject"), reply.user_id.unwrap().to_string());
    assert_eq!(header("ce-sequence").len(), 20);
    assert!(Uuid::parse_str(&header("ce-id")).is_ok());
    assert_eq!(
        event.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_cloudevents_sdk_s_messages_are_decided_in_both_modes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/test-venv/bin/python");
    assert!(
        python.exists(),
        "the CloudEvents SDK is not installed: run scripts/test-deps"
    );
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let id = Uuid::new_v4().to_string();
    let output = std::process::Command::new(&python)
        .arg(root.join("tests/sdk/encode_login.py"))
        .args([id.as_str(), "sdk-1", "sdk@corp.example"])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let encoded: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut user = None;
    for mode in ["binary", "structured"] {
        let message = &encoded[mode];
        let mut headers = FieldTable::default();
        let mut content_type = "application/json".to_owned();
        for (name, value) in message["headers"].as_object().unwrap() {
            let value = value.as_str().unwrap();
            if name == "content-type" {
                content_type = value.to_owned();
            } else {
                headers.insert(
                    ShortString::from(name.clone()),
                    AMQPValue::LongString(LongString::from(value.to_owned())),
                );
            }
        }
        let body = message["body"].as_str().unwrap().as_bytes();
        let correlation_id = request_binary(&broker, headers, &content_type, body).await;
        let reply = broker.reply(&correlation_id).await;
        assert_eq!(reply.event_id.as_deref(), Some(id.as_str()), "{mode}");
        // The SDK's two encodings are one event: decided once, the same reply again.
        assert_eq!(reply.outcome, Outcome::UserCreated, "{mode}: {reply:?}");
        if let Some(first) = user {
            assert_eq!(reply.user_id, Some(first), "{mode}");
        }
        user = reply.user_id;
    }
    let created = broker.next_event().await;
    assert_eq!(created.body["data"]["user"]["email"], "sdk@corp.example");
    broker.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn every_event_names_its_schema_which_the_http_side_serves() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    broker
        .login(&login(
            "plain",
            "schema-1",
            json!({"email": "schema@corp.example", "email_verified": true}),
        ))
        .await;
    // The broker of the tests checks every event it reads against its schema.
    let created = broker.next_event().await;
    assert_eq!(
        created.body["dataschema"],
        "urn:identity-sync:schema:user.created:1"
    );
    let served: serde_json::Value = reqwest::get(app.url("/schemas/user.created.v1.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["$id"], created.body["dataschema"]);
    let file: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/user.created.v1.json")).unwrap();
    assert_eq!(served, file, "the file in schemas/ is what is served");
    let missing = reqwest::get(app.url("/schemas/user.created.v9.json"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    app.stop().await;
}
