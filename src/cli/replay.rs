//! `identity-sync events replay`: publishes stored outbound events again, with their original ids,
//! for a subscriber that joined late or lost its queue. Consumers dedupe on the id, so a replay
//! is harmless to those that already had the events; `--queue` sends them to one queue only.

use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};

use crate::{
    amqp::{connect, json_properties},
    db::{self, outbox},
    domain::{TimeError, events::EventType, time_or_age},
    settings::Settings,
};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Events created at or after this time: RFC 3339 (`2026-11-24T09:00:00Z`) or an age (`2h`).
    #[arg(long, value_parser = parse_time)]
    pub since: DateTime<Utc>,
    /// Events created before this time (same forms); now by default.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only events of this type, e.g. `user.created`.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Deliver to this queue only (through the default exchange) instead of the events exchange.
    #[arg(long)]
    pub queue: Option<String>,
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    time_or_age(raw, Utc::now()).map_err(|e| match e {
        TimeError::NotATime => format!("{raw:?} is neither an RFC 3339 time nor an age such as 2h"),
        TimeError::TooFarBack => format!("{raw:?} reaches before the clock's range"),
    })
}

const PAGE: i64 = 500;

pub async fn run(args: ReplayArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let until = args.until.unwrap_or_else(Utc::now);
    if args.since >= until {
        bail!("--since must be before --until");
    }
    if let Some(t) = &args.event_type
        && EventType::parse(t).is_none()
    {
        bail!("--type {t:?} is not an event type");
    }
    let pool = db::connect_and_migrate(&settings.database).await?;
    let connection = connect(&settings.amqp.url, "replay")
        .await
        .context("connecting to the broker")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (exchange, fixed_key) = match &args.queue {
        Some(queue) => ("", Some(queue.as_str())),
        None => (settings.amqp.events_exchange.as_str(), None),
    };

    let (mut replayed, mut unrouted, mut after) = (0u64, 0u64, 0i64);
    loop {
        let mut conn = pool.acquire().await?;
        let rows = outbox::events_between(
            &mut conn,
            args.since,
            until,
            args.event_type.as_deref(),
            after,
            PAGE,
        )
        .await?;
        drop(conn);
        let Some(last) = rows.last() else { break };
        after = last.id;
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let properties = json_properties(&row.message_id.to_string())
                .with_type(ShortString::from(row.routing_key.as_str()))
                .with_timestamp(row.created_at.timestamp().max(0) as u64);
            let routing_key = fixed_key.unwrap_or(row.routing_key.as_str());
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &serde_json::to_vec(&row.payload)?,
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            if !confirmation.is_ack() {
                bail!("the broker refused a replayed event (nack); nothing after it was replayed");
            }
            if confirmation.take_message().is_some() {
                unrouted += 1;
            }
            replayed += 1;
        }
    }
    let _ = connection.close(200, "replayed".into()).await;
    pool.close().await;
    println!("replayed {replayed} events ({unrouted} reached no queue)");
    Ok(ExitCode::SUCCESS)
}
