//! Committing outbox rows and passing them to the relay in commit order.

use std::{sync::Arc, time::Duration};

use sqlx::{Postgres, Transaction};
use tokio::sync::{Mutex, mpsc};

use crate::{db::outbox::OutboxRow, health::Health};

/// What the committing side passes to the relay.
pub(super) enum Queued {
    /// Rows of a committed transaction.
    Committed(Vec<OutboxRow>),
    /// Rows of a transaction whose commit failed in a way that leaves the outcome unknown (the
    /// connection went during the commit): the relay publishes those that exist.
    Uncertain(Vec<OutboxRow>),
}

/// The committing side: commits a transaction and passes its outbox rows to the relay.
#[derive(Clone)]
pub struct Handoff {
    sender: mpsc::Sender<Queued>,
    health: Health,
    /// Held from a commit until its rows are queued, so that the relay's queue is in commit
    /// order: of two transactions that wait for each other, the second cannot queue first.
    order: Arc<Mutex<()>>,
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
            order: Arc::new(Mutex::new(())),
            stall,
        }
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
    /// Room in the relay's queue is taken before the commit (waiting for it, if the queue is
    /// full, while nothing is committed yet), so that nothing stands between a commit and the
    /// queueing of its rows: only a caller that drops this future during the commit itself could
    /// lose track of them, and no caller does (none wraps it in a timeout of its own).
    pub async fn commit(
        &self,
        tx: Transaction<'_, Postgres>,
        rows: Vec<OutboxRow>,
    ) -> sqlx::Result<()> {
        let _order = self.order.lock().await;
        let room = if rows.is_empty() {
            None
        } else {
            // The relay owns the receiver for the life of the process.
            self.sender.reserve().await.ok()
        };
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
                if let Some(room) = room {
                    self.health.add_outbox_backlog(rows.len() as i64);
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
