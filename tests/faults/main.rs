//! Faults of the shared services: RabbitMQ and PostgreSQL restarted while events flow. These stop
//! services every other test uses, so they run in a serial step of their own
//! (`scripts/test` runs them after the parallel suite, one at a time). `scripts/soak` runs them
//! longer: IDSYNC_FAULT_EVENTS events and IDSYNC_FAULT_RESTARTS restarts per test.

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

mod cluster;

use idsync_test_support::*;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes the events one by one with confirms, reconnecting (to the next of `amqp_urls`, the
/// nodes of a cluster) and publishing again whatever was not confirmed when the broker goes away
/// (at-least-once, as a platform would). Returns the publishes made, copies included.
async fn publish_through_faults(
    amqp_urls: Vec<String>,
    events: Vec<Value>,
    published: Arc<AtomicUsize>,
) -> usize {
    let pace = Pace::Bursts { of: 50, pause: 20 };
    let no_stop = tokio_util::sync::CancellationToken::new();
    let next = |n: usize| events.get(n).cloned();
    publish_stream(&amqp_urls, next, &no_stop, pace, &published)
        .await
        .1
}

/// How a publisher spaces its messages.
#[derive(Clone, Copy)]
enum Pace {
    /// A pause of `pause` ms after every `of` messages: a steady flow rather than one burst, so
    /// that faults land mid-stream.
    Bursts { of: usize, pause: u64 },
    /// A pause of `pause` ms after every message.
    Each { pause: u64 },
}

/// Publishes `next(0)`, `next(1)`, ... until it gives none or `stop`, each confirmed before the
/// next, as [`publish_through_faults`] says. Returns the messages published (distinct) and the
/// publishes made.
async fn publish_stream(
    amqp_urls: &[String],
    next: impl Fn(usize) -> Option<Value>,
    stop: &tokio_util::sync::CancellationToken,
    pace: Pace,
    published: &AtomicUsize,
) -> (usize, usize) {
    let (mut sent, mut copies, mut attempt) = (0, 0, 0);
    let mut event = next(0);
    while event.is_some() && !stop.is_cancelled() {
        let amqp_url = amqp_urls[attempt % amqp_urls.len()].clone();
        attempt += 1;
        let open = async {
            let connection =
                Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            lapin::Result::Ok((connection, channel))
        };
        let Ok(Ok((connection, channel))) =
            tokio::time::timeout(Duration::from_secs(10), open).await
        else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        while let Some(body) = event.as_ref().filter(|_| !stop.is_cancelled()) {
            let body = serde_json::to_vec(body).unwrap();
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            copies += 1;
            let publish = async {
                channel
                    .basic_publish(
                        "idsync.in".into(),
                        "login.completed".into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
                    .await
            };
            // A publish caught by the fault can stay pending for ever (amqp-rs/lapin#409): the
            // platform gives up on it and publishes again on a new connection.
            let confirmed = matches!(
                tokio::time::timeout(Duration::from_secs(10), publish).await,
                Ok(Ok(confirm)) if confirm.is_ack()
            );
            if !confirmed {
                break;
            }
            sent += 1;
            published.fetch_add(1, Ordering::SeqCst);
            event = next(sent);
            match pace {
                Pace::Bursts { of, pause } if sent % of == 0 => {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Pace::Each { pause } => tokio::time::sleep(Duration::from_millis(pause)).await,
                Pace::Bursts { .. } => {}
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), connection.close(200, "".into())).await;
    }
    (sent, copies)
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn postgres_version() -> String {
    let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    let mut names: Vec<String> = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.pop().unwrap()
}

/// A durable queue of the test's vhost capturing every outbound event across broker restarts.
async fn capture_queue(services: &Services) -> Connection {
    capture_queue_at(&services.amqp_url, services).await
}

/// The same, declared through the broker (or cluster node) at `url`.
async fn capture_queue_at(url: &str, services: &Services) -> Connection {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    identity_sync::amqp::topology::declare(&channel, &services.settings().amqp)
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            "captured-events".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "captured-events".into(),
            "idsync.events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    connection
}

async fn captured_ids(services: &Services) -> (HashSet<String>, usize) {
    captured_ids_at(&services.amqp_url).await
}

async fn captured_ids_at(url: &str) -> (HashSet<String>, usize) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut ids = HashSet::new();
    let mut copies = 0;
    while let Some(message) = channel
        .basic_get("captured-events".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let event: Value = serde_json::from_slice(&message.delivery.data).unwrap();
        ids.insert(event["id"].as_str().unwrap().to_owned());
        copies += 1;
    }
    (ids, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_while_events_flow() {
    let total = env_number("IDSYNC_FAULT_EVENTS", 3000);
    let restarts = env_number("IDSYNC_FAULT_RESTARTS", 1);
    let services = Services::new().await;
    let db = services.migrate().await;
    let capture = capture_queue(&services).await;
    // Events no queue is bound for are held and retried, not recorded unrouted: the test deletes
    // the events exchange (and so its binding) below.
    let mut worker =
        WorkerProcess::start_with_env(&services, &[("IDSYNC__OUTBOX__RETRY_UNROUTABLE", "true")]);

    let events: Vec<Value> = (0..total)
        .map(|n| login("plain", &format!("b-{n}"), json!({})))
        .collect();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_through_faults(
        vec![services.amqp_url.clone()],
        events,
        published.clone(),
    ));
    let started = Instant::now();
    let mut decided_at_stops = Vec::new();
    for round in 0..restarts {
        let threshold = (round + 1) * total / (restarts + 2);
        wait_until(WAIT * 2, || async {
            count(&db, "SELECT count(*) FROM processed_events").await as usize >= threshold
        })
        .await
        .expect("events flowing before the restart");
        run("rabbitmqctl", &["-q", "stop_app"]);
        let _restart = OnDrop("rabbitmqctl", vec!["-q".into(), "start_app".into()]);
        decided_at_stops.push(count(&db, "SELECT count(*) FROM processed_events").await);
        tokio::time::sleep(Duration::from_secs(3)).await;
        run("rabbitmqctl", &["-q", "start_app"]);
        run("rabbitmqctl", &["-q", "await_startup"]);
        if round == 0 {
            // While events still flow, the events exchange goes too, once the worker is back
            // (its consumer deciding, its relay publishing): the relay must declare it again
            // when its publishes fail, without a restart.
            let back: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&db)
                .await
                .unwrap();
            wait_until(WAIT * 2, || async {
                let published: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM outbox o WHERE created_at > $1
                           AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.id = o.id)",
                )
                .bind(back)
                .fetch_one(&db)
                .await
                .unwrap();
                published > 0
            })
            .await
            .expect("the relay publishing again after the restart");
            delete_exchange(&services, "idsync.events").await;
            wait_until(WAIT * 2, || async {
                exchange_exists(&services, "idsync.events").await
            })
            .await
            .expect("the deleted events exchange declared again");
            bind_capture(&services).await;
        }
    }
    let copies = publisher.await.unwrap();
    wait_until(WAIT * 4, || async {
        count(&db, "SELECT count(*) FROM processed_events").await as usize == total
    })
    .await
    .expect("every event decided after the broker came back, without restarting the worker");
    outbox_drained(&db, WAIT * 2, "the outbox caught up").await;
    wait_until(WAIT * 2, || async {
        captured_count(&services).await >= total
    })
    .await
    .expect("every event reached the subscriber");
    let (ids, delivered) = captured_ids(&services).await;
    let users = count(&db, "SELECT count(*) FROM users").await;
    let dead = Broker::connect(&services)
        .await
        .queue_depth("idsync.login-completed.dlq")
        .await;

    let mut figures = Figures::new("broker-restart");
    figures.sent = total as i64;
    figures.decided = count(&db, "SELECT count(*) FROM processed_events").await;
    figures.lost = total as i64 - figures.decided + (total as i64 - ids.len() as i64);
    figures.doubled = users - total as i64;
    figures.faults = restarts as i64;
    figures
        .note("publishes_including_retries", copies)
        .note("events_published", ids.len())
        .note("event_copies_delivered", delivered - ids.len())
        .note("decided_when_the_broker_stopped", &decided_at_stops)
        .note("dead_lettered", dead)
        .note("seconds", started.elapsed().as_secs_f64());
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    assert!(
        decided_at_stops
            .iter()
            .all(|d| (1..total as i64).contains(d)),
        "every restart struck mid-stream: {decided_at_stops:?} of {total}"
    );
    assert!(
        copies > total,
        "the platform published again what the restart cut ({copies})"
    );
    assert_eq!(dead, 0, "a broker restart dead-letters nothing");
    assert_eq!(worker.terminate().code(), Some(0));
    verify(&services.db_url).await;
    drop(capture);
}

fn management(path: &str) -> String {
    let api = std::env::var("IDSYNC_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".into());
    format!("{api}{path}")
}

async fn exchange_exists(services: &Services, name: &str) -> bool {
    reqwest::Client::new()
        .get(management(&format!("/exchanges/{}/{name}", services.vhost)))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn delete_exchange(services: &Services, name: &str) {
    let status = reqwest::Client::new()
        .delete(management(&format!("/exchanges/{}/{name}", services.vhost)))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

/// Binds the capture queue again (after its exchange was deleted).
async fn bind_capture(services: &Services) {
    let connection = Connection::connect(&services.amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_bind(
            "captured-events".into(),
            "idsync.events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;
}

/// Messages in the capture queue.
async fn captured_count(services: &Services) -> usize {
    Broker::connect(services)
        .await
        .queue_depth("captured-events")
        .await as usize
}

/// Runs a command when dropped: starts a stopped service again, also when a test fails half-way.
struct OnDrop(&'static str, Vec<String>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(&self.1)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The tests' `amqp.prefetch`.
const PREFETCH: i64 = 64;

/// The work queue's acknowledgements so far, as the management API last counted them.
async fn acknowledged(services: &Services) -> i64 {
    let queue: Value = reqwest::Client::new()
        .get(management(&format!(
            "/queues/{}/idsync.login-completed",
            services.vhost
        )))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    queue["message_stats"]["ack"]
        .as_i64()
        .unwrap_or_else(|| panic!("no acknowledgement count: {queue}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarts_while_events_flow() {
    let total = env_number("IDSYNC_FAULT_EVENTS", 3000);
    let restarts = env_number("IDSYNC_FAULT_RESTARTS", 1);
    let services = Services::new().await;
    let db = services.migrate().await;
    let capture = capture_queue(&services).await;
    let app = TestApp::spawn(&services).await;
    let version = postgres_version();

    // The events come in one part more than there are restarts: the first while the database is
    // up, each next one while it is down, so that the worker always has something to refuse.
    let events: Vec<Value> = (0..total)
        .map(|n| login("plain", &format!("d-{n}"), json!({})))
        .collect();
    let parts: Vec<Vec<Value>> = events
        .chunks(total.div_ceil(restarts + 1))
        .map(<[Value]>::to_vec)
        .collect();
    let published = Arc::new(AtomicUsize::new(0));
    let publish = |part: &Vec<Value>| {
        tokio::spawn(publish_through_faults(
            vec![services.amqp_url.clone()],
            part.clone(),
            published.clone(),
        ))
    };
    let mut publishers = vec![publish(&parts[0])];
    let broker = Broker::connect(&services).await;
    let started = Instant::now();
    let mut paused_while_down = true;
    let mut waiting_while_down: u32 = 0;
    for round in 0..restarts {
        let sent_so_far: usize = parts[..=round].iter().map(Vec::len).sum();
        wait_until(WAIT * 2, || async {
            count(&db, "SELECT count(*) FROM processed_events").await as usize >= sent_so_far / 2
        })
        .await
        .expect("events flowing before the restart");
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &version,
                "main",
                "stop",
                "-m",
                "fast",
            ],
        );
        // Started again whatever happens below, so that a failure here does not leave the
        // machine's PostgreSQL down for what runs next.
        let _restart = OnDrop(
            "pg_ctlcluster",
            ["--skip-systemctl-redirect", &version, "main", "start"]
                .map(String::from)
                .to_vec(),
        );
        if let Some(part) = parts.get(round + 1) {
            publishers.push(publish(part));
        }
        // While the database is down the worker holds what it has and takes nothing more:
        // every message published meanwhile stays ready in the queue (read live from the
        // broker, twice, against the platform's count of confirmed publishes).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (sent_before, ready_before) = (
            published.load(Ordering::SeqCst) as i64,
            broker.queue_depth("idsync.login-completed").await as i64,
        );
        // The management API's figures are refreshed every 5 s: readings taken 5.5 s after the
        // stop and 5.5 s later cover only the outage.
        tokio::time::sleep(Duration::from_millis(5200)).await;
        let acked_before = acknowledged(&services).await;
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let acked_after = acknowledged(&services).await;
        let (ready_after, sent_after) = (
            broker.queue_depth("idsync.login-completed").await as i64,
            published.load(Ordering::SeqCst) as i64,
        );
        let ready = reqwest::get(app.url("/readyz")).await.unwrap();
        let body: Value = ready.json().await.unwrap();
        // Deliveries the broker pushed to the worker meanwhile: at most what its prefetch had
        // room for, never acknowledged.
        let taken = (sent_after - sent_before) - (ready_after - ready_before);
        eprintln!(
            "while the database was down: {} published, {} more ready, {taken} delivered to the \
             worker; acknowledged in all: {acked_before} then {acked_after}",
            sent_after - sent_before,
            ready_after - ready_before
        );
        waiting_while_down += ready_after as u32;
        paused_while_down &= body["database"] == false
            && sent_after > sent_before
            && (0..=PREFETCH).contains(&taken)
            && acked_before == acked_after;
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, "main", "start"],
        );
    }
    let mut copies = 0;
    for publisher in publishers {
        copies += publisher.await.unwrap();
    }
    wait_until(WAIT * 4, || async {
        count(&db, "SELECT count(*) FROM processed_events").await as usize == total
    })
    .await
    .expect("every event decided after the database came back");
    outbox_drained(&db, WAIT * 2, "the outbox caught up").await;
    let (ids, delivered) = captured_ids(&services).await;
    let users = count(&db, "SELECT count(*) FROM users").await;
    let dead = {
        let broker = Broker::connect(&services).await;
        broker.queue_depth("idsync.login-completed.dlq").await
    };

    let mut figures = Figures::new("database-restart");
    figures.sent = total as i64;
    figures.decided = count(&db, "SELECT count(*) FROM processed_events").await;
    figures.lost = total as i64 - figures.decided + (total as i64 - ids.len() as i64);
    figures.doubled = users - total as i64;
    figures.faults = restarts as i64;
    figures
        .note("publishes_including_retries", copies)
        .note("dead_lettered", dead)
        .note("paused_while_down", paused_while_down)
        .note("queued_while_down", waiting_while_down)
        .note("event_copies_delivered", delivered - ids.len())
        .note("seconds", started.elapsed().as_secs_f64());
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    assert_eq!(dead, 0, "a database outage never dead-letters a good event");
    assert!(
        paused_while_down,
        "the worker stopped taking messages while the database was down"
    );
    assert!(
        waiting_while_down > 0,
        "events were waiting in the queue while the database was down"
    );
    app.stop().await;
    drop(capture);
}
