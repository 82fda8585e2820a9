//! The one place where the worker's deliveries are settled with the broker. The consumer decides
//! an action per delivery (in the manner of ofborg's `Ack / NackRequeue / NackDump / Publish`
//! lists); `Settler::apply` carries them out: hands deliveries back, dead-letters with a reason
//! and an error reply, and acknowledges the rest with one multiple-ack.
//!
//! A dead letter is published to the dead-letter exchange with properties built here (see
//! `properties::dead_letter`). Should that publish fail anyway (refused, nacked, the channel gone),
//! the delivery is rejected without requeue instead: the work queue's own dead-lettering then
//! moves it to the same dead-letter exchange (without the reason header, with the broker's
//! `x-death`). Either way the consumer goes on: no message can hold the queue behind it.

use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
        ConfirmSelectOptions,
    },
    types::ShortString,
};

use super::{
    OPERATION_TIMEOUT, bounded,
    nodes::BrokerUrls,
    properties::{self, Returned},
    replies::{OutgoingReply, ReplyPublisher},
};
use crate::{
    domain::{
        login::{Rejection, RejectionKind, Wait},
        mask,
        message::Fate,
    },
    metrics::{Metrics, ReasonLabel},
};
use tokio::sync::mpsc;

/// How one delivery is settled: its fate (its reply aside: settling needs none), and what
/// carrying it out needs.
#[derive(Debug)]
pub(crate) struct Settling {
    pub fate: Fate<()>,
    /// The message's id, when it could be read, for the log.
    pub event_id: Option<String>,
    /// The error reply of a dead letter, when one is owed.
    pub error_reply: Option<ErrorReply>,
    /// The original publisher, when the message is a waiting copy of ours come back.
    pub returned: Option<Returned>,
}

impl Settling {
    pub fn of(fate: Fate<()>, event_id: Option<String>) -> Self {
        Self {
            fate,
            event_id,
            error_reply: None,
            returned: None,
        }
    }

    /// Back to the queue.
    pub fn handed_back() -> Self {
        Self::of(Fate::HandedBack, None)
    }
}

/// Where messages that cannot be decided yet wait, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct WaitQueue {
    pub queue: String,
    pub delay: std::time::Duration,
    /// The broker user the worker connects as (see `properties::waiting`).
    pub own_user: String,
}

/// An error reply: where it goes (already checked against the allowed reply queues) and its
/// JSON body.
#[derive(Debug)]
pub(crate) struct ErrorReply {
    pub to: String,
    pub body: Vec<u8>,
}

/// Error replies waiting for their task; past this many, more are given up (counted in
/// `idsync_replies_dropped_total`) rather than hold up the consumer.
const ERROR_REPLIES_WAITING: usize = 1_000;

/// Settles deliveries for one consumer session. Dead letters go out on a confirm channel of the
/// session's connection, opened again whenever the broker closed it; error replies on a
/// connection of their own (their address is the publisher's choice: see `amqp::replies`), from
/// a task of their own, so that a flood of malformed messages with addresses the broker chokes
/// on does not slow the consumer.
pub(crate) struct Settler<'a> {
    connection: &'a Connection,
    publisher: Option<Channel>,
    dead_letter_exchange: &'a str,
    wait: WaitQueue,
    metrics: &'a Metrics,
    error_replies: mpsc::Sender<OutgoingReply>,
}

impl<'a> Settler<'a> {
    pub fn new(
        connection: &'a Connection,
        urls: &BrokerUrls,
        dead_letter_exchange: &'a str,
        wait: WaitQueue,
        metrics: &'a Metrics,
    ) -> Self {
        let (error_replies, mut waiting) = mpsc::channel::<OutgoingReply>(ERROR_REPLIES_WAITING);
        let mut replies = ReplyPublisher::new(urls.clone(), "error replies", metrics.clone());
        // Ends, closing its connection, once the session's settler is gone and the replies
        // taken are sent.
        tokio::spawn(async move {
            while let Some(reply) = waiting.recv().await {
                replies.publish(std::slice::from_ref(&reply)).await;
            }
            replies.close().await;
        });
        Self {
            connection,
            publisher: None,
            dead_letter_exchange,
            wait,
            metrics,
            error_replies,
        }
    }

    /// Applies `actions` (one per delivery, in order). An error means the consumer's channel is
    /// unusable: the session ends and the broker redelivers what was not settled.
    pub async fn apply(
        &mut self,
        deliveries: &[Delivery],
        settlings: Vec<Settling>,
    ) -> lapin::Result<()> {
        // The last delivery to acknowledge: one multiple-ack up to it covers every delivery
        // before it that was not settled otherwise.
        let mut ack_up_to: Option<&Delivery> = None;
        for (delivery, settling) in deliveries.iter().zip(settlings) {
            match &settling.fate {
                Fate::Decided { .. } => ack_up_to = Some(delivery),
                // A panic short of the delivery limit goes back too (the worker dead-letters it
                // on its last delivery).
                Fate::HandedBack | Fate::Panicked => {
                    self.metrics.requeued.inc();
                    let requeue = BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    };
                    bounded(
                        OPERATION_TIMEOUT,
                        "handing a delivery back",
                        delivery.acker.nack(requeue),
                    )
                    .await?;
                }
                Fate::Waiting(wait) => {
                    // A copy that cannot be put to wait ends the session: the delivery is then
                    // redelivered and tried again.
                    self.send_to_wait(delivery, wait, &settling).await?;
                    self.ack_one(delivery, "acknowledging a message sent to wait")
                        .await?;
                }
                Fate::DeadLettered(rejection) => {
                    if self.dead_letter(delivery, rejection, &settling).await? {
                        // Acknowledged at once: a fault later in the batch must not have it
                        // redelivered and dead-lettered twice.
                        self.ack_one(delivery, "acknowledging a dead letter")
                            .await?;
                    }
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
        Ok(())
    }

    async fn ack_one(&self, delivery: &Delivery, what: &str) -> lapin::Result<()> {
        bounded(
            OPERATION_TIMEOUT,
            what,
            delivery.acker.ack(BasicAckOptions { multiple: false }),
        )
        .await
        .map(|_| ())
    }

    /// Dead-letters one delivery; `true` when it is still to be acknowledged (we published the
    /// dead letter), `false` when it was rejected for the broker to dead-letter.
    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        rejection: &Rejection,
        dead: &Settling,
    ) -> lapin::Result<bool> {
        let reason = rejection.reason();
        tracing::warn!(
            event_id = dead.event_id.as_deref().unwrap_or("-"),
            reason = %mask_reason(&reason),
            "dead-lettering"
        );
        let properties =
            properties::dead_letter(&delivery.properties, dead.returned.as_ref(), &reason);
        let exchange = self.dead_letter_exchange;
        let published = self
            .publish(
                exchange,
                delivery.routing_key.as_str(),
                &delivery.data,
                properties,
                false,
            )
            .await;
        let to_ack = match published {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "publishing a dead letter failed; rejecting the delivery for the broker to \
                     dead-letter instead"
                );
                self.metrics.dead_letter_fallbacks.inc();
                bounded(
                    OPERATION_TIMEOUT,
                    "rejecting a delivery",
                    delivery.acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await?;
                false
            }
        };
        self.metrics
            .dead_letters
            .get_or_create(&ReasonLabel {
                reason: rejection.kind.code(),
            })
            .inc();
        if let Some(reply) = &dead.error_reply {
            // The requester may be gone, or the name unknown: a reply is worth one try.
            let reply = OutgoingReply {
                to: reply.to.clone(),
                correlation_id: delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string()),
                message_id: uuid::Uuid::now_v7().to_string(),
                body: reply.body.clone(),
            };
            if self.error_replies.try_send(reply).is_err() {
                self.metrics.replies_dropped.inc();
                tracing::debug!("too many error replies waiting; one given up");
            }
        }
        Ok(to_ack)
    }

    /// Publishes a copy of `delivery` to the wait queue, confirmed.
    async fn send_to_wait(
        &mut self,
        delivery: &Delivery,
        wait: &Wait,
        waiting: &Settling,
    ) -> lapin::Result<()> {
        let reason = wait.reason.code();
        let waits = waiting.returned.as_ref().map_or(0, |r| r.waits);
        tracing::warn!(
            event_id = waiting.event_id.as_deref().unwrap_or("-"),
            reason,
            detail = wait.detail.as_str(),
            waits,
            retry_in = ?self.wait.delay,
            "cannot decide this message yet; it waits and is tried again"
        );
        let properties = properties::waiting(
            &delivery.properties,
            waiting.returned.as_ref(),
            &self.wait.own_user,
            self.wait.delay.as_millis(),
            reason,
        );
        let queue = self.wait.queue.clone();
        // Mandatory: with the wait queue gone (deleted by hand), the copy would be dropped and
        // the login with it. A return ends the session instead; the next declares the queue.
        self.publish("", &queue, &delivery.data, properties, true)
            .await?;
        self.metrics
            .waits
            .get_or_create(&ReasonLabel { reason })
            .inc();
        Ok(())
    }

    /// Publishes with a confirm on the publisher channel, opening it first if needed; a nack, a
    /// closed channel or (when `mandatory`) a message the broker could not route is an error
    /// (and the channel is opened again next time).
    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
        mandatory: bool,
    ) -> lapin::Result<()> {
        let channel = self.channel().await?;
        let publish = async {
            channel
                .basic_publish(
                    exchange.into(),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let refused = |why: String| Err(lapin::Error::from(std::io::Error::other(why)));
        match bounded(
            OPERATION_TIMEOUT,
            "publishing a copy of a delivery",
            publish,
        )
        .await
        {
            Ok(confirm) if confirm.is_ack() => match confirm.take_message() {
                None => Ok(()),
                Some(_) => refused(format!(
                    "the broker could not route a message to {routing_key:?} (is the queue gone?)"
                )),
            },
            Ok(_) => refused("the broker refused the publish (nack)".to_owned()),
            Err(error) => {
                self.publisher = None;
                Err(error)
            }
        }
    }

    async fn channel(&mut self) -> lapin::Result<Channel> {
        if let Some(channel) = &self.publisher
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let open = async {
            let channel = self.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(channel)
        };
        let channel = bounded(OPERATION_TIMEOUT, "opening a publisher channel", open).await?;
        self.publisher = Some(channel.clone());
        Ok(channel)
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

/// The id of a message that could not be decoded, when its body is JSON with a usable `id`.
pub(crate) fn undecoded_event_id(delivery: &Delivery, rejection: &Rejection) -> Option<String> {
    if rejection.kind == RejectionKind::TooLarge {
        return None;
    }
    // Binary content mode: the id is a header.
    if let Some(headers) = delivery.properties.headers()
        && super::binary::is_binary(Some(headers))
    {
        return match headers.inner().get("ce-id") {
            Some(lapin::types::AMQPValue::LongString(id)) => std::str::from_utf8(id.as_bytes())
                .ok()
                .filter(|id| id.chars().count() <= 128)
                .map(str::to_owned),
            _ => None,
        };
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
