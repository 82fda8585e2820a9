//! Changed identifiers (contract section 1, step 3), through the broker: a linked identity's
//! source sends another email, phone or username; `identity.changed` says so, and with
//! `on_profile_change = "update_user"` the account follows, unless another account holds the
//! value.

use identity_sync::domain::decision::Outcome;
use serde_json::{Value, json};
use uuid::Uuid;

use idsync_test_support::*;

fn profile(email: &str) -> Value {
    json!({"email": email, "email_verified": true, "name": "Zhang San"})
}

async fn on_profile_change(app: &TestApp, mode: &str) {
    let (status, body) = app
        .api()
        .put(
            &format!("/v1/connections/{POOL}/plain"),
            json!({"provider": "oidc", "on_profile_change": mode}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["on_profile_change"], mode);
}

async fn email_of(app: &TestApp, user: Uuid) -> Value {
    let (_, body) = app.api().get(&format!("/v1/users/{user}")).await;
    body["email"].clone()
}

#[tokio::test]
async fn a_changed_email_is_reported_ignored_applied_or_refused_as_the_connection_says() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let created = broker
        .login(&login("plain", "oidc-zs", profile("zs@corp.example")))
        .await;
    assert_eq!(created.outcome, Outcome::UserCreated);
    let user = created.user_id.unwrap();
    assert_eq!(broker.next_event().await.routing_key, "user.created");

    // `notify` (the default): reported, not applied.
    let event = login("plain", "oidc-zs", profile("zhang.san@corp.example"));
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::ExistingUser);
    let changed = broker.next_event().await;
    assert_eq!(changed.routing_key, "identity.changed");
    assert_eq!(changed.body["subject"], user.to_string());
    assert_eq!(
        changed.body["data"],
        json!({"user_pool_id": POOL, "user_id": user,
               "identity": {"connection": "plain", "external_id": "oidc-zs"},
               "changes": [{"field": "email", "old": "zs@corp.example",
                            "new": "zhang.san@corp.example", "applied": false}],
               "action": "notified", "cause_event_id": event["id"]})
    );
    broker.no_more_events().await;
    assert_eq!(email_of(&app, user).await, "zs@corp.example");
    // The snapshot moved on: the same profile again is no change.
    broker.login(&event_again(&event)).await;
    broker.no_more_events().await;

    // `ignore`: nothing.
    on_profile_change(&app, "ignore").await;
    broker
        .login(&login("plain", "oidc-zs", profile("zs3@corp.example")))
        .await;
    broker.no_more_events().await;

    // `update_user`: the account follows, and says so.
    on_profile_change(&app, "update_user").await;
    let event = login("plain", "oidc-zs", profile("zs4@corp.example"));
    broker.login(&event).await;
    let changed = broker.next_event().await;
    assert_eq!(changed.routing_key, "identity.changed");
    assert_eq!(changed.body["data"]["action"], "user_updated");
    assert_eq!(
        changed.body["data"]["changes"],
        json!([{"field": "email", "old": "zs3@corp.example", "new": "zs4@corp.example",
                "applied": true}])
    );
    let updated = broker.next_event().await;
    assert_eq!(updated.routing_key, "user.updated");
    assert_eq!(
        updated.body["data"],
        json!({"user_pool_id": POOL,
               "user": {"id": user, "email": "zs4@corp.example", "phone": null,
                        "username": null, "name": "Zhang San", "attributes": {}},
               "changed": ["email"], "cause_event_id": event["id"], "actor": null})
    );
    assert_eq!(email_of(&app, user).await, "zs4@corp.example");

    // A recycled address another account holds: reported with the collision, never moved.
    let other = create_user(&db, Some("boss@corp.example"), None, None).await;
    broker
        .login(&login("plain", "oidc-zs", profile("boss@corp.example")))
        .await;
    let changed = broker.next_event().await;
    assert_eq!(changed.body["data"]["action"], "notified");
    assert_eq!(
        changed.body["data"]["changes"],
        json!([{"field": "email", "old": "zs4@corp.example", "new": "boss@corp.example",
                "applied": false, "held_by": other}])
    );
    broker.no_more_events().await;
    assert_eq!(email_of(&app, user).await, "zs4@corp.example");
    assert_eq!(email_of(&app, other).await, "boss@corp.example");
    app.stop().await;
}

/// The same login with a new id (a later login of the same person).
fn event_again(event: &Value) -> Value {
    let mut again = event.clone();
    again["id"] = json!(Uuid::now_v7().to_string());
    again
}

#[tokio::test]
async fn changes_within_one_batch_are_judged_one_after_another() {
    let services = Services::new().await;
    // `plain` applies changes, from the configuration (it is applied again at every start).
    let settings = || {
        let mut settings = services.settings();
        for spec in &mut settings.connections {
            if spec.identifier.as_deref() == Some("plain") {
                spec.on_profile_change = Some("update_user".into());
            }
        }
        settings
    };
    let app = TestApp::spawn_with(settings()).await;
    let mut broker = Broker::connect(&services).await;
    let created = broker
        .login(&login("plain", "oidc-b", profile("b1@corp.example")))
        .await;
    let user = created.user_id.unwrap();
    broker.next_event().await;
    app.stop().await;

    // Three logins queued while no worker runs: the next one usually takes them as one batch,
    // and each is compared with the one before it. A worker takes what has arrived when it has
    // no batch in flight, so now and then the first of them comes alone; the result must be the
    // same, but then the round did not test a batch, and is run again.
    let mut old = "b1@corp.example".to_string();
    for round in 0..6 {
        let (twice, last) = (
            format!("r{round}a@corp.example"),
            format!("r{round}b@corp.example"),
        );
        let mut sent = Vec::new();
        for email in [&twice, &twice, &last] {
            sent.push(
                broker
                    .request(&login("plain", "oidc-b", profile(email)))
                    .await,
            );
        }
        let app = TestApp::spawn_with(settings()).await;
        for correlation_id in sent {
            assert_eq!(
                broker.reply(&correlation_id).await.outcome,
                Outcome::ExistingUser
            );
        }
        let events = broker
            .drain_events(std::time::Duration::from_millis(800))
            .await;
        let kinds: Vec<_> = events.iter().map(|e| e.routing_key.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "identity.changed",
                "user.updated",
                "identity.changed",
                "user.updated"
            ]
        );
        assert_eq!(events[0].body["data"]["changes"][0]["old"], old.as_str());
        assert_eq!(events[2].body["data"]["changes"][0]["old"], twice.as_str());
        assert_eq!(email_of(&app, user).await, last.as_str());
        let batches = (
            app.metric("idsync_batch_size_count").await,
            app.metric("idsync_batch_size_sum").await,
        );
        app.stop().await;
        if batches == (1.0, 3.0) {
            return;
        }
        assert_eq!(batches.1, 3.0, "{batches:?}");
        old = last;
    }
    panic!("the three logins never came in one batch in six rounds");
}
