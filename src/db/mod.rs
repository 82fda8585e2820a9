//! PostgreSQL adapter: the pool, migrations, and one repository module per table. Repository
//! functions take a `&mut PgConnection` (usually a transaction) so that one transaction can span
//! every write of a batch.

pub mod audit;
pub mod batch;
pub mod bindings;
pub mod commands;
pub mod connections;
pub mod identities;
pub mod locks;
mod nodelay;
pub mod outbox;
pub mod processed;
pub mod types;
pub mod users;

use std::time::Duration;

use backon::Retryable;
use secrecy::ExposeSecret;
use sqlx::{
    ConnectOptions, PgPool,
    migrate::MigrateDatabase,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::settings::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url is invalid: {0}")]
    Url(sqlx::Error),
    #[error("database unreachable after {0:?}: {1}")]
    Unreachable(Duration, sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbError> {
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

    let pool_options = pool_options(settings.max_connections);
    let connect = || pool_options.clone().connect_with(options.clone());
    let pool = with_startup_retry(settings.startup_timeout, connect).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Pool settings shared by the worker's pool and the relay's.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
        .after_connect(|_, _| {
            Box::pin(async {
                nodelay::disable_nagle();
                Ok(())
            })
        })
}

async fn with_startup_retry<T, F, Fut>(limit: Duration, f: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    f.retry(crate::retry::builder(Duration::from_secs(5)).with_total_delay(Some(limit)))
        .when(is_transient)
        .notify(
            |e, delay| tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet"),
        )
        .await
        .map_err(|e| {
            if is_transient(&e) {
                DbError::Unreachable(started.elapsed(), e)
            } else {
                DbError::Url(e)
            }
        })
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

/// What a database error means for whoever met it: the one classification the worker and the
/// HTTP side share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another writer got in the way (serialization failure, deadlock, a unique violation from
    /// a concurrent insert): the same work, tried again, sees the other's result.
    Conflict,
    /// The database is unreachable, restarting, read-only during a failover, out of resources or
    /// timed out: the same work succeeds later.
    Unavailable,
    /// The database refuses the data itself (a check or a type): trying again cannot help.
    Permanent,
}

/// Classifies a database error.
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => ErrorClass::Unavailable,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // 40001 serialization_failure, 40P01 deadlock_detected, 23505 unique_violation;
            // 08xxx connection exceptions, 57P0x admin/crash shutdown, 57014 statement timeout
            // or cancel, 53xxx insufficient resources, 58xxx system (I/O) errors, 55P03
            // lock_not_available, 25006 read-only transaction (a standby during a failover).
            if matches!(code, "40001" | "40P01" | "23505") {
                ErrorClass::Conflict
            } else if matches!(code, "55P03" | "57014" | "25006")
                || code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("58")
            {
                ErrorClass::Unavailable
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// Failures that retrying the same work can cure: conflicts and unavailability.
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error) != ErrorClass::Permanent
}
