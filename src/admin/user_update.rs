//! Changing an account: `PATCH /v1/users/{id}`. The new values are normalised and checked like
//! those of a new account (a suspicious value is refused), taken under the same locks as a
//! login's, and the change publishes `user.updated`.

use chrono::Utc;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::{Actor, Admin, AdminError, views::UserView};
use crate::db::{
    audit, identities,
    locks::LockSet,
    outbox::{self, NewOutbox},
    users::{self, UserRecord, UserRow},
};
use crate::domain::{
    Email, Phone, Username,
    attributes::{self, AttributeName, Attributes},
    effects::{Changer, user_updated},
    events::UserSummary,
};
use sqlx::PgConnection;

/// The fields to change; a field left out stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub email_verified: Option<bool>,
    /// With its `+` country code.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    pub phone_verified: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub username: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    pub protected: Option<bool>,
    /// Merged into the account's attributes: a string sets one, `null` removes it, a name left
    /// out stays as it is.
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A field that is present in the body, `null` or not.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn invalid(field: &'static str, message: String) -> AdminError {
    AdminError::invalid("invalid_field", Some(field), format!("{field}: {message}"))
}

impl UserPatch {
    /// `current` with the patch applied and normalised; the names of the fields that change.
    fn apply(&self, current: &UserRecord) -> Result<(UserRecord, Vec<&'static str>), AdminError> {
        let mut next = current.clone();
        if let Some(email) = &self.email {
            // A new address is not verified unless the body says so.
            next.email_verified = false;
            next.email = email
                .as_deref()
                .map(|raw| Email::parse_strict(raw).map_err(|e| invalid("email", e.to_string())))
                .transpose()?;
        }
        if let Some(phone) = &self.phone {
            next.phone_verified = false;
            next.phone = phone
                .as_deref()
                .map(|raw| Phone::parse(raw, None).map_err(|e| invalid("phone", e.to_string())))
                .transpose()?;
        }
        if let Some(username) = &self.username {
            next.username = username
                .as_deref()
                .map(|raw| {
                    Username::parse_strict(raw).map_err(|e| invalid("username", e.to_string()))
                })
                .transpose()?;
        }
        if let Some(name) = &self.name {
            if name
                .as_deref()
                .is_some_and(|n| n.chars().count() > 256 || n.contains('\0'))
            {
                return Err(invalid("name", "at most 256 characters without NUL".into()));
            }
            next.name = name.clone().filter(|n| !n.is_empty());
        }
        // Keeping the same value keeps its flag.
        if next.email == current.email && self.email_verified.is_none() {
            next.email_verified = current.email_verified;
        }
        if next.phone == current.phone && self.phone_verified.is_none() {
            next.phone_verified = current.phone_verified;
        }
        if let Some(verified) = self.email_verified {
            next.email_verified = verified;
        }
        if let Some(verified) = self.phone_verified {
            next.phone_verified = verified;
        }
        if let Some(protected) = self.protected {
            next.protected = protected;
        }
        if let Some(attributes) = &self.attributes {
            next.attributes = merged(&current.attributes, attributes)?;
        }
        // A flag without its value means nothing.
        next.email_verified &= next.email.is_some();
        next.phone_verified &= next.phone.is_some();
        let mut changed = Vec::new();
        let mut note = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        note("email", next.email != current.email);
        note(
            "email_verified",
            next.email_verified != current.email_verified,
        );
        note("phone", next.phone != current.phone);
        note(
            "phone_verified",
            next.phone_verified != current.phone_verified,
        );
        note("username", next.username != current.username);
        note("name", next.name != current.name);
        note("protected", next.protected != current.protected);
        note("attributes", next.attributes != current.attributes);
        Ok((next, changed))
    }
}

/// `current` with `patch` merged in: a string sets an attribute, `null` removes it.
fn merged(
    current: &Attributes,
    patch: &serde_json::Map<String, serde_json::Value>,
) -> Result<Attributes, AdminError> {
    let mut next = current.clone();
    let mut set = serde_json::Map::new();
    for (name, value) in patch {
        if value.is_null() {
            let name = AttributeName::parse(name).map_err(|m| invalid("attributes", m))?;
            next.remove(&name);
        } else {
            set.insert(name.clone(), value.clone());
        }
    }
    next.extend(attributes::parse_object(&set).map_err(|m| invalid("attributes", m))?);
    if next.len() > attributes::MAX_ATTRIBUTES {
        return Err(invalid(
            "attributes",
            format!("more than {} attributes", attributes::MAX_ATTRIBUTES),
        ));
    }
    Ok(next)
}

impl Admin {
    /// Applies `patch` to the account `id`; a value held by another user of the pool is a
    /// conflict. Publishes `user.updated` when something changed.
    pub async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        actor: &Actor,
    ) -> Result<UserView, AdminError> {
        let mut tx = self.pool.begin().await?;
        let (current, next, changed) = lock_and_apply(&mut tx, id, patch).await?;
        let pool = current.user_pool_id.clone();
        refuse_taken_values(&mut tx, &next).await?;
        let links = identities::of_users(&mut tx, &[id]).await?;
        let before = UserView::new(current, &links);
        if changed.is_empty() {
            return Ok(before);
        }
        users::update(&mut tx, &next).await?;
        let after_row = users::get(&mut tx, id).await?.expect("still there");
        let after = UserView::new(after_row, &links);
        let user = UserSummary {
            id,
            email: next.email.clone(),
            phone: next.phone.clone(),
            username: next.username.clone(),
            name: next.name.clone(),
            attributes: next.attributes.clone(),
        };
        let by = Changer::Admin(&actor.name);
        let mut events = NewOutbox::default();
        events.event(user_updated(&pool, user, changed, by, Utc::now()));
        let published = outbox::insert_many(&mut tx, self.origin, events).await?;
        audit::record(
            &mut tx,
            &actor.name,
            "user.update",
            &format!("user/{id}"),
            Some(serde_json::to_value(&before).expect("serialises")),
            Some(serde_json::to_value(&after).expect("serialises")),
        )
        .await?;
        self.commit(tx, published).await?;
        Ok(after)
    }
}

/// The user as it is, as it will be, and the fields that change. The locks of the user and of
/// its old and new values are taken before the user is read for good: a concurrent PATCH waits,
/// and so does a login matching on an old value. If the user changed before the locks were
/// taken, lock what it holds now, and read again.
async fn lock_and_apply(
    tx: &mut PgConnection,
    id: Uuid,
    patch: &UserPatch,
) -> Result<(UserRow, UserRecord, Vec<&'static str>), AdminError> {
    let mut seen = None;
    loop {
        let current = users::get(tx, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no user {id}")))?;
        let (next, changed) = patch.apply(&current.record())?;
        if seen.as_ref() == Some(&current.record()) {
            return Ok((current, next, changed));
        }
        let mut locks = LockSet::new();
        locks
            .user(id)
            .record_fields(&current.user_pool_id, &current.record())
            .record_fields(&current.user_pool_id, &next);
        locks.acquire(tx).await?;
        seen = Some(current.record());
    }
}

/// A conflict naming each new value another user of the pool already holds.
async fn refuse_taken_values(tx: &mut PgConnection, next: &UserRecord) -> Result<(), AdminError> {
    let holders = users::holders_of(tx, next).await?;
    let unique = users::unique_attributes(tx, &next.user_pool_id).await?;
    let taken = crate::accounts::held_elsewhere(next, &holders, &unique);
    if taken.is_empty() {
        Ok(())
    } else {
        Err(AdminError::conflict("field_taken", taken.join("; ")))
    }
}
