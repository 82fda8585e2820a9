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
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: &'static str,
}

/// The parts whose transient failures are counted.
pub const COMPONENTS: [&str; 3] = ["consumer", "database", "relay"];

/// Cheap to clone: every metric is an `Arc` inside.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub decisions: Family<OutcomeLabel, Counter>,
    pub duplicates: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub processing_seconds: Histogram,
    pub batch_size: Histogram,
    pub transient_errors: Family<ComponentLabel, Counter>,
    pub outbox_backlog: Gauge,
    pub outbox_published: Family<KindLabel, Counter>,
    pub outbox_unrouted: Counter,
    pub throttled: Counter,
    pub requeued: Counter,
    pub pruned: Family<KindLabel, Counter>,
    pub replies_refused: Counter,
    pub outbox_republished: Counter,
    pub dead_letter_fallbacks: Counter,
    pub trusted_publishers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let decisions = Family::<OutcomeLabel, Counter>::default();
        let duplicates = Counter::default();
        let dead_letters = Family::<ReasonLabel, Counter>::default();
        // 0.5 ms to ~16 s.
        let processing_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let transient_errors = Family::<ComponentLabel, Counter>::default();
        let outbox_backlog = Gauge::default();
        let outbox_published = Family::<KindLabel, Counter>::default();
        let outbox_unrouted = Counter::default();
        let throttled = Counter::default();
        let requeued = Counter::default();
        let pruned = Family::<KindLabel, Counter>::default();
        let replies_refused = Counter::default();
        let outbox_republished = Counter::default();
        let dead_letter_fallbacks = Counter::default();
        let trusted_publishers = Gauge::default();

        let mut registry = Registry::with_prefix("idsync");
        registry.register(
            "decisions",
            "Login events decided, by outcome (duplicates included, dead letters excluded)",
            decisions.clone(),
        );
        registry.register(
            "duplicates",
            "Login events already processed, answered with their first decision",
            duplicates.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from receiving a login event to acknowledging it",
            processing_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Login events decided per transaction",
            batch_size.clone(),
        );
        registry.register(
            "transient_errors",
            "Failures retried with backoff (database or broker unavailable), by component",
            transient_errors.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Outbox rows committed and not yet published",
            outbox_backlog.clone(),
        );
        registry.register(
            "outbox_published",
            "Outbox rows published with a broker confirm, by kind (event, reply)",
            outbox_published.clone(),
        );
        registry.register(
            "outbox_unrouted",
            "Events the broker accepted but no queue was bound for",
            outbox_unrouted.clone(),
        );
        registry.register(
            "throttled",
            "Times consumption paused because the outbox backlog exceeded outbox.max_backlog",
            throttled.clone(),
        );
        registry.register(
            "requeued",
            "Events handed back to the broker after conflicting on every retry",
            requeued.clone(),
        );
        registry.register(
            "pruned_rows",
            "Rows removed by retention, by kind (event, processed)",
            pruned.clone(),
        );
        registry.register(
            "replies_refused",
            "Messages whose reply_to was not a reply queue: processed, but not answered",
            replies_refused.clone(),
        );
        registry.register(
            "outbox_republished",
            "Outbox rows published again because a broker session ended before confirming them",
            outbox_republished.clone(),
        );
        registry.register(
            "dead_letter_fallbacks",
            "Dead letters the broker refused to take from the worker, rejected for the queue's \
             own dead-lettering instead",
            dead_letter_fallbacks.clone(),
        );
        registry.register(
            "trusted_publishers",
            "Broker users listed in amqp.trusted_publishers (0: anyone who can publish is heard)",
            trusted_publishers.clone(),
        );
        // Every label a family can take is there from the start, at 0: a scrape (or a test)
        // tells "nothing happened" from "not exported".
        for outcome in crate::domain::decision::Outcome::ALL {
            drop(decisions.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            }));
        }
        for kind in crate::domain::login::RejectionKind::ALL {
            drop(dead_letters.get_or_create(&ReasonLabel {
                reason: kind.code(),
            }));
        }
        for component in COMPONENTS {
            drop(transient_errors.get_or_create(&ComponentLabel { component }));
        }
        for kind in ["event", "reply"] {
            drop(outbox_published.get_or_create(&KindLabel { kind }));
        }
        for kind in ["event", "processed"] {
            drop(pruned.get_or_create(&KindLabel { kind }));
        }
        Self {
            registry: Arc::new(registry),
            decisions,
            duplicates,
            dead_letters,
            processing_seconds,
            batch_size,
            transient_errors,
            outbox_backlog,
            outbox_published,
            outbox_unrouted,
            throttled,
            requeued,
            pruned,
            replies_refused,
            outbox_republished,
            dead_letter_fallbacks,
            trusted_publishers,
        }
    }

    /// Counts a failure retried with backoff; `component` is one of `COMPONENTS`.
    pub fn transient(&self, component: &'static str) {
        debug_assert!(COMPONENTS.contains(&component), "{component}");
        self.transient_errors
            .get_or_create(&ComponentLabel { component })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
