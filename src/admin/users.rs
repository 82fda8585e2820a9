//! Looking accounts up, creating one, and unlinking an identity.

use chrono::Utc;
use uuid::Uuid;

use sqlx::PgConnection;

use super::{Actor, Admin, AdminError, Applied, views::UserView};
use crate::accounts::{AccountError, AccountInput};
use crate::bulk::Imported;
use crate::db::{
    audit, identities,
    locks::LockSet,
    outbox::{self, NewOutbox},
    users,
};
use crate::domain::{
    Email, Phone, Username,
    attributes::{self, AttributeName},
    events::{IdentityRef, OutboundEvent, UserUnlinked},
};

fn restore_plus(raw: &str) -> String {
    match raw.strip_prefix(' ') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => format!("+{rest}"),
        _ => raw.to_owned(),
    }
}

/// Most accounts an attribute lookup returns (a value shared by more, say a department, is
/// looked at some other way).
pub const MAX_ATTRIBUTE_MATCHES: i64 = 200;

/// One of the fields an account can be looked up by.
#[derive(Debug, Clone)]
pub enum Lookup {
    Email(String),
    Phone(String),
    Username(String),
    /// An attribute's name and value: every account holding that value.
    Attribute(String, String),
}

impl Lookup {
    /// The value as stored: normalised like a login's.
    pub fn normalised(&self) -> Result<String, AdminError> {
        let bad =
            |field: &'static str, e: String| AdminError::invalid("invalid_query", Some(field), e);
        match self {
            Lookup::Email(raw) => Email::parse(raw)
                .map(Email::into_inner)
                .map_err(|e| bad("email", e.to_string())),
            // An unencoded `+` in a query string arrives as a space.
            Lookup::Phone(raw) => Phone::parse(&restore_plus(raw), None)
                .map(Phone::into_inner)
                .map_err(|e| bad("phone", e.to_string())),
            Lookup::Username(raw) => Username::parse(raw)
                .map(Username::into_inner)
                .map_err(|e| bad("username", e.to_string())),
            Lookup::Attribute(name, raw) => {
                AttributeName::parse(name).map_err(|e| bad("attribute", e))?;
                attributes::value(raw).map_err(|e| bad("value", e))
            }
        }
    }
}

impl Admin {
    /// Exact lookup of a normalised email, phone (E.164, or with `+`) or username in a pool.
    pub async fn find_users(
        &self,
        pool: &str,
        lookup: Lookup,
    ) -> Result<Vec<UserView>, AdminError> {
        let value = lookup.normalised()?;
        let (email, phone, username) = match &lookup {
            Lookup::Email(_) => (Some(value), None, None),
            Lookup::Phone(_) => (None, Some(value), None),
            Lookup::Username(_) => (None, None, Some(value)),
            Lookup::Attribute(name, _) => {
                let mut conn = self.pool.acquire().await?;
                let found =
                    users::find_by_attribute(&mut conn, pool, name, &value, MAX_ATTRIBUTE_MATCHES)
                        .await?;
                let ids: Vec<Uuid> = found.iter().map(|u| u.id).collect();
                let links = identities::of_users(&mut conn, &ids).await?;
                return Ok(found
                    .into_iter()
                    .map(|u| UserView::new(u, &links))
                    .collect());
            }
        };
        let mut conn = self.pool.acquire().await?;
        let found = users::find_holders(
            &mut conn,
            pool,
            email.as_deref(),
            phone.as_deref(),
            username.as_deref(),
        )
        .await?;
        let ids: Vec<Uuid> = found.iter().map(|u| u.id).collect();
        let links = identities::of_users(&mut conn, &ids).await?;
        Ok(found
            .into_iter()
            .map(|u| UserView::new(u, &links))
            .collect())
    }

    pub async fn get_user(&self, id: Uuid) -> Result<UserView, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let user = users::get(&mut conn, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no user {id}")))?;
        let links = identities::of_users(&mut conn, &[id]).await?;
        Ok(UserView::new(user, &links))
    }

    /// Creates one account; a field already held (even by an identical account) is a conflict.
    pub async fn create_user(
        &self,
        input: &AccountInput,
        actor: &Actor,
    ) -> Result<UserView, AdminError> {
        let record = input.normalise(None).map_err(|e| match e {
            AccountError::Invalid { field, message } => {
                AdminError::invalid("invalid_field", Some(field), format!("{field}: {message}"))
            }
            other => AdminError::invalid("invalid_field", None, other.to_string()),
        })?;
        let identities = input.ahead_identities().map_err(|e| match e {
            AccountError::Invalid { field, message } => {
                AdminError::invalid("invalid_field", Some(field), format!("{field}: {message}"))
            }
            other => AdminError::invalid("invalid_field", None, other.to_string()),
        })?;
        let line = crate::bulk::Line {
            number: 1,
            record: record.clone(),
            explicit_id: input.id.is_some(),
            identities,
        };
        let mut tx = self.pool.begin().await?;
        // One account is a chunk of one line: the rules and locks of `users import`.
        let outcome = crate::bulk::decide_and_write(&mut tx, std::slice::from_ref(&line))
            .await?
            .remove(0);
        match outcome {
            Imported::Added { .. } => {}
            Imported::Unchanged { user_id, .. } => {
                return Err(AdminError::conflict(
                    "user_exists",
                    format!("user {user_id} already has these fields"),
                ));
            }
            Imported::Failed(refused) => {
                return Err(match refused.code {
                    "invalid_field" => {
                        AdminError::invalid("invalid_field", Some("identities"), refused.message)
                    }
                    "id_taken" => AdminError::conflict("field_taken", refused.message),
                    code => AdminError::conflict(code, refused.message),
                });
            }
        }
        let user = users::get(&mut tx, record.id)
            .await?
            .expect("just inserted");
        let links = identities::of_users(&mut tx, &[record.id]).await?;
        let view = UserView::new(user, &links);
        audit::record(
            &mut tx,
            &actor.name,
            "user.create",
            &format!("user/{}", record.id),
            None,
            Some(serde_json::to_value(&view).expect("serialises")),
        )
        .await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Removes an identity from its account and publishes `user.unlinked`. A later login of that
    /// identity is decided afresh.
    pub async fn unlink(
        &self,
        user_id: Uuid,
        connection: &str,
        external_id: &str,
        actor: &Actor,
    ) -> Result<UserView, AdminError> {
        let mut tx = self.pool.begin().await?;
        let target = Unlink {
            user_pool_id: None,
            user_id,
            connection,
            external_id,
            reason: None,
        };
        let applied = self.unlink_in(&mut tx, &target, &actor.name).await?;
        self.commit(tx, applied.published).await?;
        applied.result
    }

    /// Removes an identity from a user in `tx`, publishing `user.unlinked`: the admin API and
    /// the `user.unlink` command. An error means nothing was written.
    pub(crate) async fn unlink_in(
        &self,
        tx: &mut PgConnection,
        target: &Unlink<'_>,
        actor: &str,
    ) -> Result<Applied<UserView>, AdminError> {
        let Unlink {
            user_id,
            connection,
            external_id,
            ..
        } = *target;
        let user = users::get(tx, user_id)
            .await?
            .filter(|u| {
                target
                    .user_pool_id
                    .is_none_or(|pool| u.user_pool_id == pool)
            })
            .ok_or_else(|| AdminError::NotFound(format!("no user {user_id}")))?;
        let mut locks = LockSet::new();
        locks
            .identity(&user.user_pool_id, connection, external_id)
            .user(user_id);
        locks.acquire(tx).await?;
        let before_links = identities::of_users(tx, &[user_id]).await?;
        let before = UserView::new(user.clone(), &before_links);
        let removed = identities::delete(tx, user_id, connection, external_id)
            .await?
            .ok_or_else(|| {
                AdminError::NotFound(format!(
                    "user {user_id} has no identity {connection}/{external_id}"
                ))
            })?;
        let data = UserUnlinked {
            user_pool_id: &removed.user_pool_id,
            user_id,
            identity: IdentityRef {
                connection: removed.connection.clone(),
                external_id: removed.external_id.clone(),
            },
            actor,
            reason: target.reason,
        };
        let mut outbox = NewOutbox::default();
        outbox.event(OutboundEvent::new(data, Utc::now()));
        let published = outbox::insert_many(tx, self.origin, outbox).await?;
        let after_links = identities::of_users(tx, &[user_id]).await?;
        let after = UserView::new(user, &after_links);
        audit::record(
            tx,
            actor,
            "identity.unlink",
            &format!("user/{user_id}/identities/{connection}/{external_id}"),
            Some(serde_json::to_value(&before).expect("serialises")),
            Some(serde_json::to_value(&after).expect("serialises")),
        )
        .await?;
        Ok(Applied {
            result: Ok(after),
            published,
        })
    }
}

/// Which identity to unlink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unlink<'a> {
    /// When set, the user must belong to this pool (the command names it; the admin API does
    /// not).
    pub user_pool_id: Option<&'a str>,
    pub user_id: Uuid,
    pub connection: &'a str,
    pub external_id: &'a str,
    pub reason: Option<&'a str>,
}
