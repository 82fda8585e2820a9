//! Faults that do not touch the shared services (each test has its own database and vhost, so
//! they run beside the others): worker kills, poison messages, a stalled downstream, hostile
//! publishers, personal data in logs, retention and replay. Each fault test reports its figures
//! (sent / decided / lost / doubled) on stderr and in target/reliability/.

use std::{collections::HashSet, time::Duration};

use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

#[tokio::test]
async fn two_workers_killed_repeatedly_lose_and_double_nothing() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let db = services.migrate().await;
    let people = 1000;
    for n in 0..people {
        broker
            .send(&login(
                "plain",
                &format!("k-{n}"),
                json!({"email": format!("k{n}@example.com"), "email_verified": true}),
            ))
            .await;
        broker
            .send(&login("plain", &format!("k-{n}"), json!({"name": "again"})))
            .await;
    }
    let sent = people * 2;
    let mut workers = [
        WorkerProcess::start(&services),
        WorkerProcess::start(&services),
    ];
    let mut kills = 0;
    for (round, threshold) in [250, 550, 850, 1150, 1450].into_iter().enumerate() {
        let reached = wait_until(WAIT, || async {
            count(&db, "SELECT count(*) FROM processed_events").await >= threshold
        })
        .await;
        assert!(reached.is_ok(), "progress before kill {round}");
        let victim = round % 2;
        workers[victim].kill();
        kills += 1;
        workers[victim] = WorkerProcess::start(&services);
    }
    wait_until(WAIT * 2, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == sent as i64
    })
    .await
    .expect("every event decided");
    outbox_drained(
        &db,
        WAIT,
        "the outbox drained, rows of killed workers included",
    )
    .await;
    let events = broker.drain_events(Duration::from_secs(2)).await;
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e.body["id"].as_str().unwrap())
        .collect();
    // Two workers may take a person's second login (no email) first: it creates the account,
    // and the first login then adds the email, an identity.changed. Only user.created counts.
    let created: HashSet<&str> = events
        .iter()
        .filter(|e| e.routing_key == "user.created")
        .map(|e| e.body["id"].as_str().unwrap())
        .collect();

    let users = count(&db, "SELECT count(*) FROM users").await;
    let decided = count(&db, "SELECT count(*) FROM processed_events").await;
    let mut figures = Figures::new("worker-kill-two-workers");
    figures.sent = sent as i64;
    figures.decided = decided;
    figures.lost = sent as i64 - decided;
    figures.doubled = users - people as i64;
    figures.faults = kills;
    figures
        .note("users", users)
        .note("events_published", ids.len())
        .note("event_copies_delivered", events.len() - ids.len());
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    assert_eq!(
        created.len(),
        people,
        "one user.created per person, each published"
    );
    let published: i64 = count(&db, "SELECT count(*) FROM outbox WHERE kind = 'event'").await;
    assert_eq!(ids.len() as i64, published, "every stored event published");
    for mut worker in workers {
        assert_eq!(worker.terminate().code(), Some(0));
    }
    verify(&services.db_url).await;
}

/// An event the database refuses the same way on every try (here a trigger raising a
/// serialization failure for it) is retried in place with backoff, then handed back to the
/// broker; the queue's delivery limit bounds the loop and dead-letters it. The events beside it
/// are decided.
#[tokio::test]
async fn an_event_failing_the_same_way_every_time_is_bounded_by_the_delivery_limit() {
    let services = Services::new().await;
    let db = services.migrate().await;
    sqlx::raw_sql(
        r#"CREATE SEQUENCE poison_attempts;
           CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.external_id = 'poison' THEN
               PERFORM nextval('poison_attempts');
               RAISE EXCEPTION 'always conflicting' USING ERRCODE = '40001';
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER poison BEFORE INSERT ON identities FOR EACH ROW EXECUTE FUNCTION poison();"#,
    )
    .execute(&db)
    .await
    .unwrap();
    let mut settings = services.settings();
    settings.amqp.delivery_limit = 2;
    settings.worker.max_retry_delay = Duration::from_millis(50);
    let broker =
        Broker::connect_with(&services, services_settings_with_limit(&services, 2), true).await;
    for n in 0..5 {
        broker
            .send(&login("plain", &format!("before-{n}"), json!({})))
            .await;
    }
    broker.send(&login("plain", "poison", json!({}))).await;
    for n in 0..5 {
        broker
            .send(&login("plain", &format!("after-{n}"), json!({})))
            .await;
    }
    let app = TestApp::spawn_with(settings).await;
    let dead = broker.dead_letter().await;
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-first-death-reason").cloned(),
        Some(AMQPValue::LongString("delivery_limit".into())),
        "dead-lettered by the broker's delivery limit"
    );
    let body: Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["data"]["external_id"], "poison");
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 10
    })
    .await
    .expect("the ten other events decided");
    let attempts = count(&db, "SELECT last_value FROM poison_attempts").await;
    let mut figures = Figures::new("poison-conflict");
    figures.sent = 11;
    figures.decided = count(&db, "SELECT count(*) FROM processed_events").await;
    figures.lost = 11 - figures.decided - 1;
    figures.faults = attempts;
    figures
        .note("dead_lettered", 1)
        .note("attempts_on_poison", attempts)
        .note("requeued", app.metric("idsync_requeued_total").await);
    figures.report();
    // (1 batch + 1 alone) x 11 tries per delivery, 3 deliveries at most.
    assert!(
        attempts <= 3 * 22,
        "bounded, not a hot loop: {attempts} attempts"
    );
    // And it went the documented way: retried in place (11 tries alone per delivery), then
    // handed back to the broker until the delivery limit (2) ended it.
    assert!(attempts >= 2 * 11, "retried in place: {attempts} attempts");
    // The first delivery and two redeliveries each ended handed back.
    assert_eq!(app.metric("idsync_requeued_total").await, 3.0);
    assert!(
        app.metric("idsync_transient_errors_total{component=\"database\"}")
            .await
            >= 20.0
    );
    assert_eq!(broker.queue_depth(broker.work_queue()).await, 0);
    app.stop().await;
}

fn services_settings_with_limit(
    services: &Services,
    limit: u32,
) -> identity_sync::settings::Settings {
    let mut settings = services.settings();
    settings.amqp.delivery_limit = limit;
    settings
}

/// A message that makes the worker die on every try (here: it hangs in the database and the
/// worker is killed) is bounded by the queue's delivery limit and ends in the dead-letter queue
/// with the broker's reason; the events behind it are then decided.
#[tokio::test]
async fn a_crash_looping_message_is_dead_lettered_by_the_delivery_limit() {
    let services = Services::new().await;
    let db = services.migrate().await;
    sqlx::raw_sql(
        r#"CREATE SEQUENCE poison_attempts;
           CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.external_id = 'crasher' THEN
               PERFORM nextval('poison_attempts');
               PERFORM pg_sleep(300);
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER poison BEFORE INSERT ON identities FOR EACH ROW EXECUTE FUNCTION poison();"#,
    )
    .execute(&db)
    .await
    .unwrap();
    let limit = 3;
    let mut settings = services.settings();
    settings.amqp.delivery_limit = limit;
    let broker = Broker::connect_with(&services, settings, true).await;
    broker.send(&login("plain", "crasher", json!({}))).await;
    for n in 0..5 {
        broker
            .send(&login("plain", &format!("behind-{n}"), json!({})))
            .await;
    }
    // One message at a time, so that only the poison accumulates delivery attempts.
    let env = [
        ("IDSYNC__AMQP__DELIVERY_LIMIT", "3"),
        ("IDSYNC__AMQP__PREFETCH", "1"),
        ("IDSYNC__WORKER__BATCH_SIZE", "1"),
    ];
    let mut crashes = 0;
    let (dead, mut worker) = loop {
        let mut worker = WorkerProcess::start_with_env(&services, &env);
        let attempts_before = count(
            &db,
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM poison_attempts",
        )
        .await;
        let hung = wait_until(Duration::from_secs(10), || async {
            count(
                &db,
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM poison_attempts",
            )
            .await
                > attempts_before
        })
        .await;
        if hung.is_err() {
            // The poison is no longer delivered: it must be in the dead-letter queue, and this
            // worker goes on with the events behind it.
            break (broker.dead_letter().await, worker);
        }
        worker.kill();
        crashes += 1;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'identity-sync' AND state = 'active'
               AND pid <> pg_backend_pid()",
        )
        .execute(&db)
        .await
        .unwrap();
        assert!(
            crashes <= limit as i64 + 2,
            "the delivery limit never stopped the loop"
        );
    };
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = headers.inner().get("x-first-death-reason").cloned();
    assert_eq!(reason, Some(AMQPValue::LongString("delivery_limit".into())));
    let body: Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["data"]["external_id"], "crasher");

    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 5
    })
    .await
    .expect("the events behind the poison decided");
    let mut figures = Figures::new("poison-crash-loop");
    figures.sent = 6;
    figures.decided = count(&db, "SELECT count(*) FROM processed_events").await;
    figures.lost = 6 - figures.decided - 1;
    figures.faults = crashes;
    figures
        .note("delivery_limit", limit)
        .note("dead_letter_reason", "delivery_limit");
    figures.report();
    outbox_drained(&db, WAIT, "every event published").await;
    assert_eq!(worker.terminate().code(), Some(0));
    verify(&services.db_url).await;
}

#[tokio::test]
async fn a_stalled_downstream_throttles_consumption_and_drains_later() {
    let services = Services::new().await;
    let mut settings = services.settings();
    settings.outbox.retry_unroutable = true;
    settings.outbox.max_backlog = 20;
    settings.amqp.prefetch = 10;
    settings.worker.batch_size = 5;
    let mut broker = Broker::connect_with(&services, services.settings(), false).await;
    let sent = 150;
    for n in 0..sent {
        broker
            .send(&login("plain", &format!("s-{n}"), json!({})))
            .await;
    }
    let app = TestApp::spawn_with(settings).await;
    let db = services.db().await;

    // No queue is bound for the events: they pile up, and consumption stops near the limit.
    wait_until(WAIT, || async {
        app.metric("idsync_throttled_total").await >= 1.0
    })
    .await
    .expect("consumption paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let decided_while_stalled = count(&db, "SELECT count(*) FROM processed_events").await;
    let backlog_while_stalled = count(&db, "SELECT count(*) FROM outbox_pending").await;
    assert!(
        decided_while_stalled < sent as i64,
        "throttled: {decided_while_stalled} decided"
    );
    assert!(
        backlog_while_stalled <= 20 + 10,
        "bounded backlog: {backlog_while_stalled}"
    );
    assert!(
        broker.queue_depth(broker.work_queue()).await > 0,
        "the rest waits in the queue"
    );

    // A subscriber appears: everything drains, in full.
    broker.capture_events().await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == sent as i64
    })
    .await
    .expect("every event decided once the downstream is back");
    let events = broker.drain_events(Duration::from_secs(2)).await;
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e.body["id"].as_str().unwrap())
        .collect();
    let mut figures = Figures::new("stalled-downstream");
    figures.sent = sent as i64;
    figures.decided = count(&db, "SELECT count(*) FROM processed_events").await;
    figures.lost = sent as i64 - ids.len() as i64;
    figures.doubled = count(&db, "SELECT count(*) FROM users").await - sent as i64;
    figures.faults = 1;
    figures
        .note("decided_while_stalled", decided_while_stalled)
        .note("backlog_while_stalled", backlog_while_stalled)
        .note("max_backlog", 20);
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    app.stop().await;
}

/// Every published row leaves a dead row in `outbox_pending`; the relay vacuums the table itself
/// every 5,000 of them instead of waiting for autovacuum (this machine's PostgreSQL may run with
/// it off, and at its best it looks once a minute).
#[tokio::test]
async fn the_relay_vacuums_its_pending_rows_itself() {
    let services = Services::new().await;
    let broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let vacuums = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox_pending'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    assert_eq!(vacuums(db.clone()).await, 0);

    // One `user.created` per login: 5,100 rows published, past one vacuum's worth.
    let sent = 5_100;
    for n in 0..sent {
        broker
            .send(&login("plain", &format!("v-{n}"), json!({})))
            .await;
    }
    wait_until(Duration::from_secs(120), || async {
        count(&db, "SELECT count(*) FROM processed_events").await == sent
    })
    .await
    .expect("every login decided");
    outbox_drained(&db, WAIT, "every event published").await;
    wait_until(WAIT, || async {
        app.metric("idsync_outbox_vacuums_total").await >= 1.0
    })
    .await
    .expect("the relay vacuumed outbox_pending");
    // The server's own count (manual vacuums, not autovacuum's), reported within moments.
    wait_until(WAIT, || async { vacuums(db.clone()).await >= 1 })
        .await
        .expect("the server counted the vacuum");
    let dead: i64 = sqlx::query_scalar(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox_pending'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(dead < 5_000, "{dead} dead rows left in outbox_pending");
    app.stop().await;
}

#[tokio::test]
async fn only_trusted_publishers_are_heard() {
    let services = Services::new().await;
    let mut settings = services.settings();
    settings.amqp.trusted_publishers = vec!["platform".into()];
    let app = TestApp::spawn_with(settings).await;
    let broker = Broker::connect(&services).await;
    let db = services.db().await;

    // No user_id property at all: dead-lettered, and not answered (an untrusted publisher could
    // aim error replies at someone else's reply queue).
    broker.request(&login("plain", "u-1", json!({}))).await;
    assert!(error_header(&broker.dead_letter().await).starts_with("untrusted_publisher: "));

    // The broker checks user_id against the connection's login: "guest" cannot claim another name.
    let event = serde_json::to_vec(&login("plain", "u-2", json!({}))).unwrap();
    let forged = broker
        .channel
        .basic_publish(
            "idsync.in".into(),
            "login.completed".into(),
            Default::default(),
            &event,
            json_props().with_user_id("platform".into()),
        )
        .await;
    let refused = match forged {
        Err(_) => true,
        Ok(confirm) => confirm.await.is_err(),
    };
    assert!(
        refused,
        "RabbitMQ refuses a user_id that is not the connection's user"
    );

    // "guest" is genuine but not trusted.
    let mut fresh = Broker::connect(&services).await;
    let untrusted = fresh.request_raw(&event).await;
    let guest = login("plain", "u-3", json!({}));
    fresh
        .publish_raw(
            &serde_json::to_vec(&guest).unwrap(),
            json_props().with_user_id("guest".into()),
        )
        .await;
    fresh.dead_letter().await;
    fresh.dead_letter().await;
    assert_eq!(count(&db, "SELECT count(*) FROM processed_events").await, 0);
    app.stop().await;

    // Trusting "guest" lets its messages through.
    let mut settings = services.settings();
    settings.amqp.trusted_publishers = vec!["platform".into(), "guest".into()];
    let app = TestApp::spawn_with(settings).await;
    let trusted = login("plain", "u-4", json!({}));
    let correlation = uuid::Uuid::new_v4().to_string();
    fresh
        .publish_raw(
            &serde_json::to_vec(&trusted).unwrap(),
            json_props()
                .with_user_id("guest".into())
                .with_reply_to(fresh.reply_queue().into())
                .with_correlation_id(correlation.as_str().into()),
        )
        .await;
    assert_eq!(
        fresh.reply(&correlation).await.outcome,
        Outcome::UserCreated
    );
    assert!(
        !fresh.replied(&untrusted),
        "the untrusted message got no reply"
    );
    app.stop().await;
}

#[tokio::test]
async fn no_email_or_phone_reaches_the_logs_at_info_level() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let mut broker = Broker::connect(&services).await;
    let log = services.dir.join("worker.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut worker = WorkerProcess {
        child: services
            .command()
            .env("RUST_LOG", "info")
            .env("IDSYNC__LOG__FORMAT", "json")
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    };
    create_user(
        &db,
        Some("holder.secret@example.com"),
        Some("+8613911112222"),
        None,
    )
    .await;
    let leaky = [
        login(
            "matching",
            "p-1",
            json!({"email": "Private.Person@Example.com", "email_verified": true, "phone": "138 2222 3333", "phone_verified": true}),
        ),
        login(
            "asking",
            "p-2",
            json!({"email": "holder.secret@example.com", "email_verified": true}),
        ),
        login(
            "only",
            "p-3",
            json!({"email": "rejected.person@example.com", "email_verified": true}),
        ),
        login(
            "nope",
            "p-4",
            json!({"email": "unknown.connection@example.com"}),
        ),
        json!({"specversion": "spec.leak@example.com", "id": "p-5"}),
        json!({"specversion": "1.0", "id": "p-6", "source": "s", "type": "+8613944445555", "data": {}}),
        login("plain", "p-7", json!({"email": ["array.leak@example.com"]})),
    ];
    for event in &leaky {
        broker.login(event).await;
    }
    assert_eq!(worker.terminate().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("\"decided\"") || text.contains("decided"),
        "the log is not empty: {text}"
    );
    assert!(text.contains("dead-lettering"), "dead letters are logged");
    for secret in [
        "private.person",
        "Private.Person",
        "holder.secret",
        "rejected.person",
        "unknown.connection",
        "spec.leak",
        "array.leak",
        "13822223333",
        "138 2222 3333",
        "13911112222",
        "13944445555",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the log:\n{text}"
        );
    }
}

#[tokio::test]
async fn published_events_are_replayed_with_their_ids_and_pruned_after_retention() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    for n in 0..3 {
        broker
            .login(&login("plain", &format!("r-{n}"), json!({})))
            .await;
    }
    broker.login(&login("only", "r-rejected", json!({}))).await;
    let original = broker.drain_events(Duration::from_secs(1)).await;
    assert_eq!(original.len(), 4);

    // A late subscriber: its own queue, replayed into directly.
    let late = "late-subscriber";
    broker
        .channel
        .queue_declare(
            late.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let output = tokio::task::spawn_blocking({
        let mut command = services.command();
        command.args([
            "events",
            "replay",
            "--since",
            "1h",
            "--type",
            "user.created",
            "--queue",
            late,
        ]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("replayed 3 events (0 reached no queue)")
    );
    let mut replayed = Vec::new();
    while let Some(message) = broker
        .channel
        .basic_get(late.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        replayed.push(serde_json::from_slice::<Value>(&message.delivery.data).unwrap());
    }
    let originals: Vec<&Value> = original
        .iter()
        .filter(|e| e.body["type"] == "user.created")
        .map(|e| &e.body)
        .collect();
    assert_eq!(replayed.len(), 3);
    for event in &replayed {
        assert!(originals.contains(&event), "same id and content: {event}");
    }
    // To everyone, through the events exchange.
    let output = tokio::task::spawn_blocking({
        let mut command = services.command();
        command.args(["events", "replay", "--since", "2026-01-01T00:00:00Z"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 4 events"));
    let again = broker.drain_events(Duration::from_secs(1)).await;
    let ids = |events: &[Captured]| {
        events
            .iter()
            .map(|e| e.body["id"].clone())
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&again), ids(&original));
    app.stop().await;

    // Retention: published events and dedupe records older than their windows go; an event not
    // published yet, and recent ones, stay; accounts, identities and bindings are never pruned.
    let db = services.db().await;
    sqlx::raw_sql(
        r#"UPDATE outbox SET created_at = now() - interval '2 hours'
             WHERE id <> (SELECT max(id) FROM outbox WHERE kind = 'event');
           WITH held AS (
             INSERT INTO outbox (origin, kind, routing_key, message_id, payload, created_at)
               VALUES (gen_random_uuid(), 'event', 'user.created', gen_random_uuid(), '{}',
                       now() - interval '2 hours')
               RETURNING id, origin, created_at)
           INSERT INTO outbox_pending (id, origin, created_at, next_attempt_at)
             SELECT id, origin, created_at, now() + interval '1 day' FROM held;
           UPDATE processed_events SET processed_at = now() - interval '2 hours'
             WHERE event_id <> (SELECT payload -> 'data' ->> 'cause_event_id' FROM outbox
                                WHERE id = (SELECT max(id) FROM outbox o
                                            WHERE kind = 'event' AND NOT EXISTS (
                                              SELECT 1 FROM outbox_pending p
                                              WHERE p.id = o.id)));"#,
    )
    .execute(&db)
    .await
    .unwrap();
    let identities = count(&db, "SELECT count(*) FROM identities").await;
    let bindings = count(&db, "SELECT count(*) FROM bindings").await;
    let mut settings = services.settings();
    settings.outbox.retention = Duration::from_secs(3600);
    settings.worker.dedupe_retention = Some(Duration::from_secs(3600));
    settings.outbox.prune_interval = Duration::from_millis(200);
    let app = TestApp::spawn_with(settings).await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 1
    })
    .await
    .expect("old dedupe records pruned");
    wait_until(WAIT, || async {
        app.metric("idsync_pruned_rows_total{kind=\"event\"}").await >= 3.0
    })
    .await
    .expect("old published events pruned");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox o
             WHERE NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.id = o.id)"
        )
        .await,
        1,
        "the recent published event stays"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox_pending p JOIN outbox o USING (id)"
        )
        .await,
        1,
        "an event not published yet stays, however old"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        3,
        "accounts stay"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities").await,
        identities
    );
    assert_eq!(count(&db, "SELECT count(*) FROM bindings").await, bindings);
    let _ = QueueBindOptions::default();
    app.stop().await;
}

#[tokio::test]
async fn rows_waiting_at_the_upgrade_are_published_after_it() {
    // A database at the schema before publication state had a table of its own, holding an event
    // the broker refused twice (due again) and one already published.
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::create_database(&services.db_url)
        .await
        .unwrap();
    let db = services.db().await;
    identity_sync::db::MIGRATOR
        .run_to(20261203000015, &db)
        .await
        .unwrap();
    sqlx::raw_sql(
        r#"INSERT INTO outbox (origin, kind, routing_key, message_id, payload, created_at,
                               published_at, attempts, next_attempt_at)
           VALUES (gen_random_uuid(), 'event', 'user.created', gen_random_uuid(),
                   '{"id": "waiting"}', now() - interval '1 hour', NULL, 2,
                   now() - interval '1 second'),
                  (gen_random_uuid(), 'event', 'user.created', gen_random_uuid(),
                   '{"id": "published"}', now() - interval '1 hour',
                   now() - interval '59 minutes', 0, NULL);"#,
    )
    .execute(&db)
    .await
    .unwrap();

    identity_sync::db::MIGRATOR.run(&db).await.unwrap();
    let pending: Vec<(String, i32)> = sqlx::query_as(
        "SELECT o.payload ->> 'id', p.attempts FROM outbox_pending p JOIN outbox o USING (id)",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(pending, vec![("waiting".to_owned(), 2)], "carried over");

    let app = TestApp::spawn(&services).await;
    outbox_drained(&db, WAIT, "the waiting row published").await;
    let published: Vec<Value> = broker
        .drain_events(Duration::from_secs(1))
        .await
        .into_iter()
        .map(|e| e.body["id"].clone())
        .collect();
    assert_eq!(
        published,
        vec![json!("waiting")],
        "published once, the other not again"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox").await,
        2,
        "both kept for replay"
    );
    app.stop().await;
}

#[tokio::test]
async fn huge_bodies_and_maps_are_handled_cheaply() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    // 8 MiB: refused on its length alone.
    let mut huge = login("plain", "h-1", json!({}));
    huge["data"]["profile"]["name"] = json!("x".repeat(8 * 1024 * 1024));
    let correlation = broker.request(&huge).await;
    let reply = broker.reply(&correlation).await;
    assert!(reply.reason.unwrap().starts_with("too_large: "));
    broker.dead_letter().await;

    // A big attribute map inside the limit is an ordinary profile.
    let attributes: serde_json::Map<String, Value> =
        (0..2000).map(|n| (format!("k{n}"), json!(n))).collect();
    let reply = broker
        .login(&login("plain", "h-2", json!({"attributes": attributes})))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    app.stop().await;
}
