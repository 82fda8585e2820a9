//! Step 1 of the decision: bad input goes to the dead-letter queue with its original body and
//! properties and a reason, is answered with an error reply, writes nothing, and does not stop
//! the worker.

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn valid() -> Value {
    login("plain", "ok-1", json!({"name": "fine"}))
}

fn with(mut value: Value, path: &[&str], new: Value) -> Value {
    let mut cursor = &mut value;
    for key in &path[..path.len() - 1] {
        cursor = &mut cursor[*key];
    }
    cursor[path[path.len() - 1]] = new;
    value
}

fn without(mut value: Value, path: &[&str]) -> Value {
    let mut cursor = &mut value;
    for key in &path[..path.len() - 1] {
        cursor = &mut cursor[*key];
    }
    cursor.as_object_mut().unwrap().remove(path[path.len() - 1]);
    value
}

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let mut huge_profile = valid();
    huge_profile["data"]["profile"]["attributes"] = json!({"blob": "x".repeat(70_000)});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"<xml>nope</xml>".to_vec(), "not_json: "),
        ("empty body", Vec::new(), "not_json: "),
        ("deep nesting", deep.into_bytes(), "not_json: "),
        (
            "a key twice in data",
            String::from_utf8(body(&valid()))
                .unwrap()
                .replacen(
                    "\"user_pool_id\":",
                    "\"user_pool_id\":\"pool-2\",\"user_pool_id\":",
                    1,
                )
                .into_bytes(),
            "invalid_event: duplicate key \"user_pool_id\"",
        ),
        (
            "a key twice in the envelope",
            String::from_utf8(body(&valid()))
                .unwrap()
                .replacen("\"source\":", "\"source\":\"urn:other\",\"source\":", 1)
                .into_bytes(),
            "invalid_event: duplicate key \"source\"",
        ),
        (
            "JSON but not an object",
            b"[1, 2, 3]".to_vec(),
            "not_cloudevents: ",
        ),
        (
            "old specversion",
            body(&with(valid(), &["specversion"], json!("0.3"))),
            "not_cloudevents: ",
        ),
        (
            "no specversion",
            body(&without(valid(), &["specversion"])),
            "not_cloudevents: ",
        ),
        (
            "wrong type",
            body(&with(valid(), &["type"], json!("logout.completed"))),
            "wrong_type: ",
        ),
        (
            "missing id",
            body(&without(valid(), &["id"])),
            "invalid_event: id is missing",
        ),
        (
            "oversized id",
            body(&with(valid(), &["id"], json!("x".repeat(129)))),
            "invalid_event: id is longer",
        ),
        (
            "missing source",
            body(&without(valid(), &["source"])),
            "invalid_event: source is missing",
        ),
        (
            "missing pool",
            body(&without(valid(), &["data", "user_pool_id"])),
            "invalid_event: data.user_pool_id",
        ),
        (
            "missing connection",
            body(&without(valid(), &["data", "connection"])),
            "invalid_event: data.connection",
        ),
        (
            "missing external id",
            body(&without(valid(), &["data", "external_id"])),
            "invalid_event: data.external_id",
        ),
        (
            "oversized external id",
            body(&with(
                valid(),
                &["data", "external_id"],
                json!("e".repeat(257)),
            )),
            "invalid_event: data.external_id",
        ),
        (
            "wrongly typed profile field",
            body(&with(valid(), &["data", "profile", "email"], json!(42))),
            "invalid_event: data.profile.email",
        ),
        (
            "NUL in profile",
            body(&with(
                valid(),
                &["data", "profile", "name"],
                json!("a\u{0}b"),
            )),
            "invalid_event: ",
        ),
        ("body over 64 KiB", body(&huge_profile), "too_large: "),
        (
            "unknown connection",
            body(&with(valid(), &["data", "connection"], json!("nope"))),
            "unknown_connection: ",
        ),
        (
            "unknown pool",
            body(&with(valid(), &["data", "user_pool_id"], json!("pool-2"))),
            "unknown_connection: ",
        ),
    ];

    for (name, payload, reason) in &cases {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-platform-trace".into(),
            AMQPValue::LongString(LongString::from("t-1")),
        );
        let correlation_id = format!("case-{name}");
        let properties = json_props()
            .with_headers(headers)
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(broker_reply_queue(&broker).as_str().into());
        broker.publish_raw(payload, properties).await;
        let reply = broker.reply(&correlation_id).await;
        assert_eq!(reply.outcome, Outcome::Error, "{name}");
        assert!(
            reply.reason.as_deref().unwrap().starts_with(reason),
            "{name}: {:?}",
            reply.reason
        );
        assert_eq!((reply.user_id, reply.binding_id), (None, None));

        let dead = broker.dead_letter().await;
        assert_eq!(dead.delivery.data, *payload, "{name}: original body");
        assert_eq!(
            error_header(&dead),
            reply.reason.clone().unwrap(),
            "{name}: header = reply reason"
        );
        let props = &dead.delivery.properties;
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            correlation_id,
            "{name}: properties kept"
        );
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        let trace = props
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-platform-trace")
            .cloned();
        assert_eq!(
            trace,
            Some(AMQPValue::LongString(LongString::from("t-1"))),
            "{name}: headers kept"
        );
    }

    // The event id is reported when it could be read.
    let wrong = with(valid(), &["type"], json!("logout.completed"));
    let id = wrong["id"].as_str().unwrap().to_owned();
    let reply = broker.reply(&broker.request(&wrong).await).await;
    assert_eq!(reply.event_id.as_deref(), Some(id.as_str()));
    broker.dead_letter().await;

    // Nothing was written, and the worker still serves good events.
    assert_eq!(count(&db, "SELECT count(*) FROM processed_events").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
    let good = broker.login(&valid()).await;
    assert_eq!(good.outcome, Outcome::UserCreated);
    assert_eq!(
        broker.queue_depth(broker.work_queue()).await,
        0,
        "never requeued"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "idsync_dead_letters_total{reason=\"not_json\"}"),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_dead_letters_total{reason=\"unknown_connection\"}"
        ),
        2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_event_does_not_hold_back_the_good_ones_beside_it() {
    let services = Services::new().await;
    // Publish before the worker starts so that all arrive in one batch.
    let broker = Broker::connect(&services).await;
    let db = services.migrate().await;
    broker.send(&login("plain", "good-1", json!({}))).await;
    broker.publish_raw(b"garbage", json_props()).await;
    broker
        .send(&login("nope", "bad-connection", json!({})))
        .await;
    broker.send(&login("plain", "good-2", json!({}))).await;
    let app = TestApp::spawn(&services).await;

    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 2
    })
    .await
    .expect("both good events decided");
    broker.dead_letter().await;
    broker.dead_letter().await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 2);
    app.stop().await;
}

fn broker_reply_queue(broker: &Broker) -> String {
    broker.reply_queue().to_owned()
}
