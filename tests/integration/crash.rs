//! Nothing is lost: events published while no worker runs, and a worker killed with kill -9 in
//! the middle of a stream, all end decided exactly once.

use std::collections::HashSet;

use serde_json::json;

use idsync_test_support::*;

#[tokio::test]
async fn events_published_while_the_worker_is_down_are_processed_after_start() {
    let services = Services::new().await;
    let broker = Broker::connect(&services).await;
    for n in 0..200 {
        broker
            .send(&login("plain", &format!("early-{n}"), json!({})))
            .await;
    }
    assert_eq!(broker.queue_depth(broker.work_queue()).await, 200);
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    count_reaches(
        &db,
        "SELECT count(*) FROM processed_events",
        200,
        "every waiting event decided",
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 200);
    outbox_drained(&db, WAIT, "every event published").await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_redelivers_without_double_effects() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let db = services.migrate().await;

    // 600 people, each logging in three times: 1800 events, 600 users expected.
    let people = 600;
    for round in 0..3 {
        for n in 0..people {
            broker
                .send(&login(
                    "plain",
                    &format!("p-{n}"),
                    json!({"name": format!("round {round}")}),
                ))
                .await;
        }
    }
    let total = people * 3;
    let mut kills = 0;
    for threshold in [200, 700, 1200] {
        let mut worker = WorkerProcess::start(&services);
        let reached = wait_until(WAIT, || async {
            count(&db, "SELECT count(*) FROM processed_events").await >= threshold
        })
        .await;
        worker.kill();
        if reached.is_ok() {
            kills += 1;
        }
    }
    assert_eq!(kills, 3, "the worker made progress before each kill");
    let mut worker = WorkerProcess::start(&services);
    wait_until(WAIT * 2, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == total as i64
    })
    .await
    .expect("every event decided once the worker runs again");
    outbox_drained(&db, WAIT, "the outbox drained, orphaned rows included").await;

    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        people as i64,
        "no duplicate account"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities").await,
        people as i64
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE kind = 'event'").await,
        people as i64,
        "one user.created per person"
    );
    // Consumers dedupe on the event id: every user.created id seen is one of the 600.
    let mut ids = HashSet::new();
    while let Some(event) = broker
        .next_event_within(std::time::Duration::from_secs(2))
        .await
    {
        assert_eq!(event.body["type"], "user.created");
        ids.insert(event.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ids.len(),
        people,
        "every user.created published, none with a second id"
    );
    assert_eq!(broker.queue_depth(broker.work_queue()).await, 0);
    assert_eq!(worker.terminate().code(), Some(0), "graceful stop exits 0");
    verify(&services.db_url).await;
}

// It arms a failure point, which only the `failpoints` feature compiles in (scripts/test).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_between_commit_and_ack_is_answered_by_the_dedupe_record_and_the_rows_adopted() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let db = services.migrate().await;
    for n in 0..300 {
        broker
            .send(&login("plain", &format!("c-{n}"), json!({})))
            .await;
    }
    // This worker exits right after its first commit: before its relay saw the rows and
    // before the broker got an ack.
    let mut doomed =
        WorkerProcess::start_with_env(&services, &[("IDSYNC_FAILPOINTS", "exit_after_commit")]);
    let status = tokio::task::spawn_blocking(move || doomed.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "it died at the failpoint");
    let committed = count(&db, "SELECT count(*) FROM processed_events").await;
    assert!(committed > 0, "the batch was committed");
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox_pending").await,
        committed,
        "its events were never published"
    );

    let app = TestApp::spawn(&services).await;
    count_reaches(
        &db,
        "SELECT count(*) FROM processed_events",
        300,
        "every event decided",
    )
    .await;
    outbox_drained(
        &db,
        WAIT,
        "the dead process's rows were adopted and published",
    )
    .await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "idsync_duplicates_total") as i64,
        committed,
        "the redelivered batch was answered from its dedupe records"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 300);
    let mut ids = HashSet::new();
    while let Some(event) = broker
        .next_event_within(std::time::Duration::from_secs(2))
        .await
    {
        ids.insert(event.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ids.len(),
        300,
        "every user.created published, the adopted ones too"
    );
    app.stop().await;
}
