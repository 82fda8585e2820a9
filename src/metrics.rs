//! Prometheus metrics of the worker and the relay, served at `/metrics` (OpenMetrics text).

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryCallLabel {
    pub connection: String,
    pub api: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryStateLabel {
    pub connection: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookIdLabel {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabel {
    pub component: &'static str,
    pub reason: &'static str,
}

/// The parts of the process that wait out faults of the system.
pub const FAULT_COMPONENTS: [&str; 3] = ["logins", "commands", "relay"];

/// The parts whose transient failures are counted.
pub const COMPONENTS: [&str; 4] = ["consumer", "database", "relay", "webhooks"];

/// Declares the metrics once: each becomes a public field of [`Metrics`] and is registered under
/// `idsync_<name>` with its help text.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $kind:ty = $init:expr, $name:literal, $help:expr;)*) => {
        /// Cheap to clone: every metric is an `Arc` inside.
        #[derive(Clone)]
        pub struct Metrics {
            registry: Arc<Registry>,
            $($(#[$doc])* pub $field: $kind,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("idsync");
                $(
                    let $field: $kind = $init;
                    registry.register($name, $help, $field.clone());
                )*
                let metrics = Self { registry: Arc::new(registry), $($field,)* };
                metrics.export_every_label();
                metrics
            }
        }
    };
}

metrics! {
    decisions: Family<OutcomeLabel, Counter> = Family::default(), "decisions",
        "Login events decided, by outcome (duplicates included, dead letters excluded)";
    duplicates: Counter = Counter::default(), "duplicates",
        "Login events already processed, answered with their first decision";
    commands: Family<CommandLabel, Counter> = Family::default(), "commands",
        "Commands and directory events processed, by type and outcome (re-sent ones included; \
         outcome held: a removal the guard held; a dead-lettered \
         command counts as type unknown, outcome error)";
    dead_letters: Family<ReasonLabel, Counter> = Family::default(), "dead_letters",
        "Messages dead-lettered, by reason";
    /// 0.5 ms to ~16 s.
    processing_seconds: Histogram = Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        "processing_seconds", "Time from receiving a login event to acknowledging it";
    batch_size: Histogram = Histogram::new(exponential_buckets(1.0, 2.0, 10)), "batch_size",
        "Login events decided per transaction";
    transient_errors: Family<ComponentLabel, Counter> = Family::default(), "transient_errors",
        "Failures retried with backoff (database or broker unavailable), by component";
    outbox_backlog: Gauge = Gauge::default(), "outbox_backlog",
        "Outbox rows committed and not yet published";
    outbox_published: Family<KindLabel, Counter> = Family::default(), "outbox_published",
        "Outbox rows published with a broker confirm, by kind (event, reply)";
    outbox_unrouted: Counter = Counter::default(), "outbox_unrouted",
        "Events the broker accepted but no queue was bound for";
    throttled: Counter = Counter::default(), "throttled",
        "Times consumption paused because the outbox backlog exceeded outbox.max_backlog";
    requeued: Counter = Counter::default(), "requeued",
        "Events handed back to the broker after conflicting on every retry";
    pruned: Family<KindLabel, Counter> = Family::default(), "pruned_rows",
        "Rows removed by retention, by kind (event, processed)";
    replies_refused: Counter = Counter::default(), "replies_refused",
        "Messages whose reply_to was not a reply queue: processed, but not answered";
    outbox_republished: Counter = Counter::default(), "outbox_republished",
        "Outbox rows published again because a broker session ended before confirming them";
    replies_dropped: Counter = Counter::default(), "replies_dropped",
        "Replies given up because publishing one broke the broker connection on its own (a \
         reply_to the broker cannot decode)";
    outbox_vacuums: Counter = Counter::default(), "outbox_vacuums",
        "Vacuums of outbox_pending run by the relay (one per 5,000 rows it published)";
    dead_letter_fallbacks: Counter = Counter::default(), "dead_letter_fallbacks",
        "Dead letters the broker refused to take from the worker, rejected for the queue's \
         own dead-lettering instead";
    system_faults: Family<FaultLabel, Counter> = Family::default(), "system_faults",
        "Retries of work held up by a fault of the system (never of a message: nothing is \
         dead-lettered for it), by component and kind";
    waits: Family<ReasonLabel, Counter> = Family::default(), "waits",
        "Logins sent to amqp.wait_queue to be tried again later (never dead-lettered for that), \
         by reason";
    panics: Counter = Counter::default(), "panics",
        "Batches or messages whose processing panicked (a bug of the worker): handed back, and \
         dead-lettered processing_panicked at the delivery limit";
    directory_calls: Family<DirectoryCallLabel, Counter> = Family::default(), "directory_calls",
        "Calls to connections' directories (DingTalk, WeCom, Feishu), by connection, API and \
         result (ok, not_found, token_refused, rate_limited, quota_exhausted, failed)";
    directory_tokens: Family<ConnectionLabel, Counter> = Family::default(), "directory_tokens",
        "Access tokens fetched from directories, by connection";
    directory_cache_hits: Family<ConnectionLabel, Counter> = Family::default(),
        "directory_cache_hits",
        "Logins completed from a directory record kept in the database (no call), by connection";
    directory_state: Family<DirectoryStateLabel, Gauge> = Family::default(), "directory_state",
        "1 for the state each connection's directory was last seen in (ok, rate_limited, \
         quota_exhausted, failing), 0 for the others";
    webhook_deliveries: Family<WebhookLabel, Counter> = Family::default(), "webhook_deliveries",
        "Webhook delivery attempts by this process, by endpoint and result (delivered, retrying: \
         failed and tried again later, failed: given up after the last attempt)";
    /// 5 ms to ~20 s.
    webhook_latency_seconds: Histogram = Histogram::new(exponential_buckets(0.005, 2.0, 13)),
        "webhook_latency_seconds", "Time from sending a webhook delivery to its answer";
    webhook_undelivered: Family<WebhookIdLabel, Gauge> = Family::default(),
        "webhook_undelivered", "Deliveries not yet delivered nor given up, by endpoint";
    webhook_oldest_undelivered_seconds: Family<WebhookIdLabel, Gauge> = Family::default(),
        "webhook_oldest_undelivered_seconds",
        "Age of each endpoint's oldest delivery not yet delivered nor given up (0: none)";
    trusted_publishers: Gauge = Gauge::default(), "trusted_publishers",
        "Broker users listed in amqp.trusted_publishers (0: anyone who can publish is heard)";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every label a family can take is there from the start, at 0: a scrape (or a test) tells
    /// "nothing happened" from "not exported".
    fn export_every_label(&self) {
        for outcome in crate::domain::decision::Outcome::ALL {
            drop(self.decisions.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            }));
        }
        for command in crate::domain::command::ROUTING_KEYS {
            let directory = crate::domain::leavers::TYPES.contains(&command);
            let outcomes: Vec<&'static str> = if directory {
                crate::domain::leavers::DirectoryOutcome::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect()
            } else {
                crate::domain::command::CommandOutcome::ALL
                    .iter()
                    .map(|o| o.as_str())
                    .collect()
            };
            for outcome in outcomes {
                drop(
                    self.commands
                        .get_or_create(&CommandLabel { command, outcome }),
                );
            }
        }
        drop(self.commands.get_or_create(&CommandLabel {
            command: "unknown",
            outcome: "error",
        }));
        for kind in crate::domain::login::RejectionKind::ALL {
            drop(self.dead_letters.get_or_create(&ReasonLabel {
                reason: kind.code(),
            }));
        }
        for component in FAULT_COMPONENTS {
            for fault in crate::db::SystemFault::ALL {
                drop(self.system_faults.get_or_create(&FaultLabel {
                    component,
                    reason: fault.as_str(),
                }));
            }
        }
        for reason in crate::domain::login::WaitReason::ALL {
            drop(self.waits.get_or_create(&ReasonLabel {
                reason: reason.code(),
            }));
        }
        for component in COMPONENTS {
            drop(
                self.transient_errors
                    .get_or_create(&ComponentLabel { component }),
            );
        }
        for kind in ["event", "reply"] {
            drop(self.outbox_published.get_or_create(&KindLabel { kind }));
        }
        for kind in ["event", "processed"] {
            drop(self.pruned.get_or_create(&KindLabel { kind }));
        }
    }

    /// Counts a failure retried with backoff; `component` is one of `COMPONENTS`.
    pub fn transient(&self, component: &'static str) {
        debug_assert!(COMPONENTS.contains(&component), "{component}");
        self.transient_errors
            .get_or_create(&ComponentLabel { component })
            .inc();
    }

    /// Counts a message of `consumer` dead-lettered: a login as a decision `error`, a command
    /// (whose kind may be unreadable) as `unknown` answered `error`.
    pub fn dead_lettered_message(&self, consumer: crate::health::Consumer) {
        match consumer {
            crate::health::Consumer::Logins => self.decisions.get_or_create(&OutcomeLabel {
                outcome: crate::domain::decision::Outcome::Error.as_str(),
            }),
            crate::health::Consumer::Commands => self.commands.get_or_create(&CommandLabel {
                command: "unknown",
                outcome: "error",
            }),
        }
        .inc();
    }

    /// Counts a retry of `component`'s work held up by `fault`.
    pub fn system_fault(&self, component: &'static str, fault: crate::db::SystemFault) {
        debug_assert!(FAULT_COMPONENTS.contains(&component), "{component}");
        self.system_faults
            .get_or_create(&FaultLabel {
                component,
                reason: fault.as_str(),
            })
            .inc();
    }

    /// Records the state a connection's directory was seen in.
    pub fn directory_state(&self, connection: &str, state: crate::directory::State) {
        for each in crate::directory::State::ALL {
            self.directory_state
                .get_or_create(&DirectoryStateLabel {
                    connection: connection.to_owned(),
                    state: each.as_str(),
                })
                .set(i64::from(each == state));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
