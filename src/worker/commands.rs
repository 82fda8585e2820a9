//! The commands worker's processor: the admin service runs each `binding.resolve` and
//! `user.unlink` from the platform, one per transaction.

use crate::{
    admin::Admin,
    domain::{
        command::{self, CommandEvent, CommandReply},
        login::Rejection,
    },
    health::Consumer,
    metrics::{CommandLabel, Metrics},
    pipeline::{Inbound, Verdict},
    settings::{AmqpSettings, Settings},
};

use super::Processor;

/// Unacknowledged commands the broker may push: commands are few next to logins, and each is
/// its own transaction.
const PREFETCH: u16 = 32;

/// Runs the platform's commands with the admin service's rules.
pub struct Commands {
    admin: Admin,
}

impl Commands {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

impl Processor for Commands {
    type Message = CommandEvent;
    type Reply = CommandReply;
    /// A command can link any candidate (or, with proof `admin`, any account): only the
    /// platform's own broker users may send one.
    const TRUSTED_ONLY: bool = true;
    const CONSUMER: Consumer = Consumer::Commands;

    fn queue(amqp: &AmqpSettings) -> &str {
        &amqp.commands_queue
    }

    fn prefetch(_: &Settings) -> u16 {
        PREFETCH
    }

    fn batch_size(_: &Settings) -> usize {
        1
    }

    /// Commands are few, and each is answered before the next is taken.
    fn concurrent_batches(_: &Settings) -> usize {
        1
    }

    fn decode(body: &[u8], max_bytes: usize) -> Result<CommandEvent, Rejection> {
        command::decode(body, max_bytes)
    }

    fn message_id(message: &CommandEvent) -> &str {
        &message.id
    }

    fn origin(&self) -> uuid::Uuid {
        self.admin.origin()
    }

    async fn process(
        &self,
        batch: &[Inbound<CommandEvent>],
    ) -> sqlx::Result<Vec<Verdict<CommandReply>>> {
        let mut verdicts = Vec::with_capacity(batch.len());
        for message in batch {
            verdicts.push(self.admin.command(message).await?);
        }
        Ok(verdicts)
    }

    fn record(metrics: &Metrics, event: &CommandEvent, reply: &CommandReply, duplicate: bool) {
        metrics
            .commands
            .get_or_create(&CommandLabel {
                command: event.command.kind(),
                outcome: reply.outcome.as_str(),
            })
            .inc();
        tracing::info!(
            command_id = event.id.as_str(),
            command = event.command.kind(),
            outcome = reply.outcome.as_str(),
            code = ?reply.code,
            duplicate,
            "command processed"
        );
    }

    fn error_reply(metrics: &Metrics, id: Option<String>, rejection: &Rejection) -> CommandReply {
        metrics
            .commands
            .get_or_create(&CommandLabel {
                command: "unknown",
                outcome: "error",
            })
            .inc();
        CommandReply::error(id, rejection)
    }
}
