//! CPU time the services of this machine spend, read from `/proc`: PostgreSQL's processes (the
//! server and every backend), RabbitMQ's Erlang VM, and this process's own (the same-work
//! probe runs in it). A process that starts in a window counts whole; one that ends in it is
//! lost, which leaves out nothing the runs here measure (their connections stay open).

use std::collections::HashMap;

/// Whose a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Database,
    Broker,
    Own,
}

/// CPU seconds by process at one moment.
pub struct Snapshot(HashMap<u32, (Kind, f64)>);

/// CPU seconds spent between two snapshots.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Spent {
    pub database: f64,
    pub broker: f64,
    pub own: f64,
}

impl Snapshot {
    pub fn now() -> Self {
        let own = std::process::id();
        let mut processes = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self(processes);
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let kind = if pid == own {
                Kind::Own
            } else if name.starts_with("postgres") {
                Kind::Database
            } else if name == "beam.smp" {
                Kind::Broker
            } else {
                continue;
            };
            let seconds = super::env::cpu_seconds(&stat[close + 1..]);
            processes.insert(pid, (kind, seconds));
        }
        Self(processes)
    }

    /// What was spent from `earlier` to this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Spent {
        let mut spent = Spent::default();
        for (pid, (kind, seconds)) in &self.0 {
            let before = match earlier.0.get(pid) {
                Some((k, s)) if k == kind => *s,
                _ => 0.0,
            };
            let delta = (seconds - before).max(0.0);
            match kind {
                Kind::Database => spent.database += delta,
                Kind::Broker => spent.broker += delta,
                Kind::Own => spent.own += delta,
            }
        }
        spent
    }
}

impl Spent {
    /// Microseconds per login.
    pub fn per(&self, logins: usize) -> Self {
        let per = |s: f64| s * 1e6 / logins as f64;
        Self {
            database: per(self.database),
            broker: per(self.broker),
            own: per(self.own),
        }
    }
}
