//! The raw broker baseline: the same messages through a quorum queue with the same arguments and
//! prefetch, consumed, republished with confirms and acknowledged in batches as the worker does,
//! with no database and no logic. identity-sync's throughput is reported as a ratio to it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_lite::{StreamExt, future::poll_once};
use lapin::{
    BasicProperties, Channel, Connection, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};

use super::{
    env::Env,
    pace::{self, Clock},
};

pub async fn publish_all(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for chunk in bodies.chunks(1000) {
        for body in chunk {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
                .await?;
        }
        let returned = channel.wait_for_confirms().await?;
        if !returned.is_empty() {
            bail!("{} messages were returned", returned.len());
        }
    }
    Ok(())
}

/// Events per second.
pub async fn run(
    env: &Env,
    bodies: &[Vec<u8>],
    prefetch: u16,
    batch_size: usize,
    delivery_limit: u32,
) -> anyhow::Result<f64> {
    let connection = env.broker().await?;
    let setup = connection.create_channel().await?;
    setup
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let args = quorum(delivery_limit);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare("baseline.in".into(), durable, args.clone())
        .await?;
    setup
        .queue_declare("baseline.out".into(), durable, args)
        .await?;
    publish_all(&setup, "", "baseline.in", bodies).await?;

    let (consumer_connection, mut consumer) = consume(env, "baseline.in", prefetch).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut done = 0;
    let mut started = None;
    while done < bodies.len() {
        let first = consumer
            .next()
            .await
            .context("the baseline consumer ended")??;
        started.get_or_insert_with(Instant::now);
        let batch = with_waiting(&mut consumer, first, batch_size).await;
        let mut confirms = Vec::with_capacity(batch.len());
        for delivery in &batch {
            confirms.push(
                publisher
                    .basic_publish(
                        "".into(),
                        "baseline.out".into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        delivery.properties.clone(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                bail!("a baseline publish was nacked");
            }
        }
        batch
            .last()
            .expect("not empty")
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await?;
        done += batch.len();
    }
    let seconds = started.expect("consumed").elapsed().as_secs_f64();
    let _ = consumer_connection.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(bodies.len() as f64 / seconds)
}

/// The broker's own round trip at the latency benchmark's rate: logins published to a quorum
/// queue like the work queue, a bare consumer answering each on its reply queue at once (no
/// database, no logic). Returns the publish-to-reply latencies in milliseconds.
pub async fn round_trips(
    env: &Env,
    bodies: &[Vec<u8>],
    rate: u32,
    prefetch: u16,
    delivery_limit: u32,
    warmup: usize,
) -> anyhow::Result<Vec<f64>> {
    let connection = env.broker().await?;
    let setup = connection.create_channel().await?;
    let args = quorum(delivery_limit);
    setup
        .queue_declare(
            "baseline.latency".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;

    // The answering side.
    let (responder_connection, mut requests) = consume(env, "baseline.latency", prefetch).await?;
    let answers = responder_connection.create_channel().await?;
    answers
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let responder_task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let Some(reply_to) = delivery.properties.reply_to().clone() else {
                continue;
            };
            let properties = BasicProperties::default().with_correlation_id(
                delivery
                    .properties
                    .correlation_id()
                    .clone()
                    .unwrap_or_default(),
            );
            if let Ok(confirm) = answers
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    b"{}",
                    properties,
                )
                .await
            {
                drop(confirm);
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });

    let (reply_queue, replies) = identity_sync::amqp::private_queue(&setup).await?;
    let clock = Clock::new(bodies.len(), warmup);
    let (latencies, collector) = pace::collect(replies, clock.clone(), pace::by_correlation_id);
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    pace::publish(
        &publisher,
        "",
        "baseline.latency",
        bodies,
        rate,
        &reply_queue,
        &clock,
    )
    .await?;
    pace::wait_for(&latencies, clock.measured(), Duration::from_secs(30)).await;
    collector.abort();
    responder_task.abort();
    let _ = responder_connection.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(pace::take(&latencies))
}

/// `first` and the deliveries already waiting behind it, up to `batch_size` in all.
pub(crate) async fn with_waiting(
    consumer: &mut Consumer,
    first: Delivery,
    batch_size: usize,
) -> Vec<Delivery> {
    let mut batch = vec![first];
    while batch.len() < batch_size {
        match poll_once(consumer.next()).await {
            Some(Some(Ok(delivery))) => batch.push(delivery),
            _ => break,
        }
    }
    batch
}

/// A consumer on `queue` with `prefetch`, on a connection of its own as the worker has.
pub(crate) async fn consume(
    env: &Env,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Connection, Consumer)> {
    let connection = env.broker().await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, consumer))
}

/// Arguments of a quorum queue like the work queue.
fn quorum(delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(delivery_limit as i32),
    );
    args
}
