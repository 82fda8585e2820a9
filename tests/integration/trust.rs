//! Association you can trust (contract section 1's safety rules, section 7's evidence), through
//! the broker and the admin API: each attack that used to link an identity to someone else's
//! account now parks it as a pending binding that says why.

use identity_sync::domain::decision::Outcome;
use serde_json::{Value, json};
use uuid::Uuid;

use idsync_test_support::*;

/// Creates an account through the admin API; returns its id.
async fn account(app: &TestApp, body: Value) -> String {
    let mut body = body;
    body["user_pool_id"] = json!(POOL);
    let (status, created) = app.api().post("/v1/users", body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn decision(app: &TestApp, event: &Value) -> Value {
    let (status, decision) = app
        .api()
        .get(&format!("/v1/decisions/{}", event["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{decision}");
    decision
}

#[tokio::test]
async fn a_kelvin_sign_username_or_email_never_links_to_the_plain_account() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let kevin = account(
        &app,
        json!({"username": "kevin", "email": "kevin@corp.example", "email_verified": true}),
    )
    .await;

    // An LDAP-style connection matching on username (and email), login only.
    let event = login("only", "ldap-kevin", json!({"username": "\u{212A}evin"}));
    let reply = broker.login(&event).await;
    assert_eq!(
        reply.outcome,
        Outcome::BindingPending,
        "not linked, not rejected"
    );
    assert_eq!(reply.reason.as_deref(), Some("confusable_identifier"));
    assert_eq!(reply.user_id, None);
    let evidence = decision(&app, &event).await;
    assert_eq!(
        evidence["fields"],
        json!([{"field": "username", "value": "\u{212A}evin", "usable": false, "why_not": "suspicious", "origin": "event"}]),
        "the evidence shows the lookalike as it came"
    );
    assert_eq!(
        evidence["candidates"],
        json!([{"user_id": kevin, "matched_on": ["username"], "set_aside": "confusable_identifier"}])
    );

    // A verified email written with the Kelvin sign, on a field-matching connection.
    let event = login(
        "matching",
        "dt-kevin",
        json!({"email": "\u{212A}evin@corp.example", "email_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    assert_eq!(reply.reason.as_deref(), Some("confusable_identifier"));
    assert_eq!(
        count(&services.db().await, "SELECT count(*) FROM identities").await,
        0,
        "nothing was linked"
    );

    // A fullwidth username on a connection that creates accounts: a new account, without it.
    let event = login("plain", "oidc-kevin", json!({"username": "ｋｅｖｉｎ"}));
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let (_, created) = app
        .api()
        .get(&format!("/v1/users/{}", reply.user_id.unwrap()))
        .await;
    assert_eq!(
        created["username"],
        Value::Null,
        "a suspicious value is never copied"
    );

    // Legitimate non-ASCII values match exactly as before.
    let zhang = account(&app, json!({"username": "张三"})).await;
    let reply = broker
        .login(&login("only", "ldap-zhang", json!({"username": "张三"})))
        .await;
    assert_eq!(reply.outcome, Outcome::UserLinked);
    assert_eq!(reply.user_id.map(|u| u.to_string()), Some(zhang));

    // The admin API refuses to store a lookalike.
    let (status, body) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": "\u{212A}evin2"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid_field"));
    app.stop().await;
}

#[tokio::test]
async fn an_account_whose_email_was_never_verified_is_not_taken_over() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    // Someone registered the victim's address and waited; the address was never verified.
    let squatter = account(
        &app,
        json!({"email": "victim@corp.example", "email_verified": false}),
    )
    .await;

    let event = login(
        "matching",
        "dt-victim",
        json!({"email": "victim@corp.example", "email_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    assert_eq!(reply.reason.as_deref(), Some("candidate_unverified"));
    let evidence = decision(&app, &event).await;
    assert_eq!(evidence["candidates"][0]["user_id"], squatter.as_str());
    assert_eq!(
        evidence["candidates"][0]["set_aside"],
        "candidate_unverified"
    );

    // A connection that is the source of truth for its accounts may trust them.
    let (status, _) = app
        .api()
        .put(
            "/v1/connections/pool-1/matching",
            json!({"association": "field_matching", "match_fields": ["email", "phone"],
                   "default_country_code": "86", "trust_unverified_accounts": true}),
        )
        .await;
    assert_eq!(status, 200);
    let other = account(&app, json!({"email": "second@corp.example"})).await;
    let reply = broker
        .login(&login(
            "matching",
            "dt-second",
            json!({"email": "second@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserLinked);
    assert_eq!(reply.user_id.map(|u| u.to_string()), Some(other));
    app.stop().await;
}

#[tokio::test]
async fn protected_accounts_and_foreign_domains_are_never_linked() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let admin = account(
        &app,
        json!({"email": "root@corp.example", "email_verified": true, "protected": true}),
    )
    .await;
    let reply = broker
        .login(&login(
            "matching",
            "dt-root",
            json!({"email": "root@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    assert_eq!(reply.reason.as_deref(), Some("protected_account"));

    // Protecting an existing account through PATCH publishes user.updated.
    let plain = account(
        &app,
        json!({"email": "ops@corp.example", "email_verified": true}),
    )
    .await;
    let (status, patched) = app
        .api()
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{plain}"),
            Some(json!({"protected": true, "name": "Ops"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["protected"], true);
    let updated = loop {
        let event = broker.next_event().await;
        if event.routing_key == "user.updated" {
            break event;
        }
    };
    assert_eq!(updated.body["subject"], plain.as_str());
    assert_eq!(
        updated.body["data"]["changed"],
        json!(["name", "protected"])
    );
    assert_eq!(updated.body["data"]["actor"], "ops-alice");
    let reply = broker
        .login(&login(
            "matching",
            "dt-ops",
            json!({"email": "ops@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.reason.as_deref(), Some("protected_account"));
    let (_, shown) = app.api().get(&format!("/v1/users/{admin}")).await;
    assert_eq!(
        shown["identities"],
        json!([]),
        "the protected account was not linked"
    );

    // An allowed-domains list makes other addresses unusable: not matched, not copied.
    let (status, _) = app
        .api()
        .put(
            "/v1/connections/pool-1/matching",
            json!({"association": "field_matching", "match_fields": ["email"],
                   "allowed_email_domains": ["corp.example"]}),
        )
        .await;
    assert_eq!(status, 200);
    account(
        &app,
        json!({"email": "ann@gmail.example", "email_verified": true}),
    )
    .await;
    let event = login(
        "matching",
        "dt-ann",
        json!({"email": "ann@gmail.example", "email_verified": true}),
    );
    let reply = broker.login(&event).await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "not linked");
    let evidence = decision(&app, &event).await;
    assert_eq!(evidence["fields"][0]["why_not"], "domain_not_allowed");
    assert_eq!(
        evidence["settings_version"], 2,
        "the configured version, then one PUT"
    );
    assert_eq!(
        evidence["settings"]["allowed_email_domains"],
        json!(["corp.example"])
    );
    app.stop().await;
}

#[tokio::test]
async fn creating_from_a_binding_ignores_values_held_in_other_pools() {
    let services = Services::new().await;
    let db = services.migrate().await;
    // Another pool's account holds the same email.
    let input = identity_sync::accounts::AccountInput {
        user_pool_id: Some("pool-2".into()),
        email: Some("shared@corp.example".into()),
        email_verified: true,
        ..Default::default()
    };
    identity_sync::accounts::create(&db, &input.normalise(None).unwrap(), false)
        .await
        .unwrap();
    let candidate = create_user(&db, None, None, Some("shared")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "asking",
            "wc-shared",
            json!({"email": "shared@corp.example", "email_verified": true, "username": "shared"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    let binding = reply.binding_id.unwrap();
    let (status, resolved) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding}/resolve"),
            json!({"action": "create"}),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    let user_id: Uuid = resolved["user_id"].as_str().unwrap().parse().unwrap();
    let (_, user) = app.api().get(&format!("/v1/users/{user_id}")).await;
    assert_eq!(
        user["email"], "shared@corp.example",
        "held in pool-2 only: free in pool-1"
    );
    assert_eq!(
        user["username"],
        Value::Null,
        "held in pool-1 by {candidate}"
    );
    app.stop().await;
}

// The command line blocks this thread while the application serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_explained_to_admins_masked_to_viewers_and_on_the_command_line() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("li@corp.example"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let event = login(
        "asking",
        "wc-li",
        json!({"email": "Li@Corp.Example", "email_verified": true, "phone": "12", "phone_verified": true}),
    );
    let reply = broker.login(&event).await;
    let id = event["id"].as_str().unwrap();

    let decision = decision(&app, &event).await;
    assert_eq!(decision["outcome"], "binding_pending");
    assert_eq!(decision["reason"], "ask_binding");
    assert_eq!(
        decision["binding_id"],
        reply.binding_id.unwrap().to_string()
    );
    assert_eq!(decision["source"], "urn:test:platform");
    assert_eq!(decision["connection"], "asking");
    assert_eq!(decision["settings_version"], 1);
    assert_eq!(decision["settings"]["association"], "ask_binding");
    assert_eq!(
        decision["fields"],
        json!([
            {"field": "email", "value": "li@corp.example", "usable": true, "why_not": null, "origin": "event"},
            {"field": "phone", "value": "12", "usable": false, "why_not": "malformed", "origin": "event"},
        ])
    );
    assert_eq!(
        decision["candidates"],
        json!([{"user_id": existing, "matched_on": ["email"], "set_aside": null}])
    );
    let (_, masked) = app
        .api_as(Some(VIEWER_TOKEN))
        .get(&format!("/v1/decisions/{id}"))
        .await;
    assert_eq!(masked["fields"][0]["value"], "l***@corp.example");

    let (status, missing) = app.api().get("/v1/decisions/nope").await;
    assert_eq!((status, error_code(&missing)), (404, "not_found"));
    // The same id from two sources needs the source.
    let mut twin = login("plain", "twin", json!({}));
    twin["id"] = json!(id);
    twin["source"] = json!("urn:test:other");
    broker.login(&twin).await;
    let (status, body) = app.api().get(&format!("/v1/decisions/{id}")).await;
    assert_eq!((status, error_code(&body)), (422, "source_required"));
    let (status, body) = app
        .api()
        .get(&format!("/v1/decisions/{id}?source=urn:test:other"))
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("user_created"))
    );

    let output = services
        .command()
        .args(["decisions", "show", id, "--source", "urn:test:platform"])
        .args(["--api", &app.url(""), "--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("binding_pending") && text.contains("malformed"),
        "{text}"
    );
    assert!(text.contains(&existing.to_string()), "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_to_one_account_are_not_lost() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let id = account(
        &app,
        json!({"email": "race@corp.example", "email_verified": true}),
    )
    .await;
    // Twenty PATCHes at once, each changing one field: every change survives.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (api, id) = (app.api(), id.clone());
        tasks.push(tokio::spawn(async move {
            let body = if i == 0 {
                json!({"protected": true})
            } else {
                json!({"name": format!("name-{i}")})
            };
            api.call(
                reqwest::Method::PATCH,
                &format!("/v1/users/{id}"),
                Some(body),
            )
            .await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(status == 200 || status == 503, "{status} {body}");
    }
    let (_, user) = app.api().get(&format!("/v1/users/{id}")).await;
    assert_eq!(
        user["protected"], true,
        "the protection was not overwritten"
    );

    // A new address is not verified unless said so.
    let (status, user) = app
        .api()
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"email": "moved@corp.example"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(user["email_verified"], false);
    app.stop().await;
}
