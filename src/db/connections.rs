//! The `connections` table: each external identity source of each pool, with its settings.

use sqlx::PgConnection;

use crate::domain::connection::{ConnectionSettings, ConnectionSpec};

struct Row {
    user_pool_id: String,
    identifier: String,
    display_name: String,
    provider: String,
    login_mode: String,
    association: String,
    match_fields: Vec<String>,
    require_verified: bool,
    default_country_code: Option<String>,
    binding_ttl_seconds: i64,
}

impl Row {
    /// Rows were validated when written; a row that no longer validates (edited by hand) is
    /// reported rather than half-used.
    fn into_settings(self) -> sqlx::Result<ConnectionSettings> {
        let spec = ConnectionSpec {
            identifier: Some(self.identifier),
            user_pool_id: Some(self.user_pool_id),
            display_name: Some(self.display_name),
            provider: Some(self.provider),
            login_mode: Some(self.login_mode),
            association: Some(self.association),
            match_fields: Some(self.match_fields),
            require_verified: Some(self.require_verified),
            default_country_code: self.default_country_code,
            binding_ttl: Some(format!("{}s", self.binding_ttl_seconds)),
        };
        ConnectionSettings::validate(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }
}

/// Creates the connection or replaces its settings; `true` when it was created.
pub async fn upsert(conn: &mut PgConnection, c: &ConnectionSettings) -> sqlx::Result<bool> {
    let match_fields: Vec<String> = c
        .match_fields
        .iter()
        .map(|f| f.as_str().to_owned())
        .collect();
    sqlx::query!(
        r#"INSERT INTO connections (user_pool_id, identifier, display_name, provider, login_mode,
               association, match_fields, require_verified, default_country_code, binding_ttl_seconds)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (user_pool_id, identifier) DO UPDATE SET
               display_name = EXCLUDED.display_name,
               provider = EXCLUDED.provider,
               login_mode = EXCLUDED.login_mode,
               association = EXCLUDED.association,
               match_fields = EXCLUDED.match_fields,
               require_verified = EXCLUDED.require_verified,
               default_country_code = EXCLUDED.default_country_code,
               binding_ttl_seconds = EXCLUDED.binding_ttl_seconds,
               updated_at = now()
           RETURNING (xmax = 0) AS "created!""#,
        c.user_pool_id.as_str(),
        c.identifier.as_str(),
        c.display_name,
        c.provider,
        c.login_mode.as_str(),
        c.association.as_str(),
        &match_fields,
        c.require_verified,
        c.default_country_code.as_ref().map(|cc| cc.to_string()),
        c.binding_ttl.as_secs() as i64,
    )
    .fetch_one(conn)
    .await
    .map(|row| row.created)
}

/// The connections among `(pool, identifier)` pairs that exist.
pub async fn find_many(
    conn: &mut PgConnection,
    pools: &[String],
    identifiers: &[String],
) -> sqlx::Result<Vec<ConnectionSettings>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT c.user_pool_id, c.identifier, c.display_name, c.provider, c.login_mode,
                  c.association, c.match_fields, c.require_verified, c.default_country_code,
                  c.binding_ttl_seconds
           FROM connections c
           JOIN unnest($1::text[], $2::text[]) AS k(pool, identifier)
             ON c.user_pool_id = k.pool AND c.identifier = k.identifier"#,
        pools,
        identifiers
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Row::into_settings).collect()
}

pub async fn get(
    conn: &mut PgConnection,
    pool: &str,
    identifier: &str,
) -> sqlx::Result<Option<ConnectionSettings>> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT user_pool_id, identifier, display_name, provider, login_mode, association,
                  match_fields, require_verified, default_country_code, binding_ttl_seconds
           FROM connections WHERE user_pool_id = $1 AND identifier = $2"#,
        pool,
        identifier
    )
    .fetch_optional(conn)
    .await?;
    row.map(Row::into_settings).transpose()
}

pub async fn list(conn: &mut PgConnection) -> sqlx::Result<Vec<ConnectionSettings>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT user_pool_id, identifier, display_name, provider, login_mode, association,
                  match_fields, require_verified, default_country_code, binding_ttl_seconds
           FROM connections ORDER BY user_pool_id, identifier"#
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Row::into_settings).collect()
}
