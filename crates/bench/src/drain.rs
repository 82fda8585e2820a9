//! Drain mode: a backlog of logins is queued with no worker running; then the worker starts and
//! empties it. Throughput is counted from the first decision to the last.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use lapin::{
    options::{ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::Serialize;
use sqlx::PgPool;

use super::{
    baseline,
    env::Env,
    mix::{Mix, SOURCE},
};
use identity_sync::settings::Settings;

#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    pub events: usize,
    pub seconds: f64,
    /// Logins decided per second, until the last decision.
    pub events_per_second: f64,
    /// Logins per second until every effect was published (the outbox drained): what the ratio
    /// compares with the baseline, which republishes every message with a confirm.
    pub drained_events_per_second: f64,
    pub baseline_events_per_second: Option<f64>,
    pub ratio: Option<f64>,
    /// The same-work baseline (`same_work`): the same logins' database and broker work with no
    /// decision logic, on a database seeded the same way; and the drain as a ratio to it.
    pub same_work_per_second: Option<f64>,
    pub same_work_ratio: Option<f64>,
    /// WAL per login of the same-work baseline (the worker's is `wal_bytes_per_event`).
    pub same_work_wal_bytes_per_event: Option<f64>,
    /// CPU per login (microseconds) of PostgreSQL and RabbitMQ while the worker drained (from
    /// its start to the outbox drained; the worker's own is `cpu_us_per_event`).
    pub services_cpu_us_per_event: super::services::Spent,
    /// CPU per login of PostgreSQL, RabbitMQ and the probe itself (`own`) during the same-work
    /// baseline.
    pub same_work_cpu_us_per_event: Option<super::services::Spent>,
    pub outbox_drained_seconds: f64,
    pub peak_rss_mib: f64,
    pub cpu_us_per_event: f64,
    pub outcomes: BTreeMap<String, i64>,
    pub one_decision_per_event: bool,
    /// WAL the whole PostgreSQL server wrote during the run, per login (other databases of the
    /// server count too: run on a quiet machine).
    pub wal_bytes_per_event: f64,
    /// Rows inserted, updated (of which HOT) and deleted per login, by table.
    pub writes_per_event: BTreeMap<String, TableWrites>,
    /// With `--webhook`: the deliveries to the endpoint subscribed to every event.
    pub webhook: Option<WebhookRun>,
}

/// The deliveries of a drain to one local receiver subscribed to every event.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRun {
    pub deliveries: usize,
    /// From the first delivery received to the last.
    pub deliveries_per_second: f64,
    /// From the drain's start until every delivery was delivered.
    pub delivered_seconds: f64,
    /// Every event was received, and none twice.
    pub each_once: bool,
}

/// Row writes of one table, per login.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableWrites {
    pub inserted: f64,
    pub updated: f64,
    pub hot_updated: f64,
    pub deleted: f64,
}

/// The server's WAL position and every table's cumulative row writes.
async fn write_counters(db: &PgPool) -> anyhow::Result<(i64, BTreeMap<String, [i64; 4]>)> {
    let wal: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        .fetch_one(db)
        .await?;
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
         FROM pg_stat_user_tables",
    )
    .fetch_all(db)
    .await?;
    Ok((
        wal,
        rows.into_iter()
            .map(|(t, i, u, h, d)| (t, [i, u, h, d]))
            .collect(),
    ))
}

fn writes_between(
    before: &BTreeMap<String, [i64; 4]>,
    after: &BTreeMap<String, [i64; 4]>,
    events: f64,
) -> BTreeMap<String, TableWrites> {
    after
        .iter()
        .filter_map(|(table, a)| {
            let b = before.get(table).copied().unwrap_or_default();
            let d: Vec<f64> = (0..4).map(|i| (a[i] - b[i]) as f64 / events).collect();
            (d.iter().any(|v| *v > 0.0)).then(|| {
                (
                    table.clone(),
                    TableWrites {
                        inserted: d[0],
                        updated: d[1],
                        hot_updated: d[2],
                        deleted: d[3],
                    },
                )
            })
        })
        .collect()
}

pub struct DrainOptions<'a> {
    pub events: usize,
    pub workers: usize,
    pub prefetch: u16,
    pub batch_size: usize,
    pub baseline: bool,
    pub worker_bin: &'a Path,
    /// More accounts in the pool, imported before the seed.
    pub accounts: usize,
    pub mix: super::mix::MixKind,
    /// Subscribe a local webhook receiver to every event.
    pub webhook: bool,
    /// The same-work baseline's batch size and batches side by side.
    pub same_work_batch: usize,
    pub same_work_parallel: usize,
}

async fn decided(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE source = $1")
        .bind(SOURCE)
        .fetch_one(db)
        .await
        .unwrap_or(-1)
}

/// Declares the topology and a subscriber queue receiving every outbound event, as production
/// has; returns the broker settings of the environment.
pub async fn prepare_broker(env: &Env) -> anyhow::Result<(lapin::Connection, Settings)> {
    let settings = Settings::load_file(&env.config)?;
    let connection = env.broker().await?;
    let channel = connection.create_channel().await?;
    identity_sync::amqp::topology::declare(&channel, &settings.amqp).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("bench.subscriber".into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            "bench.subscriber".into(),
            settings.amqp.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, settings))
}

/// Declares the topology (with the subscriber queue) and queues `bodies` as logins with
/// confirms, before any worker runs; returns the connection and the broker settings.
pub(crate) async fn queue_backlog(
    env: &Env,
    bodies: &[Vec<u8>],
) -> anyhow::Result<(lapin::Connection, Settings)> {
    let (connection, settings) = prepare_broker(env).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    baseline::publish_all(
        &channel,
        &settings.amqp.inbound_exchange,
        &settings.amqp.routing_key,
        bodies,
    )
    .await?;
    Ok((connection, settings))
}

pub async fn run(options: &DrainOptions<'_>) -> anyhow::Result<DrainRun> {
    let env = Env::create(options.prefetch, options.batch_size).await?;
    let mix = Mix::new(options.mix, options.events);
    let db = env
        .prepare(options.worker_bin, &mix, options.accounts)
        .await?;
    let bodies = mix.events("d-");
    let receiver = if options.webhook {
        Some(subscribe_receiver(&db).await?)
    } else {
        None
    };
    let (connection, settings) = queue_backlog(&env, &bodies).await?;
    eprintln!(
        "bench {}: {} logins queued; starting {} worker(s)",
        env.id,
        bodies.len(),
        options.workers
    );

    // Statistics of the seed reach the counters first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (wal_before, tables_before) = write_counters(&db).await?;
    let services_before = super::services::Snapshot::now();
    let workers = env.start_workers(options.worker_bin, options.workers)?;
    let total = bodies.len() as i64;
    let (started, finished, outbox_drained) =
        wait_until_drained(&connection, &settings, &db, total).await?;
    let services = super::services::Snapshot::now()
        .since(&services_before)
        .per(bodies.len());
    let webhook = match &receiver {
        Some(receiver) => Some(webhook_delivered(receiver, &db, started).await?),
        None => None,
    };
    let (peak_rss_mib, cpu_seconds) = workers.stats();
    workers.stop();
    // Backends report their counters within a second or so of going idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (wal_after, tables_after) = write_counters(&db).await?;
    let writes_per_event = writes_between(&tables_before, &tables_after, total as f64);

    let (outcomes, exact) = outcomes(&db, &mix, total).await?;
    db.close().await;
    let _ = connection.close(200, "done".into()).await;

    let seconds = (finished - started).as_secs_f64();
    let events_per_second = total as f64 / seconds;
    let drained_events_per_second = total as f64 / outbox_drained;
    let baseline_eps = if options.baseline {
        eprintln!("bench {}: raw broker baseline", env.id);
        Some(
            baseline::run(
                &env,
                &bodies,
                options.prefetch,
                options.batch_size,
                settings.amqp.delivery_limit,
            )
            .await?,
        )
    } else {
        None
    };
    let same_work = if options.baseline {
        eprintln!("bench {}: same-work baseline", env.id);
        Some(same_work(options, &mix, &bodies).await?)
    } else {
        None
    };
    Ok(DrainRun {
        events: bodies.len(),
        seconds,
        events_per_second,
        drained_events_per_second,
        baseline_events_per_second: baseline_eps,
        ratio: baseline_eps.map(|b| drained_events_per_second / b),
        same_work_per_second: same_work.map(|(rate, ..)| rate),
        same_work_ratio: same_work.map(|(rate, ..)| drained_events_per_second / rate),
        same_work_wal_bytes_per_event: same_work.map(|(_, wal, _)| wal),
        services_cpu_us_per_event: services,
        same_work_cpu_us_per_event: same_work.map(|(.., cpu)| cpu),
        outbox_drained_seconds: outbox_drained,
        peak_rss_mib,
        cpu_us_per_event: cpu_seconds * 1e6 / total as f64,
        outcomes,
        one_decision_per_event: exact,
        wal_bytes_per_event: (wal_after - wal_before) as f64 / total as f64,
        writes_per_event,
        webhook,
    })
}

/// The same-work baseline on an environment of its own, seeded as the worker's was, with the
/// same logins queued: logins per second, WAL bytes per login, and the CPU per login of the
/// database, the broker and the probe.
async fn same_work(
    options: &DrainOptions<'_>,
    mix: &Mix,
    bodies: &[Vec<u8>],
) -> anyhow::Result<(f64, f64, super::services::Spent)> {
    let env = Env::create(options.prefetch, options.batch_size).await?;
    let db = env
        .prepare(options.worker_bin, mix, options.accounts)
        .await?;
    let (connection, settings) = queue_backlog(&env, bodies).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (wal_before, _) = write_counters(&db).await?;
    let services_before = super::services::Snapshot::now();
    let rate = super::same_work::run(
        &env,
        &db,
        &settings,
        bodies.len(),
        options.same_work_batch,
        options.same_work_parallel,
    )
    .await?;
    let cpu = super::services::Snapshot::now()
        .since(&services_before)
        .per(bodies.len());
    let (wal_after, _) = write_counters(&db).await?;
    db.close().await;
    let _ = connection.close(200, "done".into()).await;
    Ok((
        rate,
        (wal_after - wal_before) as f64 / bodies.len() as f64,
        cpu,
    ))
}

/// A local receiver, and an endpoint of the pool subscribed to every event pointing at it.
async fn subscribe_receiver(db: &PgPool) -> anyhow::Result<idsync_test_support::Receiver> {
    use identity_sync::domain::webhooks::{TypeFilter, new_secret};
    let receiver = idsync_test_support::Receiver::start().await;
    let filter = TypeFilter::everything();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, user_pool_id, url, event_types, type_regex, secret)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(super::mix::POOL)
    .bind(&receiver.url)
    .bind(filter.patterns())
    .bind(filter.regex())
    .bind(new_secret())
    .execute(db)
    .await?;
    Ok(receiver)
}

/// Waits until every delivery is delivered; the figures of the receiver.
async fn webhook_delivered(
    receiver: &idsync_test_support::Receiver,
    db: &PgPool,
    started: Instant,
) -> anyhow::Result<WebhookRun> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'",
        )
        .fetch_one(db)
        .await?;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} webhook deliveries not delivered within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_seconds = started.elapsed().as_secs_f64();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = 'event'")
        .fetch_one(db)
        .await?;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let span = match (received.first(), received.last()) {
        (Some(first), Some(last)) => (last.at - first.at).as_secs_f64(),
        _ => 0.0,
    };
    Ok(WebhookRun {
        deliveries: received.len(),
        deliveries_per_second: received.len() as f64 / span.max(1e-9),
        delivered_seconds,
        each_once: ids.len() == received.len() && ids.len() as i64 == events,
    })
}

/// Waits until the work queue is empty, every login decided and the outbox published; returns
/// when consumption started, when the last login was decided, and the seconds until the outbox
/// was drained.
pub(crate) async fn wait_until_drained(
    connection: &lapin::Connection,
    settings: &Settings,
    db: &PgPool,
    total: i64,
) -> anyhow::Result<(Instant, Instant, f64)> {
    // Progress is read from the broker (cheap) while the queue empties, and from the database
    // (a count that is not free) only for the last deliveries, so that measuring does not take
    // the database's time from the worker.
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let waiting = || async {
        probe
            .queue_declare(
                settings.amqp.work_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count() as i64)
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    let started = loop {
        if waiting().await? < total {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the worker did not start consuming");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    while waiting().await? > 0 {
        if Instant::now() > deadline {
            bail!("the queue was not drained within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = loop {
        let done = decided(db).await;
        if done >= total {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("not every login was decided ({done}/{total})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
            .fetch_one(db)
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((started, finished, started.elapsed().as_secs_f64()))
}

/// The outcomes of the run's logins, and whether each login got exactly one decision of the
/// kind the mix expects.
async fn outcomes(
    db: &PgPool,
    mix: &Mix,
    total: i64,
) -> anyhow::Result<(BTreeMap<String, i64>, bool)> {
    let outcomes: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT outcome, count(*) FROM processed_events WHERE source = $1 GROUP BY 1",
    )
    .bind(SOURCE)
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    let exact = decided(db).await == total
        && mix
            .expected()
            .iter()
            .all(|(outcome, n)| outcomes.get(*outcome).copied().unwrap_or(0) == *n as i64);
    Ok((outcomes, exact))
}
