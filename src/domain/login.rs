//! The inbound `login.completed` CloudEvent: size limit, decoding and validation. An event that
//! fails here is dead-lettered with the `Rejection`'s reason and never touches the database.

use serde_json::{Map, Value};

use std::collections::BTreeMap;

use super::attributes::{self, AttributeName};
use super::connection::{ConnectionId, ConnectionSettings, MatchField, MatchKey, UserPoolId};
use super::directory::Finding;
use super::mapping::Mapping;
use super::strict_json::{self, StrictError};
use super::{Email, Phone, Username};

/// A CloudEvents envelope whose `specversion`, `id` and `source` were checked; `type` and
/// `data` are left to the reader of the event.
pub struct Envelope {
    /// The CloudEvents `id`, 1 to 128 characters; with `source`, what a re-sent message is
    /// recognised by.
    pub id: String,
    /// The CloudEvents `source` (the publishing platform, e.g. `urn:authing:userpool:pool-1`),
    /// 1 to 512 characters.
    pub source: String,
    /// The `type` attribute as received, not checked yet; `None` when missing.
    pub kind: Option<Value>,
    /// The `data` member as received, not checked yet; `None` when missing.
    pub data: Option<Value>,
}

/// The CloudEvents `type` every inbound login must have.
pub const EVENT_TYPE: &str = "login.completed";
const MAX_ID_CHARS: usize = 128;
const MAX_SOURCE_CHARS: usize = 512;
const MAX_EXTERNAL_ID_CHARS: usize = 256;
/// The longest display name an account takes; a longer one is cut.
pub const MAX_NAME_CHARS: usize = 256;

/// Why a message cannot be processed. Each kind is permanent: retrying cannot change the outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.code())]
pub struct Rejection {
    /// Which check failed: the reason's stable code.
    pub kind: RejectionKind,
    /// What exactly was wrong, for people; it may quote a short value of the message, so logs
    /// mask it.
    pub detail: String,
}

/// The kinds of permanent failure, each with the code that starts the dead letter's
/// `x-idsync-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// `too_large`: the body is over `worker.max_message_bytes` (64 KiB by default).
    TooLarge,
    /// `not_json`: the body is not JSON (syntax, encoding, or nesting deeper than 128 levels).
    NotJson,
    /// `not_cloudevents`: not a JSON object, or `specversion` missing or not `"1.0"`.
    NotCloudEvents,
    /// `wrong_type`: the `type` is not one the queue takes (`login.completed` on the work queue,
    /// `binding.resolve` or `user.unlink` on the commands queue).
    WrongType,
    /// `invalid_event`: a required field missing, empty, oversized or wrongly typed, a key
    /// repeated in one object, a NUL character, or a wrongly typed profile field.
    InvalidEvent,
    /// `unknown_connection`: the pool has no connection of that identifier.
    UnknownConnection,
    /// `untrusted_publisher`: `amqp.trusted_publishers` is set and the message's AMQP `user_id`
    /// is not in it; such a message gets no error reply.
    UntrustedPublisher,
    /// The database refused the event's data for a reason retrying cannot cure.
    ProcessingFailed,
    /// `processing_panicked`: deciding this message made the worker fail (a bug of the worker,
    /// not bad data) on every delivery up to the queue's delivery limit.
    ProcessingPanicked,
}

impl RejectionKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [RejectionKind] = &[
        Self::TooLarge,
        Self::NotJson,
        Self::NotCloudEvents,
        Self::WrongType,
        Self::InvalidEvent,
        Self::UnknownConnection,
        Self::UntrustedPublisher,
        Self::ProcessingFailed,
        Self::ProcessingPanicked,
    ];

    /// The stable, machine-readable part of the reason (`x-idsync-error` starts with it).
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotJson => "not_json",
            Self::NotCloudEvents => "not_cloudevents",
            Self::WrongType => "wrong_type",
            Self::InvalidEvent => "invalid_event",
            Self::UnknownConnection => "unknown_connection",
            Self::UntrustedPublisher => "untrusted_publisher",
            Self::ProcessingFailed => "processing_failed",
            Self::ProcessingPanicked => "processing_panicked",
        }
    }
}

impl Rejection {
    /// A rejection of `kind`, explained by `detail`.
    pub fn new(kind: RejectionKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The text of the `x-idsync-error` header and of an error reply's `reason`.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Why a message cannot be decided yet: it waits (`amqp.wait_queue`) and is tried again after
/// `worker.wait_delay`; it is never dead-lettered for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub reason: WaitReason,
    /// What exactly is missing, for the log (names configuration, never the message's data).
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// `connection_unreadable`: the connection's stored settings no longer validate (written by
    /// a newer version, edited by hand); its logins wait until an admin mends it.
    ConnectionUnreadable,
    /// `directory_unavailable`: the login needs its connection's directory (contract section
    /// 10), which cannot be asked now (timeouts, errors, rate limits, an exhausted quota), and
    /// the connection says to wait (`on_unavailable = "wait"`).
    DirectoryUnavailable,
}

impl WaitReason {
    pub const ALL: [WaitReason; 2] = [Self::ConnectionUnreadable, Self::DirectoryUnavailable];

    /// The stable name of the reason (metric label, the waiting copy's header).
    pub fn code(self) -> &'static str {
        match self {
            Self::ConnectionUnreadable => "connection_unreadable",
            Self::DirectoryUnavailable => "directory_unavailable",
        }
    }
}

/// A decoded, validated login. The profile is kept whole (it becomes the identity's snapshot);
/// the typed fields below are what the decision reads.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginEvent {
    /// The CloudEvents `id`, 1 to 128 characters; replies and the events the login causes
    /// (`cause_event_id`) name it.
    pub id: String,
    /// The CloudEvents `source`, 1 to 512 characters; with `id`, the key of the dedupe record (the
    /// same id from another source is another login).
    pub source: String,
    /// The pool (tenant) the login happened in (`data.user_pool_id`).
    pub user_pool_id: UserPoolId,
    /// The identity source's connection in that pool (`data.connection`).
    pub connection: ConnectionId,
    /// The person's id at the identity source (a DingTalk union id, an OIDC `sub`), 1 to 256
    /// characters, as received; with the pool and the connection it names the identity.
    pub external_id: String,
    /// What the source says about the person; empty when the login carried no profile. With
    /// a directory's record put in (see `directory`), the profile decided on.
    pub profile: Profile,
    /// What the connection's directory said, when it was asked (never read from the message).
    pub directory: Option<DirectoryNote>,
}

/// What a connection's directory said about a login's person, and the profile the event itself
/// carried when the directory's record was put into it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryNote {
    pub finding: Finding,
    pub event_profile: Option<Profile>,
}

/// The login's `data.profile` as the source sent it: the typed fields are as received, not
/// normalised (see `NormalizedFields`), and every field is optional.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// The email address as received; `None` when absent or null.
    pub email: Option<String>,
    /// Whether the source says it verified the email: `false` when absent or null (the strings
    /// `"true"` and `"false"` are accepted too).
    pub email_verified: bool,
    /// The phone number as received, in any format (`138 0013 8000`, `+86 138...`); `None` when
    /// absent or null.
    pub phone: Option<String>,
    /// Whether the source says it verified the phone number: as `email_verified`.
    pub phone_verified: bool,
    /// The username as received; `None` when absent or null.
    pub username: Option<String>,
    /// The person's display name (`张三`) as received; never matched on, copied onto a new
    /// account.
    pub name: Option<String>,
    /// The profile object exactly as received, unknown fields included.
    pub raw: Map<String, Value>,
}

/// Decodes and validates one message body. `max_bytes` is checked before any parsing so that an
/// oversized body costs nothing but its length.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<LoginEvent, Rejection> {
    let envelope = Envelope::decode(body, max_bytes)?;
    match envelope.kind {
        Some(Value::String(t)) if t == EVENT_TYPE => {}
        Some(other) => {
            return Err(Rejection::new(
                RejectionKind::WrongType,
                format!("type must be \"{EVENT_TYPE}\", got {}", brief(&other)),
            ));
        }
        None => return Err(invalid("type is missing")),
    }

    let data = match envelope.data {
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("data must be an object")),
        None => return Err(invalid("data is missing")),
    };
    let user_pool_id = required_string(data.get("user_pool_id"), "data.user_pool_id", 128)?;
    let user_pool_id =
        UserPoolId::parse(&user_pool_id).map_err(|m| invalid(format!("data.user_pool_id: {m}")))?;
    let connection = required_string(data.get("connection"), "data.connection", 31)?;
    let connection =
        ConnectionId::parse(&connection).map_err(|m| invalid(format!("data.connection: {m}")))?;
    let external_id = required_string(
        data.get("external_id"),
        "data.external_id",
        MAX_EXTERNAL_ID_CHARS,
    )?;

    let profile = match data.get("profile") {
        None | Some(Value::Null) => Profile::default(),
        Some(Value::Object(map)) => Profile::from_map(map)?,
        Some(_) => return Err(invalid("data.profile must be an object")),
    };

    Ok(LoginEvent {
        id: envelope.id,
        source: envelope.source,
        user_pool_id,
        connection,
        external_id,
        profile,
        directory: None,
    })
}

impl Envelope {
    /// Reads a body as a CloudEvents 1.0 envelope (strict JSON: a duplicate key is refused).
    pub fn decode(body: &[u8], max_bytes: usize) -> Result<Self, Rejection> {
        if body.len() > max_bytes {
            return Err(Rejection::new(
                RejectionKind::TooLarge,
                format!("body is {} bytes, the limit is {max_bytes}", body.len()),
            ));
        }
        let mut envelope = match strict_json::parse(body) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                return Err(Rejection::new(
                    RejectionKind::NotCloudEvents,
                    format!("not a CloudEvents envelope: the body is {}", brief(&other)),
                ));
            }
            Err(StrictError::Syntax(message)) => {
                return Err(Rejection::new(RejectionKind::NotJson, message));
            }
            Err(StrictError::DuplicateKey(message)) => return Err(invalid(message)),
        };
        match envelope.remove("specversion") {
            Some(Value::String(v)) if v == "1.0" => {}
            Some(other) => {
                return Err(Rejection::new(
                    RejectionKind::NotCloudEvents,
                    format!("specversion must be \"1.0\", got {}", brief(&other)),
                ));
            }
            None => {
                return Err(Rejection::new(
                    RejectionKind::NotCloudEvents,
                    "specversion is missing",
                ));
            }
        }
        Ok(Self {
            id: required_string(envelope.get("id"), "id", MAX_ID_CHARS)?,
            source: required_string(envelope.get("source"), "source", MAX_SOURCE_CHARS)?,
            kind: envelope.remove("type"),
            data: envelope.remove("data"),
        })
    }
}

impl Profile {
    /// Reads the typed fields of a profile object (the event's, or a stored snapshot).
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, Rejection> {
        if contains_nul(map) {
            return Err(invalid(
                "data.profile contains a NUL character, which cannot be stored",
            ));
        }
        Ok(Profile {
            email: optional_string(map, "email")?,
            email_verified: optional_bool(map, "email_verified")?,
            phone: optional_string(map, "phone")?,
            phone_verified: optional_bool(map, "phone_verified")?,
            username: optional_string(map, "username")?,
            name: optional_string(map, "name")?,
            raw: map.clone(),
        })
    }
}

fn contains_nul(map: &Map<String, Value>) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(value),
            Value::Object(map) => contains_nul(map),
            _ => false,
        }
    }
    map.iter().any(|(k, v)| k.contains('\0') || value(v))
}

pub(crate) fn required_string(
    value: Option<&Value>,
    field: &str,
    max_chars: usize,
) -> Result<String, Rejection> {
    match value {
        Some(Value::String(s)) => {
            if s.is_empty() {
                Err(invalid(format!("{field} must not be empty")))
            } else if s.chars().count() > max_chars {
                Err(invalid(format!(
                    "{field} is longer than {max_chars} characters"
                )))
            } else if s.contains('\0') {
                Err(invalid(format!("{field} contains a NUL character")))
            } else {
                Ok(s.clone())
            }
        }
        None | Some(Value::Null) => Err(invalid(format!("{field} is missing"))),
        Some(other) => Err(invalid(format!(
            "{field} must be a string, got {}",
            brief(other)
        ))),
    }
}

fn optional_string(map: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "data.profile.{field} must be a string, got {}",
            brief(other)
        ))),
    }
}

/// A boolean; `"true"` and `"false"` are accepted too, as some identity sources send them.
fn optional_bool(map: &Map<String, Value>, field: &str) -> Result<bool, Rejection> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(invalid(format!(
            "data.profile.{field} must be a boolean, got {}",
            brief(other)
        ))),
    }
}

pub(crate) fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectionKind::InvalidEvent, detail)
}

/// A short description of a JSON value for error messages, never echoing large input.
pub(crate) fn brief(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() <= 40 => format!("{s:?}"),
        Value::String(_) => "a long string".into(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// One identifier of a login as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<T> {
    /// Not in the profile.
    #[default]
    Absent,
    /// In the profile but not a valid value: the raw text (cut to 256 characters), for the
    /// decision's evidence.
    Malformed(String),
    /// Valid, in canonical form; `suspicious` holds the raw value (cut to 256 characters) when
    /// it could pass for another (see `identifier`).
    Valid {
        value: T,
        suspicious: Option<String>,
    },
}

impl<T> Field<T> {
    /// The canonical value, suspicious or not.
    pub fn value(&self) -> Option<&T> {
        match self {
            Self::Valid { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Whether the value is valid but could pass for another (a lookalike): it never causes an
    /// automatic link and is never copied onto a new account.
    pub fn is_suspicious(&self) -> bool {
        matches!(
            self,
            Self::Valid {
                suspicious: Some(_),
                ..
            }
        )
    }

    fn of<E>(raw: Option<&str>, parse: impl FnOnce(&str) -> Result<(T, bool), E>) -> Self {
        match raw {
            None => Self::Absent,
            Some(raw) => match parse(raw) {
                Ok((value, suspicious)) => Self::Valid {
                    value,
                    suspicious: suspicious.then(|| raw.chars().take(256).collect()),
                },
                Err(_) => Self::Malformed(raw.chars().take(256).collect()),
            },
        }
    }
}

impl<T: Clone> Field<T> {
    /// A field that holds `value`, not suspicious (for tests and stored values).
    pub fn valid(value: T) -> Self {
        Self::Valid {
            value,
            suspicious: None,
        }
    }
}

/// The login's fields normalised with its connection's settings: what matching compares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NormalizedFields {
    /// The profile's email: absent, malformed, or canonical (flagged when it is a lookalike).
    pub email: Field<Email>,
    /// Whether the source says it verified the email (the profile's flag).
    pub email_verified: bool,
    /// The profile's phone in E.164, read with the connection's default country code; a number
    /// without `+` and without that code is malformed. Never flagged as suspicious.
    pub phone: Field<Phone>,
    /// Whether the source says it verified the phone number (the profile's flag).
    pub phone_verified: bool,
    /// The profile's username, canonical; usernames have no verification flag and count as
    /// verified.
    pub username: Field<Username>,
    /// The profile's display name as received: not matched on, given to a new account.
    pub name: Option<String>,
    /// The account attributes the connection maps from the profile, by name (a template that
    /// finds nothing gives none): trimmed and composed, flagged when a lookalike. Like usernames,
    /// they have no verification flag.
    pub attributes: BTreeMap<AttributeName, Field<String>>,
    /// The mapped attributes the connection vouches for (`verified_fields`): only these count
    /// as verified, and only these are ever copied onto an account.
    pub verified_attributes: Vec<AttributeName>,
    /// What the connection's directory said, when it was asked.
    pub directory: Option<Finding>,
    /// The fields whose value came from the directory's record rather than from the event.
    pub from_directory: Vec<MatchKey>,
}

impl NormalizedFields {
    /// Malformed email or phone values take part in nothing (the event is still processed);
    /// they are kept for the evidence.
    /// A field the connection maps is taken from its template alone (absent when a placeholder
    /// finds nothing), verified when the connection vouches for it, else as the profile's flag
    /// says.
    pub fn of(profile: &Profile, settings: &ConnectionSettings) -> Self {
        let country = settings.default_country_code.as_ref();
        let mapping = &settings.mapping;
        let (email, email_verified) = sourced(profile, mapping, MatchField::Email);
        let (phone, phone_verified) = sourced(profile, mapping, MatchField::Phone);
        let (username, _) = sourced(profile, mapping, MatchField::Username);
        let attributes = mapping
            .attributes
            .iter()
            .filter_map(|(name, template)| {
                let raw = template.render(&profile.raw)?;
                Some((
                    name.clone(),
                    Field::of(Some(&raw), attributes::value_checked),
                ))
            })
            .collect();
        let verified_attributes = mapping
            .attributes
            .keys()
            .filter(|name| mapping.vouches_for(&MatchKey::Attribute((*name).clone())))
            .cloned()
            .collect();
        Self {
            email: Field::of(email.as_deref(), Email::parse_checked),
            email_verified,
            phone: Field::of(phone.as_deref(), |raw| {
                Phone::parse(raw, country).map(|p| (p, false))
            }),
            phone_verified,
            username: Field::of(username.as_deref(), Username::parse_checked),
            // What an account can hold (and an import read back): at most 256 characters, and
            // an empty name is none.
            name: profile
                .name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| n.chars().take(MAX_NAME_CHARS).collect()),
            attributes,
            verified_attributes,
            directory: None,
            from_directory: Vec::new(),
        }
    }

    /// The login's fields with what its connection's directory said: the fields normalised from
    /// the profile the directory's record was put into, each marked as the directory's when the
    /// event alone would not have given it that value.
    pub fn with_directory(
        profile: &Profile,
        note: &DirectoryNote,
        settings: &ConnectionSettings,
    ) -> Self {
        let mut fields = Self::of(profile, settings);
        if let Some(before) = &note.event_profile {
            let event = Self::of(before, settings);
            let mut keys: Vec<MatchKey> = MatchField::ALL.iter().map(|f| (*f).into()).collect();
            keys.extend(fields.attributes.keys().cloned().map(MatchKey::Attribute));
            fields.from_directory = keys
                .into_iter()
                .filter(|key| fields.carries(key) && fields.text(key) != event.text(key))
                .collect();
        }
        fields.directory = Some(note.finding.clone());
        fields
    }

    /// Whether the login carries `key` at all (valid or not).
    pub fn carries(&self, key: &MatchKey) -> bool {
        self.text(key).is_some()
    }

    /// The field's value as the evidence shows it (canonical, or as received when unusable).
    fn text(&self, key: &MatchKey) -> Option<String> {
        fn shown<T: ToString>(field: &Field<T>) -> Option<String> {
            match field {
                Field::Absent => None,
                Field::Malformed(raw) => Some(raw.clone()),
                Field::Valid { value, .. } => Some(value.to_string()),
            }
        }
        match key {
            MatchKey::Field(MatchField::Email) => shown(&self.email),
            MatchKey::Field(MatchField::Phone) => shown(&self.phone),
            MatchKey::Field(MatchField::Username) => shown(&self.username),
            MatchKey::Attribute(name) => self.attributes.get(name).and_then(shown),
        }
    }
}

/// A field's raw value and verification: from the connection's template when it maps the field
/// (a preset's only where the profile lacks the standard name), from the profile's standard name
/// otherwise.
fn sourced(profile: &Profile, mapping: &Mapping, field: MatchField) -> (Option<String>, bool) {
    let (standard, flag) = match field {
        MatchField::Email => (&profile.email, profile.email_verified),
        MatchField::Phone => (&profile.phone, profile.phone_verified),
        MatchField::Username => (&profile.username, true),
    };
    match mapping.template(field) {
        Some(mapped) if !(mapped.fallback && standard.is_some()) => (
            mapped.template.render(&profile.raw),
            flag || mapping.vouches_for(&field.into()),
        ),
        _ => (standard.clone(), flag),
    }
}

#[cfg(test)]
mod tests;
