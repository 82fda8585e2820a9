//! Every decision outcome through the broker: the reply, the published event (envelope, data and
//! AMQP properties, field by field) and the rows left in the database.

use serde_json::{Value, json};
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

/// Envelope fields common to every outbound event.
fn assert_envelope(event: &Captured, kind: &str, subject: &str) {
    let body = &event.body;
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["source"], "identity-sync");
    assert_eq!(body["type"], kind);
    assert_eq!(body["subject"], subject);
    assert_eq!(body["datacontenttype"], "application/json");
    let id: Uuid = body["id"]
        .as_str()
        .unwrap()
        .parse()
        .expect("event id is a UUID");
    assert!(chrono::DateTime::parse_from_rfc3339(body["time"].as_str().unwrap()).is_ok());
    assert_eq!(event.routing_key, kind, "routing key is the event type");
    let props = &event.properties;
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), kind);
}

fn data_keys(event: &Captured) -> Vec<String> {
    let mut keys: Vec<String> = event.body["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn new_identity_creates_a_user() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let event = login(
        "matching",
        "dt-1",
        json!({
            "email": " Zhang.San@Example.com ", "email_verified": true,
            "phone": "138 0013 8000", "phone_verified": true,
            "username": "ZhangSan", "name": "张三", "nickname": "San",
            "attributes": {"dept": "sales"}
        }),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.event_id.as_deref(), event["id"].as_str());
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let user_id = reply.user_id.expect("a user id");
    assert_eq!(reply.binding_id, None);
    assert_eq!(reply.reason, None);

    let created = broker.next_event().await;
    assert_envelope(&created, "user.created", &user_id.to_string());
    assert_eq!(
        data_keys(&created),
        ["cause_event_id", "identity", "user", "user_pool_id"]
    );
    let data = &created.body["data"];
    assert_eq!(data["user_pool_id"], POOL);
    assert_eq!(
        data["user"],
        json!({
            "id": user_id, "email": "zhang.san@example.com", "phone": "+8613800138000",
            "username": "zhangsan", "name": "张三", "attributes": {}
        })
    );
    assert_eq!(
        data["identity"],
        json!({"connection": "matching", "external_id": "dt-1"})
    );
    assert_eq!(data["cause_event_id"], event["id"]);
    broker.no_more_events().await;

    let (email, verified): (String, bool) =
        sqlx::query_as("SELECT email, email_verified FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((email.as_str(), verified), ("zhang.san@example.com", true));
    let profile: Value = sqlx::query_scalar(
        "SELECT profile FROM identities WHERE connection = 'matching' AND external_id = 'dt-1'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        profile["attributes"]["dept"], "sales",
        "the identity keeps the full profile"
    );
    assert_eq!(profile["nickname"], "San");
    app.stop().await;
}

#[tokio::test]
async fn known_identity_is_an_existing_user_and_refreshes_its_snapshot() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let first = broker
        .login(&login("plain", "oidc-7", json!({"name": "Old"})))
        .await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    broker.next_event().await;
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_login_at FROM identities")
            .fetch_one(&db)
            .await
            .unwrap();

    let again = login(
        "plain",
        "oidc-7",
        json!({"name": "New", "email": "x@example.com"}),
    );
    let reply = broker.login(&again).await;
    assert_eq!(reply.outcome, Outcome::ExistingUser);
    assert_eq!(reply.user_id, first.user_id);
    assert_eq!(reply.event_id.as_deref(), again["id"].as_str());
    assert_eq!((reply.binding_id, reply.reason), (None, None));
    broker.no_more_events().await;

    let (profile, after): (Value, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT profile, last_login_at FROM identities")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(profile["name"], "New");
    assert!(after > before, "last login time moved");
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn field_matching_links_to_the_one_matching_user() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("li.si@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let event = login(
        "matching",
        "dt-2",
        json!({"email": "LI.SI@example.com", "email_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::UserLinked);
    assert_eq!(reply.user_id, Some(existing));
    assert_eq!((reply.binding_id, reply.reason), (None, None));

    let linked = broker.next_event().await;
    assert_envelope(&linked, "user.linked", &existing.to_string());
    assert_eq!(
        data_keys(&linked),
        [
            "cause_event_id",
            "identity",
            "matched_on",
            "method",
            "user_id",
            "user_pool_id"
        ]
    );
    let data = &linked.body["data"];
    assert_eq!(data["user_pool_id"], POOL);
    assert_eq!(data["user_id"], existing.to_string());
    assert_eq!(
        data["identity"],
        json!({"connection": "matching", "external_id": "dt-2"})
    );
    assert_eq!(data["method"], "field_matching");
    assert_eq!(data["matched_on"], json!(["email"]));
    assert_eq!(data["cause_event_id"], event["id"]);
    broker.no_more_events().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        1,
        "no new user"
    );
    app.stop().await;
}

#[tokio::test]
async fn ask_binding_parks_the_identity_and_reports_the_same_binding_again() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, None, Some("+8613900139000"), None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let event = login(
        "asking",
        "wc-1",
        json!({"phone": "139 0013 9000", "phone_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    assert_eq!(reply.user_id, None);
    assert_eq!(reply.reason.as_deref(), Some("ask_binding"));
    let binding_id = reply.binding_id.expect("a binding id");

    let pending = broker.next_event().await;
    assert_envelope(&pending, "binding.pending", &binding_id.to_string());
    assert_eq!(
        data_keys(&pending),
        [
            "binding_id",
            "candidate_evidence",
            "candidates",
            "cause_event_id",
            "expires_at",
            "fields",
            "identity",
            "reason",
            "user_pool_id"
        ]
    );
    // The evidence, values masked.
    assert_eq!(
        pending.body["data"]["fields"],
        json!([{"field": "phone", "value": "+86*******9000", "usable": true, "why_not": null, "origin": "event"}])
    );
    assert_eq!(
        pending.body["data"]["candidate_evidence"],
        json!([{"user_id": existing, "matched_on": ["phone"], "set_aside": null}])
    );
    let data = &pending.body["data"];
    assert_eq!(data["binding_id"], binding_id.to_string());
    assert_eq!(data["user_pool_id"], POOL);
    assert_eq!(
        data["identity"],
        json!({"connection": "asking", "external_id": "wc-1"})
    );
    assert_eq!(data["candidates"], json!([existing]));
    assert_eq!(data["reason"], "ask_binding");
    assert_eq!(data["cause_event_id"], event["id"]);
    let expires: chrono::DateTime<chrono::Utc> =
        data["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::minutes(55) && ttl <= chrono::Duration::hours(1),
        "binding_ttl = 1h"
    );

    let again = broker
        .login(&login(
            "asking",
            "wc-1",
            json!({"phone": "13900139000", "phone_verified": true}),
        ))
        .await;
    assert_eq!(again.outcome, Outcome::BindingPending);
    assert_eq!(again.binding_id, Some(binding_id), "the same binding");
    assert_eq!(again.reason.as_deref(), Some("ask_binding"));
    broker.no_more_events().await;

    let (status, candidates): (String, Vec<Uuid>) =
        sqlx::query_as("SELECT status, candidates FROM bindings WHERE id = $1")
            .bind(binding_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), candidates), ("pending", vec![existing]));
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities").await,
        0,
        "nothing linked yet"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_matching_users_never_auto_link() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let by_email = create_user(&db, Some("wang@example.com"), None, None).await;
    let by_phone = create_user(&db, None, Some("+8613700137000"), None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let reply = broker
        .login(&login(
            "matching",
            "dt-3",
            json!({"email": "wang@example.com", "email_verified": true,
                   "phone": "+86 137 0013 7000", "phone_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    assert_eq!(reply.reason.as_deref(), Some("ambiguous_match"));
    let pending = broker.next_event().await;
    let mut expected = vec![by_email.to_string(), by_phone.to_string()];
    expected.sort();
    assert_eq!(pending.body["data"]["candidates"], json!(expected));
    assert_eq!(pending.body["data"]["reason"], "ambiguous_match");
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_candidate_holding_an_identity_of_the_connection_is_not_linked_twice() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    // The first identity creates the user with this email; a second identity of the same
    // connection with the same email must not take over the account.
    let first = broker
        .login(&login(
            "matching",
            "dt-a",
            json!({"email": "zhao@example.com", "email_verified": true}),
        ))
        .await;
    assert_eq!(first.outcome, Outcome::UserCreated);
    broker.next_event().await;
    let second = broker
        .login(&login(
            "matching",
            "dt-b",
            json!({"email": "zhao@example.com", "email_verified": true}),
        ))
        .await;
    assert_eq!(second.outcome, Outcome::BindingPending);
    assert_eq!(second.reason.as_deref(), Some("candidate_already_linked"));
    let pending = broker.next_event().await;
    assert_eq!(
        pending.body["data"]["candidates"],
        json!([first.user_id.unwrap()])
    );
    app.stop().await;
}

#[tokio::test]
async fn login_only_rejects_unknown_people() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    let event = login(
        "only",
        "ldap-1",
        json!({"email": "nobody@example.com", "email_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::Rejected);
    assert_eq!(reply.reason.as_deref(), Some("unknown_user"));
    assert_eq!((reply.user_id, reply.binding_id), (None, None));

    let rejected = broker.next_event().await;
    assert_envelope(&rejected, "login.rejected", "only/ldap-1");
    assert_eq!(
        data_keys(&rejected),
        [
            "candidates",
            "cause_event_id",
            "fields",
            "identity",
            "reason",
            "user_pool_id"
        ]
    );
    let data = &rejected.body["data"];
    assert_eq!(
        data["fields"],
        json!([{"field": "email", "value": "n***@example.com", "usable": true, "why_not": null, "origin": "event"}])
    );
    assert_eq!(data["candidates"], json!([]));
    assert_eq!(data["user_pool_id"], POOL);
    assert_eq!(
        data["identity"],
        json!({"connection": "only", "external_id": "ldap-1"})
    );
    assert_eq!(data["reason"], "unknown_user");
    assert_eq!(data["cause_event_id"], event["id"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        0,
        "login_only never creates"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn login_only_still_links_a_known_person() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, None, None, Some("zhou")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let reply = broker
        .login(&login("only", "ldap-2", json!({"username": " Zhou "})))
        .await;
    assert_eq!(reply.outcome, Outcome::UserLinked);
    assert_eq!(reply.user_id, Some(existing));
    let linked = broker.next_event().await;
    assert_eq!(linked.body["data"]["matched_on"], json!(["username"]));
    app.stop().await;
}

#[tokio::test]
async fn held_and_unverified_fields_are_left_off_a_new_user() {
    let services = Services::new().await;
    let db = services.migrate().await;
    create_user(&db, Some("taken@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    // Association disabled: the holder of the email is not a candidate, but keeps the email.
    let reply = broker
        .login(&login(
            "plain",
            "oidc-9",
            json!({"email": "taken@example.com", "email_verified": true,
                   "phone": "+8613600136000", "phone_verified": false,
                   "username": "sun"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let created = broker.next_event().await;
    let user = &created.body["data"]["user"];
    assert_eq!(user["email"], Value::Null, "held by another user");
    assert_eq!(user["phone"], Value::Null, "not verified");
    assert_eq!(user["username"], "sun");
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn unverified_fields_match_where_verification_is_not_required() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("qian@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let strict = broker
        .login(&login(
            "matching",
            "x-1",
            json!({"email": "qian@example.com"}),
        ))
        .await;
    assert_eq!(
        strict.outcome,
        Outcome::UserCreated,
        "unverified email does not match"
    );
    broker.next_event().await;
    let relaxed = broker
        .login(&login(
            "trusting",
            "x-1",
            json!({"email": "qian@example.com"}),
        ))
        .await;
    assert_eq!(relaxed.outcome, Outcome::UserLinked);
    assert_eq!(relaxed.user_id, Some(existing));
    app.stop().await;
}

#[tokio::test]
async fn malformed_contact_fields_are_ignored_and_the_event_still_processed() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let reply = broker
        .login(&login(
            "matching",
            "dt-9",
            json!({"email": "not-an-email", "email_verified": true, "phone": "12", "phone_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let created = broker.next_event().await;
    assert_eq!(created.body["data"]["user"]["email"], Value::Null);
    assert_eq!(created.body["data"]["user"]["phone"], Value::Null);
    app.stop().await;
}
