//! Commands over the queue (contract section 6): the platform resolves a pending binding the
//! person decided at login (`binding.resolve`), or unlinks an identity (`user.unlink`), with no
//! admin token. A command that cannot be read as one is dead-lettered like a bad login; a command
//! that reads well but that the rules refuse is answered `refused` with the admin API's code.
//!
//! The source's directory events (`directory.user_removed`, `user_renamed`, `user_restored`,
//! contract section 11) share the queue: they too are heard only from trusted publishers,
//! deduplicated by (`source`, `id`) and answered, and are few next to logins.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::connection::{ConnectionId, UserPoolId};
use super::leavers::{self, DirectoryChange, DirectoryReply};
use super::login::{Envelope, Rejection, RejectionKind, brief, invalid, required_string};
use super::resolution::{Proof, Request};

/// The CloudEvents `type` of a binding resolution; also its routing key on the inbound exchange.
pub const RESOLVE_TYPE: &str = "binding.resolve";
/// The CloudEvents `type` of an unlink; also its routing key on the inbound exchange.
pub const UNLINK_TYPE: &str = "user.unlink";
/// The routing keys the commands queue is bound with.
pub const ROUTING_KEYS: [&str; 5] = [
    RESOLVE_TYPE,
    UNLINK_TYPE,
    leavers::REMOVED_TYPE,
    leavers::RENAMED_TYPE,
    leavers::RESTORED_TYPE,
];

const MAX_ACTOR_CHARS: usize = 256;
const MAX_REASON_CHARS: usize = 1024;
const MAX_EXTERNAL_ID_CHARS: usize = 256;

/// A command read from the queue: its CloudEvents identity (what a re-sent command is recognised
/// by) and what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEvent {
    /// The CloudEvents `id`; with `source`, the command's dedupe key.
    pub id: String,
    /// The CloudEvents `source`: the platform that sent it.
    pub source: String,
    /// What to do.
    pub command: Command,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `binding.resolve`: link, create or reject, as the person (or an operator) decided.
    Resolve {
        /// The pending binding to resolve.
        binding_id: Uuid,
        /// Link to a user, create a new user, or reject.
        request: Request,
        /// Who decided: the person's login, or an operator's name. Recorded in the audit log and
        /// in `binding.resolved` as `resolved_by`.
        actor: String,
        /// How the person proved the account is theirs; `admin` for an operator.
        proof: Proof,
    },
    /// `user.unlink`: remove an identity from a user, as `DELETE /v1/users/{id}/identities/...`.
    Unlink {
        /// The user's pool; a user of another pool is not found.
        user_pool_id: UserPoolId,
        /// The user holding the identity.
        user_id: Uuid,
        /// The identity's connection.
        connection: ConnectionId,
        /// The identity's id at its source.
        external_id: String,
        /// Who asked, for the audit log and `user.unlinked`.
        actor: String,
        /// Why, for `user.unlinked`; optional.
        reason: Option<String>,
    },
    /// `directory.*`: the source says a person left, was renamed or re-joined.
    Directory(DirectoryChange),
}

impl Command {
    /// The command's CloudEvents `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Resolve { .. } => RESOLVE_TYPE,
            Self::Unlink { .. } => UNLINK_TYPE,
            Self::Directory(change) => change.kind(),
        }
    }
}

/// Reads a command: a CloudEvents envelope of one of [`ROUTING_KEYS`]' types whose
/// `data` has every field the type needs, well typed. Anything else is a [`Rejection`]: the
/// message is dead-lettered.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<CommandEvent, Rejection> {
    let envelope = Envelope::decode(body, max_bytes)?;
    let kind = match &envelope.kind {
        Some(Value::String(t)) if ROUTING_KEYS.contains(&t.as_str()) => t.clone(),
        Some(other) => {
            return Err(Rejection::new(
                RejectionKind::WrongType,
                format!(
                    "type must be one of {}, got {}",
                    ROUTING_KEYS.join(", "),
                    brief(other)
                ),
            ));
        }
        None => return Err(invalid("type is missing")),
    };
    let data = match &envelope.data {
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("data must be an object")),
        None => return Err(invalid("data is missing")),
    };
    let command = match kind.as_str() {
        RESOLVE_TYPE => resolve(data)?,
        UNLINK_TYPE => unlink(data)?,
        directory => Command::Directory(leavers::decode(directory, data)?),
    };
    Ok(CommandEvent {
        id: envelope.id,
        source: envelope.source,
        command,
    })
}

fn resolve(data: &Map<String, Value>) -> Result<Command, Rejection> {
    let binding_id = uuid(data, "binding_id")?;
    let reason = optional_string(data, "reason", MAX_REASON_CHARS)?;
    let action = required_string(data.get("action"), "data.action", 16)?;
    let request = match action.as_str() {
        "link" => Request::Link {
            user_id: uuid(data, "user_id")?,
        },
        "create" => Request::Create,
        "reject" => Request::Reject { reason },
        other => {
            return Err(invalid(format!(
                "data.action must be \"link\", \"create\" or \"reject\", got {other:?}"
            )));
        }
    };
    let proof = required_string(data.get("proof"), "data.proof", 16)?;
    let proof = proof
        .parse::<Proof>()
        .map_err(|m| invalid(format!("data.proof: {m}")))?;
    Ok(Command::Resolve {
        binding_id,
        request,
        actor: required_string(data.get("actor"), "data.actor", MAX_ACTOR_CHARS)?,
        proof,
    })
}

fn unlink(data: &Map<String, Value>) -> Result<Command, Rejection> {
    let user_pool_id = required_string(data.get("user_pool_id"), "data.user_pool_id", 128)?;
    let user_pool_id =
        UserPoolId::parse(&user_pool_id).map_err(|m| invalid(format!("data.user_pool_id: {m}")))?;
    let connection = required_string(data.get("connection"), "data.connection", 31)?;
    let connection =
        ConnectionId::parse(&connection).map_err(|m| invalid(format!("data.connection: {m}")))?;
    Ok(Command::Unlink {
        user_pool_id,
        user_id: uuid(data, "user_id")?,
        connection,
        external_id: required_string(
            data.get("external_id"),
            "data.external_id",
            MAX_EXTERNAL_ID_CHARS,
        )?,
        actor: required_string(data.get("actor"), "data.actor", MAX_ACTOR_CHARS)?,
        reason: optional_string(data, "reason", MAX_REASON_CHARS)?,
    })
}

fn uuid(data: &Map<String, Value>, field: &str) -> Result<Uuid, Rejection> {
    let name = format!("data.{field}");
    let raw = required_string(data.get(field), &name, 36)?;
    Uuid::parse_str(&raw).map_err(|_| invalid(format!("{name} must be a UUID, got {raw:?}")))
}

fn optional_string(
    data: &Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, Rejection> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        value => required_string(value, &format!("data.{field}"), max_chars).map(Some),
    }
}

text_enum!(
    /// How a command ended: `done` (its effects are committed), `refused` (the rules said no;
    /// `code` says why, as the admin API would), or `error` (it could not be read, and was
    /// dead-lettered; `code` is the dead letter's reason code).
    CommandOutcome { Done => "done", Refused => "refused", Error => "error" }
);

/// The reply to a message of the commands queue: a command's (section 6) or a directory
/// event's (section 11), each in its own shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum QueueReply {
    Command(CommandReply),
    Directory(DirectoryReply),
}

impl QueueReply {
    /// The reply's `outcome`, as its text.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Command(reply) => reply.outcome.as_str(),
            Self::Directory(reply) => reply.outcome.as_str(),
        }
    }

    /// The reply's `code`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Command(reply) => reply.code.as_deref(),
            Self::Directory(reply) => reply.code.as_deref(),
        }
    }

    /// The answer to a dead-lettered message of the queue, in the shape of its routing key's
    /// type (a routing key is its type on the inbound exchange).
    pub fn error(id: Option<String>, routing_key: &str, rejection: &Rejection) -> Self {
        if leavers::TYPES.contains(&routing_key) {
            Self::Directory(DirectoryReply::error(id, rejection))
        } else {
            Self::Command(CommandReply::error(id, rejection))
        }
    }
}

/// The reply to a command (contract section 6), sent when the command has a usable `reply_to`.
/// A re-sent or redelivered command gets the reply of its first processing.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CommandReply {
    /// The command's CloudEvents `id`; `null` when a dead-lettered body had no readable id.
    pub command_id: Option<String>,
    /// `done`, `refused` or `error`.
    pub outcome: CommandOutcome,
    /// Why it was refused (the admin API's error code) or dead-lettered (the reason code);
    /// `null` when done.
    pub code: Option<String>,
    /// For `binding.resolve`: the binding after the command (also when refused, if it exists), as
    /// `GET /v1/bindings/{id}` shows it; `null` for `user.unlink` and errors.
    pub binding: Option<Value>,
}

impl CommandReply {
    /// The reply to a command that was dead-lettered.
    pub fn error(command_id: Option<String>, rejection: &Rejection) -> Self {
        Self {
            command_id,
            outcome: CommandOutcome::Error,
            code: Some(rejection.kind.code().to_owned()),
            binding: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(kind: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "specversion": "1.0", "id": "c-1", "source": "urn:platform", "type": kind, "data": data,
        }))
        .unwrap()
    }

    fn read(kind: &str, data: Value) -> Result<Command, Rejection> {
        decode(&body(kind, data), 65536).map(|c| c.command)
    }

    const BINDING: &str = "0193a3c4-0000-7000-8000-000000000001";
    const USER: &str = "0193a3c4-0000-7000-8000-000000000002";

    #[test]
    fn reads_each_resolve_action() {
        let link = read(
            RESOLVE_TYPE,
            json!({"binding_id": BINDING, "action": "link", "user_id": USER, "actor": "zhangsan", "proof": "password"}),
        )
        .unwrap();
        assert_eq!(
            link,
            Command::Resolve {
                binding_id: BINDING.parse().unwrap(),
                request: Request::Link {
                    user_id: USER.parse().unwrap()
                },
                actor: "zhangsan".into(),
                proof: Proof::Password,
            }
        );
        let reject = read(
            RESOLVE_TYPE,
            json!({"binding_id": BINDING, "action": "reject", "reason": "not me", "actor": "a", "proof": "otp"}),
        )
        .unwrap();
        assert!(matches!(
            reject,
            Command::Resolve { request: Request::Reject { reason: Some(r) }, proof: Proof::Otp, .. } if r == "not me"
        ));
        let create = read(
            RESOLVE_TYPE,
            json!({"binding_id": BINDING, "action": "create", "actor": "ops", "proof": "admin"}),
        )
        .unwrap();
        assert!(matches!(
            create,
            Command::Resolve {
                request: Request::Create,
                proof: Proof::Admin,
                ..
            }
        ));
    }

    #[test]
    fn reads_an_unlink() {
        let unlink = read(
            UNLINK_TYPE,
            json!({"user_pool_id": "pool-1", "user_id": USER, "connection": "dingtalk-corp",
                   "external_id": "u-1", "actor": "ops", "reason": "left"}),
        )
        .unwrap();
        assert!(matches!(
            unlink,
            Command::Unlink { ref external_id, reason: Some(ref r), .. } if external_id == "u-1" && r == "left"
        ));
    }

    #[test]
    fn a_badly_shaped_command_is_a_rejection_naming_the_field() {
        let cases = [
            (
                json!({"binding_id": "nope", "action": "create", "actor": "a", "proof": "admin"}),
                "data.binding_id must be a UUID",
            ),
            (
                json!({"binding_id": BINDING, "action": "merge", "actor": "a", "proof": "admin"}),
                "data.action must be",
            ),
            (
                json!({"binding_id": BINDING, "action": "link", "actor": "a", "proof": "admin"}),
                "data.user_id is missing",
            ),
            (
                json!({"binding_id": BINDING, "action": "create", "proof": "admin"}),
                "data.actor is missing",
            ),
            (
                json!({"binding_id": BINDING, "action": "create", "actor": "", "proof": "admin"}),
                "data.actor must not be empty",
            ),
            (
                json!({"binding_id": BINDING, "action": "create", "actor": "a", "proof": "magic"}),
                "data.proof: \"magic\" is not one of",
            ),
            (
                json!({"binding_id": BINDING, "action": "create", "actor": "a"}),
                "data.proof is missing",
            ),
            (
                json!({"binding_id": BINDING, "action": "reject", "actor": "a", "proof": "otp", "reason": 5}),
                "data.reason must be a string",
            ),
        ];
        for (data, expected) in cases {
            let rejection = read(RESOLVE_TYPE, data.clone()).unwrap_err();
            assert_eq!(rejection.kind, RejectionKind::InvalidEvent, "{data}");
            assert!(
                rejection.detail.contains(expected),
                "{data}: {}",
                rejection.detail
            );
        }
        let unlink = read(
            UNLINK_TYPE,
            json!({"user_pool_id": "pool-1", "user_id": USER, "connection": "Not Valid",
                   "external_id": "u-1", "actor": "ops"}),
        )
        .unwrap_err();
        assert!(unlink.detail.contains("data.connection"), "{unlink}");
    }

    #[test]
    fn another_type_is_the_wrong_type() {
        let rejection = read("login.completed", json!({})).unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::WrongType);
        assert!(
            rejection.detail.contains("directory.user_removed"),
            "{rejection}"
        );
        let rejection = decode(b"{\"specversion\":\"1.0\"}", 100).unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::InvalidEvent);
        let rejection = decode(&body(RESOLVE_TYPE, json!({})), 10).unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::TooLarge);
    }

    #[test]
    fn reads_a_directory_event() {
        let removed = read(
            leavers::REMOVED_TYPE,
            json!({"user_pool_id": "pool-1", "connection": "dingtalk-corp", "external_id": "u-1"}),
        )
        .unwrap();
        assert!(matches!(removed, Command::Directory(ref c) if c.external_id == "u-1"));
        assert_eq!(removed.kind(), leavers::REMOVED_TYPE);
    }

    #[test]
    fn a_dead_lettered_directory_event_is_answered_in_its_own_shape() {
        let rejection = Rejection::new(RejectionKind::InvalidEvent, "x");
        assert_eq!(
            serde_json::to_value(QueueReply::error(
                Some("d-1".into()),
                leavers::REMOVED_TYPE,
                &rejection
            ))
            .unwrap(),
            json!({"event_id": "d-1", "outcome": "error", "code": "invalid_event"})
        );
        assert_eq!(
            serde_json::to_value(QueueReply::error(None, UNLINK_TYPE, &rejection)).unwrap()["command_id"],
            Value::Null
        );
    }

    #[test]
    fn error_replies_carry_the_reason_code() {
        let reply = CommandReply::error(
            Some("c-1".into()),
            &Rejection::new(RejectionKind::NotJson, "x"),
        );
        assert_eq!(
            serde_json::to_value(reply).unwrap(),
            json!({"command_id": "c-1", "outcome": "error", "code": "not_json", "binding": null})
        );
    }
}
