//! An isolated environment on this machine's services: a PostgreSQL database and a RabbitMQ vhost
//! of its own (created through the management API), removed on drop, pass or fail. The
//! integration tests, the fault tests and the benchmark all run in one.

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// PostgreSQL's server URL, without a database (`IDSYNC_TEST_PG`).
pub fn pg_base() -> String {
    std::env::var("IDSYNC_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// RabbitMQ's URL as `guest`, without a vhost (`IDSYNC_TEST_AMQP`).
pub fn amqp_base() -> String {
    std::env::var("IDSYNC_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// RabbitMQ's management API (`IDSYNC_TEST_RABBITMQ_API`).
pub fn rabbit_api() -> String {
    std::env::var("IDSYNC_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".into())
}

/// A GET of the RabbitMQ management API (`path` after `/api`), as `guest`.
pub async fn management_get(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", rabbit_api()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("the management API answers")
        .json()
        .await
        .expect("the management API answers JSON")
}

/// A database (not created yet: the application creates and migrates it) and a vhost (created,
/// with `guest` allowed everything on it), both named `<prefix>_<id>` / `<prefix>-<id>`.
#[derive(Debug)]
pub struct Isolated {
    /// A short random id, part of both names.
    pub id: String,
    pub db_name: String,
    pub db_url: String,
    pub vhost: String,
    pub amqp_url: String,
}

impl Isolated {
    /// `prefix` is `idsync-test`, `idsync-bench`, ...: the names say who made them.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let id = Uuid::new_v4().simple().to_string()[..16].to_owned();
        let db_name = format!("{}_{id}", prefix.replace('-', "_"));
        let vhost = format!("{prefix}-{id}");
        let http = reqwest::Client::new();
        let api = rabbit_api();
        http.put(format!("{api}/vhosts/{vhost}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .context(
                "creating a RabbitMQ vhost (is the management plugin enabled? scripts/services-up)",
            )?;
        http.put(format!("{api}/permissions/{vhost}/guest"))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .context("granting guest the vhost")?;
        Ok(Self {
            db_url: format!("{}/{db_name}", pg_base()),
            amqp_url: format!("{}/{vhost}", amqp_base()),
            id,
            db_name,
            vhost,
        })
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let (db_name, vhost) = (self.db_name.clone(), self.vhost.clone());
        cleanup(async move {
            if let Ok(mut conn) = PgConnection::connect(&format!("{}/postgres", pg_base())).await {
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
    }
}

/// Runs a clean-up to its end from `Drop`, which may run inside a runtime: on a thread and a
/// runtime of its own.
pub fn cleanup(work: impl Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    })
    .join()
    .ok();
}

/// The `identity-sync` binary of the same build (`IDSYNC_BIN` names another): beside the test or
/// benchmark executable's directory (`target/<profile>/deps/..`) or in it.
pub fn binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("IDSYNC_BIN") {
        return path.into();
    }
    let name = format!("identity-sync{}", std::env::consts::EXE_SUFFIX);
    let this = std::env::current_exe().expect("the test executable's path");
    let dir = this.parent().expect("in a directory");
    [
        dir.join(&name),
        dir.parent().map(|d| d.join(&name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "no {name} near {}: build it (cargo build) or set IDSYNC_BIN",
            this.display()
        )
    })
}

/// Runs a command of the binary to its end: its exit code (-1 when killed by a signal), standard
/// output and standard error.
pub fn run(command: &mut std::process::Command) -> (i32, String, String) {
    let output = command.output().expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
