//! Configuration: built-in defaults, then the `--config` TOML file, then `IDSYNC__SECTION__KEY`
//! environment variables. Validated once at start; a bad value stops the program with one line.

use std::{path::Path, time::Duration};

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::amqp::nodes::BrokerUrls;
use crate::domain::connection::{ConnectionSettings, ConnectionSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub admin: AdminSettings,
    pub worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub log: LogSettings,
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
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/identity_sync"),
            max_connections: 10,
            startup_timeout: Duration::from_secs(30),
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
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 65536,
            batch_size: 256,
            concurrent_batches: 2,
            max_retry_delay: Duration::from_secs(5),
            dedupe_retention: None,
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
                    .with_list_parse_key("amqp.trusted_publishers"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(format!(
                "log.level: {:?} is not a valid filter: {e}",
                self.log.level
            ));
        }
        if self.amqp.url.is_empty() {
            return invalid("amqp.url: no broker URL given".into());
        }
        for url in self.amqp.url.iter() {
            if let Err(e) = url.expose_secret().parse::<lapin::uri::AMQPUri>() {
                return invalid(format!(
                    "amqp.url: {} is not an AMQP URL: {e}",
                    crate::amqp::nodes::address(url.expose_secret())
                ));
            }
        }
        if self.amqp.prefetch == 0 {
            return invalid("amqp.prefetch must be at least 1".into());
        }
        if self.worker.batch_size == 0 {
            return invalid("worker.batch_size must be at least 1".into());
        }
        // Each batch holds a connection; the relay, the background jobs and bursts need theirs.
        let most = (self.database.max_connections as usize)
            .saturating_sub(2)
            .clamp(1, 16);
        if !(1..=most).contains(&self.worker.concurrent_batches) {
            return invalid(format!(
                "worker.concurrent_batches must be from 1 to {most} (database.max_connections \
                 less 2, at most 16)"
            ));
        }
        if self.worker.max_message_bytes == 0 {
            return invalid("worker.max_message_bytes must be at least 1".into());
        }
        if self.database.max_connections < 3 {
            return invalid("database.max_connections must be at least 3".into());
        }
        if self.admin.max_connections == 0
            || self.admin.max_concurrent_requests == 0
            || self.admin.database_connections == 0
        {
            return invalid(
                "admin.max_connections, admin.max_concurrent_requests and \
                 admin.database_connections must be at least 1"
                    .into(),
            );
        }
        if self.outbox.batch_size < 1 {
            return invalid("outbox.batch_size must be at least 1".into());
        }
        if self.amqp.delivery_limit < 1 {
            return invalid("amqp.delivery_limit must be at least 1".into());
        }
        self.validate_queues()?;
        validate_listen(&self.admin.listen).map_err(SettingsError::Invalid)?;
        self.validate_durations()?;
        self.validate_tokens()?;
        self.connection_settings().map(|_| ())
    }

    /// The reply prefix stays out of the broker's names and of the worker's own queues, and the
    /// worker's queues are three.
    fn validate_queues(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        if self.amqp.reply_queue_prefix.is_empty()
            || self.amqp.reply_queue_prefix.starts_with("amq.")
        {
            return invalid(
                "amqp.reply_queue_prefix must be a non-empty name prefix outside the broker's \
                 reserved amq. names"
                    .into(),
            );
        }
        if self.amqp.commands_queue == self.amqp.work_queue
            || self.amqp.commands_queue == self.amqp.dead_letter_queue
            || self.amqp.work_queue == self.amqp.dead_letter_queue
        {
            return invalid(
                "amqp.work_queue, amqp.commands_queue and amqp.dead_letter_queue must be three \
                 different queues"
                    .into(),
            );
        }
        let queues = [
            &self.amqp.work_queue,
            &self.amqp.commands_queue,
            &self.amqp.dead_letter_queue,
        ];
        for queue in queues {
            if queue.starts_with(&self.amqp.reply_queue_prefix) {
                return invalid(format!(
                    "amqp.reply_queue_prefix {:?} would let replies into the worker's queue {queue:?}",
                    self.amqp.reply_queue_prefix
                ));
            }
        }
        Ok(())
    }

    /// Token names are set and unique; each token has exactly one source.
    fn validate_tokens(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for (i, token) in self.admin.tokens.iter().enumerate() {
            if token.name.trim().is_empty() || !names.insert(token.name.as_str()) {
                return invalid(format!("admin.tokens[{i}]: name must be set and unique"));
            }
            // A token given by environment is read when `run` starts: client commands sharing
            // this file need not have it.
            if token.token_env.is_none()
                && let Err(m) = token.secret()
            {
                return invalid(format!("admin.tokens[{i}] ({}): {m}", token.name));
            }
            if token.token.is_some() && token.token_env.is_some() {
                return invalid(format!(
                    "admin.tokens[{i}] ({}): set exactly one of token and token_env",
                    token.name
                ));
            }
        }
        Ok(())
    }

    /// Every duration must be within a century (a longer one is a typo, and would overflow the
    /// clock arithmetic it feeds); intervals and timeouts must not be zero (a busy loop, or a
    /// publish that can never be confirmed).
    fn validate_durations(&self) -> Result<(), SettingsError> {
        let nonzero = [
            ("database.startup_timeout", self.database.startup_timeout),
            (
                "admin.expiry_sweep_interval",
                self.admin.expiry_sweep_interval,
            ),
            ("admin.header_read_timeout", self.admin.header_read_timeout),
            ("admin.request_timeout", self.admin.request_timeout),
            ("worker.max_retry_delay", self.worker.max_retry_delay),
            ("outbox.poll_interval", self.outbox.poll_interval),
            ("outbox.orphan_after", self.outbox.orphan_after),
            ("outbox.confirm_timeout", self.outbox.confirm_timeout),
            ("outbox.prune_interval", self.outbox.prune_interval),
            ("outbox.retention", self.outbox.retention),
        ];
        let optional = [("worker.dedupe_retention", self.worker.dedupe_retention)];
        let given = optional.iter().filter_map(|(k, v)| v.map(|v| (*k, v)));
        for (key, value) in nonzero.into_iter().chain(given) {
            if value.is_zero() {
                return Err(SettingsError::Invalid(format!(
                    "{key} must be longer than 0"
                )));
            }
        }
        for (key, value) in nonzero
            .into_iter()
            .chain(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))))
        {
            if value > MAX_DURATION {
                return Err(SettingsError::Invalid(format!(
                    "{key} must be at most 100 years, got {}",
                    humantime::format_duration(value)
                )));
            }
        }
        Ok(())
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

/// `host:port`, where host is an IP address or a DNS name: checked before anything starts, so
/// that a typo is a configuration error and not a failure after the migrations ran.
fn validate_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("admin.listen: {listen:?} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)");
    let (host, port) = listen.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if name_ok { Ok(()) } else { Err(bad()) }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    humantime::parse_duration(&raw)
        .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Settings, SettingsError> {
        let dir = std::env::temp_dir().join(format!("idsync-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = Settings::load_file(&path);
        let _ = std::fs::remove_dir_all(dir);
        loaded
    }

    fn error(toml: &str) -> String {
        load(toml).unwrap_err().to_string()
    }

    #[test]
    fn concurrent_batches_leave_connections_for_the_rest() {
        assert_eq!(load("").unwrap().worker.concurrent_batches, 2);
        assert!(load("[worker]\nconcurrent_batches = 8").is_ok());
        for bad in [
            "[worker]\nconcurrent_batches = 0",
            "[worker]\nconcurrent_batches = 9",
            "[worker]\nconcurrent_batches = 3\n[database]\nmax_connections = 4",
        ] {
            let error = load(bad).unwrap_err().to_string();
            assert!(
                error.contains("worker.concurrent_batches"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_broker_is_one_url_or_a_clusters_nodes() {
        let one = load("[amqp]\nurl = \"amqp://u:p@rabbit:5672/%2f\"").unwrap();
        assert_eq!(one.amqp.url.len(), 1);
        let list =
            load("[amqp]\nurl = [\"amqp://u:p@n1:5672/%2f\", \"amqp://u:p@n2:5673/%2f\"]").unwrap();
        assert_eq!(list.amqp.url.address(1), "n2:5673");
        // As an environment variable gives it.
        let commas =
            load("[amqp]\nurl = \"amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f\"").unwrap();
        assert_eq!(commas.amqp.url.len(), 2);
        for bad in ["url = []", "url = \"\"", "url = \"http://n1/\""] {
            let error = load(&format!("[amqp]\n{bad}")).unwrap_err().to_string();
            assert!(error.contains("amqp.url"), "{bad}: {error}");
            assert!(!error.contains("u:p"), "credentials never shown: {error}");
        }
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused() {
        for key in [
            "[outbox]\nconfirm_timeout = \"0s\"",
            "[outbox]\npoll_interval = \"0s\"",
            "[outbox]\nprune_interval = \"0s\"",
            "[admin]\nexpiry_sweep_interval = \"0s\"",
        ] {
            let message = error(key);
            assert!(
                message.contains("must be longer than 0"),
                "{key}: {message}"
            );
        }
    }

    #[test]
    fn out_of_range_durations_are_refused() {
        let message = error("[outbox]\nretention = \"100000000d\"");
        assert!(
            message.contains("outbox.retention must be at most 100 years"),
            "{message}"
        );
        let message = error("[worker]\ndedupe_retention = \"100000000d\"");
        assert!(message.contains("worker.dedupe_retention"), "{message}");
        assert!(load("[outbox]\nretention = \"3650d\"").is_ok());
    }

    #[test]
    fn the_listen_address_is_checked_at_load() {
        for bad in ["notanaddr", "127.0.0.1", "host:99999", ":8080", "a b:80"] {
            let message = error(&format!("[admin]\nlisten = \"{bad}\""));
            assert!(message.contains("admin.listen"), "{bad}: {message}");
        }
        for good in ["127.0.0.1:0", "[::1]:8080", "localhost:8080", "0.0.0.0:80"] {
            assert!(
                load(&format!("[admin]\nlisten = \"{good}\"")).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn the_reply_queue_prefix_cannot_open_every_queue() {
        assert!(error("[amqp]\nreply_queue_prefix = \"\"").contains("reply_queue_prefix"));
        assert!(error("[amqp]\nreply_queue_prefix = \"amq.\"").contains("reply_queue_prefix"));
        let message = error("[amqp]\nreply_queue_prefix = \"idsync.\"");
        assert!(message.contains("idsync.login-completed"), "{message}");
    }

    #[test]
    fn a_zero_dedupe_retention_is_refused() {
        let message = error("[worker]\ndedupe_retention = \"0s\"");
        assert!(
            message.contains("worker.dedupe_retention must be longer than 0"),
            "{message}"
        );
    }
}
