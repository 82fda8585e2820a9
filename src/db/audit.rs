//! The `audit_log` table: every admin write, with who, what, when, and the state before and after.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub at: DateTime<Utc>,
}

pub async fn record(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5)",
        actor,
        action,
        target,
        before,
        after
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What to list of the audit log: by actor, by action, in a time range.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Newest first; `before` is the cursor (an audit id).
pub async fn list(
    conn: &mut PgConnection,
    before: Option<i64>,
    limit: i64,
    filter: &AuditFilter,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as!(
        AuditRow,
        r#"SELECT id, actor, action, target, before, after, at FROM audit_log
           WHERE ($1::bigint IS NULL OR id < $1)
             AND ($3::text IS NULL OR actor = $3)
             AND ($4::text IS NULL OR action = $4)
             AND ($5::timestamptz IS NULL OR at >= $5)
             AND ($6::timestamptz IS NULL OR at < $6)
           ORDER BY id DESC LIMIT $2"#,
        before,
        limit,
        filter.actor.as_deref(),
        filter.action.as_deref(),
        filter.since,
        filter.until,
    )
    .fetch_all(conn)
    .await
}
