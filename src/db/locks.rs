//! Transaction-scoped advisory locks that serialise writers touching the same identity or the same
//! normalised email, phone or username of a pool. Every writer of users, identities or bindings
//! takes them first, so that the state it reads cannot change under it before it commits.

use sqlx::PgConnection;

use crate::domain::{Email, Phone, Username, login::NormalizedFields};

/// Lock keys are text, hashed by PostgreSQL (`hashtextextended` is stable across versions, so
/// processes of different builds agree on them).
#[derive(Debug, Default, Clone)]
pub struct LockSet(Vec<String>, Vec<String>);

const SEP: char = '\u{1f}';

impl LockSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn identity(&mut self, pool: &str, connection: &str, external_id: &str) -> &mut Self {
        self.0.push(format!(
            "identity{SEP}{pool}{SEP}{connection}{SEP}{external_id}"
        ));
        self
    }

    pub fn email(&mut self, pool: &str, email: &Email) -> &mut Self {
        self.0.push(format!("email{SEP}{pool}{SEP}{email}"));
        self
    }

    pub fn phone(&mut self, pool: &str, phone: &Phone) -> &mut Self {
        self.0.push(format!("phone{SEP}{pool}{SEP}{phone}"));
        self
    }

    pub fn username(&mut self, pool: &str, username: &Username) -> &mut Self {
        self.0.push(format!("username{SEP}{pool}{SEP}{username}"));
        self
    }

    /// One value of an account attribute, by its skeleton: writers of lookalike values (which
    /// a unique attribute holds as one) queue for each other.
    pub fn attribute(&mut self, pool: &str, name: &str, value: &str) -> &mut Self {
        let skeleton = crate::domain::attributes::skeleton(value);
        self.0
            .push(format!("attribute{SEP}{pool}{SEP}{name}{SEP}{skeleton}"));
        self
    }

    /// Every valid email, phone, username and mapped attribute of a login (suspicious ones
    /// included: they are looked up too).
    pub fn fields(&mut self, pool: &str, fields: &NormalizedFields) -> &mut Self {
        if let Some(email) = fields.email.value() {
            self.email(pool, email);
        }
        if let Some(phone) = fields.phone.value() {
            self.phone(pool, phone);
        }
        if let Some(username) = fields.username.value() {
            self.username(pool, username);
        }
        for (name, field) in &fields.attributes {
            if let Some(value) = field.value() {
                self.attribute(pool, name.as_str(), value);
            }
        }
        if !fields.attributes.is_empty() {
            self.pool_attributes(pool);
        }
        self
    }

    /// The email, phone, username and attributes an account holds.
    pub fn record_fields(&mut self, pool: &str, user: &crate::db::users::UserRecord) -> &mut Self {
        if let Some(email) = &user.email {
            self.email(pool, email);
        }
        if let Some(phone) = &user.phone {
            self.phone(pool, phone);
        }
        if let Some(username) = &user.username {
            self.username(pool, username);
        }
        for (name, value) in &user.attributes {
            self.attribute(pool, name.as_str(), value);
        }
        if !user.attributes.is_empty() {
            self.pool_attributes(pool);
        }
        self
    }

    /// Shared: the pool's unique attributes stay as they are until commit. Every writer of
    /// account attributes takes it (the database's trigger does too, see the migration); a
    /// connection's save takes it exclusively when it changes which attributes are unique.
    /// Taken here, in the same order as every other lock, so that it never closes a cycle.
    pub fn pool_attributes(&mut self, pool: &str) -> &mut Self {
        self.1.push(format!("unique_attributes{SEP}{pool}"));
        self
    }

    /// A user's own row, for writers that change a user without knowing its fields in advance.
    pub fn user(&mut self, id: uuid::Uuid) -> &mut Self {
        self.0.push(format!("user{SEP}{id}"));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_empty()
    }

    /// [`LockSet::acquire`], and in the same statement whether each connection of `versions`
    /// (user pool, identifier, `settings_version`) still has that version: `false` if one
    /// changed or went. The versions are read as a statement before the locks would read them.
    pub async fn acquire_checking(
        &self,
        conn: &mut PgConnection,
        versions: &[(&str, &str, i64)],
    ) -> sqlx::Result<bool> {
        let mut pools = Vec::with_capacity(versions.len());
        let mut identifiers = Vec::with_capacity(versions.len());
        let mut expected = Vec::with_capacity(versions.len());
        for (pool, identifier, version) in versions {
            pools.push(*pool);
            identifiers.push(*identifier);
            expected.push(*version);
        }
        let row = sqlx::query!(
            r#"SELECT
                 (SELECT count(CASE WHEN shared THEN pg_advisory_xact_lock_shared(h)
                                    ELSE pg_advisory_xact_lock(h) END)
                  FROM (SELECT hashtextextended(k, 0) AS h, bool_and(shared) AS shared
                        FROM (SELECT k, false AS shared FROM unnest($1::text[]) AS k
                              UNION ALL
                              SELECT k, true FROM unnest($2::text[]) AS k) AS keys
                        GROUP BY 1 ORDER BY 1) AS ordered) AS "locked!",
                 (SELECT count(*) FROM unnest($3::text[], $4::text[], $5::int8[])
                                       AS v(pool, identifier, version)
                  WHERE NOT EXISTS (
                    SELECT 1 FROM connections c
                    WHERE c.user_pool_id = v.pool AND c.identifier = v.identifier
                      AND c.settings_version = v.version)) AS "changed!""#,
            &self.0,
            &self.1,
            &pools as &[&str],
            &identifiers as &[&str],
            &expected,
        )
        .fetch_one(conn)
        .await?;
        Ok(row.changed == 0)
    }

    /// Takes every lock, in one round trip, in ascending hash order: two transactions locking
    /// overlapping sets always queue instead of deadlocking.
    pub async fn acquire(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.acquire_checking(conn, &[]).await?;
        Ok(())
    }
}
