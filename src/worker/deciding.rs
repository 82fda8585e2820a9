//! Deciding a batch: its messages decided by the processor in one transaction, waited out while
//! the system is at fault, split when one message is, and each delivery's fate made ready for
//! settling.

use std::time::Instant;

use lapin::message::Delivery;
use tracing::Instrument;

use super::{Processor, Reply, SessionError, Worker};
use crate::{
    amqp::{
        properties,
        settle::{ErrorReply, Settling, undecoded_event_id},
    },
    db::{ErrorClass, classify, sqlstate},
    domain::{
        login::{Rejection, RejectionKind},
        message::{Fate, Inbound, Message},
    },
    health::Consumer,
};

/// Conflicts (unique or serialization failures, deadlocks) retried in place before a batch is
/// split up, or a single message handed back to the broker.
const MAX_CONFLICT_RETRIES: u32 = 10;

/// A batch decided, waiting to be settled with the broker: one settling per delivery.
pub(super) struct Decided {
    pub deliveries: Vec<Delivery>,
    pub settlings: Vec<Settling>,
    /// When the batch was taken from the consumer.
    pub received: Instant,
}

/// Why deciding a batch did not succeed. A fault of the system is not among them: it is waited
/// out (see [`Worker::decide_with_retry`]).
#[derive(Debug)]
enum Failure {
    /// A stop was requested while retrying.
    Stopped,
    /// Conflicts that did not clear after `MAX_CONFLICT_RETRIES` tries.
    Conflicting(sqlx::Error),
    /// The database refused the data itself: the same message fails on a healthy system.
    Refused(sqlx::Error),
    /// Deciding panicked: a bug of the worker.
    Panicked,
}

impl<P: Processor> Worker<P> {
    /// Receives and decides a batch of deliveries; what becomes of each.
    pub(super) async fn decide_deliveries(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<Decided, SessionError> {
        let received = Instant::now();
        let span = tracing::debug_span!("batch", consumer = self.name(), size = deliveries.len());
        async {
            let mut batch = Vec::with_capacity(deliveries.len());
            // Per delivery: `None` if it is in the batch, else why it cannot be processed.
            let mut refused = Vec::with_capacity(deliveries.len());
            for delivery in &deliveries {
                match self.receive(delivery) {
                    (Ok(message), _) => {
                        batch.push(message);
                        refused.push(None);
                    }
                    (Err(rejection), reply_to) => refused.push(Some((rejection, reply_to))),
                }
            }
            let fates = if batch.is_empty() {
                Vec::new()
            } else {
                self.decide(&batch).await?
            };
            if self.lane.consumer == Consumer::Logins {
                self.metrics.batch_size.observe(batch.len() as f64);
                if deliveries.len() >= crate::health::QUEUED_BATCH.min(self.lane.batch_size) {
                    self.health.logins_queued();
                }
            }
            let mut decided = batch.iter().zip(fates);
            let settlings = deliveries
                .iter()
                .zip(refused)
                .map(|(delivery, refused)| match refused {
                    Some((rejection, reply_to)) => {
                        let id = undecoded_event_id(delivery, &rejection);
                        self.dead_letter(delivery, rejection, id, reply_to)
                    }
                    // The next fate is this delivery's: only the received ones are in the batch.
                    None => match decided.next() {
                        Some((message, fate)) => self.settling(delivery, message, fate),
                        // A processor that answered fewer messages than it was given: the rest
                        // go back to the queue.
                        None => Settling::handed_back(),
                    },
                })
                .collect();
            Ok(Decided {
                deliveries,
                settlings,
                received,
            })
        }
        .instrument(span)
        .await
    }

    /// What settling a decided message needs, given its fate.
    fn settling(
        &self,
        delivery: &Delivery,
        message: &Message<P::Message>,
        fate: Fate<Reply<P>>,
    ) -> Settling {
        let id = message.event.id().to_owned();
        let reply_to = message.reply_to.clone();
        match fate {
            // Counted and logged by the processor.
            Fate::Decided { duplicate, .. } => Settling::of(
                Fate::Decided {
                    reply: (),
                    duplicate,
                },
                Some(id),
            ),
            Fate::DeadLettered(rejection) => {
                self.dead_letter(delivery, rejection, Some(id), reply_to)
            }
            Fate::Panicked => {
                // The broker counts the times a message was handed back; at the limit it would
                // dead-letter the message itself, without saying why.
                let handed_back = properties::delivery_count(&delivery.properties);
                if handed_back + 1 < u64::from(self.settings.amqp.delivery_limit) {
                    return Settling::of(Fate::Panicked, Some(id));
                }
                let rejection = Rejection::new(
                    RejectionKind::ProcessingPanicked,
                    format!(
                        "the worker failed on this message on each of its {} deliveries (a bug \
                         of the worker, not of the message)",
                        handed_back + 1
                    ),
                );
                self.dead_letter(delivery, rejection, Some(id), reply_to)
            }
            Fate::Waiting(wait) => Settling {
                returned: self.returned(delivery),
                ..Settling::of(Fate::Waiting(wait), Some(id))
            },
            Fate::HandedBack => Settling::of(Fate::HandedBack, Some(id)),
        }
    }

    /// Dead-lettering, with the processor's error reply when one is owed. An untrusted publisher
    /// is not answered: it could aim error replies at the platform's own reply queue to fake
    /// failures of chosen messages.
    fn dead_letter(
        &self,
        delivery: &Delivery,
        rejection: Rejection,
        id: Option<String>,
        reply_to: Option<String>,
    ) -> Settling {
        self.metrics.dead_lettered_message(self.lane.consumer);
        let reply = <P::Message as Inbound>::error_reply(
            id.clone(),
            delivery.routing_key.as_str(),
            &rejection,
        );
        let error_reply = reply_to
            .filter(|_| rejection.kind != RejectionKind::UntrustedPublisher)
            .map(|to| ErrorReply {
                to,
                body: serde_json::to_vec(&reply).expect("replies serialise"),
            });
        Settling {
            error_reply,
            returned: self.returned(delivery),
            ..Settling::of(Fate::DeadLettered(rejection), id)
        }
    }

    /// Processes a batch, waiting out faults of the system for as long as they last (the
    /// deliveries stay unacknowledged meanwhile, so nothing else is taken from the queue). A
    /// batch that fails otherwise is split so that one message cannot hold back the others: a
    /// message the database refuses alone is dead-lettered `processing_failed`; one that keeps
    /// conflicting is handed back to the broker, whose delivery limit bounds how often that can
    /// happen; one whose deciding panics alone is handed back, and dead-lettered
    /// `processing_panicked` at the delivery limit.
    async fn decide(
        &self,
        batch: &[Message<P::Message>],
    ) -> Result<Vec<Fate<Reply<P>>>, SessionError> {
        let single = |failure: Failure| match failure {
            Failure::Stopped => Err(SessionError::Stopped),
            Failure::Conflicting(error) => {
                tracing::warn!(%error, "a message keeps conflicting; handing it back to the broker");
                Ok(Fate::HandedBack)
            }
            Failure::Refused(error) => Ok(Fate::DeadLettered(processing_failed(&error))),
            Failure::Panicked => Ok(Fate::Panicked),
        };
        match self.decide_caught(batch).await {
            Ok(fates) => Ok(fates),
            Err(Failure::Stopped) => Err(SessionError::Stopped),
            Err(failure) if batch.len() == 1 => Ok(vec![single(failure)?]),
            Err(failure) => {
                tracing::warn!(
                    ?failure,
                    size = batch.len(),
                    "batch failed; processing its messages one by one"
                );
                let mut fates = Vec::with_capacity(batch.len());
                for message in batch {
                    fates.push(
                        match self.decide_caught(std::slice::from_ref(message)).await {
                            Ok(mut one) => one.pop().unwrap_or(Fate::HandedBack),
                            Err(failure) => single(failure)?,
                        },
                    );
                }
                Ok(fates)
            }
        }
    }

    /// [`Self::decide_with_retry`], with a panic (a bug of the worker) caught as a failure of
    /// the batch: the process goes on with the other messages.
    async fn decide_caught(
        &self,
        batch: &[Message<P::Message>],
    ) -> Result<Vec<Fate<Reply<P>>>, Failure> {
        use futures_lite::FutureExt;
        match std::panic::AssertUnwindSafe(self.decide_with_retry(batch))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|m| (*m).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.metrics.panics.inc();
                tracing::error!(
                    panic = %message,
                    size = batch.len(),
                    "deciding panicked (a bug of the worker); nothing of it was committed"
                );
                Err(Failure::Panicked)
            }
        }
    }

    /// Processes a batch until it is committed, a stop is requested, or it fails in a way that
    /// is the messages' own (see [`crate::db::ErrorClass`]). Conflicts are retried in place a
    /// few times; a fault of the system for as long as it lasts, with the consumer held back,
    /// `/readyz` naming the fault and one error line per retry.
    async fn decide_with_retry(
        &self,
        batch: &[Message<P::Message>],
    ) -> Result<Vec<Fate<Reply<P>>>, Failure> {
        let component = self.name();
        let max_delay = self.settings.worker.max_retry_delay;
        let mut backoff = crate::retry::delays(max_delay);
        let mut conflicts = 0;
        loop {
            let error = match self.processor.process(batch, &self.metrics).await {
                // Replies and events were handed to the relay at the commit, before the acks.
                Ok(fates) => {
                    if self.health.clear_fault(component) {
                        tracing::info!(
                            consumer = component,
                            "the database works again; consuming resumed"
                        );
                    }
                    return Ok(fates);
                }
                Err(error) => error,
            };
            let delay = backoff.next().unwrap_or(max_delay);
            match classify(&error) {
                ErrorClass::Refused => return Err(Failure::Refused(error)),
                ErrorClass::Conflict => {
                    conflicts += 1;
                    if conflicts > MAX_CONFLICT_RETRIES {
                        return Err(Failure::Conflicting(error));
                    }
                    self.metrics.transient("database");
                    tracing::warn!(%error, retry_in = ?delay, "a batch conflicted; retrying");
                }
                ErrorClass::System(fault) => {
                    self.metrics.transient("database");
                    self.metrics.system_fault(component, fault);
                    self.health
                        .set_fault(component, fault, sqlstate(&error).as_deref());
                    tracing::error!(
                        %error,
                        consumer = component,
                        fault = fault.as_str(),
                        size = batch.len(),
                        retry_in = ?delay,
                        "the database cannot take this work now: a fault of the system, not of \
                         the messages, which wait unacknowledged (none is dead-lettered for it); \
                         retrying"
                    );
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Failure::Stopped),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A message the database refused alone: dead-lettered with the SQLSTATE only (the database's
/// message can quote the message's data).
fn processing_failed(error: &sqlx::Error) -> Rejection {
    tracing::error!(%error, "a message failed permanently in the database");
    let detail = match error.as_database_error() {
        Some(db) => format!(
            "the database refused the event (SQLSTATE {})",
            db.code().unwrap_or_default()
        ),
        None => "the event could not be stored".to_owned(),
    };
    Rejection::new(RejectionKind::ProcessingFailed, detail)
}
