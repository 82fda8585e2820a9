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

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_lite::future::poll_once;
use lapin::{
    Channel, Confirmation, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use sqlx::{PgPool, Postgres, Transaction, pool::PoolConnection};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    amqp::{
        CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect, json_properties,
        replies::{OutgoingReply, ReplyOutcome, ReplyPublisher},
    },
    db::outbox::{self, OutboxRow, Settled},
    health::Health,
    metrics::{KindLabel, Metrics},
    pipeline::KEPT_IDLE,
    settings::{EventMode, Settings},
};

/// Published rounds whose confirms may be pending at once.
const IN_FLIGHT_ROUNDS: usize = 32;
/// Sessions in a row a row may end unconfirmed before it is set aside.
const POISON_SESSIONS: u32 = 5;
/// Rows removed from `outbox_pending` after which the relay vacuums it: autovacuum looks at a
/// table once a minute at best (and may be off), and a minute at full speed leaves hundreds of
/// thousands of dead rows in a table that holds a few hundred live ones.
const VACUUM_AFTER_REMOVED: u64 = 5_000;

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

/// What the committing side passes to the relay.
enum Queued {
    /// Rows of a committed transaction.
    Committed(Vec<OutboxRow>),
    /// Rows of a transaction whose commit failed in a way that leaves the outcome unknown (the
    /// connection went during the commit): the relay publishes those that exist.
    Uncertain(Vec<OutboxRow>),
}

/// The committing side: commits a transaction and passes its outbox rows to the relay.
#[derive(Clone)]
pub struct Handoff {
    sender: mpsc::UnboundedSender<Queued>,
    health: Health,
    /// Held from a commit until its rows are queued, so that the relay's queue is in commit
    /// order: of two transactions that wait for each other, the second cannot queue first.
    order: Arc<Mutex<()>>,
}

impl Handoff {
    /// Commits `tx` and queues `rows` (written by it) for publishing.
    pub async fn commit(
        &self,
        tx: Transaction<'_, Postgres>,
        rows: Vec<OutboxRow>,
    ) -> sqlx::Result<()> {
        let _order = self.order.lock().await;
        match tx.commit().await {
            Ok(()) => {
                if crate::failpoint::armed("exit_after_commit") {
                    // For the fault tests: a crash after the commit, before the relay or the
                    // broker heard of it.
                    std::process::exit(3);
                }
                self.queue(Queued::Committed(rows));
                Ok(())
            }
            Err(error) => {
                // A commit that failed on its way back may have happened all the same.
                if !rows.is_empty() && crate::db::is_transient(&error) {
                    let _ = self.sender.send(Queued::Uncertain(rows));
                }
                Err(error)
            }
        }
    }

    fn queue(&self, queued: Queued) {
        let Queued::Committed(rows) = &queued else {
            return;
        };
        if rows.is_empty() {
            return;
        }
        self.health.add_outbox_backlog(rows.len() as i64);
        // The relay owns the receiver for the life of the process.
        let _ = self.sender.send(queued);
    }
}

/// What one claimed round achieved.
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
    handoffs: mpsc::UnboundedReceiver<Queued>,
    /// Handed-off rows whose publish a broker session could not confirm: the next session
    /// publishes them first, in order.
    unconfirmed: VecDeque<OutboxRow>,
    /// The first unconfirmed row and how many sessions in a row ended without confirming it: a
    /// row that keeps breaking sessions is set aside instead of blocking the rest.
    head_failures: Option<(i64, u32)>,
    metrics: Metrics,
    health: Health,
    /// Cancelled after the worker has stopped: the relay then publishes what is left and exits.
    stop: CancellationToken,
    vacuum: PendingVacuum,
    /// The task publishing replies on a connection of its own (see `amqp::replies`).
    replies: Replies,
}

/// What the relay passes to the reply task.
enum ReplyRound {
    /// The reply rows of a handed-off round, which the task publishes and then has marked (their
    /// marking must never wait for the events').
    HandedOff(Vec<OutboxRow>),
    /// The reply rows of a claimed round, which the claiming transaction holds locked and marks:
    /// the task only publishes them and sends the outcomes back, one per reply, in order.
    Claimed(Vec<OutboxRow>, oneshot::Sender<Vec<ReplyOutcome>>),
    /// Answered once every reply handed off before has been published and marked.
    Flush(oneshot::Sender<()>),
}

/// The task publishing replies on a connection of its own (see `amqp::replies`), so that a
/// reply address the broker chokes on costs neither the events' connection nor their pace.
#[derive(Clone)]
struct Replies(mpsc::UnboundedSender<ReplyRound>);

impl Replies {
    /// Starts the task, and beside it the one marking what it published with `settler`: the
    /// next round is published while the last one is marked, and rounds published meanwhile are
    /// marked together. Both end when every sender is gone.
    fn start(settings: &Settings, settler: Settler) -> Self {
        let (sender, mut rounds) = mpsc::unbounded_channel::<ReplyRound>();
        let mut publisher = ReplyPublisher::new(
            settings.amqp.url.clone(),
            "relay replies",
            settler.metrics.clone(),
        );
        let marks = ReplyMarks::start(settler);
        tokio::spawn(async move {
            while let Some(round) = rounds.recv().await {
                match round {
                    ReplyRound::HandedOff(rows) => {
                        let outcomes = publisher.publish(&outgoing(&rows)).await;
                        marks.send(settle_replies(&rows, &outcomes), None);
                    }
                    ReplyRound::Claimed(rows, back) => {
                        let _ = back.send(publisher.publish(&outgoing(&rows)).await);
                    }
                    ReplyRound::Flush(done) => marks.send(Settled::default(), Some(done)),
                }
            }
            publisher.close().await;
        });
        Self(sender)
    }

    fn send(&self, round: ReplyRound) {
        if self.0.send(round).is_err() {
            // Its rows would be left unpublished and unmarked: stop the process instead (its
            // supervisor restarts it, and the rows are adopted).
            panic!("the relay's reply task stopped");
        }
    }

    /// Publishes and marks the replies among handed-off `rows`, in a task of its own.
    fn hand_off(&self, rows: &[OutboxRow]) {
        let replies: Vec<OutboxRow> = reply_rows(rows).cloned().collect();
        if !replies.is_empty() {
            self.send(ReplyRound::HandedOff(replies));
        }
    }

    /// Publishes the replies among claimed `rows`; one outcome per reply row, in order.
    async fn publish(&self, rows: &[OutboxRow]) -> Vec<ReplyOutcome> {
        let replies: Vec<OutboxRow> = reply_rows(rows).cloned().collect();
        if replies.is_empty() {
            return Vec::new();
        }
        let (back, outcomes) = oneshot::channel();
        self.send(ReplyRound::Claimed(replies, back));
        outcomes.await.expect("the relay's reply task answers")
    }

    /// Waits until every reply handed off before has been published and marked.
    async fn flush(&self) {
        let (done, marked) = oneshot::channel();
        self.send(ReplyRound::Flush(done));
        let _ = marked.await;
    }
}

/// The replies among `rows`, as published.
fn outgoing(rows: &[OutboxRow]) -> Vec<OutgoingReply> {
    reply_rows(rows)
        .map(|row| OutgoingReply {
            to: row.routing_key.clone(),
            correlation_id: row.correlation_id.clone(),
            message_id: row.message_id.to_string(),
            body: serde_json::to_vec(&row.payload).expect("json value serialises"),
        })
        .collect()
}

/// The task marking published replies, in the order they were published.
struct ReplyMarks(mpsc::UnboundedSender<(Settled, Option<oneshot::Sender<()>>)>);

impl ReplyMarks {
    /// Starts the task; it ends when the sender is gone.
    fn start(mut settler: Settler) -> Self {
        let (sender, mut marks) =
            mpsc::unbounded_channel::<(Settled, Option<oneshot::Sender<()>>)>();
        tokio::spawn(async move {
            while let Some((mut settled, done)) = marks.recv().await {
                let mut waiting: Vec<_> = done.into_iter().collect();
                while let Ok((more, done)) = marks.try_recv() {
                    settled.add(more);
                    waiting.extend(done);
                }
                settler.mark(&settled).await;
                settler.account(&settled);
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        Self(sender)
    }

    fn send(&self, settled: Settled, done: Option<oneshot::Sender<()>>) {
        if self.0.send((settled, done)).is_err() {
            panic!("the relay's reply marking task stopped");
        }
    }
}

fn reply_rows(rows: &[OutboxRow]) -> impl Iterator<Item = &OutboxRow> {
    rows.iter()
        .filter(|row| row.kind == outbox::OutboxKind::Reply)
}

/// How the replies among `rows` are settled, given one outcome per reply: delivered, or given
/// up after breaking a connection on its own, they go; unsent (no connection for replies), they
/// are set aside and tried again.
fn settle_replies(rows: &[OutboxRow], outcomes: &[ReplyOutcome]) -> Settled {
    let mut settled = Settled::default();
    for (row, outcome) in reply_rows(rows).zip(outcomes) {
        match outcome {
            ReplyOutcome::Delivered | ReplyOutcome::Dropped => settled.replies.push(row.id),
            ReplyOutcome::Unsent => settled.held.push(row.id),
        }
    }
    settled
}

/// Counts the rows the relay removed from `outbox_pending` and vacuums the table every
/// `VACUUM_AFTER_REMOVED` of them, in a task of its own, one vacuum at a time.
#[derive(Clone)]
struct PendingVacuum {
    pool: PgPool,
    removed: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    metrics: Metrics,
}

impl PendingVacuum {
    fn removed(&self, rows: usize) {
        let rows = rows as u64;
        let total = self.removed.fetch_add(rows, Ordering::Relaxed) + rows;
        if total < VACUUM_AFTER_REMOVED || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.removed.fetch_sub(total, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            match outbox::vacuum_pending(&this.pool).await {
                Ok(()) => {
                    this.metrics.outbox_vacuums.inc();
                }
                Err(error) => tracing::debug!(%error, "vacuuming outbox_pending failed"),
            }
            this.running.store(false, Ordering::Release);
        });
    }
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
        let (sender, handoffs) = mpsc::unbounded_channel();
        let handoff = Handoff {
            sender,
            health: health.clone(),
            order: Arc::new(Mutex::new(())),
        };
        let vacuum = PendingVacuum {
            pool: pool.clone(),
            removed: Arc::default(),
            running: Arc::default(),
            metrics: metrics.clone(),
        };
        let replies = Replies::start(
            &settings,
            Settler {
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
                unconfirmed: VecDeque::new(),
                head_failures: None,
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
                    self.set_aside_a_poison_row().await;
                    let delay = backoff.next().unwrap_or(max_delay);
                    tracing::warn!(
                        %error,
                        retry_in = ?delay,
                        unconfirmed = self.unconfirmed.len(),
                        "relay session ended; reconnecting"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("relay stopped");
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
        match set_aside.await {
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
        let result = self.publish_loop(&channel).await;
        let close = connection.close(200, "identity-sync relay stopping".into());
        let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        result
    }

    async fn publish_loop(&mut self, channel: &Channel) -> Result<(), RelayError> {
        let mut counted = Instant::now() - Duration::from_secs(60);
        // Confirms are awaited and rows settled by a task of their own, so that the next rounds
        // go out meanwhile; it hands back what it could not confirm.
        let (in_flight, settling) = mpsc::channel::<InFlight>(IN_FLIGHT_ROUNDS);
        // Cancelled by the settling task when a confirm failed or never came: this session's
        // channel cannot be trusted any more.
        let broken = CancellationToken::new();
        let settler = tokio::spawn(settle_in_order(self.settler(), settling, broken.clone()));
        let result = self
            .rounds(channel, &in_flight, &mut counted, &broken)
            .await;
        drop(in_flight);
        let (unconfirmed, settled) = match settler.await {
            Ok(outcome) => outcome,
            // Its rows would be lost from memory: stop the process instead (its supervisor
            // restarts it, and the rows are adopted).
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => (Vec::new(), Err(RelayError::SettlerStopped)),
        };
        // They were published before anything still queued: first again next time.
        for row in unconfirmed.into_iter().rev() {
            self.unconfirmed.push_front(row);
        }
        result.and(settled)
    }

    async fn rounds(
        &mut self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        counted: &mut Instant,
        broken: &CancellationToken,
    ) -> Result<(), RelayError> {
        let batch = self.settings.outbox.batch_size as usize;
        let timeout = self.settings.outbox.confirm_timeout;
        // What a previous session could not confirm goes first, in order.
        if !self.unconfirmed.is_empty() {
            self.metrics
                .outbox_republished
                .inc_by(self.unconfirmed.len() as u64);
        }
        while !self.unconfirmed.is_empty() {
            if broken.is_cancelled() {
                return Err(RelayError::ConfirmTimeout(timeout));
            }
            let take = self.unconfirmed.len().min(batch);
            let rows: Vec<OutboxRow> = self.unconfirmed.drain(..take).collect();
            self.send_round(channel, in_flight, rows).await?;
        }
        // Rows refused earlier or left by stopped processes.
        self.claim_until_done(channel, counted).await?;
        let poll = self.settings.outbox.poll_interval;
        let mut next_claim = Instant::now() + poll;
        loop {
            if broken.is_cancelled() {
                return Err(RelayError::ConfirmTimeout(timeout));
            }
            if self.stop.is_cancelled() {
                // The worker has stopped: publish its last hand-offs, let them settle, then
                // anything due in the database.
                while let Ok(queued) = self.handoffs.try_recv() {
                    let rows = self.committed_rows(queued).await;
                    self.send_round(channel, in_flight, rows).await?;
                }
                self.barrier(in_flight).await?;
                self.replies.flush().await;
                self.claim_until_done(channel, counted).await?;
                return Ok(());
            }
            // Only cancel-safe waits race here (a receive, a sleep, a token): rows taken from
            // the hand-off are always passed on before the next wait.
            tokio::select! {
                handed = self.handoffs.recv() => {
                    let Some(queued) = handed else { return Ok(()) };
                    let mut rows = self.committed_rows(queued).await;
                    // Everything already waiting goes in the same round.
                    while rows.len() < batch {
                        match self.handoffs.try_recv() {
                            Ok(more) => rows.extend(self.committed_rows(more).await),
                            Err(_) => break,
                        }
                    }
                    if !rows.is_empty() {
                        self.send_round(channel, in_flight, rows).await?;
                    }
                    self.count_backlog(counted, false).await;
                }
                _ = tokio::time::sleep_until(next_claim.into()) => {
                    self.claim_until_done(channel, counted).await?;
                    next_claim = Instant::now() + poll;
                }
                _ = self.stop.cancelled() => {}
                _ = broken.cancelled() => {}
            }
        }
    }

    /// The rows of a hand-off that are in the database: all of a committed transaction's; of
    /// an uncertain commit, those the database has (asked until it answers).
    async fn committed_rows(&self, queued: Queued) -> Vec<OutboxRow> {
        let rows = match queued {
            Queued::Committed(rows) => return rows,
            Queued::Uncertain(rows) => rows,
        };
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        loop {
            match outbox::unpublished_of(&self.pool, &ids).await {
                Ok(present) => {
                    let rows: Vec<OutboxRow> = rows
                        .into_iter()
                        .filter(|r| present.contains(&r.id))
                        .collect();
                    self.health.add_outbox_backlog(rows.len() as i64);
                    return rows;
                }
                Err(error) => {
                    if self.stop.is_cancelled() {
                        // Left to whoever adopts this process's rows.
                        return Vec::new();
                    }
                    let delay = backoff
                        .next()
                        .unwrap_or(self.settings.worker.max_retry_delay);
                    tracing::warn!(%error, retry_in = ?delay, "checking rows of an uncertain commit");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Publishes a round of handed-off rows and passes its confirms to the settling task. A
    /// publish that fails ends the session, after passing the round on (its rows without a
    /// confirm are published again by the next session).
    async fn send_round(
        &self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        rows: Vec<OutboxRow>,
    ) -> Result<(), RelayError> {
        self.replies.hand_off(&rows);
        let (confirms, failure) = publish_rows(channel, &self.settings, &rows).await;
        in_flight
            .send(InFlight::Round { rows, confirms })
            .await
            .map_err(|_| RelayError::SettlerStopped)?;
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
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
            stop: self.stop.clone(),
            vacuum: self.vacuum.clone(),
            connection: None,
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

    /// The database path: claims, publishes and settles rounds of rows until none is due.
    async fn claim_until_done(
        &self,
        channel: &Channel,
        counted: &mut Instant,
    ) -> Result<(), RelayError> {
        loop {
            let round = self.claimed_round(channel).await?;
            self.count_backlog(counted, round.rows == 0).await;
            // Held rows are set aside with a backoff (`outbox::settle`): they do not spin.
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
            outbox_settings.orphan_after.as_secs_f64(),
            outbox_settings.batch_size,
        )
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Round::default());
        }
        let (confirms, failure) = publish_rows(channel, &self.settings, &rows).await;
        let replies = self.replies.publish(&rows).await;
        if let Some(error) = failure {
            // Nothing is marked: the rows stay claimable.
            return Err(error);
        }
        let settler = self.settler();
        let (mut settled, unconfirmed) = settler.confirmations(&rows, confirms, false).await;
        settled.add(settle_replies(&rows, &replies));
        if !unconfirmed.is_empty() {
            return Err(RelayError::ConfirmTimeout(outbox_settings.confirm_timeout));
        }
        outbox::settle(&mut tx, &settled).await?;
        tx.commit().await?;
        settler.account(&settled);
        Ok(Round {
            rows: rows.len(),
            held: settled.held.len(),
        })
    }
}

/// Tells the other processes that this one's relay is alive, every `interval` until `stop`, so
/// that they do not adopt its rows while it is only reconnecting; forgets it at stop.
pub async fn heartbeat(pool: PgPool, origin: Uuid, interval: Duration, stop: CancellationToken) {
    loop {
        if let Err(error) = outbox::heartbeat(&pool, origin).await {
            tracing::debug!(%error, "relay heartbeat failed; retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Err(error) = outbox::forget_origin(&pool, origin).await {
        tracing::debug!(%error, "forgetting this relay's origin failed");
    }
}

/// What the publishing side passes to the settling task.
enum InFlight {
    Round {
        rows: Vec<OutboxRow>,
        /// One per row; `None` where the publish itself failed, and for replies (published
        /// and marked by the reply task).
        confirms: Vec<Option<PublisherConfirm>>,
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
    stop: CancellationToken,
    vacuum: PendingVacuum,
    /// The connection rounds are marked on, kept from one round to the next while it works: the
    /// pool tests a connection with a round trip each time it takes one back.
    connection: Option<(PoolConnection<Postgres>, Instant)>,
}

/// Settles rounds until the publishing side stops. Returns the rows it could not confirm (in
/// publish order), and the session's failure if a confirm failed or timed out.
async fn settle_in_order(
    mut settler: Settler,
    mut rounds: mpsc::Receiver<InFlight>,
    broken: CancellationToken,
) -> (Vec<OutboxRow>, Result<(), RelayError>) {
    let mut unconfirmed_rows = Vec::new();
    let mut failure = Ok(());
    while let Some(item) = rounds.recv().await {
        match item {
            InFlight::Round { rows, confirms } => {
                let gone = failure.is_err();
                let (settled, unconfirmed) = settler.confirmations(&rows, confirms, gone).await;
                if !unconfirmed.is_empty() && failure.is_ok() {
                    failure = Err(RelayError::ConfirmTimeout(
                        settler.settings.outbox.confirm_timeout,
                    ));
                    broken.cancel();
                }
                let mut unconfirmed = unconfirmed.into_iter().peekable();
                for (i, row) in rows.into_iter().enumerate() {
                    if unconfirmed.next_if_eq(&i).is_some() {
                        unconfirmed_rows.push(row);
                    }
                }
                settler.mark(&settled).await;
                settler.account(&settled);
            }
            InFlight::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
    (unconfirmed_rows, failure)
}

impl Settler {
    /// Sorts the rows by what the broker said about each; returns them and the indexes of the
    /// rows without a confirm. Once the session is `broken` (a confirm failed), confirms are
    /// only read if they already arrived: the channel is gone and no more will.
    async fn confirmations(
        &self,
        rows: &[OutboxRow],
        confirms: Vec<Option<PublisherConfirm>>,
        mut broken: bool,
    ) -> (Settled, Vec<usize>) {
        let mut settled = Settled::default();
        let mut unconfirmed = Vec::new();
        let timeout = self.settings.outbox.confirm_timeout;
        for (i, (row, confirm)) in rows.iter().zip(confirms).enumerate() {
            if row.kind == outbox::OutboxKind::Reply {
                // The reply task's.
                continue;
            }
            let Some(confirm) = confirm else {
                unconfirmed.push(i);
                continue;
            };
            let confirmation = if broken {
                match poll_once(confirm).await {
                    Some(Ok(confirmation)) => Some(confirmation),
                    _ => None,
                }
            } else {
                match tokio::time::timeout(timeout, confirm).await {
                    Ok(Ok(confirmation)) => Some(confirmation),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a publish was not confirmed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(?timeout, "no publisher confirm in time");
                        None
                    }
                }
            };
            let Some(confirmation) = confirmation else {
                broken = true;
                unconfirmed.push(i);
                continue;
            };
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    settled.published.push(row.id)
                }
                Confirmation::Ack(Some(_)) => {
                    if self.settings.outbox.retry_unroutable {
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
        (settled, unconfirmed)
    }

    /// Records a settled round, retrying while the database is away: the rows are published
    /// and must not be published again. Given up only at stop (then they are published again
    /// by whoever adopts them: the same ids).
    async fn mark(&mut self, settled: &Settled) {
        if settled.done() + settled.held.len() == 0 {
            return;
        }
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        loop {
            let marked = async {
                let mut connection = match self.connection.take() {
                    Some((connection, since)) if since.elapsed() < KEPT_IDLE => connection,
                    // Idle too long: back to the pool, which tests it before it is used again.
                    _ => self.pool.acquire().await?,
                };
                outbox::settle(&mut connection, settled).await?;
                // Kept only once it worked: a failed one goes back to the pool, which closes
                // it if it is broken.
                self.connection = Some((connection, Instant::now()));
                Ok::<_, sqlx::Error>(())
            };
            match marked.await {
                Ok(()) => return,
                Err(error) => {
                    if self.stop.is_cancelled() {
                        tracing::warn!(%error, "stopping with published rows not marked");
                        return;
                    }
                    self.metrics.transient("relay");
                    let delay = backoff
                        .next()
                        .unwrap_or(self.settings.worker.max_retry_delay);
                    tracing::warn!(%error, retry_in = ?delay, "marking published rows failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Counts a settled round, whose published rows left `outbox_pending`.
    fn account(&self, settled: &Settled) {
        self.health.add_outbox_backlog(-(settled.done() as i64));
        self.vacuum.removed(settled.done());
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

/// Publishes every event row, pipelined; returns one confirm per row (`None` for replies, which
/// go out on a connection of their own, and from the first publish that failed on), and that
/// failure.
async fn publish_rows(
    channel: &Channel,
    settings: &Settings,
    rows: &[OutboxRow],
) -> (Vec<Option<PublisherConfirm>>, Option<RelayError>) {
    let mut confirms = Vec::with_capacity(rows.len());
    let mut failure = None;
    for row in rows {
        if failure.is_some() || row.kind != outbox::OutboxKind::Event {
            confirms.push(None);
            continue;
        }
        let mut body = serde_json::to_vec(&row.payload).expect("json value serialises");
        let mut properties = json_properties(&row.message_id.to_string())
            .with_type(ShortString::from(row.routing_key.as_str()))
            .with_timestamp(row.created_at.timestamp().max(0) as u64);
        if settings.amqp.event_mode == EventMode::Binary {
            let (headers, content_type, data) = crate::amqp::binary::split(&row.payload);
            body = data;
            properties = properties.with_headers(headers);
            if let Some(content_type) = content_type {
                properties = properties.with_content_type(content_type.as_str().into());
            }
        }
        let publish = channel.basic_publish(
            settings.amqp.events_exchange.as_str().into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        );
        match bounded(settings.outbox.confirm_timeout, "publishing", publish).await {
            Ok(confirm) => confirms.push(Some(confirm)),
            Err(error) => {
                confirms.push(None);
                failure = Some(error.into());
            }
        }
    }
    (confirms, failure)
}
