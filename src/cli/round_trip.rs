//! One request of a platform to the worker, as `send-login` and `send-command` make it: a private
//! reply queue, a private queue bound to every downstream event, and a confirmed publish to the
//! worker's inbound exchange.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use lapin::{
    ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    },
    types::FieldTable,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::{
    amqp::{connect, json_properties},
    settings::AmqpSettings,
};

/// A platform's view of one request: a private reply queue, a private queue bound to every
/// downstream event, and a confirmed publish to the worker's inbound exchange.
pub(super) struct RoundTrip<'a> {
    amqp: &'a AmqpSettings,
    connection: lapin::Connection,
    channel: lapin::Channel,
    reply_queue: String,
    replies: lapin::Consumer,
    events: lapin::Consumer,
}

impl<'a> RoundTrip<'a> {
    pub(super) async fn open(amqp: &'a AmqpSettings, name: &str) -> anyhow::Result<Self> {
        let connection = connect(&amqp.url, name)
            .await
            .context("connecting to the broker")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (reply_queue, replies) = crate::amqp::private_queue(&channel).await?;
        let (events_queue, events) = crate::amqp::private_queue(&channel).await?;
        channel
            .exchange_declare(
                amqp.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                events_queue,
                amqp.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            amqp,
            connection,
            channel,
            reply_queue: reply_queue.to_string(),
            replies,
            events,
        })
    }

    /// Publishes `body` under `routing_key` as message `message_id` and waits for the reply
    /// that answers it.
    pub(super) async fn request<R: serde::de::DeserializeOwned>(
        &mut self,
        routing_key: &str,
        message_id: &str,
        body: &Value,
        timeout: Duration,
    ) -> anyhow::Result<R> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        self.publish(routing_key, message_id, &correlation_id, body)
            .await?;
        let replies = &mut self.replies;
        tokio::time::timeout(timeout, async {
            while let Some(delivery) = replies.next().await {
                let delivery = delivery?;
                let correlation = delivery.properties.correlation_id().as_ref();
                if correlation.map(|c| c.as_str()) == Some(correlation_id.as_str()) {
                    return serde_json::from_slice::<R>(&delivery.data)
                        .context("reading the reply");
                }
            }
            bail!("the reply queue was closed")
        })
        .await
        .map_err(|_| anyhow::anyhow!("no decision within {timeout:?}; is the worker running?"))?
    }

    async fn publish(
        &self,
        routing_key: &str,
        message_id: &str,
        correlation_id: &str,
        body: &Value,
    ) -> anyhow::Result<()> {
        let amqp = self.amqp;
        let mut properties = json_properties(message_id)
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.into());
        // The broker checks user_id against the connection's login, so this is the honest value
        // (and the one amqp.trusted_publishers looks for).
        if let Ok(uri) = amqp
            .url
            .first()
            .expose_secret()
            .parse::<lapin::uri::AMQPUri>()
        {
            properties = properties.with_user_id(uri.authority.userinfo.username.as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                amqp.inbound_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &serde_json::to_vec(body)?,
                properties,
            )
            .await
            .with_context(|| format!("publishing to exchange {:?}", amqp.inbound_exchange))?
            .await?;
        if confirm.take_message().is_some() {
            bail!(
                "no queue is bound to exchange {:?} for {:?}: start the worker (identity-sync run) first",
                amqp.inbound_exchange,
                routing_key
            );
        }
        Ok(())
    }

    /// The downstream events that `wanted` picks. The relay publishes an event before the reply
    /// that follows it; a short grace period collects events still being routed.
    pub(super) async fn events_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let events = &mut self.events;
        let mut caused = Vec::new();
        let grace = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => break,
                next = events.next() => match next {
                    Some(Ok(delivery)) => {
                        let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) else { continue };
                        if wanted(&event) {
                            caused.push(event);
                        }
                    }
                    _ => break,
                }
            }
        }
        caused
    }

    pub(super) async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Prints a reply and the events that followed it: as text, or as one JSON object
/// (`{"reply": ..., "events": [...]}`).
pub(super) fn print(
    label: &str,
    reply: &impl serde::Serialize,
    events: &[Value],
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        println!("{}", json!({ "reply": reply, "events": events }));
        return Ok(());
    }
    println!("{label}: {}", serde_json::to_string_pretty(reply)?);
    if events.is_empty() {
        println!("events: none");
    }
    for event in events {
        println!(
            "event {}: {}",
            event["type"].as_str().unwrap_or("?"),
            serde_json::to_string_pretty(event)?
        );
    }
    Ok(())
}
