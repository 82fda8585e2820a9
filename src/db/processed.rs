//! The `processed_events` table: the dedupe record of every decided login event, keyed by its
//! CloudEvents `source` and `id`, holding the decision that is replayed to a duplicate.

use uuid::Uuid;

use crate::domain::{events::Reply, login::LoginEvent};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProcessedRow {
    pub source: String,
    pub event_id: String,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    pub reason: Option<String>,
}

/// The dedupe record of a decided login, with its decision's evidence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessedRecord {
    pub source: String,
    pub event_id: String,
    pub outcome: &'static str,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    pub reason: Option<String>,
    pub user_pool_id: String,
    pub connection: String,
    pub settings_version: i64,
    pub evidence: serde_json::Value,
    pub external_id: String,
    /// The login's profile as received: what a simulation decides again.
    pub profile: serde_json::Value,
}

super::types::record!(ProcessedRecord as "processed_record", |r| &r.source, &r.event_id,
    r.outcome, r.user_id, r.binding_id, &r.reason, &r.user_pool_id, &r.connection,
    r.settings_version, &r.evidence, &r.external_id, &r.profile);

impl ProcessedRecord {
    pub fn of(
        event: &LoginEvent,
        reply: &Reply,
        settings_version: i64,
        evidence: serde_json::Value,
    ) -> Self {
        Self {
            source: event.source.clone(),
            event_id: event.id.clone(),
            outcome: reply.outcome.as_str(),
            user_id: reply.user_id,
            binding_id: reply.binding_id,
            reason: reply.reason.clone(),
            user_pool_id: event.user_pool_id.as_str().to_owned(),
            connection: event.connection.as_str().to_owned(),
            settings_version,
            evidence,
            external_id: event.external_id.clone(),
            profile: serde_json::Value::Object(event.profile.raw.clone()),
        }
    }
}

/// Deletes up to `limit` dedupe records older than `before`; returns how many.
pub async fn prune(
    pool: &sqlx::PgPool,
    before: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"DELETE FROM processed_events WHERE (source, event_id) IN (
               SELECT source, event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)"#,
        before,
        limit
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A decided login with its evidence, as stored.
#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub source: String,
    pub event_id: String,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    pub reason: Option<String>,
    pub processed_at: chrono::DateTime<chrono::Utc>,
    pub user_pool_id: Option<String>,
    pub connection: Option<String>,
    pub settings_version: Option<i64>,
    pub evidence: Option<serde_json::Value>,
    /// The connection's settings as they were at that version.
    pub settings: Option<serde_json::Value>,
}

/// The decisions of `event_id` (of `source`, when given): several sources may reuse an id.
pub async fn decisions(
    conn: &mut sqlx::PgConnection,
    event_id: &str,
    source: Option<&str>,
) -> sqlx::Result<Vec<DecisionRow>> {
    sqlx::query_as!(
        DecisionRow,
        r#"SELECT p.source, p.event_id, p.outcome, p.user_id, p.binding_id, p.reason,
                  p.processed_at, p.user_pool_id, p.connection, p.settings_version, p.evidence,
                  v.settings AS "settings?"
           FROM processed_events p
           LEFT JOIN connection_versions v
             ON v.user_pool_id = p.user_pool_id AND v.identifier = p.connection
            AND v.version = p.settings_version
           WHERE p.event_id = $1 AND ($2::text IS NULL OR p.source = $2)
           ORDER BY p.processed_at
           LIMIT 20"#,
        event_id,
        source
    )
    .fetch_all(conn)
    .await
}

/// Decisions of one hour, connection and outcome.
#[derive(Debug, Clone)]
pub struct DecisionCount {
    pub hour: chrono::DateTime<chrono::Utc>,
    pub user_pool_id: String,
    pub connection: String,
    pub outcome: String,
    pub count: i64,
}

/// The decisions since `since`, counted by hour (in UTC), connection and outcome.
pub async fn counts(
    conn: &mut sqlx::PgConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<Vec<DecisionCount>> {
    sqlx::query_as!(
        DecisionCount,
        r#"SELECT date_trunc('hour', processed_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS "hour!",
                  user_pool_id AS "user_pool_id!",
                  connection AS "connection!", outcome, count(*) AS "count!"
           FROM processed_events
           WHERE processed_at >= $1 AND user_pool_id IS NOT NULL AND connection IS NOT NULL
           GROUP BY 1, 2, 3, 4
           ORDER BY 1, 2, 3, 4"#,
        since
    )
    .fetch_all(conn)
    .await
}
