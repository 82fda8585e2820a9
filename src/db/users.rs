//! The `users` table. Emails, phones and usernames are stored normalised and are unique per pool.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::types::stored;
pub use crate::domain::account::UserRecord;
use crate::domain::{
    ConnectionSettings, Email, MatchKey, Phone, Username,
    attributes::{self, AttributeName, Attributes},
    decision::PoolUser,
    login::NormalizedFields,
};

/// A user as matching sees it, with the connections it already holds an identity of.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MatchRow {
    pub id: Uuid,
    pub user_pool_id: String,
    #[serde(deserialize_with = "stored")]
    pub email: Option<Email>,
    pub email_verified: bool,
    #[serde(deserialize_with = "stored")]
    pub phone: Option<Phone>,
    pub phone_verified: bool,
    #[serde(deserialize_with = "stored")]
    pub username: Option<Username>,
    pub name: Option<String>,
    #[serde(default)]
    pub attributes: Attributes,
    pub protected: bool,
    pub linked_connections: Vec<String>,
    /// Never linked to, never logged into.
    #[serde(default)]
    pub suspended: bool,
}

impl MatchRow {
    /// The user as the decision sees it, for a login of `connection`.
    pub fn pool_user(&self, connection: &str) -> PoolUser {
        PoolUser {
            id: self.id,
            email: self.email.clone(),
            email_verified: self.email_verified,
            phone: self.phone.clone(),
            phone_verified: self.phone_verified,
            username: self.username.clone(),
            attributes: self.attributes.clone(),
            protected: self.protected,
            linked_on_connection: self.linked_connections.iter().any(|c| c == connection),
            suspended: self.suspended,
        }
    }
}

/// Normalised values to look up, one list per field; attributes as parallel columns (pool,
/// name, value, whether the login's connection matches on it).
#[derive(Debug, Default)]
pub struct FieldKeys {
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub usernames: Vec<String>,
    pub attribute_pools: Vec<String>,
    pub attribute_names: Vec<String>,
    pub attribute_values: Vec<String>,
    /// The values' skeletons: a unique attribute's lookalikes are looked up too.
    pub attribute_skeletons: Vec<String>,
    pub attribute_matched: Vec<bool>,
}

impl FieldKeys {
    /// Adds every valid value of a login of `pool` under `settings` (suspicious ones
    /// included). Its attributes are looked up among the pool's unique ones, and among all when
    /// the connection matches on them.
    pub fn add(&mut self, pool: &str, fields: &NormalizedFields, settings: &ConnectionSettings) {
        if let Some(email) = fields.email.value() {
            self.emails.push(email.as_str().to_owned());
        }
        if let Some(phone) = fields.phone.value() {
            self.phones.push(phone.as_str().to_owned());
        }
        if let Some(username) = fields.username.value() {
            self.usernames.push(username.as_str().to_owned());
        }
        for (name, field) in &fields.attributes {
            let Some(value) = field.value() else { continue };
            self.attribute_pools.push(pool.to_owned());
            self.attribute_names.push(name.as_str().to_owned());
            self.attribute_values.push(value.clone());
            self.attribute_skeletons.push(attributes::skeleton(value));
            let key = MatchKey::Attribute(name.clone());
            self.attribute_matched
                .push(settings.match_fields.contains(&key));
        }
    }

    fn is_empty(&self) -> bool {
        self.emails.is_empty()
            && self.phones.is_empty()
            && self.usernames.is_empty()
            && self.attribute_names.is_empty()
    }
}

/// Every user of `pool` holding one of the given normalised values: one index lookup per field.
pub async fn find_by_fields(
    conn: &mut PgConnection,
    pool: &str,
    keys: &FieldKeys,
) -> sqlx::Result<Vec<MatchRow>> {
    find_by_fields_up_to(conn, pool, keys, i64::MAX).await
}

/// The same, at most `limit` of them (in no particular order).
pub async fn find_by_fields_up_to(
    conn: &mut PgConnection,
    pool: &str,
    keys: &FieldKeys,
    limit: i64,
) -> sqlx::Result<Vec<MatchRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!(
        r#"SELECT u.id, u.user_pool_id, u.email AS "email: Email", u.email_verified,
                  u.phone AS "phone: Phone", u.phone_verified, u.username AS "username: Username",
                  u.name, u.protected, u.attributes, u.suspended_at IS NOT NULL AS "suspended!",
                  ARRAY(SELECT i.connection FROM identities i WHERE i.user_id = u.id) AS "linked_connections!"
           FROM users u
           WHERE (u.email = ANY($1) OR u.phone = ANY($2) OR u.username = ANY($3)
                  OR u.id = ANY(ARRAY(
                       SELECT a.user_id FROM user_attributes a
                       JOIN unnest($5::text[], $6::text[], $7::bool[]) AS k(name, value, matched)
                         ON a.name = k.name AND a.value = k.value
                       WHERE a.user_pool_id = $4 AND (a.is_unique OR k.matched)))
                  OR u.id = ANY(ARRAY(
                       SELECT a.user_id FROM user_attributes a
                       JOIN unnest($5::text[], $9::text[]) AS k(name, skeleton)
                         ON a.user_pool_id = $4 AND a.name = k.name AND a.skeleton = k.skeleton
                       WHERE a.is_unique)))
             AND u.user_pool_id = $4
           LIMIT $8"#,
        &keys.emails,
        &keys.phones,
        &keys.usernames,
        pool,
        &keys.attribute_names,
        &keys.attribute_values,
        &keys.attribute_matched,
        limit,
        &keys.attribute_skeletons,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| MatchRow {
            id: r.id,
            user_pool_id: r.user_pool_id,
            email: r.email,
            email_verified: r.email_verified,
            phone: r.phone,
            phone_verified: r.phone_verified,
            username: r.username,
            name: r.name,
            attributes: attributes::from_stored(&r.attributes),
            protected: r.protected,
            linked_connections: r.linked_connections,
            suspended: r.suspended,
        })
        .collect())
}

/// The attributes unique in `pool` (some connection of the pool lists them).
pub async fn unique_attributes(
    conn: &mut PgConnection,
    pool: &str,
) -> sqlx::Result<Vec<AttributeName>> {
    let names = sqlx::query_scalar!(
        "SELECT name FROM unique_attributes WHERE user_pool_id = $1 ORDER BY name",
        pool
    )
    .fetch_all(conn)
    .await?;
    Ok(names
        .iter()
        .filter_map(|n| AttributeName::parse(n).ok())
        .collect())
}

super::types::record!(UserRecord as "user_record", |r| r.id, &r.user_pool_id, &r.email,
    r.email_verified, &r.phone, r.phone_verified, &r.username, &r.name, r.protected,
    Json(&r.attributes));

/// Inserts new accounts (a whole row each: see [`UserRecord`]).
pub async fn insert_many(conn: &mut PgConnection, users: &[UserRecord]) -> sqlx::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO users (id, user_pool_id, email, email_verified, phone, phone_verified,
                              username, name, attributes, protected)
           SELECT id, user_pool_id, email, email_verified, phone, phone_verified, username, name,
                  attributes, protected
           FROM unnest($1::user_record[])"#,
        users as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub email: Option<Email>,
    pub email_verified: bool,
    pub phone: Option<Phone>,
    pub phone_verified: bool,
    pub username: Option<Username>,
    pub name: Option<String>,
    pub protected: bool,
    pub attributes: Json<Attributes>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the account was suspended; `None` when it is active.
    pub suspended_at: Option<DateTime<Utc>>,
}

/// Writes every changeable field of a user.
pub async fn update(conn: &mut PgConnection, user: &UserRecord) -> sqlx::Result<()> {
    sqlx::query!(
        r#"UPDATE users SET email = $2, email_verified = $3, phone = $4, phone_verified = $5,
                  username = $6, name = $7, protected = $8, attributes = $9, updated_at = now()
           WHERE id = $1"#,
        user.id,
        user.email as _,
        user.email_verified,
        user.phone as _,
        user.phone_verified,
        user.username as _,
        user.name,
        user.protected,
        attributes::to_json(&user.attributes),
    )
    .execute(conn)
    .await?;
    Ok(())
}

impl UserRow {
    /// The user as the decision sees a candidate (without its identities).
    pub fn pool_user(&self) -> PoolUser {
        PoolUser {
            suspended: self.suspended_at.is_some(),
            ..self.record().pool_user()
        }
    }

    pub fn record(&self) -> UserRecord {
        UserRecord {
            id: self.id,
            user_pool_id: self.user_pool_id.clone(),
            email: self.email.clone(),
            email_verified: self.email_verified,
            phone: self.phone.clone(),
            phone_verified: self.phone_verified,
            username: self.username.clone(),
            name: self.name.clone(),
            protected: self.protected,
            attributes: self.attributes.0.clone(),
        }
    }
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"SELECT id, user_pool_id, email AS "email: Email", email_verified, phone AS "phone: Phone",
                  phone_verified, username AS "username: Username", name, protected,
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at,
                  suspended_at
           FROM users WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Users of `user`'s pool holding its email, its phone, its username or a value of one of its
/// attributes that is unique in the pool (`user` included, if it is stored).
pub async fn holders_of(conn: &mut PgConnection, user: &UserRecord) -> sqlx::Result<Vec<UserRow>> {
    // A unique attribute's lookalikes are held too (see `attributes::skeleton`).
    let (names, skeletons): (Vec<String>, Vec<String>) = user
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), attributes::skeleton(v)))
        .unzip();
    sqlx::query_as!(
        UserRow,
        r#"SELECT id, user_pool_id, email AS "email: Email", email_verified, phone AS "phone: Phone",
                  phone_verified, username AS "username: Username", name, protected,
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at,
                  suspended_at
           FROM users
           WHERE user_pool_id = $1
             AND (email = $2 OR phone = $3 OR username = $4
                  OR id = ANY(ARRAY(
                       SELECT a.user_id FROM user_attributes a
                       JOIN unnest($5::text[], $6::text[]) AS k(name, skeleton)
                         ON a.user_pool_id = $1 AND a.name = k.name AND a.skeleton = k.skeleton
                       WHERE a.is_unique)))
           ORDER BY id"#,
        user.user_pool_id,
        user.email.as_ref().map(Email::as_str),
        user.phone.as_ref().map(Phone::as_str),
        user.username.as_ref().map(Username::as_str),
        &names,
        &skeletons,
    )
    .fetch_all(conn)
    .await
}

/// Users of a pool holding any of the given normalised values (each may be absent).
pub async fn find_holders(
    conn: &mut PgConnection,
    pool: &str,
    email: Option<&str>,
    phone: Option<&str>,
    username: Option<&str>,
) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"SELECT id, user_pool_id, email AS "email: Email", email_verified, phone AS "phone: Phone",
                  phone_verified, username AS "username: Username", name, protected,
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at,
                  suspended_at
           FROM users
           WHERE user_pool_id = $1 AND (email = $2 OR phone = $3 OR username = $4)
           ORDER BY id"#,
        pool,
        email,
        phone,
        username,
    )
    .fetch_all(conn)
    .await
}

/// Up to `limit` users of `pool` whose attribute `name` is `value`, by id.
pub async fn find_by_attribute(
    conn: &mut PgConnection,
    pool: &str,
    name: &str,
    value: &str,
    limit: i64,
) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"SELECT u.id, u.user_pool_id, u.email AS "email: Email", u.email_verified,
                  u.phone AS "phone: Phone", u.phone_verified, u.username AS "username: Username",
                  u.name, u.protected, u.attributes AS "attributes: Json<Attributes>",
                  u.created_at, u.updated_at, u.suspended_at
           FROM user_attributes a JOIN users u ON u.id = a.user_id
           WHERE a.user_pool_id = $1 AND a.name = $2 AND a.value = $3
           ORDER BY u.id LIMIT $4"#,
        pool,
        name,
        value,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Users by id, in no particular order.
pub async fn get_many(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"SELECT id, user_pool_id, email AS "email: Email", email_verified, phone AS "phone: Phone",
                  phone_verified, username AS "username: Username", name, protected,
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at,
                  suspended_at
           FROM users WHERE id = ANY($1)"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// Changed identifiers copied onto an account by a batch of logins: each field's new value
/// where `set_*` says it changed (one per account; a later change of the batch is merged into
/// it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileUpdate {
    pub id: Uuid,
    pub set_email: bool,
    pub email: Option<String>,
    pub email_verified: bool,
    pub set_phone: bool,
    pub phone: Option<String>,
    pub phone_verified: bool,
    pub set_username: bool,
    pub username: Option<String>,
}

super::types::record!(ProfileUpdate as "profile_update", |r| r.id, r.set_email, &r.email,
    r.email_verified, r.set_phone, &r.phone, r.phone_verified, r.set_username, &r.username);

impl ProfileUpdate {
    /// No field changed yet.
    pub fn of(id: Uuid) -> Self {
        Self {
            id,
            set_email: false,
            email: None,
            email_verified: false,
            set_phone: false,
            phone: None,
            phone_verified: false,
            set_username: false,
            username: None,
        }
    }

    /// Merges a later change of the account into this one.
    pub fn merge(&mut self, update: &crate::domain::decision::drift::UserUpdate) {
        use crate::domain::connection::MatchField;
        let user = &update.user;
        for field in &update.changed {
            match field {
                MatchField::Email => {
                    self.set_email = true;
                    self.email = user.email.as_deref().map(str::to_owned);
                    self.email_verified = update.email_verified;
                }
                MatchField::Phone => {
                    self.set_phone = true;
                    self.phone = user.phone.as_deref().map(str::to_owned);
                    self.phone_verified = update.phone_verified;
                }
                MatchField::Username => {
                    self.set_username = true;
                    self.username = user.username.as_deref().map(str::to_owned);
                }
            }
        }
    }
}

/// Writes them in one statement.
pub async fn update_profiles(
    conn: &mut PgConnection,
    updates: &[ProfileUpdate],
) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"UPDATE users u SET
             email = CASE WHEN v.set_email THEN v.email ELSE u.email END,
             email_verified = CASE WHEN v.set_email THEN v.email_verified
                                   ELSE u.email_verified END,
             phone = CASE WHEN v.set_phone THEN v.phone ELSE u.phone END,
             phone_verified = CASE WHEN v.set_phone THEN v.phone_verified
                                   ELSE u.phone_verified END,
             username = CASE WHEN v.set_username THEN v.username ELSE u.username END,
             updated_at = now()
           FROM unnest($1::profile_update[]) v
           -- An index lookup, whatever the estimate of the records (see `batch::write`).
           WHERE u.id = ANY(ARRAY(SELECT w.id FROM unnest($1::profile_update[]) w))
             AND u.id = v.id"#,
        updates as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}
