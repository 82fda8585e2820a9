//! The relay's own vacuum of `outbox_pending`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use sqlx::PgPool;

use super::VACUUM_AFTER_REMOVED;
use crate::{db::outbox, metrics::Metrics};

/// Counts the rows the relay removed from `outbox_pending` and vacuums the table every
/// `VACUUM_AFTER_REMOVED` of them, in a task of its own, one vacuum at a time.
#[derive(Clone)]
pub(super) struct PendingVacuum {
    pool: PgPool,
    removed: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    metrics: Metrics,
}

impl PendingVacuum {
    pub(super) fn new(pool: PgPool, metrics: Metrics) -> Self {
        Self {
            pool,
            removed: Arc::default(),
            running: Arc::default(),
            metrics,
        }
    }

    pub(super) fn removed(&self, rows: usize) {
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
