//! What identity-sync says to the outside world: the reply to a login (contract 3.2) and the
//! outbound CloudEvents (contract 3.4). The shapes here are the public format; change them only
//! together with the contract.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use super::account::UserSummary;
use super::connection::MatchKey;
use super::decision::{CandidateEvidence, FieldEvidence, Outcome};
use super::login::Rejection;

/// The CloudEvents `source` of every event identity-sync publishes.
pub const SOURCE: &str = "identity-sync";

/// The reply to a login that asked for one (AMQP `reply_to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The `id` of the login answered; `None` for a dead-lettered message whose body had no
    /// usable `id`.
    pub event_id: Option<String>,
    /// What was decided, or `error` for a dead-lettered message.
    pub outcome: Outcome,
    /// The account the identity is linked to (`existing_user`, `user_linked`, `user_created`);
    /// `None` otherwise.
    pub user_id: Option<Uuid>,
    /// The pending binding (`binding_pending`); `None` otherwise.
    pub binding_id: Option<Uuid>,
    /// `None` for `existing_user`, `user_created` and `user_linked`; the binding's reason for
    /// `binding_pending`, `unknown_user` for `rejected`, the dead-letter reason
    /// (`<code>: <detail>`) for `error`.
    pub reason: Option<String>,
}

impl Reply {
    /// The answer to a dead-lettered login (`event_id` when its body had one).
    pub fn error(event_id: Option<String>, rejection: &Rejection) -> Self {
        Self {
            event_id,
            outcome: Outcome::Error,
            user_id: None,
            binding_id: None,
            reason: Some(rejection.reason()),
        }
    }

    /// The reply to the login `event_id` with `outcome`, before its ids and reason are known.
    pub fn of(event_id: &str, outcome: Outcome) -> Self {
        Self {
            event_id: Some(event_id.to_owned()),
            outcome,
            user_id: None,
            binding_id: None,
            reason: None,
        }
    }
}

/// The `type` of an outbound event, which is also its routing key on the events exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A login (or a binding resolved with `create`) made a new account.
    #[serde(rename = "user.created")]
    UserCreated,
    /// An identity was linked to an existing account, by field matching or by a binding.
    #[serde(rename = "user.linked")]
    UserLinked,
    /// An identity was removed from an account (admin API or `user.unlink` command).
    #[serde(rename = "user.unlinked")]
    UserUnlinked,
    /// An account's fields changed.
    #[serde(rename = "user.updated")]
    UserUpdated,
    /// A `login_only` connection refused a person with no account.
    #[serde(rename = "login.rejected")]
    LoginRejected,
    /// A login was parked in a pending binding instead of being linked.
    #[serde(rename = "binding.pending")]
    BindingPending,
    /// A pending binding was resolved (`link`, `create` or `reject`).
    #[serde(rename = "binding.resolved")]
    BindingResolved,
    /// A pending binding passed its `expires_at` unresolved.
    #[serde(rename = "binding.expired")]
    BindingExpired,
    /// A linked identity's source now sends another email, phone or username.
    #[serde(rename = "identity.changed")]
    IdentityChanged,
    /// The source said a linked identity's person left (contract section 11).
    #[serde(rename = "identity.source_removed")]
    IdentitySourceRemoved,
    /// An account was suspended: never linked to, never logged into.
    #[serde(rename = "user.suspended")]
    UserSuspended,
    /// A suspended account was reactivated.
    #[serde(rename = "user.reactivated")]
    UserReactivated,
    /// An identity moved to its new external id at the source.
    #[serde(rename = "identity.renamed")]
    IdentityRenamed,
    /// A rename did not happen (the new id is another account's).
    #[serde(rename = "identity.rename_refused")]
    IdentityRenameRefused,
    /// A connection's removal guard held removals for an admin.
    #[serde(rename = "connection.removals_held")]
    ConnectionRemovalsHeld,
    /// A webhook delivery failed at every attempt of its schedule and was given up.
    #[serde(rename = "webhook.delivery_failed")]
    WebhookDeliveryFailed,
    /// A webhook endpoint was disabled: it answered 410, or failed every attempt for
    /// `webhooks.disable_after`.
    #[serde(rename = "webhook.endpoint_disabled")]
    WebhookEndpointDisabled,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: &'static [EventType] = &[
        Self::UserCreated,
        Self::UserLinked,
        Self::UserUnlinked,
        Self::UserUpdated,
        Self::LoginRejected,
        Self::BindingPending,
        Self::BindingResolved,
        Self::BindingExpired,
        Self::IdentityChanged,
        Self::IdentitySourceRemoved,
        Self::UserSuspended,
        Self::UserReactivated,
        Self::IdentityRenamed,
        Self::IdentityRenameRefused,
        Self::ConnectionRemovalsHeld,
        Self::WebhookDeliveryFailed,
        Self::WebhookEndpointDisabled,
    ];

    /// Also the routing key on the events exchange.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::UserLinked => "user.linked",
            Self::UserUnlinked => "user.unlinked",
            Self::UserUpdated => "user.updated",
            Self::LoginRejected => "login.rejected",
            Self::BindingPending => "binding.pending",
            Self::BindingResolved => "binding.resolved",
            Self::BindingExpired => "binding.expired",
            Self::IdentityChanged => "identity.changed",
            Self::IdentitySourceRemoved => "identity.source_removed",
            Self::UserSuspended => "user.suspended",
            Self::UserReactivated => "user.reactivated",
            Self::IdentityRenamed => "identity.renamed",
            Self::IdentityRenameRefused => "identity.rename_refused",
            Self::ConnectionRemovalsHeld => "connection.removals_held",
            Self::WebhookDeliveryFailed => "webhook.delivery_failed",
            Self::WebhookEndpointDisabled => "webhook.endpoint_disabled",
        }
    }

    /// The event type of a text form; `None` for any other text.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }
}

/// An external identity as events show it (`identity`); its pool is the event's `user_pool_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IdentityRef {
    /// The identifier of the connection the identity comes from.
    pub connection: String,
    /// The person's id at the identity source, as the login gave it.
    pub external_id: String,
}

/// The `data` of `user.created`: a login, or a binding resolved with `create`, made a new account
/// with the identity linked to it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserCreated<'a> {
    /// The pool of the new account.
    pub user_pool_id: &'a str,
    /// The new account, with the values it received from the login.
    pub user: UserSummary,
    /// The identity linked to it.
    pub identity: IdentityRef,
    /// The `id` of the login that caused it; for a binding resolution, of the login that opened
    /// the binding (`None` when that is not known).
    pub cause_event_id: Option<&'a str>,
}

/// How an identity came to be linked (`user.linked`'s `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    /// `field_matching`: automatically, by a login whose fields matched the one account.
    FieldMatching,
    /// `binding`: by resolving a pending binding with `link`.
    Binding,
}

/// The `data` of `user.linked`: an identity was linked to an existing account.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserLinked<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account the identity is now linked to.
    pub user_id: Uuid,
    /// The identity linked.
    pub identity: IdentityRef,
    /// Automatically by field matching, or by a binding's resolution.
    pub method: LinkMethod,
    /// The connection's match fields on which the account equals the login, in `match_fields`
    /// order; may be empty for a binding resolved to an account the login did not match.
    pub matched_on: Vec<MatchKey>,
    /// The `id` of the login that caused the link; for a binding resolution, of the login that
    /// opened the binding (`None` when that is not known).
    pub cause_event_id: Option<&'a str>,
}

/// The `data` of `user.unlinked`: an identity was removed from an account.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserUnlinked<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account the identity was removed from.
    pub user_id: Uuid,
    /// The identity removed from the account.
    pub identity: IdentityRef,
    /// Who unlinked it (the admin token's name, or the command's actor).
    pub actor: &'a str,
    /// Why, as the `user.unlink` command gives it; `None` from the admin API.
    pub reason: Option<&'a str>,
}

/// An account changed: by an admin (`actor`) or, from a login, by its source (`cause_event_id`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserUpdated<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account after the change.
    pub user: UserSummary,
    /// The names of the fields that changed.
    pub changed: Vec<&'static str>,
    /// The `id` of the login whose source changed the account; `None` for an admin's change.
    pub cause_event_id: Option<&'a str>,
    /// The admin token's name; `None` for a change from a login.
    pub actor: Option<&'a str>,
}

/// The `data` of `login.rejected`: a `login_only` connection refused a person with no account, or
/// the connection's directory says the person is no longer active.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LoginRejected<'a> {
    /// The pool the login happened in.
    pub user_pool_id: &'a str,
    /// The identity refused.
    pub identity: IdentityRef,
    /// `unknown_user` (a `login_only` connection, no account) or `directory_inactive` (the
    /// directory says the person left).
    pub reason: &'a str,
    /// The `id` of the login refused.
    pub cause_event_id: Option<&'a str>,
    /// The decision's evidence (section 7), values masked.
    pub fields: Vec<FieldEvidence>,
    /// The candidates' evidence; empty, since a login is rejected only when no account matched.
    pub candidates: Vec<CandidateEvidence>,
}

/// The `data` of `binding.pending`: a login was parked in a new pending binding.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BindingPending<'a> {
    /// The new binding.
    pub binding_id: Uuid,
    /// The pool the login happened in.
    pub user_pool_id: &'a str,
    /// The identity parked.
    pub identity: IdentityRef,
    /// The ids of the candidate accounts, in id order.
    pub candidates: Vec<Uuid>,
    /// Why it was not linked: a binding reason (`ask_binding`, `ambiguous_match`, ...).
    pub reason: &'a str,
    /// When the binding expires unresolved (the login's time plus the connection's
    /// `binding_ttl`), RFC 3339 to the second.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// The `id` of the login that opened the binding.
    pub cause_event_id: Option<&'a str>,
    /// The decision's evidence (section 7), values masked. `candidates` above keeps its
    /// section 3.4 form (user ids); each candidate's evidence is here.
    pub fields: Vec<FieldEvidence>,
    /// Each candidate with the fields it matched and why it was set aside.
    pub candidate_evidence: Vec<CandidateEvidence>,
}

/// How a binding was resolved (`binding.resolved`'s `resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The identity was linked to an existing account.
    Linked,
    /// A new account was made for the identity.
    Created,
    /// The identity was left without an account.
    Rejected,
}

impl Resolution {
    /// The text form, as events and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linked => "linked",
            Self::Created => "created",
            Self::Rejected => "rejected",
        }
    }

    /// The resolution of a text form; `None` for any other text.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Linked, Self::Created, Self::Rejected]
            .into_iter()
            .find(|r| r.as_str() == raw)
    }
}

/// The `data` of `binding.resolved`: a pending binding was resolved; the `user.linked` or
/// `user.created` it causes follows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BindingResolved<'a> {
    /// The binding resolved.
    pub binding_id: Uuid,
    /// The binding's pool.
    pub user_pool_id: &'a str,
    /// Linked, created or rejected.
    pub resolution: Resolution,
    /// The account linked or created; `None` when rejected.
    pub user_id: Option<Uuid>,
    /// Who decided: the admin token's name, or the actor a command names.
    pub resolved_by: &'a str,
    /// How the person proved the decision (`admin` for the admin API; section 6).
    pub proof: &'a str,
}

/// The `data` of `binding.expired`: a pending binding passed its `expires_at` unresolved (found
/// by the expiry sweeper, a later login of the identity, or an attempt to resolve it).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BindingExpired<'a> {
    /// The binding that expired.
    pub binding_id: Uuid,
    /// The binding's pool.
    pub user_pool_id: &'a str,
    /// The identity it parked; its next login is decided afresh.
    pub identity: IdentityRef,
}

/// The `data` of `identity.changed`: a login of a linked identity carried another usable email,
/// phone or username than the identity's last snapshot (a changed or recycled identifier).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IdentityChanged<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account the identity is linked to.
    pub user_id: Uuid,
    /// The identity whose source changed.
    pub identity: IdentityRef,
    /// What changed, field by field.
    pub changes: &'a [super::decision::drift::ProfileChange],
    /// `notified`, or `user_updated` when a change was copied onto the account (`user.updated`
    /// follows).
    pub action: super::decision::drift::DriftAction,
    /// The `id` of the login that carried the change.
    pub cause_event_id: &'a str,
}

text_enum!(
    /// What a source's removal did (`identity.source_removed`'s `action`): `notified` (nothing
    /// else changed), `unlinked` (the identity was removed from the account), `suspended`
    /// (removed, and the account suspended: none of its other identities remained).
    RemovalAction { Notified => "notified", Unlinked => "unlinked", Suspended => "suspended" }
);

/// The `data` of `identity.source_removed`: the source said the person of a linked identity
/// left; what the connection's `on_source_removal` did about it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IdentitySourceRemoved<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account the identity was linked to.
    pub user_id: Uuid,
    /// The identity the source removed.
    pub identity: IdentityRef,
    /// `notified`, `unlinked` or `suspended`.
    pub action: RemovalAction,
    /// The `id` of the `directory.user_removed` event.
    pub cause_event_id: &'a str,
}

/// The `data` of `user.suspended` and `user.reactivated`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UserSuspension<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account.
    pub user_id: Uuid,
    /// `source_removed` (suspended by a source's removal), `source_restored` (reactivated by
    /// the same source's restore), or the admin's reason (`admin` when none was given).
    pub reason: &'a str,
    /// The `id` of the directory event that caused it; `None` for an admin's reactivation.
    pub cause_event_id: Option<&'a str>,
    /// The admin token's name; `None` when a directory event caused it.
    pub actor: Option<&'a str>,
}

/// `user.suspended`: an account was suspended.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct UserSuspended<'a>(pub UserSuspension<'a>);

/// `user.reactivated`: a suspended account was reactivated.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct UserReactivated<'a>(pub UserSuspension<'a>);

/// The `data` of `identity.renamed`: an identity moved to the id its source now gives the
/// person, on the same account; a login under the new id is `existing_user`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IdentityRenamed<'a> {
    /// The pool of the account.
    pub user_pool_id: &'a str,
    /// The account holding the identity.
    pub user_id: Uuid,
    /// The identity's connection.
    pub connection: &'a str,
    /// The id it had.
    pub old_external_id: &'a str,
    /// The id it has now.
    pub new_external_id: &'a str,
}

/// The `data` of `identity.rename_refused`: a rename that did not happen.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct IdentityRenameRefused<'a> {
    /// The pool.
    pub user_pool_id: &'a str,
    /// The account holding the old id; `None` when it is not linked.
    pub user_id: Option<Uuid>,
    /// The identity's connection.
    pub connection: &'a str,
    /// The id the source renamed.
    pub old_external_id: &'a str,
    /// The id it asked for.
    pub new_external_id: &'a str,
    /// Why: `identity_taken` (the new id is linked to another account).
    pub reason: &'a str,
}

/// The `data` of `connection.removals_held`: the connection's removal guard held a removal; how
/// many it holds now.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConnectionRemovalsHeld<'a> {
    /// The connection's pool.
    pub user_pool_id: &'a str,
    /// The connection.
    pub connection: &'a str,
    /// Removals held, waiting for an admin to release or discard them.
    pub held: i64,
}

/// The `data` of `webhook.delivery_failed`: a delivery given up after the last attempt of its
/// schedule.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WebhookDeliveryFailed<'a> {
    /// The endpoint's pool.
    pub user_pool_id: &'a str,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// The event that was not delivered.
    pub event_id: Uuid,
    /// The HTTP status of the last attempt; null when no answer came.
    pub last_status: Option<u16>,
}

/// The `data` of `webhook.endpoint_disabled`: an endpoint that answered 410, or failed every
/// attempt for `webhooks.disable_after`, no longer receives events.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WebhookEndpointDisabled<'a> {
    /// The endpoint's pool.
    pub user_pool_id: &'a str,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// The HTTP status of the last attempt; null when no answer came.
    pub last_status: Option<u16>,
}

/// What an event is about: its CloudEvents `subject`. Events about a user or a binding carry a
/// `sequence` per subject (contract 3.4); the others do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An account, by id: the subject of `user.*` events.
    User(Uuid),
    /// A binding, by id: the subject of `binding.*` events.
    Binding(Uuid),
    /// An external identity that has no account (`connection/external_id`).
    Identity(String),
    /// A connection, by identifier.
    Connection(String),
    /// A webhook endpoint, by id.
    Webhook(Uuid),
}

impl Subject {
    /// The subject whose sequence the event takes, if it has one.
    pub fn sequenced(&self) -> Option<Uuid> {
        match self {
            Self::User(id) | Self::Binding(id) => Some(*id),
            Self::Identity(_) | Self::Connection(_) | Self::Webhook(_) => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::User(id) | Self::Binding(id) | Self::Webhook(id) => id.to_string(),
            Self::Identity(text) | Self::Connection(text) => text.clone(),
        }
    }
}

/// The `data` of one event type: the type and the subject rule belong to the payload, so that an
/// event cannot be sent under another type or about something else.
pub trait EventData: Serialize {
    /// The type this payload is published as.
    const TYPE: EventType;
    /// What the event is about.
    fn subject(&self) -> Subject;
}

macro_rules! event_data {
    ($($payload:ident => $kind:ident, |$d:ident| $subject:expr;)+) => {
        $(impl EventData for $payload<'_> {
            const TYPE: EventType = EventType::$kind;
            fn subject(&self) -> Subject {
                let $d = self;
                $subject
            }
        })+
    };
}

event_data! {
    UserCreated => UserCreated, |d| Subject::User(d.user.id);
    UserLinked => UserLinked, |d| Subject::User(d.user_id);
    UserUnlinked => UserUnlinked, |d| Subject::User(d.user_id);
    UserUpdated => UserUpdated, |d| Subject::User(d.user.id);
    LoginRejected => LoginRejected, |d| Subject::Identity(
        format!("{}/{}", d.identity.connection, d.identity.external_id));
    BindingPending => BindingPending, |d| Subject::Binding(d.binding_id);
    BindingResolved => BindingResolved, |d| Subject::Binding(d.binding_id);
    BindingExpired => BindingExpired, |d| Subject::Binding(d.binding_id);
    IdentityChanged => IdentityChanged, |d| Subject::User(d.user_id);
    IdentitySourceRemoved => IdentitySourceRemoved, |d| Subject::User(d.user_id);
    UserSuspended => UserSuspended, |d| Subject::User(d.0.user_id);
    UserReactivated => UserReactivated, |d| Subject::User(d.0.user_id);
    IdentityRenamed => IdentityRenamed, |d| Subject::User(d.user_id);
    IdentityRenameRefused => IdentityRenameRefused, |d| match d.user_id {
        Some(user_id) => Subject::User(user_id),
        None => Subject::Identity(format!("{}/{}", d.connection, d.old_external_id)),
    };
    ConnectionRemovalsHeld => ConnectionRemovalsHeld, |d| Subject::Connection(d.connection.to_owned());
    WebhookDeliveryFailed => WebhookDeliveryFailed, |d| Subject::Webhook(d.webhook_id);
    WebhookEndpointDisabled => WebhookEndpointDisabled, |d| Subject::Webhook(d.webhook_id);
}

/// One outbound event, ready to be stored in the outbox and published as is. Its `sequence` is
/// given when it is stored (the database counts per subject).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEvent {
    /// The CloudEvents `id`, a UUIDv7: unchanged when the event is published again, so consumers
    /// dedupe on it.
    pub id: Uuid,
    /// The event's type, also its routing key.
    pub kind: EventType,
    /// The CloudEvents `time` (UTC, written to the millisecond): when the change it reports was
    /// decided (for a login, the time of its batch's transaction).
    pub time: DateTime<Utc>,
    /// What the event is about; its `sequence` is counted per subject.
    pub subject: Subject,
    /// The full CloudEvents envelope.
    pub body: Value,
}

impl OutboundEvent {
    /// The event of `data` at `time`, with a new id; its type and subject come from the payload.
    pub fn new<D: EventData>(data: D, time: DateTime<Utc>) -> Self {
        let id = Uuid::now_v7();
        let subject = data.subject();
        let body = serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": SOURCE,
            "type": D::TYPE.as_str(),
            "time": time.to_rfc3339_opts(SecondsFormat::Millis, true),
            "subject": subject.text(),
            "datacontenttype": "application/json",
            "dataschema": D::TYPE.dataschema(),
            "data": serde_json::to_value(data).expect("event data serialises"),
        });
        Self {
            id,
            kind: D::TYPE,
            time,
            subject,
            body,
        }
    }
}

/// The CloudEvents `sequence` extension's value: 20 zero-padded digits, so that it also sorts as
/// a string.
pub fn sequence_text(sequence: i64) -> String {
    format!("{sequence:020}")
}

fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn envelope_has_every_contract_field() {
        let time = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let data = LoginRejected {
            user_pool_id: "pool-1",
            identity: IdentityRef {
                connection: "dingtalk".into(),
                external_id: "x".into(),
            },
            reason: "unknown_user",
            cause_event_id: Some("e-1"),
            fields: Vec::new(),
            candidates: Vec::new(),
        };
        let event = OutboundEvent::new(data, time);
        let body = &event.body;
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], event.id.to_string());
        assert_eq!(body["source"], "identity-sync");
        assert_eq!(body["type"], "login.rejected");
        assert_eq!(body["time"], "2026-11-24T12:00:00.000Z");
        assert_eq!(body["subject"], "dingtalk/x");
        assert_eq!(event.subject.sequenced(), None);
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["data"]["identity"]["external_id"], "x");
        assert_eq!(body["data"]["cause_event_id"], "e-1");
    }

    #[test]
    fn event_types_round_trip() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(*kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    fn expired(binding_id: Uuid) -> BindingExpired<'static> {
        BindingExpired {
            binding_id,
            user_pool_id: "pool-1",
            identity: IdentityRef {
                connection: "c".into(),
                external_id: "x".into(),
            },
        }
    }

    #[test]
    fn ids_are_unique() {
        let time = Utc::now();
        let binding = Uuid::now_v7();
        let a = OutboundEvent::new(expired(binding), time);
        let b = OutboundEvent::new(expired(binding), time);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn the_payload_fixes_type_and_subject() {
        let binding = Uuid::now_v7();
        let event = OutboundEvent::new(expired(binding), Utc::now());
        assert_eq!(event.kind, EventType::BindingExpired);
        assert_eq!(event.body["type"], "binding.expired");
        assert_eq!(event.body["subject"], binding.to_string());
        assert_eq!(event.subject.sequenced(), Some(binding));
        assert_eq!(sequence_text(42), "00000000000000000042");
    }
}
