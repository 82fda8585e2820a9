//! The expiry sweeper: pending bindings past their `expires_at` become `expired` and publish
//! `binding.expired`. A later login of the identity starts afresh.

use std::time::Duration;

use chrono::Utc;
use sqlx::Acquire;
use tokio_util::sync::CancellationToken;

use super::Admin;
use crate::db::{
    self, bindings,
    locks::LockSet,
    outbox::{self, NewOutbox},
};
use crate::domain::{effects, events::IdentityRef};

const BATCH: i64 = 200;

impl Admin {
    /// Expires what is overdue; returns how many bindings expired. Each round's waits for the
    /// database are bounded (the commit by the relay's hand-off), and a connection that got no
    /// answer is closed.
    pub async fn expire_overdue(&self) -> sqlx::Result<usize> {
        let mut total = 0;
        loop {
            let deadline = tokio::time::Instant::now() + self.relay.stall();
            let mut conn = db::within(deadline, "taking a connection", self.pool.acquire()).await?;
            let expired = match self.expire_round(&mut conn, deadline).await {
                Ok(expired) => expired,
                Err(error) => {
                    if db::unusable_connection(&error) {
                        conn.close_on_drop();
                    }
                    return Err(error);
                }
            };
            total += expired;
            if (expired as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Expires up to `BATCH` overdue bindings in one transaction; returns how many.
    async fn expire_round(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
        deadline: tokio::time::Instant,
    ) -> sqlx::Result<usize> {
        let mut tx = db::within(deadline, "beginning an expiry", conn.begin()).await?;
        let ready = db::within(deadline, "expiring bindings", async {
            let overdue = bindings::overdue(&mut tx, BATCH).await?;
            if overdue.is_empty() {
                return Ok(None);
            }
            // The same identity locks as the worker: a login and the sweeper never both expire
            // one binding.
            let mut locks = LockSet::new();
            for b in &overdue {
                locks.identity(&b.user_pool_id, &b.connection, &b.external_id);
            }
            locks.acquire(&mut tx).await?;
            let ids: Vec<_> = overdue.iter().map(|b| b.id).collect();
            let expired = bindings::expire(&mut tx, &ids).await?;
            let now = Utc::now();
            let mut events = NewOutbox::default();
            for b in &expired {
                let identity = IdentityRef {
                    connection: b.connection.clone(),
                    external_id: b.external_id.clone(),
                };
                events.event(effects::binding_expired(
                    &b.user_pool_id,
                    b.id,
                    identity,
                    now,
                ));
            }
            let published = outbox::insert_many(&mut tx, self.origin, events).await?;
            Ok(Some((expired.len(), published)))
        })
        .await?;
        let Some((expired, published)) = ready else {
            db::within(deadline, "ending an expiry", tx.commit()).await?;
            return Ok(0);
        };
        self.commit(tx, published).await?;
        Ok(expired)
    }

    pub async fn run_expiry(self, interval: Duration, stop: CancellationToken) {
        loop {
            match self.expire_overdue().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "pending bindings expired"),
                Err(error) => tracing::warn!(%error, "expiring bindings failed; retrying later"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
