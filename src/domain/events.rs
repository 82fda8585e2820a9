//! What identity-sync says to the outside world: the reply to a login (contract 3.2) and the
//! outbound CloudEvents (contract 3.4). The shapes here are the public format; change them only
//! together with the contract.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::connection::MatchField;
use super::decision::{CandidateEvidence, FieldEvidence, Outcome};
use super::{Email, Phone, Username};

pub const SOURCE: &str = "identity-sync";

/// The reply to a login that asked for one (AMQP `reply_to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub event_id: Option<String>,
    pub outcome: Outcome,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.linked")]
    UserLinked,
    #[serde(rename = "user.unlinked")]
    UserUnlinked,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "login.rejected")]
    LoginRejected,
    #[serde(rename = "binding.pending")]
    BindingPending,
    #[serde(rename = "binding.resolved")]
    BindingResolved,
    #[serde(rename = "binding.expired")]
    BindingExpired,
}

impl EventType {
    pub const ALL: &'static [EventType] = &[
        Self::UserCreated,
        Self::UserLinked,
        Self::UserUnlinked,
        Self::UserUpdated,
        Self::LoginRejected,
        Self::BindingPending,
        Self::BindingResolved,
        Self::BindingExpired,
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
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRef {
    pub connection: String,
    pub external_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSummary {
    pub id: Uuid,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub username: Option<Username>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserCreated<'a> {
    pub user_pool_id: &'a str,
    pub user: UserSummary,
    pub identity: IdentityRef,
    pub cause_event_id: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    FieldMatching,
    Binding,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserLinked<'a> {
    pub user_pool_id: &'a str,
    pub user_id: Uuid,
    pub identity: IdentityRef,
    pub method: LinkMethod,
    pub matched_on: Vec<MatchField>,
    pub cause_event_id: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserUnlinked<'a> {
    pub user_pool_id: &'a str,
    pub user_id: Uuid,
    pub identity: IdentityRef,
    /// Who unlinked it (the admin token's name, or the command's actor).
    pub actor: &'a str,
    pub reason: Option<&'a str>,
}

/// An account changed: by an admin (`actor`) or, from a login, by its source (`cause_event_id`).
#[derive(Debug, Clone, Serialize)]
pub struct UserUpdated<'a> {
    pub user_pool_id: &'a str,
    pub user: UserSummary,
    /// The names of the fields that changed.
    pub changed: Vec<&'static str>,
    pub cause_event_id: Option<&'a str>,
    pub actor: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoginRejected<'a> {
    pub user_pool_id: &'a str,
    pub identity: IdentityRef,
    pub reason: &'a str,
    pub cause_event_id: Option<&'a str>,
    /// The decision's evidence (section 7), values masked.
    pub fields: Vec<FieldEvidence>,
    pub candidates: Vec<CandidateEvidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingPending<'a> {
    pub binding_id: Uuid,
    pub user_pool_id: &'a str,
    pub identity: IdentityRef,
    pub candidates: Vec<Uuid>,
    pub reason: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    pub cause_event_id: Option<&'a str>,
    /// The decision's evidence (section 7), values masked. `candidates` above keeps its
    /// section 3.4 form (user ids); each candidate's evidence is here.
    pub fields: Vec<FieldEvidence>,
    pub candidate_evidence: Vec<CandidateEvidence>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Linked,
    Created,
    Rejected,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linked => "linked",
            Self::Created => "created",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Linked, Self::Created, Self::Rejected]
            .into_iter()
            .find(|r| r.as_str() == raw)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingResolved<'a> {
    pub binding_id: Uuid,
    pub user_pool_id: &'a str,
    pub resolution: Resolution,
    pub user_id: Option<Uuid>,
    pub resolved_by: &'a str,
    /// How the person proved the decision (`admin` for the admin API; section 6).
    pub proof: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingExpired<'a> {
    pub binding_id: Uuid,
    pub user_pool_id: &'a str,
    pub identity: IdentityRef,
}

/// What an event is about: its CloudEvents `subject`. Events about a user or a binding carry a
/// `sequence` per subject (contract 3.4); the others do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(Uuid),
    Binding(Uuid),
    /// An external identity that has no account (`connection/external_id`).
    Identity(String),
}

impl Subject {
    /// The subject whose sequence the event takes, if it has one.
    pub fn sequenced(&self) -> Option<Uuid> {
        match self {
            Self::User(id) | Self::Binding(id) => Some(*id),
            Self::Identity(_) => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::User(id) | Self::Binding(id) => id.to_string(),
            Self::Identity(text) => text.clone(),
        }
    }
}

/// The `data` of one event type: the type and the subject rule belong to the payload, so that an
/// event cannot be sent under another type or about something else.
pub trait EventData: Serialize {
    const TYPE: EventType;
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
}

/// One outbound event, ready to be stored in the outbox and published as is. Its `sequence` is
/// given when it is stored (the database counts per subject).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEvent {
    pub id: Uuid,
    pub kind: EventType,
    pub time: DateTime<Utc>,
    pub subject: Subject,
    /// The full CloudEvents envelope.
    pub body: Value,
}

impl OutboundEvent {
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
