//! `identity-sync webhooks ...`: webhook endpoints through the admin API.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{ApiArgs, Client, print::print_table, print::text};
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Every endpoint (of one pool), without secrets.
    List {
        #[arg(long)]
        pool: Option<String>,
    },
    /// One endpoint.
    Show { id: uuid::Uuid },
    /// A new endpoint; prints its secret, shown this once.
    Create {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        url: String,
        /// Routing-key patterns, comma-separated (`user.*,binding.#`); default every event.
        #[arg(long, value_delimiter = ',')]
        types: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Change an endpoint's URL, patterns, description, or enable or disable it.
    Update {
        id: uuid::Uuid,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        types: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete an endpoint and its delivery log.
    Delete { id: uuid::Uuid },
    /// A new secret, printed this once; the old one keeps signing for webhooks.rotation_overlap.
    RotateSecret { id: uuid::Uuid },
    /// The delivery log, newest first: each delivery and its last attempt.
    Deliveries {
        id: uuid::Uuid,
        /// pending, delivered or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send one delivery again now (a whole schedule of attempts).
    Retry { id: uuid::Uuid, delivery_id: i64 },
    /// Deliver again every stored event the endpoint takes since a time (RFC 3339) or a
    /// duration back (`1h`).
    Replay {
        id: uuid::Uuid,
        #[arg(long)]
        since: String,
    },
    /// Send a signed webhook.ping now and print what the receiver answered.
    Ping { id: uuid::Uuid },
}

pub async fn webhooks(
    command: WebhooksCommand,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let path = |id: &uuid::Uuid, rest: &str| format!("/v1/webhooks/{id}{rest}");
    let (answer, shown) = match &command {
        WebhooksCommand::List { pool } => {
            let query: Vec<(&str, String)> =
                pool.iter().map(|p| ("user_pool_id", p.clone())).collect();
            let page = client
                .call(Method::GET, "/v1/webhooks", &query, None)
                .await?;
            (page, Shown::Endpoints)
        }
        WebhooksCommand::Show { id } => {
            let one = client.call(Method::GET, &path(id, ""), &[], None).await?;
            (one, Shown::Endpoint)
        }
        WebhooksCommand::Create {
            pool,
            url,
            types,
            description,
        } => {
            let mut body = json!({"user_pool_id": pool, "url": url});
            if let Some(types) = types {
                body["event_types"] = json!(types);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            let created = client
                .call(Method::POST, "/v1/webhooks", &[], Some(body))
                .await?;
            (created, Shown::Secret)
        }
        WebhooksCommand::Update {
            id,
            url,
            types,
            description,
            enable,
            disable,
        } => {
            let mut body = json!({});
            if let Some(url) = url {
                body["url"] = json!(url);
            }
            if let Some(types) = types {
                body["event_types"] = json!(types);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            if *enable || *disable {
                body["enabled"] = json!(*enable);
            }
            let changed = client
                .call(Method::PATCH, &path(id, ""), &[], Some(body))
                .await?;
            (changed, Shown::Endpoint)
        }
        WebhooksCommand::Delete { id } => {
            client
                .call(Method::DELETE, &path(id, ""), &[], None)
                .await?;
            (
                json!({"deleted": id}),
                Shown::Done(format!("webhook {id} deleted")),
            )
        }
        WebhooksCommand::RotateSecret { id } => {
            let path = path(id, "/rotate-secret");
            let rotated = client.call(Method::POST, &path, &[], None).await?;
            (rotated, Shown::Secret)
        }
        WebhooksCommand::Deliveries { id, state, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(state) = state {
                query.push(("state", state.clone()));
            }
            let page = client
                .call(Method::GET, &path(id, "/deliveries"), &query, None)
                .await?;
            (page, Shown::Deliveries)
        }
        WebhooksCommand::Retry { id, delivery_id } => {
            let path = path(id, &format!("/deliveries/{delivery_id}/retry"));
            client.call(Method::POST, &path, &[], None).await?;
            let done = format!("delivery {delivery_id} will be sent again now");
            (json!({"retried": delivery_id}), Shown::Done(done))
        }
        WebhooksCommand::Replay { id, since } => {
            let body = json!({ "since": since });
            let replayed = client
                .call(Method::POST, &path(id, "/replay"), &[], Some(body))
                .await?;
            let done = format!(
                "{} events since {} queued again",
                text(&replayed["queued"]),
                text(&replayed["since"])
            );
            (replayed, Shown::Done(done))
        }
        WebhooksCommand::Ping { id } => {
            let ping = client
                .call(Method::POST, &path(id, "/ping"), &[], None)
                .await?;
            let done = match ping["delivered"].as_bool() {
                Some(true) => format!(
                    "delivered: {} in {} ms",
                    text(&ping["status"]),
                    text(&ping["latency_ms"])
                ),
                _ => format!(
                    "not delivered: status {}, {}",
                    text(&ping["status"]),
                    text(&ping["error"])
                ),
            };
            let delivered = ping["delivered"].as_bool() == Some(true);
            if args.json {
                println!("{ping}");
            } else {
                println!("{done}");
            }
            return Ok(if delivered {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    };
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    match shown {
        Shown::Endpoints => {
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            print_endpoints(&items);
        }
        Shown::Endpoint => print_endpoints(std::slice::from_ref(&answer)),
        Shown::Secret => {
            print_endpoints(std::slice::from_ref(&answer));
            println!("secret: {}", text(&answer["secret"]));
            println!("(shown this once: keep it where the receiver can read it)");
        }
        Shown::Deliveries => {
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            let rows = items
                .iter()
                .map(|d| {
                    let last = d["log"].as_array().and_then(|l| l.last()).cloned();
                    let last = last.unwrap_or(Value::Null);
                    vec![
                        text(&d["id"]),
                        text(&d["event_type"]),
                        text(&d["event_id"]),
                        text(&d["state"]),
                        text(&d["attempts"]),
                        text(&d["last_status"]),
                        text(&last["at"]),
                        text(&last["error"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "TYPE", "EVENT_ID", "STATE", "ATTEMPTS", "STATUS", "LAST_AT", "ERROR",
                ],
                rows,
            );
        }
        Shown::Done(line) => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

enum Shown {
    Endpoints,
    Endpoint,
    Secret,
    Deliveries,
    Done(String),
}

fn print_endpoints(items: &[Value]) {
    let rows = items
        .iter()
        .map(|w| {
            let patterns: Vec<String> = w["event_types"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            let state = match w["enabled"].as_bool() {
                Some(true) => "enabled".to_owned(),
                _ => format!("disabled ({})", text(&w["disabled_reason"])),
            };
            vec![
                text(&w["id"]),
                text(&w["user_pool_id"]),
                text(&w["url"]),
                patterns.join(","),
                state,
                text(&w["description"]),
            ]
        })
        .collect();
    print_table(
        &["ID", "POOL", "URL", "TYPES", "STATE", "DESCRIPTION"],
        rows,
    );
}
