//! The workers: one consumes `login.completed` and decides each batch through the pipeline
//! (`logins`), one consumes the platform's commands (`commands`). Each dead-letters what cannot be
//! processed and acks only after the transaction has committed, and owns its reconnect loop: a
//! lost connection or an ended consumer means reconnect, re-declare, re-consume. What differs
//! between them is a [`Processor`].

mod commands;
mod logins;

pub use commands::Commands;

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use futures_lite::{StreamExt, future::poll_once};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    amqp::{
        CLOSE_TIMEOUT, OPERATION_TIMEOUT, binary, bounded, connect, properties,
        settle::{Action, DeadLetter, ErrorReply, Settler, undecoded_event_id},
        topology,
    },
    db::{ErrorClass, classify},
    domain::login::{Rejection, RejectionKind},
    health::{Consumer, Health},
    metrics::Metrics,
    pipeline::{Inbound, Verdict},
    settings::{AmqpSettings, Settings},
};

/// What a worker consumes, and how: reading a message, processing a batch of them in the
/// database, and answering. The worker around it owns the broker side.
pub trait Processor: Send + Sync + 'static {
    /// A message as read from its body.
    type Message: Send + Sync;
    /// What a processed message is answered.
    type Reply: serde::Serialize + Send + Sync;
    /// Which consumer this is (readiness, logs, the consumer tag).
    const CONSUMER: Consumer;
    /// Whether messages are heard only from `amqp.trusted_publishers`, so that none is heard
    /// while the list is empty.
    const TRUSTED_ONLY: bool;
    /// The queue consumed.
    fn queue(amqp: &AmqpSettings) -> &str;
    /// Unacknowledged deliveries the broker may push.
    fn prefetch(settings: &Settings) -> u16;
    /// Most messages processed per transaction.
    fn batch_size(settings: &Settings) -> usize;
    /// Batches decided at once.
    fn concurrent_batches(settings: &Settings) -> usize;
    /// Reads a body; a [`Rejection`] dead-letters the message.
    fn decode(body: &[u8], max_bytes: usize) -> Result<Self::Message, Rejection>;
    /// The message's id, for logs.
    fn message_id(message: &Self::Message) -> &str;
    /// The process's id (the outbox rows' origin), for the consumer tag.
    fn origin(&self) -> uuid::Uuid;
    /// Processes a batch in the database, replies included; one verdict per message, in order.
    fn process(
        &self,
        batch: &[Inbound<Self::Message>],
    ) -> impl Future<Output = sqlx::Result<Vec<Verdict<Self::Reply>>>> + Send;
    /// Counts and logs a processed message.
    fn record(metrics: &Metrics, message: &Self::Message, reply: &Self::Reply, duplicate: bool);
    /// Counts a dead-lettered message, and builds its error reply.
    fn error_reply(metrics: &Metrics, id: Option<String>, rejection: &Rejection) -> Self::Reply;
}
/// How long the next batch fills while the last one started is still in flight, at most.
const FILL_AT_MOST: Duration = Duration::from_millis(10);
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
enum Settle<R> {
    Verdict(Verdict<R>),
    /// Back to the queue (counts toward its delivery limit).
    Requeue,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("stopping while the database is unavailable")]
    Stopped,
}

/// A batch decided, waiting to be settled with the broker.
struct Decided {
    deliveries: Vec<Delivery>,
    actions: Vec<Action>,
    /// When the batch was taken from the consumer.
    received: Instant,
}

/// Consumes one queue with a [`Processor`].
pub struct Worker<P> {
    settings: Arc<Settings>,
    processor: P,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
}

impl<P: Processor> Worker<P> {
    pub fn new(
        settings: Arc<Settings>,
        processor: P,
        metrics: Metrics,
        health: Health,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            settings,
            processor,
            metrics,
            health,
            shutdown,
        }
    }

    /// Runs until the shutdown token is cancelled, reconnecting with backoff on any broker failure.
    pub async fn run(self) {
        Arc::new(self).supervise().await
    }

    async fn supervise(self: Arc<Self>) {
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let result = self.session().await;
            self.health.set_consumer(P::CONSUMER, false);
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
                    tracing::warn!(
                        %error,
                        consumer = P::CONSUMER.as_str(),
                        retry_in = ?delay,
                        "consumer session ended; reconnecting"
                    );
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(consumer = P::CONSUMER.as_str(), "consumer stopped");
    }

    async fn session(self: &Arc<Self>) -> Result<(), SessionError> {
        let amqp = &self.settings.amqp;
        let connection = connect(&amqp.url, P::CONSUMER.as_str()).await?;
        let tag = match P::CONSUMER {
            Consumer::Logins => format!("identity-sync-{}", self.processor.origin()),
            other => format!(
                "identity-sync-{}-{}",
                other.as_str(),
                self.processor.origin()
            ),
        };
        let (channel, mut consumer) = bounded(
            OPERATION_TIMEOUT,
            "declaring the topology and consuming",
            self.subscribe(&connection, &tag),
        )
        .await?;
        self.health.set_consumer(P::CONSUMER, true);
        tracing::info!(
            queue = P::queue(amqp),
            prefetch = P::prefetch(&self.settings),
            "consuming"
        );
        let mut settler = Settler::new(
            &connection,
            &amqp.url,
            &amqp.dead_letter_exchange,
            &self.metrics,
        );
        let result = self.consume(&mut consumer, &mut settler).await;
        drop(settler);

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

    /// Declares the topology and starts consuming the processor's queue.
    async fn subscribe(
        &self,
        connection: &lapin::Connection,
        tag: &str,
    ) -> lapin::Result<(lapin::Channel, lapin::Consumer)> {
        let amqp = &self.settings.amqp;
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
        channel
            .basic_qos(P::prefetch(&self.settings), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                P::queue(amqp).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Handles deliveries in batches until a stop is requested or the session fails. Up to
    /// `concurrent_batches` batches are decided at once, each in a task and a transaction of its
    /// own (while one commits, the next is read and decided: a batch's round trips and its
    /// commit's flush would otherwise leave the machine idle); they are settled with the broker
    /// in the order they were taken, so that a multiple-ack never covers a delivery of a batch
    /// still being decided. Conflicting logins of two batches serialise on their advisory locks
    /// exactly as those of two worker processes do.
    ///
    /// While a batch is being decided, the deliveries that arrive fill the next one, which starts
    /// when it is full (a backlog: batches side by side), when no batch is left in flight, or
    /// once the last batch started has run for `FILL_AT_MOST` (one held up by a lock or a retry
    /// holds up nothing else). A trickle of logins is then decided in batches of what arrived
    /// meanwhile rather than in many batches of one or two, each paying the round trips of a
    /// whole transaction.
    async fn consume(
        self: &Arc<Self>,
        consumer: &mut lapin::Consumer,
        settler: &mut Settler<'_>,
    ) -> Result<(), SessionError> {
        let batch_size = P::batch_size(&self.settings);
        let depth = P::concurrent_batches(&self.settings).max(1);
        let mut in_flight: VecDeque<JoinHandle<Result<Decided, SessionError>>> = VecDeque::new();
        // The next batch, filling, and when the last one started.
        let mut next: Vec<Delivery> = Vec::with_capacity(batch_size);
        let mut last_started = Instant::now();
        let result = loop {
            // The oldest batch first: its acks must go before any later batch's.
            if in_flight.len() >= depth {
                let head = in_flight.pop_front().expect("a batch in flight");
                if let Err(error) = self.settle(settler, head.await).await {
                    break Err(error);
                }
                continue;
            }
            let filled_long_enough = last_started.elapsed() >= FILL_AT_MOST;
            if !next.is_empty()
                && (next.len() >= batch_size || in_flight.is_empty() || filled_long_enough)
            {
                last_started = Instant::now();
                let batch = std::mem::replace(&mut next, Vec::with_capacity(batch_size));
                let worker = self.clone();
                in_flight.push_back(tokio::spawn(async move {
                    worker.decide_deliveries(batch).await
                }));
                continue;
            }
            if !self.wait_for_outbox().await {
                break Ok(());
            }
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break Ok(()),
                done = async { in_flight.front_mut().expect("a batch in flight").await },
                    if !in_flight.is_empty() =>
                {
                    in_flight.pop_front();
                    if let Err(error) = self.settle(settler, done).await {
                        break Err(error);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until((last_started + FILL_AT_MOST).into()),
                    if !next.is_empty() => continue,
                delivery = consumer.next() => delivery,
            };
            match first {
                Some(Ok(delivery)) => next.push(delivery),
                Some(Err(error)) => break Err(error.into()),
                None => break Err(SessionError::ConsumerEnded),
            }
            // Take what has already arrived, up to a batch; never wait for more.
            let mut pending_error = None;
            while next.len() < batch_size {
                match poll_once(consumer.next()).await {
                    Some(Some(Ok(delivery))) => next.push(delivery),
                    Some(Some(Err(error))) => {
                        pending_error = Some(error);
                        break;
                    }
                    _ => break,
                }
            }
            if let Some(error) = pending_error {
                break Err(error.into());
            }
        };
        // Batches already taken are finished and settled, also when stopping: their decisions
        // may be committed, and a graceful stop acknowledges what it decided. Deliveries of the
        // batch still filling were not decided: they go back to the queue with the channel.
        let mut result = result;
        while let Some(head) = in_flight.pop_front() {
            let settled = self.settle(settler, head.await).await;
            if result.is_ok() {
                result = settled;
            }
        }
        result
    }

    /// Settles a decided batch with the broker.
    async fn settle(
        &self,
        settler: &mut Settler<'_>,
        decided: Result<Result<Decided, SessionError>, tokio::task::JoinError>,
    ) -> Result<(), SessionError> {
        let decided = match decided {
            Ok(decided) => decided?,
            // A decision that panicked stops the process (its supervisor restarts it): its
            // deliveries are redelivered and answered by their dedupe records.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => return Err(SessionError::Stopped),
        };
        let Decided {
            deliveries,
            actions,
            received,
        } = decided;
        settler.apply(&deliveries, actions).await?;
        let elapsed = received.elapsed().as_secs_f64();
        if P::CONSUMER == Consumer::Logins {
            for _ in 0..deliveries.len() {
                self.metrics.processing_seconds.observe(elapsed);
            }
        }
        Ok(())
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

    /// Decides a batch of deliveries: what to do with each.
    async fn decide_deliveries(&self, deliveries: Vec<Delivery>) -> Result<Decided, SessionError> {
        let received = Instant::now();
        let span = tracing::debug_span!(
            "batch",
            consumer = P::CONSUMER.as_str(),
            size = deliveries.len()
        );
        async {
            let mut inbound = Vec::with_capacity(deliveries.len());
            let mut slots = Vec::with_capacity(deliveries.len());
            for delivery in &deliveries {
                let reply_to = self.reply_to(delivery);
                match self.check(delivery) {
                    Ok(event) => {
                        slots.push(Ok(inbound.len()));
                        inbound.push(Inbound {
                            event,
                            reply_to,
                            correlation_id: delivery
                                .properties
                                .correlation_id()
                                .as_ref()
                                .map(|c| c.to_string()),
                        });
                    }
                    Err(rejection) => slots.push(Err((rejection, reply_to))),
                }
            }
            let mut settled = if inbound.is_empty() {
                Vec::new()
            } else {
                self.decide(&inbound).await?
            };
            if P::CONSUMER == Consumer::Logins {
                self.metrics.batch_size.observe(inbound.len() as f64);
            }

            let actions = deliveries
                .iter()
                .zip(slots)
                .map(|(delivery, slot)| match slot {
                    Ok(i) => {
                        let settle = std::mem::replace(&mut settled[i], Settle::Requeue);
                        self.plan(&inbound[i], settle)
                    }
                    Err((rejection, reply_to)) => {
                        let id = undecoded_event_id(delivery, &rejection);
                        self.dead_letter(rejection, id, reply_to)
                    }
                })
                .collect();
            Ok(Decided {
                deliveries,
                actions,
                received,
            })
        }
        .instrument(span)
        .await
    }

    /// The action for a delivery that was decoded, given what processing it gave; counts and
    /// logs the outcomes.
    fn plan(&self, message: &Inbound<P::Message>, settle: Settle<P::Reply>) -> Action {
        match settle {
            Settle::Requeue => Action::Requeue,
            Settle::Verdict(Verdict::Rejected(rejection)) => {
                let id = P::message_id(&message.event).to_owned();
                self.dead_letter(rejection, Some(id), message.reply_to.clone())
            }
            Settle::Verdict(Verdict::Decided { reply, duplicate }) => {
                P::record(&self.metrics, &message.event, &reply, duplicate);
                Action::Ack
            }
        }
    }

    /// Dead-lettering, with the processor's error reply when one is owed. An untrusted publisher
    /// is not answered: it could aim error replies at the platform's own reply queue to fake
    /// failures of chosen messages.
    fn dead_letter(
        &self,
        rejection: Rejection,
        id: Option<String>,
        reply_to: Option<String>,
    ) -> Action {
        let reply = P::error_reply(&self.metrics, id.clone(), &rejection);
        let reply = reply_to
            .filter(|_| rejection.kind != RejectionKind::UntrustedPublisher)
            .map(|to| ErrorReply {
                to,
                body: serde_json::to_vec(&reply).expect("replies serialise"),
            });
        Action::DeadLetter(DeadLetter {
            rejection,
            event_id: id,
            reply,
        })
    }

    /// The delivery's `reply_to`, if replies may go there (contract section 6): anything but a
    /// reply queue could be another consumer's queue.
    fn reply_to(&self, delivery: &Delivery) -> Option<String> {
        let queue = delivery.properties.reply_to().as_ref()?.as_str();
        if properties::reply_allowed(queue, &self.settings.amqp.reply_queue_prefix) {
            return Some(queue.to_owned());
        }
        self.metrics.replies_refused.inc();
        tracing::warn!(
            reply_to = queue,
            "reply_to is not a reply queue (amq.gen-..., amq.rabbitmq.reply-to..., or \
             amqp.reply_queue_prefix); no reply is sent"
        );
        None
    }

    /// Permanent checks that need no database: the publisher, then the body.
    fn check(&self, delivery: &Delivery) -> Result<P::Message, Rejection> {
        let trusted = &self.settings.amqp.trusted_publishers;
        if trusted.is_empty() && P::TRUSTED_ONLY {
            return Err(Rejection::new(
                RejectionKind::UntrustedPublisher,
                format!(
                    "{} are heard only from amqp.trusted_publishers, which is empty",
                    P::CONSUMER.as_str()
                ),
            ));
        }
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
        let max_bytes = self.settings.worker.max_message_bytes;
        let properties = &delivery.properties;
        match properties.headers() {
            // Binary content mode: read as the structured envelope it stands for.
            Some(headers) if binary::is_binary(Some(headers)) => {
                let content_type = properties.content_type().as_ref().map(|c| c.as_str());
                let envelope = binary::envelope(headers, content_type, &delivery.data, max_bytes)?;
                P::decode(&envelope, usize::MAX)
            }
            _ => P::decode(&delivery.data, max_bytes),
        }
    }

    /// Processes a batch, retrying transient failures for as long as it takes (the deliveries
    /// stay unacknowledged meanwhile, so nothing else is taken from the queue). A batch that keeps
    /// failing is split so that one message cannot hold back the others: a message the database
    /// refuses is dead-lettered `processing_failed`; a message that keeps conflicting is handed
    /// back to the broker, whose delivery limit bounds how often that can happen.
    async fn decide(
        &self,
        batch: &[Inbound<P::Message>],
    ) -> Result<Vec<Settle<P::Reply>>, SessionError> {
        let single = |failure: Failure| match failure {
            Failure::Stopped => Err(SessionError::Stopped),
            Failure::Conflicting(error) => {
                tracing::warn!(%error, "a message keeps conflicting; handing it back to the broker");
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
                    "batch failed; processing its messages one by one"
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

    async fn decide_with_retry(
        &self,
        batch: &[Inbound<P::Message>],
    ) -> Result<Vec<Verdict<P::Reply>>, Failure> {
        let mut backoff = crate::retry::delays(self.settings.worker.max_retry_delay);
        let mut conflicts = 0;
        loop {
            match self.processor.process(batch).await {
                // Replies and events were handed to the relay at the commit, before the acks.
                Ok(verdicts) => return Ok(verdicts),
                Err(error) if classify(&error) != ErrorClass::Permanent => {
                    if classify(&error) == ErrorClass::Conflict {
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
                    tracing::warn!(%error, retry_in = ?delay, "processing a batch failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Failure::Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => return Err(Failure::Permanent(error)),
            }
        }
    }
}

fn processing_failed<R>(error: &sqlx::Error) -> Verdict<R> {
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
