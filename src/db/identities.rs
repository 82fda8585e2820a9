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
    /// The identifiers of the identity's last snapshot (`email`, `phone`, `username` and the
    /// verification flags), to tell changed ones.
    pub snapshot: serde_json::Map<String, serde_json::Value>,
}

/// Identities to create or to refresh, as parallel columns.
#[derive(Debug, Default)]
pub struct IdentityWrites {
    pub keys: IdentityKeys,
    pub user_ids: Vec<Uuid>,
    pub profiles: Vec<Value>,
}

impl IdentityWrites {
    pub fn push(
        &mut self,
        pool: &str,
        connection: &str,
        external_id: &str,
        user_id: Uuid,
        profile: Value,
    ) {
        self.keys.push(pool, connection, external_id);
        self.user_ids.push(user_id);
        self.profiles.push(profile);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

pub async fn insert_many(conn: &mut PgConnection, rows: &IdentityWrites) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[])"#,
        &rows.keys.pools,
        &rows.keys.connections,
        &rows.keys.external_ids,
        &rows.user_ids,
        &rows.profiles,
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
