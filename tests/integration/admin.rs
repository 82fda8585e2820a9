//! The admin API through HTTP, as admins and the platform use it: authentication, every endpoint's
//! success and error statuses, concurrent resolves, expiry, and the events each action publishes.

use serde_json::{Value, json};
use uuid::Uuid;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

/// A pending binding on `asking` for a new identity whose email matches `existing`.
async fn pending_binding(broker: &mut Broker, external_id: &str, email: &str) -> Uuid {
    let reply = broker
        .login(&login(
            "asking",
            external_id,
            json!({"email": email, "email_verified": true, "name": "Ext"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending, "{reply:?}");
    let event = broker.next_event().await;
    assert_eq!(event.body["type"], "binding.pending");
    reply.binding_id.unwrap()
}

#[tokio::test]
async fn authentication_and_roles() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;

    // Open endpoints.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/admin"] {
        let (status, _) = app.api_as(None).get(path).await;
        assert_eq!(status, 200, "{path} needs no token");
    }
    // Every API route refuses a missing or unknown token, whatever the method.
    let id = Uuid::now_v7();
    let routes = [
        ("GET", "/v1/bindings".to_owned()),
        ("GET", format!("/v1/bindings/{id}")),
        ("POST", format!("/v1/bindings/{id}/resolve")),
        ("GET", "/v1/users?user_pool_id=pool-1&email=a@b".to_owned()),
        ("POST", "/v1/users".to_owned()),
        ("GET", format!("/v1/users/{id}")),
        ("DELETE", format!("/v1/users/{id}/identities/plain/x")),
        ("GET", "/v1/connections".to_owned()),
        ("GET", "/v1/connections/pool-1/plain".to_owned()),
        ("PUT", "/v1/connections/pool-1/plain".to_owned()),
        ("GET", "/v1/audit".to_owned()),
    ];
    for token in [
        None,
        Some("not-a-real-token-at-all"),
        Some("Bearer"),
        Some(""),
    ] {
        for (method, path) in &routes {
            let api = app.api_as(token);
            let body = (*method != "GET" && *method != "DELETE").then(|| json!({}));
            let (status, body) = api.call(method.parse().unwrap(), path, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert_eq!(error_code(&body), "unauthorized");
        }
    }
    let response = reqwest::get(app.url("/v1/bindings")).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // A viewer reads but never writes.
    let viewer = app.api_as(Some(VIEWER_TOKEN));
    assert_eq!(viewer.get("/v1/bindings").await.0, 200);
    assert_eq!(viewer.get("/v1/connections").await.0, 200);
    for (method, path) in routes.iter().filter(|(m, _)| *m != "GET") {
        let (status, body) = viewer
            .call(method.parse().unwrap(), path, Some(json!({})))
            .await;
        assert_eq!(status, 403, "{method} {path}");
        assert_eq!(error_code(&body), "forbidden");
    }
    // A token in a different case of scheme still works; an unknown path is a JSON 404.
    let (status, body) = app.api().get("/v1/nothing-here").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    app.stop().await;
}

#[tokio::test]
async fn list_and_show_bindings() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(
        &db,
        Some("zhang@example.com"),
        Some("+8613800138000"),
        Some("zs"),
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();

    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(pending_binding(&mut broker, &format!("wc-{n}"), "zhang@example.com").await);
    }
    let (status, page) = api.get("/v1/bindings?limit=2").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[2].to_string(), "newest first");
    assert_eq!(items[1]["id"], ids[1].to_string());
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, next) = api
        .get(&format!("/v1/bindings?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(next["items"].as_array().unwrap().len(), 1);
    assert_eq!(next["items"][0]["id"], ids[0].to_string());
    assert_eq!(next["next_cursor"], Value::Null);

    for (query, expected) in [
        ("status=pending", 3),
        ("status=resolved", 0),
        ("user_pool_id=pool-1", 3),
        ("user_pool_id=pool-2", 0),
        ("connection=asking", 3),
        ("connection=matching", 0),
    ] {
        let (_, page) = api.get(&format!("/v1/bindings?{query}")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), expected, "{query}");
    }
    let (status, body) = api.get("/v1/bindings?status=maybe").await;
    assert_eq!((status, error_code(&body)), (422, "invalid_query"));
    assert_eq!(api.get("/v1/bindings?cursor=not-a-uuid").await.0, 400);
    assert_eq!(api.get("/v1/bindings?limit=lots").await.0, 400);

    let (status, binding) = api.get(&format!("/v1/bindings/{}", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(binding["user_pool_id"], POOL);
    assert_eq!(binding["connection"], "asking");
    assert_eq!(binding["external_id"], "wc-0");
    assert_eq!(binding["status"], "pending");
    assert_eq!(binding["reason"], "ask_binding");
    assert_eq!(
        binding["profile"],
        json!({"email": "zhang@example.com", "email_verified": true, "name": "Ext"})
    );
    assert_eq!(
        binding["candidates"],
        json!([{"id": existing, "email": "z***@example.com", "phone": "+86*******8000",
                "username": "zs", "name": "Existing", "attributes": {}, "identities": []}])
    );
    for key in ["created_at", "expires_at"] {
        assert!(
            binding[key]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .is_ok()
        );
    }
    for key in ["resolution", "user_id", "resolved_by", "resolved_at"] {
        assert_eq!(binding[key], Value::Null, "{key} is unset until resolved");
    }
    let (status, body) = api.get(&format!("/v1/bindings/{}", Uuid::now_v7())).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = api.get("/v1/bindings/12345").await;
    assert_eq!((status, error_code(&body)), (400, "bad_request"));
    app.stop().await;
}

#[tokio::test]
async fn link_resolution_links_the_identity_and_publishes_both_events() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("li@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let binding_id = pending_binding(&mut broker, "wc-link", "li@example.com").await;

    let (status, binding) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding_id}/resolve"),
            json!({"action": "link", "user_id": existing}),
        )
        .await;
    assert_eq!(status, 200, "{binding}");
    assert_eq!(binding["status"], "resolved");
    assert_eq!(binding["resolution"], "linked");
    assert_eq!(binding["user_id"], existing.to_string());
    assert_eq!(binding["resolved_by"], "ops-alice");
    assert!(binding["resolved_at"].is_string());

    let resolved = broker.next_event().await;
    assert_eq!(resolved.routing_key, "binding.resolved");
    assert_eq!(resolved.body["subject"], binding_id.to_string());
    assert_eq!(
        resolved.body["data"],
        json!({"binding_id": binding_id, "user_pool_id": POOL, "resolution": "linked",
               "user_id": existing, "resolved_by": "ops-alice", "proof": "admin"})
    );
    let linked = broker.next_event().await;
    assert_eq!(linked.routing_key, "user.linked");
    assert_eq!(linked.body["subject"], existing.to_string());
    let data = &linked.body["data"];
    assert_eq!(data["method"], "binding");
    assert_eq!(data["matched_on"], json!(["email"]));
    assert_eq!(data["user_id"], existing.to_string());
    assert_eq!(
        data["identity"],
        json!({"connection": "asking", "external_id": "wc-link"})
    );
    assert!(
        data["cause_event_id"].is_string(),
        "the login that opened the binding"
    );
    broker.no_more_events().await;

    // The identity now logs in to that account; resolving again is a conflict.
    let reply = broker.login(&login("asking", "wc-link", json!({}))).await;
    assert_eq!(
        (reply.outcome, reply.user_id),
        (Outcome::ExistingUser, Some(existing))
    );
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding_id}/resolve"),
            json!({"action": "reject"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "binding_not_pending"));
    app.stop().await;
}

#[tokio::test]
async fn create_and_reject_resolutions() {
    let services = Services::new().await;
    let db = services.migrate().await;
    create_user(&db, Some("wu@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();

    let first = pending_binding(&mut broker, "wc-create", "wu@example.com").await;
    let (status, binding) = api
        .post(
            &format!("/v1/bindings/{first}/resolve"),
            json!({"action": "create"}),
        )
        .await;
    assert_eq!(status, 200, "{binding}");
    assert_eq!(binding["resolution"], "created");
    let user_id = binding["user_id"].as_str().unwrap().to_owned();
    let resolved = broker.next_event().await;
    assert_eq!(resolved.body["data"]["resolution"], "created");
    assert_eq!(resolved.body["data"]["user_id"], user_id);
    let created = broker.next_event().await;
    assert_eq!(created.routing_key, "user.created");
    assert_eq!(created.body["data"]["user"]["id"], user_id);
    assert_eq!(
        created.body["data"]["user"]["email"],
        Value::Null,
        "the email stays with its holder"
    );
    assert_eq!(created.body["data"]["user"]["name"], "Ext");
    assert_eq!(
        created.body["data"]["identity"],
        json!({"connection": "asking", "external_id": "wc-create"})
    );

    let second = pending_binding(&mut broker, "wc-reject", "wu@example.com").await;
    let (status, binding) = api
        .post(
            &format!("/v1/bindings/{second}/resolve"),
            json!({"action": "reject", "reason": "not the same person"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(binding["resolution"], "rejected");
    assert_eq!(binding["user_id"], Value::Null);
    assert_eq!(binding["resolution_reason"], "not the same person");
    let resolved = broker.next_event().await;
    assert_eq!(
        resolved.body["data"],
        json!({"binding_id": second, "user_pool_id": POOL, "resolution": "rejected",
               "user_id": null, "resolved_by": "ops-alice", "proof": "admin"})
    );
    broker.no_more_events().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM identities WHERE external_id = 'wc-reject'"
        )
        .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn resolution_errors() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let holder = create_user(&db, Some("chen@example.com"), None, Some("chen")).await;
    let other = create_user(&db, Some("other@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();
    let binding = pending_binding(&mut broker, "wc-err", "chen@example.com").await;
    let path = format!("/v1/bindings/{binding}/resolve");

    let (status, body) = api
        .post(
            &format!("/v1/bindings/{}/resolve", Uuid::now_v7()),
            json!({"action": "create"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = api
        .post(&path, json!({"action": "link", "user_id": Uuid::now_v7()}))
        .await;
    assert_eq!((status, error_code(&body)), (422, "user_not_in_pool"));
    // A real account, of another pool.
    let (status, foreign) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-2", "username": "elsewhere"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = api
        .post(&path, json!({"action": "link", "user_id": foreign["id"]}))
        .await;
    assert_eq!((status, error_code(&body)), (422, "user_not_in_pool"));
    assert_eq!(body["error"]["field"], "user_id");
    for bad in [
        json!({"action": "merge"}),
        json!({"action": "link"}),
        json!({"user_id": holder}),
        json!({"action": "create", "extra": 1}),
    ] {
        let (status, body) = api.post(&path, bad.clone()).await;
        assert_eq!((status, error_code(&body)), (422, "invalid_field"), "{bad}");
    }
    let (status, _) = api
        .post(
            &path,
            json!({"action": "reject", "reason": "x".repeat(1001)}),
        )
        .await;
    assert_eq!(status, 422);
    let response = reqwest::Client::new()
        .post(app.url(&path))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = reqwest::Client::new()
        .post(app.url(&path))
        .bearer_auth(ADMIN_TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415, "JSON only");

    // `other` already holds an identity of `asking`: linking a second one is a conflict.
    let other_binding = pending_binding(&mut broker, "wc-other", "other@example.com").await;
    let (status, _) = api
        .post(
            &format!("/v1/bindings/{other_binding}/resolve"),
            json!({"action": "link", "user_id": other}),
        )
        .await;
    assert_eq!(status, 200);
    broker.next_event().await;
    broker.next_event().await;
    let (status, body) = api
        .post(&path, json!({"action": "link", "user_id": other}))
        .await;
    assert_eq!((status, error_code(&body)), (409, "user_already_linked"));

    // login_only connections never create accounts: an ambiguous match there opens a binding.
    let by_username = create_user(&db, None, None, Some("amb")).await;
    let by_email = create_user(&db, Some("amb@example.com"), None, None).await;
    let reply = broker
        .login(&login(
            "only",
            "ldap-amb",
            json!({"email": "amb@example.com", "email_verified": true, "username": "amb"}),
        ))
        .await;
    assert_eq!(reply.reason.as_deref(), Some("ambiguous_match"));
    broker.next_event().await;
    let (status, body) = api
        .post(
            &format!("/v1/bindings/{}/resolve", reply.binding_id.unwrap()),
            json!({"action": "create"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "login_only_connection"));
    let (status, _) = api
        .post(
            &format!("/v1/bindings/{}/resolve", reply.binding_id.unwrap()),
            json!({"action": "link", "user_id": by_email}),
        )
        .await;
    assert_eq!(status, 200, "linking is allowed");
    let _ = by_username;
    app.stop().await;
}

#[tokio::test]
async fn of_concurrent_resolves_exactly_one_wins() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let user = create_user(&db, Some("race@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let binding = pending_binding(&mut broker, "wc-race", "race@example.com").await;

    let path = format!("/v1/bindings/{binding}/resolve");
    let bodies = [
        json!({"action": "link", "user_id": user}),
        json!({"action": "create"}),
        json!({"action": "reject"}),
    ];
    let mut tasks = Vec::new();
    for n in 0..12 {
        let api = app.api();
        let path = path.clone();
        let body = bodies[n % 3].clone();
        tasks.push(tokio::spawn(async move { api.post(&path, body).await }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == 409 {
            assert_eq!(error_code(&body), "binding_not_pending");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        11,
        "{statuses:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE routing_key = 'binding.resolved'"
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn overdue_bindings_expire_and_the_next_login_starts_afresh() {
    let services = Services::new().await;
    let db = services.migrate().await;
    create_user(&db, Some("brief@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let profile = json!({"email": "brief@example.com", "email_verified": true});
    let first = broker.login(&login("brief", "fs-1", profile.clone())).await;
    let binding = first.binding_id.expect("a pending binding");
    assert_eq!(broker.next_event().await.routing_key, "binding.pending");

    let expired = broker.next_event().await;
    assert_eq!(expired.routing_key, "binding.expired");
    assert_eq!(expired.body["subject"], binding.to_string());
    assert_eq!(
        expired.body["data"],
        json!({"binding_id": binding, "user_pool_id": POOL,
               "identity": {"connection": "brief", "external_id": "fs-1"}})
    );
    let (_, shown) = app.api().get(&format!("/v1/bindings/{binding}")).await;
    assert_eq!(shown["status"], "expired");
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding}/resolve"),
            json!({"action": "reject"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "binding_not_pending"));

    let again = broker.login(&login("brief", "fs-1", profile)).await;
    assert_eq!(again.outcome, Outcome::BindingPending);
    assert_ne!(again.binding_id, Some(binding), "a new binding");
    assert_eq!(broker.next_event().await.routing_key, "binding.pending");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE routing_key = 'binding.expired'"
        )
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn users_lookup_create_and_unlink() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();

    let (status, created) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "email": " Ma@Example.com", "email_verified": true,
                   "phone": "+86 139 1234 5678", "username": "Ma", "name": "马"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["email"], "ma@example.com");
    assert_eq!(created["phone"], "+8613912345678");
    assert_eq!(created["username"], "ma");
    assert_eq!(created["identities"], json!([]));
    let id = created["id"].as_str().unwrap().to_owned();

    for query in [
        "email=MA@example.com",
        "phone=%2B8613912345678",
        "phone=+8613912345678",
        "username=%20MA%20",
    ] {
        let (status, page) = api
            .get(&format!("/v1/users?user_pool_id=pool-1&{query}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(page["items"][0]["id"], id, "{query}");
    }
    let (_, page) = api
        .get("/v1/users?user_pool_id=pool-2&email=ma@example.com")
        .await;
    assert_eq!(page["items"], json!([]), "pools are separate");
    for query in [
        "email=ma@example.com",
        "user_pool_id=pool-1",
        "user_pool_id=pool-1&email=a@b&username=x",
        "user_pool_id=pool-1&email=nope",
    ] {
        let (status, _) = api.get(&format!("/v1/users?{query}")).await;
        assert_eq!(status, 422, "{query}");
    }
    let (status, body) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "email": "ma@example.com", "username": "other"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "field_taken"));
    let (status, body) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "email": "broken"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid_field"));
    assert_eq!(body["error"]["field"], "email");
    let (status, _) = api
        .post("/v1/users", json!({"email": "x@example.com"}))
        .await;
    assert_eq!(status, 422, "user_pool_id is required");

    // The person logs in through a field-matching connection and is linked to the account.
    let reply = broker
        .login(&login(
            "matching",
            "dt-ma",
            json!({"email": "ma@example.com", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserLinked);
    broker.next_event().await;
    let (status, user) = api.get(&format!("/v1/users/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(user["identities"][0]["connection"], "matching");
    assert_eq!(user["identities"][0]["external_id"], "dt-ma");
    assert_eq!(
        api.get(&format!("/v1/users/{}", Uuid::now_v7())).await.0,
        404
    );

    let (status, after) = api
        .delete(&format!("/v1/users/{id}/identities/matching/dt-ma"))
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["identities"], json!([]));
    let unlinked = broker.next_event().await;
    assert_eq!(unlinked.routing_key, "user.unlinked");
    assert_eq!(unlinked.body["subject"], id);
    assert_eq!(
        unlinked.body["data"],
        json!({"user_pool_id": POOL, "user_id": id,
               "identity": {"connection": "matching", "external_id": "dt-ma"}, "actor": "ops-alice",
               "reason": null})
    );
    let (status, body) = api
        .delete(&format!("/v1/users/{id}/identities/matching/dt-ma"))
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let again = broker
        .login(&login(
            "matching",
            "dt-ma",
            json!({"email": "ma@example.com", "email_verified": true}),
        ))
        .await;
    assert_eq!(
        again.outcome,
        Outcome::UserLinked,
        "decided afresh after the unlink"
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_are_read_created_and_updated_live() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();

    let (status, list) = api.get("/v1/connections").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["asking", "brief", "matching", "only", "plain", "trusting"]
    );
    let (status, asking) = api.get("/v1/connections/pool-1/asking").await;
    assert_eq!(status, 200);
    assert_eq!(
        asking,
        json!({"user_pool_id": "pool-1", "identifier": "asking", "display_name": "asking", "provider": "wecom",
               "login_mode": "normal", "association": "ask_binding", "match_fields": ["email", "phone", "username"],
               "require_verified": true, "default_country_code": "86", "binding_ttl": "1h",
               "trust_unverified_accounts": false, "allowed_email_domains": [],
               "on_profile_change": "notify", "mapping": {}, "verified_fields": ["phone", "email", "attributes.employee_id"],
               "match_rule": "any", "unique_attributes": [],
               "effective_mapping": {"phone": "{attributes.mobile}", "email": "{attributes.biz_mail}",
                                     "attributes.employee_id": "{attributes.userid}"},
               "on_source_removal": "notify",
               "removal_guard": {"max_fraction": 0.1, "min_count": 20, "window": "1h"},
               "held_removals": 0,
               "settings_version": 1})
    );
    assert_eq!(api.get("/v1/connections/pool-1/nope").await.0, 404);

    let (status, created) = api
        .put("/v1/connections/pool-9/feishu", json!({"association": "field_matching", "match_fields": ["phone"], "default_country_code": "+86"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["default_country_code"], "86");
    assert_eq!(created["binding_ttl"], "72h");
    let (status, updated) = api
        .put(
            "/v1/connections/pool-9/feishu",
            json!({"login_mode": "login_only"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(updated["login_mode"], "login_only");
    assert_eq!(
        updated["association"], "disabled",
        "a PUT replaces the whole connection"
    );
    assert_eq!(created["settings_version"], 1);
    assert_eq!(
        updated["settings_version"], 2,
        "a change takes the next version"
    );
    let (_, same) = api
        .put(
            "/v1/connections/pool-9/feishu",
            json!({"login_mode": "login_only"}),
        )
        .await;
    assert_eq!(
        same["settings_version"], 2,
        "the same settings again are no change"
    );

    for (body, field) in [
        (json!({"association": "sometimes"}), "association"),
        (
            json!({"match_fields": ["email", "shoe_size"]}),
            "match_fields",
        ),
        (json!({"binding_ttl": "soon"}), "binding_ttl"),
        (json!({"identifier": "other"}), "identifier"),
        (json!({"user_pool_id": "pool-1"}), "user_pool_id"),
    ] {
        let (status, error) = api.put("/v1/connections/pool-9/feishu", body.clone()).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = api.put("/v1/connections/pool-9/Bad_Name", json!({})).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("identifier"))
    );
    let (status, _) = api
        .put("/v1/connections/pool-9/feishu", json!({"unknown_key": 1}))
        .await;
    assert_eq!(status, 422);

    // The next event sees the change, without a restart.
    let before = broker.login(&login("plain", "live-1", json!({}))).await;
    assert_eq!(before.outcome, Outcome::UserCreated);
    let (status, _) = api
        .put(
            "/v1/connections/pool-1/plain",
            json!({"login_mode": "login_only"}),
        )
        .await;
    assert_eq!(status, 200);
    let after = broker.login(&login("plain", "live-2", json!({}))).await;
    assert_eq!(after.outcome, Outcome::Rejected);
    app.stop().await;
}

#[tokio::test]
async fn every_admin_write_is_audited() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let user = create_user(&db, Some("audit@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let api = app.api();

    let binding = pending_binding(&mut broker, "wc-audit", "audit@example.com").await;
    api.post(
        &format!("/v1/bindings/{binding}/resolve"),
        json!({"action": "link", "user_id": user}),
    )
    .await;
    api.put(
        "/v1/connections/pool-1/plain",
        json!({"display_name": "Renamed"}),
    )
    .await;
    api.post(
        "/v1/users",
        json!({"user_pool_id": "pool-1", "username": "audited"}),
    )
    .await;
    api.delete(&format!("/v1/users/{user}/identities/asking/wc-audit"))
        .await;
    // Failed writes and reads are not audited.
    api.post(
        &format!("/v1/bindings/{binding}/resolve"),
        json!({"action": "reject"}),
    )
    .await;
    api.get("/v1/bindings").await;

    let (status, page) = api.get("/v1/audit?limit=3").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["action"], "identity.unlink");
    assert_eq!(
        items[0]["target"],
        format!("user/{user}/identities/asking/wc-audit")
    );
    assert_eq!(
        items[0]["before"]["identities"][0]["external_id"],
        "wc-audit"
    );
    assert_eq!(items[0]["after"]["identities"], json!([]));
    assert_eq!(items[1]["action"], "user.create");
    assert_eq!(items[1]["before"], Value::Null);
    assert_eq!(items[2]["action"], "connection.update");
    assert_eq!(items[2]["before"]["display_name"], "Association disabled");
    assert_eq!(items[2]["after"]["display_name"], "Renamed");
    for item in items {
        assert_eq!(item["actor"], "ops-alice");
        assert!(item["time"].is_string());
    }
    let (_, rest) = api
        .get(&format!(
            "/v1/audit?limit=3&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await;
    let rest = rest["items"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["action"], "binding.link");
    assert_eq!(rest[0]["target"], format!("binding/{binding}"));
    assert_eq!(rest[0]["before"]["status"], "pending");
    assert_eq!(rest[0]["after"]["status"], "resolved");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let (status, doc) = app.api_as(None).get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/bindings", vec!["get"]),
        ("/v1/bindings/{id}", vec!["get"]),
        ("/v1/bindings/{id}/resolve", vec!["post"]),
        ("/v1/users", vec!["get", "post"]),
        ("/v1/users/{id}", vec!["get"]),
        (
            "/v1/users/{id}/identities/{connection}/{external_id}",
            vec!["delete"],
        ),
        ("/v1/connections", vec!["get"]),
        (
            "/v1/connections/{user_pool_id}/{identifier}",
            vec!["get", "put"],
        ),
        ("/v1/audit", vec!["get"]),
        (
            "/v1/connections/{user_pool_id}/{identifier}/simulate",
            vec!["post"],
        ),
        ("/v1/stats/decisions", vec!["get"]),
    ] {
        for method in methods {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} documented");
            assert_eq!(
                operation["security"],
                json!([{"bearer": []}]),
                "{method} {path}"
            );
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["BindingView"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn values_the_database_cannot_store_are_a_client_error() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();
    for path in [
        "/v1/bindings?user_pool_id=%00pool",
        "/v1/bindings?connection=a%00b",
        "/v1/users?user_pool_id=p%00&username=x",
        "/v1/connections/pool%00/x",
    ] {
        let (status, body) = api.get(path).await;
        assert!(
            status == 400 || status == 404 || status == 422,
            "{path}: {status} {body}"
        );
        assert_ne!(error_code(&body), "internal");
    }
    app.stop().await;
}

#[tokio::test]
async fn wrong_methods_and_oversized_bodies_get_json_errors() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();

    let response = api
        .http
        .patch(app.url("/v1/bindings"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "method_not_allowed");

    let (status, body) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "username": "big", "name": "x".repeat(70 * 1024)}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    // Under the limit, the same request is an ordinary one.
    let (status, body) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "username": "small", "name": "x".repeat(200)}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
