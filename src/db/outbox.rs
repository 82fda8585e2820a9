//! The `outbox` table: events and replies committed with the decision that caused them, waiting
//! for the relay to publish them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, types::Json};
use uuid::Uuid;

pub use super::types::OutboxKind;

/// A row to insert, as `outbox_enqueue` (the one way into the outbox) reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewOutboxRow {
    pub kind: OutboxKind,
    pub routing_key: String,
    pub message_id: Uuid,
    pub correlation_id: Option<String>,
    pub payload: Value,
    /// The subject whose next `sequence` an event takes (events about a user or a binding).
    pub subject: Option<Uuid>,
}

super::types::record!(NewOutboxRow as "outbox_record", |r| r.kind, &r.routing_key, r.message_id,
    &r.correlation_id, &r.payload, r.subject);

/// Rows to insert, in the order they were made (their ids ascend in that order).
#[derive(Debug, Default)]
pub struct NewOutbox {
    rows: Vec<NewOutboxRow>,
}

impl NewOutbox {
    pub fn event(&mut self, event: crate::domain::events::OutboundEvent) {
        self.rows.push(NewOutboxRow {
            kind: OutboxKind::Event,
            routing_key: event.kind.as_str().to_owned(),
            message_id: event.id,
            correlation_id: None,
            payload: event.body,
            subject: event.subject.sequenced(),
        });
    }

    pub fn reply(&mut self, reply_to: &str, correlation_id: Option<&str>, body: Value) {
        self.rows.push(NewOutboxRow {
            kind: OutboxKind::Reply,
            routing_key: reply_to.to_owned(),
            message_id: Uuid::now_v7(),
            correlation_id: correlation_id.map(str::to_owned),
            payload: body,
            subject: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows, for a statement that enqueues them (`outbox_enqueue($origin, $rows)`).
    pub fn rows(&self) -> &[NewOutboxRow] {
        &self.rows
    }

    /// The rows as stored, given what the database assigned: ids (ascending, in push order) and
    /// the sequences of sequenced events.
    pub fn stored(self, stored: Vec<Stored>) -> Vec<OutboxRow> {
        let now = Utc::now();
        stored
            .into_iter()
            .zip(self.rows)
            .map(|(stored, row)| {
                let mut payload = row.payload;
                if let Some(sequence) = stored.sequence {
                    payload["sequence"] = Value::String(sequence);
                }
                OutboxRow {
                    id: stored.id,
                    kind: row.kind,
                    routing_key: row.routing_key,
                    message_id: row.message_id,
                    correlation_id: row.correlation_id,
                    payload,
                    created_at: now,
                }
            })
            .collect()
    }
}

/// What the database assigned to an inserted row.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Stored {
    pub id: i64,
    pub sequence: Option<String>,
}

/// Rows get ascending ids in the order they were pushed, and sequenced events the next values of
/// their subjects' sequences (see the `outbox_enqueue` migration); returns them, ready to
/// publish.
pub async fn insert_many(
    conn: &mut PgConnection,
    origin: Uuid,
    rows: NewOutbox,
) -> sqlx::Result<Vec<OutboxRow>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let stored = sqlx::query_scalar!(
        r#"SELECT outbox_enqueue($1, $2::outbox_record[]) AS "stored!: Json<Vec<Stored>>""#,
        origin,
        rows.rows() as _,
    )
    .fetch_one(conn)
    .await?;
    Ok(rows.stored(stored.0))
}

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: OutboxKind,
    pub routing_key: String,
    pub message_id: Uuid,
    pub correlation_id: Option<String>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// Makes rows of this process claimable at once, as if the broker had refused them: for rows
/// committed while the relay's queue is full, which the relay then reads back from the database
/// instead of from memory.
pub async fn leave_to_claims(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE outbox_pending SET next_attempt_at = now() WHERE id = ANY($1)",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks up to `limit` unpublished rows that are due, in id order: this process's rows the broker
/// refused earlier (set aside until `next_attempt_at`; every other row of this process is in its
/// relay's memory), and rows older than `orphan_after_secs` of processes not seen alive for as
/// long (`relay_origins`). Rows locked by another relay are skipped, never waited for.
pub async fn claim(
    conn: &mut PgConnection,
    origin: Uuid,
    orphan_after_secs: f64,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as!(
        OutboxRow,
        r#"SELECT p.id, o.kind AS "kind: OutboxKind", o.routing_key, o.message_id,
                  o.correlation_id, o.payload, o.created_at
           FROM outbox_pending p JOIN outbox o USING (id)
           WHERE (p.next_attempt_at IS NULL OR p.next_attempt_at <= now())
             AND ((p.origin = $1 AND p.next_attempt_at IS NOT NULL)
                  OR (p.origin <> $1 AND p.created_at < now() - make_interval(secs => $2)
                      AND NOT EXISTS (
                        SELECT 1 FROM relay_origins r
                        WHERE r.origin = p.origin
                          AND r.seen_at > now() - make_interval(secs => $2))))
           ORDER BY p.id
           LIMIT $3
           FOR UPDATE OF p SKIP LOCKED"#,
        origin,
        orphan_after_secs,
        limit
    )
    .fetch_all(conn)
    .await
}

/// The write transactions of this program's processes in progress now (their backends' pids
/// and the transactions' start), the relay's own aside: one of them may be a commit whose fate
/// its process could not learn (see `relay`'s uncertain commits).
pub async fn writers_in_progress(pool: &PgPool) -> sqlx::Result<(Vec<i32>, Vec<DateTime<Utc>>)> {
    let row = sqlx::query!(
        r#"SELECT coalesce(array_agg(pid), '{}') AS "pids!",
                  coalesce(array_agg(xact_start), '{}') AS "started!"
           FROM pg_stat_activity
           WHERE application_name LIKE 'identity-sync%' AND backend_xid IS NOT NULL
             AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.pids, row.started))
}

/// How many of the transactions [`writers_in_progress`] returned are still in progress.
pub async fn still_writing(
    pool: &PgPool,
    pids: &[i32],
    started: &[DateTime<Utc>],
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM pg_stat_activity a
           JOIN unnest($1::int4[], $2::timestamptz[]) AS k(pid, started)
             ON a.pid = k.pid AND a.xact_start = k.started
           WHERE a.backend_xid IS NOT NULL"#,
        pids,
        started
    )
    .fetch_one(pool)
    .await
}

/// Which of `ids` are stored and unpublished.
pub async fn unpublished_of(pool: &PgPool, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!("SELECT id FROM outbox_pending WHERE id = ANY($1)", ids)
        .fetch_all(pool)
        .await
}

/// Records that the relay of `origin` is alive; forgets origins not seen for a day.
pub async fn heartbeat(pool: &PgPool, origin: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        r#"WITH forgotten AS (
             DELETE FROM relay_origins WHERE seen_at < now() - interval '1 day')
           INSERT INTO relay_origins (origin, seen_at) VALUES ($1, now())
           ON CONFLICT (origin) DO UPDATE SET seen_at = now()"#,
        origin
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets `origin` (its process stops): rows it left are adopted without waiting.
pub async fn forget_origin(pool: &PgPool, origin: Uuid) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM relay_origins WHERE origin = $1", origin)
        .execute(pool)
        .await?;
    Ok(())
}

/// The outcome of a publish round, by row id.
#[derive(Debug, Default)]
pub struct Settled {
    /// Events the broker took: kept for replay, marked published.
    pub published: Vec<i64>,
    /// Events the broker took with no queue bound for them: marked published and unrouted.
    pub unrouted: Vec<i64>,
    /// Replies delivered (or whose requester left): deleted.
    pub replies: Vec<i64>,
    /// Rows the broker did not take: set aside for a while, 1 s after the first failure,
    /// doubling up to a minute, so that the rows behind them are published meanwhile.
    pub held: Vec<i64>,
}

impl Settled {
    /// Adds what `other` settled.
    pub fn add(&mut self, other: Settled) {
        self.published.extend(other.published);
        self.unrouted.extend(other.unrouted);
        self.replies.extend(other.replies);
        self.held.extend(other.held);
    }

    pub fn done(&self) -> usize {
        self.published.len() + self.unrouted.len() + self.replies.len()
    }
}

/// Records a publish round in one statement: published rows leave `outbox_pending` (events stay
/// in `outbox` for replay, replies go), held rows are set aside. Losing it to a crash only means
/// publishing again (with the same ids), so it may be committed without waiting for the disk. The
/// four id sets are disjoint, so no row is changed twice. The published ids are one array, so
/// that the delete is a single lookup of the primary key (an `OR` of arrays is planned as a
/// scan of the table).
pub async fn settle(conn: &mut PgConnection, settled: &Settled) -> sqlx::Result<()> {
    sqlx::query!(
        r#"WITH published AS (
             DELETE FROM outbox_pending WHERE id = ANY($1::int8[] || $2::int8[] || $3::int8[])),
           unrouted AS (
             UPDATE outbox SET unrouted = true WHERE id = ANY($2)),
           removed AS (
             DELETE FROM outbox WHERE id = ANY($3))
           UPDATE outbox_pending SET attempts = attempts + 1,
                  next_attempt_at = now() + least(make_interval(secs => 2.0 ^ least(attempts, 6)),
                                                  interval '60 seconds')
           WHERE id = ANY($4)"#,
        &settled.published,
        &settled.unrouted,
        &settled.replies,
        &settled.held,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Vacuums `outbox_pending`, which the relay keeps small: every published row leaves a dead row
/// there, and a queue table whose dead rows outnumber its live ones many times over makes every
/// claim, count and delete wade through them. Skipped if another vacuum holds the table. The
/// empty pages at its end are kept (they are filled again within moments): cutting them off takes
/// a lock that holds up every commit inserting into the table. A role
/// that does not own the table gets a warning from the server and nothing is done: the tables'
/// owner is whoever ran the migrations, normally the worker's own role.
pub async fn vacuum_pending(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql("VACUUM (SKIP_LOCKED, TRUNCATE false) outbox_pending")
        .execute(pool)
        .await?;
    Ok(())
}

/// Rows committed but not yet published.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    let row = sqlx::query!(r#"SELECT count(*) AS "count!" FROM outbox_pending"#)
        .fetch_one(pool)
        .await?;
    Ok(row.count)
}

/// Deletes up to `limit` published events created before `before`; returns how many.
pub async fn prune_events(pool: &PgPool, before: DateTime<Utc>, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox o
               WHERE kind = 'event' AND created_at < $1
                 AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.id = o.id)
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                                 WHERE w.outbox_id = o.id AND w.state = 'pending')
               ORDER BY id LIMIT $2)"#,
        before,
        limit
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Stored events for `events replay`, in id order, after `after_id`.
pub async fn events_between(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    event_type: Option<&str>,
    after_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as!(
        OutboxRow,
        r#"SELECT id, kind AS "kind: OutboxKind", routing_key, message_id, correlation_id, payload,
                  created_at
           FROM outbox
           WHERE kind = 'event' AND created_at >= $1 AND created_at < $2
             AND ($3::text IS NULL OR routing_key = $3) AND id > $4
           ORDER BY id LIMIT $5"#,
        since,
        until,
        event_type,
        after_id,
        limit
    )
    .fetch_all(conn)
    .await
}
