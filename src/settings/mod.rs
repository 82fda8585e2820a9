//! Configuration: built-in defaults, then the `--config` TOML file, then `IDSYNC__SECTION__KEY`
//! environment variables. Validated once at start; a bad value stops the program with one line.

use std::{path::Path, time::Duration};

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::amqp::nodes::BrokerUrls;
use crate::domain::connection::{ConnectionSettings, ConnectionSpec};

mod validation;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub admin: AdminSettings,
    pub worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub log: LogSettings,
    pub webhooks: WebhooksSettings,
    pub connections: Vec<ConnectionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: SecretString,
    /// The worker holds one connection for its batch transaction, the outbox relay one, the
    /// background jobs and the admin API the rest; 10 leaves room for admin bursts without
    /// taking a large share of PostgreSQL's default 100 connections per worker process.
    pub max_connections: u32,
    /// How long `run` and `migrate` keep retrying an unreachable database at start.
    #[serde(deserialize_with = "duration")]
    pub startup_timeout: Duration,
    /// The server ends any one statement of the process after this (`statement_timeout`): a
    /// statement held by a lock, or a plan gone wrong, fails and is retried instead of holding
    /// its batch for ever. Migrations run without it.
    #[serde(deserialize_with = "duration")]
    pub statement_timeout: Duration,
    /// The server ends a transaction left idle inside for this long
    /// (`idle_in_transaction_session_timeout`): its locks do not outlive a client that went away.
    #[serde(deserialize_with = "duration")]
    pub idle_in_transaction_timeout: Duration,
    /// The process's own bound on every wait for the database (a batch's transaction, a commit,
    /// a pool connection), also when the server stops answering altogether (a partition, a
    /// standby that hangs) and no server-side timeout can fire: the work is then given up and
    /// retried on another connection, and a commit whose fate is unknown is checked.
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/identity_sync"),
            max_connections: 10,
            startup_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(45),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSettings {
    /// The vhost is part of the URL (`%2f` is the default vhost `/`). A cluster's nodes: a list
    /// of URLs (or one string of comma-separated URLs), tried in turn on every connect.
    pub url: BrokerUrls,
    /// Unacknowledged deliveries the broker may push to one worker. Large enough to fill a batch
    /// while the previous batch commits, small enough that a crash redelivers little.
    pub prefetch: u16,
    pub inbound_exchange: String,
    pub routing_key: String,
    pub work_queue: String,
    /// The queue of the platform's commands (`binding.resolve`, `user.unlink`), bound to the
    /// inbound exchange with those routing keys.
    pub commands_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
    /// `x-delivery-limit` of the work and commands queues: after this many redeliveries (crashes, connection
    /// losses) a message is dead-lettered by the broker.
    pub delivery_limit: u32,
    /// Where a login that cannot be decided yet waits (its connection's stored settings cannot
    /// be read): a queue whose messages go back to the work queue after `worker.wait_delay`.
    pub wait_queue: String,
    /// When not empty, only messages whose AMQP `user_id` is in this list are accepted.
    pub trusted_publishers: Vec<String>,
    /// Replies go only to server-named queues (`amq.gen-...`), to direct reply-to
    /// (`amq.rabbitmq.reply-to...`) or to queues whose name starts with this prefix.
    pub reply_queue_prefix: String,
    /// How outbound events are published: `structured` (the envelope as the body) or `binary`
    /// (the attributes in `ce-` headers, the data alone as the body). Inbound, both are read.
    pub event_mode: EventMode,
}

/// CloudEvents content mode of the published events (contract section 3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventMode {
    #[default]
    Structured,
    Binary,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: BrokerUrls::default(),
            prefetch: 512,
            inbound_exchange: "idsync.in".into(),
            routing_key: "login.completed".into(),
            work_queue: "idsync.login-completed".into(),
            commands_queue: "idsync.commands".into(),
            dead_letter_exchange: "idsync.dlx".into(),
            dead_letter_queue: "idsync.login-completed.dlq".into(),
            events_exchange: "idsync.events".into(),
            delivery_limit: 20,
            wait_queue: "idsync.login-completed.wait".into(),
            trusted_publishers: Vec::new(),
            reply_queue_prefix: "idsync.reply.".into(),
            event_mode: EventMode::Structured,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// `host:port`; port 0 picks a free port, which is logged.
    pub listen: String,
    /// Bearer tokens of the admin API.
    pub tokens: Vec<TokenSettings>,
    /// How often pending bindings past their expiry are looked for.
    #[serde(deserialize_with = "duration")]
    pub expiry_sweep_interval: Duration,
    /// A connection must send each request head within this (idle keep-alive included), so
    /// that slow or idle clients cannot hold connections open.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// An admin API request still running after this is answered 503 `timeout` (the work it
    /// started finishes in the background: cancelling a transaction half-way is not safe).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// HTTP connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Admin API requests served at once; more are answered 503 `overloaded` at once.
    pub max_concurrent_requests: usize,
    /// The admin API's own database connections, apart from the worker's, so that a burst of
    /// admin requests never takes the connections the worker decides logins with.
    pub database_connections: u32,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            expiry_sweep_interval: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_concurrent_requests: 32,
            database_connections: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read and write.
    Admin,
}

/// One admin API token: `token` in the file, or `token_env` naming the environment variable that
/// holds it (so that the file can be shared without the secret).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Recorded in the audit log as the actor.
    pub name: String,
    pub role: Role,
    pub token: Option<SecretString>,
    pub token_env: Option<String>,
}

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl TokenSettings {
    pub fn secret(&self) -> Result<SecretString, String> {
        let secret = match (&self.token, &self.token_env) {
            (Some(token), None) => token.clone(),
            (None, Some(var)) => std::env::var(var)
                .map(SecretString::from)
                .map_err(|_| format!("environment variable {var} is not set"))?,
            _ => return Err("set exactly one of token and token_env".into()),
        };
        if secret.expose_secret().chars().count() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token must be at least {MIN_TOKEN_LEN} characters"
            ));
        }
        Ok(secret)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    pub max_message_bytes: usize,
    /// Most login events decided in one database transaction.
    pub batch_size: usize,
    /// Batches of logins decided at once, each in a transaction (and a database connection) of
    /// its own: while one commits, the next is read and decided.
    pub concurrent_batches: usize,
    /// Longest wait between retries of a transient failure (database or broker unavailable).
    #[serde(deserialize_with = "duration")]
    pub max_retry_delay: Duration,
    /// How long the dedupe record of a processed event is kept. Unset (the default): for ever, as
    /// the contract's "already processed" rule asks. Set, an event re-sent later than this is
    /// decided again (it then usually finds its identity linked: `existing_user`).
    #[serde(deserialize_with = "optional_duration")]
    pub dedupe_retention: Option<Duration>,
    /// How long a login that cannot be decided yet waits in `amqp.wait_queue` before it is tried
    /// again (never dead-lettered for that reason).
    #[serde(deserialize_with = "duration")]
    pub wait_delay: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 65536,
            batch_size: 256,
            concurrent_batches: 2,
            max_retry_delay: Duration::from_secs(5),
            dedupe_retention: None,
            wait_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Rows published per relay round.
    pub batch_size: i64,
    /// Fallback wake-up of the relay when no commit signalled it.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Unpublished rows of another process older than this are adopted (their writer stopped).
    #[serde(deserialize_with = "duration")]
    pub orphan_after: Duration,
    /// `false` (default): an event no queue is bound for is recorded as published and unrouted
    /// (replayable later). `true`: it is held and retried until a queue is bound.
    pub retry_unroutable: bool,
    /// How long an unconfirmed publish may take before the round is retried.
    #[serde(deserialize_with = "duration")]
    pub confirm_timeout: Duration,
    /// Unpublished rows above which the worker stops taking logins until the relay catches up,
    /// so that a stalled downstream throttles consumption instead of growing the backlog.
    pub max_backlog: i64,
    /// Published events are kept this long for `events replay`, then pruned.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// How often the pruning runs.
    #[serde(deserialize_with = "duration")]
    pub prune_interval: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_secs(1),
            orphan_after: Duration::from_secs(30),
            retry_unroutable: false,
            confirm_timeout: Duration::from_secs(30),
            max_backlog: 10_000,
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// Webhook deliveries (contract section 12).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSettings {
    /// A delivery answered 2xx within this delivers; otherwise it is retried.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long a rotated-out secret keeps signing beside the new one.
    #[serde(deserialize_with = "duration")]
    pub rotation_overlap: Duration,
    /// An endpoint failing every attempt for this long is disabled.
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    /// Loopback and private (RFC 1918, unique-local) addresses may be reached; link-local ones
    /// never.
    pub allow_private_addresses: bool,
    /// The waits before the second, third... attempt (jittered by a tenth); once used up the
    /// delivery has failed.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Deliveries in flight at once, in this process.
    pub max_in_flight: usize,
    /// Deliveries in flight at once to one endpoint, in this process: a slow endpoint holds
    /// only these.
    pub max_in_flight_per_endpoint: usize,
    /// How often due deliveries are looked for when none were found.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Delivered and failed deliveries (with their attempts) are kept this long.
    #[serde(deserialize_with = "duration")]
    pub delivery_retention: Duration,
    /// While logins queue up (a batch found more waiting than it takes), deliveries go at a
    /// trickle (one claim per endpoint every 2 s) and catch up once the logins have.
    pub yield_to_logins: bool,
}

impl Default for WebhooksSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            rotation_overlap: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            allow_private_addresses: false,
            retry_schedule: crate::domain::webhooks::default_schedule(),
            max_in_flight: 64,
            max_in_flight_per_endpoint: 8,
            poll_interval: Duration::from_millis(500),
            delivery_retention: Duration::from_secs(7 * 24 * 3600),
            yield_to_logins: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file`, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::build(file, true)
    }

    /// Defaults, then `file`, ignoring the environment: for a configuration the program wrote
    /// itself (the benchmark's).
    pub fn load_file(file: &Path) -> Result<Self, SettingsError> {
        Self::build(Some(file), false)
    }

    fn build(file: Option<&Path>, environment: bool) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::Invalid(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        if environment {
            builder = builder.add_source(
                Environment::with_prefix("IDSYNC")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("amqp.trusted_publishers")
                    .with_list_parse_key("webhooks.retry_schedule"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The `[[connections]]` tables, validated; an error names the table and the field.
    pub fn connection_settings(&self) -> Result<Vec<ConnectionSettings>, SettingsError> {
        let mut out: Vec<ConnectionSettings> = Vec::with_capacity(self.connections.len());
        for (i, spec) in self.connections.iter().enumerate() {
            let name = spec.identifier.as_deref().unwrap_or("?");
            let settings = ConnectionSettings::validate(spec)
                .map_err(|e| SettingsError::Invalid(format!("connections[{i}] ({name}): {e}")))?;
            if out.iter().any(|c| {
                c.identifier == settings.identifier && c.user_pool_id == settings.user_pool_id
            }) {
                return Err(SettingsError::Invalid(format!(
                    "connections[{i}] ({name}): defined twice for user pool {}",
                    settings.user_pool_id
                )));
            }
            out.push(settings);
        }
        Ok(out)
    }
}

/// The longest duration any setting takes.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|raw| {
            humantime::parse_duration(&raw)
                .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))
        })
        .collect()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    humantime::parse_duration(&raw)
        .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))
}

#[cfg(test)]
mod tests;
