//! Load generator and benchmark for identity-sync, against this machine's PostgreSQL and RabbitMQ.
//!
//! `cargo run --release --example loadgen -- drain --events 100000`
//!
//! One invocation creates an isolated database and vhost, seeds users, publishes a realistic mix
//! of logins (60% returning identities, 20% new, 15% field-match links, 5% pending bindings) as a
//! backlog, starts the worker binary and measures how fast it drains the queue; then measures a
//! raw broker baseline (same messages, same prefetch: consume, republish with confirms, ack, no
//! database, no logic) and reports identity-sync's throughput as a ratio to it. Everything it
//! created is removed at the end. See docs/BENCHMARKS.md.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_lite::{StreamExt, future::poll_once};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publish a backlog, then measure how fast the worker empties it.
    Drain(DrainArgs),
}

#[derive(clap::Args, Clone)]
struct DrainArgs {
    /// Login events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Worker processes consuming the queue.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// amqp.prefetch for the worker and the baseline.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// worker.batch_size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// The identity-sync binary to run.
    #[arg(long, default_value = "target/release/identity-sync")]
    worker_bin: PathBuf,
    /// Skip the raw broker baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

const POOL: &str = "bench";

fn pg_base() -> String {
    std::env::var("IDSYNC_BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}
fn amqp_base() -> String {
    std::env::var("IDSYNC_BENCH_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}
fn rabbit_api() -> String {
    std::env::var("IDSYNC_BENCH_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".into())
}

/// An isolated database and vhost, removed on drop.
struct Env {
    id: String,
    db_url: String,
    db_name: String,
    vhost: String,
    amqp_url: String,
    config: PathBuf,
}

impl Env {
    async fn create(args: &DrainArgs) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("idsync-bench-{id}");
        let http = reqwest::Client::new();
        http.put(format!("{}/vhosts/{vhost}", rabbit_api()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()
            .context("creating the bench vhost (management plugin: scripts/services-up)")?;
        http.put(format!("{}/permissions/{vhost}/guest", rabbit_api()))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        let db_name = format!("idsync_bench_{id}");
        let env = Self {
            db_url: format!("{}/{db_name}", pg_base()),
            amqp_url: format!("{}/{vhost}", amqp_base()),
            config: std::env::temp_dir().join(format!("idsync-bench-{id}.toml")),
            id,
            db_name,
            vhost,
        };
        std::fs::write(
            &env.config,
            format!(
                r#"
[database]
url = "{db}"
[amqp]
url = "{amqp}"
prefetch = {prefetch}
[worker]
batch_size = {batch}
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"

[[connections]]
identifier = "returning"
user_pool_id = "{POOL}"
[[connections]]
identifier = "fresh"
user_pool_id = "{POOL}"
[[connections]]
identifier = "match"
user_pool_id = "{POOL}"
association = "field_matching"
match_fields = ["email", "phone"]
default_country_code = "86"
[[connections]]
identifier = "ask"
user_pool_id = "{POOL}"
association = "ask_binding"
match_fields = ["email"]
"#,
                db = env.db_url,
                amqp = env.amqp_url,
                prefetch = args.prefetch,
                batch = args.batch_size,
            ),
        )?;
        Ok(env)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let (db_name, vhost, config) = (
            self.db_name.clone(),
            self.vhost.clone(),
            self.config.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) =
                    PgConnection::connect(&format!("{}/postgres", pg_base())).await
                {
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
            let _ = std::fs::remove_file(config);
        })
        .join()
        .ok();
    }
}

/// The event mix: how many of each kind, and the users the seed must provide.
struct Mix {
    returning: usize,
    fresh: usize,
    links: usize,
    asks: usize,
    /// Seeded users with an identity on `returning`.
    known: usize,
}

impl Mix {
    fn of(events: usize) -> Self {
        let fresh = events / 5;
        let links = events * 15 / 100;
        let asks = events / 20;
        let returning = events - fresh - links - asks;
        Self {
            returning,
            fresh,
            links,
            asks,
            known: (returning / 3).max(1),
        }
    }

    fn users(&self) -> usize {
        self.known + self.links + self.asks
    }
}

async fn seed(pool: &PgPool, mix: &Mix) -> anyhow::Result<()> {
    let users = mix.users() as i64;
    sqlx::query(
        "INSERT INTO users (id, user_pool_id, email, email_verified)
         SELECT gen_random_uuid(), $1, 'u' || n || '@bench.example', true
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(POOL)
    .bind(users)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
         SELECT $1, 'returning', 'r' || substring(email FROM 2 FOR position('@' IN email) - 2), id, '{}'
         FROM users WHERE substring(email FROM 2 FOR position('@' IN email) - 2)::int < $2",
    )
    .bind(POOL)
    .bind(mix.known as i32)
    .execute(pool)
    .await?;
    // A running system has history, and statistics that say so: logins already decided and
    // bindings already resolved. Without it a fresh database's planner would pick plans for
    // empty tables and keep them while the tables grow during the run.
    sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome, user_id)
         SELECT 'urn:history', 'h-' || n, 'existing_user', NULL FROM generate_series(1, $1) AS n",
    )
    .bind(users.max(10_000))
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO bindings (id, user_pool_id, connection, external_id, reason, candidates,
                               status, expires_at, resolution, resolved_by, resolved_at)
         SELECT gen_random_uuid(), $1, 'ask', 'old-' || n, 'ask_binding', '{}', 'resolved',
                now(), 'rejected', 'history', now()
         FROM generate_series(1, $2) AS n",
    )
    .bind(POOL)
    .bind((users / 10).max(1000))
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// The backlog, in a shuffled but reproducible order.
fn events(mix: &Mix) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let event = |n: usize, connection: &str, external_id: String, profile: serde_json::Value| {
        serde_json::to_vec(&json!({
            "specversion": "1.0",
            "id": format!("bench-{n}"),
            "source": "urn:bench",
            "type": "login.completed",
            "time": "2026-11-24T09:00:00Z",
            "data": {"user_pool_id": POOL, "connection": connection, "external_id": external_id,
                     "profile": profile}
        }))
        .unwrap()
    };
    let mut n = 0;
    let mut push = |connection: &str, external_id: String, profile: serde_json::Value| {
        out.push(event(n, connection, external_id, profile));
        n += 1;
    };
    for i in 0..mix.returning {
        let k = i % mix.known;
        push(
            "returning",
            format!("r{k}"),
            json!({"email": format!("u{k}@bench.example"), "email_verified": true, "name": "Returning"}),
        );
    }
    for i in 0..mix.fresh {
        push(
            "fresh",
            format!("f{i}"),
            json!({"email": format!("new{i}@bench.example"), "email_verified": true, "name": "New"}),
        );
    }
    for i in 0..mix.links {
        let k = mix.known + i;
        push(
            "match",
            format!("m{i}"),
            json!({"email": format!("U{k}@Bench.example"), "email_verified": true}),
        );
    }
    for i in 0..mix.asks {
        let k = mix.known + mix.links + i;
        push(
            "ask",
            format!("a{i}"),
            json!({"email": format!("u{k}@bench.example"), "email_verified": true}),
        );
    }
    // A fixed-seed shuffle (xorshift) so that kinds interleave as they would in real traffic.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..out.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.swap(i, (state % (i as u64 + 1)) as usize);
    }
    out
}

async fn publish_all(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
) -> anyhow::Result<()> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    for chunk in bodies.chunks(1000) {
        for body in chunk {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
                .await?;
        }
        let returned = channel.wait_for_confirms().await?;
        if !returned.is_empty() {
            bail!("{} messages were returned", returned.len());
        }
    }
    Ok(())
}

struct WorkerRun {
    seconds: f64,
    events_per_second: f64,
    peak_rss_mib: f64,
    cpu_us_per_event: f64,
    outbox_drain_seconds: f64,
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    (hwm_kib / 1024.0, ticks / 100.0)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn run_worker(
    args: &DrainArgs,
    env: &Env,
    db: &PgPool,
    total: usize,
) -> anyhow::Result<WorkerRun> {
    let mut children: Vec<Child> = (0..args.workers)
        .map(|_| {
            Command::new(&args.worker_bin)
                .arg("--config")
                .arg(&env.config)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", args.worker_bin.display()))
        })
        .collect::<Result<_, _>>()?;
    let total = total as i64;
    let mut start: Option<(Instant, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let finished = loop {
        let done = count(
            db,
            "SELECT count(*) FROM processed_events WHERE source = 'urn:bench'",
        )
        .await;
        if start.is_none() && done > 0 {
            start = Some((Instant::now(), done));
        }
        if done >= total {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the worker did not drain the queue within 30 minutes ({done}/{total})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (started, at_start) = start.unwrap();
    while count(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outbox_drained = Instant::now();
    let mut peak = 0.0;
    let mut cpu = 0.0;
    for child in &children {
        let (rss, seconds) = proc_stats(child.id());
        peak = f64::max(peak, rss);
        cpu += seconds;
    }
    for child in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let seconds = (finished - started).as_secs_f64();
    Ok(WorkerRun {
        seconds,
        events_per_second: (total - at_start) as f64 / seconds,
        peak_rss_mib: peak,
        cpu_us_per_event: cpu * 1e6 / total as f64,
        outbox_drain_seconds: (outbox_drained - started).as_secs_f64(),
    })
}

/// The broker's own limit for this work: the same messages, the same prefetch, consumed,
/// republished with confirms and acked in batches like the worker does, with nothing else.
async fn baseline(
    env: &Env,
    bodies: &[Vec<u8>],
    prefetch: u16,
    batch_size: usize,
) -> anyhow::Result<f64> {
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    setup
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare("baseline.in".into(), durable, args.clone())
        .await?;
    setup
        .queue_declare("baseline.out".into(), durable, args)
        .await?;
    publish_all(&setup, "", "baseline.in", bodies).await?;

    let consumer_connection =
        Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = consumer_connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            "baseline.in".into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut done = 0;
    let mut started = None;
    while done < bodies.len() {
        let first = consumer.next().await.context("consumer ended")??;
        started.get_or_insert_with(Instant::now);
        let mut batch = vec![first];
        while batch.len() < batch_size {
            match poll_once(consumer.next()).await {
                Some(Some(Ok(d))) => batch.push(d),
                _ => break,
            }
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for delivery in &batch {
            confirms.push(
                publisher
                    .basic_publish(
                        "".into(),
                        "baseline.out".into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        delivery.properties.clone(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                bail!("baseline publish nacked");
            }
        }
        batch
            .last()
            .unwrap()
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await?;
        done += batch.len();
    }
    let seconds = started.unwrap().elapsed().as_secs_f64();
    let _ = consumer_connection.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(bodies.len() as f64 / seconds)
}

async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    if !args.worker_bin.exists() {
        bail!(
            "{} not found: cargo build --release first",
            args.worker_bin.display()
        );
    }
    let env = Env::create(&args).await?;
    eprintln!("bench {}: preparing database and backlog", env.id);
    let status = Command::new(&args.worker_bin)
        .arg("--config")
        .arg(&env.config)
        .arg("migrate")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("migrate failed");
    }
    let db = PgPool::connect(&env.db_url).await?;
    let mix = Mix::of(args.events);
    seed(&db, &mix).await?;
    let bodies = events(&mix);

    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let settings = identity_sync::settings::Settings::load(Some(&env.config))?;
    identity_sync::amqp::topology::declare(&channel, &settings.amqp).await?;
    // A downstream subscriber: every outbound event is routed somewhere, as in production.
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
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    publish_all(
        &channel,
        &settings.amqp.inbound_exchange,
        &settings.amqp.routing_key,
        &bodies,
    )
    .await?;
    let _ = connection.close(200, "published".into()).await;

    eprintln!(
        "bench {}: {} events queued; starting {} worker(s)",
        env.id,
        bodies.len(),
        args.workers
    );
    let run = run_worker(&args, &env, &db, bodies.len()).await?;

    // Every event got exactly one decision, of the expected kind.
    let decided = count(
        &db,
        "SELECT count(*) FROM processed_events WHERE source = 'urn:bench'",
    )
    .await;
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM processed_events WHERE source = 'urn:bench' GROUP BY 1 ORDER BY 1",
    )
            .fetch_all(&db)
            .await?;
    let expected = [
        ("binding_pending", mix.asks),
        ("existing_user", mix.returning),
        ("user_created", mix.fresh),
        ("user_linked", mix.links),
    ];
    let ok = decided == bodies.len() as i64
        && expected
            .iter()
            .all(|(o, n)| outcomes.iter().any(|(k, c)| k == o && *c == *n as i64));
    db.close().await;

    let baseline_eps = if args.no_baseline {
        None
    } else {
        eprintln!("bench {}: raw broker baseline", env.id);
        Some(baseline(&env, &bodies, args.prefetch, args.batch_size).await?)
    };

    println!("identity-sync drain benchmark");
    println!("  events                 {}", bodies.len());
    println!("  workers                {}", args.workers);
    println!(
        "  prefetch / batch       {} / {}",
        args.prefetch, args.batch_size
    );
    println!("  drain time             {:.2} s", run.seconds);
    println!(
        "  identity-sync          {:.0} events/s",
        run.events_per_second
    );
    if let Some(b) = baseline_eps {
        println!("  raw broker baseline    {b:.0} events/s");
        println!("  ratio                  {:.2}", run.events_per_second / b);
    }
    println!("  outbox drained after   {:.2} s", run.outbox_drain_seconds);
    println!("  worker peak RSS        {:.1} MiB", run.peak_rss_mib);
    println!("  worker CPU per event   {:.0} us", run.cpu_us_per_event);
    println!(
        "  decisions              {}",
        outcomes
            .iter()
            .map(|(o, c)| format!("{o}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  one decision per event {}", if ok { "yes" } else { "NO" });
    if let Some(path) = &args.json {
        let report = json!({
            "mode": "drain",
            "events": bodies.len(),
            "workers": args.workers,
            "prefetch": args.prefetch,
            "batch_size": args.batch_size,
            "drain_seconds": run.seconds,
            "events_per_second": run.events_per_second,
            "baseline_events_per_second": baseline_eps,
            "ratio": baseline_eps.map(|b| run.events_per_second / b),
            "outbox_drain_seconds": run.outbox_drain_seconds,
            "peak_rss_mib": run.peak_rss_mib,
            "cpu_us_per_event": run.cpu_us_per_event,
            "outcomes": outcomes.iter().map(|(o, c)| (o.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            "one_decision_per_event": ok,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if !ok {
        bail!("some events were not decided exactly once as expected: {outcomes:?}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Drain(args) => drain(args).await,
    }
}
