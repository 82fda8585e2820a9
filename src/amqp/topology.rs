//! The broker objects of contract section 2, declared idempotently at every (re)connect.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::settings::AmqpSettings;

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub async fn declare(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    channel
        .exchange_declare(
            settings.inbound_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    declare_events_exchange(channel, settings).await?;

    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), string("quorum"));
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            durable_queue(),
            dlq_args,
        )
        .await?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut work_args = FieldTable::default();
    work_args.insert("x-queue-type".into(), string("quorum"));
    work_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(settings.delivery_limit as i32),
    );
    work_args.insert(
        "x-dead-letter-exchange".into(),
        string(&settings.dead_letter_exchange),
    );
    channel
        .queue_declare(
            settings.work_queue.as_str().into(),
            durable_queue(),
            work_args,
        )
        .await?;
    channel
        .queue_bind(
            settings.work_queue.as_str().into(),
            settings.inbound_exchange.as_str().into(),
            settings.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The outbound exchange alone (the relay declares it at every connect).
pub async fn declare_events_exchange(
    channel: &Channel,
    settings: &AmqpSettings,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            settings.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
}
