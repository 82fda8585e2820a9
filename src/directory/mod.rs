//! Asking a connection's source what it says about a person (contract section 10): DingTalk,
//! WeCom and Feishu's open APIs, called with the connection's credentials before a batch's
//! transaction, for the logins that need it only.
//!
//! A record fetched is kept in `directory_records` for the connection's `cache_ttl`, so that a
//! returning login, a restart or a second worker spends no call. One token per app, fetched by one
//! caller at a time; calls kept within the app's rate per API; a rate-limit or quota answer
//! pauses the app, and five failures in a row stop calls for 5 s, doubling up to 60 s (see [`app`]).

mod app;
pub mod source;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use reqwest::Client;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::{sync::Semaphore, task::JoinSet};

use app::App;
pub use app::{State, Status, Unavailable};

use crate::{
    db,
    domain::{
        ConnectionSettings,
        directory::{DirectorySettings, Fetch, Finding, merge_record},
        login::{DirectoryNote, NormalizedFields, Profile},
        message::Message,
    },
    health::Health,
    metrics::{ConnectionLabel, Metrics},
};

/// Calls to directories under way at once, across every app.
const CONCURRENT_CALLS: usize = 16;
/// A batch waits for its lookups at most this many times the longest `timeout` among them.
const LOOKUP_TRIES: u32 = 3;

/// What the directory says about one person.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(Map<String, Value>),
    NotFound,
    Unavailable(Unavailable),
}

/// An app: its API base and its id (AppKey, corpid, app_id).
type AppKey = (String, String);

/// The process's directory clients, by app.
#[derive(Clone)]
pub struct Directories {
    http: Client,
    apps: Arc<Mutex<HashMap<AppKey, Arc<App>>>>,
    metrics: Metrics,
    /// Where `/readyz` reads which directories cannot be asked now.
    health: Option<Health>,
    calls: Arc<Semaphore>,
}

impl Directories {
    /// Reports each directory's state to `health` (`/readyz`) too.
    pub fn reporting_to(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    pub fn new(metrics: Metrics) -> Self {
        let http = Client::builder()
            // An API answers where it is asked: a redirect is not followed with a token.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("identity-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with these settings builds");
        Self {
            http,
            apps: Arc::default(),
            metrics,
            health: None,
            calls: Arc::new(Semaphore::new(CONCURRENT_CALLS)),
        }
    }

    /// The app `settings` name: one per kind, base and app id, replaced when its settings
    /// change (a new secret).
    fn app(&self, settings: &DirectorySettings) -> Arc<App> {
        let key = (settings.api_base.clone(), settings.app.clone());
        let mut apps = self.apps.lock().expect("not poisoned");
        match apps.get(&key) {
            Some(app) if app.same(settings) => app.clone(),
            _ => {
                let app = Arc::new(App::new(settings));
                apps.insert(key, app.clone());
                app
            }
        }
    }

    /// Asks the directory about the person `external_id` of `connection`.
    pub async fn lookup(
        &self,
        connection: &str,
        settings: &DirectorySettings,
        external_id: &str,
    ) -> Lookup {
        let _call = self.calls.acquire().await.expect("never closed");
        let app = self.app(settings);
        let lookup = match app
            .person(
                &self.http,
                &self.metrics,
                connection,
                settings.id_field,
                external_id,
            )
            .await
        {
            Ok(Some(record)) => Lookup::Found(record),
            Ok(None) => Lookup::NotFound,
            Err(unavailable) => Lookup::Unavailable(unavailable),
        };
        if let Some(health) = &self.health {
            let state = match &lookup {
                Lookup::Unavailable(unavailable) => unavailable.state,
                Lookup::Found(_) | Lookup::NotFound => State::Ok,
            };
            health.set_directory(connection, state.as_str());
        }
        lookup
    }

    /// Obtains a token with `settings`' credentials: whether they work.
    pub async fn check(
        &self,
        connection: &str,
        settings: &DirectorySettings,
    ) -> Result<(), String> {
        self.app(settings)
            .check(&self.http, &self.metrics, connection)
            .await
            .map_err(|unavailable| unavailable.detail)
    }

    /// How the app of `settings` is doing, if this process has called it.
    pub fn status(&self, settings: &DirectorySettings) -> Option<Status> {
        let key = (settings.api_base.clone(), settings.app.clone());
        let apps = self.apps.lock().expect("not poisoned");
        apps.get(&key)
            .filter(|a| a.same(settings))
            .map(|a| a.status())
    }

    /// The batch with what the directories say put into the logins that need it (see
    /// [`needs_directory`]); `None` when none does. Records are read from the cache first, the
    /// rest fetched concurrently and cached.
    pub async fn enrich(
        &self,
        pool: &PgPool,
        batch: &[Message],
        settings: &HashMap<(String, String), ConnectionSettings>,
    ) -> sqlx::Result<Option<Vec<Message>>> {
        let mut wanted = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            let event = &message.event;
            let key = (
                event.user_pool_id.as_str().to_owned(),
                event.connection.as_str().to_owned(),
            );
            if let Some(connection) = settings.get(&key)
                && let Some(directory) = &connection.directory
                && needs_directory(&event.profile, connection, directory)
            {
                wanted.push((index, directory.clone()));
            }
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        let keys: Vec<db::directory::Key> = wanted
            .iter()
            .map(|(index, _)| db::directory::Key::of(&batch[*index].event))
            .collect();
        let cached = db::directory::cached(pool, &keys).await?;
        let mut found: Vec<Option<Lookup>> = Vec::with_capacity(wanted.len());
        let mut fetches = JoinSet::new();
        // Logins of one person in one batch share one call.
        let mut asked: HashMap<&db::directory::Key, Vec<usize>> = HashMap::new();
        for (slot, ((_, directory), key)) in wanted.iter().zip(&keys).enumerate() {
            let fresh = cached.get(key).filter(|c| {
                c.asked == fingerprint(directory)
                    && Utc::now() - c.fetched_at
                        < chrono::Duration::from_std(directory.cache_ttl)
                            .unwrap_or(chrono::Duration::MAX)
            });
            match fresh {
                Some(cached) => {
                    self.metrics
                        .directory_cache_hits
                        .get_or_create(&ConnectionLabel {
                            connection: key.connection.clone(),
                        })
                        .inc();
                    found.push(Some(match &cached.record {
                        Some(record) => Lookup::Found(record.clone()),
                        None => Lookup::NotFound,
                    }));
                }
                None => {
                    found.push(None);
                    if let Some(slots) = asked.get_mut(key) {
                        slots.push(slot);
                        continue;
                    }
                    asked.insert(key, vec![slot]);
                    let this = self.clone();
                    let directory = directory.clone();
                    let key = key.clone();
                    fetches.spawn(async move {
                        let lookup = this
                            .lookup(&key.connection, &directory, &key.external_id)
                            .await;
                        (slot, lookup)
                    });
                }
            }
        }
        let mut fetched = Vec::new();
        // The batch's other logins wait for its lookups: a source that takes longer than this
        // (a token, the call, one more try) leaves its logins to wait in the broker instead.
        let bound = wanted
            .iter()
            .map(|(_, d)| d.timeout)
            .max()
            .unwrap_or_default()
            * LOOKUP_TRIES;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let done = match tokio::time::timeout_at(deadline, fetches.join_next()).await {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(_) => {
                    fetches.abort_all();
                    break;
                }
            };
            let (slot, mut lookup) = match done {
                Ok(done) => done,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => continue,
            };
            if let Lookup::Found(record) = &mut lookup {
                strip_nul(record);
            }
            let record = match &lookup {
                Lookup::Found(record) => Some(Some(record.clone())),
                Lookup::NotFound => Some(None),
                Lookup::Unavailable(_) => None,
            };
            if let Some(record) = record {
                fetched.push(db::directory::Answer {
                    key: keys[slot].clone(),
                    asked: fingerprint(&wanted[slot].1),
                    record,
                });
            }
            for same in &asked[&keys[slot]] {
                found[*same] = Some(lookup.clone());
            }
        }
        db::directory::store(pool, &fetched).await?;

        let mut enriched = batch.to_vec();
        for ((index, directory), lookup) in wanted.iter().zip(found) {
            let event = &mut enriched[*index].event;
            let finding = match lookup {
                Some(Lookup::Found(record)) => {
                    let mut raw = event.profile.raw.clone();
                    merge_record(&mut raw, &record);
                    match Profile::from_map(&raw) {
                        Ok(profile) => {
                            let before = std::mem::replace(&mut event.profile, profile);
                            event.directory = Some(DirectoryNote {
                                finding: Finding::Found {
                                    inactive: directory.kind.inactive(&record),
                                },
                                event_profile: Some(before),
                            });
                            continue;
                        }
                        Err(rejection) => Finding::Unavailable(format!(
                            "the directory's record cannot be used: {}",
                            rejection.detail
                        )),
                    }
                }
                Some(Lookup::NotFound) => Finding::NotFound,
                Some(Lookup::Unavailable(unavailable)) => Finding::Unavailable(unavailable.detail),
                None => Finding::Unavailable(format!(
                    "the directory did not answer within {}",
                    humantime::format_duration(bound)
                )),
            };
            event.directory = Some(DirectoryNote {
                finding,
                event_profile: None,
            });
        }
        Ok(Some(enriched))
    }
}

/// What a kept answer was asked of: a record is used only by the same source, base, app and
/// kind of id (a changed directory asks again).
fn fingerprint(directory: &DirectorySettings) -> String {
    format!(
        "{} {} {} {}",
        directory.kind, directory.api_base, directory.app, directory.id_field
    )
}

/// Removes NUL characters from a record's text (which PostgreSQL cannot store, and a login's
/// profile may not hold): a source's stray byte must not cost the login.
fn strip_nul(record: &mut Map<String, Value>) {
    fn value(v: &mut Value) {
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
            Value::Array(items) => items.iter_mut().for_each(value),
            Value::Object(map) => strip_nul(map),
            _ => {}
        }
    }
    let keys: Vec<String> = record
        .keys()
        .filter(|k| k.contains('\0'))
        .cloned()
        .collect();
    for key in keys {
        if let Some(v) = record.remove(&key) {
            record.insert(key.replace('\0', ""), v);
        }
    }
    record.values_mut().for_each(value);
}

/// Whether a login must be completed from its connection's directory: always with `fetch =
/// "always"`; with `missing`, when a field the connection matches on is absent from the login.
pub fn needs_directory(
    profile: &Profile,
    connection: &ConnectionSettings,
    directory: &DirectorySettings,
) -> bool {
    match directory.fetch {
        Fetch::Always => true,
        Fetch::Missing => {
            let fields = NormalizedFields::of(profile, connection);
            connection
                .match_fields
                .iter()
                .any(|key| !fields.carries(key))
        }
    }
}
