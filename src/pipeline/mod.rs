//! The application core: decides a batch of login events in one database transaction. It loads
//! what the decision needs in a few set-based queries, decides each event in order against an
//! in-memory view of the batch, and writes every effect (users, identities, bindings, dedupe
//! records, outbox rows) in a few more. Broker concerns stay with the caller.

mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, pool::PoolConnection};
use uuid::Uuid;

use crate::db::{
    batch::{self, BatchWrites},
    bindings::{self, NewBindings},
    connections,
    identities::{IdentityKeys, IdentityWrites},
    locks::LockSet,
    outbox::{NewOutbox, OutboxRow},
    processed::NewProcessed,
    users::{FieldKeys, NewUsers, ProfileUpdates, UserRecord},
};
use crate::domain::{
    ConnectionSettings, decision,
    effects::{self, Effect, Identity},
    events::Reply,
    login::{LoginEvent, NormalizedFields, Rejection, RejectionKind},
};
use crate::relay::Handoff;
use state::{BatchState, IdentityKey, identity_key};

/// One message (a login by default), decoded and validated, with where its reply goes.
#[derive(Debug, Clone)]
pub struct Inbound<M = LoginEvent> {
    /// The message as read from its body.
    pub event: M,
    /// Where the reply goes: the message's `reply_to`, if replies may go there.
    pub reply_to: Option<String>,
    /// The message's `correlation_id`, copied onto its reply.
    pub correlation_id: Option<String>,
}

/// What became of one message (a login by default) of a committed batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<R = Reply> {
    /// Decided now (or earlier, for a duplicate); effects and reply are committed.
    Decided { reply: R, duplicate: bool },
    /// Cannot be processed: dead-letter it. Nothing was written for it.
    Rejected(Rejection),
}

/// A decided batch.
#[derive(Debug)]
struct Processed {
    /// One per message, in order.
    pub verdicts: Vec<Verdict>,
    /// The outbox rows (events and replies) the batch committed, for the relay.
    pub outbox: Vec<OutboxRow>,
}

#[derive(Clone)]
pub struct Pipeline {
    pool: PgPool,
    /// This process's id, stamped on outbox rows.
    origin: Uuid,
    /// Commits and passes the outbox rows to the relay.
    handoff: Handoff,
    /// Connections kept between batches (see [`Pipeline::connection`]).
    kept: Arc<Mutex<Vec<Kept>>>,
    /// The settings of the connections batches named (see [`Pipeline::process`]).
    settings: Arc<Mutex<SettingsCache>>,
}

/// Settings by user pool and connection identifier. Only connections that exist are kept (an
/// administrator creates them), and at most `MAX_CACHED_SETTINGS` of them.
type SettingsCache = HashMap<(String, String), ConnectionSettings>;
const MAX_CACHED_SETTINGS: usize = 10_000;
/// Tries with remembered settings before a batch reads them in its own transaction only.
const STALE_SETTINGS_TRIES: u32 = 2;

/// A connection kept between batches, and since when.
type Kept = (PoolConnection<Postgres>, std::time::Instant);

/// Connections kept between batches: as many as batches run side by side, normally.
const KEPT_CONNECTIONS: usize = 8;
/// A connection kept unused for longer goes back to the pool, which tests it before it is used
/// again and closes it when idle for long.
pub const KEPT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

impl Pipeline {
    pub fn new(pool: PgPool, origin: Uuid, handoff: Handoff) -> Self {
        Self {
            pool,
            origin,
            handoff,
            kept: Arc::default(),
            settings: Arc::default(),
        }
    }

    /// A connection for a batch: one a batch before this one committed on, or one from the pool.
    /// The pool tests a connection with a round trip each time it takes one back, which a batch
    /// of a handful of logins would pay for as much as for one of its statements; a connection
    /// that failed is not kept (it goes back to the pool, which tests it and closes it if
    /// broken).
    async fn connection(&self) -> sqlx::Result<PoolConnection<Postgres>> {
        let kept = {
            let mut kept = self.kept.lock().expect("not poisoned");
            // The most recently kept first; those idle too long go back to the pool.
            let idle = kept
                .iter()
                .position(|(_, since)| since.elapsed() < KEPT_IDLE)
                .unwrap_or(kept.len());
            drop(kept.drain(..idle));
            kept.pop()
        };
        match kept {
            Some((connection, _)) => Ok(connection),
            None => self.pool.acquire().await,
        }
    }

    fn keep(&self, connection: PoolConnection<Postgres>) {
        let mut kept = self.kept.lock().expect("not poisoned");
        if kept.len() < KEPT_CONNECTIONS {
            kept.push((connection, std::time::Instant::now()));
        }
    }

    pub fn origin(&self) -> Uuid {
        self.origin
    }

    /// Decides `batch` in one transaction, in order, and hands its events and replies to the
    /// relay. On error nothing is committed.
    ///
    /// The settings of the batch's connections decide which values are locked (phone numbers are
    /// normalised with them), so they are needed before the locks. They are remembered between
    /// batches, and the statement that takes the locks also reads the connections' current
    /// `settings_version`: a batch that finds one changed is rolled back and decided again with
    /// the settings read anew. What a batch decides with is thus what a batch reading them at its
    /// start would have, one round trip fewer.
    pub async fn process(&self, batch: &[Inbound]) -> sqlx::Result<Vec<Verdict>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let remembered = tries <= STALE_SETTINGS_TRIES;
            let mut connection = self.connection().await?;
            let mut tx = connection.begin().await?;
            let settings = self.batch_settings(&mut tx, batch, remembered).await?;
            let Some(processed) = decide_batch(
                &mut tx,
                self.origin,
                batch,
                &settings,
                remembered,
                Utc::now(),
            )
            .await?
            else {
                tx.rollback().await?;
                self.keep(connection);
                self.forget_settings(settings.keys());
                continue;
            };
            self.handoff.commit(tx, processed.outbox).await?;
            self.keep(connection);
            return Ok(processed.verdicts);
        }
    }

    /// The settings of every connection the batch names: remembered ones (if `remembered`), the
    /// others read (and remembered).
    async fn batch_settings(
        &self,
        conn: &mut PgConnection,
        batch: &[Inbound],
        remembered: bool,
    ) -> sqlx::Result<SettingsCache> {
        let mut pairs: Vec<(&str, &str)> = batch
            .iter()
            .map(|m| (m.event.user_pool_id.as_str(), m.event.connection.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut found = SettingsCache::with_capacity(pairs.len());
        let mut missing = Vec::new();
        {
            let cache = self.settings.lock().expect("not poisoned");
            for (pool, identifier) in pairs {
                let key = (pool.to_owned(), identifier.to_owned());
                match cache.get(&key).filter(|_| remembered) {
                    Some(settings) => {
                        found.insert(key, settings.clone());
                    }
                    None => missing.push(key),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read = batch_connections(conn, &missing).await?;
        let mut cache = self.settings.lock().expect("not poisoned");
        if cache.len() + read.len() > MAX_CACHED_SETTINGS {
            cache.clear();
        }
        for (key, settings) in read {
            cache.insert(key.clone(), settings.clone());
            found.insert(key, settings);
        }
        Ok(found)
    }

    fn forget_settings<'a>(&self, keys: impl Iterator<Item = &'a (String, String)>) {
        let mut cache = self.settings.lock().expect("not poisoned");
        for key in keys {
            cache.remove(key);
        }
    }
}

/// Decides a batch in `conn`'s transaction; `None` when `check_settings` and one of `settings`
/// is no longer the connection's current version (nothing was written).
async fn decide_batch(
    conn: &mut PgConnection,
    origin: Uuid,
    batch: &[Inbound],
    settings: &SettingsCache,
    check_settings: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Processed>> {
    let Prepared {
        locks,
        id_keys,
        field_keys,
        event_ids,
        messages,
    } = Prepared::of(batch, settings);

    // After the locks, every read below sees the commits of whoever held them before us.
    if check_settings {
        let versions: Vec<(&str, &str, i64)> = settings
            .iter()
            .map(|((pool, identifier), s)| (pool.as_str(), identifier.as_str(), s.version))
            .collect();
        if !locks.acquire_checking(conn, &versions).await? {
            return Ok(None);
        }
    } else {
        locks.acquire(conn).await?;
    }
    let snapshot = batch::load(conn, &event_ids, &id_keys.external_ids, &field_keys).await?;
    let mut state = BatchState::load(snapshot);

    let mut writes = Writes::default();
    let mut verdicts = Vec::with_capacity(batch.len());
    for (message, prepared) in batch.iter().zip(messages) {
        let verdict = match prepared {
            Err(rejection) => Verdict::Rejected(rejection),
            Ok((settings, fields)) => {
                decide_one(message, settings, &fields, &mut state, &mut writes, now)
            }
        };
        if let (Verdict::Decided { reply, .. }, Some(reply_to)) = (&verdict, &message.reply_to) {
            writes.outbox.reply(
                reply_to,
                message.correlation_id.as_deref(),
                serde_json::to_value(reply).expect("reply serialises"),
            );
        }
        verdicts.push(verdict);
    }

    let outbox = writes.flush(conn, origin).await?;
    Ok(Some(Processed { verdicts, outbox }))
}

/// The settings of the connections named by `pairs` (user pool, identifier) that exist.
async fn batch_connections(
    conn: &mut PgConnection,
    pairs: &[(String, String)],
) -> sqlx::Result<SettingsCache> {
    let (pools, idents): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let found = connections::find_many(conn, &pools, &idents).await?;
    Ok(found
        .into_iter()
        .map(|c| {
            let key = (
                c.user_pool_id.as_str().to_owned(),
                c.identifier.as_str().to_owned(),
            );
            (key, c)
        })
        .collect())
}

/// What a batch must lock and read, and per message its connection and normalised fields, or
/// why it cannot be processed.
struct Prepared<'a> {
    locks: LockSet,
    id_keys: IdentityKeys,
    field_keys: FieldKeys,
    event_ids: Vec<String>,
    messages: Vec<Result<(&'a ConnectionSettings, NormalizedFields), Rejection>>,
}

impl<'a> Prepared<'a> {
    fn of(batch: &[Inbound], settings: &'a SettingsCache) -> Self {
        let mut prepared = Self {
            locks: LockSet::new(),
            id_keys: IdentityKeys::default(),
            field_keys: FieldKeys::default(),
            event_ids: Vec::new(),
            messages: Vec::with_capacity(batch.len()),
        };
        for message in batch {
            let event = &message.event;
            let pool = event.user_pool_id.as_str();
            let connection = event.connection.as_str();
            let Some(settings) = settings.get(&(pool.to_owned(), connection.to_owned())) else {
                prepared.messages.push(Err(Rejection::new(
                    RejectionKind::UnknownConnection,
                    format!("no connection {connection:?} in user pool {pool:?}"),
                )));
                continue;
            };
            let fields = NormalizedFields::of(&event.profile, settings);
            prepared
                .locks
                .identity(pool, connection, &event.external_id)
                .fields(pool, &fields);
            prepared.id_keys.push(pool, connection, &event.external_id);
            prepared.event_ids.push(event.id.clone());
            prepared.field_keys.add(pool, &fields, settings);
            prepared.messages.push(Ok((settings, fields)));
        }
        prepared
    }
}

/// Every write of a batch, gathered while deciding and flushed in a fixed order.
#[derive(Default)]
struct Writes {
    expired: Vec<Uuid>,
    users: NewUsers,
    new_identities: IdentityWrites,
    touched: IdentityWrites,
    touched_index: HashMap<IdentityKey, usize>,
    created_index: HashMap<IdentityKey, usize>,
    bindings: NewBindings,
    processed: NewProcessed,
    outbox: NewOutbox,
    /// Written after the rest: an account of the batch is created before it is updated.
    profile_updates: ProfileUpdates,
}

impl Writes {
    fn link(&mut self, key: &IdentityKey, user_id: Uuid, profile: Value) {
        self.created_index
            .insert(key.clone(), self.new_identities.user_ids.len());
        self.new_identities.push(
            &key.user_pool_id,
            &key.connection,
            &key.external_id,
            user_id,
            profile,
        );
    }

    fn touch(&mut self, event: &LoginEvent, user_id: Uuid, profile: Value) {
        let key = identity_key(event);
        // The same identity twice in a batch: its latest profile wins, in the row being written.
        if let Some(&i) = self.created_index.get(&key) {
            self.new_identities.profiles[i] = profile;
            return;
        }
        if let Some(&i) = self.touched_index.get(&key) {
            self.touched.profiles[i] = profile;
            return;
        }
        self.touched_index.insert(key, self.touched.user_ids.len());
        self.touched.push(
            event.user_pool_id.as_str(),
            event.connection.as_str(),
            &event.external_id,
            user_id,
            profile,
        );
    }

    async fn flush(self, conn: &mut PgConnection, origin: Uuid) -> sqlx::Result<Vec<OutboxRow>> {
        // Expiring first frees the one-pending-binding-per-identity slot for a new binding (a
        // statement's data-modifying parts run in no set order, so this one stands alone).
        bindings::expire(conn, &self.expired).await?;
        let stored = batch::write(
            conn,
            &BatchWrites {
                origin,
                users: &self.users,
                new_identities: &self.new_identities,
                touched: &self.touched,
                bindings: &self.bindings,
                processed: &self.processed,
                outbox: &self.outbox,
            },
        )
        .await?;
        self.profile_updates.write(conn).await?;
        Ok(self.outbox.stored(stored))
    }
}

/// Decides one login against the batch's view and gathers its effects into the batch's writes.
fn decide_one(
    message: &Inbound,
    settings: &ConnectionSettings,
    fields: &NormalizedFields,
    state: &mut BatchState,
    writes: &mut Writes,
    now: DateTime<Utc>,
) -> Verdict {
    let event = &message.event;
    if let Some(prior) = state.processed(event) {
        return Verdict::Decided {
            reply: prior.clone(),
            duplicate: true,
        };
    }
    let decision = decision::decide(
        fields,
        settings,
        &state.situation(event, fields, settings),
        now,
    );
    let planned = effects::of_login(&Identity::of(event), &event.id, &decision, settings, now);
    for effect in planned.effects {
        writes.apply(effect, event, state);
    }
    writes.processed.push(
        event,
        &planned.reply,
        settings.version,
        serde_json::to_value(&decision.evidence).expect("evidence serialises"),
    );
    state.record_processed(event, planned.reply.clone());
    Verdict::Decided {
        reply: planned.reply,
        duplicate: false,
    }
}

impl Writes {
    /// Applies one effect of a login: to the batch's writes, and to its view so that the next
    /// logins of the batch see it.
    fn apply(&mut self, effect: Effect, event: &LoginEvent, state: &mut BatchState) {
        let key = identity_key(event);
        let pool = event.user_pool_id.as_str();
        let profile = || Value::Object(event.profile.raw.clone());
        match effect {
            Effect::ExpireBinding { binding_id } => {
                state.expire_binding(&key);
                self.expired.push(binding_id);
            }
            Effect::CreateUser { user_id, fields } => {
                self.users.push(&UserRecord::new(user_id, pool, &fields));
                state.add_user(user_id, pool, &fields);
            }
            Effect::LinkIdentity { user_id } => {
                self.link(&key, user_id, profile());
                state.link(key, user_id, &event.profile.raw);
            }
            Effect::TouchIdentity { user_id } => {
                self.touch(event, user_id, profile());
                state.touch(&key, &event.profile.raw);
            }
            Effect::UpdateUser { user_id, update } => {
                self.profile_updates.push(user_id, &update);
                state.update_user(user_id, &update);
            }
            Effect::OpenBinding {
                binding_id,
                candidates,
                reason,
                expires_at,
            } => {
                self.bindings.push(
                    binding_id,
                    pool,
                    &key.connection,
                    &key.external_id,
                    profile(),
                    reason.as_str(),
                    &candidates,
                    Some(event),
                    expires_at,
                );
                state.open_binding(
                    key,
                    decision::PendingBinding {
                        id: binding_id,
                        reason,
                        expires_at,
                    },
                );
            }
            Effect::Emit(outbound) => self.outbox.event(outbound),
            Effect::ResolveBinding { .. } => {
                unreachable!("a login opens bindings, it does not resolve them")
            }
        }
    }
}

/// Writes the connections of the config file, and the unique attributes of their pools.
pub async fn upsert_connections(pool: &PgPool, list: &[ConnectionSettings]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for c in list {
        connections::upsert(&mut tx, c).await?;
    }
    let mut pools: Vec<String> = list
        .iter()
        .map(|c| c.user_pool_id.as_str().to_owned())
        .collect();
    pools.sort_unstable();
    pools.dedup();
    connections::sync_unique_attributes(&mut tx, &pools).await??;
    tx.commit().await?;
    Ok(())
}
