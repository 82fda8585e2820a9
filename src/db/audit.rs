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

/// Newest first; `before` is the cursor (an audit id).
pub async fn list(
    conn: &mut PgConnection,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as!(
        AuditRow,
        r#"SELECT id, actor, action, target, before, after, at FROM audit_log
           WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"#,
        before,
        limit
    )
    .fetch_all(conn)
    .await
}
