//! Correctness under concurrency: many copies of one new identity, or several identities with the
//! same new email, spread over prefetched batches and two worker processes on one queue.

use std::collections::HashMap;

use serde_json::json;
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

async fn outcomes(broker: &mut Broker, pending: Vec<String>) -> HashMap<Outcome, usize> {
    let mut seen = HashMap::new();
    for correlation_id in pending {
        *seen
            .entry(broker.reply(&correlation_id).await.outcome)
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_copies_of_one_new_identity_with_two_workers_give_one_user() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let first = TestApp::spawn(&services).await;
    let second = TestApp::spawn(&services).await;
    let db = services.db().await;

    let mut pending = Vec::new();
    for _ in 0..40 {
        // Distinct event ids: these are 40 logins of one person, not one login redelivered.
        let event = login(
            "matching",
            "the-same-person",
            json!({"email": "one@example.com", "email_verified": true}),
        );
        pending.push(broker.request(&event).await);
    }
    let seen = outcomes(&mut broker, pending).await;
    assert_eq!(seen.get(&Outcome::UserCreated), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&Outcome::ExistingUser), Some(&39), "{seen:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_events").await,
        40
    );
    let created = broker.next_event().await;
    assert_eq!(created.body["type"], "user.created");
    broker.no_more_events().await;
    let decided = first
        .metric("idsync_decisions_total{outcome=\"existing_user\"}")
        .await
        + second
            .metric("idsync_decisions_total{outcome=\"existing_user\"}")
            .await;
    assert_eq!(decided, 39.0);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identities_sharing_a_new_email_end_on_one_account() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let first = TestApp::spawn(&services).await;
    let second = TestApp::spawn(&services).await;
    let db = services.db().await;

    // Two identities (two field-matching connections) with one new email, ten logins each.
    let mut pending = Vec::new();
    for _ in 0..10 {
        for connection in ["matching", "trusting"] {
            let event = login(
                connection,
                "shared",
                json!({"email": "Shared@Example.com", "email_verified": true}),
            );
            pending.push(broker.request(&event).await);
        }
    }
    let seen = outcomes(&mut broker, pending).await;
    assert_eq!(seen.get(&Outcome::UserCreated), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&Outcome::UserLinked), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&Outcome::ExistingUser), Some(&18), "{seen:?}");
    let users: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(users.len(), 1);
    let linked: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM identities")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(linked, vec![users[0], users[0]]);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_email_goes_to_exactly_one_of_several_new_accounts() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let first = TestApp::spawn(&services).await;
    let second = TestApp::spawn(&services).await;
    let db = services.db().await;

    // Association disabled: five different people claim the same verified email.
    let mut pending = Vec::new();
    for n in 0..5 {
        let event = login(
            "plain",
            &format!("person-{n}"),
            json!({"email": "contested@example.com", "email_verified": true}),
        );
        pending.push(broker.request(&event).await);
    }
    let seen = outcomes(&mut broker, pending).await;
    assert_eq!(seen.get(&Outcome::UserCreated), Some(&5));
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 5);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE email = 'contested@example.com'"
        )
        .await,
        1
    );
    first.stop().await;
    second.stop().await;
}

/// While a batch is being decided, what arrives fills the next batch, which starts beside it
/// when full or once the first has run for a few milliseconds: a batch held up (here by the test
/// taking its identity's lock first) holds up nothing else, and no more than
/// `concurrent_batches` are in flight.
#[tokio::test]
async fn a_held_batch_holds_up_nothing_else_and_batches_in_flight_are_bounded() {
    let services = Services::new().await;
    let broker = Broker::connect(&services).await;
    let db = services.migrate().await;
    let env = [
        ("IDSYNC__WORKER__BATCH_SIZE", "5"),
        ("IDSYNC__WORKER__CONCURRENT_BATCHES", "2"),
    ];
    let mut worker = WorkerProcess::start_with_env(&services, &env);

    // The worker's lock of the identity `held` (db::locks), taken by the test.
    let mut holder = db.acquire().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_lock(hashtextextended(
             'identity' || chr(31) || $1 || chr(31) || 'plain' || chr(31) || 'held', 0))",
    )
    .bind(POOL)
    .execute(&mut *holder)
    .await
    .unwrap();
    broker.send(&login("plain", "held", json!({}))).await;
    let waiting = || async {
        count(
            &db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .await
    };
    wait_until(WAIT, || async { waiting().await == 1 })
        .await
        .expect("the first batch waits for the lock");

    // Twelve more: some are decided beside the held batch, in one batch of at most five (two
    // batches at once, and a finished batch is settled only after the held one).
    for n in 0..12 {
        broker
            .send(&login("plain", &format!("next-{n}"), json!({})))
            .await;
    }
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await >= 1
    })
    .await
    .expect("logins decided while the first batch is held");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let beside = count(&db, "SELECT count(*) FROM processed_events").await;
    assert!(
        (1..=5).contains(&beside),
        "one batch beside the held one, not more: {beside} decided"
    );
    // Nothing is acknowledged while the first batch is held: not the held login, nor the batch
    // decided beside it (settled after it, in order), nor those prefetched behind them. A
    // multiple-ack covering the held delivery would show here.
    let queue = format!("/queues/{}/idsync.login-completed", services.vhost);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // The management API counts every few seconds.
        let stats = management_get(&queue).await;
        if stats["messages_unacknowledged"] == 13 && stats["messages_ready"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "all 13 delivered and held unacknowledged: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // Killed while held: the held login is decided by the next worker once the lock is free,
    // once; those decided beside it are answered by their dedupe records.
    worker.kill();
    let mut worker = WorkerProcess::start_with_env(&services, &env);
    wait_until(WAIT, || async { waiting().await >= 2 })
        .await
        .expect("the next worker's batch waits for the lock too");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 13
    })
    .await
    .expect("every login decided once the lock is free");
    outbox_drained(&db, WAIT, "every event published").await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 13);
    assert_eq!(worker.terminate().code(), Some(0));
    verify(&services.db_url).await;
}
