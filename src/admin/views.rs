//! The JSON shapes of the admin API (and of the audit log's before/after).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{audit::AuditRow, bindings::BindingRow, identities::IdentityRow, users::UserRow};
use crate::domain::{ConnectionSettings, mask};
use crate::domain::{Email, Phone, Username};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdentityRefView {
    pub connection: String,
    pub external_id: String,
}

/// A candidate account of a binding, with its contact fields masked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CandidateView {
    pub id: Uuid,
    /// Masked, e.g. `z***@example.com`.
    pub email: Option<String>,
    /// Masked, e.g. `+86*******8000`.
    pub phone: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    /// The account's attributes, e.g. `{"employee_id": "E1024"}`.
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// The identities the account already holds.
    pub identities: Vec<IdentityRefView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindingView {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    /// `pending`, `resolved` or `expired`.
    pub status: String,
    /// `ask_binding`, `ambiguous_match`, `candidate_already_linked`, `protected_account`,
    /// `confusable_identifier` or `candidate_unverified`.
    pub reason: String,
    pub candidates: Vec<CandidateView>,
    /// The external identity's profile, as the login carried it.
    #[schema(value_type = Object)]
    pub profile: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `linked`, `created` or `rejected`, once resolved.
    pub resolution: Option<String>,
    /// The account linked or created, once resolved.
    pub user_id: Option<Uuid>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The reason given with a rejection.
    pub resolution_reason: Option<String>,
    /// How the resolution was proven: `admin`, or what the person proved ownership with
    /// (`password`, `otp`, `session`, `sso`).
    pub resolution_proof: Option<String>,
    /// The login that opened the binding (its id and CloudEvents source): its decision's
    /// evidence is at `/v1/decisions/{cause_event_id}?source={cause_source}`.
    pub cause_event_id: Option<String>,
    pub cause_source: Option<String>,
}

impl BindingView {
    pub fn new(row: BindingRow, candidates: Vec<CandidateView>) -> Self {
        Self {
            id: row.id,
            user_pool_id: row.user_pool_id,
            connection: row.connection,
            external_id: row.external_id,
            status: row.status.as_str().to_owned(),
            reason: row.reason,
            candidates,
            profile: row.profile,
            created_at: row.created_at,
            expires_at: row.expires_at,
            resolution: row.resolution,
            user_id: row.user_id,
            resolved_by: row.resolved_by,
            resolved_at: row.resolved_at,
            resolution_reason: row.resolution_reason,
            resolution_proof: row.resolution_proof,
            cause_event_id: row.cause_event_id,
            cause_source: row.cause_source,
        }
    }
}

impl CandidateView {
    pub fn new(user: &UserRow, identities: &[IdentityRow]) -> Self {
        Self {
            id: user.id,
            email: user.email.as_deref().map(mask::email),
            phone: user.phone.as_deref().map(mask::phone),
            username: user.username.as_deref().map(str::to_owned),
            name: user.name.clone(),
            attributes: crate::domain::attributes::to_json(&user.attributes.0),
            identities: identities
                .iter()
                .filter(|i| i.user_id == user.id)
                .map(|i| IdentityRefView {
                    connection: i.connection.clone(),
                    external_id: i.external_id.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdentityView {
    pub connection: String,
    pub external_id: String,
    #[schema(value_type = Object)]
    pub profile: Value,
    pub created_at: DateTime<Utc>,
    pub last_login_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub user_pool_id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub phone: Option<String>,
    pub phone_verified: bool,
    pub username: Option<String>,
    pub name: Option<String>,
    /// Never linked automatically.
    pub protected: bool,
    /// String values by name, e.g. `{"employee_id": "E1024"}`.
    #[schema(value_type = Object)]
    pub attributes: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the account was suspended (contract section 11); `null` when it is active.
    pub suspended_at: Option<DateTime<Utc>>,
    pub identities: Vec<IdentityView>,
}

impl UserView {
    pub fn new(user: UserRow, identities: &[IdentityRow]) -> Self {
        Self {
            identities: identities
                .iter()
                .filter(|i| i.user_id == user.id)
                .map(|i| IdentityView {
                    connection: i.connection.clone(),
                    external_id: i.external_id.clone(),
                    profile: i.profile.clone(),
                    created_at: i.created_at,
                    last_login_at: i.last_login_at,
                })
                .collect(),
            id: user.id,
            user_pool_id: user.user_pool_id,
            email: user.email.map(Email::into_inner),
            email_verified: user.email_verified,
            phone: user.phone.map(Phone::into_inner),
            phone_verified: user.phone_verified,
            username: user.username.map(Username::into_inner),
            name: user.name,
            protected: user.protected,
            attributes: crate::domain::attributes::to_json(&user.attributes.0),
            created_at: user.created_at,
            updated_at: user.updated_at,
            suspended_at: user.suspended_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    pub user_pool_id: String,
    pub identifier: String,
    pub display_name: String,
    pub provider: String,
    /// `normal` or `login_only`.
    pub login_mode: String,
    /// `disabled`, `field_matching` or `ask_binding`.
    pub association: String,
    /// Ordered subset of `email`, `phone`, `username` and `attributes.<name>`.
    pub match_fields: Vec<String>,
    /// `any` or `all`.
    pub match_rule: String,
    /// Attributes unique inside the pool.
    pub unique_attributes: Vec<String>,
    pub require_verified: bool,
    pub default_country_code: Option<String>,
    /// A duration such as `72h`.
    pub binding_ttl: String,
    pub trust_unverified_accounts: bool,
    pub allowed_email_domains: Vec<String>,
    /// `ignore`, `notify` or `update_user`.
    pub on_profile_change: String,
    /// Templates building account fields from the profile, by field: the connection's own.
    pub mapping: std::collections::BTreeMap<String, String>,
    /// What applies: the provider's preset with the connection's own templates over it
    /// (read-only; not taken by PUT).
    pub effective_mapping: std::collections::BTreeMap<String, String>,
    /// Mapped fields counted as verified.
    pub verified_fields: Vec<String>,
    /// Changes whenever the settings change.
    pub settings_version: i64,
    /// Set when the stored settings no longer validate (written by a newer version, edited by
    /// hand): what is wrong, naming the field. The connection's logins wait (they are neither
    /// decided nor dead-lettered) until a PUT mends it; the fields above are as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The source's directory, when the connection asks one: its settings, secrets shown as
    /// `"set"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub directory: Option<crate::domain::directory::DirectorySpec>,
    /// How the directory is doing in this process (read, not written): `state` (`ok`,
    /// `rate_limited`, `quota_exhausted`, `failing`), `token` (one is held), `calls` (since the
    /// process started), `last_error`, `last_error_at`, `paused_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub directory_state: Option<Value>,
    /// `notify`, `unlink` or `suspend`: what the source's `directory.user_removed` does.
    pub on_source_removal: String,
    /// `max_fraction`, `min_count` and `window`: removals beyond it within the window are held.
    #[schema(value_type = Object)]
    pub removal_guard: crate::domain::leavers::RemovalGuardSpec,
    /// Removals the guard holds for an admin (read, not written).
    #[serde(default)]
    pub held_removals: i64,
}

impl ConnectionView {
    /// A stored connection, readable or not.
    pub fn of_stored(stored: &crate::db::connections::Stored) -> Self {
        let unreadable = match stored {
            Ok(settings) => return Self::from(settings),
            Err(unreadable) => unreadable,
        };
        let spec = &unreadable.spec;
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let mapping = spec.mapping.clone().unwrap_or_default();
        Self {
            user_pool_id: text(&spec.user_pool_id),
            identifier: text(&spec.identifier),
            display_name: text(&spec.display_name),
            provider: text(&spec.provider),
            login_mode: text(&spec.login_mode),
            association: text(&spec.association),
            match_fields: spec.match_fields.clone().unwrap_or_default(),
            match_rule: text(&spec.match_rule),
            unique_attributes: spec.unique_attributes.clone().unwrap_or_default(),
            require_verified: spec.require_verified.unwrap_or(true),
            default_country_code: spec.default_country_code.clone(),
            binding_ttl: text(&spec.binding_ttl),
            trust_unverified_accounts: spec.trust_unverified_accounts.unwrap_or(false),
            allowed_email_domains: spec.allowed_email_domains.clone().unwrap_or_default(),
            on_profile_change: text(&spec.on_profile_change),
            effective_mapping: mapping.clone(),
            mapping,
            verified_fields: spec.verified_fields.clone().unwrap_or_default(),
            settings_version: unreadable.version,
            problem: Some(unreadable.problem.clone()),
            directory: spec.directory.clone(),
            directory_state: None,
            on_source_removal: text(&spec.on_source_removal),
            removal_guard: spec.removal_guard.clone().unwrap_or_default(),
            held_removals: 0,
        }
    }
}

impl From<&ConnectionSettings> for ConnectionView {
    fn from(c: &ConnectionSettings) -> Self {
        Self {
            user_pool_id: c.user_pool_id.as_str().to_owned(),
            identifier: c.identifier.as_str().to_owned(),
            display_name: c.display_name.clone(),
            provider: c.provider.clone(),
            login_mode: c.login_mode.as_str().to_owned(),
            association: c.association.as_str().to_owned(),
            match_fields: c.match_fields.iter().map(|f| f.to_string()).collect(),
            match_rule: c.match_rule.as_str().to_owned(),
            unique_attributes: c
                .unique_attributes
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            require_verified: c.require_verified,
            default_country_code: c.default_country_code.as_ref().map(|cc| cc.to_string()),
            binding_ttl: crate::domain::connection::format_ttl(c.binding_ttl),
            trust_unverified_accounts: c.trust_unverified_accounts,
            allowed_email_domains: c.allowed_email_domains.clone(),
            on_profile_change: c.on_profile_change.as_str().to_owned(),
            mapping: c.mapping.written().clone(),
            effective_mapping: c.mapping.effective(),
            verified_fields: c.mapping.verified.iter().map(|f| f.to_string()).collect(),
            settings_version: c.version,
            problem: None,
            directory: c.directory.as_ref().map(|d| d.to_spec()),
            directory_state: None,
            on_source_removal: c.on_source_removal.as_str().to_owned(),
            removal_guard: c.removal_guard.to_spec(),
            held_removals: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// The name of the token that made the change.
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    pub time: DateTime<Utc>,
}

impl From<AuditRow> for AuditView {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
            time: r.at,
        }
    }
}

/// A page of a list, newest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// One decided login with its evidence (contract section 7).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    pub event_id: String,
    pub source: String,
    pub decided_at: DateTime<Utc>,
    pub user_pool_id: Option<String>,
    pub connection: Option<String>,
    /// `existing_user`, `user_created`, `user_linked`, `binding_pending` or `rejected`.
    pub outcome: String,
    pub reason: Option<String>,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    /// The connection's settings version the decision was taken under.
    pub settings_version: Option<i64>,
    /// Those settings.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<Value>,
    /// How the match fields combined: `any` (one field identifies a candidate) or `all`.
    pub match_rule: String,
    /// Each field of the login: `field`, `value`, `usable`, `why_not` (`unverified`,
    /// `malformed`, `suspicious`, `domain_not_allowed`, `held`, `not_matched_on` or null),
    /// `origin` (`event`, or `directory` when the connection's directory gave it).
    #[schema(value_type = Vec<Object>)]
    pub fields: Value,
    /// Each candidate account: `user_id`, `matched_on`, `set_aside` (`protected_account`,
    /// `confusable_identifier`, `candidate_unverified`, `candidate_already_linked` or null).
    #[schema(value_type = Vec<Object>)]
    pub candidates: Value,
    /// What the connection's directory said, when it was asked: `result` (`found`, `inactive`,
    /// `not_found`, `unavailable`) and, for `unavailable`, `detail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub directory: Option<Value>,
}

impl DecisionView {
    /// With the fields' values masked by their kind, as viewers see them (a malformed value is
    /// masked too: it may still be an address).
    pub fn masked(mut self) -> Self {
        if let Value::Array(fields) = &mut self.fields {
            for field in fields {
                let kind = field["field"].as_str().unwrap_or_default().to_owned();
                if let Some(Value::String(value)) = field.get_mut("value") {
                    *value = match kind.as_str() {
                        "email" => mask::email(value),
                        "phone" => mask::phone(value),
                        _ => value.clone(),
                    };
                }
            }
        }
        self
    }
}

impl From<crate::db::processed::DecisionRow> for DecisionView {
    fn from(row: crate::db::processed::DecisionRow) -> Self {
        let evidence = row.evidence.unwrap_or_default();
        let list = |key: &str| match evidence.get(key) {
            Some(Value::Array(items)) => Value::Array(items.clone()),
            _ => Value::Array(Vec::new()),
        };
        Self {
            match_rule: evidence
                .get("match_rule")
                .and_then(Value::as_str)
                .unwrap_or("any")
                .to_owned(),
            fields: list("fields"),
            candidates: list("candidates"),
            directory: evidence.get("directory").filter(|d| d.is_object()).cloned(),
            event_id: row.event_id,
            source: row.source,
            decided_at: row.processed_at,
            user_pool_id: row.user_pool_id,
            connection: row.connection,
            outcome: row.outcome,
            reason: row.reason,
            user_id: row.user_id,
            binding_id: row.binding_id,
            settings_version: row.settings_version,
            settings: row.settings,
        }
    }
}

/// The preview of proposed settings: `current outcome -> proposed outcome: count`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimulationView {
    /// The window, as asked (`30d`).
    pub since: String,
    /// The logins decided: one per identity that logged in through the connection in the window.
    pub logins: u64,
    /// One row per pair of outcomes that occurs, unchanged pairs included.
    pub rows: Vec<SimulationRow>,
}

/// How many of the logins go from one outcome to another.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimulationRow {
    /// The outcome under the current settings.
    pub from: String,
    /// The outcome under the proposed settings.
    pub to: String,
    pub count: u64,
    /// Up to five external ids of those logins.
    pub examples: Vec<String>,
}

impl From<crate::domain::simulation::Row> for SimulationRow {
    fn from(row: crate::domain::simulation::Row) -> Self {
        Self {
            from: row.from.as_str().to_owned(),
            to: row.to.as_str().to_owned(),
            count: row.count,
            examples: row.examples,
        }
    }
}

/// Decisions of a recent window, by hour, connection and outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionStatsView {
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub hours: i64,
    /// One row per hour, connection and outcome with at least one decision, oldest first.
    pub rows: Vec<DecisionCountView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionCountView {
    /// The start of the hour.
    pub hour: chrono::DateTime<chrono::Utc>,
    pub user_pool_id: String,
    pub connection: String,
    pub outcome: String,
    pub count: i64,
}
