//! The `processed_commands` table: one row per command taken from the commands queue, keyed by
//! its CloudEvents `source` and `id`, holding the reply a re-sent or redelivered command gets
//! again.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

/// Records a command as processed, unless it already was. `None` when this is its first
/// processing (the caller goes on and stores its reply); the stored reply otherwise. Two
/// concurrent claims of one command serialise on the primary key: the second waits for the
/// first to commit, then sees its row.
pub async fn claim(
    conn: &mut PgConnection,
    source: &str,
    command_id: &str,
    kind: &str,
) -> sqlx::Result<Option<Value>> {
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO processed_commands (source, command_id, type) VALUES ($1, $2, $3)
           ON CONFLICT (source, command_id) DO NOTHING
           RETURNING 1 AS "one!""#,
        source,
        command_id,
        kind
    )
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(None);
    }
    let reply = sqlx::query_scalar!(
        r#"SELECT reply AS "reply!" FROM processed_commands
           WHERE source = $1 AND command_id = $2 AND reply IS NOT NULL"#,
        source,
        command_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(Some(reply.unwrap_or(Value::Null)))
}

/// Stores the reply of a command claimed in the same transaction.
pub async fn record_reply(
    conn: &mut PgConnection,
    source: &str,
    command_id: &str,
    reply: &Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE processed_commands SET reply = $3 WHERE source = $1 AND command_id = $2",
        source,
        command_id,
        reply
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `limit` command records older than `before`; returns how many.
pub async fn prune(pool: &sqlx::PgPool, before: DateTime<Utc>, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"DELETE FROM processed_commands WHERE (source, command_id) IN (
               SELECT source, command_id FROM processed_commands WHERE processed_at < $1
               LIMIT $2)"#,
        before,
        limit
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
