//! The same-work baseline: the database and broker work that deciding the queued logins takes,
//! written as plainly and as fast as it can be, with no decision logic, no outbox, no locks, no
//! evidence and no sequences. identity-sync's drain is reported as a ratio to it.
//!
//! Batches of logins are taken from the work queue (the same queue, prefetch and messages as the
//! worker), and up to `parallel` batches are worked on side by side, each in one transaction:
//!
//! 1. read the batch's dedupe records (`processed_events` by primary key), its identities
//!    (`identities` by primary key, locked in key order: batches side by side update the same
//!    returning identities) and, for a login of a field-matching or asking connection
//!    whose identity is unknown, the accounts with its email (`users` by its unique index);
//! 2. insert the new accounts (`users`), the new and linked identities (`identities`), a pending
//!    binding for a login of the asking connection (`bindings`), and every login's dedupe record
//!    (`processed_events`, with the event it caused); update the returning identities (profile,
//!    last login);
//! 3. commit (`synchronous_commit` as the server has it: on by default);
//! 4. publish one persistent event per new account, linked identity and binding to the events
//!    exchange, and a reply to each login that asks for one (`reply_to`, with its correlation
//!    id: the latency mode's logins do), on the batch's own confirm channel, and await the
//!    confirms;
//! 5. acknowledge, in delivery order, every delivery up to the last of the batches done
//!    (`multiple`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

use super::{baseline, env::Env, mix::POOL};
use identity_sync::settings::Settings;

/// One login as the probe reads it.
struct Login {
    event_id: String,
    source: String,
    connection: String,
    external_id: String,
    email: String,
    profile: Value,
    /// Where the decision is answered, and with which correlation id.
    reply_to: Option<String>,
    correlation_id: Option<String>,
}

fn parse(delivery: &Delivery) -> anyhow::Result<Login> {
    let event: Value = serde_json::from_slice(&delivery.data)?;
    let property = |p: &Option<lapin::types::ShortString>| p.as_ref().map(|v| v.to_string());
    let data = &event["data"];
    let text = |v: &Value| v.as_str().map(str::to_owned).context("a string field");
    Ok(Login {
        event_id: text(&event["id"])?,
        source: text(&event["source"])?,
        connection: text(&data["connection"])?,
        external_id: text(&data["external_id"])?,
        email: text(&data["profile"]["email"])?.to_lowercase(),
        profile: data["profile"].clone(),
        reply_to: property(delivery.properties.reply_to()),
        correlation_id: property(delivery.properties.correlation_id()),
    })
}

/// Logins per second, from the first delivery to the last batch acknowledged.
pub async fn run(
    env: &Env,
    db: &PgPool,
    settings: &Settings,
    total: usize,
    batch_size: usize,
    parallel: usize,
) -> anyhow::Result<f64> {
    let (consumer_connection, mut consumer) =
        baseline::consume(env, &settings.amqp.work_queue, settings.amqp.prefetch).await?;
    let publisher_connection = env.broker().await?;
    let mut channels = Vec::with_capacity(parallel);
    for _ in 0..parallel {
        let channel = publisher_connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let (free, mut freed) = mpsc::channel::<Channel>(parallel);
    for channel in channels {
        free.send(channel).await?;
    }
    let exchange: Arc<str> = settings.amqp.events_exchange.as_str().into();
    let slots = Arc::new(Semaphore::new(parallel));
    // Batches done, by number, with the acker of their last delivery.
    let (done, mut finished) = mpsc::unbounded_channel::<(u64, anyhow::Result<Delivery>)>();
    let mut started = None;
    let mut taken = 0;
    let mut number = 0u64;
    let mut acks = InOrder::default();
    let mut tasks = tokio::task::JoinSet::new();
    while taken < total {
        // A free slot, then a first delivery; batches that finish meanwhile are acknowledged
        // (the broker sends no more than the prefetch unacknowledged).
        let permit = loop {
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit?,
                Some((n, last)) = finished.recv() => acks.done(n, last?).await?,
            }
        };
        let first = loop {
            tokio::select! {
                next = consumer.next() => break next.context("the work queue's consumer ended")??,
                Some((n, last)) = finished.recv() => acks.done(n, last?).await?,
            }
        };
        started.get_or_insert_with(Instant::now);
        let mut batch = baseline::with_waiting(&mut consumer, first, batch_size).await;
        taken += batch.len();
        let channel = freed.recv().await.context("a publishing channel")?;
        let (db, free, exchange, done, n) = (
            db.clone(),
            free.clone(),
            exchange.clone(),
            done.clone(),
            number,
        );
        number += 1;
        tasks.spawn(async move {
            let worked = work(&db, &channel, &exchange, &batch).await;
            let _ = free.send(channel).await;
            let last = batch.pop().expect("not empty");
            let _ = done.send((n, worked.map(|()| last)));
            drop(permit);
        });
    }
    while acks.next < number {
        let (n, last) = finished.recv().await.context("a batch task ended")?;
        acks.done(n, last?).await?;
    }
    let seconds = started.context("nothing consumed")?.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let _ = consumer_connection.close(200, "done".into()).await;
    let _ = publisher_connection.close(200, "done".into()).await;
    let decided: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE source = $1")
            .bind(super::mix::SOURCE)
            .fetch_one(db)
            .await?;
    if decided != total as i64 {
        bail!("the same-work probe recorded {decided} of {total} logins");
    }
    Ok(total as f64 / seconds)
}

/// Acknowledges batches in the order they were taken, each up to its last delivery.
#[derive(Default)]
struct InOrder {
    /// The number of the next batch to acknowledge.
    next: u64,
    waiting: BTreeMap<u64, Delivery>,
}

impl InOrder {
    async fn done(&mut self, n: u64, last: Delivery) -> anyhow::Result<()> {
        self.waiting.insert(n, last);
        let mut upto = None;
        while let Some(last) = self.waiting.remove(&self.next) {
            upto = Some(last);
            self.next += 1;
        }
        if let Some(last) = upto {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

/// One batch: one transaction, then its events and replies with confirms.
async fn work(
    db: &PgPool,
    channel: &Channel,
    exchange: &str,
    deliveries: &[Delivery],
) -> anyhow::Result<()> {
    let logins: Vec<Login> = deliveries
        .iter()
        .map(parse)
        .collect::<anyhow::Result<_>>()?;
    let source = logins[0].source.clone();
    let mut tx = db.begin().await?;

    let ids: Vec<String> = logins.iter().map(|l| l.event_id.clone()).collect();
    let seen: HashSet<String> = sqlx::query_scalar(
        "SELECT event_id FROM processed_events WHERE source = $1 AND event_id = ANY($2)",
    )
    .bind(&source)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let logins: Vec<Login> = logins
        .into_iter()
        .filter(|l| !seen.contains(&l.event_id))
        .collect();

    let connections: Vec<String> = logins.iter().map(|l| l.connection.clone()).collect();
    let external_ids: Vec<String> = logins.iter().map(|l| l.external_id.clone()).collect();
    let known: HashMap<(String, String), Uuid> = sqlx::query_as::<_, (String, String, Uuid)>(
        "SELECT i.connection, i.external_id, i.user_id
         FROM unnest($2::text[], $3::text[]) AS k(connection, external_id)
         JOIN identities i ON i.user_pool_id = $1 AND i.connection = k.connection
                          AND i.external_id = k.external_id
         ORDER BY i.external_id, i.connection
         FOR UPDATE OF i",
    )
    .bind(POOL)
    .bind(&connections)
    .bind(&external_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(c, e, u)| ((c, e), u))
    .collect();

    let matching = |l: &Login| l.connection == "match" || l.connection == "ask";
    let emails: Vec<String> = logins
        .iter()
        .filter(|l| {
            matching(l) && !known.contains_key(&(l.connection.clone(), l.external_id.clone()))
        })
        .map(|l| l.email.clone())
        .collect();
    let accounts: HashMap<String, Uuid> = sqlx::query_as::<_, (String, Uuid)>(
        "SELECT email, id FROM users WHERE user_pool_id = $1 AND email = ANY($2)",
    )
    .bind(POOL)
    .bind(&emails)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    // What each login does.
    let (mut new_users, mut new_identities, mut returning, mut asks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut records: Vec<(String, &'static str, Option<Uuid>, Option<Value>)> = Vec::new();
    for l in &logins {
        let key = (l.connection.clone(), l.external_id.clone());
        if let Some(user) = known.get(&key) {
            returning.push((l, *user));
            records.push((l.event_id.clone(), "existing_user", Some(*user), None));
        } else if let Some(user) = accounts.get(&l.email).filter(|_| matching(l)) {
            if l.connection == "ask" {
                let binding = Uuid::now_v7();
                asks.push((l, binding, *user));
                let event = event(
                    "binding.pending",
                    json!({"binding_id": binding, "cause_event_id": l.event_id}),
                );
                records.push((l.event_id.clone(), "binding_pending", None, Some(event)));
            } else {
                new_identities.push((l, *user));
                let event = event(
                    "user.linked",
                    json!({"user_id": user, "cause_event_id": l.event_id}),
                );
                records.push((l.event_id.clone(), "user_linked", Some(*user), Some(event)));
            }
        } else {
            let user = Uuid::now_v7();
            new_users.push((l, user));
            new_identities.push((l, user));
            let event = event(
                "user.created",
                json!({"user_id": user, "cause_event_id": l.event_id}),
            );
            records.push((l.event_id.clone(), "user_created", Some(user), Some(event)));
        }
    }

    if !new_users.is_empty() {
        sqlx::query(
            "INSERT INTO users (id, user_pool_id, email, email_verified, name)
             SELECT id, $1, email, true, name FROM unnest($2::uuid[], $3::text[], $4::text[])
                 AS n(id, email, name)",
        )
        .bind(POOL)
        .bind(new_users.iter().map(|(_, u)| *u).collect::<Vec<_>>())
        .bind(
            new_users
                .iter()
                .map(|(l, _)| l.email.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            new_users
                .iter()
                .map(|(l, _)| l.profile["name"].as_str().map(str::to_owned))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    if !new_identities.is_empty() {
        sqlx::query(
            "INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
             SELECT $1, c, e, u, p FROM unnest($2::text[], $3::text[], $4::uuid[], $5::jsonb[])
                 AS n(c, e, u, p)",
        )
        .bind(POOL)
        .bind(
            new_identities
                .iter()
                .map(|(l, _)| l.connection.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            new_identities
                .iter()
                .map(|(l, _)| l.external_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(new_identities.iter().map(|(_, u)| *u).collect::<Vec<_>>())
        .bind(
            new_identities
                .iter()
                .map(|(l, _)| l.profile.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    if !returning.is_empty() {
        sqlx::query(
            "UPDATE identities i SET profile = n.p, last_login_at = now()
             FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS n(c, e, p)
             WHERE i.user_pool_id = $1 AND i.connection = n.c AND i.external_id = n.e",
        )
        .bind(POOL)
        .bind(
            returning
                .iter()
                .map(|(l, _)| l.connection.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            returning
                .iter()
                .map(|(l, _)| l.external_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            returning
                .iter()
                .map(|(l, _)| l.profile.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    if !asks.is_empty() {
        sqlx::query(
            "INSERT INTO bindings (id, user_pool_id, connection, external_id, profile, reason,
                                   candidates, expires_at, cause_event_id, cause_source)
             SELECT id, $1, c, e, p, 'ask_binding', ARRAY[u], now() + interval '7 days', ev, $6
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $7::uuid[], $8::text[])
                 AS n(id, c, e, p, u, ev)",
        )
        .bind(POOL)
        .bind(asks.iter().map(|(_, b, _)| *b).collect::<Vec<_>>())
        .bind(
            asks.iter()
                .map(|(l, _, _)| l.connection.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            asks.iter()
                .map(|(l, _, _)| l.external_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            asks.iter()
                .map(|(l, _, _)| l.profile.clone())
                .collect::<Vec<_>>(),
        )
        .bind(&source)
        .bind(asks.iter().map(|(_, _, u)| *u).collect::<Vec<_>>())
        .bind(
            asks.iter()
                .map(|(l, _, _)| l.event_id.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome, user_id, user_pool_id, evidence)
         SELECT $1, e, o, u, $2, ev FROM unnest($3::text[], $4::text[], $5::uuid[], $6::jsonb[])
             AS n(e, o, u, ev)",
    )
    .bind(&source)
    .bind(POOL)
    .bind(records.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.1.to_owned()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(2);
    let mut confirms = Vec::new();
    for event in records.iter().filter_map(|r| r.3.as_ref()) {
        let routing_key = event["type"].as_str().expect("a type");
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(event)?,
                    properties.clone(),
                )
                .await?,
        );
    }
    // Each fresh login's record is in `records` in the logins' order.
    let reply_properties = BasicProperties::default().with_content_type("application/json".into());
    for (login, (event_id, outcome, user, _)) in logins.iter().zip(&records) {
        let Some(reply_to) = &login.reply_to else {
            continue;
        };
        let mut properties = reply_properties.clone();
        if let Some(correlation_id) = &login.correlation_id {
            properties = properties.with_correlation_id(correlation_id.as_str().into());
        }
        let reply = json!({"event_id": event_id, "outcome": outcome, "user_id": user});
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&reply)?,
                    properties,
                )
                .await?,
        );
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            bail!("a same-work publish was nacked");
        }
    }
    Ok(())
}

/// A CloudEvent of about the size the worker publishes.
fn event(kind: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": Uuid::now_v7(),
        "source": "urn:identity-sync:bench",
        "type": kind,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "datacontenttype": "application/json",
        "data": data,
    })
}
