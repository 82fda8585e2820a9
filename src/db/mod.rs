//! PostgreSQL adapter: the pool, migrations, and one repository module per table. Repository
//! functions take a `&mut PgConnection` (usually a transaction) so that one transaction can span
//! every write of a batch.

pub mod audit;
pub mod batch;
pub mod bindings;
pub mod class;
pub mod commands;
pub mod connections;
pub mod directory;
pub mod identities;
pub mod leavers;
pub mod locks;
pub mod outbox;
pub mod processed;
pub mod types;
pub mod users;
pub mod webhooks;

pub use class::{
    ErrorClass, SystemFault, classify, is_transient, sqlstate, stalled, unusable_connection, within,
};

use std::time::Duration;

use backon::Retryable;
use secrecy::ExposeSecret;
use sqlx::{
    ConnectOptions, Connection, PgPool,
    migrate::MigrateDatabase,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::settings::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A connection kept by a part of the process between its transactions (the worker's batches,
/// the relay's marks) goes back to the pool after this long unused: the pool tests it before it
/// is used again, and closes it when idle for long.
pub const KEPT_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url is invalid: {0}")]
    Url(sqlx::Error),
    #[error("database unreachable after {0:?}: {1}")]
    Unreachable(Duration, sqlx::Error),
    #[error("the database refused the connection: {0}")]
    Refused(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let statement_timeout = settings.statement_timeout.as_millis().to_string();
    let idle_timeout = settings.idle_in_transaction_timeout.as_millis().to_string();
    Ok(unbounded_options(settings)?.options([
        ("statement_timeout", statement_timeout.as_str()),
        ("idle_in_transaction_session_timeout", idle_timeout.as_str()),
    ]))
}

/// The options of a connection without the server-side bounds: for migrations, whose statements
/// (an index built over a large table) may rightly take long.
fn unbounded_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = settings.url.expose_secret().parse().map_err(DbError::Url)?;
    // The broker ack that follows a commit relies on the commit being durable, whatever the
    // server's default says.
    Ok(options
        .application_name("identity-sync")
        .options([("synchronous_commit", "on")])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// The worker's statements (the batch's read and write, the relay's claims and marks) are
/// written so that their plan is index-led whatever the parameters hold. Left to choose,
/// PostgreSQL plans them again for each execution while batches are small (a custom plan of a
/// one-login batch looks cheaper than the generic plan, which assumes ten elements per array),
/// and planning the batch read costs more than running it. The admin side's pools keep the
/// default.
const GENERIC_PLANS: (&str, &str) = ("plan_cache_mode", "force_generic_plan");

/// Creates the database if needed, connects (retrying until `startup_timeout`) and migrates.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options = connect_options(settings)?.options([GENERIC_PLANS]);
    let url = settings.url.expose_secret().to_owned();
    let create = || async {
        if !sqlx::Postgres::database_exists(&url).await? {
            tracing::info!("creating database");
            // Two processes may race here; losing that race is fine.
            if let Err(e) = sqlx::Postgres::create_database(&url).await
                && !sqlx::Postgres::database_exists(&url).await?
            {
                return Err(e);
            }
        }
        Ok(())
    };
    with_startup_retry(settings.startup_timeout, create).await?;

    let migrating = unbounded_options(settings)?;
    let connect = || sqlx::PgConnection::connect_with(&migrating);
    let mut migration = with_startup_retry(settings.startup_timeout, connect).await?;
    if !up_to_date(&mut migration).await {
        MIGRATOR.run(&mut migration).await?;
    }
    let _ = migration.close().await;

    let pool_options = pool_options(settings.max_connections);
    let connect = || pool_options.clone().connect_with(options.clone());
    with_startup_retry(settings.startup_timeout, connect).await
}

/// Whether every migration of this program is applied, unchanged: then a role that may not
/// create tables (a production deployment's worker, with `identity-sync migrate` run by the
/// schema's owner) starts without trying. Anything else, unreadable included, is left to the
/// migrator, which says what is wrong.
async fn up_to_date(conn: &mut sqlx::PgConnection) -> bool {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(conn)
            .await
        {
            Ok(applied) => applied,
            Err(_) => return false,
        };
    MIGRATOR.iter().all(|m| {
        applied
            .iter()
            .any(|(version, checksum)| *version == m.version && *checksum == *m.checksum)
    })
}

/// Pool settings shared by the worker's pool and the relay's.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
}

async fn with_startup_retry<T, F, Fut>(limit: Duration, f: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    f.retry(crate::retry::builder(Duration::from_secs(5)).with_total_delay(Some(limit)))
        .when(still_starting)
        .notify(
            |e, delay| tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet"),
        )
        .await
        .map_err(|e| {
            if still_starting(&e) {
                DbError::Unreachable(started.elapsed(), e)
            } else {
                DbError::Refused(e)
            }
        })
}

/// At start, only a database that cannot be reached yet (down, starting, out of connections) is
/// waited for; a refusal (a wrong password, a role or database missing) stops the program at once
/// with its reason.
fn still_starting(error: &sqlx::Error) -> bool {
    matches!(
        classify(error),
        ErrorClass::System(
            SystemFault::Unavailable | SystemFault::Timeout | SystemFault::Resources
        )
    )
}

/// A pool of its own for one part of the process (the admin API, the readiness probe), so that
/// its load never takes the connections the worker decides logins with. Connects lazily.
/// Its connections carry `application_name = "identity-sync <role>"`, so that
/// `pg_stat_activity` tells the parts apart.
pub fn side_pool(
    settings: &DatabaseSettings,
    role: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    let options = connect_options(settings)?.application_name(&format!("identity-sync {role}"));
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// A side pool without the statement bound: for a command line that reads a whole table as one
/// streamed statement (`users export`), which may rightly outlive `database.statement_timeout`.
pub fn unbounded_side_pool(
    settings: &DatabaseSettings,
    role: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    let options = unbounded_options(settings)?.application_name(&format!("identity-sync {role}"));
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// A small pool for the outbox relay, whose writes (marking rows published) may be lost to a
/// crash without harm (the rows are published again): its commits do not wait for the disk. One
/// connection is kept by the task marking published rows, the others serve claims, counts,
/// heartbeats and vacuums.
pub fn relay_pool(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options = connect_options(settings)?
        .application_name("identity-sync relay")
        .options([("synchronous_commit", "off"), GENERIC_PLANS]);
    Ok(pool_options(4).connect_lazy_with(options))
}
