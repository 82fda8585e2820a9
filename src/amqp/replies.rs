//! Replies go out on a connection of their own. Whoever publishes a login or a command chooses its
//! `reply_to`, and RabbitMQ closes the whole connection that publishes to a direct reply-to
//! address it cannot decode (`amq.rabbitmq.reply-to.AAAA.BBBB` answers `INTERNAL_ERROR`). On the
//! relay's connection such a reply would take the events down with it (and come back with every
//! reconnect); on the consumer's, every delivery in flight.
//!
//! A batch of replies is published pipelined and confirmed. If the connection goes, the replies
//! it did not confirm are published again one at a time, each on a working connection: a reply
//! over which the broker closes one with `INTERNAL_ERROR` on its own is given up (counted in
//! `idsync_replies_dropped_total`), so one hostile address costs two connections at most and
//! never the replies of others. Replies refused, timed out or without any connection are
//! reported unsent, for the caller to try later.

use lapin::{
    Channel, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    protocol::{AMQPErrorKind, AMQPHardError},
    types::ShortString,
};

use super::{CLOSE_TIMEOUT, OPERATION_TIMEOUT, bounded, connect, nodes::BrokerUrls, properties};
use crate::metrics::Metrics;

/// One reply to publish.
#[derive(Debug, Clone)]
pub struct OutgoingReply {
    /// The queue (already checked against the allowed reply queues).
    pub to: String,
    pub correlation_id: Option<String>,
    pub message_id: String,
    pub body: Vec<u8>,
}

/// What became of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFate {
    /// The broker confirmed it (to a queue that may no longer exist: nobody is left to read it).
    Delivered,
    /// It broke a connection on its own: given up.
    Dropped,
    /// No connection could be had: not sent.
    Unsent,
}

/// Whether the broker closed the connection with `INTERNAL_ERROR`: what RabbitMQ does when it
/// cannot decode a direct reply-to name.
fn broke_the_connection(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))
    )
}

fn is_timeout(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// A connection for replies, opened when first needed and again after it broke.
pub struct ReplyPublisher {
    urls: BrokerUrls,
    role: &'static str,
    open: Option<(Connection, Channel)>,
    metrics: Metrics,
}

impl ReplyPublisher {
    pub fn new(urls: BrokerUrls, role: &'static str, metrics: Metrics) -> Self {
        Self {
            urls,
            role,
            open: None,
            metrics,
        }
    }

    /// Publishes `replies`; one outcome per reply, in order. A reply is given up only when the
    /// broker closed the connection with `INTERNAL_ERROR` as it took that reply alone; a refusal,
    /// a timeout or another fault leaves it unsent, for later.
    pub async fn publish(&mut self, replies: &[OutgoingReply]) -> Vec<ReplyFate> {
        let mut outcomes = vec![ReplyFate::Unsent; replies.len()];
        if replies.is_empty() {
            return outcomes;
        }
        // Pipelined, on the connection as it is.
        if let Ok(channel) = self.channel().await {
            let mut confirms = Vec::with_capacity(replies.len());
            for (i, reply) in replies.iter().enumerate() {
                match send(&channel, reply).await {
                    Ok(confirm) => confirms.push((i, confirm)),
                    Err(_) => break,
                }
            }
            for (i, confirm) in confirms {
                match bounded(OPERATION_TIMEOUT, "confirming a reply", confirm).await {
                    Ok(confirmation) if confirmation.is_ack() => {
                        outcomes[i] = ReplyFate::Delivered;
                    }
                    // Nacked: tried again below.
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        if outcomes.iter().all(|o| *o == ReplyFate::Delivered) {
            return outcomes;
        }
        // What is left, one at a time: a reply that breaks a working connection on its own is
        // given up.
        self.close().await;
        for (i, reply) in replies.iter().enumerate() {
            if outcomes[i] == ReplyFate::Delivered {
                continue;
            }
            let Ok(channel) = self.channel().await else {
                // No connection: the rest stays unsent.
                break;
            };
            let confirmed = async {
                bounded(
                    OPERATION_TIMEOUT,
                    "confirming a reply",
                    send(&channel, reply).await?,
                )
                .await
            };
            match confirmed.await {
                Ok(confirmation) if confirmation.is_ack() => {
                    outcomes[i] = ReplyFate::Delivered;
                }
                Err(error) if broke_the_connection(&error) => {
                    outcomes[i] = ReplyFate::Dropped;
                    self.metrics.replies_dropped.inc();
                    tracing::warn!(
                        reply_to = %reply.to,
                        "the broker closed the connection over this reply (INTERNAL_ERROR): a \
                         reply_to it cannot decode; given up"
                    );
                    self.close().await;
                }
                // Refused (a full reply queue, say) or the broker away: left for later.
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "a reply could not be published; it is tried again later");
                    self.close().await;
                    if is_timeout(&error) {
                        // A blocked connection (a resource alarm): the rest would wait as long.
                        break;
                    }
                }
            }
        }
        outcomes
    }

    async fn channel(&mut self) -> lapin::Result<Channel> {
        if let Some((connection, channel)) = &self.open
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        self.close().await;
        let open = async {
            let connection = connect(&self.urls, self.role).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok((connection, channel))
        };
        let (connection, channel) = bounded(OPERATION_TIMEOUT, "opening a reply channel", open)
            .await
            .inspect_err(|error| tracing::warn!(%error, "no connection for replies"))?;
        self.open = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Closes the connection, if any (a broken one is only dropped).
    pub async fn close(&mut self) {
        if let Some((connection, _)) = self.open.take()
            && connection.status().connected()
        {
            let close = connection.close(200, "identity-sync replies closing".into());
            let _ = bounded(CLOSE_TIMEOUT, "closing", close).await;
        }
    }
}

async fn send(channel: &Channel, reply: &OutgoingReply) -> lapin::Result<PublisherConfirm> {
    let mut props = properties::json(&reply.message_id);
    if let Some(correlation_id) = &reply.correlation_id {
        props = props.with_correlation_id(correlation_id.as_str().into());
    }
    bounded(
        OPERATION_TIMEOUT,
        "publishing a reply",
        channel.basic_publish(
            "".into(),
            ShortString::from(reply.to.as_str()),
            BasicPublishOptions::default(),
            &reply.body,
            props,
        ),
    )
    .await
}
