//! Commands over the queue (contract section 6): the same operations as the admin API, run for
//! the platform's `binding.resolve` and `user.unlink`, and the source's directory events
//! (section 11), with the message's claim, its effects and its reply committed in one
//! transaction.

use serde_json::Value;
use sqlx::{Acquire, PgConnection};

use super::{Admin, AdminError, Applied, bindings::view, users::Unlink};
use crate::db::{
    self, bindings, commands,
    outbox::{self, NewOutbox, OutboxRow},
};
use crate::domain::message::{Fate, Message};
use crate::domain::{
    command::{Command, CommandEvent, CommandOutcome, CommandReply, QueueReply},
    leavers::{DirectoryOutcome, DirectoryReply},
    resolution::Resolver,
};

impl Admin {
    /// Runs one command. A command seen before (same `source` and `id`) changes nothing and is
    /// answered its first reply again. A refusal is a reply, not an error: `Err` is a database
    /// failure, after which nothing was written and the command can be retried.
    pub(crate) async fn command(
        &self,
        message: &Message<CommandEvent>,
    ) -> sqlx::Result<Fate<QueueReply>> {
        // Every wait before the commit is bounded here (the commit by the relay's hand-off); a
        // connection that got no answer is closed.
        let deadline = tokio::time::Instant::now() + self.relay.stall();
        let mut conn = db::within(deadline, "taking a connection", self.pool.acquire()).await?;
        let result = self.command_on(&mut conn, message, deadline).await;
        if let Err(error) = &result
            && db::unusable_connection(error)
        {
            conn.close_on_drop();
        }
        result
    }

    async fn command_on(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
        message: &Message<CommandEvent>,
        deadline: tokio::time::Instant,
    ) -> sqlx::Result<Fate<QueueReply>> {
        let event = &message.event;
        let mut tx = db::within(deadline, "beginning a command", conn.begin()).await?;
        let decided = db::within(deadline, "deciding a command", async {
            let claimed =
                commands::claim(&mut tx, &event.source, &event.id, event.command.kind()).await?;
            let (reply, mut published, duplicate) = match claimed {
                Some(stored) => (replayed(event, stored), Vec::new(), true),
                None => {
                    let (reply, published) = match &event.command {
                        Command::Directory(change) => {
                            match self.directory_change_in(&mut tx, event, change).await? {
                                Ok((reply, published)) => (QueueReply::Directory(reply), published),
                                // Nothing is committed: the claim goes with the transaction.
                                Err(rejection) => return Ok(Err(rejection)),
                            }
                        }
                        _ => {
                            let (reply, published) = self.execute(&mut tx, event).await?;
                            (QueueReply::Command(reply), published)
                        }
                    };
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
            Ok(Ok((reply, published, duplicate)))
        })
        .await?;
        let (reply, published, duplicate) = match decided {
            Ok(decided) => decided,
            Err(rejection) => return Ok(Fate::DeadLettered(rejection)),
        };
        self.commit(tx, published).await?;
        Ok(Fate::Decided { reply, duplicate })
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
                // The binding as the resolution left it is the reply's: not read again.
                let applied = self
                    .resolve_in(tx, *binding_id, request.clone(), &resolver)
                    .await
                    .map(|applied| {
                        applied.map(|after| {
                            Some(serde_json::to_value(after).expect("views serialise"))
                        })
                    });
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
                (applied.map(|applied| applied.map(|_| None)), None)
            }
            Command::Directory(_) => {
                unreachable!("directory events are run by directory_change_in")
            }
        };
        // A refusal before any write leaves nothing to publish.
        let (result, published) = match applied {
            Ok(Applied { result, published }) => (result, published),
            Err(error) => (Err(error), Vec::new()),
        };
        let (outcome, code, binding) = match result {
            Ok(binding) => (CommandOutcome::Done, None, binding),
            Err(AdminError::Database(error)) => return Err(error),
            // A refused resolution answers with the binding as it stands, when it exists.
            Err(refusal) => {
                let binding = match binding_id {
                    Some(id) => binding_value(tx, id).await?,
                    None => None,
                };
                (
                    CommandOutcome::Refused,
                    Some(refusal.code().to_owned()),
                    binding,
                )
            }
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

/// The code of the reply to a command processed before whose stored reply this program cannot
/// read (written by another version, edited by hand): said as an error rather than guessed.
pub const STORED_REPLY_UNREADABLE: &str = "stored_reply_unreadable";

/// The reply stored for a command processed before (stored with the claim, in one transaction),
/// read in the shape of the command's type. One that does not read back is answered as an
/// explicit error: what was decided is not known here, and `done` could tell a platform that a
/// refused command happened.
fn replayed(event: &CommandEvent, stored: Value) -> QueueReply {
    let command_id = event.id.as_str();
    let unreadable = |error: serde_json::Error| {
        tracing::warn!(
            %error,
            command_id,
            "the stored reply of a command processed before cannot be read; answering an error"
        );
    };
    if let Command::Directory(_) = event.command {
        return QueueReply::Directory(serde_json::from_value(stored).unwrap_or_else(|error| {
            unreadable(error);
            DirectoryReply::new(
                command_id,
                DirectoryOutcome::Error,
                Some(STORED_REPLY_UNREADABLE),
            )
        }));
    }
    QueueReply::Command(serde_json::from_value(stored).unwrap_or_else(|error| {
        unreadable(error);
        CommandReply {
            command_id: Some(command_id.to_owned()),
            outcome: CommandOutcome::Error,
            code: Some(STORED_REPLY_UNREADABLE.to_owned()),
            binding: None,
        }
    }))
}
