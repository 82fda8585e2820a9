//! Committing outbox rows and passing them to the relay in commit order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{Postgres, Transaction};
use tokio::sync::{Mutex, MutexGuard, mpsc, mpsc::error::TrySendError};

use crate::{
    db::outbox::{self, OutboxRow},
    health::Health,
};

/// What the committing side passes to the relay.
pub(super) enum Queued {
    /// Rows of a committed transaction.
    Committed(Vec<OutboxRow>),
    /// Rows of a transaction whose commit failed in a way that leaves the outcome unknown (the
    /// connection went during the commit): the relay publishes those that exist.
    Uncertain(Vec<OutboxRow>),
}

/// What the committing side and the relay share to keep rows in commit order.
#[derive(Clone, Default)]
pub(super) struct CommitOrder {
    /// Held from a commit until its rows are queued, so that the relay's queue is in commit
    /// order: of two transactions that wait for each other, the second cannot queue first.
    lock: Arc<Mutex<()>>,
    /// Set by a commit that found the relay's queue full: from then on commits leave their rows
    /// to the relay's claims (in id order) instead of queueing them, until the relay has read
    /// every such row back and clears it, so that no later row overtakes them.
    overflowing: Arc<AtomicBool>,
}

impl CommitOrder {
    pub(super) async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    pub(super) fn overflowing(&self) -> bool {
        self.overflowing.load(Ordering::Acquire)
    }

    /// Called with the lock held, once no row left to claims is unpublished.
    pub(super) fn caught_up(&self) {
        self.overflowing.store(false, Ordering::Release);
    }
}

/// The committing side: commits a transaction and passes its outbox rows to the relay.
#[derive(Clone)]
pub struct Handoff {
    sender: mpsc::Sender<Queued>,
    health: Health,
    order: CommitOrder,
    /// The longest a commit may go without the database answering (`database.stall_timeout`):
    /// every committer waits for the one holding `order`, so one commit that hangs must not hold
    /// them all for as long as the kernel keeps its socket.
    stall: Duration,
}

impl Handoff {
    pub(super) fn new(sender: mpsc::Sender<Queued>, health: Health, stall: Duration) -> Self {
        Self {
            sender,
            health,
            order: CommitOrder::default(),
            stall,
        }
    }

    pub(super) fn order(&self) -> CommitOrder {
        self.order.clone()
    }

    /// The bound on a wait for the database (`database.stall_timeout`): committers bound the
    /// rest of their transaction with it too.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// Commits `tx` and queues `rows` (written by it) for publishing. A commit that gets no
    /// answer within the bound is given up (the caller closes its connection): its fate is
    /// unknown, so its rows are queued as uncertain and published if they exist.
    ///
    /// Room in the relay's queue is taken before the commit, so that nothing stands between a
    /// commit and the queueing of its rows: only a caller that drops this future during the
    /// commit itself could lose track of them, and no caller does (none wraps it in a timeout of
    /// its own). When the queue is full (the relay cannot publish: the broker is away) nobody
    /// waits for room: the rows are made claimable in the same transaction and the relay reads
    /// them back from the database once it can publish again (see [`CommitOrder`]).
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        rows: Vec<OutboxRow>,
    ) -> sqlx::Result<()> {
        let _order = self.order.lock().await;
        let mut room = None;
        if !rows.is_empty() {
            if !self.order.overflowing() {
                match self.sender.try_reserve() {
                    Ok(permit) => room = Some(permit),
                    Err(TrySendError::Full(())) => {
                        tracing::warn!("the relay's queue is full; rows are left to its claims");
                        self.order.overflowing.store(true, Ordering::Release);
                    }
                    // The relay has stopped: the rows are adopted by whoever publishes next.
                    Err(TrySendError::Closed(())) => {}
                }
            }
            if room.is_none() {
                let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
                match tokio::time::timeout(self.stall, outbox::leave_to_claims(&mut tx, &ids)).await
                {
                    Ok(left) => left?,
                    Err(_) => return Err(crate::db::stalled("leaving rows to claims")),
                }
            }
        }
        let committed = match tokio::time::timeout(self.stall, tx.commit()).await {
            Ok(committed) => committed,
            Err(_) => Err(crate::db::stalled("a commit")),
        };
        match committed {
            Ok(()) => {
                #[cfg(feature = "failpoints")]
                if crate::failpoint::armed("exit_after_commit") {
                    // For the fault tests: a crash after the commit, before the relay or the
                    // broker heard of it.
                    std::process::exit(3);
                }
                self.health.add_outbox_backlog(rows.len() as i64);
                if let Some(room) = room {
                    room.send(Queued::Committed(rows));
                }
                Ok(())
            }
            Err(error) => {
                // A commit that failed on its way back may have happened all the same.
                if let Some(room) = room
                    && crate::db::is_transient(&error)
                {
                    room.send(Queued::Uncertain(rows));
                }
                Err(error)
            }
        }
    }
}
