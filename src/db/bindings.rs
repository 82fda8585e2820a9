//! The `bindings` table: identities parked for an admin (or the platform) to resolve.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::identities::IdentityKeys;

pub struct PendingRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
    pub reason: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn find_pending(
    conn: &mut PgConnection,
    keys: &IdentityKeys,
) -> sqlx::Result<Vec<PendingRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        PendingRow,
        r#"SELECT b.id, b.user_pool_id, b.connection, b.external_id, b.reason, b.expires_at
           FROM unnest($1::text[], $2::text[], $3::text[]) AS k(pool, connection, external_id)
           JOIN bindings b ON b.user_pool_id = k.pool AND b.connection = k.connection
                          AND b.external_id = k.external_id AND b.status = 'pending'"#,
        &keys.pools,
        &keys.connections,
        &keys.external_ids,
    )
    .fetch_all(conn)
    .await
}

#[derive(Debug, Default)]
pub struct NewBindings {
    pub ids: Vec<Uuid>,
    pub keys: IdentityKeys,
    pub profiles: Vec<Value>,
    pub reasons: Vec<String>,
    /// Candidate lists, flattened: `candidate_owner[i]` is the index of the binding that
    /// `candidates[i]` belongs to (PostgreSQL arrays cannot be ragged).
    pub candidate_owner: Vec<i32>,
    pub candidates: Vec<Uuid>,
    pub cause_event_ids: Vec<Option<String>>,
    pub expires_at: Vec<DateTime<Utc>>,
}

impl NewBindings {
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        id: Uuid,
        pool: &str,
        connection: &str,
        external_id: &str,
        profile: Value,
        reason: &str,
        candidates: &[Uuid],
        cause_event_id: Option<&str>,
        expires_at: DateTime<Utc>,
    ) {
        let owner = self.ids.len() as i32;
        self.ids.push(id);
        self.keys.push(pool, connection, external_id);
        self.profiles.push(profile);
        self.reasons.push(reason.to_owned());
        for candidate in candidates {
            self.candidate_owner.push(owner);
            self.candidates.push(*candidate);
        }
        self.cause_event_ids.push(cause_event_id.map(str::to_owned));
        self.expires_at.push(expires_at);
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub async fn insert_many(conn: &mut PgConnection, rows: &NewBindings) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"INSERT INTO bindings (id, user_pool_id, connection, external_id, profile, reason,
                                 candidates, cause_event_id, expires_at)
           SELECT b.id, b.pool, b.connection, b.external_id, b.profile, b.reason,
                  ARRAY(SELECT c.candidate FROM unnest($7::int4[], $8::uuid[]) WITH ORDINALITY
                            AS c(owner, candidate, n)
                        WHERE c.owner = b.n - 1 ORDER BY c.n),
                  b.cause_event_id, b.expires_at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                       $9::text[], $10::timestamptz[])
                WITH ORDINALITY AS b(id, pool, connection, external_id, profile, reason,
                                     cause_event_id, expires_at, n)"#,
        &rows.ids,
        &rows.keys.pools,
        &rows.keys.connections,
        &rows.keys.external_ids,
        &rows.profiles,
        &rows.reasons,
        &rows.candidate_owner,
        &rows.candidates,
        &rows.cause_event_ids as &[Option<String>],
        &rows.expires_at,
    )
    .execute(conn)
    .await?;
    Ok(())
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
