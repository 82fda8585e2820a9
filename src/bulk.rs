//! Importing accounts by the hundred thousand: lines are decided a chunk at a time, each chunk in
//! one transaction with a handful of set-based statements: its locks, one read, the rules of
//! `domain::import` line by line, one write. Each line stays all-or-nothing (a bad or
//! conflicting line is reported with its number and leaves nothing behind), and a chunk takes the
//! same advisory locks as the worker's logins, so a login and an import racing on one email still
//! make one account.

use serde_json::Value;
use sqlx::{PgConnection, PgPool, types::Json};
use uuid::Uuid;

use crate::db::{
    self,
    identities::{self, IdentityRecord},
    locks::LockSet,
    users::{self, UserRecord},
};
use crate::domain::effects::Identity;
pub use crate::domain::import::{AheadIdentity, ImportView, ImportWrites, Imported, Line, Refused};

/// Most lines decided per transaction.
pub const CHUNK_LINES: usize = 500;
/// Most advisory locks a chunk takes (about as many as a worker's batch): PostgreSQL keeps them
/// in one shared table (64 per connection by default), beside the worker's.
pub const CHUNK_LOCKS: usize = 1000;

/// Decides and writes `lines` in one transaction; retried from the start on a conflict or a
/// lost connection (then nothing of the failed attempt remains).
pub async fn import_chunk(pool: &PgPool, lines: &[Line]) -> sqlx::Result<Vec<Imported>> {
    let mut delays = crate::retry::delays(std::time::Duration::from_secs(5));
    let mut attempts = 0;
    loop {
        let result = async {
            let mut tx = pool.begin().await?;
            let outcomes = decide_and_write(&mut tx, lines).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await;
        match result {
            Err(e) if db::is_transient(&e) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(delays.next().unwrap_or_default()).await;
            }
            other => return other,
        }
    }
}

/// Decides and writes `lines` in the caller's transaction (the admin API's `POST /v1/users` is a
/// chunk of one line).
pub(crate) async fn decide_and_write(
    conn: &mut PgConnection,
    lines: &[Line],
) -> sqlx::Result<Vec<Imported>> {
    let mut locks = LockSet::new();
    for line in lines {
        let pool = line.record.user_pool_id.as_str();
        if line.explicit_id {
            locks.user(line.record.id);
        }
        locks.record_fields(pool, &line.record);
        for identity in &line.identities {
            locks.identity(pool, identity.connection.as_str(), &identity.external_id);
        }
    }
    locks.acquire(conn).await?;
    let mut view = load(conn, lines).await?;
    let mut writes = ImportWrites::default();
    let outcomes = lines
        .iter()
        .map(|line| view.decide(line, &mut writes))
        .collect();
    write(conn, writes).await?;
    Ok(outcomes)
}

/// What the database has of the accounts, identities and bindings the chunk's lines touch.
async fn load(conn: &mut PgConnection, lines: &[Line]) -> sqlx::Result<ImportView> {
    let mut keys = Keys::default();
    for line in lines {
        keys.add(line);
    }
    let row = sqlx::query!(
        r#"SELECT
                 (SELECT coalesce(jsonb_agg(u), '[]') FROM (
                    SELECT id, user_pool_id, email, email_verified, phone, phone_verified,
                           username, name, protected, attributes,
                           suspended_at IS NOT NULL AS suspended,
                           ARRAY(SELECT i.connection FROM identities i WHERE i.user_id = users.id)
                             AS connections
                    FROM users WHERE id IN (
                      SELECT unnest($1::uuid[])
                      UNION SELECT u.id FROM unnest($2::text[], $3::text[]) AS k(p, v)
                            JOIN users u ON u.user_pool_id = k.p AND u.email = k.v
                      UNION SELECT u.id FROM unnest($4::text[], $5::text[]) AS k(p, v)
                            JOIN users u ON u.user_pool_id = k.p AND u.phone = k.v
                      UNION SELECT u.id FROM unnest($6::text[], $7::text[]) AS k(p, v)
                            JOIN users u ON u.user_pool_id = k.p AND u.username = k.v
                      UNION SELECT a.user_id FROM unnest($8::text[], $9::text[], $10::text[])
                              AS k(p, n, s)
                            JOIN user_attributes a
                              ON a.user_pool_id = k.p AND a.name = k.n AND a.skeleton = k.s
                            WHERE a.is_unique)) u)
                 AS "users!: Json<Vec<StoredUser>>",
                 (SELECT coalesce(jsonb_agg(i), '[]') FROM (
                    SELECT i.user_pool_id, i.connection, i.external_id, i.user_id
                    FROM unnest($11::text[], $12::text[], $13::text[]) AS k(p, c, x)
                    JOIN identities i
                      ON i.user_pool_id = k.p AND i.connection = k.c AND i.external_id = k.x) i)
                 AS "identities!: Json<Vec<StoredIdentity>>",
                 (SELECT coalesce(jsonb_agg(b), '[]') FROM (
                    SELECT b.user_pool_id, b.connection, b.external_id
                    FROM unnest($11::text[], $12::text[], $13::text[]) AS k(p, c, x)
                    JOIN bindings b ON b.external_id = k.x AND b.connection = k.c
                                   AND b.user_pool_id = k.p AND b.status = 'pending') b)
                 AS "pending!: Json<Vec<StoredBinding>>",
                 (SELECT coalesce(jsonb_agg(x), '[]') FROM (
                    SELECT user_pool_id, name FROM unique_attributes
                    WHERE user_pool_id = ANY($14)) x)
                 AS "unique!: Json<Vec<StoredUnique>>",
                 (SELECT coalesce(jsonb_agg(c), '[]') FROM (
                    SELECT DISTINCT user_pool_id, identifier FROM connections
                    WHERE identifier = ANY($12)) c)
                 AS "connections!: Json<Vec<StoredConnection>>""#,
        &keys.ids,
        &keys.email_pools,
        &keys.emails,
        &keys.phone_pools,
        &keys.phones,
        &keys.username_pools,
        &keys.usernames,
        &keys.attribute_pools,
        &keys.attribute_names,
        &keys.attribute_skeletons,
        &keys.identity_pools,
        &keys.identity_connections,
        &keys.identity_external_ids,
        &keys.pools,
    )
    .fetch_one(conn)
    .await?;
    let mut view = ImportView::default();
    for u in row.unique.0 {
        view.add_unique(u.user_pool_id, u.name);
    }
    for c in row.connections.0 {
        view.add_connection(c.identifier, c.user_pool_id);
    }
    for stored in row.users.0 {
        if stored.suspended {
            view.add_suspended(stored.id);
        }
        let (record, connections) = stored.into_record();
        view.add_stored_user(record, connections);
    }
    for i in row.identities.0 {
        let identity = Identity {
            user_pool_id: i.user_pool_id,
            connection: i.connection,
            external_id: i.external_id,
        };
        view.add_identity(identity, i.user_id);
    }
    for b in row.pending.0 {
        view.add_pending(Identity {
            user_pool_id: b.user_pool_id,
            connection: b.connection,
            external_id: b.external_id,
        });
    }
    Ok(view)
}

/// Writes the accepted lines' accounts, then their identities.
async fn write(conn: &mut PgConnection, writes: ImportWrites) -> sqlx::Result<()> {
    users::insert_many(conn, &writes.users).await?;
    let linked: Vec<IdentityRecord> = writes
        .identities
        .into_iter()
        .map(|ahead| IdentityRecord {
            user_pool_id: ahead.identity.user_pool_id,
            connection: ahead.identity.connection,
            external_id: ahead.identity.external_id,
            user_id: ahead.user_id,
            profile: ahead.snapshot,
        })
        .collect();
    identities::insert_many(conn, &linked).await
}

/// The lookups of a chunk, as parallel columns.
#[derive(Default)]
struct Keys {
    ids: Vec<Uuid>,
    email_pools: Vec<String>,
    emails: Vec<String>,
    phone_pools: Vec<String>,
    phones: Vec<String>,
    username_pools: Vec<String>,
    usernames: Vec<String>,
    attribute_pools: Vec<String>,
    attribute_names: Vec<String>,
    /// Their skeletons: a unique attribute's lookalikes are looked up (see `keys_of`).
    attribute_skeletons: Vec<String>,
    identity_pools: Vec<String>,
    identity_connections: Vec<String>,
    identity_external_ids: Vec<String>,
    pools: Vec<String>,
}

impl Keys {
    fn add(&mut self, line: &Line) {
        let r = &line.record;
        let pool = &r.user_pool_id;
        if line.explicit_id {
            self.ids.push(r.id);
        }
        if let Some(email) = &r.email {
            self.email_pools.push(pool.clone());
            self.emails.push(email.as_str().to_owned());
        }
        if let Some(phone) = &r.phone {
            self.phone_pools.push(pool.clone());
            self.phones.push(phone.as_str().to_owned());
        }
        if let Some(username) = &r.username {
            self.username_pools.push(pool.clone());
            self.usernames.push(username.as_str().to_owned());
        }
        for (name, value) in &r.attributes {
            self.attribute_pools.push(pool.clone());
            self.attribute_names.push(name.as_str().to_owned());
            self.attribute_skeletons
                .push(crate::domain::attributes::skeleton(value));
        }
        for identity in &line.identities {
            self.identity_pools.push(pool.clone());
            self.identity_connections
                .push(identity.connection.as_str().to_owned());
            self.identity_external_ids
                .push(identity.external_id.clone());
        }
        if !self.pools.contains(pool) {
            self.pools.push(pool.clone());
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct StoredUser {
    id: Uuid,
    user_pool_id: String,
    email: Option<String>,
    email_verified: bool,
    phone: Option<String>,
    phone_verified: bool,
    username: Option<String>,
    name: Option<String>,
    protected: bool,
    attributes: Value,
    connections: Vec<String>,
    #[serde(default)]
    suspended: bool,
}

impl StoredUser {
    fn into_record(self) -> (UserRecord, std::collections::HashSet<String>) {
        use crate::domain::{Email, Phone, Username};
        let record = UserRecord {
            id: self.id,
            user_pool_id: self.user_pool_id,
            email: self.email.map(Email::from_stored),
            email_verified: self.email_verified,
            phone: self.phone.map(Phone::from_e164),
            phone_verified: self.phone_verified,
            username: self.username.map(Username::from_stored),
            name: self.name,
            protected: self.protected,
            attributes: crate::domain::attributes::from_stored(&self.attributes),
        };
        (record, self.connections.into_iter().collect())
    }
}

#[derive(Debug, serde::Deserialize)]
struct StoredIdentity {
    user_pool_id: String,
    connection: String,
    external_id: String,
    user_id: Uuid,
}

#[derive(Debug, serde::Deserialize)]
struct StoredConnection {
    user_pool_id: String,
    identifier: String,
}

#[derive(Debug, serde::Deserialize)]
struct StoredBinding {
    user_pool_id: String,
    connection: String,
    external_id: String,
}

#[derive(Debug, serde::Deserialize)]
struct StoredUnique {
    user_pool_id: String,
    name: String,
}
