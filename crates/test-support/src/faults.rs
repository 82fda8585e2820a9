//! What the tests of the system's own faults share: the worker connected as a database role of
//! its own (as a production deployment has it, so that a test can revoke its privileges), and a
//! stream of logins published at a steady rate while a fault lasts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::broker::{json_props, login};
use crate::isolated::pg_base;
use crate::services::Services;

/// A PostgreSQL role for the worker, with the privileges a deployment grants it on the test's
/// database (already migrated): it owns nothing, so revoking a privilege or renaming a table
/// under it is what an operator's mistake would do. Dropped with its grants on drop.
pub struct DatabaseRole {
    pub name: String,
    /// The test's database, which the role is granted.
    pub db_name: String,
}

impl DatabaseRole {
    /// Creates the role and grants it the tables, sequences and functions of `services`'
    /// database, which must be migrated.
    pub async fn create(services: &Services) -> Self {
        let name = format!(
            "idsync_worker_{}",
            services.db_name.rsplit('_').next().unwrap()
        );
        let mut admin = PgConnection::connect(&services.db_url)
            .await
            .expect("connecting to the test database as its owner");
        for sql in [
            format!("CREATE ROLE {name} LOGIN"),
            format!("GRANT USAGE ON SCHEMA public TO {name}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}"
            ),
            format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {name}"),
            format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {name}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .expect("creating the worker's role");
        }
        let _ = admin.close().await;
        Self {
            name,
            db_name: services.db_name.clone(),
        }
    }

    /// The test database's URL as this role.
    pub fn url(&self) -> String {
        let base = pg_base().replace("postgres@", &format!("{}@", self.name));
        format!("{base}/{}", self.db_name)
    }
}

impl Drop for DatabaseRole {
    fn drop(&mut self) {
        let (name, db_name) = (self.name.clone(), self.db_name.clone());
        crate::isolated::cleanup(async move {
            let run = |url: String, sql: String| async move {
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            };
            let base = pg_base();
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
            );
            run(format!("{base}/postgres"), terminate).await;
            run(format!("{base}/{db_name}"), format!("DROP OWNED BY {name}")).await;
            run(
                format!("{base}/postgres"),
                format!("DROP ROLE IF EXISTS {name}"),
            )
            .await;
        });
    }
}

/// Logins published at a steady rate, each with a confirm, from a connection of their own: new
/// people `<prefix>-<n>` on the `plain` connection, each with a verified email.
pub struct LoginStream {
    sent: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LoginStream {
    pub async fn start(services: &Services, per_second: u32, prefix: &str) -> Self {
        let connection = Connection::connect(&services.amqp_url, ConnectionProperties::default())
            .await
            .expect("connecting the login stream");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let settings = services.settings();
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (counter, stopped, prefix) = (sent.clone(), stop.clone(), prefix.to_owned());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut n = 0;
            while !stopped.is_cancelled() {
                tick.tick().await;
                let event = login(
                    "plain",
                    &format!("{prefix}-{n}"),
                    json!({"email": format!("{prefix}-{n}@example.com"), "email_verified": true}),
                );
                let confirm = channel
                    .basic_publish(
                        settings.amqp.inbound_exchange.as_str().into(),
                        settings.amqp.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&event).unwrap(),
                        json_props(),
                    )
                    .await
                    .expect("publishing a login")
                    .await
                    .expect("the broker confirms a login");
                assert!(confirm.is_ack(), "the broker took the login");
                n += 1;
                counter.store(n, Ordering::Relaxed);
            }
            let _ = connection.close(200, "".into()).await;
        });
        Self { sent, stop, task }
    }

    /// Logins published so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops publishing; returns how many logins were published.
    pub async fn stop(self) -> usize {
        self.stop.cancel();
        self.task.await.expect("the login stream ran");
        self.sent.load(Ordering::Relaxed)
    }
}

/// The login consumer's fault `/readyz` names with `reason`, if it answers 503 with it (the relay
/// may name one of its own beside it).
pub async fn readyz_fault(app: &crate::app::TestApp, reason: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(app.url("/readyz")).await.ok()?;
    if response.status().as_u16() != 503 {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["faults"]
        .as_array()?
        .iter()
        .find(|f| f["reason"] == reason && f["component"] == "logins")
        .cloned()
}

/// Watches `/readyz` for `lasting` (while a fault lasts); the fault it named with `reason`, if
/// it did.
pub async fn watch_readyz(
    app: &crate::app::TestApp,
    reason: &str,
    lasting: Duration,
) -> Option<serde_json::Value> {
    let started = std::time::Instant::now();
    let mut named = None;
    while started.elapsed() < lasting {
        if named.is_none() {
            named = readyz_fault(app, reason).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    named
}

/// After a fault is mended (at `mended`) and `sent` new people's logins were published: waits
/// until each is decided and its events published (within the tests' bound on waiting; how soon
/// is a figure, not a test), and returns the figures (not reported yet), having checked that
/// nothing was dead-lettered, lost or doubled.
pub async fn decided_after_mend(
    services: &Services,
    db: &sqlx::PgPool,
    name: &str,
    sent: i64,
    mended: std::time::Instant,
) -> crate::figures::Figures {
    use crate::data::{WAIT, count};
    crate::app::wait_until(WAIT * 2, || async {
        count(db, "SELECT count(*) FROM processed_events").await == sent
    })
    .await
    .expect("every login decided after the mend");
    let decided_after = mended.elapsed();
    crate::app::outbox_drained(db, WAIT, "every event published").await;
    let dead = crate::broker::Broker::connect(services)
        .await
        .queue_depth(&services.settings().amqp.dead_letter_queue)
        .await;
    let users = count(db, "SELECT count(*) FROM users").await;
    let mut figures = crate::figures::Figures::new(name);
    figures.sent = sent;
    figures.decided = count(db, "SELECT count(*) FROM processed_events").await;
    figures.lost = sent - figures.decided;
    figures.doubled = users - sent;
    figures.faults = 1;
    figures
        .note("dead_lettered", dead)
        .note("decided_all_after_mend_ms", decided_after.as_millis());
    assert_eq!(
        (dead, figures.lost, figures.doubled),
        (0, 0, 0),
        "nothing dead-lettered, lost or doubled"
    );
    figures
}
