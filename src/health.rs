//! Liveness of the process's dependencies, written by the worker and the relay, read by
//! `/readyz`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicI64, Ordering},
};

use serde::Serialize;

#[derive(Clone, Default)]
pub struct Health(Arc<Flags>);

/// A consumer of the worker: each must be consuming for the process to be ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// The work queue's (`login.completed`).
    Logins,
    /// The commands queue's (`binding.resolve`, `user.unlink`).
    Commands,
}

impl Consumer {
    /// For logs and consumer tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logins => "logins",
            Self::Commands => "commands",
        }
    }
}

#[derive(Default)]
struct Flags {
    /// Per [`Consumer`], in declaration order.
    consumers: [AtomicBool; 2],
    publisher: AtomicBool,
    /// Outbox rows not yet published, as the relay last counted them.
    outbox_backlog: AtomicI64,
    /// A task of the process (worker, relay, sweeper, pruner, HTTP server) ended unexpectedly;
    /// the process is stopping.
    failed: AtomicBool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// The database answers.
    pub database: bool,
    /// Connected to the broker, topology declared, consuming the work queue and the commands
    /// queue.
    pub consumer: bool,
    /// The outbox relay is connected with publisher confirms.
    pub publisher: bool,
    /// Every task of the process runs (false once one ended unexpectedly: the process stops).
    pub tasks: bool,
}

impl Health {
    pub fn set_consumer(&self, consumer: Consumer, up: bool) {
        self.0.consumers[consumer as usize].store(up, Ordering::Relaxed);
    }

    pub fn set_publisher(&self, up: bool) {
        self.0.publisher.store(up, Ordering::Relaxed);
    }

    /// A task ended unexpectedly: not ready from now on.
    pub fn set_failed(&self) {
        self.0.failed.store(true, Ordering::Relaxed);
    }

    pub fn set_outbox_backlog(&self, rows: i64) {
        self.0.outbox_backlog.store(rows, Ordering::Relaxed);
    }

    /// Rows committed (positive) or published (negative) since the last count.
    pub fn add_outbox_backlog(&self, rows: i64) {
        self.0.outbox_backlog.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn outbox_backlog(&self) -> i64 {
        self.0.outbox_backlog.load(Ordering::Relaxed)
    }

    /// Readiness, given whether the database answers (asked by the caller, every time: the
    /// worker's own view changes only when it touches the database).
    pub fn readiness(&self, database: bool) -> Readiness {
        let consumer = self.0.consumers.iter().all(|up| up.load(Ordering::Relaxed));
        let publisher = self.0.publisher.load(Ordering::Relaxed);
        let tasks = !self.0.failed.load(Ordering::Relaxed);
        Readiness {
            ready: database && consumer && publisher && tasks,
            database,
            consumer,
            publisher,
            tasks,
        }
    }
}
