//! Wave mode: a wave of first logins through a DingTalk connection with a directory (a stand-in
//! of DingTalk's open API on a local port). Each login carries only the person's `userid`, so the
//! worker asks the directory for every one (`asked`); the same wave with the record carried in
//! the event (`carried`, the directory never called) is run alternately, so that what the
//! directory adds shows as the difference.

use std::{path::Path, time::Duration};

use serde::Serialize;
use serde_json::json;

use idsync_test_support::{DirectoryHandle, DirectorySource, DirectoryStandIn};

use super::{
    drain::{queue_backlog, wait_until_drained},
    env::Env,
    mix::{POOL, SOURCE},
};

const APP: &str = "bench-app";
const SECRET: &str = "bench-secret";

#[derive(Debug, Clone, Serialize)]
pub struct WaveRun {
    /// `asked` or `carried`.
    pub variant: &'static str,
    pub logins: usize,
    pub seconds: f64,
    pub logins_per_second: f64,
    /// Calls to the directory (tokens included) per login.
    pub calls_per_login: f64,
    pub token_calls: usize,
    /// The most user-detail calls the directory saw in any one second.
    pub busiest_second: usize,
}

fn record(i: usize) -> serde_json::Value {
    json!({
        "userid": format!("w{i}"), "name": format!("Person {i}"), "state_code": "86",
        "mobile": format!("139{i:08}"), "job_number": format!("J{i}"),
        "org_email": format!("w{i}@corp.example.com"), "active": true,
    })
}

pub async fn run(
    logins: usize,
    asked: bool,
    rate: Option<u32>,
    prefetch: u16,
    batch_size: usize,
    worker_bin: &Path,
) -> anyhow::Result<WaveRun> {
    let source = DirectoryStandIn::start(DirectorySource::DingTalk).await;
    source.add_app(APP, SECRET);
    for i in 0..logins {
        source.add_person(&format!("w{i}"), record(i));
    }
    source.set_rate_limit(rate);
    let env = Env::create(prefetch, batch_size).await?;
    let mut config = std::fs::read_to_string(&env.config)?;
    config.push_str(&format!(
        r#"
[[connections]]
identifier = "dingtalk-dir"
user_pool_id = "{POOL}"
provider = "dingtalk"
association = "field_matching"
match_fields = ["attributes.employee_id", "email"]

[connections.directory]
kind = "dingtalk"
app_key = "{APP}"
app_secret = "{SECRET}"
api_base = "{base}"
rate_limit = {limit}
"#,
        base = source.base_url(),
        limit = rate.unwrap_or(10_000),
    ));
    std::fs::write(&env.config, config)?;
    env.migrate(worker_bin)?;
    let db = sqlx::PgPool::connect(&env.db_url).await?;
    let bodies: Vec<Vec<u8>> = (0..logins)
        .map(|i| {
            let profile = if asked {
                json!({})
            } else {
                json!({"attributes": record(i)})
            };
            serde_json::to_vec(&json!({
                "specversion": "1.0", "id": format!("wave-{i}"), "source": SOURCE,
                "type": "login.completed", "time": "2026-12-07T09:00:00Z",
                "data": {"user_pool_id": POOL, "connection": "dingtalk-dir",
                         "external_id": format!("w{i}"), "profile": profile},
            }))
            .expect("JSON")
        })
        .collect();
    let (connection, settings) = queue_backlog(&env, &bodies).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let workers = env.start_workers(worker_bin, 1)?;
    let (started, finished, _) =
        wait_until_drained(&connection, &settings, &db, logins as i64).await?;
    workers.stop();
    db.close().await;
    let _ = connection.close(200, "done".into()).await;
    let seconds = (finished - started).as_secs_f64();
    let token_calls = source.calls(APP, DirectoryHandle::GETTOKEN);
    Ok(WaveRun {
        variant: if asked { "asked" } else { "carried" },
        logins,
        seconds,
        logins_per_second: logins as f64 / seconds,
        calls_per_login: source.total_calls() as f64 / logins as f64,
        token_calls,
        busiest_second: source.max_calls_in_any_second(APP, DirectoryHandle::USER_GET),
    })
}
