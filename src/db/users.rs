//! The `users` table. Emails, phones and usernames are stored normalised and are unique per pool.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::types::stored;
use crate::domain::{
    ConnectionSettings, Email, MatchKey, Phone, Username,
    attributes::{self, AttributeName, Attributes},
    decision::{NewUserFields, PoolUser},
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
                  u.name, u.protected, u.attributes,
                  ARRAY(SELECT i.connection FROM identities i WHERE i.user_id = u.id) AS "linked_connections!"
           FROM users u
           WHERE (u.email = ANY($1) OR u.phone = ANY($2) OR u.username = ANY($3)
                  OR u.id = ANY(ARRAY(
                       SELECT a.user_id FROM user_attributes a
                       JOIN unnest($5::text[], $6::text[], $7::bool[]) AS k(name, value, matched)
                         ON a.name = k.name AND a.value = k.value
                       WHERE a.user_pool_id = $4 AND (a.is_unique OR k.matched))))
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

/// New users, as parallel columns.
#[derive(Debug, Default)]
pub struct NewUsers {
    pub ids: Vec<Uuid>,
    pub pools: Vec<String>,
    pub emails: Vec<Option<String>>,
    pub email_verified: Vec<bool>,
    pub phones: Vec<Option<String>>,
    pub phone_verified: Vec<bool>,
    pub usernames: Vec<Option<String>>,
    pub names: Vec<Option<String>>,
    pub attributes: Vec<serde_json::Value>,
    /// Written by the writers that take it (an import); logins and resolutions create
    /// unprotected accounts.
    pub protected: Vec<bool>,
}

impl NewUsers {
    pub fn push(&mut self, user: &UserRecord) {
        self.ids.push(user.id);
        self.pools.push(user.user_pool_id.clone());
        self.emails
            .push(user.email.as_ref().map(|e| e.as_str().to_owned()));
        self.email_verified.push(user.email_verified);
        self.phones
            .push(user.phone.as_ref().map(|p| p.as_str().to_owned()));
        self.phone_verified.push(user.phone_verified);
        self.usernames
            .push(user.username.as_ref().map(|u| u.as_str().to_owned()));
        self.names.push(user.name.clone());
        self.attributes.push(attributes::to_json(&user.attributes));
        self.protected.push(user.protected);
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub async fn insert_many(conn: &mut PgConnection, users: &NewUsers) -> sqlx::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO users (id, user_pool_id, email, email_verified, phone, phone_verified, username, name,
                              attributes)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::text[],
                                $6::bool[], $7::text[], $8::text[], $9::jsonb[])"#,
        &users.ids,
        &users.pools,
        &users.emails as &[Option<String>],
        &users.email_verified,
        &users.phones as &[Option<String>],
        &users.phone_verified,
        &users.usernames as &[Option<String>],
        &users.names as &[Option<String>],
        &users.attributes,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A whole user row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    pub user_pool_id: String,
    pub email: Option<Email>,
    pub email_verified: bool,
    pub phone: Option<Phone>,
    pub phone_verified: bool,
    pub username: Option<Username>,
    pub name: Option<String>,
    /// Never linked automatically.
    pub protected: bool,
    pub attributes: Attributes,
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
}

impl UserRecord {
    /// A new account of `pool` with the fields a login or a resolution gives it.
    pub fn new(id: Uuid, pool: &str, fields: &NewUserFields) -> Self {
        Self {
            id,
            user_pool_id: pool.to_owned(),
            email: fields.email.clone(),
            email_verified: fields.email_verified,
            phone: fields.phone.clone(),
            phone_verified: fields.phone_verified,
            username: fields.username.clone(),
            name: fields.name.clone(),
            protected: false,
            attributes: fields.attributes.clone(),
        }
    }

    /// The user as the decision sees it (without its identities).
    pub fn pool_user(&self) -> PoolUser {
        PoolUser {
            id: self.id,
            email: self.email.clone(),
            email_verified: self.email_verified,
            phone: self.phone.clone(),
            phone_verified: self.phone_verified,
            username: self.username.clone(),
            attributes: self.attributes.clone(),
            protected: self.protected,
            linked_on_connection: false,
        }
    }
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
        self.record().pool_user()
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
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at
           FROM users WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Users of `user`'s pool holding its email, its phone, its username or a value of one of its
/// attributes that is unique in the pool (`user` included, if it is stored).
pub async fn holders_of(conn: &mut PgConnection, user: &UserRecord) -> sqlx::Result<Vec<UserRow>> {
    let (names, values): (Vec<String>, Vec<String>) = user
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .unzip();
    sqlx::query_as!(
        UserRow,
        r#"SELECT id, user_pool_id, email AS "email: Email", email_verified, phone AS "phone: Phone",
                  phone_verified, username AS "username: Username", name, protected,
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at
           FROM users
           WHERE user_pool_id = $1
             AND (email = $2 OR phone = $3 OR username = $4
                  OR id = ANY(ARRAY(
                       SELECT a.user_id FROM user_attributes a
                       JOIN unnest($5::text[], $6::text[]) AS k(name, value)
                         ON a.name = k.name AND a.value = k.value
                       WHERE a.user_pool_id = $1 AND a.is_unique)))
           ORDER BY id"#,
        user.user_pool_id,
        user.email.as_ref().map(Email::as_str),
        user.phone.as_ref().map(Phone::as_str),
        user.username.as_ref().map(Username::as_str),
        &names,
        &values,
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
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at
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
                  u.created_at, u.updated_at
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
                  attributes AS "attributes: Json<Attributes>", created_at, updated_at
           FROM users WHERE id = ANY($1)"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// Changed identifiers copied onto accounts by a batch of logins, as parallel columns: per
/// account, each field's new value where `set_*` says it changed (one entry per account; a later
/// change of the batch is merged into it).
#[derive(Debug, Default)]
pub struct ProfileUpdates {
    pub ids: Vec<Uuid>,
    pub set_email: Vec<bool>,
    pub emails: Vec<Option<String>>,
    pub email_verified: Vec<bool>,
    pub set_phone: Vec<bool>,
    pub phones: Vec<Option<String>>,
    pub phone_verified: Vec<bool>,
    pub set_username: Vec<bool>,
    pub usernames: Vec<Option<String>>,
}

impl ProfileUpdates {
    /// Adds an account's update, merged into the one already there for that account.
    pub fn push(&mut self, user_id: Uuid, update: &crate::domain::decision::drift::UserUpdate) {
        use crate::domain::connection::MatchField;
        let i = match self.ids.iter().position(|id| *id == user_id) {
            Some(i) => i,
            None => {
                self.ids.push(user_id);
                self.set_email.push(false);
                self.emails.push(None);
                self.email_verified.push(false);
                self.set_phone.push(false);
                self.phones.push(None);
                self.phone_verified.push(false);
                self.set_username.push(false);
                self.usernames.push(None);
                self.ids.len() - 1
            }
        };
        let user = &update.user;
        for field in &update.changed {
            match field {
                MatchField::Email => {
                    self.set_email[i] = true;
                    self.emails[i] = user.email.as_deref().map(str::to_owned);
                    self.email_verified[i] = update.email_verified;
                }
                MatchField::Phone => {
                    self.set_phone[i] = true;
                    self.phones[i] = user.phone.as_deref().map(str::to_owned);
                    self.phone_verified[i] = update.phone_verified;
                }
                MatchField::Username => {
                    self.set_username[i] = true;
                    self.usernames[i] = user.username.as_deref().map(str::to_owned);
                }
            }
        }
    }

    /// Writes them in one statement.
    pub async fn write(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.ids.is_empty() {
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
               FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::bool[], $5::bool[], $6::text[],
                           $7::bool[], $8::bool[], $9::text[])
                 AS v(id, set_email, email, email_verified, set_phone, phone, phone_verified,
                      set_username, username)
               WHERE u.id = v.id"#,
            &self.ids,
            &self.set_email,
            &self.emails as &[Option<String>],
            &self.email_verified,
            &self.set_phone,
            &self.phones as &[Option<String>],
            &self.phone_verified,
            &self.set_username,
            &self.usernames as &[Option<String>],
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}
