//! `simulate`: previewing a connection change over a large stored history. Seeds `logins`
//! identities' logins (and a tenth more, older logins of the same identities) on one connection,
//! half of them carrying the verified email of an account, then times the preview of switching
//! field matching on, and checks its table: half linked, half created.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;

use identity_sync::{
    admin::simulation,
    db::connections,
    domain::{ConnectionSettings, connection::ConnectionSpec, decision::Outcome},
    settings::Settings,
};

use super::{env::Env, mix::POOL};

#[derive(Debug, Serialize)]
pub struct SimulateRun {
    pub logins: u64,
    pub stored_logins: u64,
    pub seconds: f64,
    pub logins_per_second: f64,
    /// The benchmark process's peak resident memory while simulating, above what it held before.
    pub peak_rss_growth_mib: f64,
    pub exact: bool,
}

pub async fn run(logins: usize, worker_bin: &std::path::Path) -> anyhow::Result<SimulateRun> {
    let env = Env::create(64, 100).await?;
    env.migrate(worker_bin)?;
    let db = PgPool::connect(&env.db_url).await?;
    let settings = Settings::load(Some(&env.config))?;
    let mut conn = db.acquire().await?;
    for connection in &settings.connections {
        let settings = ConnectionSettings::validate(connection)
            .map_err(|e| anyhow::anyhow!("the benchmark's connection: {e}"))?;
        connections::upsert(&mut conn, &settings).await?;
    }
    drop(conn);
    let stored = seed(&db, logins as i64).await?;

    let proposed = ConnectionSpec {
        association: Some("field_matching".into()),
        match_fields: Some(vec!["email".into()]),
        ..Default::default()
    };
    let before = rss_mib("VmRSS");
    // Resets the peak (VmHWM) to the current size, so that the peak read after is the run's.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let started = Instant::now();
    let simulated = simulation::simulate(
        &db,
        POOL,
        "fresh",
        proposed,
        Duration::from_secs(31 * 24 * 3600),
        Duration::from_secs(600),
    )
    .await
    .map_err(|e| anyhow::anyhow!("simulating: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = rss_mib("VmHWM");
    db.close().await;

    let count = |from: Outcome, to: Outcome| {
        simulated
            .rows
            .iter()
            .find(|r| r.from == from && r.to == to)
            .map_or(0, |r| r.count)
    };
    let half = (logins / 2) as u64;
    let exact = simulated.logins == logins as u64
        && count(Outcome::UserCreated, Outcome::UserLinked) == half
        && count(Outcome::UserCreated, Outcome::UserCreated) == logins as u64 - half
        && simulated.rows.len() == 2;
    if !exact {
        bail!("unexpected table: {:?}", simulated.rows);
    }
    Ok(SimulateRun {
        logins: simulated.logins,
        stored_logins: stored,
        seconds,
        logins_per_second: simulated.logins as f64 / seconds,
        peak_rss_growth_mib: (peak - before).max(0.0),
        exact,
    })
}

/// One login per identity within the last 30 days, and an older one for every tenth; the first
/// half of the identities' emails belong to accounts. Returns the rows stored.
async fn seed(db: &PgPool, logins: i64) -> anyhow::Result<u64> {
    sqlx::query(
        "INSERT INTO users (id, user_pool_id, email, email_verified)
         SELECT gen_random_uuid(), $1, 's' || n || '@bench.example', true
         FROM generate_series(0, $2 / 2 - 1) AS n",
    )
    .bind(POOL)
    .bind(logins)
    .execute(db)
    .await?;
    let latest = sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome, user_pool_id, connection,
                                       settings_version, external_id, profile, processed_at)
         SELECT 'urn:bench', 'l-' || n, 'user_created', $1, 'fresh', 1, 'sim-' || n,
                jsonb_build_object('email', 'S' || n || '@Bench.Example', 'email_verified', true,
                                   'name', 'Person ' || n),
                now() - (n % 29) * interval '1 day' - interval '1 minute'
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(POOL)
    .bind(logins)
    .execute(db)
    .await?
    .rows_affected();
    // Older logins of the same identities, with an email nobody holds: only the latest counts.
    let older = sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome, user_pool_id, connection,
                                       settings_version, external_id, profile, processed_at)
         SELECT 'urn:bench', 'o-' || n, 'user_created', $1, 'fresh', 1, 'sim-' || n,
                jsonb_build_object('email', 'old' || n || '@bench.example', 'email_verified', true),
                now() - interval '30 days'
         FROM generate_series(0, $2 - 1, 10) AS n",
    )
    .bind(POOL)
    .bind(logins)
    .execute(db)
    .await?
    .rows_affected();
    sqlx::query("ANALYZE").execute(db).await?;
    Ok(latest + older)
}

/// A memory figure of this process from /proc/self/status, in MiB.
fn rss_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
