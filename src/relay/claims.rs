//! The database path: rows the broker refused earlier and rows of processes that stopped,
//! claimed with `FOR UPDATE SKIP LOCKED`; and the heartbeat that keeps this process's rows its
//! own while it lives.

use std::time::{Duration, Instant};

use lapin::Channel;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Relay, RelayError,
    confirms::{RowFate, settled},
    publishing::publish_rows,
    replies::reply_fates,
};
use crate::db::outbox;

/// What one claimed round achieved.
#[derive(Default)]
pub(super) struct Round {
    rows: usize,
    /// Rows the broker did not take (nacked, or unroutable with `retry_unroutable`).
    held: usize,
}

impl Relay {
    /// The database path: claims, publishes and settles rounds of rows until none is due.
    pub(super) async fn claim_until_done(
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

    /// One round of the database path, bounded as a whole: a database that stops answering
    /// mid-round ends the session (the round's rows stay claimable; any it published are
    /// published again, with the same ids).
    pub(super) async fn claimed_round(&self, channel: &Channel) -> Result<Round, RelayError> {
        let stall = self.settings.database.stall_timeout;
        let deadline = tokio::time::Instant::now() + stall;
        let mut connection =
            crate::db::within(deadline, "taking a connection", self.pool.acquire()).await?;
        let bound = stall + self.settings.outbox.confirm_timeout;
        let round = tokio::time::timeout(bound, self.claimed_round_on(&mut connection, channel))
            .await
            .unwrap_or_else(|_| Err(crate::db::stalled("a round of claimed rows").into()));
        if let Err(RelayError::Database(error)) = &round
            && crate::db::unusable_connection(error)
        {
            connection.close_on_drop();
        }
        round
    }

    pub(super) async fn claimed_round_on(
        &self,
        connection: &mut sqlx::pool::PoolConnection<Postgres>,
        channel: &Channel,
    ) -> Result<Round, RelayError> {
        let outbox_settings = &self.settings.outbox;
        let mut tx = sqlx::Acquire::begin(&mut **connection).await?;
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
        let mut fates = settler.confirmations(&rows, confirms, false).await;
        // This round's replies are settled here, with its events.
        for (fate, reply) in fates.iter_mut().zip(reply_fates(&rows, &replies)) {
            if let Some(reply) = reply {
                *fate = reply;
            }
        }
        if fates.contains(&RowFate::Unconfirmed) {
            return Err(RelayError::ConfirmTimeout(outbox_settings.confirm_timeout));
        }
        let settled = settled(&rows, &fates);
        outbox::settle(&mut tx, &settled).await?;
        tx.commit().await?;
        settler.account(&settled);
        let refused = fates.iter().filter(|f| **f == RowFate::Refused).count();
        if refused > 0 {
            return Err(RelayError::Refused(refused));
        }
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
        // Bounded by the interval: a heartbeat that gets no answer is simply the next one.
        let beat = tokio::time::timeout(
            interval.max(Duration::from_secs(1)),
            outbox::heartbeat(&pool, origin),
        )
        .await;
        if let Err(error) = beat.unwrap_or_else(|_| Err(crate::db::stalled("a heartbeat"))) {
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
