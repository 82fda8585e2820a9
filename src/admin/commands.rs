//! Commands over the queue (contract section 6): the same operations as the admin API, run for
//! the platform's `binding.resolve` and `user.unlink`, with the command's claim, its effects and
//! its reply committed in one transaction.

use serde_json::Value;
use sqlx::PgConnection;

use super::{Admin, AdminError, Applied, bindings::view, users::Unlink};
use crate::db::{
    bindings, commands,
    outbox::{self, NewOutbox, OutboxRow},
};
use crate::domain::{
    command::{Command, CommandEvent, CommandOutcome, CommandReply},
    resolution::Resolver,
};
use crate::pipeline::{Inbound, Verdict};

impl Admin {
    /// Runs one command. A command seen before (same `source` and `id`) changes nothing and is
    /// answered its first reply again. A refusal is a reply, not an error: `Err` is a database
    /// failure, after which nothing was written and the command can be retried.
    pub(crate) async fn command(
        &self,
        message: &Inbound<CommandEvent>,
    ) -> sqlx::Result<Verdict<CommandReply>> {
        let event = &message.event;
        let mut tx = self.pool.begin().await?;
        let claimed =
            commands::claim(&mut tx, &event.source, &event.id, event.command.kind()).await?;
        let (reply, mut published, duplicate) = match claimed {
            Some(stored) => (replayed(&event.id, stored), Vec::new(), true),
            None => {
                let (reply, published) = self.execute(&mut tx, event).await?;
                let stored = serde_json::to_value(&reply).expect("replies serialise");
                commands::record_reply(&mut tx, &event.source, &event.id, &stored).await?;
                (reply, published, false)
            }
        };
        if let Some(reply_to) = &message.reply_to {
            let mut outbox = NewOutbox::default();
            outbox.reply(
                reply_to,
                message.correlation_id.as_deref(),
                serde_json::to_value(&reply).expect("replies serialise"),
            );
            published.extend(outbox::insert_many(&mut tx, self.origin, outbox).await?);
        }
        self.commit(tx, published).await?;
        Ok(Verdict::Decided { reply, duplicate })
    }

    /// Applies a first-seen command in `tx`: its reply, and the outbox rows it wrote.
    async fn execute(
        &self,
        tx: &mut PgConnection,
        event: &CommandEvent,
    ) -> sqlx::Result<(CommandReply, Vec<OutboxRow>)> {
        let (applied, binding_id) = match &event.command {
            Command::Resolve {
                binding_id,
                request,
                actor,
                proof,
            } => {
                let resolver = Resolver {
                    actor: actor.clone(),
                    proof: *proof,
                };
                let applied = self
                    .resolve_in(tx, *binding_id, request.clone(), &resolver)
                    .await
                    .map(Applied::discard);
                (applied, Some(*binding_id))
            }
            Command::Unlink {
                user_pool_id,
                user_id,
                connection,
                external_id,
                actor,
                reason,
            } => {
                let target = Unlink {
                    user_pool_id: Some(user_pool_id.as_str()),
                    user_id: *user_id,
                    connection: connection.as_str(),
                    external_id,
                    reason: reason.as_deref(),
                };
                let applied = self.unlink_in(tx, &target, actor).await;
                let applied = applied.map(Applied::discard);
                (applied, None)
            }
        };
        // A refusal before any write leaves nothing to publish.
        let (result, published) = match applied {
            Ok(Applied { result, published }) => (result, published),
            Err(error) => (Err(error), Vec::new()),
        };
        let (outcome, code) = match result {
            Ok(()) => (CommandOutcome::Done, None),
            Err(AdminError::Database(error)) => return Err(error),
            Err(refusal) => (CommandOutcome::Refused, Some(refusal.code().to_owned())),
        };
        let binding = match binding_id {
            Some(id) => binding_value(tx, id).await?,
            None => None,
        };
        let reply = CommandReply {
            command_id: Some(event.id.clone()),
            outcome,
            code,
            binding,
        };
        Ok((reply, published))
    }
}

/// The binding as `GET /v1/bindings/{id}` shows it to an admin, if it exists.
async fn binding_value(tx: &mut PgConnection, id: uuid::Uuid) -> sqlx::Result<Option<Value>> {
    Ok(match bindings::get(tx, id).await? {
        Some(row) => Some(serde_json::to_value(view(tx, row).await?).expect("views serialise")),
        None => None,
    })
}

/// The reply stored for a command processed before. It is stored with the claim, in one
/// transaction; should it not read back, the command is answered `done` without a binding.
fn replayed(command_id: &str, stored: Value) -> CommandReply {
    serde_json::from_value(stored).unwrap_or_else(|_| CommandReply {
        command_id: Some(command_id.to_owned()),
        outcome: CommandOutcome::Done,
        code: None,
        binding: None,
    })
}
