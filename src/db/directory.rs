//! `directory_records`: what a connection's directory said about a person, kept for its
//! `cache_ttl`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgPool, types::Json};

use crate::domain::login::LoginEvent;

/// Whom a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub user_pool_id: String,
    pub connection: String,
    pub external_id: String,
}

impl Key {
    pub fn of(event: &LoginEvent) -> Self {
        Self {
            user_pool_id: event.user_pool_id.as_str().to_owned(),
            connection: event.connection.as_str().to_owned(),
            external_id: event.external_id.clone(),
        }
    }
}

/// A source's record of a person.
pub type Record = Map<String, Value>;

/// An answer to keep: whom it is about, what it was asked of, the record (`None`: nobody).
#[derive(Debug, Clone)]
pub struct Answer {
    pub key: Key,
    pub asked: String,
    pub record: Option<Record>,
}

/// A kept answer: the record, or `None` when the directory did not know the person.
#[derive(Debug, Clone)]
pub struct Cached {
    /// What it was asked of (the directory's kind, base, app and id field).
    pub asked: String,
    pub record: Option<Map<String, Value>>,
    pub fetched_at: DateTime<Utc>,
}

/// The kept answers about `keys`, however old.
pub async fn cached(pool: &PgPool, keys: &[Key]) -> sqlx::Result<HashMap<Key, Cached>> {
    let (pools, (connections, ids)): (Vec<&str>, (Vec<&str>, Vec<&str>)) = keys
        .iter()
        .map(|k| {
            (
                k.user_pool_id.as_str(),
                (k.connection.as_str(), k.external_id.as_str()),
            )
        })
        .unzip();
    let rows = sqlx::query!(
        r#"SELECT d.user_pool_id, d.connection, d.external_id, d.asked,
                  d.record AS "record: Json<Map<String, Value>>", d.fetched_at
           FROM unnest($1::text[], $2::text[], $3::text[]) AS k(user_pool_id, connection, external_id)
           JOIN directory_records d USING (user_pool_id, connection, external_id)"#,
        &pools as &[&str],
        &connections as &[&str],
        &ids as &[&str],
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                Key {
                    user_pool_id: row.user_pool_id,
                    connection: row.connection,
                    external_id: row.external_id,
                },
                Cached {
                    asked: row.asked,
                    record: row.record.map(|r| r.0),
                    fetched_at: row.fetched_at,
                },
            )
        })
        .collect())
}

/// Keeps fresh answers (whom, what they were asked of, the record), replacing older ones; in
/// key order, so that two workers storing the same people never wait for each other in turn.
pub async fn store(pool: &PgPool, answers: &[Answer]) -> sqlx::Result<()> {
    if answers.is_empty() {
        return Ok(());
    }
    // One row per person: a statement cannot update a row twice.
    let answers: std::collections::BTreeMap<&Key, &Answer> =
        answers.iter().map(|a| (&a.key, a)).collect();
    let mut pools = Vec::with_capacity(answers.len());
    let mut connections = Vec::with_capacity(answers.len());
    let mut ids = Vec::with_capacity(answers.len());
    let mut asked = Vec::with_capacity(answers.len());
    let mut records = Vec::with_capacity(answers.len());
    for (key, answer) in answers {
        pools.push(key.user_pool_id.as_str());
        connections.push(key.connection.as_str());
        ids.push(key.external_id.as_str());
        asked.push(answer.asked.as_str());
        records.push(answer.record.as_ref().map(|r| Value::Object(r.clone())));
    }
    sqlx::query!(
        r#"INSERT INTO directory_records (user_pool_id, connection, external_id, asked, record)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
           ON CONFLICT (user_pool_id, connection, external_id)
           DO UPDATE SET asked = EXCLUDED.asked, record = EXCLUDED.record, fetched_at = now()"#,
        &pools as &[&str],
        &connections as &[&str],
        &ids as &[&str],
        &asked as &[&str],
        &records as &[Option<Value>],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets what was kept about a connection's people (its directory changed or was removed).
pub async fn forget(
    conn: &mut sqlx::PgConnection,
    user_pool_id: &str,
    connection: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM directory_records WHERE user_pool_id = $1 AND connection = $2",
        user_pool_id,
        connection
    )
    .execute(conn)
    .await?;
    Ok(())
}
