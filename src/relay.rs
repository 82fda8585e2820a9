//! The outbox relay: publishes committed events and replies with publisher confirms, then marks
//! them published (events, kept for replay) or deletes them (replies). It wakes when this process
//! commits (in-process signal) and polls as a fallback for rows of processes that stopped.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{
    Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::{connect, json_properties},
    db::outbox,
    health::Health,
    metrics::{KindLabel, Metrics},
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

/// What one publish round achieved.
struct Round {
    claimed: usize,
    /// Rows left unpublished (nacked, or unroutable with `retry_unroutable`).
    held: usize,
}

pub struct Relay {
    settings: Arc<Settings>,
    pool: PgPool,
    origin: Uuid,
    wake: Arc<Notify>,
    metrics: Metrics,
    health: Health,
    /// Cancelled after the worker has stopped: the relay then publishes what is left and exits.
    stop: CancellationToken,
}

impl Relay {
    pub fn new(
        settings: Arc<Settings>,
        pool: PgPool,
        origin: Uuid,
        wake: Arc<Notify>,
        metrics: Metrics,
        health: Health,
        stop: CancellationToken,
    ) -> Self {
        Self {
            settings,
            pool,
            origin,
            wake,
            metrics,
            health,
            stop,
        }
    }

    pub async fn run(self) {
        let max_delay = self.settings.worker.max_retry_delay;
        let mut backoff = backoff(max_delay);
        loop {
            let started = Instant::now();
            let result = self.session().await;
            self.health.set_publisher(false);
            match result {
                Ok(()) => break,
                Err(error) => {
                    if self.stop.is_cancelled() {
                        tracing::warn!(%error, "relay stopping with rows left to publish; another process or the next start publishes them");
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = self::backoff(max_delay);
                    }
                    self.metrics.transient("relay");
                    let delay = backoff.next().unwrap_or(max_delay);
                    tracing::warn!(%error, retry_in = ?delay, "relay session ended; reconnecting");
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("relay stopped");
    }

    async fn session(&self) -> Result<(), RelayError> {
        let connection = connect(&self.settings.amqp.url, "relay").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.health.set_publisher(true);
        let result = self.publish_loop(&channel).await;
        let _ = connection
            .close(200, "identity-sync relay stopping".into())
            .await;
        result
    }

    async fn publish_loop(&self, channel: &Channel) -> Result<(), RelayError> {
        let poll = self.settings.outbox.poll_interval;
        let mut counted = Instant::now() - Duration::from_secs(60);
        loop {
            let stopping = self.stop.is_cancelled();
            // Publish until nothing is due. Rows the broker did not take are set aside with a
            // backoff (`outbox::hold`), so they neither block the rows behind them nor spin.
            loop {
                let round = self.round(channel).await?;
                self.count_backlog(&mut counted, false).await;
                if round.claimed == 0 || round.held == round.claimed {
                    break;
                }
            }
            // A worker paused on the backlog resumes as soon as the relay has caught up.
            let paused = self.health.outbox_backlog() > 0;
            self.count_backlog(&mut counted, paused).await;
            if stopping {
                return Ok(());
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    /// Counts unpublished rows for the metric and the worker's throttle: at most once a second
    /// unless `now`.
    async fn count_backlog(&self, counted: &mut Instant, now: bool) {
        if !now && counted.elapsed() < Duration::from_secs(1) {
            return;
        }
        *counted = Instant::now();
        if let Ok(count) = outbox::backlog(&self.pool).await {
            self.metrics.outbox_backlog.set(count);
            self.health.set_outbox_backlog(count);
        }
    }

    /// Claims a batch of rows, publishes them all (pipelined), awaits every confirm, and records
    /// the outcome in the same transaction that holds the rows' locks.
    async fn round(&self, channel: &Channel) -> Result<Round, RelayError> {
        let outbox_settings = &self.settings.outbox;
        let mut tx = self.pool.begin().await?;
        let rows = outbox::claim(
            &mut tx,
            self.origin,
            outbox_settings.orphan_after.as_secs_f64(),
            outbox_settings.batch_size,
        )
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            self.health.set_database(true);
            return Ok(Round {
                claimed: 0,
                held: 0,
            });
        }

        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let body = serde_json::to_vec(&row.payload).expect("json value serialises");
            let mut properties = json_properties(&row.message_id.to_string());
            let exchange = if row.kind == outbox::KIND_EVENT {
                properties = properties
                    .with_type(ShortString::from(row.routing_key.as_str()))
                    .with_timestamp(row.created_at.timestamp().max(0) as u64);
                self.settings.amqp.events_exchange.as_str()
            } else {
                if let Some(correlation_id) = &row.correlation_id {
                    properties = properties.with_correlation_id(correlation_id.as_str().into());
                }
                ""
            };
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    row.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }

        let mut published = Vec::new();
        let mut unrouted = Vec::new();
        let mut replies = Vec::new();
        let mut held = Vec::new();
        let timeout = outbox_settings.confirm_timeout;
        for (row, confirm) in rows.iter().zip(confirms) {
            let confirmation = tokio::time::timeout(timeout, confirm)
                .await
                .map_err(|_| RelayError::ConfirmTimeout(timeout))??;
            let is_event = row.kind == outbox::KIND_EVENT;
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    if is_event {
                        published.push(row.id)
                    } else {
                        replies.push(row.id)
                    }
                }
                Confirmation::Ack(Some(_)) => {
                    if !is_event {
                        // The requester is gone: nobody is left to read this reply.
                        tracing::debug!(queue = %row.routing_key, "reply queue no longer exists");
                        replies.push(row.id);
                    } else if outbox_settings.retry_unroutable {
                        held.push(row.id);
                    } else {
                        tracing::debug!(event_type = %row.routing_key, event_id = %row.message_id, "unroutable event");
                        unrouted.push(row.id);
                    }
                }
                Confirmation::Nack(_) => {
                    tracing::warn!(id = row.id, "broker refused a publish; it will be retried");
                    held.push(row.id);
                }
            }
        }
        if !unrouted.is_empty() {
            self.metrics.outbox_unrouted.inc_by(unrouted.len() as u64);
            tracing::warn!(
                count = unrouted.len(),
                "events published with no queue bound for their type; kept for replay"
            );
        }
        outbox::settle(&mut tx, &published, &unrouted, &replies).await?;
        outbox::hold(&mut tx, &held).await?;
        tx.commit().await?;
        self.health
            .add_outbox_backlog(-((published.len() + unrouted.len() + replies.len()) as i64));
        self.health.set_database(true);
        let events = (published.len() + unrouted.len()) as u64;
        if events > 0 {
            self.metrics
                .outbox_published
                .get_or_create(&KindLabel { kind: "event" })
                .inc_by(events);
        }
        if !replies.is_empty() {
            self.metrics
                .outbox_published
                .get_or_create(&KindLabel { kind: "reply" })
                .inc_by(replies.len() as u64);
        }
        Ok(Round {
            claimed: rows.len(),
            held: held.len(),
        })
    }
}

fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
