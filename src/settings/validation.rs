//! Checking the settings once at start: a bad value stops the program with one line naming it.

use secrecy::ExposeSecret;

use super::{MAX_DURATION, Settings, SettingsError};

impl Settings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(format!(
                "log.level: {:?} is not a valid filter: {e}",
                self.log.level
            ));
        }
        self.validate_broker_urls()?;
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
        if self.database.stall_timeout <= self.database.statement_timeout {
            return invalid(
                "database.stall_timeout must be longer than database.statement_timeout (the \
                 server's own bound should fire first)"
                    .into(),
            );
        }
        if self.amqp.delivery_limit < 1 {
            return invalid("amqp.delivery_limit must be at least 1".into());
        }
        self.validate_queues()?;
        validate_listen(&self.admin.listen).map_err(SettingsError::Invalid)?;
        self.validate_durations()?;
        self.validate_webhooks()?;
        self.validate_tokens()?;
        self.connection_settings().map(|_| ())
    }

    /// At least one broker URL, each an AMQP URL, all as the same broker user.
    fn validate_broker_urls(&self) -> Result<(), SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
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
        let users: std::collections::BTreeSet<Option<String>> = self
            .amqp
            .url
            .iter()
            .map(|url| crate::amqp::nodes::user(url.expose_secret()))
            .collect();
        if users.len() > 1 {
            return invalid(
                "amqp.url: every node must be reached as the same broker user (the worker \
                 signs messages it queues for later with it)"
                    .into(),
            );
        }
        Ok(())
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
            &self.amqp.wait_queue,
        ];
        if queues[..3].contains(&&self.amqp.wait_queue) {
            return invalid(
                "amqp.wait_queue must be a queue of its own, not the work, commands or \
                 dead-letter queue"
                    .into(),
            );
        }
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

    fn validate_webhooks(&self) -> Result<(), SettingsError> {
        let w = &self.webhooks;
        if w.max_in_flight == 0 || w.max_in_flight_per_endpoint == 0 {
            return Err(SettingsError::Invalid(
                "webhooks.max_in_flight and webhooks.max_in_flight_per_endpoint must be at least 1"
                    .into(),
            ));
        }
        if w.retry_schedule.len() > 32 || w.retry_schedule.iter().any(|d| *d > MAX_DURATION) {
            return Err(SettingsError::Invalid(
                "webhooks.retry_schedule lists at most 32 waits, each at most 100 years".into(),
            ));
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
                "database.statement_timeout",
                self.database.statement_timeout,
            ),
            (
                "database.idle_in_transaction_timeout",
                self.database.idle_in_transaction_timeout,
            ),
            ("database.stall_timeout", self.database.stall_timeout),
            ("worker.wait_delay", self.worker.wait_delay),
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
            ("webhooks.timeout", self.webhooks.timeout),
            ("webhooks.disable_after", self.webhooks.disable_after),
            ("webhooks.poll_interval", self.webhooks.poll_interval),
            (
                "webhooks.delivery_retention",
                self.webhooks.delivery_retention,
            ),
            ("webhooks.rotation_overlap", self.webhooks.rotation_overlap),
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
}

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
