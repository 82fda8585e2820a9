//! Step 2 of the decision: an event already processed (same source and id) has no new effect and
//! gets its first decision again.

use serde_json::json;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

#[tokio::test]
async fn a_resent_event_gets_the_same_reply_and_no_second_effect() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    for (connection, profile, outcome) in [
        (
            "plain",
            json!({"email": "a@example.com", "email_verified": true}),
            Outcome::UserCreated,
        ),
        (
            "only",
            json!({"email": "b@example.com", "email_verified": true}),
            Outcome::Rejected,
        ),
    ] {
        let event = login(connection, "same-person", profile);
        let first = broker.login(&event).await;
        assert_eq!(first.outcome, outcome);
        broker.next_event().await;
        let users = count(&db, "SELECT count(*) FROM users").await;

        let second = broker.login(&event).await;
        assert_eq!(second, first, "the original decision, field for field");
        broker.no_more_events().await;
        assert_eq!(count(&db, "SELECT count(*) FROM users").await, users);
    }
    assert_eq!(count(&db, "SELECT count(*) FROM processed_events").await, 2);
    assert_eq!(app.metric("idsync_duplicates_total").await, 2.0);
    app.stop().await;
}

#[tokio::test]
async fn copies_arriving_together_are_decided_once() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let event = login("asking", "burst", json!({"name": "Burst"}));
    let mut pending = Vec::new();
    for _ in 0..8 {
        pending.push(broker.request(&event).await);
    }
    let mut replies = Vec::new();
    for correlation_id in pending {
        replies.push(broker.reply(&correlation_id).await);
    }
    assert!(
        replies.iter().all(|r| *r == replies[0]),
        "every copy got the first decision"
    );
    assert_eq!(replies[0].outcome, Outcome::UserCreated);
    broker.next_event().await;
    broker.no_more_events().await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE kind = 'event'").await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_id_from_another_source_is_another_event() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let mut event = login("plain", "p-1", json!({}));
    let first = broker.login(&event).await;
    event["source"] = json!("urn:test:another-platform");
    let second = broker.login(&event).await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    assert_eq!(
        second.outcome,
        Outcome::ExistingUser,
        "decided anew, the identity is now known"
    );
    app.stop().await;
}
