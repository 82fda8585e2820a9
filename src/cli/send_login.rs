//! `identity-sync send-login`: publishes one `login.completed` with a reply queue and prints the
//! decision, then the downstream events it caused. The way to try a connection's settings.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use futures_lite::StreamExt;
use lapin::{
    ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    },
    types::FieldTable,
};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::{
    amqp::{connect, json_properties},
    domain::{decision::Outcome, events::Reply},
    settings::{AmqpSettings, Settings},
};

#[derive(Debug, Args)]
pub struct SendLoginArgs {
    /// User pool (tenant) id.
    #[arg(long, default_value = "pool-1")]
    pub pool: String,
    /// Connection identifier, e.g. dingtalk-corp.
    #[arg(long)]
    pub connection: String,
    /// The person's id at the identity source.
    #[arg(long)]
    pub external_id: String,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub email_verified: bool,
    #[arg(long)]
    pub phone: Option<String>,
    #[arg(long)]
    pub phone_verified: bool,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// CloudEvents id; a random UUID by default. Send the same id twice to see deduplication.
    #[arg(long)]
    pub event_id: Option<String>,
    /// CloudEvents source.
    #[arg(long, default_value = "urn:identity-sync:send-login")]
    pub source: String,
    /// How long to wait for the decision.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object ({"reply": ..., "events": [...]}) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: SendLoginArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let event_id = args
        .event_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = login_body(&args, &event_id);
    let mut round_trip = RoundTrip::open(&settings.amqp).await?;
    let reply: Reply = round_trip.request(&event_id, &body, args.timeout).await?;
    let caused = round_trip.caused_by(&event_id).await;
    round_trip.close().await;

    if args.json {
        println!("{}", json!({ "reply": reply, "events": caused }));
    } else {
        println!("decision: {}", serde_json::to_string_pretty(&reply)?);
        if caused.is_empty() {
            println!("events: none");
        }
        for event in &caused {
            println!(
                "event {}: {}",
                event["type"].as_str().unwrap_or("?"),
                serde_json::to_string_pretty(event)?
            );
        }
    }
    Ok(if reply.outcome == Outcome::Error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The `login.completed` CloudEvent the arguments describe.
fn login_body(args: &SendLoginArgs, event_id: &str) -> Value {
    let mut profile = Map::new();
    let mut put = |key: &str, value: Option<&String>| {
        if let Some(v) = value {
            profile.insert(key.to_owned(), Value::String(v.clone()));
        }
    };
    put("email", args.email.as_ref());
    put("phone", args.phone.as_ref());
    put("username", args.username.as_ref());
    put("name", args.name.as_ref());
    if args.email.is_some() {
        profile.insert("email_verified".into(), Value::Bool(args.email_verified));
    }
    if args.phone.is_some() {
        profile.insert("phone_verified".into(), Value::Bool(args.phone_verified));
    }
    json!({
        "specversion": "1.0",
        "id": event_id,
        "source": args.source,
        "type": "login.completed",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {
            "user_pool_id": args.pool,
            "connection": args.connection,
            "external_id": args.external_id,
            "profile": profile,
        }
    })
}

/// A platform's view of one request: a private reply queue, a private queue bound to every
/// downstream event, and a confirmed publish to the worker's inbound exchange.
struct RoundTrip<'a> {
    amqp: &'a AmqpSettings,
    connection: lapin::Connection,
    channel: lapin::Channel,
    reply_queue: String,
    replies: lapin::Consumer,
    events: lapin::Consumer,
}

impl<'a> RoundTrip<'a> {
    async fn open(amqp: &'a AmqpSettings) -> anyhow::Result<Self> {
        let connection = connect(&amqp.url, "send-login")
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

    /// Publishes `body` as message `message_id` and waits for the reply that answers it.
    async fn request<R: serde::de::DeserializeOwned>(
        &mut self,
        message_id: &str,
        body: &Value,
        timeout: Duration,
    ) -> anyhow::Result<R> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        self.publish(message_id, &correlation_id, body).await?;
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
        if let Ok(uri) = amqp.url.expose_secret().parse::<lapin::uri::AMQPUri>() {
            properties = properties.with_user_id(uri.authority.userinfo.username.as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                amqp.inbound_exchange.as_str().into(),
                amqp.routing_key.as_str().into(),
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
                amqp.routing_key
            );
        }
        Ok(())
    }

    /// The downstream events whose `cause_event_id` is `event_id`. The relay publishes an event
    /// before the reply that follows it; a short grace period collects events still being routed.
    async fn caused_by(&mut self, event_id: &str) -> Vec<Value> {
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
                        let cause = event.pointer("/data/cause_event_id").and_then(Value::as_str);
                        if cause == Some(event_id) {
                            caused.push(event);
                        }
                    }
                    _ => break,
                }
            }
        }
        caused
    }

    async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}
