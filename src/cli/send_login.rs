//! `identity-sync send-login`: publishes one `login.completed` with a reply queue and prints the
//! decision, then the downstream events it caused. The way to try a connection's settings.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value, json};

use super::round_trip::RoundTrip;
use crate::{
    domain::{decision::Outcome, events::Reply},
    settings::Settings,
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
    /// A JSON file holding the whole `data.profile` (a source's own fields, such as a DingTalk
    /// user detail under `attributes`); the flags above override its keys.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<std::path::PathBuf>,
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
    let base = match &args.profile {
        None => Map::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            match serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
            {
                Value::Object(map) => map,
                _ => anyhow::bail!("{} is not a JSON object", path.display()),
            }
        }
    };
    let body = login_body(&args, base, &event_id);
    let mut round_trip = RoundTrip::open(&settings.amqp, "send-login").await?;
    let routing_key = settings.amqp.routing_key.clone();
    let reply: Reply = round_trip
        .request(&routing_key, &event_id, &body, args.timeout)
        .await?;
    let caused = round_trip
        .events_where(|event| {
            event
                .pointer("/data/cause_event_id")
                .and_then(Value::as_str)
                == Some(&event_id)
        })
        .await;
    round_trip.close().await;
    super::round_trip::print("decision", &reply, &caused, args.json)?;
    Ok(if reply.outcome == Outcome::Error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The `login.completed` CloudEvent the arguments describe.
fn login_body(args: &SendLoginArgs, mut profile: Map<String, Value>, event_id: &str) -> Value {
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
