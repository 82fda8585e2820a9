//! The worker: consumes `login.completed`, decides each batch through the pipeline, dead-letters
//! what cannot be processed, and acks only after the batch's transaction has committed. It owns its
//! reconnect loop: a lost connection or an ended consumer means reconnect, re-declare, re-consume.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_lite::{StreamExt, future::poll_once};
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    db::is_transient,
    domain::{
        decision::Outcome,
        events::Reply,
        login::{self, Rejection, RejectionKind},
        mask,
    },
    health::Health,
    metrics::{Metrics, OutcomeLabel, ReasonLabel},
    pipeline::{Inbound, Pipeline, Verdict},
    relay::Handoff,
    settings::Settings,
};

use super::{CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect, json_properties, topology};

/// The header carrying the reason of a dead-lettered message.
pub const ERROR_HEADER: &str = "x-idsync-error";
/// Conflicts (unique or serialization failures, deadlocks) retried in place before a batch is
/// split up, or a single event handed back to the broker.
const MAX_CONFLICT_RETRIES: u32 = 10;

/// Why deciding a batch did not succeed.
#[derive(Debug)]
enum Failure {
    /// A stop was requested while retrying.
    Stopped,
    /// Conflicts that did not clear after `MAX_CONFLICT_RETRIES` tries.
    Conflicting(sqlx::Error),
    /// A failure retrying cannot cure (the database refuses the data).
    Permanent(sqlx::Error),
}

/// How one delivery of a batch is settled.
#[derive(Debug)]
enum Settle {
    Verdict(Verdict),
    /// Back to the queue (counts toward its delivery limit).
    Requeue,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("the broker refused a publish (nack)")]
    Nacked,
    #[error("stopping while the database is unavailable")]
    Stopped,
}

pub struct Worker {
    settings: Arc<Settings>,
    pipeline: Pipeline,
    metrics: Metrics,
    health: Health,
    relay: Handoff,
    shutdown: CancellationToken,
}

impl Worker {
    pub fn new(
        settings: Arc<Settings>,
        pipeline: Pipeline,
        metrics: Metrics,
        health: Health,
        relay: Handoff,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            settings,
            pipeline,
            metrics,
            health,
            relay,
            shutdown,
        }
    }

    /// Runs until the shutdown token is cancelled, reconnecting with backoff on any broker failure.
    pub async fn run(self) {
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self.session().await;
            self.health.set_consumer(false);
            match result {
                Ok(()) | Err(SessionError::Stopped) => break,
                Err(error) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
                    }
                    self.metrics.transient("consumer");
                    let delay = backoff
                        .next()
                        .unwrap_or(self.settings.worker.max_retry_delay);
                    tracing::warn!(%error, retry_in = ?delay, "consumer session ended; reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("consumer stopped");
    }

    async fn session(&self) -> Result<(), SessionError> {
        let amqp = &self.settings.amqp;
        let connection = connect(&amqp.url, "worker").await?;
        let tag = format!("identity-sync-{}", self.pipeline.origin());
        let setup = async {
            let channel = connection.create_channel().await?;
            if let Err(error) = topology::declare(&channel, amqp).await {
                if error.to_string().contains("PRECONDITION_FAILED") {
                    tracing::error!(
                        %error,
                        "the broker holds a queue or exchange of the same name with other \
                         arguments (amqp.delivery_limit changed?): delete or rename it, or \
                         restore the setting"
                    );
                }
                return Err(error);
            }
            // Dead letters and error replies are published here, with confirms.
            let publisher = connection.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .basic_qos(amqp.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    amqp.work_queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, publisher, consumer))
        };
        let (channel, publisher, mut consumer) = bounded(
            OPERATION_TIMEOUT,
            "declaring the topology and consuming",
            setup,
        )
        .await?;
        self.health.set_consumer(true);
        tracing::info!(queue = %amqp.work_queue, prefetch = amqp.prefetch, "consuming");

        let batch_size = self.settings.worker.batch_size;
        let result = loop {
            if !self.wait_for_outbox().await {
                break Ok(());
            }
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break Err(error.into()),
                None => break Err(SessionError::ConsumerEnded),
            };
            // Take what has already arrived, up to a batch; never wait for more.
            let mut batch = vec![first];
            let mut pending_error = None;
            while batch.len() < batch_size {
                match poll_once(consumer.next()).await {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(error))) => {
                        pending_error = Some(error);
                        break;
                    }
                    _ => break,
                }
            }
            if let Err(error) = self.handle(&publisher, batch).await {
                break Err(error);
            }
            if let Some(error) = pending_error {
                break Err(error.into());
            }
        };

        // Deliveries received but not handled go back to the queue when the channel closes.
        let close = async {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            connection
                .close(200, "identity-sync worker stopping".into())
                .await
        };
        let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        result
    }

    /// Holds off while the outbox backlog is above `outbox.max_backlog` (a stalled downstream):
    /// deliveries already prefetched wait unacknowledged, nothing more is taken. `false` when a
    /// stop was requested meanwhile.
    async fn wait_for_outbox(&self) -> bool {
        let max = self.settings.outbox.max_backlog;
        if self.health.outbox_backlog() <= max {
            return true;
        }
        tracing::warn!(
            backlog = self.health.outbox_backlog(),
            max,
            "outbox backlog too large; consumption paused"
        );
        self.metrics.throttled.inc();
        while self.health.outbox_backlog() > max {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!(
            backlog = self.health.outbox_backlog(),
            "outbox caught up; consumption resumed"
        );
        true
    }

    async fn handle(
        &self,
        publisher: &Channel,
        deliveries: Vec<Delivery>,
    ) -> Result<(), SessionError> {
        let received = Instant::now();
        let span = tracing::debug_span!("batch", size = deliveries.len());
        async {
            let mut inbound = Vec::with_capacity(deliveries.len());
            let mut slots = Vec::with_capacity(deliveries.len());
            for delivery in &deliveries {
                match self.check(delivery) {
                    Ok(event) => {
                        slots.push(Ok(inbound.len()));
                        inbound.push(Inbound {
                            event,
                            reply_to: delivery
                                .properties
                                .reply_to()
                                .as_ref()
                                .map(|r| r.to_string()),
                            correlation_id: delivery
                                .properties
                                .correlation_id()
                                .as_ref()
                                .map(|c| c.to_string()),
                        });
                    }
                    Err(rejection) => slots.push(Err(rejection)),
                }
            }
            let mut settled = if inbound.is_empty() {
                Vec::new()
            } else {
                self.decide(&inbound).await?
            };
            self.metrics.batch_size.observe(inbound.len() as f64);

            // The highest delivery acknowledged; a multiple-ack up to it covers the batch
            // (deliveries handed back were settled already).
            let mut ack_up_to: Option<&Delivery> = None;
            for (delivery, slot) in deliveries.iter().zip(slots) {
                let (verdict, event_id) = match slot {
                    Ok(i) => {
                        let id = Some(inbound[i].event.id.clone());
                        match std::mem::replace(&mut settled[i], Settle::Requeue) {
                            Settle::Verdict(verdict) => (verdict, id),
                            Settle::Requeue => {
                                self.metrics.requeued.inc();
                                bounded(
                                    OPERATION_TIMEOUT,
                                    "handing a delivery back",
                                    delivery.acker.nack(BasicNackOptions {
                                        requeue: true,
                                        multiple: false,
                                    }),
                                )
                                .await?;
                                continue;
                            }
                        }
                    }
                    Err(rejection) => {
                        let id = undecoded_event_id(delivery, &rejection);
                        (Verdict::Rejected(rejection), id)
                    }
                };
                ack_up_to = Some(delivery);
                let span =
                    tracing::info_span!("login", event_id = event_id.as_deref().unwrap_or("-"));
                let _guard = span.enter();
                match verdict {
                    Verdict::Decided { reply, duplicate } => {
                        self.metrics
                            .decisions
                            .get_or_create(&OutcomeLabel {
                                outcome: reply.outcome.as_str(),
                            })
                            .inc();
                        if duplicate {
                            self.metrics.duplicates.inc();
                        }
                        tracing::info!(
                            outcome = reply.outcome.as_str(),
                            user_id = ?reply.user_id,
                            binding_id = ?reply.binding_id,
                            duplicate,
                            "decided"
                        );
                    }
                    Verdict::Rejected(rejection) => {
                        drop(_guard);
                        self.dead_letter(publisher, delivery, &rejection, event_id)
                            .await?;
                    }
                }
            }
            if let Some(last) = ack_up_to {
                bounded(
                    OPERATION_TIMEOUT,
                    "acknowledging a batch",
                    last.acker.ack(BasicAckOptions { multiple: true }),
                )
                .await?;
            }
            let elapsed = received.elapsed().as_secs_f64();
            for _ in 0..deliveries.len() {
                self.metrics.processing_seconds.observe(elapsed);
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Steps 1 of the decision: permanent checks that need no database.
    fn check(&self, delivery: &Delivery) -> Result<login::LoginEvent, Rejection> {
        let trusted = &self.settings.amqp.trusted_publishers;
        if !trusted.is_empty() {
            let user = delivery.properties.user_id().as_ref().map(|u| u.as_str());
            if !user.is_some_and(|u| trusted.iter().any(|t| t == u)) {
                return Err(Rejection::new(
                    RejectionKind::UntrustedPublisher,
                    match user {
                        Some(u) => format!("publisher {u:?} is not in amqp.trusted_publishers"),
                        None => "the message has no user_id property".to_owned(),
                    },
                ));
            }
        }
        login::decode(&delivery.data, self.settings.worker.max_message_bytes)
    }

    /// Decides a batch, retrying transient failures for as long as it takes (the deliveries stay
    /// unacknowledged meanwhile, so nothing else is taken from the queue). A batch that keeps
    /// failing is split so that one event cannot hold back the others: an event the database
    /// refuses is dead-lettered `processing_failed`; an event that keeps conflicting is handed
    /// back to the broker, whose delivery limit bounds how often that can happen.
    async fn decide(&self, batch: &[Inbound]) -> Result<Vec<Settle>, SessionError> {
        let single = |failure: Failure| match failure {
            Failure::Stopped => Err(SessionError::Stopped),
            Failure::Conflicting(error) => {
                tracing::warn!(%error, "an event keeps conflicting; handing it back to the broker");
                Ok(Settle::Requeue)
            }
            Failure::Permanent(error) => Ok(Settle::Verdict(processing_failed(&error))),
        };
        match self.decide_with_retry(batch).await {
            Ok(verdicts) => Ok(verdicts.into_iter().map(Settle::Verdict).collect()),
            Err(Failure::Stopped) => Err(SessionError::Stopped),
            Err(failure) if batch.len() == 1 => Ok(vec![single(failure)?]),
            Err(failure) => {
                tracing::warn!(
                    ?failure,
                    size = batch.len(),
                    "batch failed; deciding its events one by one"
                );
                let mut settled = Vec::with_capacity(batch.len());
                for message in batch {
                    settled.push(
                        match self.decide_with_retry(std::slice::from_ref(message)).await {
                            Ok(mut one) => Settle::Verdict(one.remove(0)),
                            Err(failure) => single(failure)?,
                        },
                    );
                }
                Ok(settled)
            }
        }
    }

    async fn decide_with_retry(&self, batch: &[Inbound]) -> Result<Vec<Verdict>, Failure> {
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        let mut conflicts = 0;
        loop {
            match self.pipeline.process(batch).await {
                Ok(processed) => {
                    // Replies and events go out now, before the acks and dead letters.
                    self.relay.committed(processed.outbox);
                    return Ok(processed.verdicts);
                }
                Err(error) if is_transient(&error) => {
                    if is_conflict(&error) {
                        conflicts += 1;
                        if conflicts > MAX_CONFLICT_RETRIES {
                            return Err(Failure::Conflicting(error));
                        }
                    }
                    // Retried in place: a conflict a limited number of times, an unavailable
                    // database for as long as it takes.
                    self.metrics.transient("database");
                    let delay = backoff
                        .next()
                        .unwrap_or(self.settings.worker.max_retry_delay);
                    tracing::warn!(%error, retry_in = ?delay, "deciding a batch failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Failure::Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => return Err(Failure::Permanent(error)),
            }
        }
    }

    /// Publishes the original message, with its body and properties and the reason in a header, to
    /// the dead-letter exchange, answers the requester if it asked, and waits for both confirms.
    async fn dead_letter(
        &self,
        publisher: &Channel,
        delivery: &Delivery,
        rejection: &Rejection,
        event_id: Option<String>,
    ) -> Result<(), SessionError> {
        let reason = rejection.reason();
        tracing::warn!(
            event_id = event_id.as_deref().unwrap_or("-"),
            reason = %mask_reason(&reason),
            "dead-lettering"
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason.as_str())),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let publish = async {
            publisher
                .basic_publish(
                    self.settings.amqp.dead_letter_exchange.as_str().into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        };
        let confirm = bounded(OPERATION_TIMEOUT, "dead-lettering", publish).await?;
        if !confirm.is_ack() {
            return Err(SessionError::Nacked);
        }
        self.metrics
            .dead_letters
            .get_or_create(&ReasonLabel {
                reason: rejection.kind.code(),
            })
            .inc();
        self.metrics
            .decisions
            .get_or_create(&OutcomeLabel {
                outcome: Outcome::Error.as_str(),
            })
            .inc();

        if let Some(reply_to) = delivery.properties.reply_to() {
            let reply = Reply {
                event_id,
                outcome: Outcome::Error,
                user_id: None,
                binding_id: None,
                reason: Some(reason),
            };
            let body = serde_json::to_vec(&reply).expect("reply serialises");
            let mut properties = json_properties(&uuid::Uuid::now_v7().to_string());
            if let Some(correlation_id) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(correlation_id.clone());
            }
            // The requester may be gone; that is not worth failing over, only a nack is.
            let publish = async {
                publisher
                    .basic_publish(
                        ShortString::from(""),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
                    .await
            };
            let confirm = bounded(OPERATION_TIMEOUT, "replying", publish).await?;
            if !confirm.is_ack() {
                return Err(SessionError::Nacked);
            }
        }
        Ok(())
    }
}

fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505" | "40001" | "40P01")
    )
}

fn processing_failed(error: &sqlx::Error) -> Verdict {
    tracing::error!(%error, "event failed permanently in the database");
    // The database's message can quote the event's data; keep only its class.
    let detail = match error.as_database_error() {
        Some(db) => format!(
            "the database refused the event (SQLSTATE {})",
            db.code().unwrap_or_default()
        ),
        None => "the event could not be stored".to_owned(),
    };
    Verdict::Rejected(Rejection::new(RejectionKind::ProcessingFailed, detail))
}

/// The id of a message that could not be decoded, when its body is JSON with a usable `id`.
fn undecoded_event_id(delivery: &Delivery, rejection: &Rejection) -> Option<String> {
    if rejection.kind == RejectionKind::TooLarge {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    let parsed: IdOnly = serde_json::from_slice(&delivery.data).ok()?;
    match parsed.id? {
        serde_json::Value::String(id) if id.chars().count() <= 128 => Some(id),
        _ => None,
    }
}

/// Reasons can quote profile values (an email that failed a type check, say); mask anything that
/// looks like contact data before it reaches an info-level log.
fn mask_reason(reason: &str) -> String {
    reason
        .split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| c == '"' || c == ',' || c == '.');
            if bare.contains('@') {
                mask::email(bare)
            } else if bare.chars().filter(char::is_ascii_digit).count() >= 7 {
                mask::phone(bare)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
