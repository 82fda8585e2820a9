//! `identity-sync verify`: checks, over the whole database, every invariant the contract promises
//! and prints each violation (in the manner of kanidm's plugin `verify` passes). Read-only (one
//! read-only transaction) and bounded (a statement timeout; the per-row checks stream), so that
//! it can run on a live database; the integration and fault tests run it at their end.

use std::time::Duration;

use futures_lite::StreamExt;
use sqlx::{PgConnection, PgPool};

use crate::domain::{Email, Username};

/// Longest any one check may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Violations of one kind reported at most.
const MAX_REPORTED: i64 = 100;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant, e.g. `pending binding of a linked identity`.
    pub invariant: &'static str,
    /// What breaks it (ids only, never personal data).
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// How long the relay may take before an unpublished row is a violation.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Rows of stopped processes are adopted after this.
    pub orphan_after: Duration,
    /// Published events are kept this long (older ones may have been pruned).
    pub retention: Duration,
}

/// Runs every check; returns the violations found.
pub async fn verify(pool: &PgPool, bounds: Bounds) -> sqlx::Result<Vec<Violation>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {}",
        STATEMENT_TIMEOUT.as_millis()
    )))
    .execute(&mut *tx)
    .await?;
    let mut found = Vec::new();
    for check in CHECKS {
        // Every check sees the same three parameters, whether it uses them or not.
        let sql = format!(
            "SELECT detail FROM ({}) AS v(detail)
             WHERE $2::float8 IS NOT NULL AND $3::float8 IS NOT NULL LIMIT $1",
            check.sql
        );
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(MAX_REPORTED)
            .bind(bounds.orphan_after.as_secs_f64())
            .bind(bounds.retention.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?;
        found.extend(rows.into_iter().map(|(detail,)| Violation {
            invariant: check.invariant,
            detail,
        }));
    }
    found.extend(canonical_values(&mut tx).await?);
    found.extend(lookalike_origins(&mut tx).await?);
    tx.rollback().await?;
    Ok(found)
}

struct Check {
    invariant: &'static str,
    /// One text column per violation; it may use `$2` (the orphan age in seconds) and `$3` (the
    /// retention in seconds).
    sql: &'static str,
}

const CHECKS: &[Check] = &[
    Check {
        invariant: "a suspended account holds a link made after its suspension",
        sql: "SELECT 'user ' || u.id || ' ' || i.connection
              FROM users u JOIN identities i ON i.user_id = u.id
              WHERE u.suspended_at IS NOT NULL AND i.created_at > u.suspended_at",
    },
    Check {
        invariant: "a user holds two identities of one connection",
        sql: "SELECT user_id::text || ' ' || connection FROM identities
              GROUP BY user_id, connection HAVING count(*) > 1",
    },
    Check {
        invariant: "an identity of a user of another pool",
        sql: "SELECT i.user_pool_id || '/' || i.connection || ' of user ' || u.id
              FROM identities i JOIN users u ON u.id = i.user_id
              WHERE i.user_pool_id <> u.user_pool_id",
    },
    Check {
        invariant: "two users of one pool share a normalised field",
        sql: "SELECT field || ' of users ' || string_agg(id::text, ', ') FROM (
                SELECT 'email' AS field, id, user_pool_id, email AS value FROM users WHERE email IS NOT NULL
                UNION ALL SELECT 'phone', id, user_pool_id, phone FROM users WHERE phone IS NOT NULL
                UNION ALL SELECT 'username', id, user_pool_id, username FROM users WHERE username IS NOT NULL
              ) v
              GROUP BY field, user_pool_id, value HAVING count(*) > 1",
    },
    Check {
        invariant: "two users of one pool share a value of a unique attribute, or lookalikes",
        sql: "SELECT 'attributes.' || a.name || ' of users ' || string_agg(a.user_id::text, ', ')
              FROM user_attributes a
              JOIN unique_attributes u ON u.user_pool_id = a.user_pool_id AND u.name = a.name
              GROUP BY a.user_pool_id, a.name, attribute_skeleton(a.value) HAVING count(*) > 1",
    },
    Check {
        invariant: "an account's attribute index out of step with its attributes",
        sql: "WITH expected AS (
                SELECT u.id, u.user_pool_id, e.key AS name, e.value,
                       EXISTS (SELECT 1 FROM unique_attributes x
                               WHERE x.user_pool_id = u.user_pool_id AND x.name = e.key) AS is_unique,
                       attribute_skeleton(e.value) AS skeleton
                FROM users u, jsonb_each_text(u.attributes) e),
              actual AS (
                SELECT user_id, user_pool_id, name, value, is_unique, skeleton FROM user_attributes)
              SELECT DISTINCT 'user ' || id::text FROM (
                (SELECT * FROM expected EXCEPT SELECT * FROM actual)
                UNION ALL
                (SELECT * FROM actual EXCEPT SELECT * FROM expected)) d",
    },
    Check {
        invariant: "an identity of a connection that belongs to another pool",
        sql: "SELECT i.user_pool_id || '/' || i.connection || ' of user ' || i.user_id
              FROM identities i
              WHERE NOT EXISTS (SELECT 1 FROM connections c
                                WHERE c.user_pool_id = i.user_pool_id
                                  AND c.identifier = i.connection)
                AND EXISTS (SELECT 1 FROM connections c
                            WHERE c.identifier = i.connection
                              AND c.user_pool_id <> i.user_pool_id)",
    },
    Check {
        invariant: "a pending binding for an identity that is linked",
        sql: "SELECT 'binding ' || b.id FROM bindings b
              JOIN identities i ON i.external_id = b.external_id AND i.connection = b.connection
                               AND i.user_pool_id = b.user_pool_id
              WHERE b.status = 'pending'",
    },
    Check {
        invariant: "two pending bindings for one identity",
        sql: "SELECT user_pool_id || '/' || connection || ' has ' || count(*) FROM bindings
              WHERE status = 'pending'
              GROUP BY user_pool_id, connection, external_id HAVING count(*) > 1",
    },
    Check {
        invariant: "a processed login without the event its outcome publishes",
        sql: "SELECT 'event ' || p.event_id || ' (' || p.outcome || ')' FROM processed_events p
              WHERE p.outcome IN ('user_created', 'user_linked', 'rejected')
                AND p.processed_at > now() - make_interval(secs => $3)
                AND NOT EXISTS (
                  SELECT 1 FROM outbox o
                  WHERE o.kind = 'event'
                    AND o.routing_key = CASE p.outcome WHEN 'user_created' THEN 'user.created'
                                                       WHEN 'user_linked' THEN 'user.linked'
                                                       ELSE 'login.rejected' END
                    AND o.payload -> 'data' ->> 'cause_event_id' = p.event_id)",
    },
    Check {
        invariant: "a processed login naming a user or binding that does not exist",
        sql: "SELECT 'event ' || p.event_id FROM processed_events p
              WHERE ((p.user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p.user_id)
                      AND p.outcome <> 'existing_user')
                  OR (p.binding_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.id = p.binding_id)))",
    },
    Check {
        invariant: "an outbox row left unpublished past the relay's bounds",
        sql: "SELECT 'outbox row ' || p.id || ' (' || o.routing_key || ', ' ||
                     extract(epoch FROM now() - p.created_at)::int || ' s old)'
              FROM outbox_pending p JOIN outbox o USING (id)
              WHERE p.created_at < now() - make_interval(secs => 2 * $2 + 60)
                AND (p.next_attempt_at IS NULL
                     OR p.next_attempt_at < now() - interval '60 seconds')",
    },
    Check {
        invariant: "a subject's sequence behind its events",
        sql: "SELECT 'subject ' || s.subject FROM event_sequences s
              JOIN (SELECT payload ->> 'subject' AS subject,
                           max((payload ->> 'sequence')::bigint) AS last
                    FROM outbox WHERE kind = 'event' AND payload ? 'sequence'
                    GROUP BY 1) o ON o.subject = s.subject::text
              WHERE o.last > s.last",
    },
];

/// Stored emails and usernames must be in canonical form, or logins could not find them.
async fn canonical_values(conn: &mut PgConnection) -> sqlx::Result<Vec<Violation>> {
    let mut found = Vec::new();
    let mut rows = sqlx::query_as::<_, (uuid::Uuid, Option<String>, Option<String>)>(
        "SELECT id, email, username FROM users",
    )
    .fetch(&mut *conn);
    while let Some(row) = rows.next().await {
        let (id, email, username) = row?;
        let canonical_email = email
            .as_deref()
            .is_none_or(|e| Email::parse(e).is_ok_and(|c| c.as_str() == e));
        let canonical_username = username
            .as_deref()
            .is_none_or(|u| Username::parse(u).is_ok_and(|c| c.as_str() == u));
        for (ok, field) in [(canonical_email, "email"), (canonical_username, "username")] {
            if !ok && found.len() < MAX_REPORTED as usize {
                found.push(Violation {
                    invariant: "a stored value not in canonical form",
                    detail: format!("{field} of user {id}"),
                });
            }
        }
    }
    Ok(found)
}

/// An account whose email or username is the canonical form of a lookalike that one of its own
/// identities carried: it was created (before the safety rules) from a value that passes for
/// someone else's, and a login of that someone would now link to it.
async fn lookalike_origins(conn: &mut PgConnection) -> sqlx::Result<Vec<Violation>> {
    let mut found = Vec::new();
    let mut rows = sqlx::query_as::<
        _,
        (
            uuid::Uuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ),
    >(
        "SELECT u.id, u.email, u.username, i.profile ->> 'email', i.profile ->> 'username'
         FROM identities i JOIN users u ON u.id = i.user_id
         WHERE (u.email IS NOT NULL AND i.profile ? 'email')
            OR (u.username IS NOT NULL AND i.profile ? 'username')",
    )
    .fetch(&mut *conn);
    while let Some(row) = rows.next().await {
        let (id, email, username, raw_email, raw_username) = row?;
        let email_from_lookalike = matches!(
            (email.as_deref(), raw_email.as_deref().map(Email::parse_checked)),
            (Some(stored), Some(Ok((canonical, true)))) if canonical.as_str() == stored
        );
        let username_from_lookalike = matches!(
            (username.as_deref(), raw_username.as_deref().map(Username::parse_checked)),
            (Some(stored), Some(Ok((canonical, true)))) if canonical.as_str() == stored
        );
        for (bad, field) in [
            (email_from_lookalike, "email"),
            (username_from_lookalike, "username"),
        ] {
            if bad && found.len() < MAX_REPORTED as usize {
                found.push(Violation {
                    invariant: "an account holding the canonical form of a lookalike",
                    detail: format!("{field} of user {id}"),
                });
            }
        }
    }
    Ok(found)
}
