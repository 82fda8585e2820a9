//! Awaiting each round's publisher confirms in order, recording what became of each row, and
//! marking it in the database.

use std::{sync::Arc, time::Instant};

use futures_lite::future::poll_once;
use lapin::{Confirmation, PublisherConfirm};
use sqlx::{PgPool, Postgres, pool::PoolConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RelayError, vacuum::PendingVacuum};
use crate::{
    db::{
        KEPT_IDLE,
        outbox::{self, OutboxRow, Settled},
    },
    health::Health,
    metrics::{KindLabel, Metrics},
    settings::Settings,
};

/// What the publishing side passes to the settling task.
pub(super) enum InFlight {
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
pub(super) struct Confirmer {
    pub(super) settings: Arc<Settings>,
    pub(super) pool: PgPool,
    pub(super) metrics: Metrics,
    pub(super) health: Health,
    pub(super) stop: CancellationToken,
    pub(super) vacuum: PendingVacuum,
    /// The connection rounds are marked on, kept from one round to the next while it works: the
    /// pool tests a connection with a round trip each time it takes one back.
    pub(super) connection: Option<(PoolConnection<Postgres>, Instant)>,
}

/// Settles rounds until the publishing side stops. Returns the rows it could not confirm (in
/// publish order), and the session's failure if a confirm failed or timed out.
pub(super) async fn settle_in_order(
    mut settler: Confirmer,
    mut rounds: mpsc::Receiver<InFlight>,
    broken: CancellationToken,
) -> (Vec<OutboxRow>, Result<(), RelayError>) {
    let mut unconfirmed_rows = Vec::new();
    let mut failure = Ok(());
    while let Some(item) = rounds.recv().await {
        match item {
            InFlight::Round { rows, confirms } => {
                let gone = failure.is_err();
                let fates = settler.confirmations(&rows, confirms, gone).await;
                let settled = settled(&rows, &fates);
                let refused = fates.iter().filter(|f| **f == RowFate::Refused).count();
                let mut some_unconfirmed = false;
                for (row, fate) in rows.into_iter().zip(fates) {
                    if fate == RowFate::Unconfirmed {
                        some_unconfirmed = true;
                        unconfirmed_rows.push(row);
                    }
                }
                if some_unconfirmed && failure.is_ok() {
                    failure = Err(RelayError::ConfirmTimeout(
                        settler.settings.outbox.confirm_timeout,
                    ));
                    broken.cancel();
                }
                // The rounds after this one are published again by the next session, on a
                // fresh channel: the refused rows are set aside.
                if refused > 0 && failure.is_ok() {
                    failure = Err(RelayError::Refused(refused));
                    broken.cancel();
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

/// What became of one row of a round: one value per row, from which the database's record of
/// the round is made (see [`settled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowFate {
    /// An event the broker took (`unrouted`: no queue was bound for its type; kept for replay).
    Published { unrouted: bool },
    /// A reply delivered, or given up after it broke a connection on its own: it goes.
    Replied,
    /// Not taken (an unroutable event with `outbox.retry_unroutable`; a reply with no
    /// connection to go out on): set aside, tried again after a growing delay.
    Held,
    /// Refused by the broker (a nack): set aside like a held row, and the session ends.
    Refused,
    /// No confirm: published again, first, by the next session.
    Unconfirmed,
    /// A reply of a handed-off round: the reply task publishes and settles it.
    LeftToReplies,
}

/// The database's record of a round: each row filed by its fate (unconfirmed rows and replies
/// left to the reply task are not recorded).
pub(super) fn settled(rows: &[OutboxRow], fates: &[RowFate]) -> Settled {
    let mut settled = Settled::default();
    for (row, fate) in rows.iter().zip(fates) {
        match fate {
            RowFate::Published { unrouted: false } => settled.published.push(row.id),
            RowFate::Published { unrouted: true } => settled.unrouted.push(row.id),
            RowFate::Replied => settled.replies.push(row.id),
            RowFate::Held | RowFate::Refused => settled.held.push(row.id),
            RowFate::Unconfirmed | RowFate::LeftToReplies => {}
        }
    }
    settled
}

impl Confirmer {
    /// What the broker said about each row, in order. Once the session is `broken` (a confirm
    /// failed), confirms are only read if they already arrived: the channel is gone and no more
    /// will.
    pub(super) async fn confirmations(
        &self,
        rows: &[OutboxRow],
        confirms: Vec<Option<PublisherConfirm>>,
        mut broken: bool,
    ) -> Vec<RowFate> {
        let mut fates = Vec::with_capacity(rows.len());
        for (row, confirm) in rows.iter().zip(confirms) {
            let fate = if row.kind == outbox::OutboxKind::Reply {
                RowFate::LeftToReplies
            } else {
                match self.confirmation(confirm, broken).await {
                    Some(confirmation) => self.fate_of(row, confirmation),
                    None => {
                        broken = true;
                        RowFate::Unconfirmed
                    }
                }
            };
            fates.push(fate);
        }
        let unrouted = fates
            .iter()
            .filter(|f| **f == RowFate::Published { unrouted: true })
            .count();
        if unrouted > 0 {
            self.metrics.outbox_unrouted.inc_by(unrouted as u64);
            tracing::warn!(
                count = unrouted,
                "events published with no queue bound for their type; kept for replay"
            );
        }
        fates
    }

    /// One row's confirm, if it comes (in time, or at all once the session is broken).
    async fn confirmation(
        &self,
        confirm: Option<PublisherConfirm>,
        broken: bool,
    ) -> Option<Confirmation> {
        let confirm = confirm?;
        if broken {
            return match poll_once(confirm).await {
                Some(Ok(confirmation)) => Some(confirmation),
                _ => None,
            };
        }
        let timeout = self.settings.outbox.confirm_timeout;
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
    }

    fn fate_of(&self, row: &OutboxRow, confirmation: Confirmation) -> RowFate {
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {
                RowFate::Published { unrouted: false }
            }
            Confirmation::Ack(Some(_)) if self.settings.outbox.retry_unroutable => RowFate::Held,
            Confirmation::Ack(Some(_)) => {
                tracing::debug!(event_type = %row.routing_key, event_id = %row.message_id, "unroutable event");
                RowFate::Published { unrouted: true }
            }
            Confirmation::Nack(_) => {
                tracing::debug!(id = row.id, "broker refused a publish; it will be retried");
                RowFate::Refused
            }
        }
    }

    /// Records a settled round, retrying while the database is away: the rows are published
    /// and must not be published again. Given up only at stop (then they are published again
    /// by whoever adopts them: the same ids).
    pub(super) async fn mark(&mut self, settled: &Settled) {
        if settled.done() + settled.held.len() == 0 {
            return;
        }
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        let stall = self.settings.database.stall_timeout;
        loop {
            let deadline = tokio::time::Instant::now() + stall;
            let connection = match self.connection.take() {
                Some((connection, since)) if since.elapsed() < KEPT_IDLE => Ok(connection),
                // Idle too long: back to the pool, which tests it before it is used again.
                _ => crate::db::within(deadline, "taking a connection", self.pool.acquire()).await,
            };
            let marked = match connection {
                Ok(mut connection) => {
                    let marking = outbox::settle(&mut connection, settled);
                    match crate::db::within(deadline, "marking published rows", marking).await {
                        // Kept only once it worked.
                        Ok(()) => {
                            self.connection = Some((connection, Instant::now()));
                            Ok(())
                        }
                        Err(error) => {
                            // Stuck mid-statement or read-only: closed, not tested and reused.
                            if crate::db::unusable_connection(&error) {
                                connection.close_on_drop();
                            }
                            Err(error)
                        }
                    }
                }
                Err(error) => Err(error),
            };
            match marked {
                Ok(()) => {
                    if self.health.clear_fault("relay") {
                        tracing::info!("the relay marks published rows again");
                    }
                    return;
                }
                Err(error) => {
                    if self.stop.is_cancelled() {
                        tracing::warn!(%error, "stopping with published rows not marked");
                        return;
                    }
                    self.metrics.transient("relay");
                    if let crate::db::ErrorClass::System(fault) = crate::db::classify(&error) {
                        self.metrics.system_fault("relay", fault);
                        let code = crate::db::sqlstate(&error);
                        self.health.set_fault("relay", fault, code.as_deref());
                    }
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
    pub(super) fn account(&self, settled: &Settled) {
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
