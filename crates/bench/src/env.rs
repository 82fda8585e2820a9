//! An isolated benchmark environment: its own database and vhost (removed on drop), a seeded
//! history, and the worker processes under test.

use std::io::Write as _;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
use sqlx::PgPool;

use idsync_test_support::Isolated;

use super::mix::{Mix, POOL};

pub struct Env {
    /// The database and the vhost, removed when the environment is dropped.
    _isolated: Isolated,
    pub id: String,
    pub db_url: String,
    pub amqp_url: String,
    pub config: PathBuf,
}

impl Env {
    pub async fn create(prefetch: u16, batch_size: usize) -> anyhow::Result<Self> {
        let isolated = Isolated::create("idsync-bench").await?;
        let id = isolated.id.clone();
        let env = Self {
            db_url: isolated.db_url.clone(),
            amqp_url: isolated.amqp_url.clone(),
            config: std::env::temp_dir().join(format!("idsync-bench-{id}.toml")),
            id,
            _isolated: isolated,
        };
        std::fs::write(
            &env.config,
            format!(
                r#"[database]
url = "{db}"
[amqp]
url = "{amqp}"
prefetch = {prefetch}
[worker]
batch_size = {batch_size}
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
# The webhook receiver of `drain --webhook` listens on loopback.
[webhooks]
allow_private_addresses = true

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
            ),
        )?;
        Ok(env)
    }

    /// Migrates (through the binary under test) and seeds the users, identities and history
    /// the mix needs.
    pub async fn prepare(
        &self,
        worker_bin: &Path,
        mix: &Mix,
        accounts: usize,
    ) -> anyhow::Result<PgPool> {
        self.migrate(worker_bin)?;
        if accounts > 0 {
            self.import_directory(worker_bin, accounts)?;
        }
        let db = PgPool::connect(&self.db_url).await?;
        seed(&db, mix).await?;
        Ok(db)
    }

    /// Creates and migrates the database through the binary under test.
    pub fn migrate(&self, worker_bin: &Path) -> anyhow::Result<()> {
        let status = self
            .command(worker_bin)
            .arg("migrate")
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", worker_bin.display()))?;
        if !status.success() {
            bail!("migrate failed");
        }
        Ok(())
    }

    /// `accounts` accounts of a directory (email, phone, username, name; none of them a
    /// login's), loaded through the binary's `users import`.
    fn import_directory(&self, worker_bin: &Path, accounts: usize) -> anyhow::Result<()> {
        let path = self.config.with_extension("directory.jsonl");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for n in 0..accounts {
            writeln!(
                file,
                r#"{{"user_pool_id":"{POOL}","email":"d{n}@directory.example","email_verified":true,"phone":"+86139{n:08}","phone_verified":true,"username":"d{n}","name":"Directory {n}"}}"#
            )?;
        }
        file.flush()?;
        drop(file);
        let started = std::time::Instant::now();
        let output = self
            .command(worker_bin)
            .args(["users", "import", "--json"])
            .arg(&path)
            .output()
            .with_context(|| format!("running {}", worker_bin.display()))?;
        let _ = std::fs::remove_file(&path);
        if !output.status.success() {
            bail!(
                "importing the directory failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        eprintln!(
            "directory of {accounts} accounts imported in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
        Ok(())
    }

    /// The binary under test with this environment's configuration and nothing else: the
    /// `IDSYNC__*` variables of the shell running the benchmark would override it.
    fn command(&self, worker_bin: &Path) -> Command {
        let mut command = Command::new(worker_bin);
        command.arg("--config").arg(&self.config);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("IDSYNC__") {
                command.env_remove(name);
            }
        }
        command
    }

    pub async fn broker(&self) -> anyhow::Result<Connection> {
        Ok(Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?)
    }

    pub fn start_workers(&self, worker_bin: &Path, count: usize) -> anyhow::Result<Workers> {
        let children = (0..count)
            .map(|_| {
                self.command(worker_bin)
                    .arg("run")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {}", worker_bin.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Workers(children))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The database and the vhost go with `isolated`.
        let _ = std::fs::remove_file(&self.config);
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
    // Each identity's snapshot is what its returning logins send (a steady state: no changed
    // identifiers to report).
    sqlx::query(
        "INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
         SELECT $1, 'returning', 'r' || substring(email FROM 2 FOR position('@' IN email) - 2), id,
                jsonb_build_object('email', email, 'email_verified', true, 'name', 'Returning')
         FROM users WHERE email LIKE 'u%@bench.example'
           AND substring(email FROM 2 FOR position('@' IN email) - 2)::int < $2",
    )
    .bind(POOL)
    .bind(mix.known as i32)
    .execute(pool)
    .await?;
    // A running system has history, and statistics that say so: logins already decided and
    // bindings already resolved. Without it a fresh database's planner would pick plans for
    // empty tables and keep them while the tables grow during the run.
    sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome)
         SELECT 'urn:history', 'h-' || n, 'existing_user' FROM generate_series(1, $1) AS n",
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

/// The worker processes of a run.
pub struct Workers(Vec<Child>);

impl Workers {
    /// Waits until every worker consumes from the work queue.
    pub async fn wait_consuming(&self, broker: &Connection, queue: &str) -> anyhow::Result<()> {
        let channel = broker.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        for _ in 0..600 {
            let queue = channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            if queue.consumer_count() as usize >= self.0.len() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the workers did not start consuming within 30 s")
    }

    /// Peak resident memory of the largest worker (MiB) and the CPU time of all (seconds).
    pub fn stats(&self) -> (f64, f64) {
        let mut peak = 0.0_f64;
        let mut cpu = 0.0;
        for child in &self.0 {
            let (rss, seconds) = proc_stats(child.id());
            peak = peak.max(rss);
            cpu += seconds;
        }
        (peak, cpu)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }

    pub fn stop(mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    (status_mib(pid, "VmHWM:"), cpu_seconds(after))
}

/// CPU seconds (user and system) of a `/proc/PID/stat` line, from what follows the command
/// name's closing parenthesis: utime and stime are the line's fields 14 and 15.
pub(crate) fn cpu_seconds(after_name: &str) -> f64 {
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}

/// Resident memory of a process now (MiB), 0 once it is gone.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A memory figure of `/proc/PID/status` (given in kB) in MiB, 0 if absent.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// `/proc` reports CPU time in USER_HZ ticks, 100 per second on Linux.
fn clock_ticks() -> f64 {
    100.0
}
