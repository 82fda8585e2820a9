//! Faults of the shared services: RabbitMQ and PostgreSQL restarted while events flow. These stop
//! services every other test uses, so they run in a serial step of their own
//! (`scripts/test` runs them after the parallel suite, one at a time). `scripts/soak` runs them
//! longer: IDSYNC_FAULT_EVENTS events and IDSYNC_FAULT_RESTARTS restarts per test.

#[path = "../integration/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use helpers::*;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
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

/// Publishes the events one by one with confirms, reconnecting and publishing again whatever
/// was not confirmed when the broker goes away (at-least-once, as a platform would).
async fn publish_through_faults(
    amqp_url: String,
    events: Vec<Value>,
    published: Arc<AtomicUsize>,
) -> usize {
    let mut copies = 0;
    let mut next = 0;
    while next < events.len() {
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
        while next < events.len() {
            let body = serde_json::to_vec(&events[next]).unwrap();
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
            // A publish caught by the restart can stay pending for ever (amqp-rs/lapin#409):
            // the platform gives up on it and publishes again on a new connection.
            let confirmed = matches!(
                tokio::time::timeout(Duration::from_secs(10), publish).await,
                Ok(Ok(confirm)) if confirm.is_ack()
            );
            if !confirmed {
                break;
            }
            next += 1;
            published.store(next, Ordering::Relaxed);
            if next % 50 == 0 {
                // A steady flow rather than one burst, so that faults land mid-stream.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), connection.close(200, "".into())).await;
    }
    copies
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
    let connection = Connection::connect(&services.amqp_url, ConnectionProperties::default())
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
    let connection = Connection::connect(&services.amqp_url, ConnectionProperties::default())
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
    let mut worker = WorkerProcess::start(&services);

    let events: Vec<Value> = (0..total)
        .map(|n| login("plain", &format!("b-{n}"), json!({})))
        .collect();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_through_faults(
        services.amqp_url.clone(),
        events,
        published.clone(),
    ));
    let started = Instant::now();
    for round in 0..restarts {
        let threshold = (round + 1) * total / (restarts + 2);
        wait_until(WAIT * 2, || async {
            count(&db, "SELECT count(*) FROM processed_events").await as usize >= threshold
        })
        .await
        .expect("events flowing before the restart");
        run("rabbitmqctl", &["-q", "stop_app"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        run("rabbitmqctl", &["-q", "start_app"]);
        run("rabbitmqctl", &["-q", "await_startup"]);
    }
    let copies = publisher.await.unwrap();
    wait_until(WAIT * 4, || async {
        count(&db, "SELECT count(*) FROM processed_events").await as usize == total
    })
    .await
    .expect("every event decided after the broker came back, without restarting the worker");
    wait_until(WAIT * 2, || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await
    .expect("the outbox caught up");
    let (ids, delivered) = captured_ids(&services).await;
    let users = count(&db, "SELECT count(*) FROM users").await;

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
        .note("seconds", started.elapsed().as_secs_f64());
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    assert_eq!(worker.terminate().code(), Some(0));
    drop(capture);
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
    let publish = |part: &Vec<Value>| {
        tokio::spawn(publish_through_faults(
            services.amqp_url.clone(),
            part.clone(),
            Arc::new(AtomicUsize::new(0)),
        ))
    };
    let mut publishers = vec![publish(&parts[0])];
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
        if let Some(part) = parts.get(round + 1) {
            publishers.push(publish(part));
        }
        // While the database is down the worker holds what it has and takes nothing more.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ready = reqwest::get(app.url("/readyz")).await.unwrap();
        let body: Value = ready.json().await.unwrap();
        let consumed_before = app
            .metric("idsync_decisions_total{outcome=\"user_created\"}")
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let consumed_after = app
            .metric("idsync_decisions_total{outcome=\"user_created\"}")
            .await;
        waiting_while_down += Broker::connect(&services)
            .await
            .queue_depth("idsync.login-completed")
            .await;
        paused_while_down &= body["database"] == false && consumed_before == consumed_after;
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
    wait_until(WAIT * 2, || async {
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await
    .expect("the outbox caught up");
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
