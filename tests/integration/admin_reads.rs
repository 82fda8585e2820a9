//! What the console's pages read: accounts found by an attribute's value, the audit log filtered
//! by actor, action and time, and the decisions of the last hours by connection and outcome.

use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

// Multi-threaded: the command line blocks one thread while the API answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_found_by_an_attributes_value() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();
    let mut ids = Vec::new();
    for (username, dept, badge) in [
        ("a", "sales", "B1"),
        ("b", "sales", "B2"),
        ("c", "ops", "B3"),
    ] {
        let (status, body) = api
            .post(
                "/v1/users",
                json!({"user_pool_id": "pool-1", "username": username, "email": format!("{username}@corp.example"),
                       "email_verified": true, "attributes": {"dept": dept, "badge": badge}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let found = |q: &str| {
        let api = app.api();
        let q = q.to_owned();
        async move { api.get(&format!("/v1/users?user_pool_id=pool-1&{q}")).await }
    };
    let (status, page) = found("attribute=dept&value=sales").await;
    assert_eq!(status, 200, "{page}");
    let mut got: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut sales = ids[..2].to_vec();
    sales.sort();
    assert_eq!(got, sales);
    // Values are trimmed, and compared exactly otherwise.
    let (_, page) = found("attribute=badge&value=%20B3%20").await;
    assert_eq!(page["items"][0]["username"], "c");
    let (_, page) = found("attribute=badge&value=b3").await;
    assert_eq!(page["items"], json!([]));
    // Another pool's accounts are not found.
    let (_, page) = app
        .api()
        .get("/v1/users?user_pool_id=pool-2&attribute=dept&value=sales")
        .await;
    assert_eq!(page["items"], json!([]));
    // A viewer sees the accounts masked.
    let (_, page) = app
        .api_as(Some(VIEWER_TOKEN))
        .get("/v1/users?user_pool_id=pool-1&attribute=badge&value=B1")
        .await;
    assert_eq!(page["items"][0]["email"], "a***@corp.example");
    for (q, field) in [
        ("attribute=dept", "value"),
        ("value=sales", "value"),
        ("attribute=no%20such&value=x", "attribute"),
        ("attribute=dept&value=x&email=a@corp.example", ""),
    ] {
        let (status, body) = found(q).await;
        assert_eq!(status, 422, "{q}: {body}");
        if !field.is_empty() {
            assert_eq!(body["error"]["field"], field, "{q}: {body}");
        }
    }
    // The command line too.
    let mut command = app.admin_command(&services);
    command.args([
        "users",
        "find",
        "--pool",
        "pool-1",
        "--attribute",
        "badge",
        "--value",
        "B2",
        "--json",
    ]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let page: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["items"][0]["id"], ids[1].as_str());
}

#[tokio::test]
async fn the_audit_log_is_filtered_by_actor_action_and_time() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();
    let (status, _) = api
        .put(
            "/v1/connections/pool-1/plain",
            json!({"display_name": "One"}),
        )
        .await;
    assert_eq!(status, 200);
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, _) = api
        .post(
            "/v1/users",
            json!({"user_pool_id": "pool-1", "username": "audited"}),
        )
        .await;
    assert_eq!(status, 201);
    api.put(
        "/v1/connections/pool-1/plain",
        json!({"display_name": "Two"}),
    )
    .await;
    let actions = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["action"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = api.get("/v1/audit?action=connection.update").await;
    assert_eq!(actions(&page), ["connection.update", "connection.update"]);
    let since = urlencode(&between.to_rfc3339());
    let (_, page) = api.get(&format!("/v1/audit?since={since}")).await;
    assert_eq!(actions(&page), ["connection.update", "user.create"]);
    let (_, page) = api.get(&format!("/v1/audit?until={since}")).await;
    assert_eq!(actions(&page), ["connection.update"]);
    assert_eq!(page["items"][0]["after"]["display_name"], "One");
    let (_, page) = api.get("/v1/audit?actor=ops-alice&limit=1").await;
    assert_eq!(actions(&page), ["connection.update"]);
    // The cursor keeps the filter.
    let (_, rest) = api
        .get(&format!(
            "/v1/audit?actor=ops-alice&action=connection.update&limit=1&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(actions(&rest), ["connection.update"]);
    assert_eq!(rest["items"][0]["after"]["display_name"], "One");
    let (_, page) = api.get("/v1/audit?actor=bob-viewer").await;
    assert_eq!(page["items"], json!([]));
    let (status, body) = api.get("/v1/audit?since=yesterday").await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "since");
}

fn urlencode(raw: &str) -> String {
    raw.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn decisions_are_counted_by_hour_connection_and_outcome() {
    let services = Services::new().await;
    let db = services.migrate().await;
    create_user(&db, Some("counted@example.com"), None, None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    for (connection, external_id, profile, outcome) in [
        (
            "plain",
            "c-1",
            json!({"username": "c1"}),
            Outcome::UserCreated,
        ),
        (
            "plain",
            "c-2",
            json!({"username": "c2"}),
            Outcome::UserCreated,
        ),
        (
            "plain",
            "c-1",
            json!({"username": "c1"}),
            Outcome::ExistingUser,
        ),
        (
            "only",
            "c-3",
            json!({"username": "nobody"}),
            Outcome::Rejected,
        ),
        (
            "matching",
            "c-4",
            json!({"email": "counted@example.com", "email_verified": true}),
            Outcome::UserLinked,
        ),
    ] {
        let reply = broker.login(&login(connection, external_id, profile)).await;
        assert_eq!(reply.outcome, outcome);
    }
    // A login of two days ago is outside the window.
    sqlx::query("UPDATE processed_events SET processed_at = now() - interval '2 days' WHERE external_id = 'c-3'")
        .execute(&db)
        .await
        .unwrap();
    let (status, stats) = app
        .api_as(Some(VIEWER_TOKEN))
        .get("/v1/stats/decisions")
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["hours"], 24);
    let mut counts: Vec<(String, String, i64)> = stats["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["user_pool_id"], "pool-1");
            assert!(r["hour"].as_str().unwrap().ends_with(":00:00Z"), "{r}");
            (
                r["connection"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    // Logins made around the turn of an hour fall into two rows of one pair.
    counts.sort();
    counts.dedup_by(|b, a| {
        if a.0 == b.0 && a.1 == b.1 {
            a.2 += b.2;
            true
        } else {
            false
        }
    });
    assert_eq!(
        counts,
        [
            ("matching".into(), "user_linked".into(), 1),
            ("plain".into(), "existing_user".into(), 1),
            ("plain".into(), "user_created".into(), 2),
        ]
    );
    let (_, stats) = app.api().get("/v1/stats/decisions?hours=72").await;
    assert!(
        stats["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "rejected")
    );
    for bad in ["0", "169", "x"] {
        let (status, _) = app
            .api()
            .get(&format!("/v1/stats/decisions?hours={bad}"))
            .await;
        assert!(status == 422 || status == 400, "hours={bad}: {status}");
    }
}
