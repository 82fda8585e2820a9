//! Retention: published events older than `outbox.retention` and dedupe records older than
//! `worker.dedupe_retention` are deleted in the background, in small chunks so that no delete
//! holds locks for long.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{commands, outbox, processed},
    metrics::{KindLabel, Metrics},
    settings::Settings,
};

const CHUNK: i64 = 5_000;

/// Prunes once; returns (events, dedupe records) removed.
pub async fn prune(
    pool: &PgPool,
    settings: &Settings,
    metrics: &Metrics,
) -> sqlx::Result<(u64, u64)> {
    // Settings bound every duration, but the arithmetic saturates anyway: a cut-off before the
    // clock's range keeps everything.
    let cutoff = |d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    };
    let events_before = cutoff(settings.outbox.retention);
    let processed_before = settings.worker.dedupe_retention.map(cutoff);
    let (mut events, mut records) = (0, 0);
    loop {
        let n = outbox::prune_events(pool, events_before, CHUNK).await?;
        events += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    while let Some(before) = processed_before {
        let logins = processed::prune(pool, before, CHUNK).await?;
        let commands = commands::prune(pool, before, CHUNK).await?;
        records += logins + commands;
        if logins.max(commands) < CHUNK as u64 {
            break;
        }
    }
    // Applied removals count toward a guard's window only (7 days at most).
    let mut conn = pool.acquire().await?;
    crate::db::leavers::prune_removals(&mut conn, cutoff(REMOVALS_KEPT)).await?;
    let deliveries_before = cutoff(settings.webhooks.delivery_retention);
    while crate::db::webhooks::prune(&mut conn, deliveries_before, CHUNK).await? == CHUNK as u64 {}
    drop(conn);
    metrics
        .pruned
        .get_or_create(&KindLabel { kind: "event" })
        .inc_by(events);
    metrics
        .pruned
        .get_or_create(&KindLabel { kind: "processed" })
        .inc_by(records);
    Ok((events, records))
}

/// How long an applied removal is kept: the longest `removal_guard.window`.
const REMOVALS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

pub async fn run(
    pool: PgPool,
    settings: std::sync::Arc<Settings>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        #[cfg(feature = "failpoints")]
        if crate::failpoint::armed("retention.panic") {
            panic!("failpoint retention.panic");
        }
        let bound = settings.database.stall_timeout * 4;
        let pruned = tokio::time::timeout(bound, prune(&pool, &settings, &metrics))
            .await
            .unwrap_or_else(|_| Err(crate::db::stalled("pruning")));
        match pruned {
            Ok((0, 0)) => {}
            Ok((events, records)) => tracing::info!(events, records, "retention pruned old rows"),
            Err(error) => tracing::warn!(%error, "retention failed; retrying later"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.outbox.prune_interval) => {}
        }
    }
}
