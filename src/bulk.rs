//! Importing accounts by the hundred thousand: lines are decided a chunk at a time, each chunk in
//! one transaction with a handful of set-based statements, with the rules of one account line by
//! line. Each line stays all-or-nothing (a bad or conflicting line is reported with its
//! number and leaves nothing behind), and a chunk takes the same advisory locks as the worker's
//! logins, so a login and an import racing on one email still make one account.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, types::Json};
use uuid::Uuid;

use crate::db::{
    self,
    locks::LockSet,
    users::{NewUsers, UserRecord},
};
use crate::domain::connection::ConnectionId;

/// Most lines decided per transaction.
pub const CHUNK_LINES: usize = 500;
/// Most advisory locks a chunk takes (about as many as a worker's batch): PostgreSQL keeps them
/// in one shared table (64 per connection by default), beside the worker's.
pub const CHUNK_LOCKS: usize = 1000;

impl Line {
    /// The advisory locks deciding this line takes.
    pub fn locks(&self) -> usize {
        let r = &self.record;
        usize::from(self.explicit_id)
            + usize::from(r.email.is_some())
            + usize::from(r.phone.is_some())
            + usize::from(r.username.is_some())
            + r.attributes.len()
            + usize::from(!r.attributes.is_empty())
            + self.identities.len()
    }
}

/// An identity linked ahead of its first login: (connection, external id) in the account's pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AheadIdentity {
    pub connection: ConnectionId,
    pub external_id: String,
}

/// One readable line of the file: its number, the account it describes, and its identities.
#[derive(Debug, Clone)]
pub struct Line {
    pub number: u64,
    pub record: UserRecord,
    /// The line named the account's id (then a different account with that id is a conflict).
    pub explicit_id: bool,
    pub identities: Vec<AheadIdentity>,
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new account, `user_id`, with `identities` identities linked.
    Added { user_id: Uuid, identities: usize },
    /// The account `user_id` was there already; `identities` of the line's identities were
    /// linked now.
    Unchanged { user_id: Uuid, identities: usize },
    /// Nothing was written for the line: why.
    Failed(Refused),
}

/// Why a line was refused: a stable code (the admin API's error code) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// `id_taken`, `id_required`, `field_taken`, `identity_taken`, `identity_pending` or
    /// `invalid_field`.
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// The accounts, identities and bindings a chunk touches, as the database has them after its
/// locks, updated in memory as the chunk's lines are accepted one after another.
#[derive(Default)]
struct View {
    users: HashMap<Uuid, UserRecord>,
    /// (pool, field, value) -> the account holding it; field is `email`, `phone`, `username` or
    /// `attributes.<name>` (unique attributes only).
    values: HashMap<(String, String, String), Uuid>,
    identities: HashMap<(String, String, String), Uuid>,
    /// The connections each account holds an identity of.
    connections: HashMap<Uuid, HashSet<String>>,
    pending: HashSet<(String, String, String)>,
    unique: HashSet<(String, String)>,
    /// Accounts this chunk added (an earlier line of the chunk may link more identities to one).
    created: HashSet<Uuid>,
}

/// What a chunk writes.
#[derive(Default)]
struct Writes {
    users: NewUsers,
    identity_pools: Vec<String>,
    identity_connections: Vec<String>,
    identity_external_ids: Vec<String>,
    identity_users: Vec<Uuid>,
    identity_profiles: Vec<Value>,
}

/// Decides and writes `lines` in one transaction; retried from the start on a conflict or a
/// lost connection (then nothing of the failed attempt remains).
pub async fn import_chunk(pool: &PgPool, lines: &[Line]) -> sqlx::Result<Vec<Outcome>> {
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
) -> sqlx::Result<Vec<Outcome>> {
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
    let mut view = View::load(conn, lines).await?;
    let mut writes = Writes::default();
    let outcomes = lines
        .iter()
        .map(|line| view.decide(line, &mut writes))
        .collect();
    writes.flush(conn).await?;
    Ok(outcomes)
}

impl View {
    async fn load(conn: &mut PgConnection, lines: &[Line]) -> sqlx::Result<Self> {
        let mut keys = Keys::default();
        for line in lines {
            keys.add(line);
        }
        let row = sqlx::query!(
            r#"SELECT
                 (SELECT coalesce(jsonb_agg(u), '[]') FROM (
                    SELECT id, user_pool_id, email, email_verified, phone, phone_verified,
                           username, name, protected, attributes,
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
                              AS k(p, n, v)
                            JOIN user_attributes a
                              ON a.user_pool_id = k.p AND a.name = k.n AND a.value = k.v
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
                 AS "unique!: Json<Vec<StoredUnique>>""#,
            &keys.ids,
            &keys.email_pools,
            &keys.emails,
            &keys.phone_pools,
            &keys.phones,
            &keys.username_pools,
            &keys.usernames,
            &keys.attribute_pools,
            &keys.attribute_names,
            &keys.attribute_values,
            &keys.identity_pools,
            &keys.identity_connections,
            &keys.identity_external_ids,
            &keys.pools,
        )
        .fetch_one(conn)
        .await?;
        let mut view = Self::default();
        for u in row.unique.0 {
            view.unique.insert((u.user_pool_id, u.name));
        }
        for stored in row.users.0 {
            let (record, connections) = stored.into_record();
            view.connections.insert(record.id, connections);
            view.add_user(record);
        }
        for i in row.identities.0 {
            view.identities
                .insert((i.user_pool_id, i.connection, i.external_id), i.user_id);
        }
        for b in row.pending.0 {
            view.pending
                .insert((b.user_pool_id, b.connection, b.external_id));
        }
        Ok(view)
    }

    /// The values `record` holds, as (pool, field, value) keys; attributes only where unique in
    /// the pool.
    fn keys_of(&self, record: &UserRecord) -> Vec<(String, String, String)> {
        let pool = &record.user_pool_id;
        let mut keys = Vec::new();
        let mut push = |field: &str, value: Option<&str>| {
            if let Some(value) = value {
                keys.push((pool.clone(), field.to_owned(), value.to_owned()));
            }
        };
        push("email", record.email.as_ref().map(|e| e.as_str()));
        push("phone", record.phone.as_ref().map(|p| p.as_str()));
        push("username", record.username.as_ref().map(|u| u.as_str()));
        for (name, value) in &record.attributes {
            if self
                .unique
                .contains(&(pool.clone(), name.as_str().to_owned()))
            {
                push(&format!("attributes.{name}"), Some(value));
            }
        }
        keys
    }

    fn add_user(&mut self, record: UserRecord) {
        for key in self.keys_of(&record) {
            self.values.insert(key, record.id);
        }
        self.users.insert(record.id, record);
    }

    /// The line's outcome, its effects added to `writes` and to the view when it is accepted.
    fn decide(&mut self, line: &Line, writes: &mut Writes) -> Outcome {
        let (target, added) = match self.account_of(line) {
            Ok(found) => found,
            Err(reason) => return Outcome::Failed(reason),
        };
        let identities = match self.identities_to_link(line, target) {
            Ok(identities) => identities,
            Err(reason) => return Outcome::Failed(reason),
        };
        // An account found by its values alone (no id on the line) gets no new identity: equal
        // values are not proof enough that the identity is that account's.
        if !added && !line.explicit_id && !identities.is_empty() && !self.created.contains(&target)
        {
            return Outcome::Failed(refused(
                "id_required",
                format!(
                    "user {target} exists: name it by its id to link identities to it (users \
                     export writes the ids)"
                ),
            ));
        }
        let pool = line.record.user_pool_id.clone();
        if added {
            let record = UserRecord {
                id: target,
                ..line.record.clone()
            };
            writes.users.push(&record);
            self.created.insert(record.id);
            self.add_user(record);
        }
        if !identities.is_empty() {
            let snapshot = snapshot_of(&self.users[&target]);
            for identity in &identities {
                let connection = identity.connection.as_str().to_owned();
                self.identities.insert(
                    (
                        pool.clone(),
                        connection.clone(),
                        identity.external_id.clone(),
                    ),
                    target,
                );
                self.connections
                    .entry(target)
                    .or_default()
                    .insert(connection.clone());
                writes.identity_pools.push(pool.clone());
                writes.identity_connections.push(connection);
                writes
                    .identity_external_ids
                    .push(identity.external_id.clone());
                writes.identity_users.push(target);
                writes.identity_profiles.push(snapshot.clone());
            }
        }
        let identities = identities.len();
        if added {
            Outcome::Added {
                user_id: target,
                identities,
            }
        } else {
            Outcome::Unchanged {
                user_id: target,
                identities,
            }
        }
    }

    /// The account the line is about, and whether it is new: an identical account is the line's
    /// (unless the line names another id); a value held by another account refuses the line.
    fn account_of(&self, line: &Line) -> Result<(Uuid, bool), Refused> {
        let record = &line.record;
        if line.explicit_id
            && let Some(existing) = self.users.get(&record.id)
        {
            return if existing == record {
                Ok((record.id, false))
            } else {
                Err(refused(
                    "id_taken",
                    format!("user id {} already exists with other fields", record.id),
                ))
            };
        }
        let keys = self.keys_of(record);
        let mut holders: Vec<Uuid> = keys
            .iter()
            .filter_map(|k| self.values.get(k).copied())
            .collect();
        holders.sort_unstable();
        holders.dedup();
        if let [holder] = holders.as_slice() {
            let same = UserRecord {
                id: *holder,
                ..record.clone()
            } == self.users[holder];
            if same && !line.explicit_id {
                return Ok((*holder, false));
            }
        }
        let taken: Vec<String> = keys
            .iter()
            .filter_map(|key| {
                let holder = self.values.get(key)?;
                (*holder != record.id).then(|| format!("{} is held by user {holder}", key.1))
            })
            .collect();
        if taken.is_empty() {
            Ok((record.id, true))
        } else {
            Err(refused("field_taken", taken.join("; ")))
        }
    }

    /// The line's identities not linked yet; an error when one cannot be linked to `target`.
    fn identities_to_link(&self, line: &Line, target: Uuid) -> Result<Vec<AheadIdentity>, Refused> {
        let pool = &line.record.user_pool_id;
        let held = self.connections.get(&target);
        let mut link = Vec::new();
        let mut seen = HashSet::new();
        for identity in &line.identities {
            let connection = identity.connection.as_str();
            let key = (
                pool.clone(),
                connection.to_owned(),
                identity.external_id.clone(),
            );
            let named = format!("identity {connection}/{}", identity.external_id);
            if !seen.insert(connection) {
                return Err(refused(
                    "invalid_field",
                    format!(
                        "two identities of connection {connection}: an account holds one per \
                         connection"
                    ),
                ));
            }
            match self.identities.get(&key) {
                Some(owner) if *owner == target => continue,
                Some(owner) => {
                    return Err(refused(
                        "identity_taken",
                        format!("{named} is linked to user {owner}"),
                    ));
                }
                None => {}
            }
            if self.pending.contains(&key) {
                return Err(refused(
                    "identity_pending",
                    format!("{named} has a pending binding: resolve it before linking it ahead"),
                ));
            }
            if held.is_some_and(|c| c.contains(connection)) {
                return Err(refused(
                    "identity_taken",
                    format!(
                        "{named}: user {target} already holds an identity of connection \
                         {connection}"
                    ),
                ));
            }
            link.push(identity.clone());
        }
        Ok(link)
    }
}

/// The snapshot an identity linked ahead starts with: the account's own identifiers, so that its
/// first login reports as changed only what differs from them.
fn snapshot_of(user: &UserRecord) -> Value {
    json!({
        "email": user.email.as_ref().map(|e| e.as_str()),
        "email_verified": user.email_verified,
        "phone": user.phone.as_ref().map(|p| p.as_str()),
        "phone_verified": user.phone_verified,
        "username": user.username.as_ref().map(|u| u.as_str()),
    })
}

impl Writes {
    async fn flush(self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let users = &self.users;
        sqlx::query!(
            r#"WITH new_users AS (
                 INSERT INTO users (id, user_pool_id, email, email_verified, phone,
                                    phone_verified, username, name, attributes, protected)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::text[],
                                      $6::bool[], $7::text[], $8::text[], $9::jsonb[],
                                      $10::bool[]))
               INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
               SELECT * FROM unnest($11::text[], $12::text[], $13::text[], $14::uuid[],
                                    $15::jsonb[])"#,
            &users.ids,
            &users.pools,
            &users.emails as &[Option<String>],
            &users.email_verified,
            &users.phones as &[Option<String>],
            &users.phone_verified,
            &users.usernames as &[Option<String>],
            &users.names as &[Option<String>],
            &users.attributes,
            &users.protected,
            &self.identity_pools,
            &self.identity_connections,
            &self.identity_external_ids,
            &self.identity_users,
            &self.identity_profiles,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
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
    attribute_values: Vec<String>,
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
            self.attribute_values.push(value.clone());
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
}

impl StoredUser {
    fn into_record(self) -> (UserRecord, HashSet<String>) {
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
