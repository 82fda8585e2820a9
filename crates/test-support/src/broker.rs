//! The platform's side of the broker in a test: publishing logins and commands, waiting for
//! replies, capturing every outbound event, reading dead letters.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_lite::StreamExt;
use identity_sync::{amqp::topology, domain::events::Reply, settings::Settings};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::BasicGetMessage,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::outbox_drained;
use crate::data::{POOL, WAIT};
use crate::services::Services;

/// A login.completed event with a fresh id.
pub fn login(connection: &str, external_id: &str, profile: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": Uuid::new_v4().to_string(),
        "source": "urn:test:platform",
        "type": "login.completed",
        "time": "2026-11-24T12:00:00Z",
        "data": {
            "user_pool_id": POOL,
            "connection": connection,
            "external_id": external_id,
            "profile": profile,
        }
    })
}

/// The test's side of the broker: a publisher, a reply queue and a queue capturing every
/// outbound event.
pub struct Broker {
    pub events_queue: String,
    pub connection: Connection,
    pub channel: Channel,
    reply_queue: String,
    replies: Consumer,
    events: Consumer,
    buffered_replies: HashMap<String, Value>,
    settings: Settings,
    /// The `user_id` every publish carries (the connection's own user, as RabbitMQ checks):
    /// set for a platform among `amqp.trusted_publishers`.
    user_id: Option<String>,
}

pub struct Captured {
    pub body: Value,
    /// The body's bytes as the broker delivered them.
    pub raw: Vec<u8>,
    pub routing_key: String,
    pub properties: BasicProperties,
}

impl Broker {
    /// The platform as a trusted publisher: every publish carries `user_id` `guest`, the test
    /// broker's user (see [`Services::trusting_guest`]).
    pub async fn connect_as_platform(services: &Services) -> Self {
        let mut broker = Self::connect(services).await;
        broker.user_id = Some("guest".into());
        broker
    }

    /// The platform as broker user `user` (its own credentials; every publish carries its name
    /// as `user_id`), with the worker's `settings`.
    pub async fn connect_as(
        services: &Services,
        user: &crate::services::BrokerUser,
        settings: Settings,
    ) -> Self {
        let mut broker = Self::connect_url(&user.url(services), settings, true).await;
        broker.user_id = Some(user.name.clone());
        broker
    }

    pub async fn connect(services: &Services) -> Self {
        Self::connect_with(services, services.settings(), true).await
    }

    /// `settings` must declare the topology as the worker will (same queue arguments);
    /// `capture` binds the event-capturing queue to every event type.
    pub async fn connect_with(services: &Services, settings: Settings, capture: bool) -> Self {
        Self::connect_url(&services.amqp_url, settings, capture).await
    }

    async fn connect_url(url: &str, settings: Settings, capture: bool) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connecting to the test vhost");
        let channel = connection.create_channel().await.unwrap();
        // Declared here too so that events can be published before the worker first starts.
        topology::declare(&channel, &settings.amqp).await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let reply_queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap();
        let events_queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap();
        if capture {
            channel
                .queue_bind(
                    events_queue.name().clone(),
                    settings.amqp.events_exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let replies = channel
            .basic_consume(
                reply_queue.name().clone(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let events = channel
            .basic_consume(
                events_queue.name().clone(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            events_queue: events_queue.name().to_string(),
            connection,
            channel,
            reply_queue: reply_queue.name().to_string(),
            replies,
            events,
            buffered_replies: HashMap::new(),
            settings,
            user_id: None,
        }
    }

    /// Publishes raw bytes to the inbound exchange and waits for the broker's confirm.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let routing_key = self.settings.amqp.routing_key.clone();
        self.publish_to(&routing_key, body, properties).await;
    }

    /// Publishes raw bytes to the inbound exchange under `routing_key`, and waits for the
    /// broker's confirm.
    pub async fn publish_to(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let properties = match (&self.user_id, properties.user_id()) {
            (Some(user), None) => properties.with_user_id(user.as_str().into()),
            _ => properties,
        };
        let confirm = self
            .channel
            .basic_publish(
                self.settings.amqp.inbound_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker confirmed the publish");
        assert!(confirm.take_message().is_none(), "the work queue is bound");
    }

    /// Sends a command (`binding.resolve` or `user.unlink`) with this `id` and `data`, asking
    /// for a reply; returns the correlation id to wait on with [`Broker::reply_value`].
    pub async fn request_command(&self, kind: &str, id: &str, data: Value) -> String {
        self.request_command_with(kind, id, data, json_props())
            .await
    }

    /// [`Broker::request_command`] with more message properties.
    pub async fn request_command_with(
        &self,
        kind: &str,
        id: &str,
        data: Value,
        properties: BasicProperties,
    ) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        let properties = properties
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        self.publish_to(kind, &command_body(kind, id, data), properties)
            .await;
        correlation_id
    }

    /// Sends a command and waits for its reply.
    pub async fn command(&mut self, kind: &str, data: Value) -> Value {
        let id = Uuid::now_v7().to_string();
        let correlation_id = self.request_command(kind, &id, data).await;
        let reply = self.reply_value(&correlation_id).await;
        assert_eq!(reply["command_id"], id.as_str(), "{reply}");
        reply
    }

    /// Publishes without asking for a reply.
    pub async fn send(&self, event: &Value) {
        self.publish_raw(&serde_json::to_vec(event).unwrap(), json_props())
            .await;
    }

    /// Publishes asking for a reply; returns the correlation id to wait on.
    pub async fn request_raw(&self, body: &[u8]) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        let properties = json_props()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        self.publish_raw(body, properties).await;
        correlation_id
    }

    pub async fn request(&self, event: &Value) -> String {
        self.request_raw(&serde_json::to_vec(event).unwrap()).await
    }

    pub async fn reply(&mut self, correlation_id: &str) -> Reply {
        let reply = self.reply_value(correlation_id).await;
        serde_json::from_value(reply).expect("a login reply")
    }

    /// The reply with this correlation id, as JSON.
    pub async fn reply_value(&mut self, correlation_id: &str) -> Value {
        if let Some(reply) = self.buffered_replies.remove(correlation_id) {
            return reply;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.replies.next())
                .await
                .expect("a reply arrived in time")
                .expect("reply stream open")
                .unwrap();
            let reply: Value = serde_json::from_slice(&delivery.data).expect("reply is JSON");
            assert_eq!(
                delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str()),
                Some("application/json")
            );
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            if id == correlation_id {
                return reply;
            }
            self.buffered_replies.insert(id, reply);
        }
    }

    /// Whether a reply with this correlation id arrived among those read so far (waiting for a
    /// later reply reads every one before it).
    pub fn replied(&self, correlation_id: &str) -> bool {
        self.buffered_replies.contains_key(correlation_id)
    }

    /// Sends a login and waits for its reply.
    pub async fn login(&mut self, event: &Value) -> Reply {
        let correlation_id = self.request(event).await;
        self.reply(&correlation_id).await
    }

    /// The next outbound event, if one arrives within `wait`.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Captured> {
        let delivery = tokio::time::timeout(wait, self.events.next())
            .await
            .ok()??
            .ok()?;
        let body: Value = serde_json::from_slice(&delivery.data).expect("event is JSON");
        conforms(&body);
        Some(Captured {
            body,
            raw: delivery.data.clone(),
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
        })
    }

    pub async fn next_event(&mut self) -> Captured {
        self.next_event_within(WAIT)
            .await
            .expect("an event arrived in time")
    }

    /// Asserts that no further event arrives within a short while.
    /// Asserts that no further event arrives: once the outbox has nothing left to publish (and
    /// a moment for what was just published to be delivered), nothing more is here.
    pub async fn no_more_events(&mut self) {
        let url = secrecy::ExposeSecret::expose_secret(&self.settings.database.url).to_owned();
        let db = PgPool::connect(&url)
            .await
            .expect("connecting to the test database");
        outbox_drained(&db, WAIT, "the outbox drained").await;
        db.close().await;
        if let Some(extra) = self.next_event_within(Duration::from_millis(300)).await {
            panic!("unexpected event: {}", extra.body);
        }
    }

    /// Takes one message from the dead-letter queue, waiting for it to arrive.
    pub async fn dead_letter(&self) -> BasicGetMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self
                .channel
                .basic_get(
                    self.settings.amqp.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if let Some(message) = got {
                return message;
            }
            assert!(Instant::now() < deadline, "a dead letter arrived in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages currently in a queue of the test vhost.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = self.connection.create_channel().await.unwrap();
        let depth = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        let _ = channel.close(200, "".into()).await;
        depth
    }

    /// Binds the event-capturing queue (for a broker connected without capture).
    pub async fn capture_events(&self) {
        self.channel
            .queue_bind(
                self.events_queue.as_str().into(),
                self.settings.amqp.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Every event that arrives until none has for `quiet`.
    pub async fn drain_events(&mut self, quiet: Duration) -> Vec<Captured> {
        let mut all = Vec::new();
        while let Some(event) = self.next_event_within(quiet).await {
            all.push(event);
        }
        all
    }

    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn work_queue(&self) -> &str {
        &self.settings.amqp.work_queue
    }
}

/// A command's CloudEvents body, from the test platform.
pub fn command_body(kind: &str, id: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "urn:test:platform", "type": kind,
        "datacontenttype": "application/json", "data": data,
    }))
    .unwrap()
}

pub fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// The `x-idsync-error` header of a dead letter.
pub fn error_header(message: &BasicGetMessage) -> String {
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("dead letter has headers");
    match headers.inner().get("x-idsync-error") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("x-idsync-error header missing or of the wrong type: {other:?}"),
    }
}

/// Checks a structured event against the JSON Schema of its type (the schemas the product
/// ships, `schemas/`), with the `jsonschema` validator: every event a test reads is checked.
fn conforms(event: &Value) {
    use std::{collections::HashMap, sync::LazyLock};
    static VALIDATORS: LazyLock<HashMap<String, jsonschema::Validator>> = LazyLock::new(|| {
        identity_sync::domain::events::EventType::ALL
            .iter()
            .map(|kind| {
                let schema = identity_sync::domain::schemas::of(*kind);
                let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
                (kind.as_str().to_owned(), validator)
            })
            .collect()
    });
    // Binary-mode events (no envelope in the body) are checked by their own test.
    let Some(kind) = event.get("type").and_then(Value::as_str) else {
        return;
    };
    let validator = VALIDATORS
        .get(kind)
        .unwrap_or_else(|| panic!("no schema for event type {kind:?}"));
    let errors: Vec<String> = validator
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the {kind} event does not conform to its schema: {errors:?}\n{event}"
    );
}
