//! Test harness: every test gets its own PostgreSQL database and its own RabbitMQ vhost (created
//! through the management API), runs the real application against them, and removes both when it
//! ends, pass or fail.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_lite::StreamExt;
use identity_sync::{
    amqp::topology, domain::events::Reply, settings::Settings, startup::Application,
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::BasicGetMessage,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const POOL: &str = "pool-1";
pub const WAIT: Duration = Duration::from_secs(30);

fn pg_base() -> String {
    std::env::var("IDSYNC_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn amqp_base() -> String {
    std::env::var("IDSYNC_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

fn rabbit_api() -> String {
    std::env::var("IDSYNC_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".into())
}

/// The connections every test environment is configured with (all in pool `pool-1`).
pub const CONNECTIONS: &str = r#"
[[connections]]
identifier = "plain"
user_pool_id = "pool-1"
display_name = "Association disabled"
provider = "oidc"

[[connections]]
identifier = "matching"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["email", "phone"]
default_country_code = "86"

[[connections]]
identifier = "asking"
user_pool_id = "pool-1"
provider = "wecom"
association = "ask_binding"
match_fields = ["email", "phone", "username"]
default_country_code = "86"
binding_ttl = "1h"

[[connections]]
identifier = "only"
user_pool_id = "pool-1"
provider = "ldap"
login_mode = "login_only"
association = "field_matching"
match_fields = ["email", "username"]

[[connections]]
identifier = "trusting"
user_pool_id = "pool-1"
provider = "saml"
association = "field_matching"
match_fields = ["email"]
require_verified = false

[[connections]]
identifier = "brief"
user_pool_id = "pool-1"
provider = "feishu"
association = "ask_binding"
match_fields = ["email"]
binding_ttl = "1s"
"#;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "test-viewer-token-0123456789";

/// A database and a vhost of one test, removed on drop.
pub struct Services {
    pub db_name: String,
    pub db_url: String,
    pub vhost: String,
    pub amqp_url: String,
    pub dir: PathBuf,
    pub extra_config: String,
    /// Keys added to a section the generated configuration already has: (section, TOML lines).
    pub section_keys: Vec<(String, String)>,
}

impl Services {
    pub async fn new() -> Self {
        Self::with_config("").await
    }

    /// `extra` is TOML appended to the generated configuration (before the connections).
    pub async fn with_config(extra: &str) -> Self {
        Self::with_keys(extra, &[]).await
    }

    /// Also adds `keys` (TOML lines) to the named sections of the generated configuration
    /// (`database`, `amqp`, `admin`, `worker`, `outbox`).
    pub async fn with_keys(extra: &str, keys: &[(&str, &str)]) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("idsync_test_{}", &id[..16]);
        let vhost = format!("idsync-test-{}", &id[..16]);
        let http = reqwest::Client::new();
        let api = rabbit_api();
        http.put(format!("{api}/vhosts/{vhost}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect(
                "creating a RabbitMQ vhost (is the management plugin enabled? scripts/services-up)",
            );
        http.put(format!("{api}/permissions/{vhost}/guest"))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("granting guest the test vhost");
        let dir = std::env::temp_dir().join(format!("idsync-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let services = Self {
            db_url: format!("{}/{db_name}", pg_base()),
            db_name,
            amqp_url: format!("{}/{vhost}", amqp_base()),
            vhost,
            dir,
            extra_config: extra.to_owned(),
            section_keys: keys
                .iter()
                .map(|(s, k)| ((*s).to_owned(), (*k).to_owned()))
                .collect(),
        };
        std::fs::write(services.config_path(), services.config_toml()).unwrap();
        services
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("identity-sync.toml")
    }

    pub fn config_toml(&self) -> String {
        let mut toml = self.base_toml();
        for (section, keys) in &self.section_keys {
            let header = format!("\n[{section}]\n");
            assert!(toml.contains(&header), "no section [{section}]");
            toml = toml.replacen(&header, &format!("{header}{keys}\n"), 1);
        }
        toml
    }

    fn base_toml(&self) -> String {
        format!(
            r#"
[database]
url = "{db}"
startup_timeout = "10s"

[amqp]
url = "{amqp}"
prefetch = 64

[admin]
listen = "127.0.0.1:0"
expiry_sweep_interval = "200ms"

[[admin.tokens]]
name = "ops-alice"
role = "admin"
token = "{admin_token}"

[[admin.tokens]]
name = "bob-viewer"
role = "viewer"
token = "{viewer_token}"

[worker]
max_retry_delay = "1s"

[outbox]
poll_interval = "200ms"
orphan_after = "2s"

{extra}
{connections}
"#,
            db = self.db_url,
            amqp = self.amqp_url,
            extra = self.extra_config,
            connections = CONNECTIONS,
            admin_token = ADMIN_TOKEN,
            viewer_token = VIEWER_TOKEN,
        )
    }

    pub fn settings(&self) -> Settings {
        Settings::load(Some(&self.config_path())).expect("test configuration is valid")
    }

    pub async fn db(&self) -> PgPool {
        // The application creates and migrates the database; tests that look before it started
        // call `migrate` first.
        PgPool::connect(&self.db_url)
            .await
            .expect("connecting to the test database")
    }

    pub async fn migrate(&self) -> PgPool {
        let settings = self.settings();
        identity_sync::db::connect_and_migrate(&settings.database)
            .await
            .unwrap()
    }

    /// Runs the real binary with this environment's configuration, logging at `warn` (or at
    /// `IDSYNC_TEST_WORKER_LOG`, a `RUST_LOG` filter) to the test's output.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_identity-sync"));
        command.arg("--config").arg(self.config_path());
        command.env(
            "RUST_LOG",
            std::env::var("IDSYNC_TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        command
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let (db_name, vhost, dir) = (self.db_name.clone(), self.vhost.clone(), self.dir.clone());
        // Drop may run inside a runtime: clean up on a thread of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) =
                    PgConnection::connect(&format!("{}/postgres", pg_base())).await
                {
                    let sql = format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
                let _ = reqwest::Client::new()
                    .delete(format!("{}/vhosts/{vhost}", rabbit_api()))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await;
            });
            let _ = std::fs::remove_dir_all(dir);
        })
        .join()
        .ok();
    }
}

/// A RabbitMQ user of its own for one test, with permissions on the test's vhost only; deleted
/// on drop.
pub struct BrokerUser {
    pub name: String,
    pub password: String,
}

impl BrokerUser {
    /// `configure`, `write` and `read` are the permission regular expressions on the vhost.
    pub async fn create(services: &Services, role: &str, permissions: [&str; 3]) -> Self {
        let name = format!("{role}-{}", &services.vhost["idsync-test-".len()..]);
        let password = Uuid::new_v4().simple().to_string();
        let http = reqwest::Client::new();
        let api = rabbit_api();
        http.put(format!("{api}/users/{name}"))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"password": password, "tags": ""}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("creating a broker user");
        let [configure, write, read] = permissions;
        http.put(format!("{api}/permissions/{}/{name}", services.vhost))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"configure": configure, "write": write, "read": read}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("granting the broker user the test vhost");
        Self { name, password }
    }

    /// The test vhost's URL with this user's credentials.
    pub fn url(&self, services: &Services) -> String {
        let base =
            amqp_base().replace("guest:guest@", &format!("{}:{}@", self.name, self.password));
        format!("{base}/{}", services.vhost)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let _ = reqwest::Client::new()
                    .delete(format!("{}/users/{name}", rabbit_api()))
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await;
            });
        })
        .join()
        .ok();
    }
}

/// Fails the test on any violation of the contract's invariants in the database at `url`.
pub async fn verify(url: &str) {
    let pool = PgPool::connect(url).await.expect("connecting to verify");
    let bounds = identity_sync::verify::Bounds {
        orphan_after: Duration::from_secs(2),
        retention: Duration::from_secs(7 * 24 * 3600),
    };
    let violations = identity_sync::verify::verify(&pool, bounds)
        .await
        .expect("verify runs");
    pool.close().await;
    let lines: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(lines.is_empty(), "invariants broken:\n{}", lines.join("\n"));
}

/// The application, running in this process.
pub struct TestApp {
    pub address: SocketAddr,
    db_url: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(services: &Services) -> Self {
        Self::spawn_with(services.settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> Self {
        let db_url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();
        let app = Application::build(settings)
            .await
            .expect("application builds");
        let address = app.address();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let app = Self {
            address,
            db_url,
            shutdown,
            handle,
        };
        app.wait_ready().await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn wait_ready(&self) {
        wait_until(WAIT, || async {
            reqwest::get(self.url("/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await
        .expect("the application became ready");
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one metric line, e.g. `idsync_decisions_total{outcome="user_created"}`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Stops the application, then checks every invariant over its database.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(12), self.handle)
            .await
            .expect("stopped within the deadline")
            .unwrap()
            .unwrap();
        verify(&self.db_url).await;
    }
}

impl TestApp {
    /// The admin API, as the admin token.
    pub fn api(&self) -> Api {
        Api {
            base: self.url(""),
            token: Some(ADMIN_TOKEN.to_owned()),
            http: reqwest::Client::new(),
        }
    }

    pub fn api_as(&self, token: Option<&str>) -> Api {
        Api {
            base: self.url(""),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }
}

/// A small client of the admin API returning (status, JSON body).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// The error code of an API error body.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an API error: {body}"))
}

/// The value of one series of a scrape; a series that is not there fails the test (every label
/// of the worker's metrics is exported from the start, so a missing one is a typo or a bug).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// The application as a separate process (for kill -9 tests).
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn start(services: &Services) -> Self {
        Self::start_with_env(services, &[])
    }

    /// With extra `IDSYNC__...` settings in its environment.
    pub fn start_with_env(services: &Services, env: &[(&str, &str)]) -> Self {
        let child = services
            .command()
            .envs(env.iter().copied())
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        Self { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(())
}

/// A login.completed event with a fresh id.
pub fn login(connection: &str, external_id: &str, profile: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": Uuid::new_v4().to_string(),
        "source": "urn:test:platform",
        "type": "login.completed",
        "time": "2026-11-24T12:00:00Z",
        "data": {
            "user_pool_id": POOL,
            "connection": connection,
            "external_id": external_id,
            "profile": profile,
        }
    })
}

/// The test's side of the broker: a publisher, a reply queue and a queue capturing every
/// outbound event.
pub struct Broker {
    pub events_queue: String,
    pub connection: Connection,
    pub channel: Channel,
    reply_queue: String,
    replies: Consumer,
    events: Consumer,
    buffered_replies: HashMap<String, Value>,
    settings: Settings,
}

pub struct Captured {
    pub body: Value,
    pub routing_key: String,
    pub properties: BasicProperties,
}

impl Broker {
    pub async fn connect(services: &Services) -> Self {
        Self::connect_with(services, services.settings(), true).await
    }

    /// `settings` must declare the topology as the worker will (same queue arguments);
    /// `capture` binds the event-capturing queue to every event type.
    pub async fn connect_with(services: &Services, settings: Settings, capture: bool) -> Self {
        Self::connect_url(&services.amqp_url, settings, capture).await
    }

    async fn connect_url(url: &str, settings: Settings, capture: bool) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connecting to the test vhost");
        let channel = connection.create_channel().await.unwrap();
        // Declared here too so that events can be published before the worker first starts.
        topology::declare(&channel, &settings.amqp).await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let reply_queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap();
        let events_queue = channel
            .queue_declare("".into(), private, FieldTable::default())
            .await
            .unwrap();
        if capture {
            channel
                .queue_bind(
                    events_queue.name().clone(),
                    settings.amqp.events_exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let replies = channel
            .basic_consume(
                reply_queue.name().clone(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let events = channel
            .basic_consume(
                events_queue.name().clone(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            events_queue: events_queue.name().to_string(),
            connection,
            channel,
            reply_queue: reply_queue.name().to_string(),
            replies,
            events,
            buffered_replies: HashMap::new(),
            settings,
        }
    }

    /// Publishes raw bytes to the inbound exchange and waits for the broker's confirm.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let routing_key = self.settings.amqp.routing_key.clone();
        self.publish_to(&routing_key, body, properties).await;
    }

    /// Publishes raw bytes to the inbound exchange under `routing_key`, and waits for the
    /// broker's confirm.
    pub async fn publish_to(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.settings.amqp.inbound_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker confirmed the publish");
        assert!(confirm.take_message().is_none(), "the work queue is bound");
    }

    /// Sends a command (`binding.resolve` or `user.unlink`) with this `id` and `data`, asking
    /// for a reply; returns the correlation id to wait on with [`Broker::reply_value`].
    pub async fn request_command(&self, kind: &str, id: &str, data: Value) -> String {
        self.request_command_with(kind, id, data, json_props())
            .await
    }

    /// [`Broker::request_command`] with more message properties.
    pub async fn request_command_with(
        &self,
        kind: &str,
        id: &str,
        data: Value,
        properties: BasicProperties,
    ) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        let properties = properties
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        self.publish_to(kind, &command_body(kind, id, data), properties)
            .await;
        correlation_id
    }

    /// Sends a command and waits for its reply.
    pub async fn command(&mut self, kind: &str, data: Value) -> Value {
        let id = Uuid::now_v7().to_string();
        let correlation_id = self.request_command(kind, &id, data).await;
        let reply = self.reply_value(&correlation_id).await;
        assert_eq!(reply["command_id"], id.as_str(), "{reply}");
        reply
    }

    /// Publishes without asking for a reply.
    pub async fn send(&self, event: &Value) {
        self.publish_raw(&serde_json::to_vec(event).unwrap(), json_props())
            .await;
    }

    /// Publishes asking for a reply; returns the correlation id to wait on.
    pub async fn request_raw(&self, body: &[u8]) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        let properties = json_props()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        self.publish_raw(body, properties).await;
        correlation_id
    }

    pub async fn request(&self, event: &Value) -> String {
        self.request_raw(&serde_json::to_vec(event).unwrap()).await
    }

    pub async fn reply(&mut self, correlation_id: &str) -> Reply {
        let reply = self.reply_value(correlation_id).await;
        serde_json::from_value(reply).expect("a login reply")
    }

    /// The reply with this correlation id, as JSON.
    pub async fn reply_value(&mut self, correlation_id: &str) -> Value {
        if let Some(reply) = self.buffered_replies.remove(correlation_id) {
            return reply;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.replies.next())
                .await
                .expect("a reply arrived in time")
                .expect("reply stream open")
                .unwrap();
            let reply: Value = serde_json::from_slice(&delivery.data).expect("reply is JSON");
            assert_eq!(
                delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str()),
                Some("application/json")
            );
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            if id == correlation_id {
                return reply;
            }
            self.buffered_replies.insert(id, reply);
        }
    }

    /// Whether a reply with this correlation id arrived among those read so far (waiting for a
    /// later reply reads every one before it).
    pub fn replied(&self, correlation_id: &str) -> bool {
        self.buffered_replies.contains_key(correlation_id)
    }

    /// Sends a login and waits for its reply.
    pub async fn login(&mut self, event: &Value) -> Reply {
        let correlation_id = self.request(event).await;
        self.reply(&correlation_id).await
    }

    /// The next outbound event, if one arrives within `wait`.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Captured> {
        let delivery = tokio::time::timeout(wait, self.events.next())
            .await
            .ok()??
            .ok()?;
        Some(Captured {
            body: serde_json::from_slice(&delivery.data).expect("event is JSON"),
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
        })
    }

    pub async fn next_event(&mut self) -> Captured {
        self.next_event_within(WAIT)
            .await
            .expect("an event arrived in time")
    }

    /// Asserts that no further event arrives within a short while.
    /// Asserts that no further event arrives: once the outbox has nothing left to publish (and
    /// a moment for what was just published to be delivered), nothing more is here.
    pub async fn no_more_events(&mut self) {
        let url = secrecy::ExposeSecret::expose_secret(&self.settings.database.url).to_owned();
        let db = PgPool::connect(&url)
            .await
            .expect("connecting to the test database");
        wait_until(WAIT, || async {
            count(
                &db,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .await
                == 0
        })
        .await
        .expect("the outbox drained");
        db.close().await;
        if let Some(extra) = self.next_event_within(Duration::from_millis(300)).await {
            panic!("unexpected event: {}", extra.body);
        }
    }

    /// Takes one message from the dead-letter queue, waiting for it to arrive.
    pub async fn dead_letter(&self) -> BasicGetMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self
                .channel
                .basic_get(
                    self.settings.amqp.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if let Some(message) = got {
                return message;
            }
            assert!(Instant::now() < deadline, "a dead letter arrived in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages currently in a queue of the test vhost.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = self.connection.create_channel().await.unwrap();
        let depth = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        let _ = channel.close(200, "".into()).await;
        depth
    }

    /// Binds the event-capturing queue (for a broker connected without capture).
    pub async fn capture_events(&self) {
        self.channel
            .queue_bind(
                self.events_queue.as_str().into(),
                self.settings.amqp.events_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Every event that arrives until none has for `quiet`.
    pub async fn drain_events(&mut self, quiet: Duration) -> Vec<Captured> {
        let mut all = Vec::new();
        while let Some(event) = self.next_event_within(quiet).await {
            all.push(event);
        }
        all
    }

    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn work_queue(&self) -> &str {
        &self.settings.amqp.work_queue
    }
}

/// A command's CloudEvents body, from the test platform.
pub fn command_body(kind: &str, id: &str, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "urn:test:platform", "type": kind,
        "datacontenttype": "application/json", "data": data,
    }))
    .unwrap()
}

pub fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// The `x-idsync-error` header of a dead letter.
pub fn error_header(message: &BasicGetMessage) -> String {
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("dead letter has headers");
    match headers.inner().get("x-idsync-error") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("x-idsync-error header missing or of the wrong type: {other:?}"),
    }
}

/// Creates a user through the same code as `users import`.
pub async fn create_user(
    db: &PgPool,
    email: Option<&str>,
    phone: Option<&str>,
    username: Option<&str>,
) -> Uuid {
    let input = identity_sync::accounts::AccountInput {
        user_pool_id: Some(POOL.into()),
        email: email.map(Into::into),
        email_verified: true,
        phone: phone.map(Into::into),
        phone_verified: true,
        username: username.map(Into::into),
        name: Some("Existing".into()),
        ..Default::default()
    };
    let record = input.normalise(None).unwrap();
    match identity_sync::accounts::create(db, &record, false)
        .await
        .unwrap()
    {
        identity_sync::accounts::Created::Added(id) => id,
        other => panic!("expected a new user, got {other:?}"),
    }
}

pub async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .unwrap()
}

/// The figures a reliability test reports: printed, and written to
/// `target/reliability/<name>.json` for docs/RELIABILITY.md.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub name: String,
    pub sent: i64,
    pub decided: i64,
    pub lost: i64,
    pub doubled: i64,
    pub faults: i64,
    pub notes: serde_json::Map<String, Value>,
}

impl Figures {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    pub fn note(&mut self, key: &str, value: impl serde::Serialize) -> &mut Self {
        self.notes
            .insert(key.to_owned(), serde_json::to_value(value).unwrap());
        self
    }

    pub fn report(&self) {
        let line = serde_json::to_string(self).unwrap();
        eprintln!("RELIABILITY {line}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}.json", self.name)), line);
    }
}
