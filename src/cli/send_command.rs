//! `identity-sync send-command`: publishes one command (`binding.resolve`, `user.unlink`, or a
//! source's `directory.user_removed`, `user_renamed`, `user_restored`) as the platform would,
//! with a reply queue, and prints the reply and the events that followed. The way to try the end
//! of Asking-for-Binding, or a leaver and a mover, by hand.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use uuid::Uuid;

use super::round_trip::RoundTrip;
use crate::{
    domain::{
        command::{CommandOutcome, CommandReply, RESOLVE_TYPE, UNLINK_TYPE},
        leavers::{DirectoryOutcome, DirectoryReply, REMOVED_TYPE, RENAMED_TYPE, RESTORED_TYPE},
    },
    settings::Settings,
};

#[derive(Debug, Args)]
pub struct SendCommandArgs {
    #[command(subcommand)]
    command: CommandArgs,
    /// CloudEvents id; a random UUID by default. Send the same id twice to see deduplication.
    #[arg(long, global = true)]
    id: Option<String>,
    /// CloudEvents source.
    #[arg(long, global = true, default_value = "urn:identity-sync:send-command")]
    source: String,
    /// How long to wait for the reply.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print one JSON object ({"reply": ..., "events": [...]}) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CommandArgs {
    /// Resolve a pending binding as the person (or an operator) decided.
    #[command(name = "binding.resolve")]
    Resolve(ResolveArgs),
    /// Remove an identity from a user.
    #[command(name = "user.unlink")]
    Unlink(UnlinkArgs),
    /// The source says a person left.
    #[command(name = "directory.user_removed")]
    Removed(PersonArgs),
    /// The source says a person's id changed.
    #[command(name = "directory.user_renamed")]
    Renamed {
        #[command(flatten)]
        person: PersonArgs,
        /// The person's new id at the source.
        #[arg(long)]
        new_external_id: String,
    },
    /// The source says a person re-joined.
    #[command(name = "directory.user_restored")]
    Restored(PersonArgs),
}

#[derive(Debug, Args)]
struct PersonArgs {
    /// User pool (tenant) id.
    #[arg(long, default_value = "pool-1")]
    pool: String,
    /// The person's connection.
    #[arg(long)]
    connection: String,
    /// The person's id at the source.
    #[arg(long)]
    external_id: String,
    /// The source's own name for the change (`user_leave_org`, `delete_user`).
    #[arg(long)]
    source_event: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["link", "create", "reject"])))]
struct ResolveArgs {
    /// The pending binding.
    #[arg(long)]
    binding: Uuid,
    /// Link the identity to this user (with a proof other than `admin`: one of the candidates).
    #[arg(long, value_name = "USER_ID")]
    link: Option<Uuid>,
    /// Create a new user for the identity.
    #[arg(long)]
    create: bool,
    /// Reject the binding.
    #[arg(long)]
    reject: bool,
    /// Why (kept with a rejection).
    #[arg(long)]
    reason: Option<String>,
    /// How the person proved the account is theirs: password, otp, session, sso, or admin.
    #[arg(long)]
    proof: String,
    /// Who decided: the person's login, or an operator's name.
    #[arg(long)]
    actor: String,
}

#[derive(Debug, Args)]
struct UnlinkArgs {
    /// User pool (tenant) id.
    #[arg(long, default_value = "pool-1")]
    pool: String,
    /// The user holding the identity.
    #[arg(long)]
    user: Uuid,
    /// The identity's connection.
    #[arg(long)]
    connection: String,
    /// The identity's id at its source.
    #[arg(long)]
    external_id: String,
    /// Who asks.
    #[arg(long)]
    actor: String,
    /// Why.
    #[arg(long)]
    reason: Option<String>,
}

pub async fn run(args: SendCommandArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let (kind, data) = command_data(&args.command);
    let body = json!({
        "specversion": "1.0",
        "id": id,
        "source": args.source,
        "type": kind,
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "data": data,
    });
    let mut round_trip = RoundTrip::open(&settings.amqp, "send-command").await?;
    if let Some(person) = args.command.person() {
        return directory(round_trip, &args, person, kind, &id, &body).await;
    }
    let reply: CommandReply = round_trip.request(kind, &id, &body, args.timeout).await?;
    // The events about the binding, and about the user it was linked to, created for or
    // unlinked from.
    let binding = match &args.command {
        CommandArgs::Resolve(r) => Some(r.binding.to_string()),
        _ => None,
    };
    let user = match &args.command {
        CommandArgs::Resolve(_) => reply
            .binding
            .as_ref()
            .and_then(|b| b["user_id"].as_str())
            .map(str::to_owned),
        CommandArgs::Unlink(u) => Some(u.user.to_string()),
        _ => None,
    };
    let events = match reply.outcome {
        CommandOutcome::Done => {
            round_trip
                .events_where(|event| {
                    let subject = event["subject"].as_str();
                    subject.is_some()
                        && (subject == binding.as_deref() || subject == user.as_deref())
                })
                .await
        }
        _ => Vec::new(),
    };
    round_trip.close().await;
    super::round_trip::print("reply", &reply, &events, args.json)?;
    Ok(match reply.outcome {
        CommandOutcome::Done => ExitCode::SUCCESS,
        CommandOutcome::Refused | CommandOutcome::Error => ExitCode::from(1),
    })
}

impl CommandArgs {
    /// The person a directory event is about.
    fn person(&self) -> Option<&PersonArgs> {
        match self {
            Self::Removed(person) | Self::Restored(person) => Some(person),
            Self::Renamed { person, .. } => Some(person),
            Self::Resolve(_) | Self::Unlink(_) => None,
        }
    }
}

/// A directory event's round trip: its reply, and the events it caused (those naming its id as
/// their cause, or its identity, or its connection's held removals).
async fn directory(
    mut round_trip: RoundTrip<'_>,
    args: &SendCommandArgs,
    person: &PersonArgs,
    kind: &str,
    id: &str,
    body: &Value,
) -> anyhow::Result<ExitCode> {
    let reply: DirectoryReply = round_trip.request(kind, id, body, args.timeout).await?;
    let events = round_trip
        .events_where(|event| {
            let data = &event["data"];
            data["cause_event_id"] == id
                || data["identity"]["external_id"] == person.external_id.as_str()
                || data["old_external_id"] == person.external_id.as_str()
                || event["subject"] == person.connection.as_str()
        })
        .await;
    round_trip.close().await;
    super::round_trip::print("reply", &reply, &events, args.json)?;
    Ok(match reply.outcome {
        DirectoryOutcome::Done | DirectoryOutcome::Held | DirectoryOutcome::Ignored => {
            ExitCode::SUCCESS
        }
        DirectoryOutcome::Refused | DirectoryOutcome::Error => ExitCode::from(1),
    })
}

/// The command's type and `data`.
fn command_data(command: &CommandArgs) -> (&'static str, Value) {
    let person = |p: &PersonArgs| {
        json!({
            "user_pool_id": p.pool,
            "connection": p.connection,
            "external_id": p.external_id,
        })
    };
    match command {
        CommandArgs::Removed(p) => {
            let mut data = person(p);
            if let Some(source_event) = &p.source_event {
                data["source_event"] = json!(source_event);
            }
            (REMOVED_TYPE, data)
        }
        CommandArgs::Renamed {
            person: p,
            new_external_id,
        } => {
            let mut data = person(p);
            data["new_external_id"] = json!(new_external_id);
            (RENAMED_TYPE, data)
        }
        CommandArgs::Restored(p) => (RESTORED_TYPE, person(p)),
        CommandArgs::Resolve(r) => {
            let mut data = json!({
                "binding_id": r.binding,
                "actor": r.actor,
                "proof": r.proof,
                "reason": r.reason,
            });
            data["action"] = match (r.link, r.create) {
                (Some(user), _) => {
                    data["user_id"] = json!(user);
                    json!("link")
                }
                (None, true) => json!("create"),
                (None, false) => json!("reject"),
            };
            (RESOLVE_TYPE, data)
        }
        CommandArgs::Unlink(u) => (
            UNLINK_TYPE,
            json!({
                "user_pool_id": u.pool,
                "user_id": u.user,
                "connection": u.connection,
                "external_id": u.external_id,
                "actor": u.actor,
                "reason": u.reason,
            }),
        ),
    }
}
