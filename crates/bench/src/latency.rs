//! Latency mode: logins are published at a fixed rate, each asking for a reply; the time from
//! publishing to the decision's reply, and to the downstream event it causes, is measured.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use anyhow::bail;
use lapin::{
    options::{BasicConsumeOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use serde::Serialize;
use serde_json::Value;

use super::{
    drain::prepare_broker,
    env::Env,
    mix::Mix,
    pace::{self, Clock},
};

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            samples[((samples.len() - 1) as f64 * q).round() as usize]
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// The broker alone: a bare consumer answering at once.
    pub baseline_reply: Option<Percentiles>,
    /// The same-work pipeline (`same_work`) at the same rate: publish to its reply, and to the
    /// event it published.
    pub same_work_reply: Option<Percentiles>,
    pub same_work_event: Option<Percentiles>,
    pub offered_rate: u32,
    pub achieved_rate: f64,
    pub events: usize,
    pub reply: Percentiles,
    pub downstream_event: Percentiles,
    pub missing_replies: usize,
    pub peak_rss_mib: f64,
    pub cpu_us_per_event: f64,
    /// The reply p99 of each 30 s of the measured run, in order: where the tail grows.
    pub reply_p99_by_30s: Vec<f64>,
    /// The largest worker's resident memory, the most of each 30 s of the measured run (sampled
    /// every second): whether memory stays flat.
    pub rss_mib_by_30s: Vec<f64>,
    /// What the database did meanwhile: checkpoints, autovacuum runs and dead rows by table.
    pub database: Value,
}

pub struct LatencyOptions<'a> {
    pub rate: u32,
    pub duration: Duration,
    /// Logins sent first at the same rate and left out of the figures (connections, prepared
    /// statements and caches warm up).
    pub warmup: Duration,
    pub workers: usize,
    pub prefetch: u16,
    pub batch_size: usize,
    pub baseline: bool,
    pub worker_bin: &'a Path,
    /// More accounts in the pool, imported before the seed.
    pub accounts: usize,
    /// The same-work pipeline's largest batch and batches side by side.
    pub same_work_batch: usize,
    pub same_work_parallel: usize,
}

const PREFIX: &str = "l-";

pub async fn run(options: &LatencyOptions<'_>) -> anyhow::Result<LatencyRun> {
    if options.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let warmup = (options.rate as f64 * options.warmup.as_secs_f64()).ceil() as usize;
    let total = warmup + (options.rate as f64 * options.duration.as_secs_f64()).ceil() as usize;
    let env = Env::create(options.prefetch, options.batch_size).await?;
    let mix = Mix::of(total.max(20));
    let db = env
        .prepare(options.worker_bin, &mix, options.accounts)
        .await?;
    let bodies = mix.events(PREFIX);
    let (connection, settings) = prepare_broker(&env).await?;
    let workers = env.start_workers(options.worker_bin, options.workers)?;
    workers
        .wait_consuming(&connection, &settings.amqp.work_queue)
        .await?;

    let clock = Clock::new(bodies.len(), warmup);
    let listening = listen(&connection, &clock).await?;
    let (reply_queue, reply_latencies, event_latencies) = (
        &listening.reply_queue,
        &listening.replies,
        &listening.events,
    );
    eprintln!(
        "bench {}: {} logins at {}/s",
        env.id,
        bodies.len(),
        options.rate
    );
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (_, cpu_before) = workers.stats();
    let database_before = database_state(&db).await?;
    let memory = sample_memory(workers.pids(), options.warmup);
    let publishing = pace::publish(
        &publisher,
        &settings.amqp.inbound_exchange,
        &settings.amqp.routing_key,
        &bodies,
        options.rate,
        reply_queue,
        &clock,
    )
    .await?;
    let measured = clock.measured();
    pace::wait_for(reply_latencies, measured, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (peak_rss_mib, cpu_after) = workers.stats();
    let rss_mib_by_30s = memory.finish().await;
    let database_after = database_state(&db).await?;
    workers.stop();
    listening.stop();
    let _ = connection.close(200, "done".into()).await;
    db.close().await;
    let rate = options.rate as f64;
    let mut windows: Vec<Vec<f64>> = Vec::new();
    for (index, ms) in pace::take_indexed(reply_latencies) {
        let window = ((index.saturating_sub(warmup)) as f64 / rate / 30.0) as usize;
        if windows.len() <= window {
            windows.resize(window + 1, Vec::new());
        }
        windows[window].push(ms);
    }
    let reply_p99_by_30s = windows
        .into_iter()
        .map(|w| Percentiles::of(w).p99_ms)
        .collect();
    let database = compare_database(&database_before, &database_after);

    let baseline_reply = if options.baseline {
        let limit = settings.amqp.delivery_limit;
        Some(baseline(&env, &bodies, options, limit, warmup).await?)
    } else {
        None
    };
    let (same_work_reply, same_work_event) = if options.baseline {
        let (reply, event) = same_work(options, &mix, &bodies, warmup).await?;
        (Some(reply), Some(event))
    } else {
        (None, None)
    };
    let reply = Percentiles::of(pace::take(reply_latencies));
    let downstream_event = Percentiles::of(pace::take(event_latencies));
    Ok(LatencyRun {
        baseline_reply,
        same_work_reply,
        same_work_event,
        offered_rate: options.rate,
        achieved_rate: bodies.len() as f64 / publishing,
        events: measured,
        missing_replies: measured - reply.count,
        reply,
        downstream_event,
        peak_rss_mib,
        cpu_us_per_event: (cpu_after - cpu_before) * 1e6 / bodies.len() as f64,
        reply_p99_by_30s,
        rss_mib_by_30s,
        database,
    })
}

/// Checkpoints of the server, and each table's autovacuum runs, dead rows and size.
async fn database_state(db: &sqlx::PgPool) -> anyhow::Result<Value> {
    let checkpoints: (i64, i64) =
        sqlx::query_as("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter")
            .fetch_one(db)
            .await?;
    let tables: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, autovacuum_count, autoanalyze_count, n_dead_tup,
                pg_total_relation_size(relid)
         FROM pg_stat_user_tables ORDER BY relname",
    )
    .fetch_all(db)
    .await?;
    Ok(serde_json::json!({
        "checkpoints": checkpoints.0 + checkpoints.1,
        "tables": tables.into_iter().map(|(t, v, a, d, size)| (t, serde_json::json!({
            "autovacuums": v, "autoanalyzes": a, "dead_rows": d, "bytes": size})))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// What changed between two `database_state`s: checkpoints and autovacuum runs during the run,
/// dead rows and size at its end.
fn compare_database(before: &Value, after: &Value) -> Value {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let mut tables = serde_json::Map::new();
    if let Some(after_tables) = after["tables"].as_object() {
        for (table, a) in after_tables {
            let b = &before["tables"][table];
            let grew = n(&a["bytes"]) - n(&b["bytes"]);
            if grew == 0 && n(&a["autovacuums"]) == n(&b["autovacuums"]) {
                continue;
            }
            tables.insert(
                table.clone(),
                serde_json::json!({
                    "autovacuums": n(&a["autovacuums"]) - n(&b["autovacuums"]),
                    "dead_rows_at_end": n(&a["dead_rows"]),
                    "mib_at_end": n(&a["bytes"]) as f64 / 1048576.0,
                    "mib_grown": grew as f64 / 1048576.0,
                }),
            );
        }
    }
    serde_json::json!({
        "checkpoints": n(&after["checkpoints"]) - n(&before["checkpoints"]),
        "tables": tables,
    })
}

/// Where a run's replies and downstream events arrive, with the latency of each collected as
/// it comes.
struct Listening {
    reply_queue: lapin::types::ShortString,
    replies: pace::Samples,
    events: pace::Samples,
    tasks: [JoinHandle<()>; 2],
}

impl Listening {
    fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A private reply queue and the subscriber queue, each collecting latencies on `clock`.
async fn listen(connection: &lapin::Connection, clock: &Arc<Clock>) -> anyhow::Result<Listening> {
    let channel = connection.create_channel().await?;
    let (reply_queue, replies) = identity_sync::amqp::private_queue(&channel).await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let events = channel
        .basic_consume(
            "bench.subscriber".into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;

    let (reply_latencies, reply_task) =
        pace::collect(replies, clock.clone(), pace::by_correlation_id);
    // A downstream event names the login that caused it.
    let (event_latencies, event_task) = pace::collect(events, clock.clone(), |delivery| {
        serde_json::from_slice::<Value>(&delivery.data)
            .ok()?
            .pointer("/data/cause_event_id")?
            .as_str()?
            .strip_prefix(PREFIX)?
            .parse()
            .ok()
    });

    Ok(Listening {
        reply_queue,
        replies: reply_latencies,
        events: event_latencies,
        tasks: [reply_task, event_task],
    })
}

/// Raw broker round trips at the same rate, measured the same way.
async fn baseline(
    env: &Env,
    bodies: &[Vec<u8>],
    options: &LatencyOptions<'_>,
    delivery_limit: u32,
    warmup: usize,
) -> anyhow::Result<Percentiles> {
    eprintln!("bench {}: raw broker round trips at the same rate", env.id);
    let samples = super::baseline::round_trips(
        env,
        bodies,
        options.rate,
        options.prefetch,
        delivery_limit,
        warmup,
    )
    .await?;
    Ok(Percentiles::of(samples))
}

/// The same-work pipeline (`same_work`) on an environment of its own, seeded as the worker's
/// was, answering the same logins published at the same rate: publish to reply and publish to
/// event, measured the same way. Its batches are what is waiting when one starts, as the
/// worker's are.
async fn same_work(
    options: &LatencyOptions<'_>,
    mix: &Mix,
    bodies: &[Vec<u8>],
    warmup: usize,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let env = Env::create(options.prefetch, options.batch_size).await?;
    eprintln!("bench {}: the same-work pipeline at the same rate", env.id);
    let db = env
        .prepare(options.worker_bin, mix, options.accounts)
        .await?;
    let (connection, settings) = prepare_broker(&env).await?;
    let clock = Clock::new(bodies.len(), warmup);
    let listening = listen(&connection, &clock).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let probe = super::same_work::run(
        &env,
        &db,
        &settings,
        bodies.len(),
        options.same_work_batch,
        options.same_work_parallel,
    );
    let publishing = async {
        pace::publish(
            &publisher,
            &settings.amqp.inbound_exchange,
            &settings.amqp.routing_key,
            bodies,
            options.rate,
            &listening.reply_queue,
            &clock,
        )
        .await?;
        anyhow::Ok(())
    };
    tokio::try_join!(probe, publishing)?;
    pace::wait_for(
        &listening.replies,
        clock.measured(),
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    listening.stop();
    let _ = connection.close(200, "done".into()).await;
    db.close().await;
    let reply = Percentiles::of(pace::take(&listening.replies));
    if reply.count < clock.measured() {
        bail!(
            "the same-work pipeline answered {} of {} logins",
            reply.count,
            clock.measured()
        );
    }
    Ok((reply, Percentiles::of(pace::take(&listening.events))))
}

/// Samples the largest worker's resident memory every second from now, after `warmup`, until
/// [`SampledMemory::finish`].
fn sample_memory(pids: Vec<u32>, warmup: Duration) -> SampledMemory {
    let windows = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let task = tokio::spawn({
        let windows = windows.clone();
        async move {
            let start = tokio::time::Instant::now() + warmup;
            tokio::time::sleep_until(start).await;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let rss = pids
                    .iter()
                    .map(|pid| super::env::rss_mib(*pid))
                    .fold(0.0, f64::max);
                let window = (start.elapsed().as_secs_f64() / 30.0) as usize;
                let mut windows = windows.lock().expect("not poisoned");
                if windows.len() <= window {
                    windows.resize(window + 1, 0.0);
                }
                windows[window] = windows[window].max(rss);
            }
        }
    });
    SampledMemory { windows, task }
}

struct SampledMemory {
    windows: Arc<std::sync::Mutex<Vec<f64>>>,
    task: JoinHandle<()>,
}

impl SampledMemory {
    /// Stops sampling; the most of each 30 s so far.
    async fn finish(self) -> Vec<f64> {
        self.task.abort();
        let _ = self.task.await;
        std::mem::take(&mut *self.windows.lock().expect("not poisoned"))
    }
}
