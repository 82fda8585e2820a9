//! The `processed_events` table: the dedupe record of every decided login event, keyed by its
//! CloudEvents `source` and `id`, holding the decision that is replayed to a duplicate.

use uuid::Uuid;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProcessedRow {
    pub source: String,
    pub event_id: String,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub binding_id: Option<Uuid>,
    pub reason: Option<String>,
}

#[derive(Debug, Default)]
pub struct NewProcessed {
    pub sources: Vec<String>,
    pub event_ids: Vec<String>,
    pub outcomes: Vec<String>,
    pub user_ids: Vec<Option<Uuid>>,
    pub binding_ids: Vec<Option<Uuid>>,
    pub reasons: Vec<Option<String>>,
}

impl NewProcessed {
    pub fn push(
        &mut self,
        source: &str,
        event_id: &str,
        outcome: &str,
        user_id: Option<Uuid>,
        binding_id: Option<Uuid>,
        reason: Option<String>,
    ) {
        self.sources.push(source.to_owned());
        self.event_ids.push(event_id.to_owned());
        self.outcomes.push(outcome.to_owned());
        self.user_ids.push(user_id);
        self.binding_ids.push(binding_id);
        self.reasons.push(reason);
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
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
