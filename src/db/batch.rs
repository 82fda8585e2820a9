//! The two statements that carry a batch of logins: one reads everything the decisions need, one
//! writes every effect. Round trips, not rows, are what a batch pays for; these keep them to a
//! handful whatever the batch holds.

use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::{
    bindings::{BindingRecord, PendingRow},
    identities::{IdentityRecord, LinkRow},
    outbox::{NewOutboxRow, Stored},
    processed::{ProcessedRecord, ProcessedRow},
    users::{FieldKeys, MatchRow, UserRecord},
};

/// What the database knows about a batch's events, identities and matching accounts.
pub struct BatchRead {
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
) -> sqlx::Result<BatchRead> {
    let row = sqlx::query!(
        r#"WITH ids AS MATERIALIZED (
             -- The batch's identities, read once: their snapshots, and their accounts below.
             SELECT user_pool_id, connection, external_id, user_id, profile
             FROM identities WHERE external_id = ANY($2))
           SELECT
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
                FROM ids) i)
               AS "links!: Json<Vec<LinkRow>>",
             (SELECT coalesce(jsonb_agg(b), '[]') FROM (
                SELECT id, user_pool_id, connection, external_id, reason, expires_at
                FROM bindings WHERE status = 'pending' AND external_id = ANY($2)) b)
               AS "pending!: Json<Vec<PendingRow>>",
             (SELECT coalesce(jsonb_agg(u), '[]') FROM (
                SELECT u.id, u.user_pool_id, u.email, u.email_verified, u.phone, u.phone_verified,
                       u.username, u.name, u.protected, u.attributes,
                       u.suspended_at IS NOT NULL AS suspended,
                       ARRAY(SELECT i.connection FROM identities i WHERE i.user_id = u.id)
                         AS linked_connections
                FROM users u
                WHERE u.email = ANY($3) OR u.phone = ANY($4) OR u.username = ANY($5)
                   -- An array computed once, so that this too is an index lookup.
                   OR u.id = ANY(ARRAY(SELECT user_id FROM ids))
                   -- Attribute values: of unique attributes, or of those the login matches on.
                   OR u.id = ANY(ARRAY(
                        SELECT a.user_id FROM user_attributes a
                        JOIN unnest($6::text[], $7::text[], $8::text[], $9::bool[])
                          AS k(pool, name, value, matched)
                          ON a.user_pool_id = k.pool AND a.name = k.name AND a.value = k.value
                        WHERE a.is_unique OR k.matched))
                   -- Lookalikes of a unique attribute's value: the same skeleton.
                   OR u.id = ANY(ARRAY(
                        SELECT a.user_id FROM user_attributes a
                        JOIN unnest($6::text[], $7::text[], $10::text[]) AS k(pool, name, skeleton)
                          ON a.user_pool_id = k.pool AND a.name = k.name
                         AND a.skeleton = k.skeleton
                        WHERE a.is_unique))) u)
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
        &fields.attribute_skeletons,
    )
    .fetch_one(conn)
    .await?;
    Ok(BatchRead {
        processed: row.processed.0,
        links: row.links.0,
        pending: row.pending.0,
        users: row.users.0,
        unique_attributes: row.unique_attributes.0,
    })
}

/// Every write of a batch but binding expiry and account updates, as typed records.
pub struct BatchWrites<'a> {
    pub origin: Uuid,
    pub users: &'a [UserRecord],
    pub new_identities: &'a [IdentityRecord],
    /// Identities already stored before this batch (an identity created by the batch carries its
    /// latest profile in `new_identities` instead: one statement cannot update a row it inserts).
    pub touched: &'a [IdentityRecord],
    pub bindings: &'a [BindingRecord],
    pub processed: &'a [ProcessedRecord],
    pub outbox: &'a [NewOutboxRow],
}

/// Writes them in one statement of data-modifying CTEs, each reading its table's records (one
/// array of the table's record type each, its fields named by the type). Returns
/// what the outbox rows got (ids ascending in the order they were pushed, sequences).
pub async fn write(conn: &mut PgConnection, w: &BatchWrites<'_>) -> sqlx::Result<Vec<Stored>> {
    let row = sqlx::query!(
        r#"WITH new_users AS (
             INSERT INTO users (id, user_pool_id, email, email_verified, phone, phone_verified,
                                username, name, attributes, protected)
             SELECT id, user_pool_id, email, email_verified, phone, phone_verified, username,
                    name, attributes, protected
             FROM unnest($2::user_record[])),
           new_identities AS (
             INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
             SELECT user_pool_id, connection, external_id, user_id, profile
             FROM unnest($3::identity_record[])),
           touched_records AS (
             SELECT * FROM unnest($4::identity_record[])),
           touched AS (
             UPDATE identities i SET profile = v.profile, last_login_at = now()
             FROM touched_records v
             -- An array computed once makes the identities an index lookup: a set-returning
             -- function is estimated at 100 rows, which would make a mid-sized table a scan.
             WHERE i.external_id = ANY(ARRAY(SELECT external_id FROM touched_records))
               AND i.external_id = v.external_id AND i.connection = v.connection
               AND i.user_pool_id = v.user_pool_id),
           new_bindings AS (
             INSERT INTO bindings (id, user_pool_id, connection, external_id, profile, reason,
                                   candidates, cause_event_id, cause_source, expires_at)
             SELECT id, user_pool_id, connection, external_id, profile, reason, candidates,
                    cause_event_id, cause_source, expires_at
             FROM unnest($5::binding_record[])),
           processed AS (
             INSERT INTO processed_events (source, event_id, outcome, user_id, binding_id, reason,
                                           user_pool_id, connection, settings_version, evidence,
                                           external_id, profile)
             SELECT source, event_id, outcome, user_id, binding_id, reason, user_pool_id,
                    connection, settings_version, evidence, external_id, profile
             FROM unnest($6::processed_record[]))
           -- Every data-modifying part runs to completion whether or not it is read; the outbox
           -- rows go in by the one way into the outbox.
           SELECT outbox_enqueue($1, $7::outbox_record[]) AS "stored!: Json<Vec<Stored>>""#,
        w.origin,
        w.users as _,
        w.new_identities as _,
        w.touched as _,
        w.bindings as _,
        w.processed as _,
        w.outbox as _,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.stored.0)
}
