//! Promises of the contract and of docs/RELIABILITY.md that need a whole system to show: pools
//! are separate, the database's errors are told apart (retry or dead-letter), a refused event does
//! not hold back the others, a graceful stop finishes its batch, dedupe records expire.

use std::time::Duration;

use identity_sync::domain::decision::Outcome;
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;

use idsync_test_support::*;

#[tokio::test]
async fn a_login_never_matches_a_user_of_another_pool() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let input = identity_sync::accounts::AccountInput {
        user_pool_id: Some("pool-2".into()),
        email: Some("same@corp.example".into()),
        email_verified: true,
        username: Some("same".into()),
        ..Default::default()
    };
    identity_sync::accounts::create(&db, &input.normalise(None).unwrap(), false)
        .await
        .unwrap();
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "matching",
            "dt-same",
            json!({"email": "same@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(
        reply.outcome,
        Outcome::UserCreated,
        "not linked across pools"
    );
    let reply = broker
        .login(&login("only", "ldap-same", json!({"username": "same"})))
        .await;
    assert_eq!(reply.outcome, Outcome::Rejected, "unknown in pool-1");
    let pool2: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identities i JOIN users u ON u.id = i.user_id WHERE u.user_pool_id = 'pool-2'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(pool2, 0, "the pool-2 account gained no identity");
    app.stop().await;
}

/// A trigger that raises `code` for logins of `external_id`, `times` times (or for ever).
async fn failing_trigger(db: &sqlx::PgPool, external_id: &str, code: &str, times: Option<i64>) {
    let name = format!("fail_{}", external_id.replace('-', "_"));
    let limit = times.map_or("NULL".to_owned(), |t| t.to_string());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE SEQUENCE {name}_tries;
           CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.external_id = '{external_id}'
                AND ({limit}::bigint IS NULL OR nextval('{name}_tries') <= {limit}) THEN
               RAISE EXCEPTION 'injected' USING ERRCODE = '{code}';
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER {name} BEFORE INSERT ON identities
             FOR EACH ROW EXECUTE FUNCTION {name}();"#
    )))
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn database_errors_are_retried_or_dead_lettered_by_their_class() {
    let services = Services::new().await;
    let db = services.migrate().await;
    // Permanent: a check violation, every time.
    failing_trigger(&db, "refused", "23514", None).await;
    // Transient: a read-only standby during a failover, twice; a serialization failure, twice.
    failing_trigger(&db, "failover", "25006", Some(2)).await;
    failing_trigger(&db, "conflicted", "40001", Some(2)).await;
    let mut settings = services.settings();
    settings.worker.max_retry_delay = Duration::from_millis(100);
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect(&services).await;

    let reply = broker.login(&login("plain", "refused", json!({}))).await;
    assert_eq!(reply.outcome, Outcome::Error);
    let reason = reply.reason.unwrap();
    assert!(
        reason.starts_with("processing_failed: the database refused the event (SQLSTATE 23514)"),
        "{reason}"
    );
    assert!(error_header(&broker.dead_letter().await).starts_with("processing_failed: "));

    for external_id in ["failover", "conflicted"] {
        let reply = broker.login(&login("plain", external_id, json!({}))).await;
        assert_eq!(
            reply.outcome,
            Outcome::UserCreated,
            "{external_id}: retried, then decided"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"database\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_dead_letters_total{reason=\"processing_failed\"}"
        ),
        1.0,
        "only the permanent failure was dead-lettered"
    );
    app.stop().await;
}

/// A subscriber's queue bound to the events matching `pattern` that holds at most `max_length`
/// messages and refuses the rest (`reject-publish`: the broker nacks the publish).
async fn full_subscriber(broker: &Broker, queue: &str, max_length: i32, pattern: &str) {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(max_length));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare(queue.into(), durable, args)
        .await
        .unwrap();
    broker
        .channel
        .queue_bind(
            queue.into(),
            "idsync.events".into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_event_the_broker_refuses_does_not_hold_back_the_events_behind_it() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let mut broker = Broker::connect(&services).await;
    // A subscriber of binding events whose queue takes one message and refuses the next.
    full_subscriber(&broker, "small.bindings", 1, "binding.*").await;
    create_user(&db, Some("held@corp.example"), None, None).await;
    let app = TestApp::spawn(&services).await;

    let first = broker
        .login(&login(
            "asking",
            "wc-1",
            json!({"email": "held@corp.example", "email_verified": true}),
        ))
        .await;
    let second = broker
        .login(&login(
            "asking",
            "wc-2",
            json!({"email": "held@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(first.outcome, Outcome::BindingPending);
    assert_eq!(second.outcome, Outcome::BindingPending);
    // The second binding.pending was refused: set aside, not published.
    wait_until(WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM outbox_pending WHERE attempts > 0",
        )
        .await
            == 1
    })
    .await
    .expect("the refused event was set aside");
    // The events behind it go out meanwhile.
    for n in 0..20 {
        broker
            .login(&login("plain", &format!("behind-{n}"), json!({})))
            .await;
    }
    let mut created = 0;
    while created < 20 {
        let event = broker.next_event().await;
        if event.routing_key == "user.created" {
            created += 1;
        }
    }
    // Refused again and again meanwhile, it is tried less and less often: each attempt sets it
    // aside for twice as long as the one before (1 s, 2 s, 4 s..., capped at 60 s).
    let mut due: Vec<(i32, chrono::DateTime<chrono::Utc>)> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while due.len() < 3 {
        let (attempts, next): (i32, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
            "SELECT attempts, next_attempt_at FROM outbox_pending WHERE attempts > 0",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if due.last().is_none_or(|(last, _)| *last < attempts) {
            due.push((attempts, next));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attempts so far: {due:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for pair in due.windows(2) {
        let ((_, earlier), (attempts, later)) = (pair[0], pair[1]);
        // Set aside for 2^(attempts - 1) s from its attempt, which came once it was due.
        let set_aside = (later - earlier).num_milliseconds();
        let at_least = 1000 * 2i64.pow(attempts as u32 - 1);
        assert!(
            set_aside >= at_least,
            "{due:?}: attempt {attempts} set aside {set_aside} ms"
        );
    }
    // Room again: the refused event is published on a later attempt.
    broker
        .channel
        .queue_purge("small.bindings".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    outbox_drained(&db, WAIT, "published once the queue had room").await;
    let got = broker
        .channel
        .basic_get("small.bindings".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the refused event arrived");
    let body: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(
        body["data"]["binding_id"],
        second.binding_id.unwrap().to_string()
    );
    app.stop().await;
}

/// A broker that refuses every publish (a subscriber's queue that takes nothing, bound to every
/// event) is not hammered: each refusal ends the relay's session, and sessions refused outright
/// come at growing intervals (100 ms doubling), not once per event. Once the queue is gone, every
/// event is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_every_publish_is_backed_off_from_and_nothing_is_lost() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let mut broker = Broker::connect(&services).await;
    full_subscriber(&broker, "full.everything", 0, "#").await;
    let app = TestApp::spawn(&services).await;
    let sessions = |metrics: &str| {
        metric_value(
            metrics,
            "idsync_transient_errors_total{component=\"relay\"}",
        )
    };
    let before = sessions(&app.metrics().await);
    // 60 logins over about 6 s, each with an event the broker refuses.
    let started = std::time::Instant::now();
    for n in 0..60 {
        broker
            .login(&login("plain", &format!("refused-{n}"), json!({})))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let metrics = app.metrics().await;
    let ended = sessions(&metrics) - before;
    // Refused outright, the delays grow: 100 ms, 200 ms, 400 ms... (with jitter, at least half
    // of each), so a few seconds hold about a dozen sessions, not one per event.
    assert!(
        (1.0..=16.0).contains(&ended),
        "{ended} relay sessions ended in {elapsed:?}"
    );
    assert_eq!(
        metric_value(&metrics, "idsync_outbox_published_total{kind=\"event\"}"),
        0.0,
        "the broker took no event"
    );
    // The queue goes: every refused event is published on a later attempt.
    broker
        .channel
        .queue_delete("full.everything".into(), Default::default())
        .await
        .unwrap();
    outbox_drained(&db, WAIT * 3, "every refused event published").await;
    assert_eq!(
        metric_value(
            &app.metrics().await,
            "idsync_outbox_published_total{kind=\"event\"}"
        ),
        60.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_the_batch_in_flight() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let broker = Broker::connect(&services).await;
    for n in 0..3000 {
        broker
            .send(&login("plain", &format!("g-{n}"), json!({})))
            .await;
    }
    let app = TestApp::spawn(&services).await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await >= 500
    })
    .await
    .expect("deciding");
    app.stop().await;
    let decided = count(&db, "SELECT count(*) FROM processed_events").await;
    assert!(decided < 3000, "stopped mid-stream ({decided} decided)");
    // Every decided event was acknowledged before the stop: the queue holds exactly the rest.
    let waiting = broker.queue_depth(broker.work_queue()).await as i64;
    assert_eq!(
        waiting + decided,
        3000,
        "nothing decided was left unacknowledged"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox_pending").await,
        0,
        "and its events were published"
    );
    // So a restart decides the rest with no duplicate.
    let app = TestApp::spawn(&services).await;
    count_reaches(
        &db,
        "SELECT count(*) FROM processed_events",
        3000,
        "the rest decided",
    )
    .await;
    assert_eq!(app.metric("idsync_duplicates_total").await, 0.0);
    app.stop().await;
}

#[tokio::test]
async fn an_event_resent_after_the_dedupe_retention_is_decided_again() {
    let services = Services::with_keys(
        "",
        &[
            ("worker", "dedupe_retention = \"1s\""),
            ("outbox", "prune_interval = \"200ms\""),
        ],
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;
    let event = login("plain", "once-upon", json!({}));
    assert_eq!(broker.login(&event).await.outcome, Outcome::UserCreated);
    // Within the retention it is a duplicate.
    assert_eq!(broker.login(&event).await.outcome, Outcome::UserCreated);
    assert_eq!(app.metric("idsync_duplicates_total").await, 1.0);
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 0
    })
    .await
    .expect("the dedupe record was pruned");
    // After it, the same event is decided again: its identity is linked now.
    assert_eq!(broker.login(&event).await.outcome, Outcome::ExistingUser);
    assert_eq!(app.metric("idsync_duplicates_total").await, 1.0);
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
    app.stop().await;
}
