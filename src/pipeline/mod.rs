//! The application core: decides a batch of login events in one database transaction. It loads
//! what the decision needs in a few set-based queries, decides each event in order against an
//! in-memory view of the batch, and writes every effect (users, identities, bindings, dedupe
//! records, outbox rows) in a few more. Broker concerns stay with the caller.

mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, PgPool, Postgres, pool::PoolConnection};
use uuid::Uuid;

use crate::db::{
    batch::{self, BatchWrites},
    bindings, connections,
    identities::IdentityKeys,
    locks::LockSet,
    outbox::OutboxRow,
    users::{self, FieldKeys},
    within,
};
use crate::directory::Directories;
use crate::domain::directory::{Finding, OnUnavailable};
use crate::domain::{
    ConnectionSettings, decision,
    effects::{self, Identity},
    login::{NormalizedFields, Rejection, RejectionKind, Wait, WaitReason},
    message::{Fate, Message},
};
use crate::relay::Handoff;
use state::{BatchState, Writes};

/// A decided batch.
#[derive(Debug)]
struct Processed {
    /// One per message, in order.
    pub fates: Vec<Fate>,
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
    /// The longest a batch's transaction may go without the database answering
    /// (`database.stall_timeout`).
    stall: Duration,
    /// The connections' directories, asked before a batch's transaction.
    directories: Directories,
}

/// The settings a batch decides with: the usable ones, and what is wrong with the stored
/// connections that cannot be used.
#[derive(Default)]
struct BatchSettings {
    usable: SettingsCache,
    unreadable: HashMap<(String, String), String>,
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

impl Pipeline {
    pub fn new(
        pool: PgPool,
        origin: Uuid,
        handoff: Handoff,
        stall: Duration,
        directories: Directories,
    ) -> Self {
        Self {
            pool,
            origin,
            handoff,
            kept: Arc::default(),
            settings: Arc::default(),
            stall,
            directories,
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
                .position(|(_, since)| since.elapsed() < crate::db::KEPT_IDLE)
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

    /// Decides `batch` in one transaction, in order, and hands its events and replies to the
    /// relay. On error nothing is committed.
    ///
    /// The settings of the batch's connections decide which values are locked (phone numbers are
    /// normalised with them), so they are needed before the locks. They are remembered between
    /// batches, and the statement that takes the locks also reads the connections' current
    /// `settings_version`: a batch that finds one changed is rolled back and decided again with
    /// the settings read anew. What a batch decides with is thus what a batch reading them at its
    /// start would have, one round trip fewer.
    pub async fn process(&self, batch: &[Message]) -> sqlx::Result<Vec<Fate>> {
        let enriched = self.ask_directories(batch).await?;
        let batch = enriched.as_deref().unwrap_or(batch);
        let mut tries = 0;
        loop {
            tries += 1;
            let remembered = tries <= STALE_SETTINGS_TRIES;
            let mut connection = self.connection().await?;
            match self.attempt(&mut connection, batch, remembered).await {
                Ok(Some(fates)) => {
                    self.keep(connection);
                    return Ok(fates);
                }
                // A connection's settings changed meanwhile: decided again.
                Ok(None) => self.keep(connection),
                Err(error) => return Err(self.drop_connection(connection, error)),
            }
        }
    }

    /// One try at a batch on `connection`; `None` when a remembered connection's settings were
    /// found changed (nothing was written). Every wait before the commit is bounded on this side
    /// too, since a server that stops answering (a partition) fires no timeout of its own; the
    /// commit is bounded apart (see `Handoff::commit`): cut short, its fate would be unknown.
    async fn attempt(
        &self,
        connection: &mut PoolConnection<Postgres>,
        batch: &[Message],
        remembered: bool,
    ) -> sqlx::Result<Option<Vec<Fate>>> {
        let deadline = tokio::time::Instant::now() + self.stall;
        let mut tx = within(deadline, "beginning a batch", connection.begin()).await?;
        let settings = within(
            deadline,
            "reading a batch's connections",
            self.batch_settings(&mut tx, batch, remembered),
        )
        .await?;
        let decided = within(
            deadline,
            "deciding a batch",
            decide_batch(
                &mut tx,
                self.origin,
                batch,
                &settings,
                remembered,
                Utc::now(),
            ),
        )
        .await;
        let Some(processed) = decided? else {
            within(deadline, "rolling a batch back", tx.rollback()).await?;
            self.forget_settings(settings.usable.keys());
            return Ok(None);
        };
        self.handoff.commit(tx, processed.outbox).await?;
        Ok(Some(processed.fates))
    }

    /// A connection whose work failed is not kept; one that may be stuck mid-statement, or that
    /// reaches a read-only server, is closed rather than tested and reused.
    fn drop_connection(
        &self,
        mut connection: PoolConnection<Postgres>,
        error: sqlx::Error,
    ) -> sqlx::Error {
        if crate::db::unusable_connection(&error) {
            connection.close_on_drop();
        }
        error
    }

    /// The settings of every connection the batch names: remembered ones (if `remembered`), the
    /// others read (and remembered, when usable).
    async fn batch_settings(
        &self,
        conn: &mut PgConnection,
        batch: &[Message],
        remembered: bool,
    ) -> sqlx::Result<BatchSettings> {
        let mut pairs: Vec<(&str, &str)> = batch
            .iter()
            .map(|m| (m.event.user_pool_id.as_str(), m.event.connection.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut found = BatchSettings::default();
        let mut missing = Vec::new();
        {
            let cache = self.settings.lock().expect("not poisoned");
            for (pool, identifier) in pairs {
                let key = (pool.to_owned(), identifier.to_owned());
                match cache.get(&key).filter(|_| remembered) {
                    Some(settings) => {
                        found.usable.insert(key, settings.clone());
                    }
                    None => missing.push(key),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let (pools, idents): (Vec<String>, Vec<String>) = missing.into_iter().unzip();
        let read = connections::find_many(conn, &pools, &idents).await?;
        let mut cache = self.settings.lock().expect("not poisoned");
        if cache.len() + read.len() > MAX_CACHED_SETTINGS {
            cache.clear();
        }
        for stored in read {
            match stored {
                Ok(settings) => {
                    let key = (
                        settings.user_pool_id.as_str().to_owned(),
                        settings.identifier.as_str().to_owned(),
                    );
                    cache.insert(key.clone(), settings.clone());
                    found.usable.insert(key, settings);
                }
                // Never remembered: read again by every batch until it is mended.
                Err(unreadable) => {
                    found
                        .unreadable
                        .insert(unreadable.key(), unreadable.problem);
                }
            }
        }
        Ok(found)
    }

    /// The batch completed from its connections' directories, before its transaction (so that
    /// no lock waits on a source's API); `None` when no login of it needs a directory. A batch
    /// whose connections have no directory costs a look at the remembered settings.
    async fn ask_directories(&self, batch: &[Message]) -> sqlx::Result<Option<Vec<Message>>> {
        let mut any = false;
        let mut all_known = true;
        {
            let cache = self.settings.lock().expect("not poisoned");
            for message in batch {
                let key = (
                    message.event.user_pool_id.as_str().to_owned(),
                    message.event.connection.as_str().to_owned(),
                );
                match cache.get(&key) {
                    Some(settings) => any |= settings.directory.is_some(),
                    None => all_known = false,
                }
            }
        }
        if all_known && !any {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.stall;
        let mut connection = within(deadline, "taking a connection", self.connection()).await?;
        let settings = within(
            deadline,
            "reading a batch's connections",
            self.batch_settings(&mut connection, batch, true),
        )
        .await;
        self.keep(connection);
        let settings = settings?;
        if !settings.usable.values().any(|s| s.directory.is_some()) {
            return Ok(None);
        }
        self.directories
            .enrich(&self.pool, batch, &settings.usable)
            .await
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
    batch: &[Message],
    settings: &BatchSettings,
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
            .usable
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

    let mut fates = Vec::with_capacity(batch.len());
    for (message, prepared) in batch.iter().zip(messages) {
        let fate = match prepared {
            Err(undecided) => undecided,
            Ok((settings, fields)) => decide_one(message, settings, &fields, &mut state, now),
        };
        if let (Fate::Decided { reply, .. }, Some(reply_to)) = (&fate, &message.reply_to) {
            state.reply(reply_to, message.correlation_id.as_deref(), reply);
        }
        fates.push(fate);
    }

    let outbox = write(conn, origin, state.into_writes()).await?;
    Ok(Some(Processed { fates, outbox }))
}

/// What a batch must lock and read, and per message its connection and normalised fields, or
/// why it cannot be processed.
struct Prepared<'a> {
    locks: LockSet,
    id_keys: IdentityKeys,
    field_keys: FieldKeys,
    event_ids: Vec<String>,
    /// Per message, what it is decided with, or what becomes of it undecided (dead-lettered or
    /// waiting).
    messages: Vec<Result<(&'a ConnectionSettings, NormalizedFields), Fate>>,
}

impl<'a> Prepared<'a> {
    fn of(batch: &[Message], settings: &'a BatchSettings) -> Self {
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
            let key = (pool.to_owned(), connection.to_owned());
            if let Some(problem) = settings.unreadable.get(&key) {
                prepared.messages.push(Err(Fate::Waiting(Wait {
                    reason: WaitReason::ConnectionUnreadable,
                    detail: format!(
                        "connection {connection:?} of user pool {pool:?} cannot be read: {problem}"
                    ),
                })));
                continue;
            }
            let Some(settings) = settings.usable.get(&key) else {
                prepared
                    .messages
                    .push(Err(Fate::DeadLettered(Rejection::new(
                        RejectionKind::UnknownConnection,
                        format!("no connection {connection:?} in user pool {pool:?}"),
                    ))));
                continue;
            };
            let fields = match &event.directory {
                None => NormalizedFields::of(&event.profile, settings),
                Some(note) => {
                    if let Finding::Unavailable(detail) = &note.finding
                        && settings
                            .directory
                            .as_ref()
                            .is_some_and(|d| d.on_unavailable == OnUnavailable::Wait)
                    {
                        prepared.messages.push(Err(Fate::Waiting(Wait {
                            reason: WaitReason::DirectoryUnavailable,
                            detail: format!(
                                "the directory of connection {connection:?} of user pool \
                                 {pool:?} cannot be asked: {detail}"
                            ),
                        })));
                        continue;
                    }
                    NormalizedFields::with_directory(&event.profile, note, settings)
                }
            };
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

/// Writes what a batch changed, in a fixed order; returns its outbox rows as stored.
async fn write(
    conn: &mut PgConnection,
    origin: Uuid,
    writes: Writes,
) -> sqlx::Result<Vec<OutboxRow>> {
    // Expiring first frees the one-pending-binding-per-identity slot for a new binding (a
    // statement's data-modifying parts run in no set order, so this one stands alone).
    bindings::expire(conn, &writes.expired).await?;
    let stored = batch::write(
        conn,
        &BatchWrites {
            origin,
            users: &writes.users,
            new_identities: &writes.linked,
            touched: &writes.touched,
            bindings: &writes.bindings,
            processed: &writes.processed,
            outbox: writes.outbox.rows(),
        },
    )
    .await?;
    users::update_profiles(conn, &writes.profile_updates).await?;
    Ok(writes.outbox.stored(stored))
}

/// Decides one login against the batch's view and applies its effects to it.
fn decide_one(
    message: &Message,
    settings: &ConnectionSettings,
    fields: &NormalizedFields,
    state: &mut BatchState,
    now: DateTime<Utc>,
) -> Fate {
    let event = &message.event;
    #[cfg(feature = "failpoints")]
    if crate::failpoint::value("panic_on_external_id") == Some(event.external_id.as_str()) {
        // For the fault tests: a bug of the worker that only this message meets.
        panic!("failpoint panic_on_external_id");
    }
    if let Some(prior) = state.processed(event) {
        return Fate::Decided {
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
        state.apply(effect, event);
    }
    state.record_processed(
        event,
        planned.reply.clone(),
        settings.version,
        serde_json::to_value(&decision.evidence).expect("evidence serialises"),
    );
    Fate::Decided {
        reply: planned.reply,
        duplicate: false,
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
