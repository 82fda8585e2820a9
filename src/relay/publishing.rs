//! A broker session's rounds: rows handed off (and rows a previous session could not confirm)
//! published in commit order, their confirms passed to the settling task.

use std::time::{Duration, Instant};

use lapin::{Channel, PublisherConfirm, options::BasicPublishOptions, types::ShortString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    IN_FLIGHT_ROUNDS, Relay, RelayError,
    confirms::{InFlight, settle_in_order},
    handoff::Queued,
};
use crate::{
    amqp::{bounded, json_properties},
    db::outbox::{self, OutboxRow},
    settings::{EventMode, Settings},
};

impl Relay {
    pub(super) async fn publish_loop(&mut self, channel: &Channel) -> Result<(), RelayError> {
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
        // The settling task's failure (a refusal, a missing confirm) is why the rounds stopped.
        settled.and(result)
    }

    pub(super) async fn rounds(
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
        // Then the events kept while the relay waited after a refusal.
        while !self.deferred.is_empty() {
            if broken.is_cancelled() {
                return Err(RelayError::ConfirmTimeout(timeout));
            }
            let take = self.deferred.len().min(batch);
            let rows: Vec<OutboxRow> = self.deferred.drain(..take).collect();
            self.send_round(channel, in_flight, rows).await?;
        }
        // Rows queued before this session, then rows refused earlier, left to claims or left by
        // stopped processes.
        self.catch_up(channel, in_flight, counted).await?;
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
                    self.catch_up(channel, in_flight, counted).await?;
                    next_claim = Instant::now() + poll;
                }
                _ = self.stop.cancelled() => {}
                _ = broken.cancelled() => {}
            }
        }
    }

    /// Publishes what is queued, then what is due in the database. Rows committed while the
    /// queue was full were left there, after everything queued and before anything queued
    /// later (no commit queues while they wait): once every queued round is out they are
    /// claimed, and the last of them under the commit lock, so that none is left behind when
    /// commits start queueing again.
    async fn catch_up(
        &mut self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        counted: &mut Instant,
    ) -> Result<(), RelayError> {
        loop {
            while let Ok(queued) = self.handoffs.try_recv() {
                let rows = self.committed_rows(queued).await;
                if !rows.is_empty() {
                    self.send_round(channel, in_flight, rows).await?;
                }
            }
            self.claim_until_done(channel, counted).await?;
            if !self.order.overflowing() {
                return Ok(());
            }
            let order = self.order.clone();
            let _committing = order.lock().await;
            if !self.handoffs.is_empty() {
                continue;
            }
            self.claim_until_done(channel, counted).await?;
            order.caught_up();
            return Ok(());
        }
    }

    /// The rows of a hand-off that are in the database: all of a committed transaction's; of
    /// an uncertain commit, those the database has (asked until it answers).
    pub(super) async fn committed_rows(&self, queued: Queued) -> Vec<OutboxRow> {
        let rows = match queued {
            Queued::Committed(rows) => return rows,
            Queued::Uncertain(rows) => rows,
        };
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        loop {
            let stall = self.settings.database.stall_timeout;
            let present = tokio::time::timeout(stall * 4, self.settled_rows_of(&ids))
                .await
                .unwrap_or_else(|_| Err(crate::db::stalled("checking an uncertain commit")));
            match present {
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

    /// Which of `ids` exist unpublished, once that is final: a commit cut short on this side may
    /// still be alive on the server (a COMMIT late on the wire, one waiting for a synchronous
    /// standby), and rows read before it ended would be missed for good. So every write
    /// transaction of this program in progress now is waited out first (it commits, or the
    /// server ends it: `idle_in_transaction_session_timeout` for one whose COMMIT never came).
    /// Meanwhile the relay publishes nothing, which keeps commit order.
    pub(super) async fn settled_rows_of(&self, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
        let (pids, started) = outbox::writers_in_progress(&self.pool).await?;
        if !pids.is_empty() {
            let mut waited = 0u32;
            while outbox::still_writing(&self.pool, &pids, &started).await? > 0 {
                if waited.is_multiple_of(50) {
                    tracing::info!(
                        transactions = pids.len(),
                        "waiting for the transactions in progress to end before checking an \
                         uncertain commit"
                    );
                }
                waited += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        outbox::unpublished_of(&self.pool, ids).await
    }

    /// Publishes a round of handed-off rows and passes its confirms to the settling task. A
    /// publish that fails ends the session, after passing the round on (its rows without a
    /// confirm are published again by the next session).
    pub(super) async fn send_round(
        &self,
        channel: &Channel,
        in_flight: &mpsc::Sender<InFlight>,
        rows: Vec<OutboxRow>,
    ) -> Result<(), RelayError> {
        self.replies.hand_off(&rows).await;
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
    pub(super) async fn barrier(
        &self,
        in_flight: &mpsc::Sender<InFlight>,
    ) -> Result<(), RelayError> {
        let (done, settled) = tokio::sync::oneshot::channel();
        in_flight
            .send(InFlight::Barrier(done))
            .await
            .map_err(|_| RelayError::SettlerStopped)?;
        settled.await.map_err(|_| RelayError::SettlerStopped)
    }
}

/// Publishes every event row, pipelined; returns one confirm per row (`None` for replies, which
/// go out on a connection of their own, and from the first publish that failed on), and that
/// failure.
pub(super) async fn publish_rows(
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
