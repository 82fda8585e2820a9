//! The outbox relay: publishes committed events and replies with publisher confirms, then marks
//! them published (events, kept for replay) or deletes them (replies).
//!
//! Whoever commits outbox rows in this process (the worker, the admin API, the expiry sweeper)
//! commits through `Handoff::commit`, which passes the rows to the relay in commit order. The
//! relay publishes them in that order and never drops them: rows whose publish was not confirmed
//! when a broker session ended are published again first by the next session, so events of one
//! process reach the broker in commit order also when the relay falls behind or reconnects. The
//! copies a reconnect can cause are bounded by what was truly unconfirmed at the fault (confirmed
//! rows are marked even when a later one fails).
//!
//! The database is read back only for rows that are not in this process's memory: rows the
//! broker refused (set aside with a backoff, so that they do not block the rows behind them), and
//! rows of processes that stopped before publishing theirs (adopted after `outbox.orphan_after`).
//! Those are claimed with `FOR UPDATE SKIP LOCKED` every `outbox.poll_interval`.

//!
//! One file per job: [`handoff`] (committing and queueing rows in commit order), [`publishing`]
//! (the session's rounds of rows out to the broker), [`confirms`] (awaiting each round's confirms
//! in order and recording what became of each row), [`replies`] (replies, on a connection of
//! their own), [`claims`] (rows read back from the database, and the heartbeat that keeps other
//! processes from adopting this one's), [`vacuum`].

mod claims;
mod confirms;
mod handoff;
mod publishing;
mod replies;
mod vacuum;

pub use claims::heartbeat;
pub use handoff::Handoff;

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::options::ConfirmSelectOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::{CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect},
    db::outbox::{self, OutboxRow, Settled},
    health::Health,
    metrics::Metrics,
    settings::Settings,
};
use confirms::Confirmer;
use handoff::{CommitOrder, Queued};
use replies::Replies;
use vacuum::PendingVacuum;

/// Published rounds whose confirms may be pending at once.
pub(super) const IN_FLIGHT_ROUNDS: usize = 32;
/// Committed rounds (a batch's rows, an admin write's) waiting for the relay. When it is full
/// (the relay cannot publish: the broker is away), committers do not wait: they leave their rows
/// in the database for the relay to claim once it publishes again, so memory stays bounded and
/// no writer waits for the broker. The login consumer also pauses at `outbox.max_backlog` rows.
pub(super) const HANDOFF_ROUNDS: usize = 1_024;
/// Rounds of replies waiting for the reply task, and published rounds of replies waiting to be
/// marked. When either is full the relay (or the reply task) waits: replies are then as late as
/// their connection or the database make them, and memory stays bounded.
pub(super) const REPLY_ROUNDS: usize = 256;
/// Sessions in a row a row may end unconfirmed before it is set aside.
const POISON_SESSIONS: u32 = 5;
/// Rows removed from `outbox_pending` after which the relay vacuums it: autovacuum looks at a
/// table once a minute at best (and may be off), and a minute at full speed leaves hundreds of
/// thousands of dead rows in a table that holds a few hundred live ones.
pub(super) const VACUUM_AFTER_REMOVED: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// Nacks. The refused rows are set aside with a backoff; the session ends, so that the next
    /// one publishes on a fresh connection and channel (a channel can keep refusing after a
    /// cluster node is lost, when a new one through a surviving node is taken at once), after
    /// the reconnect's own growing delay rather than at once. Replies go on meanwhile.
    #[error("the broker refused {0} publishes")]
    Refused(usize),
    #[error("the settling task stopped")]
    SettlerStopped,
}

pub struct Relay {
    settings: Arc<Settings>,
    pool: PgPool,
    origin: Uuid,
    handoffs: mpsc::Receiver<Queued>,
    /// Shared with the committers: whether rows were left to claims because the queue was full.
    order: CommitOrder,
    /// Handed-off rows whose publish a broker session could not confirm: the next session
    /// publishes them first, in order.
    unconfirmed: VecDeque<OutboxRow>,
    /// Events handed off while the relay waited to reconnect after a refusal (their replies
    /// went on): the next session publishes them after `unconfirmed`, in order.
    deferred: VecDeque<OutboxRow>,
    /// The first unconfirmed row and how many sessions in a row ended without confirming it: a
    /// row that keeps breaking sessions is set aside instead of blocking the rest.
    head_failures: Option<(i64, u32)>,
    /// Whether the last session got as far as publishing: one that could not connect did not
    /// try the first unconfirmed row, and does not count against it.
    published: bool,
    metrics: Metrics,
    health: Health,
    /// Cancelled after the worker has stopped: the relay then publishes what is left and exits.
    stop: CancellationToken,
    vacuum: PendingVacuum,
    /// The task publishing replies on a connection of its own (see `amqp::replies`).
    replies: Replies,
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
        let (sender, handoffs) = mpsc::channel(HANDOFF_ROUNDS);
        let handoff = Handoff::new(sender, health.clone(), settings.database.stall_timeout);
        let vacuum = PendingVacuum::new(pool.clone(), metrics.clone());
        let replies = Replies::start(
            &settings,
            Confirmer {
                settings: settings.clone(),
                pool: pool.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                stop: stop.clone(),
                vacuum: vacuum.clone(),
                connection: None,
            },
        );
        (
            Self {
                settings,
                pool,
                origin,
                handoffs,
                order: handoff.order(),
                unconfirmed: VecDeque::new(),
                deferred: VecDeque::new(),
                head_failures: None,
                published: false,
                metrics,
                health,
                stop,
                vacuum,
                replies,
            },
            handoff,
        )
    }

    pub async fn run(mut self) {
        let max_delay = self.settings.worker.max_retry_delay;
        let mut backoff = crate::retry::delays(max_delay);
        loop {
            let started = Instant::now();
            let published_before = self.events_published();
            let result = self.session().await;
            self.health.set_publisher(false);
            match result {
                Ok(()) => break,
                Err(error) => {
                    if self.stop.is_cancelled() {
                        tracing::warn!(%error, "relay stopping with rows left to publish; another process or the next start publishes them");
                        break;
                    }
                    // A long session, or one that ended on a refusal after the broker took
                    // other events (one subscriber's full queue, say), starts the delays again;
                    // sessions refused outright wait longer and longer.
                    let took_some = matches!(error, RelayError::Refused(_))
                        && self.events_published() > published_before;
                    if started.elapsed() > Duration::from_secs(10) || took_some {
                        backoff = crate::retry::delays(max_delay);
                    }
                    self.metrics.transient("relay");
                    let refused = matches!(error, RelayError::Refused(_));
                    // Refused rows are set aside already; the rows after them did nothing.
                    if self.published && !refused {
                        self.set_aside_a_poison_row().await;
                    }
                    let delay = backoff.next().unwrap_or(max_delay);
                    tracing::warn!(
                        %error,
                        retry_in = ?delay,
                        unconfirmed = self.unconfirmed.len(),
                        "relay session ended; reconnecting"
                    );
                    if refused {
                        self.replies_only(delay).await;
                    } else {
                        tokio::select! {
                            _ = self.stop.cancelled() => {}
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        tracing::info!("relay stopped");
    }

    /// Waits `delay` before the next session after a refusal, passing on the replies handed
    /// off meanwhile (the broker is up, and a person waits for each) and keeping their events
    /// for the next session, in order.
    async fn replies_only(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => return,
                handed = self.handoffs.recv() => {
                    let Some(queued) = handed else { return };
                    let rows = self.committed_rows(queued).await;
                    self.replies.hand_off(&rows).await;
                    self.deferred
                        .extend(rows.into_iter().filter(|row| row.kind == outbox::OutboxKind::Event));
                }
            }
        }
    }

    /// After a failed session: a row that was the first unconfirmed one of
    /// `POISON_SESSIONS` sessions in a row is set aside in the database (retried with a backoff,
    /// like a nacked row), so that one row the broker keeps refusing cannot hold every other.
    async fn set_aside_a_poison_row(&mut self) {
        let Some(head) = self.unconfirmed.front().map(|row| row.id) else {
            self.head_failures = None;
            return;
        };
        let failures = match self.head_failures {
            Some((id, n)) if id == head => n + 1,
            _ => 1,
        };
        self.head_failures = Some((head, failures));
        if failures < POISON_SESSIONS {
            return;
        }
        let held = Settled {
            held: vec![head],
            ..Settled::default()
        };
        let set_aside = async {
            let mut conn = self.pool.acquire().await?;
            outbox::settle(&mut conn, &held).await
        };
        let stall = self.settings.database.stall_timeout;
        let set_aside = tokio::time::timeout(stall, set_aside)
            .await
            .unwrap_or_else(|_| Err(crate::db::stalled("setting a row aside")));
        match set_aside {
            Ok(()) => {
                tracing::error!(
                    id = head,
                    sessions = failures,
                    "an outbox row broke every broker session that published it; set aside"
                );
                self.unconfirmed.pop_front();
                self.head_failures = None;
            }
            Err(error) => tracing::warn!(%error, "setting a row aside failed"),
        }
    }

    async fn session(&mut self) -> Result<(), RelayError> {
        self.published = false;
        let connection = connect(&self.settings.amqp.url, "relay").await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            // Declared again at every connect: a deleted events exchange is not a dead relay.
            crate::amqp::topology::declare_events_exchange(&channel, &self.settings.amqp).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(channel)
        };
        let channel = bounded(OPERATION_TIMEOUT, "opening a confirm channel", setup).await?;
        self.health.set_publisher(true);
        self.published = true;
        let result = self.publish_loop(&channel).await;
        let close = connection.close(200, "identity-sync relay stopping".into());
        let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        result
    }

    fn settler(&self) -> Confirmer {
        Confirmer {
            settings: self.settings.clone(),
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            stop: self.stop.clone(),
            vacuum: self.vacuum.clone(),
            connection: None,
        }
    }

    /// Events the broker has taken since the process started.
    fn events_published(&self) -> u64 {
        self.metrics
            .outbox_published
            .get_or_create(&crate::metrics::KindLabel { kind: "event" })
            .get()
    }

    /// Counts unpublished rows for the metric and the worker's throttle: at most once a second
    /// unless `now`.
    async fn count_backlog(&self, counted: &mut Instant, now: bool) {
        if !now && counted.elapsed() < Duration::from_secs(1) {
            return;
        }
        *counted = Instant::now();
        let stall = self.settings.database.stall_timeout;
        if let Ok(Ok(count)) = tokio::time::timeout(stall, outbox::backlog(&self.pool)).await {
            self.metrics.outbox_backlog.set(count);
            self.health.set_outbox_backlog(count);
        }
    }
}
