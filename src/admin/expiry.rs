//! The expiry sweeper: pending bindings past their `expires_at` become `expired` and publish
//! `binding.expired`. A later login of the identity starts afresh.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Admin;
use crate::db::{
    bindings,
    locks::LockSet,
    outbox::{self, NewOutbox},
};
use crate::domain::{
    effects::{self, Effect},
    events::IdentityRef,
};

const BATCH: i64 = 200;

impl Admin {
    /// Expires what is overdue; returns how many bindings expired.
    pub async fn expire_overdue(&self) -> sqlx::Result<usize> {
        let mut total = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let overdue = bindings::overdue(&mut tx, BATCH).await?;
            if overdue.is_empty() {
                tx.commit().await?;
                return Ok(total);
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
                if let Effect::Emit(event) =
                    effects::binding_expired(&b.user_pool_id, b.id, identity, now)
                {
                    events.event(event);
                }
            }
            let published = outbox::insert_many(&mut tx, self.origin, events).await?;
            self.commit(tx, published).await?;
            total += expired.len();

            if (overdue.len() as i64) < BATCH {
                return Ok(total);
            }
        }
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
