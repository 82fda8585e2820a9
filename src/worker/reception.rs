//! Receiving a delivery: whether its publisher is heard, its body decoded (either CloudEvents
//! content mode), and where its reply may go. A waiting copy of this worker's own stands for its
//! original publisher and reply address.

use lapin::message::Delivery;

use super::{Processor, Worker};
use crate::{
    amqp::{
        binary,
        properties::{self, Returned},
    },
    domain::{
        login::{Rejection, RejectionKind},
        message::{Inbound, Message},
    },
};

impl<P: Processor> Worker<P> {
    /// The delivery as a message, or why it cannot be processed (a permanent fault of its own,
    /// found without the database), with where its reply may go either way.
    pub(super) fn receive(
        &self,
        delivery: &Delivery,
    ) -> (Result<Message<P::Message>, Rejection>, Option<String>) {
        let reply_to = self.reply_to(delivery);
        let received = self.check(delivery).map(|event| Message {
            event,
            reply_to: reply_to.clone(),
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string()),
        });
        (received, reply_to)
    }

    /// The original publisher of a delivery that is a waiting copy of this worker's come back.
    pub(super) fn returned(&self, delivery: &Delivery) -> Option<Returned> {
        properties::returned(&delivery.properties, &self.settings.amqp.url.user())
    }

    /// The delivery's `reply_to`, if replies may go there (contract section 6): anything but a
    /// reply queue could be another consumer's queue.
    fn reply_to(&self, delivery: &Delivery) -> Option<String> {
        let returned = self.returned(delivery);
        let queue = match &returned {
            Some(returned) => returned.reply_to.as_deref()?,
            None => delivery.properties.reply_to().as_ref()?.as_str(),
        };
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
        if trusted.is_empty() && self.lane.trusted_only {
            return Err(Rejection::new(
                RejectionKind::UntrustedPublisher,
                format!(
                    "{} are heard only from amqp.trusted_publishers, which is empty",
                    self.name()
                ),
            ));
        }
        if !trusted.is_empty() {
            // A waiting copy of ours stands for its original publisher.
            let returned = self.returned(delivery);
            let user = match &returned {
                Some(returned) => returned.user_id.as_deref(),
                None => delivery.properties.user_id().as_ref().map(|u| u.as_str()),
            };
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
                <P::Message as Inbound>::decode(&envelope, usize::MAX)
            }
            _ => <P::Message as Inbound>::decode(&delivery.data, max_bytes),
        }
    }
}
