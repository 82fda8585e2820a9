//! What leavers and movers read and write: suspended accounts, the removals the guard counts and
//! the ones it holds, and renamed identities.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// The account an identity is linked to.
pub async fn linked_user(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    external_id: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        r#"SELECT user_id FROM identities
           WHERE external_id = $3 AND connection = $2 AND user_pool_id = $1"#,
        pool,
        connection,
        external_id
    )
    .fetch_optional(conn)
    .await
}

/// How many identities a connection holds: the guard's fraction is of these.
pub async fn identities_of(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM identities WHERE user_pool_id = $1 AND connection = $2"#,
        pool,
        connection
    )
    .fetch_one(conn)
    .await
}

/// Removals applied on a connection since `since`.
pub async fn removals_since(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    since: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM source_removals
           WHERE user_pool_id = $1 AND connection = $2 AND removed_at > $3"#,
        pool,
        connection,
        since
    )
    .fetch_one(conn)
    .await
}

/// Counts an applied removal toward the guard's window.
pub async fn record_removal(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    external_id: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"INSERT INTO source_removals (user_pool_id, connection, external_id)
           VALUES ($1, $2, $3)"#,
        pool,
        connection,
        external_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets applied removals older than `before` (the longest window is 7 days).
pub async fn prune_removals(conn: &mut PgConnection, before: DateTime<Utc>) -> sqlx::Result<u64> {
    Ok(
        sqlx::query!("DELETE FROM source_removals WHERE removed_at < $1", before)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// A removal the guard held.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HeldRemoval {
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    /// The CloudEvents `source` and `id` of the removal.
    pub source: String,
    pub event_id: String,
    /// The source's own name for it, e.g. `user_leave_org`.
    pub source_event: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub held_at: DateTime<Utc>,
}

/// Holds a removal; a removal of an identity already held changes nothing. Returns how many
/// removals the connection now holds.
pub async fn hold(conn: &mut PgConnection, held: &HeldRemoval) -> sqlx::Result<i64> {
    sqlx::query!(
        r#"INSERT INTO held_removals (user_pool_id, connection, external_id, source, event_id,
                                      source_event, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"#,
        held.user_pool_id,
        held.connection,
        held.external_id,
        held.source,
        held.event_id,
        held.source_event,
        held.occurred_at,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM held_removals WHERE user_pool_id = $1 AND connection = $2"#,
        held.user_pool_id,
        held.connection
    )
    .fetch_one(conn)
    .await
}

/// The removals a connection holds, oldest first.
pub async fn held(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
) -> sqlx::Result<Vec<HeldRemoval>> {
    sqlx::query_as!(
        HeldRemoval,
        r#"SELECT user_pool_id, connection, external_id, source, event_id, source_event,
                  occurred_at, held_at
           FROM held_removals WHERE user_pool_id = $1 AND connection = $2
           ORDER BY held_at, external_id"#,
        pool,
        connection
    )
    .fetch_all(conn)
    .await
}

/// Takes a connection's held removals away (all, or those of `external_ids`), locked until the
/// transaction ends.
pub async fn take_held(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    external_ids: Option<&[String]>,
) -> sqlx::Result<Vec<HeldRemoval>> {
    sqlx::query_as!(
        HeldRemoval,
        r#"DELETE FROM held_removals
           WHERE user_pool_id = $1 AND connection = $2
             AND ($3::text[] IS NULL OR external_id = ANY($3))
           RETURNING user_pool_id, connection, external_id, source, event_id, source_event,
                     occurred_at, held_at"#,
        pool,
        connection,
        external_ids,
    )
    .fetch_all(conn)
    .await
}

/// How many removals each connection holds, for the dashboard and the metric.
pub async fn held_counts(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT user_pool_id, connection, count(*) AS "n!" FROM held_removals
           GROUP BY user_pool_id, connection ORDER BY user_pool_id, connection"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_pool_id, r.connection, r.n))
        .collect())
}

/// Suspends an account, saying where the suspension came from.
pub async fn suspend(
    conn: &mut PgConnection,
    user_id: Uuid,
    suspension: &Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"UPDATE users SET suspended_at = now(), suspension = $2, updated_at = now()
           WHERE id = $1 AND suspended_at IS NULL"#,
        user_id,
        suspension
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Reactivates a suspended account; `None` when it was not suspended.
pub async fn reactivate(conn: &mut PgConnection, user_id: Uuid) -> sqlx::Result<Option<Value>> {
    sqlx::query_scalar!(
        r#"UPDATE users u SET suspended_at = NULL, suspension = NULL, updated_at = now()
           FROM (SELECT id, suspension FROM users WHERE id = $1 AND suspended_at IS NOT NULL
                 FOR UPDATE) old
           WHERE u.id = old.id
           RETURNING old.suspension AS "suspension!""#,
        user_id
    )
    .fetch_optional(conn)
    .await
}

/// The account of a pool suspended by the removal of (`connection`, `external_id`).
pub async fn suspended_by(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    external_id: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        r#"SELECT id FROM users
           WHERE user_pool_id = $1 AND suspended_at IS NOT NULL
             AND suspension->>'connection' = $2 AND suspension->>'external_id' = $3
           ORDER BY suspended_at DESC LIMIT 1"#,
        pool,
        connection,
        external_id
    )
    .fetch_optional(conn)
    .await
}

/// Moves an identity to its new external id; returns its account when it existed.
pub async fn rename_identity(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    old: &str,
    new: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        r#"UPDATE identities SET external_id = $4
           WHERE external_id = $3 AND connection = $2 AND user_pool_id = $1
           RETURNING user_id"#,
        pool,
        connection,
        old,
        new
    )
    .fetch_optional(conn)
    .await
}

/// Moves an identity's pending binding to its new external id, unless the new id has one of
/// its own; returns the bindings moved.
pub async fn rename_pending(
    conn: &mut PgConnection,
    pool: &str,
    connection: &str,
    old: &str,
    new: &str,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"UPDATE bindings SET external_id = $4
           WHERE status = 'pending' AND external_id = $3 AND connection = $2
             AND user_pool_id = $1
             AND NOT EXISTS (SELECT 1 FROM bindings
                             WHERE status = 'pending' AND external_id = $4 AND connection = $2
                               AND user_pool_id = $1)
           RETURNING id"#,
        pool,
        connection,
        old,
        new
    )
    .fetch_all(conn)
    .await
}
