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
    properties,
    replies::{OutgoingReply, ReplyPublisher},
};
use crate::{
    domain::{
        login::{Rejection, RejectionKind},
        mask,
    },
    metrics::{Metrics, ReasonLabel},
};
use tokio::sync::mpsc;

/// What becomes of one delivery.
#[derive(Debug)]
pub(crate) enum Action {
    /// Decided (or a duplicate): acknowledge.
    Ack,
    /// Back to the queue; counts toward the queue's delivery limit.
    Requeue,
    /// Cannot be processed: to the dead-letter queue, with an error reply if one was asked for.
    DeadLetter(DeadLetter),
}

#[derive(Debug)]
pub(crate) struct DeadLetter {
    /// Why; its reason goes into the dead letter's `x-idsync-error` header.
    pub rejection: Rejection,
    /// The message's id, when it could be read, for the log.
    pub event_id: Option<String>,
    /// The error reply, when one is owed.
    pub reply: Option<ErrorReply>,
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
    metrics: &'a Metrics,
    error_replies: mpsc::Sender<OutgoingReply>,
}

impl<'a> Settler<'a> {
    pub fn new(
        connection: &'a Connection,
        urls: &BrokerUrls,
        dead_letter_exchange: &'a str,
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
            metrics,
            error_replies,
        }
    }

    /// Applies `actions` (one per delivery, in order). An error means the consumer's channel is
    /// unusable: the session ends and the broker redelivers what was not settled.
    pub async fn apply(
        &mut self,
        deliveries: &[Delivery],
        actions: Vec<Action>,
    ) -> lapin::Result<()> {
        // The last delivery to acknowledge: one multiple-ack up to it covers every delivery
        // before it that was not settled otherwise.
        let mut ack_up_to: Option<&Delivery> = None;
        for (delivery, action) in deliveries.iter().zip(actions) {
            match action {
                Action::Ack => ack_up_to = Some(delivery),
                Action::Requeue => {
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
                Action::DeadLetter(dead) => {
                    if self.dead_letter(delivery, &dead).await? {
                        // Acknowledged at once: a fault later in the batch must not have it
                        // redelivered and dead-lettered twice.
                        bounded(
                            OPERATION_TIMEOUT,
                            "acknowledging a dead letter",
                            delivery.acker.ack(BasicAckOptions { multiple: false }),
                        )
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

    /// Dead-letters one delivery; `true` when it is still to be acknowledged (we published the
    /// dead letter), `false` when it was rejected for the broker to dead-letter.
    async fn dead_letter(&mut self, delivery: &Delivery, dead: &DeadLetter) -> lapin::Result<bool> {
        let reason = dead.rejection.reason();
        tracing::warn!(
            event_id = dead.event_id.as_deref().unwrap_or("-"),
            reason = %mask_reason(&reason),
            "dead-lettering"
        );
        let properties = properties::dead_letter(&delivery.properties, &reason);
        let exchange = self.dead_letter_exchange;
        let published = self
            .publish(
                exchange,
                delivery.routing_key.as_str(),
                &delivery.data,
                properties,
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
                reason: dead.rejection.kind.code(),
            })
            .inc();
        if let Some(reply) = &dead.reply {
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

    /// Publishes with a confirm on the publisher channel, opening it first if needed; a nack or
    /// a closed channel is an error (and the channel is opened again next time).
    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> lapin::Result<()> {
        let channel = self.channel().await?;
        let publish = async {
            channel
                .basic_publish(
                    exchange.into(),
                    ShortString::from(routing_key),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?
                .await
        };
        match bounded(OPERATION_TIMEOUT, "publishing a dead letter", publish).await {
            Ok(confirm) if confirm.is_ack() => Ok(()),
            Ok(_) => Err(lapin::Error::from(std::io::Error::other(
                "the broker refused the publish (nack)",
            ))),
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
