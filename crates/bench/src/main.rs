//! `identity-sync-bench`: a benchmark anyone can rerun against this machine's PostgreSQL and
//! RabbitMQ, apart from the product. Each run creates an isolated database and vhost (the test
//! support's), seeds accounts and history, drives the worker binary with a realistic login mix (60% returning, 20% new, 15% field-match links,
//! 5% pending bindings), checks that every login got exactly one decision of the expected kind,
//! and removes everything it created. See docs/BENCHMARKS.md.

mod baseline;
mod drain;
mod env;
mod latency;
mod mix;
mod pace;
mod same_work;
mod services;
mod simulate;
mod wave;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use identity_sync::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "identity-sync-bench",
    version,
    about = "Benchmarks identity-sync against this machine's PostgreSQL and RabbitMQ (docs/BENCHMARKS.md)"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Mode,
    /// Worker processes consuming the queue.
    #[arg(long, global = true, default_value_t = 1)]
    pub workers: usize,
    /// amqp.prefetch of the worker (and of the baseline); the product's default otherwise.
    #[arg(long, global = true)]
    pub prefetch: Option<u16>,
    /// worker.batch_size of the worker (and of the baseline); the product's default otherwise.
    #[arg(long, global = true)]
    pub batch_size: Option<usize>,
    /// Repetitions; medians are reported.
    #[arg(long, global = true, default_value_t = 3)]
    pub runs: usize,
    /// The identity-sync binary under test; by default the one beside this binary (the same
    /// build: `cargo build --release` makes both).
    #[arg(long, global = true)]
    pub worker_bin: Option<PathBuf>,
    /// Also write the runs and their medians as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// A directory of this many more accounts in the pool, loaded with the binary's
    /// `users import` before the seed (e.g. 1000000).
    #[arg(long, global = true, default_value_t = 0)]
    pub accounts: usize,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// How fast a backlog empties, as a ratio to the raw broker baseline measured alongside.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// The logins: `steady` (60% returning) or `onboarding` (83% create or link).
        #[arg(long, value_enum, default_value = "steady")]
        mix: mix::MixKind,
        /// Skip the baselines (the raw broker's and the same work's).
        #[arg(long)]
        no_baseline: bool,
        /// The same-work baseline's batch size.
        #[arg(long, default_value_t = 256)]
        same_work_batch: usize,
        /// The same-work baseline's batches side by side.
        #[arg(long, default_value_t = 2)]
        same_work_parallel: usize,
        /// Also deliver every event to a webhook endpoint (a local receiver) and report the
        /// deliveries per second.
        #[arg(long)]
        webhook: bool,
    },
    /// Publish-to-reply and publish-to-event latency at a fixed offered rate.
    Latency {
        /// Logins per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Sent first at the same rate, left out of the figures.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Skip the baselines (the raw broker round trip and the same-work pipeline).
        #[arg(long)]
        no_baseline: bool,
        /// The same-work pipeline's largest batch.
        #[arg(long, default_value_t = 256)]
        same_work_batch: usize,
        /// The same-work pipeline's batches side by side.
        #[arg(long, default_value_t = 2)]
        same_work_parallel: usize,
    },
    /// A wave of first logins through a connection with a directory (a local stand-in of
    /// DingTalk's API): logins carrying only an id (the directory asked for each) alternated
    /// with the same wave carrying the record (the directory never asked).
    Wave {
        #[arg(long, default_value_t = 5_000)]
        logins: usize,
        /// The directory's limit of calls a second per API (DingTalk's plans: 20, 40, 60), kept
        /// by the stand-in and the connection alike; none by default.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// How long previewing a connection change takes over a stored history, and its memory.
    Simulate {
        /// Identities with a login in the window (a tenth have an older one too).
        #[arg(long, default_value_t = 100_000)]
        logins: usize,
    },
}

/// Figures with one decimal, separated by spaces.
fn one_decimal(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = BenchArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("identity-sync-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The `identity-sync` binary of the same build as this one.
fn beside_this_binary() -> anyhow::Result<PathBuf> {
    let this = std::env::current_exe().context("finding this binary")?;
    let worker = this.with_file_name(format!("identity-sync{}", std::env::consts::EXE_SUFFIX));
    if !worker.exists() {
        bail!(
            "{} not found: build it (cargo build --release) or name it with --worker-bin",
            worker.display()
        );
    }
    Ok(worker)
}

/// What every mode shares: the worker under test and how many of it, its queue settings, the
/// repetitions, and the machine.
struct Common {
    workers: usize,
    prefetch: u16,
    batch_size: usize,
    runs: usize,
    worker_bin: PathBuf,
    machine: String,
    accounts: usize,
}

async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let defaults = Settings::default();
    let worker_bin = match args.worker_bin {
        Some(path) => path,
        None => beside_this_binary()?,
    };
    if args.runs == 0 || args.workers == 0 {
        bail!("--runs and --workers must be at least 1");
    }
    let common = Common {
        workers: args.workers,
        prefetch: args.prefetch.unwrap_or(defaults.amqp.prefetch),
        batch_size: args.batch_size.unwrap_or(defaults.worker.batch_size),
        runs: args.runs,
        worker_bin,
        machine: machine(),
        accounts: args.accounts,
    };
    let report = match args.mode {
        Mode::Drain {
            events,
            mix,
            no_baseline,
            webhook,
            same_work_batch,
            same_work_parallel,
        } => {
            let options = drain::DrainOptions {
                webhook,
                mix,
                events,
                workers: common.workers,
                prefetch: common.prefetch,
                batch_size: common.batch_size,
                baseline: !no_baseline,
                worker_bin: &common.worker_bin,
                accounts: common.accounts,
                same_work_batch,
                same_work_parallel,
            };
            drain_mode(&common, &options).await?
        }
        Mode::Latency {
            rate,
            duration,
            warmup,
            no_baseline,
            same_work_batch,
            same_work_parallel,
        } => {
            let options = latency::LatencyOptions {
                same_work_batch,
                same_work_parallel,
                rate,
                duration,
                warmup,
                workers: common.workers,
                prefetch: common.prefetch,
                batch_size: common.batch_size,
                baseline: !no_baseline,
                worker_bin: &common.worker_bin,
                accounts: common.accounts,
            };
            latency_mode(&common, &options).await?
        }
        Mode::Simulate { logins } => simulate_mode(&common, logins).await?,
        Mode::Wave { logins, rate } => wave_mode(&common, logins, rate).await?,
    };
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `drain`: the runs, their medians printed, and the report.
async fn drain_mode(c: &Common, options: &drain::DrainOptions<'_>) -> anyhow::Result<Value> {
    let (events, mix, no_baseline) = (options.events, options.mix, !options.baseline);
    let mut runs = Vec::new();
    for n in 1..=c.runs {
        let run = drain::run(options).await?;
        println!(
            "run {n}: {:>7.0} events/s decided, {:>7.0}/s to the outbox drained{}  outbox drained {:.2} s  peak RSS {:.1} MiB  CPU {:.0} us/event  exact: {}",
            run.events_per_second,
            run.drained_events_per_second,
            match (run.baseline_events_per_second, run.ratio) {
                (Some(b), Some(r)) => format!("  baseline {b:>7.0}/s  ratio {r:.2}"),
                _ => String::new(),
            },
            run.outbox_drained_seconds,
            run.peak_rss_mib,
            run.cpu_us_per_event,
            if run.one_decision_per_event {
                "yes"
            } else {
                "NO"
            },
        );
        if let (Some(rate), Some(ratio), Some(wal)) = (
            run.same_work_per_second,
            run.same_work_ratio,
            run.same_work_wal_bytes_per_event,
        ) {
            println!(
                "        same-work baseline {rate:>7.0}/s  ratio {ratio:.2}  its WAL {wal:.0} bytes/event"
            );
        }
        let cpu = &run.services_cpu_us_per_event;
        print!(
            "        CPU per login: worker {:.0} us, PostgreSQL {:.0} us, RabbitMQ {:.0} us",
            run.cpu_us_per_event, cpu.database, cpu.broker
        );
        match &run.same_work_cpu_us_per_event {
            Some(same) => println!(
                "; same work: probe {:.0} us, PostgreSQL {:.0} us, RabbitMQ {:.0} us",
                same.own, same.database, same.broker
            ),
            None => println!(),
        }
        if let Some(w) = &run.webhook {
            println!(
                "        webhook: {} deliveries, {:.0}/s (first to last), all delivered {:.2} s \
                 after the drain started, each event once: {}",
                w.deliveries,
                w.deliveries_per_second,
                w.delivered_seconds,
                if w.each_once { "yes" } else { "NO" }
            );
        }
        println!(
            "        WAL {:.0} bytes/event; rows per event: {}",
            run.wal_bytes_per_event,
            run.writes_per_event
                .iter()
                .map(|(t, w)| format!(
                    "{t} +{:.2}/~{:.2}(hot {:.2})/-{:.2}",
                    w.inserted, w.updated, w.hot_updated, w.deleted
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        runs.push(run);
    }
    let pick =
        |f: &dyn Fn(&drain::DrainRun) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let summary = json!({
        "events_per_second": pick(&|r| Some(r.events_per_second)),
        "drained_events_per_second": pick(&|r| Some(r.drained_events_per_second)),
        "baseline_events_per_second": pick(&|r| r.baseline_events_per_second),
        "ratio": pick(&|r| r.ratio),
        "same_work_per_second": pick(&|r| r.same_work_per_second),
        "same_work_ratio": pick(&|r| r.same_work_ratio),
        "same_work_wal_bytes_per_event": pick(&|r| r.same_work_wal_bytes_per_event),
        "peak_rss_mib": pick(&|r| Some(r.peak_rss_mib)),
        "cpu_us_per_event": pick(&|r| Some(r.cpu_us_per_event)),
        "wal_bytes_per_event": pick(&|r| Some(r.wal_bytes_per_event)),
        "outbox_drained_seconds": pick(&|r| Some(r.outbox_drained_seconds)),
        "webhook_deliveries_per_second": pick(&|r| r.webhook.as_ref().map(|w| w.deliveries_per_second)),
        "webhook_delivered_seconds": pick(&|r| r.webhook.as_ref().map(|w| w.delivered_seconds)),
        "mix": mix,
        "same_work_batch": options.same_work_batch,
        "same_work_parallel": options.same_work_parallel,
    });
    print_drain_summary(c, events, no_baseline, runs.len(), &summary);
    let exact = runs.iter().all(|r| r.one_decision_per_event);
    println!(
        "  one decision per event {}",
        if exact { "yes" } else { "NO" }
    );
    if !exact {
        for run in &runs {
            eprintln!("outcomes: {:?}", run.outcomes);
        }
        bail!("some logins did not get exactly one decision of the expected kind");
    }
    Ok(
        json!({"mode": "drain", "mix": mix, "machine": c.machine, "events": events, "workers": c.workers,
              "accounts": c.accounts,
              "prefetch": c.prefetch, "batch_size": c.batch_size, "median": summary, "runs": runs}),
    )
}

fn print_drain_summary(c: &Common, events: usize, no_baseline: bool, runs: usize, summary: &Value) {
    let (machine, prefetch, batch_size) = (&c.machine, c.prefetch, c.batch_size);
    println!(
        "identity-sync drain benchmark ({} mix): median of {} run(s)",
        summary["mix"].as_str().unwrap_or("steady"),
        runs
    );
    println!("  machine                {machine}");
    println!("  events per run         {events}");
    println!("  workers                {}", c.workers);
    println!("  prefetch / batch       {prefetch} / {batch_size}");
    println!(
        "  identity-sync          {:.0} events/s decided, {:.0}/s until the outbox drained",
        summary["events_per_second"].as_f64().unwrap_or(f64::NAN),
        summary["drained_events_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    if !no_baseline {
        println!(
            "  raw broker baseline    {:.0} events/s",
            summary["baseline_events_per_second"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
        println!(
            "  ratio                  {:.2}",
            summary["ratio"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "  same-work baseline     {:.0} events/s (batch {}, {} side by side)",
            summary["same_work_per_second"].as_f64().unwrap_or(f64::NAN),
            summary["same_work_batch"],
            summary["same_work_parallel"],
        );
        println!(
            "  ratio to the same work {:.2}",
            summary["same_work_ratio"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  worker peak RSS        {:.1} MiB",
        summary["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  worker CPU per event   {:.0} us",
        summary["cpu_us_per_event"].as_f64().unwrap_or(f64::NAN)
    );
}

/// `simulate`: the runs, their medians printed, and the report.
async fn wave_mode(c: &Common, logins: usize, rate: Option<u32>) -> anyhow::Result<Value> {
    if logins == 0 {
        bail!("--logins must be at least 1");
    }
    let mut asked = Vec::new();
    let mut carried = Vec::new();
    for n in 1..=c.runs {
        for ask in [true, false] {
            let run = wave::run(logins, ask, rate, c.prefetch, c.batch_size, &c.worker_bin).await?;
            println!(
                "run {n} {}: {} logins in {:.2} s ({:.0}/s), {:.3} directory calls a login \
                 ({} token), busiest second {} calls",
                run.variant,
                run.logins,
                run.seconds,
                run.logins_per_second,
                run.calls_per_login,
                run.token_calls,
                run.busiest_second
            );
            if ask {
                asked.push(run)
            } else {
                carried.push(run)
            }
        }
    }
    let per_second =
        |runs: &[wave::WaveRun]| median(runs.iter().map(|r| r.logins_per_second).collect());
    let (a, b) = (per_second(&asked), per_second(&carried));
    let added_ms = (1.0 / a - 1.0 / b) * 1000.0;
    println!(
        "identity-sync directory wave: median of {} run(s) each",
        c.runs
    );
    println!("  machine                {}", c.machine);
    println!(
        "  logins                 {logins}, rate limit {}",
        rate.map_or("none".into(), |r| format!("{r}/s"))
    );
    println!("  asked (id only)        {a:.0} logins/s");
    println!("  carried (no call)      {b:.0} logins/s");
    println!("  directory adds         {added_ms:.3} ms of wave time a login");
    Ok(
        json!({"mode": "wave", "machine": c.machine, "logins": logins, "rate": rate,
              "median": {"asked_logins_per_second": a, "carried_logins_per_second": b,
                         "added_ms_per_login": added_ms},
              "asked": asked, "carried": carried}),
    )
}

async fn simulate_mode(c: &Common, logins: usize) -> anyhow::Result<Value> {
    if logins < 2 {
        bail!("--logins must be at least 2");
    }
    let mut runs = Vec::new();
    for n in 1..=c.runs {
        let run = simulate::run(logins, &c.worker_bin).await?;
        println!(
            "run {n}: {} logins ({} stored) simulated in {:.2} s ({:.0}/s), peak RSS +{:.1} MiB, exact: {}",
            run.logins,
            run.stored_logins,
            run.seconds,
            run.logins_per_second,
            run.peak_rss_growth_mib,
            if run.exact { "yes" } else { "NO" }
        );
        runs.push(run);
    }
    let pick = |f: &dyn Fn(&simulate::SimulateRun) -> f64| median(runs.iter().map(f).collect());
    let summary = json!({
        "seconds": pick(&|r| r.seconds),
        "logins_per_second": pick(&|r| r.logins_per_second),
        "peak_rss_growth_mib": pick(&|r| r.peak_rss_growth_mib),
    });
    println!(
        "identity-sync simulation benchmark: median of {} run(s)",
        runs.len()
    );
    println!("  machine                {}", c.machine);
    println!("  logins (latest per identity) {logins}");
    println!(
        "  seconds                {:.2}",
        summary["seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  peak RSS growth        {:.1} MiB",
        summary["peak_rss_growth_mib"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(
        json!({"mode": "simulate", "machine": c.machine, "logins": logins, "median": summary,
              "runs": runs}),
    )
}

/// `latency`: the runs, their medians printed, and the report.
async fn latency_mode(c: &Common, options: &latency::LatencyOptions<'_>) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for n in 1..=c.runs {
        let run = latency::run(options).await?;
        println!(
            "run {n}: {:.0}/s offered  reply p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms  event p99 {:.1} ms  missing {}  RSS {:.1} MiB  CPU {:.0} us/event",
            run.achieved_rate,
            run.reply.p50_ms,
            run.reply.p95_ms,
            run.reply.p99_ms,
            run.reply.max_ms,
            run.downstream_event.p99_ms,
            run.missing_replies,
            run.peak_rss_mib,
            run.cpu_us_per_event,
        );
        println!(
            "        reply p99 per 30 s: {}",
            one_decimal(&run.reply_p99_by_30s)
        );
        println!(
            "        worker RSS per 30 s (MiB): {}",
            one_decimal(&run.rss_mib_by_30s)
        );
        if let (Some(reply), Some(event)) = (&run.same_work_reply, &run.same_work_event) {
            println!(
                "        same work at the same rate: reply p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms  event p99 {:.1} ms",
                reply.p50_ms, reply.p95_ms, reply.p99_ms, reply.max_ms, event.p99_ms
            );
        }
        println!("        database: {}", run.database);
        runs.push(run);
    }
    let pick = |f: &dyn Fn(&latency::LatencyRun) -> f64| median(runs.iter().map(f).collect());
    let summary = json!({
        "achieved_rate": pick(&|r| r.achieved_rate),
        "reply_p50_ms": pick(&|r| r.reply.p50_ms),
        "reply_p95_ms": pick(&|r| r.reply.p95_ms),
        "reply_p99_ms": pick(&|r| r.reply.p99_ms),
        "event_p50_ms": pick(&|r| r.downstream_event.p50_ms),
        "event_p99_ms": pick(&|r| r.downstream_event.p99_ms),
        "baseline_reply_p50_ms": pick(&|r| r.baseline_reply.as_ref().map_or(f64::NAN, |b| b.p50_ms)),
        "baseline_reply_p99_ms": pick(&|r| r.baseline_reply.as_ref().map_or(f64::NAN, |b| b.p99_ms)),
        "same_work_reply_p50_ms": pick(&|r| r.same_work_reply.as_ref().map_or(f64::NAN, |b| b.p50_ms)),
        "same_work_reply_p99_ms": pick(&|r| r.same_work_reply.as_ref().map_or(f64::NAN, |b| b.p99_ms)),
        "same_work_event_p99_ms": pick(&|r| r.same_work_event.as_ref().map_or(f64::NAN, |b| b.p99_ms)),
        "peak_rss_mib": pick(&|r| r.peak_rss_mib),
        "cpu_us_per_event": pick(&|r| r.cpu_us_per_event),
    });
    print_latency_summary(c, options, runs.len(), &summary);
    let missing: usize = runs.iter().map(|r| r.missing_replies).sum();
    println!("  replies missing        {missing}");
    if missing > 0 {
        bail!("{missing} logins got no reply");
    }
    Ok(
        json!({"mode": "latency", "machine": c.machine, "rate": options.rate,
              "duration_seconds": options.duration.as_secs_f64(), "workers": c.workers,
              "prefetch": c.prefetch, "batch_size": c.batch_size, "median": summary, "runs": runs}),
    )
}

fn print_latency_summary(
    c: &Common,
    options: &latency::LatencyOptions<'_>,
    runs: usize,
    summary: &Value,
) {
    let (machine, prefetch, batch_size) = (&c.machine, c.prefetch, c.batch_size);
    let (rate, duration, no_baseline) = (options.rate, options.duration, !options.baseline);
    let f = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    println!("identity-sync latency benchmark: median of {} run(s)", runs);
    println!("  machine                {machine}");
    println!(
        "  offered rate           {rate}/s for {duration:?} (achieved {:.0}/s)",
        f("achieved_rate")
    );
    println!("  workers                {}", c.workers);
    println!("  prefetch / batch       {prefetch} / {batch_size}");
    println!(
        "  publish -> reply       p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
        f("reply_p50_ms"),
        f("reply_p95_ms"),
        f("reply_p99_ms")
    );
    println!(
        "  publish -> event       p50 {:.1} ms  p99 {:.1} ms",
        f("event_p50_ms"),
        f("event_p99_ms")
    );
    if !no_baseline {
        println!(
            "  raw broker round trip  p50 {:.1} ms  p99 {:.1} ms",
            f("baseline_reply_p50_ms"),
            f("baseline_reply_p99_ms")
        );
        println!(
            "  same work, same rate   reply p50 {:.1} ms  p99 {:.1} ms  event p99 {:.1} ms",
            f("same_work_reply_p50_ms"),
            f("same_work_reply_p99_ms"),
            f("same_work_event_p99_ms")
        );
    }
    println!("  worker peak RSS        {:.1} MiB", f("peak_rss_mib"));
    println!("  worker CPU per event   {:.0} us", f("cpu_us_per_event"));
}

/// CPU model and count, and memory: enough to compare figures between machines.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpus} x {model}, {memory}")
}
