//! The broker objects of contract section 2, declared idempotently at every (re)connect.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::{domain::command::ROUTING_KEYS, settings::AmqpSettings};

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

    let bindings = [settings.routing_key.as_str()];
    inbound_queue(channel, settings, &settings.work_queue, &bindings).await?;
    inbound_queue(channel, settings, &settings.commands_queue, &ROUTING_KEYS).await?;
    wait_queue(channel, settings).await
}

/// Where a login that cannot be decided yet waits (see `amqp::settle::Action::Wait`): each copy
/// carries its wait as its `expiration` (so changing `worker.wait_delay` needs no new queue),
/// then the broker moves it back to the work queue, at least once (a quorum queue's
/// `at-least-once` dead-lettering: the copy leaves only once the work queue has it). Nothing
/// consumes it; nothing is bound to it.
async fn wait_queue(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert(
        "x-dead-letter-routing-key".into(),
        string(&settings.work_queue),
    );
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
    channel
        .queue_declare(settings.wait_queue.as_str().into(), durable_queue(), args)
        .await?;
    Ok(())
}

/// A quorum queue of the inbound exchange, bound with `routing_keys`, with the delivery limit
/// and dead-lettering of every queue the worker consumes.
async fn inbound_queue(
    channel: &Channel,
    settings: &AmqpSettings,
    queue: &str,
    routing_keys: &[&str],
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(settings.delivery_limit as i32),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        string(&settings.dead_letter_exchange),
    );
    channel
        .queue_declare(queue.into(), durable_queue(), args)
        .await?;
    for routing_key in routing_keys {
        channel
            .queue_bind(
                queue.into(),
                settings.inbound_exchange.as_str().into(),
                (*routing_key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
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
