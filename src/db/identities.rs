//! The `identities` table: external identities (pool, connection, external id) linked to users,
//! with the last profile seen and the last login time.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// `(pool, connection, external_id)` triples, as parallel columns.
#[derive(Debug, Default, Clone)]
pub struct IdentityKeys {
    pub pools: Vec<String>,
    pub connections: Vec<String>,
    pub external_ids: Vec<String>,
}

impl IdentityKeys {
    pub fn push(&mut self, pool: &str, connection: &str, external_id: &str) {
        self.pools.push(pool.to_owned());
        self.connections.push(connection.to_owned());
        self.external_ids.push(external_id.to_owned());
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkRow {
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub user_id: Uuid,
    /// The identifiers of the identity's last snapshot, to tell changed ones.
    pub snapshot: IdentifierSnapshot,
}

/// The identifiers of a profile that a returning login is compared with, as the profile held
/// them (not normalised). Each is a field, so that the statement building it, the comparison
/// and the profile rebuilt from it cannot name different keys: a key the statement leaves out
/// reads as absent (`null`), never as a missing index.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct IdentifierSnapshot {
    pub email: serde_json::Value,
    pub email_verified: serde_json::Value,
    pub phone: serde_json::Value,
    pub phone_verified: serde_json::Value,
    pub username: serde_json::Value,
}

impl IdentifierSnapshot {
    /// The identifiers a login's raw profile carries.
    pub fn of(profile: &serde_json::Map<String, serde_json::Value>) -> Self {
        let field = |key: &str| profile.get(key).cloned().unwrap_or_default();
        Self {
            email: field("email"),
            email_verified: field("email_verified"),
            phone: field("phone"),
            phone_verified: field("phone_verified"),
            username: field("username"),
        }
    }

    /// The snapshot as a profile (for normalising it as a login's).
    pub fn to_profile(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// An identity to create (linked to `user_id`) or to refresh (its latest profile).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityRecord {
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub user_id: Uuid,
    pub profile: Value,
}

super::types::record!(IdentityRecord as "identity_record", |r| &r.user_pool_id, &r.connection,
    &r.external_id, r.user_id, &r.profile);

pub async fn insert_many(conn: &mut PgConnection, rows: &[IdentityRecord]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
           SELECT user_pool_id, connection, external_id, user_id, profile
           FROM unnest($1::identity_record[])"#,
        rows as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub user_id: Uuid,
    pub profile: Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_login_at: chrono::DateTime<chrono::Utc>,
}

/// Identities of the given users, by user then connection.
pub async fn of_users(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> sqlx::Result<Vec<IdentityRow>> {
    sqlx::query_as!(
        IdentityRow,
        r#"SELECT user_pool_id, connection, external_id, user_id, profile, created_at, last_login_at
           FROM identities WHERE user_id = ANY($1) ORDER BY user_id, connection, external_id"#,
        user_ids
    )
    .fetch_all(conn)
    .await
}

/// Removes one identity of a user; returns it if it existed.
pub async fn delete(
    conn: &mut PgConnection,
    user_id: Uuid,
    connection: &str,
    external_id: &str,
) -> sqlx::Result<Option<IdentityRow>> {
    sqlx::query_as!(
        IdentityRow,
        r#"DELETE FROM identities WHERE user_id = $1 AND connection = $2 AND external_id = $3
           RETURNING user_pool_id, connection, external_id, user_id, profile, created_at, last_login_at"#,
        user_id,
        connection,
        external_id
    )
    .fetch_optional(conn)
    .await
}
