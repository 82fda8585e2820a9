//! The webhook tables: endpoints, their deliveries (made by `outbox_enqueue` in the transaction
//! of each event) and the attempts of each delivery.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// An endpoint as stored.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: Uuid,
    pub user_pool_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The secrets that sign now: the current one, and the previous one during its overlap.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// A new endpoint's fields.
pub struct NewEndpoint<'a> {
    pub id: Uuid,
    pub user_pool_id: &'a str,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub type_regex: &'a str,
    pub description: &'a str,
    pub secret: &'a str,
}

pub async fn insert(conn: &mut PgConnection, new: &NewEndpoint<'_>) -> sqlx::Result<EndpointRow> {
    sqlx::query_as!(
        EndpointRow,
        r#"INSERT INTO webhook_endpoints (id, user_pool_id, url, event_types, type_regex,
                                         description, secret)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                     secret, previous_secret, previous_secret_until, failing_since, created_at,
                     updated_at"#,
        new.id,
        new.user_pool_id,
        new.url,
        new.event_types,
        new.type_regex,
        new.description,
        new.secret,
    )
    .fetch_one(conn)
    .await
}

/// Every endpoint (of one pool when given), oldest first.
pub async fn list(conn: &mut PgConnection, pool: Option<&str>) -> sqlx::Result<Vec<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        r#"SELECT id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                  secret, previous_secret, previous_secret_until, failing_since, created_at,
                  updated_at
           FROM webhook_endpoints WHERE ($1::text IS NULL OR user_pool_id = $1)
           ORDER BY created_at, id"#,
        pool
    )
    .fetch_all(conn)
    .await
}

/// One endpoint, locked for update when `lock`.
pub async fn get(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> sqlx::Result<Option<EndpointRow>> {
    if lock {
        sqlx::query_as!(
            EndpointRow,
            r#"SELECT id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                      secret, previous_secret, previous_secret_until, failing_since, created_at,
                      updated_at
               FROM webhook_endpoints WHERE id = $1 FOR UPDATE"#,
            id
        )
        .fetch_optional(conn)
        .await
    } else {
        sqlx::query_as!(
            EndpointRow,
            r#"SELECT id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                      secret, previous_secret, previous_secret_until, failing_since, created_at,
                      updated_at
               FROM webhook_endpoints WHERE id = $1"#,
            id
        )
        .fetch_optional(conn)
        .await
    }
}

/// Writes an endpoint's changeable fields (url, patterns, description, enabled).
pub async fn update(
    conn: &mut PgConnection,
    row: &EndpointRow,
    type_regex: &str,
) -> sqlx::Result<EndpointRow> {
    sqlx::query_as!(
        EndpointRow,
        r#"UPDATE webhook_endpoints
           SET url = $2, event_types = $3, type_regex = $4, description = $5, enabled = $6,
               disabled_reason = CASE WHEN $6 THEN NULL ELSE $7 END,
               failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END,
               updated_at = now()
           WHERE id = $1
           RETURNING id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                     secret, previous_secret, previous_secret_until, failing_since, created_at,
                     updated_at"#,
        row.id,
        row.url,
        &row.event_types,
        type_regex,
        row.description,
        row.enabled,
        row.disabled_reason,
    )
    .fetch_one(conn)
    .await
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query!("DELETE FROM webhook_endpoints WHERE id = $1", id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A new current secret; the old one signs beside it until `overlap_until`.
pub async fn rotate(
    conn: &mut PgConnection,
    id: Uuid,
    secret: &str,
    overlap_until: DateTime<Utc>,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        r#"UPDATE webhook_endpoints
           SET previous_secret = secret, previous_secret_until = $3, secret = $2,
               updated_at = now()
           WHERE id = $1
           RETURNING id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                     secret, previous_secret, previous_secret_until, failing_since, created_at,
                     updated_at"#,
        id,
        secret,
        overlap_until
    )
    .fetch_optional(conn)
    .await
}

/// A delivery taken to be sent, with its endpoint and its event as published.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The event's CloudEvent; `None` if its outbox row is gone.
    pub payload: Option<Value>,
}

/// Takes up to `limit` due deliveries of `endpoint` (if enabled) for `lease`: another process
/// skips them until then; a crashed process's lease runs out and the delivery is taken again.
/// Only the first undelivered delivery of a subject is due: the next one waits until it is
/// delivered or given up, so that one subject's events arrive in order.
///
/// Candidates are read in `(next_attempt_at, id)` order from the endpoint's partial index, and
/// whether each is its subject's first is a subquery per candidate (the minimum `outbox_id` of
/// the subject's pending deliveries, from another partial index), until `limit` are found: a
/// plan that does not grow with the endpoint's backlog.
pub async fn claim(
    conn: &mut PgConnection,
    endpoint: Uuid,
    limit: i64,
    lease: std::time::Duration,
) -> sqlx::Result<Vec<Claimed>> {
    let lease_ms = lease.as_millis() as i64;
    sqlx::query_as!(
        Claimed,
        r#"WITH picked AS (
               SELECT c.id FROM webhook_deliveries c
               WHERE c.endpoint_id = $1 AND c.state = 'pending' AND c.next_attempt_at <= now()
                 AND (c.lease_until IS NULL OR c.lease_until < now())
                 AND c.outbox_id = (
                     SELECT min(p.outbox_id) FROM webhook_deliveries p
                     WHERE p.order_key = c.order_key AND p.state = 'pending')
                 AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = $1 AND e.enabled)
               ORDER BY c.next_attempt_at, c.id
               LIMIT $2
               FOR UPDATE OF c SKIP LOCKED),
           leased AS (
               UPDATE webhook_deliveries d
               SET lease_until = now() + make_interval(secs => $3::bigint / 1000.0)
               FROM picked WHERE d.id = picked.id
               RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.attempts, d.outbox_id)
           SELECT l.id AS "id!", l.endpoint_id AS "endpoint_id!", l.event_id AS "event_id!",
                  l.event_type AS "event_type!", l.attempts AS "attempts!",
                  o.payload AS "payload?"
           FROM leased l LEFT JOIN outbox o ON o.id = l.outbox_id
           ORDER BY l.id"#,
        endpoint,
        limit,
        lease_ms,
    )
    .fetch_all(conn)
    .await
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub latency_ms: i32,
    pub response: String,
    pub error: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

/// One attempt to record, and where its delivery goes.
#[derive(Debug, Clone)]
pub struct Settled {
    pub id: i64,
    pub attempts_before: i32,
    pub attempt: Attempt,
    pub after: After,
}

/// Logs the attempts and moves each delivery on, unless it was changed meanwhile (an admin's
/// retry or replay, or another process that took it after the lease ran out): then only its
/// attempt is logged. Returns the deliveries that moved.
pub async fn settle_many(conn: &mut PgConnection, settled: &[Settled]) -> sqlx::Result<Vec<i64>> {
    let ids: Vec<i64> = settled.iter().map(|s| s.id).collect();
    let numbers: Vec<i32> = settled.iter().map(|s| s.attempts_before + 1).collect();
    let befores: Vec<i32> = settled.iter().map(|s| s.attempts_before).collect();
    let statuses: Vec<Option<i32>> = settled
        .iter()
        .map(|s| s.attempt.status.map(i32::from))
        .collect();
    let latencies: Vec<i32> = settled.iter().map(|s| s.attempt.latency_ms).collect();
    let responses: Vec<String> = settled.iter().map(|s| s.attempt.response.clone()).collect();
    let errors: Vec<Option<String>> = settled.iter().map(|s| s.attempt.error.clone()).collect();
    let states: Vec<&str> = settled
        .iter()
        .map(|s| match s.after {
            After::Delivered => "delivered",
            After::RetryAt(_) => "pending",
            After::Failed => "failed",
        })
        .collect();
    let nexts: Vec<Option<DateTime<Utc>>> = settled
        .iter()
        .map(|s| match s.after {
            After::RetryAt(at) => Some(at),
            _ => None,
        })
        .collect();
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status, latency_ms, response, error)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::text[],
                              $6::text[])",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&statuses)
    .bind(&latencies)
    .bind(&responses)
    .bind(&errors)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "UPDATE webhook_deliveries d
         SET state = u.state, attempts = u.before + 1,
             next_attempt_at = coalesce(u.next_at, d.next_attempt_at), lease_until = NULL,
             last_status = u.status, updated_at = now()
         FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::int[])
              AS u(id, before, state, next_at, status)
         WHERE d.id = u.id AND d.attempts = u.before AND d.state = 'pending'
         RETURNING d.id",
    )
    .bind(&ids)
    .bind(&befores)
    .bind(&states)
    .bind(&nexts)
    .bind(&statuses)
    .fetch_all(conn)
    .await
}

/// After delivered attempts: these endpoints are no longer failing.
pub async fn endpoints_answered(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE webhook_endpoints SET failing_since = NULL
         WHERE id = ANY($1) AND failing_since IS NOT NULL",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// After a failed attempt: since when the endpoint has been failing (now, if it was not).
pub async fn endpoint_failed(
    conn: &mut PgConnection,
    id: Uuid,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!(
        r#"UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())
           WHERE id = $1 RETURNING failing_since AS "failing_since!""#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Disables an enabled endpoint; returns it if this call disabled it.
pub async fn disable(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
) -> sqlx::Result<Option<EndpointRow>> {
    sqlx::query_as!(
        EndpointRow,
        r#"UPDATE webhook_endpoints
           SET enabled = false, disabled_reason = $2, updated_at = now()
           WHERE id = $1 AND enabled
           RETURNING id, user_pool_id, url, event_types, description, enabled, disabled_reason,
                     secret, previous_secret, previous_secret_until, failing_since, created_at,
                     updated_at"#,
        id,
        reason
    )
    .fetch_optional(conn)
    .await
}

/// A delivery, as the log shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub subject: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint's deliveries, newest first (by event id: UUIDv7, so the order they were made in),
/// after the delivery `before` (the cursor) in that order.
pub async fn deliveries(
    conn: &mut PgConnection,
    endpoint: Uuid,
    state: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as!(
        DeliveryRow,
        r#"SELECT id, event_id, event_type, subject, state, attempts,
                  next_attempt_at, last_status, created_at, updated_at
           FROM webhook_deliveries
           WHERE endpoint_id = $1 AND ($2::text IS NULL OR state = $2)
             AND ($3::bigint IS NULL
                  OR event_id < (SELECT c.event_id FROM webhook_deliveries c
                                 WHERE c.id = $3 AND c.endpoint_id = $1))
           ORDER BY event_id DESC LIMIT $4"#,
        endpoint,
        state,
        before,
        limit
    )
    .fetch_all(conn)
    .await
}

/// One logged attempt.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response: String,
    pub error: Option<String>,
}

/// The attempts of these deliveries, oldest first.
pub async fn attempts(
    conn: &mut PgConnection,
    deliveries: &[i64],
) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as!(
        AttemptRow,
        "SELECT delivery_id, attempt, at, status, latency_ms, response, error
         FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
        deliveries
    )
    .fetch_all(conn)
    .await
}

/// Makes one delivery of the endpoint due now, with a whole schedule again; `false` when the
/// endpoint has no such delivery.
pub async fn retry(conn: &mut PgConnection, endpoint: Uuid, delivery: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "UPDATE webhook_deliveries
         SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
             updated_at = now()
         WHERE id = $1 AND endpoint_id = $2",
        delivery,
        endpoint
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Queues again every stored event since `since` that the endpoint takes (its pool, its
/// patterns), with the event's own id; one still pending is left as it is. Returns how many.
pub async fn replay(
    conn: &mut PgConnection,
    endpoint: Uuid,
    since: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"INSERT INTO webhook_deliveries AS d (endpoint_id, outbox_id, event_id, event_type,
                                                subject, order_key)
           SELECT e.id, o.id, o.message_id, o.routing_key, coalesce(o.payload->>'subject', ''),
                  e.id::text || ' ' || coalesce(o.payload->>'subject', o.message_id::text)
           FROM webhook_endpoints e
           JOIN outbox o ON o.kind = 'event' AND o.created_at >= $2
                        AND o.payload->'data'->>'user_pool_id' = e.user_pool_id
           WHERE e.id = $1
             AND ('.' || o.routing_key) ~ e.type_regex
             AND NOT (o.routing_key LIKE 'webhook.%' AND o.payload->>'subject' = e.id::text)
           ORDER BY o.id
           ON CONFLICT (endpoint_id, event_id) DO UPDATE
           SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
               updated_at = now()
           WHERE d.state <> 'pending'"#,
        endpoint,
        since
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes up to `limit` delivered or failed deliveries settled before `before` (their attempts
/// go with them).
pub async fn prune(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM webhook_deliveries WHERE id IN (
             SELECT id FROM webhook_deliveries
             WHERE state <> 'pending' AND updated_at < $1 LIMIT $2)",
        before,
        limit
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Per endpoint: undelivered deliveries and the age of the oldest, in seconds.
pub async fn backlog(conn: &mut PgConnection) -> sqlx::Result<Vec<(Uuid, i64, f64)>> {
    let rows = sqlx::query!(
        r#"SELECT e.id AS "id!", count(d.id) AS "undelivered!",
                  coalesce(extract(epoch FROM now() - min(d.created_at)), 0)::float8 AS "oldest!"
           FROM webhook_endpoints e
           LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.id AND d.state = 'pending'
           GROUP BY e.id"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.undelivered, r.oldest))
        .collect())
}
