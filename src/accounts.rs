//! Creating accounts outside the login flow: `users import` and the admin API. A new account is
//! normalised like an event's fields and written under the same advisory locks as the worker's,
//! so it can never slip between a login's read and its write.

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::users::{UserRecord, UserRow};
use crate::domain::{
    CountryCode, Email, Phone, Username,
    attributes::{self, AttributeName},
    connection::{ConnectionId, UserPoolId},
};

/// One account as `users import` reads it (one JSON object per line) and `POST /v1/users` takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInput {
    pub user_pool_id: Option<String>,
    pub id: Option<Uuid>,
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    pub phone: Option<String>,
    #[serde(default)]
    pub phone_verified: bool,
    pub username: Option<String>,
    pub name: Option<String>,
    /// Never linked automatically to an external identity (admins, break-glass accounts).
    #[serde(default)]
    pub protected: bool,
    /// String values by name (`{"employee_id": "E1024"}`); see `domain::attributes`.
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// Identities linked ahead of their first login (`users import` only).
    #[serde(default)]
    pub identities: Option<Vec<IdentityInput>>,
}

/// An identity of an account as `users import` and `users export` write it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    pub connection: String,
    pub external_id: String,
}

/// Most identities one line links ahead.
const MAX_IDENTITIES: usize = 32;

impl AccountInput {
    /// The identities to link ahead, checked: a connection identifier and an external id of 1
    /// to 256 characters each, at most 32.
    pub fn ahead_identities(&self) -> Result<Vec<crate::bulk::AheadIdentity>, AccountError> {
        let given = self.identities.as_deref().unwrap_or_default();
        if given.len() > MAX_IDENTITIES {
            return Err(invalid(
                "identities",
                format!("more than {MAX_IDENTITIES} identities"),
            ));
        }
        given
            .iter()
            .map(|i| {
                let connection = ConnectionId::parse(&i.connection)
                    .map_err(|m| invalid("identities", format!("connection: {m}")))?;
                let external_id = &i.external_id;
                if external_id.is_empty()
                    || external_id.chars().count() > 256
                    || external_id.contains('\0')
                {
                    return Err(invalid(
                        "identities",
                        "external_id must be 1 to 256 characters without NUL",
                    ));
                }
                Ok(crate::bulk::AheadIdentity {
                    connection,
                    external_id: external_id.clone(),
                })
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input is malformed; the message names the field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A field or the id is already held by another user.
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AccountError {
    AccountError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Added(Uuid),
    /// The same account already exists (a re-import): nothing was written.
    Unchanged(Uuid),
}

impl AccountInput {
    /// Validates and normalises. `default_country` reads phone numbers given without `+`.
    pub fn normalise(
        &self,
        default_country: Option<&CountryCode>,
    ) -> Result<UserRecord, AccountError> {
        let pool = self
            .user_pool_id
            .as_deref()
            .ok_or_else(|| invalid("user_pool_id", "is required"))?;
        let pool = UserPoolId::parse(pool).map_err(|m| invalid("user_pool_id", m))?;
        let email = self
            .email
            .as_deref()
            .map(Email::parse_strict)
            .transpose()
            .map_err(|e| invalid("email", e.to_string()))?;
        let phone = self
            .phone
            .as_deref()
            .map(|p| Phone::parse(p, default_country))
            .transpose()
            .map_err(|e| invalid("phone", e.to_string()))?;
        let username = self
            .username
            .as_deref()
            .map(Username::parse_strict)
            .transpose()
            .map_err(|e| invalid("username", e.to_string()))?;
        if let Some(name) = &self.name
            && (name.chars().count() > crate::domain::login::MAX_NAME_CHARS || name.contains('\0'))
        {
            return Err(invalid(
                "name",
                "must be at most 256 characters without NUL",
            ));
        }
        let attributes = self
            .attributes
            .as_ref()
            .map(attributes::parse_object)
            .transpose()
            .map_err(|m| invalid("attributes", m))?
            .unwrap_or_default();
        if self.id.is_none() && email.is_none() && phone.is_none() && username.is_none() {
            return Err(invalid(
                "id",
                "an account needs an id or at least one of email, phone and username, so that \
                 importing it again is recognised",
            ));
        }
        Ok(UserRecord {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            user_pool_id: pool.as_str().to_owned(),
            email_verified: email.is_some() && self.email_verified,
            email,
            phone_verified: phone.is_some() && self.phone_verified,
            phone,
            username,
            // An empty name is none (a CSV cell cannot tell them apart).
            name: self.name.clone().filter(|n| !n.is_empty()),
            protected: self.protected,
            attributes,
        })
    }
}

/// Creates the account in its own transaction, by the rules and under the locks of `users
/// import` (a chunk of one line, see `bulk`).
pub async fn create(
    pool: &PgPool,
    record: &UserRecord,
    explicit_id: bool,
) -> Result<Created, AccountError> {
    let line = crate::bulk::Line {
        number: 1,
        record: record.clone(),
        explicit_id,
        identities: Vec::new(),
    };
    match crate::bulk::import_chunk(pool, &[line]).await?.remove(0) {
        crate::bulk::Imported::Added { user_id, .. } => Ok(Created::Added(user_id)),
        crate::bulk::Imported::Unchanged { user_id, .. } => Ok(Created::Unchanged(user_id)),
        crate::bulk::Imported::Failed(refused) => Err(AccountError::Conflict(refused.message)),
    }
}

/// For each value of `record` that another user already holds, which user holds it (for
/// attributes: those unique in the pool).
pub fn held_elsewhere(
    record: &UserRecord,
    holders: &[UserRow],
    unique: &[AttributeName],
) -> Vec<String> {
    let mut taken = Vec::new();
    for holder in holders.iter().filter(|h| h.id != record.id) {
        let fields = [
            (
                "email",
                record.email.is_some() && holder.email == record.email,
            ),
            (
                "phone",
                record.phone.is_some() && holder.phone == record.phone,
            ),
            (
                "username",
                record.username.is_some() && holder.username == record.username,
            ),
        ];
        for (field, _) in fields.iter().filter(|(_, held)| *held) {
            taken.push(format!("{field} is held by user {}", holder.id));
        }
        // Lookalikes are one value where the pool promises uniqueness.
        let skeleton = crate::domain::attributes::skeleton;
        for name in unique {
            if let Some(value) = record.attributes.get(name)
                && holder
                    .attributes
                    .0
                    .get(name)
                    .is_some_and(|held| skeleton(held) == skeleton(value))
            {
                taken.push(format!("attributes.{name} is held by user {}", holder.id));
            }
        }
    }
    taken
}
