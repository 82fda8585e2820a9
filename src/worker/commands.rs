//! The commands worker's processor: the admin service runs each `binding.resolve`,
//! `user.unlink` and directory event from the platform, one per transaction.

use crate::{
    admin::Admin,
    domain::{
        command::{CommandEvent, QueueReply},
        message::{Fate, Message},
    },
    metrics::{CommandLabel, Metrics},
};

use super::Processor;

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

    async fn process(
        &self,
        batch: &[Message<CommandEvent>],
        metrics: &Metrics,
    ) -> sqlx::Result<Vec<Fate<QueueReply>>> {
        let mut fates = Vec::with_capacity(batch.len());
        for message in batch {
            let fate = self.admin.command(message).await?;
            if let Fate::Decided { reply, duplicate } = &fate {
                record(metrics, &message.event, reply, *duplicate);
            }
            fates.push(fate);
        }
        Ok(fates)
    }
}

/// Counts and logs a processed command.
fn record(metrics: &Metrics, event: &CommandEvent, reply: &QueueReply, duplicate: bool) {
    metrics
        .commands
        .get_or_create(&CommandLabel {
            command: event.command.kind(),
            outcome: reply.outcome(),
        })
        .inc();
    tracing::info!(
        command_id = event.id.as_str(),
        command = event.command.kind(),
        outcome = reply.outcome(),
        code = ?reply.code(),
        duplicate,
        "command processed"
    );
}
