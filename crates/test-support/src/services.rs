//! A test's environment: its isolated database and vhost, the configuration the application
//! runs with there, and broker users of its own.

use std::{path::PathBuf, process::Command};

use identity_sync::settings::Settings;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::data::{ADMIN_TOKEN, CONNECTIONS, VIEWER_TOKEN};
use crate::isolated::{Isolated, amqp_base, binary, rabbit_api};

/// A database and a vhost of one test, removed on drop.
pub struct Services {
    isolated: Isolated,
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
        let isolated = Isolated::create("idsync-test")
            .await
            .expect("an isolated database and vhost");
        let id = isolated.id.clone();
        let dir = std::env::temp_dir().join(format!("idsync-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let services = Self {
            db_url: isolated.db_url.clone(),
            db_name: isolated.db_name.clone(),
            amqp_url: isolated.amqp_url.clone(),
            vhost: isolated.vhost.clone(),
            isolated,
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

    /// The settings with the test broker's user (`guest`) as the one trusted publisher: what
    /// commands need. Publish as [`crate::Broker::connect_as_platform`].
    pub fn trusting_guest(&self) -> Settings {
        let mut settings = self.settings();
        settings.amqp.trusted_publishers = vec!["guest".into()];
        settings
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
        let mut command = Command::new(binary());
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
        // The database and the vhost go with `isolated`.
        let _ = std::fs::remove_dir_all(&self.dir);
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
        let name = format!("{role}-{}", services.isolated.id);
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
        crate::isolated::cleanup(async move {
            let _ = reqwest::Client::new()
                .delete(format!("{}/users/{name}", rabbit_api()))
                .basic_auth("guest", Some("guest"))
                .send()
                .await;
        });
    }
}
