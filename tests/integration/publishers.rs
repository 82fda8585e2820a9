//! Hostile publishers, with the setup docs/RELIABILITY.md recommends: separate broker users for
//! the platform and the worker. A message that must be dead-lettered, whoever sent it and
//! whatever its properties, never stalls the queue; replies go only to reply queues.

use std::time::{Duration, Instant};

use identity_sync::domain::decision::Outcome;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;

use idsync_test_support::*;

/// A confirm channel of its own connection, for publishing as another broker user.
async fn publisher(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the broker user connects");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

async fn publish(channel: &Channel, body: &[u8], properties: BasicProperties) {
    let confirm = channel
        .basic_publish(
            "idsync.in".into(),
            "login.completed".into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

fn header(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().clone()?;
    identity_sync::amqp::properties::header_text(&headers, name)
}

/// Sends a good login as `channel`'s user and returns how long its decision took to arrive.
async fn good_login_after(
    broker: &mut Broker,
    channel: &Channel,
    user: &str,
    external_id: &str,
) -> Duration {
    let started = Instant::now();
    let correlation = uuid::Uuid::new_v4().to_string();
    let event = login("plain", external_id, json!({}));
    publish(
        channel,
        &serde_json::to_vec(&event).unwrap(),
        json_props()
            .with_user_id(user.into())
            .with_reply_to(broker.reply_queue().into())
            .with_correlation_id(correlation.as_str().into()),
    )
    .await;
    assert_eq!(
        broker.reply(&correlation).await.outcome,
        Outcome::UserCreated
    );
    started.elapsed()
}

async fn dead_letter_queue_is_empty(broker: &Broker) -> bool {
    broker
        .channel
        .basic_get(
            "idsync.login-completed.dlq".into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .is_none()
}

#[tokio::test]
async fn dead_letters_from_an_untrusted_or_a_careless_publisher_never_stall_the_queue() {
    let services = Services::new().await;
    let platform = BrokerUser::create(&services, "platform", ["^$", "^idsync\\.in$", "^$"]).await;
    let intruder = BrokerUser::create(&services, "intruder", ["^$", "^idsync\\.in$", "^$"]).await;
    let mut settings = services.settings();
    settings.amqp.trusted_publishers = vec![platform.name.clone()];
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect(&services).await;
    let (_p, platform_channel) = publisher(&platform.url(&services)).await;
    let (_i, intruder_channel) = publisher(&intruder.url(&services)).await;

    // The platform's reply queue.
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare(
            "idsync.reply.platform".into(),
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();

    // An intruder's login, with the user_id RabbitMQ vouches for: refused, and its dead letter
    // must not carry that user_id (the worker's broker user is another). It asks for its error
    // reply in the platform's reply queue, to fake a failure there: it gets none.
    let forged = login("plain", "victim", json!({"email": "ceo@corp.example"}));
    publish(
        &intruder_channel,
        &serde_json::to_vec(&forged).unwrap(),
        json_props()
            .with_user_id(intruder.name.as_str().into())
            .with_reply_to("idsync.reply.platform".into())
            .with_correlation_id("a-login-of-the-platform".into()),
    )
    .await;
    let dead = broker.dead_letter().await;
    assert!(
        header(&dead, "x-idsync-error")
            .unwrap()
            .starts_with("untrusted_publisher: ")
    );
    assert_eq!(
        header(&dead, "x-original-user-id"),
        Some(intruder.name.clone())
    );
    assert_eq!(dead.delivery.properties.user_id(), &None);
    let took = good_login_after(&mut broker, &platform_channel, &platform.name, "next-1").await;
    eprintln!("after the untrusted message, the next login was decided in {took:?}");
    assert_eq!(
        broker.queue_depth("idsync.reply.platform").await,
        0,
        "no reply for an untrusted publisher"
    );

    // A malformed message from the trusted platform.
    publish(
        &platform_channel,
        b"{not json",
        json_props()
            .with_user_id(platform.name.as_str().into())
            .with_expiration("60000".into())
            .with_priority(5),
    )
    .await;
    let dead = broker.dead_letter().await;
    assert!(
        header(&dead, "x-idsync-error")
            .unwrap()
            .starts_with("not_json: ")
    );
    assert_eq!(
        header(&dead, "x-original-user-id"),
        Some(platform.name.clone())
    );
    assert_eq!(
        header(&dead, "x-original-expiration").as_deref(),
        Some("60000")
    );
    assert_eq!(dead.delivery.data, b"{not json", "the original body");
    let took = good_login_after(&mut broker, &platform_channel, &platform.name, "next-2").await;
    eprintln!("after the malformed message, the next login was decided in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Each dead-lettered exactly once, and the consumer never had to reconnect.
    assert!(dead_letter_queue_is_empty(&broker).await);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"consumer\"}"
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_dead_letters_total{reason=\"untrusted_publisher\"}"
        ),
        1.0
    );
    assert_eq!(metric_value(&metrics, "idsync_trusted_publishers"), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_dead_letter_the_broker_refuses_is_rejected_to_the_queues_own_dead_lettering() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    // A worker user that may not publish to the dead-letter exchange: every dead letter it
    // publishes is refused (and its channel closed) by the broker.
    let worker =
        BrokerUser::create(&services, "worker", [".*", "^(?!idsync\\.dlx$).*", ".*"]).await;
    let mut settings = services.settings();
    settings.amqp.url = worker.url(&services).into();
    let app = TestApp::spawn_with(settings).await;

    broker.publish_raw(b"nope", json_props()).await;
    let dead = broker.dead_letter().await;
    assert_eq!(dead.delivery.data, b"nope");
    assert_eq!(
        header(&dead, "x-idsync-error"),
        None,
        "the broker dead-lettered it"
    );
    let death = dead.delivery.properties.headers().clone().unwrap();
    assert!(
        matches!(death.inner().get("x-first-death-reason"), Some(AMQPValue::LongString(r)) if r.as_bytes() == b"rejected"),
        "{death:?}"
    );
    let reply = broker
        .login(&login("plain", "after-refusal", json!({})))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    assert!(
        dead_letter_queue_is_empty(&broker).await,
        "dead-lettered once"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "idsync_dead_letter_fallbacks_total"),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"consumer\"}"
        ),
        0.0
    );
    assert_eq!(metric_value(&metrics, "idsync_trusted_publishers"), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn replies_go_only_to_reply_queues() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for queue in ["downstream.user-events", "idsync.reply.platform"] {
        broker
            .channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .unwrap();
    }

    // A login and a malformed message naming a subscriber's queue: processed (or dead-lettered)
    // as usual, but nothing is written into that queue.
    let event = login("plain", "inject-1", json!({}));
    let props = json_props()
        .with_reply_to("downstream.user-events".into())
        .with_correlation_id("c-1".into());
    broker
        .publish_raw(&serde_json::to_vec(&event).unwrap(), props.clone())
        .await;
    broker.publish_raw(b"nope", props).await;
    let created = broker.next_event().await;
    assert_eq!(created.body["data"]["identity"]["external_id"], "inject-1");
    broker.dead_letter().await;
    // Direct reply-to with a name that decodes to nothing must not disturb the worker either.
    let event = login("plain", "inject-2", json!({}));
    broker
        .publish_raw(
            &serde_json::to_vec(&event).unwrap(),
            json_props().with_reply_to("amq.rabbitmq.reply-to.garbage".into()),
        )
        .await;
    assert_eq!(
        broker.next_event().await.body["data"]["identity"]["external_id"],
        "inject-2"
    );

    // A queue with the configured prefix gets its reply.
    let event = login("plain", "prefixed", json!({}));
    broker
        .publish_raw(
            &serde_json::to_vec(&event).unwrap(),
            json_props()
                .with_reply_to("idsync.reply.platform".into())
                .with_correlation_id("c-2".into()),
        )
        .await;
    let reply = loop {
        let got = broker
            .channel
            .basic_get(
                "idsync.reply.platform".into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if let Some(message) = got {
            break message;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.delivery.data).unwrap();
    assert_eq!(body["outcome"], "user_created");

    // And the login after all of them is decided by the same consumer session.
    let reply = broker.login(&login("plain", "after", json!({}))).await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    assert_eq!(broker.queue_depth("downstream.user-events").await, 0);
    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "idsync_replies_refused_total"), 2.0);
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"consumer\"}"
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"relay\"}"
        ),
        0.0
    );
    app.stop().await;
}
