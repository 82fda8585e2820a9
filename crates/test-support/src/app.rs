//! The application under test: in this process (`TestApp`), as a separate process
//! (`WorkerProcess`), its admin API, its metrics, and the invariants it must keep.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use identity_sync::{settings::Settings, startup::Application};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::data::{ADMIN_TOKEN, WAIT};
use crate::services::Services;

/// Waits up to `limit` until every outbox row is published; fails the test saying `what` was
/// expected otherwise.
pub async fn outbox_drained(db: &PgPool, limit: Duration, what: &str) {
    wait_until(limit, || async {
        crate::data::count(db, "SELECT count(*) FROM outbox_pending").await == 0
    })
    .await
    .expect(what);
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

    /// The binary, as `services` configures it, pointed at this application's admin API with
    /// the admin token (for the commands that go through the API).
    pub fn admin_command(&self, services: &crate::Services) -> std::process::Command {
        let mut command = services.command();
        command
            .env("IDSYNC_API_URL", self.url(""))
            .env("IDSYNC_ADMIN_TOKEN", crate::ADMIN_TOKEN);
        command
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

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
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

/// Waits until `sql`'s count reaches `target`, for as long as it keeps moving: the test fails
/// only when the count has not changed for `WAIT` (a loaded machine decides a backlog slower,
/// but a worker that stopped deciding never moves it). Bulk waits use this rather than a bound on
/// the whole backlog.
pub async fn count_reaches(db: &PgPool, sql: &'static str, target: i64, what: &str) {
    reading_reaches(|| crate::data::count(db, sql), |n| n == target, what).await;
}

/// Waits until `read` satisfies `done`, failing the test saying `what` was expected once the
/// reading has not changed for `WAIT`.
pub async fn reading_reaches<F, Fut>(mut read: F, done: impl Fn(i64) -> bool, what: &str)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = i64>,
{
    let mut last = read().await;
    let mut moved = Instant::now();
    while !done(last) {
        assert!(
            moved.elapsed() < WAIT,
            "{what}: stuck at {last} for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = read().await;
        if now != last {
            last = now;
            moved = Instant::now();
        }
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
