//! The outbox relay: publishes committed events and replies with publisher confirms, then marks
//! them published (events, kept for replay) or deletes them (replies).
//!
//! Two paths feed it. The fast one: whoever commits outbox rows in this process (the worker, the
//! admin API, the expiry sweeper) hands them over right after the commit, and the relay publishes
//! them at once, in commit order, without reading them back. The safe one: every
//! `outbox.poll_interval` it claims unpublished rows from the database with
//! `FOR UPDATE SKIP LOCKED` — its own rows a hand-off missed (the queue was full, the broker was
//! away), rows set aside after a nack, and rows of processes that stopped before publishing.

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
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::{connect, json_properties},
    db::outbox::{self, OutboxRow},
    health::Health,
    metrics::{KindLabel, Metrics},
    settings::Settings,
};

/// Committed batches waiting for the relay; when full, rows wait in the database instead.
const HANDOFF_CAPACITY: usize = 256;
/// The safe path leaves this process's rows this long to the fast path.
const OWN_ROWS_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

/// The committing side of the fast path.
#[derive(Clone)]
pub struct Handoff {
    sender: mpsc::Sender<Vec<OutboxRow>>,
    health: Health,
}

impl Handoff {
    /// Passes rows just committed to the relay. Never waits: if the relay is that far behind,
    /// the rows stay in the database for its safe path.
    pub fn committed(&self, rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        self.health.add_outbox_backlog(rows.len() as i64);
        if let Err(error) = self.sender.try_send(rows) {
            tracing::debug!(%error, "relay busy; the rows will be claimed from the database");
        }
    }
}

/// What one publish round achieved.
#[derive(Default)]
struct Round {
    rows: usize,
    /// Rows the broker did not take (nacked, or unroutable with `retry_unroutable`).
    held: usize,
}

pub struct Relay {
    settings: Arc<Settings>,
    pool: PgPool,
    origin: Uuid,
    handoffs: mpsc::Receiver<Vec<OutboxRow>>,
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
        metrics: Metrics,
        health: Health,
        stop: CancellationToken,
    ) -> (Self, Handoff) {
        let (sender, handoffs) = mpsc::channel(HANDOFF_CAPACITY);
        let handoff = Handoff {
            sender,
            health: health.clone(),
        };
        (
            Self {
                settings,
                pool,
                origin,
                handoffs,
                metrics,
                health,
                stop,
            },
            handoff,
        )
    }

    pub async fn run(mut self) {
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

    async fn session(&mut self) -> Result<(), RelayError> {
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

    async fn publish_loop(&mut self, channel: &Channel) -> Result<(), RelayError> {
        let poll = self.settings.outbox.poll_interval;
        let mut counted = Instant::now() - Duration::from_secs(60);
        // Whatever is already in the database first (a restart, a reconnect).
        self.claim_until_done(channel, &mut counted).await?;
        let mut next_claim = Instant::now() + poll;
        loop {
            if self.stop.is_cancelled() {
                // The worker has stopped: publish its last hand-offs, then anything left.
                while let Ok(rows) = self.handoffs.try_recv() {
                    self.publish_handed_off(channel, rows).await?;
                }
                self.claim_until_done(channel, &mut counted).await?;
                return Ok(());
            }
            tokio::select! {
                handed = self.handoffs.recv() => {
                    let Some(mut rows) = handed else { return Ok(()) };
                    // Everything already waiting goes in the same round.
                    while rows.len() < self.settings.outbox.batch_size as usize {
                        match self.handoffs.try_recv() {
                            Ok(more) => rows.extend(more),
                            Err(_) => break,
                        }
                    }
                    self.publish_handed_off(channel, rows).await?;
                    self.count_backlog(&mut counted, false).await;
                }
                _ = tokio::time::sleep_until(next_claim.into()) => {
                    self.claim_until_done(channel, &mut counted).await?;
                    next_claim = Instant::now() + poll;
                }
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

    /// The fast path: rows just committed by this process, published without reading them back.
    async fn publish_handed_off(
        &self,
        channel: &Channel,
        rows: Vec<OutboxRow>,
    ) -> Result<(), RelayError> {
        let settled = self.publish(channel, &rows).await?;
        let mut tx = self.pool.begin().await?;
        // Losing this mark to a crash only means publishing again (with the same ids).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        self.settle(&mut tx, &settled).await?;
        tx.commit().await?;
        self.account(&settled);
        Ok(())
    }

    /// The safe path: claims, publishes and settles rounds of rows until none is due.
    async fn claim_until_done(
        &self,
        channel: &Channel,
        counted: &mut Instant,
    ) -> Result<(), RelayError> {
        loop {
            let round = self.claimed_round(channel).await?;
            self.count_backlog(counted, round.rows == 0).await;
            // Held rows are set aside with a backoff (`outbox::hold`): they do not spin.
            if round.rows == 0 || round.held == round.rows {
                return Ok(());
            }
        }
    }

    async fn claimed_round(&self, channel: &Channel) -> Result<Round, RelayError> {
        let outbox_settings = &self.settings.outbox;
        let mut tx = self.pool.begin().await?;
        let rows = outbox::claim(
            &mut tx,
            self.origin,
            OWN_ROWS_AFTER.as_secs_f64(),
            outbox_settings.orphan_after.as_secs_f64(),
            outbox_settings.batch_size,
        )
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            self.health.set_database(true);
            return Ok(Round::default());
        }
        let settled = self.publish(channel, &rows).await?;
        self.settle(&mut tx, &settled).await?;
        tx.commit().await?;
        self.account(&settled);
        Ok(Round {
            rows: rows.len(),
            held: settled.held.len(),
        })
    }

    /// Publishes every row (pipelined), then awaits every confirm.
    async fn publish(&self, channel: &Channel, rows: &[OutboxRow]) -> Result<Settled, RelayError> {
        let mut confirms = Vec::with_capacity(rows.len());
        for row in rows {
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

        let mut settled = Settled::default();
        let timeout = self.settings.outbox.confirm_timeout;
        for (row, confirm) in rows.iter().zip(confirms) {
            let confirmation = tokio::time::timeout(timeout, confirm)
                .await
                .map_err(|_| RelayError::ConfirmTimeout(timeout))??;
            let is_event = row.kind == outbox::KIND_EVENT;
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    if is_event {
                        settled.published.push(row.id)
                    } else {
                        settled.replies.push(row.id)
                    }
                }
                Confirmation::Ack(Some(_)) => {
                    if !is_event {
                        // The requester is gone: nobody is left to read this reply.
                        tracing::debug!(queue = %row.routing_key, "reply queue no longer exists");
                        settled.replies.push(row.id);
                    } else if self.settings.outbox.retry_unroutable {
                        settled.held.push(row.id);
                    } else {
                        tracing::debug!(event_type = %row.routing_key, event_id = %row.message_id, "unroutable event");
                        settled.unrouted.push(row.id);
                    }
                }
                Confirmation::Nack(_) => {
                    tracing::warn!(id = row.id, "broker refused a publish; it will be retried");
                    settled.held.push(row.id);
                }
            }
        }
        if !settled.unrouted.is_empty() {
            self.metrics
                .outbox_unrouted
                .inc_by(settled.unrouted.len() as u64);
            tracing::warn!(
                count = settled.unrouted.len(),
                "events published with no queue bound for their type; kept for replay"
            );
        }
        Ok(settled)
    }

    async fn settle(&self, conn: &mut PgConnection, settled: &Settled) -> Result<(), RelayError> {
        outbox::settle(
            conn,
            &settled.published,
            &settled.unrouted,
            &settled.replies,
        )
        .await?;
        outbox::hold(conn, &settled.held).await?;
        Ok(())
    }

    fn account(&self, settled: &Settled) {
        let done = settled.published.len() + settled.unrouted.len() + settled.replies.len();
        self.health.add_outbox_backlog(-(done as i64));
        self.health.set_database(true);
        let events = (settled.published.len() + settled.unrouted.len()) as u64;
        if events > 0 {
            self.metrics
                .outbox_published
                .get_or_create(&KindLabel { kind: "event" })
                .inc_by(events);
        }
        if !settled.replies.is_empty() {
            self.metrics
                .outbox_published
                .get_or_create(&KindLabel { kind: "reply" })
                .inc_by(settled.replies.len() as u64);
        }
    }
}

/// Where each published row goes next.
#[derive(Default)]
struct Settled {
    published: Vec<i64>,
    unrouted: Vec<i64>,
    replies: Vec<i64>,
    held: Vec<i64>,
}

fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
