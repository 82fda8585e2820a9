//! Liveness of the process's dependencies, written by the worker and the relay, read by
//! `/readyz`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicI64, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::SystemFault;

/// A batch of logins at least this big means more were waiting than one batch takes at once.
pub const QUEUED_BATCH: usize = 64;

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
    /// Faults of the system the process is waiting out, at most one per part.
    faults: Mutex<Vec<Fault>>,
    /// Connections whose directory is not answering as it should, by connection.
    directories: Mutex<std::collections::BTreeMap<String, DirectoryTrouble>>,
    /// When a batch of logins last found more waiting than it could take.
    logins_queued_at: Mutex<Option<std::time::Instant>>,
}

/// A connection's directory that cannot be asked now (rate-limited, its quota used up, failing):
/// its logins that need it wait; the process is still ready, since every other login flows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DirectoryTrouble {
    pub connection: String,
    /// `rate_limited`, `quota_exhausted` or `failing`.
    pub state: &'static str,
    /// When it was first seen in this state.
    pub since: DateTime<Utc>,
}

/// A fault of the system (not of any message) that a part of the process is waiting out: it
/// retries with backoff and takes no new work meanwhile.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fault {
    /// The part that met it: `logins`, `commands`, `relay`.
    pub component: &'static str,
    /// What kind of fault (`insufficient_privilege`, `schema_mismatch`, `database_read_only`,
    /// `database_timeout`, ...).
    pub reason: &'static str,
    /// The database's SQLSTATE, when it gave one. What it said in words is in the log only:
    /// `/readyz` needs no token, and the words name tables and roles.
    pub sqlstate: Option<String>,
    /// When it was first met (the same reason met again keeps its start).
    pub since: DateTime<Utc>,
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
    /// Faults of the system being waited out (empty when none): each names its part, its kind
    /// and what the database said.
    pub faults: Vec<Fault>,
    /// Connections' directories that cannot be asked now (empty when none). They do not make
    /// the process unready: only the logins that need them wait.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<DirectoryTrouble>,
}

impl Health {
    pub fn set_consumer(&self, consumer: Consumer, up: bool) {
        self.0.consumers[consumer as usize].store(up, Ordering::Relaxed);
    }

    pub fn set_publisher(&self, up: bool) {
        self.0.publisher.store(up, Ordering::Relaxed);
    }

    /// A task ended unexpectedly: not ready from now on.
    /// A batch of logins found at least [`QUEUED_BATCH`] waiting: logins are queueing up.
    pub fn logins_queued(&self) {
        *self.0.logins_queued_at.lock().expect("not poisoned") = Some(std::time::Instant::now());
    }

    /// Whether logins queued up within `window`: work that can wait (webhook deliveries) then
    /// leaves the machine to them.
    pub fn logins_queued_within(&self, window: std::time::Duration) -> bool {
        self.0
            .logins_queued_at
            .lock()
            .expect("not poisoned")
            .is_some_and(|at| at.elapsed() < window)
    }

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

    /// The state `connection`'s directory was last seen in (`ok` clears it).
    pub fn set_directory(&self, connection: &str, state: &'static str) {
        let mut directories = self.0.directories.lock().expect("not poisoned");
        if state == "ok" {
            directories.remove(connection);
            return;
        }
        let since = match directories.get(connection) {
            Some(old) if old.state == state => old.since,
            _ => Utc::now(),
        };
        directories.insert(
            connection.to_owned(),
            DirectoryTrouble {
                connection: connection.to_owned(),
                state,
                since,
            },
        );
    }

    /// `component` met `fault` (the database's SQLSTATE `sqlstate`), and is waiting it out.
    pub fn set_fault(&self, component: &'static str, fault: SystemFault, sqlstate: Option<&str>) {
        let sqlstate = sqlstate
            .filter(|code| code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(str::to_owned);
        let mut faults = self.0.faults.lock().expect("not poisoned");
        let since = match faults.iter().position(|f| f.component == component) {
            Some(i) => {
                let old = faults.remove(i);
                if old.reason == fault.as_str() {
                    old.since
                } else {
                    Utc::now()
                }
            }
            None => Utc::now(),
        };
        faults.push(Fault {
            component,
            reason: fault.as_str(),
            sqlstate,
            since,
        });
    }

    /// `component` works again; `true` if it had a fault.
    pub fn clear_fault(&self, component: &'static str) -> bool {
        let mut faults = self.0.faults.lock().expect("not poisoned");
        let before = faults.len();
        faults.retain(|f| f.component != component);
        faults.len() != before
    }

    /// Whether `component` is waiting out a fault.
    pub fn faulted(&self, component: &'static str) -> bool {
        let faults = self.0.faults.lock().expect("not poisoned");
        faults.iter().any(|f| f.component == component)
    }

    /// Readiness, given whether the database answers (asked by the caller, every time: the
    /// worker's own view changes only when it touches the database).
    pub fn readiness(&self, database: bool) -> Readiness {
        let consumer = self.0.consumers.iter().all(|up| up.load(Ordering::Relaxed));
        let publisher = self.0.publisher.load(Ordering::Relaxed);
        let tasks = !self.0.failed.load(Ordering::Relaxed);
        let faults = self.0.faults.lock().expect("not poisoned").clone();
        let directories = self
            .0
            .directories
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        Readiness {
            ready: database && consumer && publisher && tasks && faults.is_empty(),
            database,
            consumer,
            publisher,
            tasks,
            faults,
            directories,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_makes_the_process_unready_until_cleared_and_keeps_its_start() {
        let health = Health::default();
        health.set_consumer(Consumer::Logins, true);
        health.set_consumer(Consumer::Commands, true);
        health.set_publisher(true);
        assert!(health.readiness(true).ready);
        health.set_fault("logins", SystemFault::Privilege, Some("42501"));
        let first = health.readiness(true);
        assert!(!first.ready);
        assert_eq!(first.faults.len(), 1);
        assert_eq!(first.faults[0].reason, "insufficient_privilege");
        assert_eq!(first.faults[0].sqlstate.as_deref(), Some("42501"));
        assert!(health.faulted("logins") && !health.faulted("relay"));
        health.set_fault("logins", SystemFault::Privilege, Some("42501"));
        let again = health.readiness(true);
        assert_eq!(
            (again.faults.len(), again.faults[0].since),
            (1, first.faults[0].since)
        );
        health.set_fault("logins", SystemFault::ReadOnly, Some("not a sqlstate"));
        assert_eq!(health.readiness(true).faults[0].sqlstate, None);
        assert!(health.clear_fault("logins"));
        assert!(!health.clear_fault("logins"));
        assert!(health.readiness(true).ready);
    }
}
