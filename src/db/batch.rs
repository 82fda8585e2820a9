//! The two statements that carry a batch of logins: one reads everything the decisions need, one
//! writes every effect. Round trips, not rows, are what a batch pays for; these keep them to a
//! handful whatever the batch holds.

use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::{
    bindings::{NewBindings, PendingRow},
    identities::{IdentityWrites, LinkRow},
    outbox::{NewOutbox, Stored},
    processed::{NewProcessed, ProcessedRow},
    users::{FieldKeys, MatchRow, NewUsers},
};

/// What the database knows about a batch's events, identities and matching accounts.
pub struct Snapshot {
    pub processed: Vec<ProcessedRow>,
    pub links: Vec<LinkRow>,
    pub pending: Vec<PendingRow>,
    pub users: Vec<MatchRow>,
    /// The unique attributes of the pools the batch's attributes belong to.
    pub unique_attributes: Vec<UniqueAttribute>,
}

/// An attribute unique in a pool.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct UniqueAttribute {
    pub user_pool_id: String,
    pub name: String,
}

/// Dedupe records of the event ids, identities (with the identifiers of their last snapshot)
/// and pending bindings of the external ids, and accounts holding any of the values or linked to
/// one of those identities, in one statement. Each lookup leads with its most
/// selective column; the caller matches whole keys (source, pool, connection).
pub async fn load(
    conn: &mut PgConnection,
    event_ids: &[String],
    external_ids: &[String],
    fields: &FieldKeys,
) -> sqlx::Result<Snapshot> {
    let row = sqlx::query!(
        r#"SELECT
             (SELECT coalesce(jsonb_agg(p), '[]') FROM (
                SELECT source, event_id, outcome, user_id, binding_id, reason
                FROM processed_events WHERE event_id = ANY($1)) p)
               AS "processed!: Json<Vec<ProcessedRow>>",
             (SELECT coalesce(jsonb_agg(i), '[]') FROM (
                SELECT user_pool_id, connection, external_id, user_id,
                       jsonb_build_object(
                         'email', profile->'email', 'email_verified', profile->'email_verified',
                         'phone', profile->'phone', 'phone_verified', profile->'phone_verified',
                         'username', profile->'username') AS snapshot
                FROM identities WHERE external_id = ANY($2)) i)
               AS "links!: Json<Vec<LinkRow>>",
             (SELECT coalesce(jsonb_agg(b), '[]') FROM (
                SELECT id, user_pool_id, connection, external_id, reason, expires_at
                FROM bindings WHERE status = 'pending' AND external_id = ANY($2)) b)
               AS "pending!: Json<Vec<PendingRow>>",
             (SELECT coalesce(jsonb_agg(u), '[]') FROM (
                SELECT u.id, u.user_pool_id, u.email, u.email_verified, u.phone, u.phone_verified,
                       u.username, u.name, u.protected, u.attributes,
                       ARRAY(SELECT i.connection FROM identities i WHERE i.user_id = u.id)
                         AS linked_connections
                FROM users u
                WHERE u.email = ANY($3) OR u.phone = ANY($4) OR u.username = ANY($5)
                   -- An array computed once, so that this too is an index lookup.
                   OR u.id = ANY(ARRAY(
                        SELECT user_id FROM identities WHERE external_id = ANY($2)))
                   -- Attribute values: of unique attributes, or of those the login matches on.
                   OR u.id = ANY(ARRAY(
                        SELECT a.user_id FROM user_attributes a
                        JOIN unnest($6::text[], $7::text[], $8::text[], $9::bool[])
                          AS k(pool, name, value, matched)
                          ON a.user_pool_id = k.pool AND a.name = k.name AND a.value = k.value
                        WHERE a.is_unique OR k.matched))) u)
               AS "users!: Json<Vec<MatchRow>>",
             (SELECT coalesce(jsonb_agg(x), '[]') FROM (
                SELECT user_pool_id, name FROM unique_attributes
                WHERE user_pool_id = ANY($6)) x)
               AS "unique_attributes!: Json<Vec<UniqueAttribute>>""#,
        event_ids,
        external_ids,
        &fields.emails,
        &fields.phones,
        &fields.usernames,
        &fields.attribute_pools,
        &fields.attribute_names,
        &fields.attribute_values,
        &fields.attribute_matched,
    )
    .fetch_one(conn)
    .await?;
    Ok(Snapshot {
        processed: row.processed.0,
        links: row.links.0,
        pending: row.pending.0,
        users: row.users.0,
        unique_attributes: row.unique_attributes.0,
    })
}

/// Every write of a batch but binding expiry.
pub struct BatchWrites<'a> {
    pub origin: Uuid,
    pub users: &'a NewUsers,
    pub new_identities: &'a IdentityWrites,
    /// Identities already stored before this batch (an identity created by the batch carries its
    /// latest profile in `new_identities` instead: one statement cannot update a row it inserts).
    pub touched: &'a IdentityWrites,
    pub bindings: &'a NewBindings,
    pub processed: &'a NewProcessed,
    pub outbox: &'a NewOutbox,
}

/// Writes them in one statement of data-modifying CTEs. Returns what the outbox rows got (ids
/// ascending in the order they were pushed, sequences).
pub async fn write(conn: &mut PgConnection, w: &BatchWrites<'_>) -> sqlx::Result<Vec<Stored>> {
    let kinds: Vec<String> = w
        .outbox
        .kinds
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    let row = sqlx::query!(
        r#"WITH new_users AS (
             INSERT INTO users (id, user_pool_id, email, email_verified, phone, phone_verified, username, name,
                                attributes)
             SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bool[], $6::text[],
                                  $7::bool[], $8::text[], $9::text[], $46::jsonb[])),
           new_identities AS (
             INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
             SELECT * FROM unnest($10::text[], $11::text[], $12::text[], $13::uuid[], $14::jsonb[])),
           touched AS (
             UPDATE identities i SET profile = v.profile, last_login_at = now()
             FROM unnest($15::text[], $16::text[], $17::text[], $18::jsonb[])
                  AS v(pool, connection, external_id, profile)
             WHERE i.external_id = v.external_id AND i.connection = v.connection
               AND i.user_pool_id = v.pool),
           new_bindings AS (
             INSERT INTO bindings (id, user_pool_id, connection, external_id, profile, reason,
                                   candidates, cause_event_id, cause_source, expires_at)
             SELECT b.id, b.pool, b.connection, b.external_id, b.profile, b.reason,
                    ARRAY(SELECT c.candidate FROM unnest($25::int4[], $26::uuid[]) WITH ORDINALITY
                              AS c(owner, candidate, n)
                          WHERE c.owner = b.n - 1 ORDER BY c.n),
                    b.cause_event_id, b.cause_source, b.expires_at
             FROM unnest($19::uuid[], $20::text[], $21::text[], $22::text[], $23::jsonb[],
                         $24::text[], $27::text[], $45::text[], $28::timestamptz[])
                  WITH ORDINALITY AS b(id, pool, connection, external_id, profile, reason,
                                       cause_event_id, cause_source, expires_at, n)),
           processed AS (
             INSERT INTO processed_events (source, event_id, outcome, user_id, binding_id, reason,
                                           user_pool_id, connection, settings_version, evidence,
                                           external_id, profile)
             SELECT * FROM unnest($29::text[], $30::text[], $31::text[], $32::uuid[], $33::uuid[],
                                  $34::text[], $41::text[], $42::text[], $43::int8[],
                                  $44::jsonb[], $47::text[], $48::jsonb[])),
           rows AS (
             SELECT * FROM unnest($35::text[], $36::text[], $37::uuid[], $38::text[], $39::jsonb[],
                                  $40::uuid[])
                  WITH ORDINALITY AS r(kind, routing_key, message_id, correlation_id, payload,
                                       subject, n)),
           -- The next values of the sequences of the events' subjects (see outbox::insert_many).
           sequences AS (
             INSERT INTO event_sequences AS s (subject, last)
             SELECT subject, count(*) FROM rows WHERE subject IS NOT NULL
             GROUP BY subject ORDER BY subject
             ON CONFLICT (subject) DO UPDATE SET last = s.last + EXCLUDED.last
             RETURNING subject, last),
           numbered AS (
             SELECT r.*, q.last - count(*) OVER (PARTITION BY r.subject)
                         + row_number() OVER (PARTITION BY r.subject ORDER BY r.n) AS sequence
             FROM rows r LEFT JOIN sequences q ON q.subject = r.subject),
           queued AS (
             INSERT INTO outbox (origin, kind, routing_key, message_id, correlation_id, payload,
                                 created_at)
             SELECT $1, kind, routing_key, message_id, correlation_id,
                    CASE WHEN sequence IS NULL THEN payload
                         ELSE payload || jsonb_build_object('sequence', lpad(sequence::text, 20, '0'))
                    END,
                    clock_timestamp()
             FROM numbered ORDER BY n
             RETURNING id, created_at, payload->>'sequence' AS sequence),
           -- Every row starts unpublished: its pending row goes when the broker has it.
           pending AS (
             INSERT INTO outbox_pending (id, origin, created_at)
             SELECT id, $1, created_at FROM queued)
           -- Every part runs to completion whether or not it is read.
           SELECT coalesce(jsonb_agg(jsonb_build_object('id', q.id, 'sequence', q.sequence)
                                     ORDER BY q.id), '[]') AS "stored!: Json<Vec<Stored>>"
           FROM queued q"#,
        w.origin,
        &w.users.ids,
        &w.users.pools,
        &w.users.emails as &[Option<String>],
        &w.users.email_verified,
        &w.users.phones as &[Option<String>],
        &w.users.phone_verified,
        &w.users.usernames as &[Option<String>],
        &w.users.names as &[Option<String>],
        &w.new_identities.keys.pools,
        &w.new_identities.keys.connections,
        &w.new_identities.keys.external_ids,
        &w.new_identities.user_ids,
        &w.new_identities.profiles,
        &w.touched.keys.pools,
        &w.touched.keys.connections,
        &w.touched.keys.external_ids,
        &w.touched.profiles,
        &w.bindings.ids,
        &w.bindings.keys.pools,
        &w.bindings.keys.connections,
        &w.bindings.keys.external_ids,
        &w.bindings.profiles,
        &w.bindings.reasons,
        &w.bindings.candidate_owner,
        &w.bindings.candidates,
        &w.bindings.cause_event_ids as &[Option<String>],
        &w.bindings.expires_at,
        &w.processed.sources,
        &w.processed.event_ids,
        &w.processed.outcomes,
        &w.processed.user_ids as &[Option<Uuid>],
        &w.processed.binding_ids as &[Option<Uuid>],
        &w.processed.reasons as &[Option<String>],
        &kinds,
        &w.outbox.routing_keys,
        &w.outbox.message_ids,
        &w.outbox.correlation_ids as &[Option<String>],
        &w.outbox.payloads,
        &w.outbox.sequenced as &[Option<Uuid>],
        &w.processed.pools,
        &w.processed.connections,
        &w.processed.settings_versions,
        &w.processed.evidence,
        &w.bindings.cause_sources as &[Option<String>],
        &w.users.attributes,
        &w.processed.external_ids,
        &w.processed.profiles,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.stored.0)
}
