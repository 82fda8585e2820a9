//! The `bindings` table: identities parked for an admin (or the platform) to resolve.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{login::LoginEvent, resolution::BindingStatus};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PendingRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub reason: String,
    pub expires_at: DateTime<Utc>,
}

/// A binding to open.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BindingRecord {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub profile: Value,
    pub reason: String,
    pub candidates: Vec<Uuid>,
    /// The login that opened it.
    pub cause_event_id: Option<String>,
    pub cause_source: Option<String>,
    pub expires_at: DateTime<Utc>,
}

super::types::record!(BindingRecord as "binding_record", |r| r.id, &r.user_pool_id,
    &r.connection, &r.external_id, &r.profile, &r.reason, &r.candidates, &r.cause_event_id,
    &r.cause_source, r.expires_at);

impl BindingRecord {
    /// The binding a login opens for its identity.
    pub fn of_login(
        id: Uuid,
        event: &LoginEvent,
        reason: &str,
        candidates: Vec<Uuid>,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            user_pool_id: event.user_pool_id.as_str().to_owned(),
            connection: event.connection.as_str().to_owned(),
            external_id: event.external_id.clone(),
            profile: Value::Object(event.profile.raw.clone()),
            reason: reason.to_owned(),
            candidates,
            cause_event_id: Some(event.id.clone()),
            cause_source: Some(event.source.clone()),
            expires_at,
        }
    }
}

pub struct ExpiredRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
}

/// Marks pending bindings as expired; returns those that were still pending.
pub async fn expire(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<ExpiredRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        ExpiredRow,
        r#"UPDATE bindings SET status = 'expired'
           WHERE id = ANY($1) AND status = 'pending'
           RETURNING id, user_pool_id, connection, external_id"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// A whole binding row, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct BindingRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub profile: Value,
    pub reason: String,
    pub candidates: Vec<Uuid>,
    pub status: BindingStatus,
    pub cause_event_id: Option<String>,
    pub cause_source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub resolution: Option<String>,
    pub user_id: Option<Uuid>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution_reason: Option<String>,
    pub resolution_proof: Option<String>,
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<BindingRow>> {
    sqlx::query_as!(
        BindingRow,
        r#"SELECT id, user_pool_id, connection, external_id, profile, reason, candidates,
                  status AS "status: BindingStatus",
                  cause_event_id, cause_source, created_at, expires_at, resolution, user_id, resolved_by,
                  resolved_at, resolution_reason, resolution_proof
           FROM bindings WHERE id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Filters of the admin list; `before` is the cursor (ids are time-ordered UUIDv7).
#[derive(Debug, Default)]
pub struct ListFilter {
    pub user_pool_id: Option<String>,
    pub status: Option<String>,
    pub connection: Option<String>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(conn: &mut PgConnection, filter: &ListFilter) -> sqlx::Result<Vec<BindingRow>> {
    sqlx::query_as!(
        BindingRow,
        r#"SELECT id, user_pool_id, connection, external_id, profile, reason, candidates,
                  status AS "status: BindingStatus",
                  cause_event_id, cause_source, created_at, expires_at, resolution, user_id, resolved_by,
                  resolved_at, resolution_reason, resolution_proof
           FROM bindings
           WHERE ($1::text IS NULL OR user_pool_id = $1)
             AND ($2::text IS NULL OR status = $2)
             AND ($3::text IS NULL OR connection = $3)
             AND ($4::uuid IS NULL OR id < $4)
           ORDER BY id DESC
           LIMIT $5"#,
        filter.user_pool_id,
        filter.status,
        filter.connection,
        filter.before,
        filter.limit,
    )
    .fetch_all(conn)
    .await
}

pub struct Resolution<'a> {
    pub id: Uuid,
    pub resolution: &'a str,
    pub user_id: Option<Uuid>,
    pub resolved_by: &'a str,
    pub proof: &'a str,
    pub reason: Option<&'a str>,
}

/// Resolves a binding that is still pending; `false` when it no longer was.
pub async fn resolve(conn: &mut PgConnection, r: &Resolution<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        r#"UPDATE bindings SET status = 'resolved', resolution = $2, user_id = $3, resolved_by = $4,
                               resolved_at = now(), resolution_reason = $5,
                               resolution_proof = $6
           WHERE id = $1 AND status = 'pending'"#,
        r.id,
        r.resolution,
        r.user_id,
        r.resolved_by,
        r.reason,
        r.proof,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Pending bindings past their expiry, oldest first.
pub async fn overdue(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<PendingRow>> {
    sqlx::query_as!(
        PendingRow,
        r#"SELECT id, user_pool_id, connection, external_id, reason, expires_at
           FROM bindings WHERE status = 'pending' AND expires_at <= now()
           ORDER BY expires_at LIMIT $1"#,
        limit
    )
    .fetch_all(conn)
    .await
}
