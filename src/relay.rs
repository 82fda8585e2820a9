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

use lapin::{
    Channel, Confirmation, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::{CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect, json_properties},
    db::outbox::{self, OutboxRow, Settled},
    health::Health,
    metrics::{KindLabel, Metrics},
    settings::Settings,
};

/// Committed batches waiting for the relay; when full, rows wait in the database instead.
const HANDOFF_CAPACITY: usize = 256;
/// The safe path leaves this process's rows this long to the fast path.
const OWN_ROWS_AFTER: Duration = Duration::from_secs(2);
/// Published rounds whose confirms may be pending at once.
const IN_FLIGHT_ROUNDS: usize = 32;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the settling task stopped")]
    SettlerStopped,
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
        let mut backoff = crate::retry::delays(max_delay);
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
                        backoff = crate::retry::delays(max_delay);
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
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(channel)
        };
        let channel = bounded(OPERATION_TIMEOUT, "opening a confirm channel", setup).await?;
        self.health.set_publisher(true);
        let result = self.publish_loop(&channel).await;
        let close = connection.close(200, "identity-sync relay stopping".into());
        let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        result
    }

    async fn publish_loop(&mut self, channel: &Channel) -> Result<(), RelayError> {
        let poll = self.settings.outbox.poll_interval;
        let mut counted = Instant::now() - Duration::from_secs(60);
        // Whatever is already in the database first (a restart, a reconnect).
        self.claim_until_done(channel, &mut counted).await?;
        // Handed-off rows are published at once; their confirms are awaited and the rows settled
        // by a task of their own, so that the next rounds go out meanwhile.
        let (in_flight, settling) = mpsc::channel::<InFlight>(IN_FLIGHT_ROUNDS);
        let settler = tokio::spawn(settle_in_order(self.settler(), settling));
        let result = self
            .handoff_loop(channel, &in_flight, &mut counted, poll)
            .await;
        drop(in_flight);
        let settled = settler.await.unwrap_or(Ok(()));
        result.and(settled)
    }

    async fn handoff_loop(
        &mut self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        counted: &mut Instant,
        poll: Duration,
    ) -> Result<(), RelayError> {
        let mut next_claim = Instant::now() + poll;
        loop {
            if self.stop.is_cancelled() {
                // The worker has stopped: publish its last hand-offs, let them settle, then
                // anything left in the database.
                while let Ok(rows) = self.handoffs.try_recv() {
                    self.send_round(channel, in_flight, rows).await?;
                }
                self.barrier(in_flight).await?;
                self.claim_until_done(channel, counted).await?;
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
                    self.send_round(channel, in_flight, rows).await?;
                    self.count_backlog(counted, false).await;
                }
                _ = tokio::time::sleep_until(next_claim.into()) => {
                    // Rounds in flight settle first, so that the claim does not take their rows.
                    self.barrier(in_flight).await?;
                    self.claim_until_done(channel, counted).await?;
                    next_claim = Instant::now() + poll;
                }
                _ = self.stop.cancelled() => {}
            }
        }
    }

    /// Publishes a round of handed-off rows and passes its confirms to the settling task.
    async fn send_round(
        &self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        rows: Vec<OutboxRow>,
    ) -> Result<(), RelayError> {
        let confirms = publish_rows(channel, &self.settings, &rows).await?;
        in_flight
            .send(InFlight::Round { rows, confirms })
            .await
            .map_err(|_| RelayError::SettlerStopped)
    }

    /// Waits until every round sent so far has settled.
    async fn barrier(&self, in_flight: &mpsc::Sender<InFlight>) -> Result<(), RelayError> {
        let (done, settled) = tokio::sync::oneshot::channel();
        in_flight
            .send(InFlight::Barrier(done))
            .await
            .map_err(|_| RelayError::SettlerStopped)?;
        settled.await.map_err(|_| RelayError::SettlerStopped)
    }

    fn settler(&self) -> Settler {
        Settler {
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
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
            return Ok(Round::default());
        }
        let confirms = publish_rows(channel, &self.settings, &rows).await?;
        let settler = self.settler();
        let settled = settler.confirmations(&rows, confirms).await?;
        outbox::settle(&mut tx, &settled).await?;
        tx.commit().await?;
        settler.account(&settled);
        Ok(Round {
            rows: rows.len(),
            held: settled.held.len(),
        })
    }
}

/// What the publishing side passes to the settling task.
enum InFlight {
    Round {
        rows: Vec<OutboxRow>,
        confirms: Vec<PublisherConfirm>,
    },
    /// Answered once every round before it has settled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Awaits the confirms of each round in order and records the outcome.
struct Settler {
    settings: Arc<Settings>,
    pool: PgPool,
    metrics: Metrics,
    health: Health,
}

async fn settle_in_order(
    settler: Settler,
    mut rounds: mpsc::Receiver<InFlight>,
) -> Result<(), RelayError> {
    while let Some(item) = rounds.recv().await {
        match item {
            InFlight::Round { rows, confirms } => {
                let settled = settler.confirmations(&rows, confirms).await?;
                let mut conn = settler.pool.acquire().await?;
                outbox::settle(&mut conn, &settled).await?;
                settler.account(&settled);
            }
            InFlight::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
    Ok(())
}

impl Settler {
    /// Sorts the rows by what the broker said about each.
    async fn confirmations(
        &self,
        rows: &[OutboxRow],
        confirms: Vec<PublisherConfirm>,
    ) -> Result<Settled, RelayError> {
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

    fn account(&self, settled: &Settled) {
        self.health.add_outbox_backlog(-(settled.done() as i64));
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

/// Publishes every row, pipelined; returns the confirms in row order.
async fn publish_rows(
    channel: &Channel,
    settings: &Settings,
    rows: &[OutboxRow],
) -> Result<Vec<PublisherConfirm>, RelayError> {
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let body = serde_json::to_vec(&row.payload).expect("json value serialises");
        let mut properties = json_properties(&row.message_id.to_string());
        let exchange = if row.kind == outbox::KIND_EVENT {
            properties = properties
                .with_type(ShortString::from(row.routing_key.as_str()))
                .with_timestamp(row.created_at.timestamp().max(0) as u64);
            settings.amqp.events_exchange.as_str()
        } else {
            if let Some(correlation_id) = &row.correlation_id {
                properties = properties.with_correlation_id(correlation_id.as_str().into());
            }
            ""
        };
        let publish = channel.basic_publish(
            exchange.into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        );
        let confirm = bounded(settings.outbox.confirm_timeout, "publishing", publish).await?;
        confirms.push(confirm);
    }
    Ok(confirms)
}
