//! RabbitMQ adapter (lapin 4): connecting, declaring the topology, and the consumer that feeds
//! login events to the pipeline.

pub mod consumer;
pub mod topology;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use secrecy::{ExposeSecret, SecretString};

pub const JSON: &str = "application/json";

/// One connection per role (consumer, relay): a publisher throttled by the broker's flow control
/// must not hold back the consumer's acks.
pub async fn connect(url: &SecretString, role: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("identity-sync {role}").into());
    Connection::connect(url.expose_secret(), properties).await
}

/// Properties of every JSON message identity-sync publishes.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(JSON.into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
        .with_app_id("identity-sync".into())
}

/// A server-named queue private to this connection (gone when it closes), and a consumer on it
/// that needs no acks: where a requester receives its replies, or a watcher the events.
pub async fn private_queue(channel: &Channel) -> lapin::Result<(ShortString, Consumer)> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}
