//! A message taken from one of the worker's queues, and what becomes of it: the two types every
//! step of a delivery's life speaks (the worker takes and settles it, the pipeline or the
//! command service decides it), here so that none of them reaches into another for them.

use super::{
    command::{self, CommandEvent, QueueReply},
    events::Reply,
    login::{self, LoginEvent, Rejection, Wait},
};

/// A kind of message the worker takes (a login, a command): how it is read from a body, named,
/// and answered when it is dead-lettered. Deciding it is the worker's processor's.
pub trait Inbound: Sized + Send + Sync {
    /// What a message of this kind is answered.
    type Reply: serde::Serialize + Send + Sync;
    /// Reads a body; a [`Rejection`] dead-letters the message.
    fn decode(body: &[u8], max_bytes: usize) -> Result<Self, Rejection>;
    /// The message's id, for logs and for its reply.
    fn id(&self) -> &str;
    /// The answer to a dead-lettered message (`id` when its body had one), delivered with
    /// `routing_key`.
    fn error_reply(id: Option<String>, routing_key: &str, rejection: &Rejection) -> Self::Reply;
}

impl Inbound for LoginEvent {
    type Reply = Reply;
    fn decode(body: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        login::decode(body, max_bytes)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn error_reply(id: Option<String>, _routing_key: &str, rejection: &Rejection) -> Reply {
        Reply::error(id, rejection)
    }
}

impl Inbound for CommandEvent {
    type Reply = QueueReply;
    fn decode(body: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        command::decode(body, max_bytes)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn error_reply(id: Option<String>, routing_key: &str, rejection: &Rejection) -> QueueReply {
        QueueReply::error(id, routing_key, rejection)
    }
}

/// A message (a login by default), decoded and checked, with where its reply goes.
#[derive(Debug, Clone)]
pub struct Message<M = LoginEvent> {
    /// The message as read from its body.
    pub event: M,
    /// Where the reply goes: the delivery's `reply_to`, if replies may go there.
    pub reply_to: Option<String>,
    /// The delivery's `correlation_id`, copied onto its reply.
    pub correlation_id: Option<String>,
}

/// What becomes of one message: the one answer of deciding it, carried out by settling it with
/// the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate<R = Reply> {
    /// Decided now (or before: a duplicate, answered its first reply); its effects and reply are
    /// committed. Acknowledged.
    Decided { reply: R, duplicate: bool },
    /// Its own fault: dead-lettered with the reason, and answered an error if it asked for a
    /// reply. Nothing was written for it.
    DeadLettered(Rejection),
    /// It cannot be decided yet (nothing was written for it): a copy waits in the wait queue and
    /// comes back.
    Waiting(Wait),
    /// Handed back to its queue (a conflict that never cleared); counts toward the queue's
    /// delivery limit.
    HandedBack,
    /// Deciding it made the worker fail (a bug): handed back, or dead-lettered on its last
    /// delivery.
    Panicked,
}
