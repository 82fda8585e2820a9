//! Previewing proposed settings of a connection against its stored logins (contract section 8).
//! One read-only transaction streams the logins of the window, newest per identity, through a
//! cursor, a chunk at a time: each chunk's accounts are read in one statement and every login is
//! decided twice in memory, so time grows with the logins and memory with the chunk, not the
//! history. Nothing is written, published or audited.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Row as _};
use uuid::Uuid;

use super::{Admin, AdminError};
use crate::db::{connections, users};
use crate::domain::{
    ConnectionSettings,
    connection::ConnectionSpec,
    login::{NormalizedFields, Profile},
    simulation::{self, Accounts, Row, Tally},
};

/// Logins read and decided together: one statement for their accounts.
const CHUNK: i64 = 500;

/// Most accounts one chunk of logins may meet. Proposed settings matching on a value many
/// accounts share (a department as a match field) would otherwise make every chunk read and
/// compare them all; such a preview is refused (`simulation_too_large`).
pub const MAX_CHUNK_ACCOUNTS: i64 = 20_000;

/// The longest window a simulation takes.
pub const MAX_WINDOW: Duration = Duration::from_secs(3650 * 24 * 3600);

/// What a simulation found.
#[derive(Debug)]
pub struct Simulated {
    pub logins: u64,
    pub rows: Vec<Row>,
}

impl Admin {
    /// See [`simulate`].
    pub async fn simulate(
        &self,
        pool: &str,
        identifier: &str,
        proposed: ConnectionSpec,
        window: Duration,
        limit: Duration,
    ) -> Result<Simulated, AdminError> {
        simulate(&self.pool, pool, identifier, proposed, window, limit).await
    }
}

/// Decides the connection's logins of the last `window` again, latest per identity, under its
/// current and under the `proposed` settings, as first logins against today's accounts. Gives up
/// with `simulation_too_long` past `limit`.
pub async fn simulate(
    db: &PgPool,
    pool: &str,
    identifier: &str,
    mut proposed: ConnectionSpec,
    window: Duration,
    limit: Duration,
) -> Result<Simulated, AdminError> {
    super::connections::fix_path_keys(&mut proposed, pool, identifier)?;
    let proposed = ConnectionSettings::validate(&proposed)
        .map_err(|e| AdminError::invalid("invalid_field", Some(e.field), e.to_string()))?;
    let since = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| Utc::now().checked_sub_signed(w))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);

    let started = Instant::now();
    // One snapshot for the logins and the accounts; READ ONLY makes the database refuse any
    // write, whatever this code does.
    let mut tx = db
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    // No statement may outlive the simulation's own bound: each is given what is left of it.
    let mut run = Run {
        deadline: started + limit,
        limit,
        now: Utc::now(),
        tally: Tally::default(),
        skipped: 0,
    };
    time_left(&mut tx, run.deadline).await?;
    let current = stored_connection(&mut tx, pool, identifier).await?;
    // An unreadable connection of the pool (listed with its problem) adds nothing it could be
    // trusted to say.
    let pool_connections: Vec<ConnectionSettings> = connections::list(&mut tx)
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .filter(|c| c.user_pool_id.as_str() == pool)
        .collect();
    let settings = Compared {
        unique_now: simulation::unique_after(&pool_connections, &current),
        unique_then: simulation::unique_after(&pool_connections, &proposed),
        current,
        proposed,
    };
    declare_logins(&mut tx, pool, identifier, since)
        .await
        .map_err(|e| too_long(e, limit))?;
    while let Some(logins) = run.next_logins(&mut tx).await? {
        run.decide_chunk(&mut tx, &settings, &logins).await?;
    }
    tx.rollback().await?;
    if run.skipped > 0 {
        tracing::warn!(
            skipped = run.skipped,
            "stored login profiles that could not be read were left out of a simulation"
        );
    }
    Ok(Simulated {
        logins: run.tally.logins(),
        rows: run.tally.rows(),
    })
}

/// The connection's settings as stored now.
async fn stored_connection(
    tx: &mut PgConnection,
    pool: &str,
    identifier: &str,
) -> Result<ConnectionSettings, AdminError> {
    match connections::get_stored(tx, pool, identifier).await? {
        Some(Ok(current)) => Ok(current),
        Some(Err(unreadable)) => Err(AdminError::conflict(
            "connection_unreadable",
            format!(
                "connection {identifier} of user pool {pool} cannot be read ({}): mend it before \
                 previewing a change",
                unreadable.problem
            ),
        )),
        None => Err(AdminError::NotFound(format!(
            "no connection {identifier} in user pool {pool}"
        ))),
    }
}

/// The cursor over the window's logins, latest per identity.
async fn declare_logins(
    tx: &mut PgConnection,
    pool: &str,
    identifier: &str,
    since: chrono::DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"DECLARE simulated_logins NO SCROLL CURSOR FOR
               SELECT DISTINCT ON (external_id) external_id, profile
               FROM processed_events
               WHERE user_pool_id = $1 AND connection = $2 AND processed_at >= $3
                 AND external_id IS NOT NULL AND profile IS NOT NULL
               ORDER BY external_id, processed_at DESC"#,
    )
    .bind(pool)
    .bind(identifier)
    .bind(since)
    .execute(tx)
    .await?;
    Ok(())
}

/// The two settings a simulation compares, each with the attributes unique under it.
struct Compared {
    current: ConnectionSettings,
    proposed: ConnectionSettings,
    unique_now: Vec<crate::domain::attributes::AttributeName>,
    unique_then: Vec<crate::domain::attributes::AttributeName>,
}

/// A simulation under way: its bound and what it found so far.
struct Run {
    deadline: Instant,
    limit: Duration,
    /// The time every login is decided at.
    now: chrono::DateTime<Utc>,
    tally: Tally,
    /// Stored profiles that could not be read.
    skipped: u64,
}

impl Run {
    fn too_long(&self) -> AdminError {
        too_long_after(self.tally.logins(), self.limit)
    }

    /// The next chunk of stored logins; `None` past the last.
    async fn next_logins(
        &mut self,
        tx: &mut PgConnection,
    ) -> Result<Option<Vec<(String, Profile)>>, AdminError> {
        if !time_left(tx, self.deadline).await? {
            return Err(self.too_long());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "FETCH {CHUNK} FROM simulated_logins"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| too_long(e, self.limit))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut logins = Vec::with_capacity(rows.len());
        for row in rows {
            let external_id: String = row.try_get("external_id")?;
            let profile: Value = row.try_get("profile")?;
            let empty = Map::new();
            let map = profile.as_object().unwrap_or(&empty);
            // A stored profile passed these checks when its login was decided.
            match Profile::from_map(map) {
                Ok(profile) => logins.push((external_id, profile)),
                Err(_) => self.skipped += 1,
            }
        }
        Ok(Some(logins))
    }

    /// Decides a chunk of logins under both settings, against the accounts they could meet.
    async fn decide_chunk(
        &mut self,
        tx: &mut PgConnection,
        settings: &Compared,
        logins: &[(String, Profile)],
    ) -> Result<(), AdminError> {
        if !time_left(tx, self.deadline).await? {
            return Err(self.too_long());
        }
        let chunk = Chunk::read(tx, &settings.current, &settings.proposed, logins)
            .await
            .map_err(|e| too_long(e, self.limit))?;
        if chunk.users.len() as i64 > MAX_CHUNK_ACCOUNTS {
            return Err(AdminError::invalid(
                "simulation_too_large",
                Some("match_fields"),
                format!(
                    "{MAX_CHUNK_ACCOUNTS} or more accounts share values with 500 logins of the \
                     window: match on values that tell people apart"
                ),
            ));
        }
        let now = self.now;
        for (n, (external_id, profile)) in logins.iter().enumerate() {
            // Long chunks give the runtime back now and then, and stop at the deadline.
            if n % 100 == 99 {
                if Instant::now() > self.deadline {
                    return Err(self.too_long());
                }
                tokio::task::yield_now().await;
            }
            let accounts = Accounts {
                users: &chunk.users,
                own_account: chunk.own.get(external_id.as_str()).copied(),
            };
            let (current, unique) = (&settings.current, &settings.unique_now);
            let from = simulation::first_login(profile, current, unique, &accounts, now);
            let (proposed, unique) = (&settings.proposed, &settings.unique_then);
            let to = simulation::first_login(profile, proposed, unique, &accounts, now);
            self.tally.add(from, to, external_id);
        }
        Ok(())
    }
}

/// The accounts a chunk of logins could meet under either settings, and the account each of its
/// identities is linked to today.
struct Chunk {
    users: Vec<crate::domain::decision::PoolUser>,
    own: HashMap<String, Uuid>,
}

impl Chunk {
    async fn read(
        conn: &mut PgConnection,
        current: &ConnectionSettings,
        proposed: &ConnectionSettings,
        logins: &[(String, Profile)],
    ) -> sqlx::Result<Self> {
        let pool = current.user_pool_id.as_str();
        let connection = current.identifier.as_str();
        let mut keys = users::FieldKeys::default();
        for (_, profile) in logins {
            for settings in [current, proposed] {
                keys.add(pool, &NormalizedFields::of(profile, settings), settings);
            }
        }
        let users = users::find_by_fields_up_to(conn, pool, &keys, MAX_CHUNK_ACCOUNTS + 1)
            .await?
            .iter()
            .map(|u| u.pool_user(connection))
            .collect();
        let external_ids: Vec<&str> = logins.iter().map(|(id, _)| id.as_str()).collect();
        let own = sqlx::query!(
            r#"SELECT external_id, user_id FROM identities
               WHERE external_id = ANY($3::text[]) AND connection = $2 AND user_pool_id = $1"#,
            pool,
            connection,
            &external_ids as &[&str],
        )
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|r| (r.external_id, r.user_id))
        .collect();
        Ok(Self { users, own })
    }
}

/// Bounds the next statements by what is left until `deadline`; `false` when nothing is.
async fn time_left(conn: &mut PgConnection, deadline: Instant) -> sqlx::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let millis = left.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL statement_timeout = {millis}"
    )))
    .execute(conn)
    .await?;
    Ok(true)
}

/// A statement cancelled by the simulation's statement timeout means the window is too large.
fn too_long(error: sqlx::Error, limit: Duration) -> AdminError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            too_long_after(0, limit)
        }
        _ => error.into(),
    }
}

fn too_long_after(logins: u64, limit: Duration) -> AdminError {
    let read = if logins > 0 {
        format!(" ({logins} logins decided by then)")
    } else {
        String::new()
    };
    AdminError::invalid(
        "simulation_too_long",
        Some("since"),
        format!(
            "the simulation did not finish within {}{read}: choose a shorter since",
            humantime::format_duration(limit)
        ),
    )
}
