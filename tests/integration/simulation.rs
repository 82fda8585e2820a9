//! Previewing a connection change (`POST /v1/connections/{pool}/{id}/simulate` and `policy
//! simulate`): the table is checked against real decisions (the same logins replayed as first
//! logins on copies of the database, under the current and under the proposed settings), and the
//! preview is shown to change nothing, in the database or on the broker.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

/// The accounts of the pool before any login: each simulated login meets at most one of them (or
/// two, for the ambiguous one), so that replaying the logins one after another decides each as
/// it would be decided alone.
const DIRECTORY: &[&str] = &[
    r#"{"user_pool_id": "pool-1", "email": "one@corp.example", "email_verified": true}"#,
    r#"{"user_pool_id": "pool-1", "email": "admin@corp.example", "email_verified": true, "protected": true}"#,
    r#"{"user_pool_id": "pool-1", "email": "unverified@corp.example", "email_verified": false}"#,
    r#"{"user_pool_id": "pool-1", "phone": "+8613900000004", "phone_verified": true}"#,
    r#"{"user_pool_id": "pool-1", "email": "ahead@corp.example", "email_verified": true, "identities": [{"connection": "plain", "external_id": "linked-ahead"}]}"#,
    r#"{"user_pool_id": "pool-1", "email": "left@corp.example", "email_verified": true}"#,
    r#"{"user_pool_id": "pool-1", "phone": "+8613900000007", "phone_verified": true}"#,
    r#"{"user_pool_id": "pool-1", "username": "kelvin"}"#,
    r#"{"user_pool_id": "pool-1", "email": "nine@corp.example", "email_verified": true}"#,
];

/// The logins through `plain` (association disabled), by identity: the last profile of each is
/// what the simulation decides again.
fn logins() -> Vec<(&'static str, Value)> {
    vec![
        (
            "sim-1",
            json!({"email": "One@Corp.Example", "email_verified": true}),
        ),
        (
            "sim-2",
            json!({"email": "admin@corp.example", "email_verified": true}),
        ),
        (
            "sim-3",
            json!({"email": "unverified@corp.example", "email_verified": true}),
        ),
        (
            "sim-4",
            json!({"phone": "+86 139 0000 0004", "phone_verified": true}),
        ),
        (
            "sim-5",
            json!({"email": "ahead@corp.example", "email_verified": true}),
        ),
        (
            "sim-6",
            json!({"email": "left@corp.example", "email_verified": true,
                          "phone": "+8613900000007", "phone_verified": true}),
        ),
        // Logged in twice: the first profile is not simulated, the second is.
        (
            "sim-7",
            json!({"email": "before@corp.example", "email_verified": true}),
        ),
        (
            "sim-7",
            json!({"email": "after@corp.example", "email_verified": true}),
        ),
        // The Kelvin sign K: a lookalike of the account's "kelvin".
        ("sim-8", json!({"username": "\u{212A}elvin"})),
        (
            "sim-9",
            json!({"email": "nine@corp.example", "email_verified": false}),
        ),
        // Its first login gave the new account its email: as a first login again, it finds it.
        (
            "sim-10",
            json!({"email": "ten@corp.example", "email_verified": true}),
        ),
    ]
}

/// What `plain` becomes: field matching on the three fields.
fn proposed() -> Value {
    json!({"display_name": "Association disabled", "provider": "oidc",
           "association": "field_matching", "match_fields": ["email", "phone", "username"]})
}

fn import_lines(services: &Services, lines: &[String]) {
    let file = services.dir.join("accounts.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let mut command = services.command();
    command.args(["users", "import", file.to_str().unwrap()]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// Sends the logins (the latest profile per identity, with fresh event ids when `latest_only`)
/// and counts the outcomes.
async fn send(
    services: &Services,
    logins: &[(&str, Value)],
    latest_only: bool,
) -> BTreeMap<String, u64> {
    let mut broker = Broker::connect(services).await;
    let mut outcomes = BTreeMap::new();
    let latest: BTreeMap<&str, &Value> = logins.iter().map(|(id, p)| (*id, p)).collect();
    for (i, (external_id, profile)) in logins.iter().enumerate() {
        let last = logins.iter().rposition(|(id, _)| id == external_id) == Some(i);
        if latest_only && !last {
            continue;
        }
        let profile = if latest_only {
            latest[external_id]
        } else {
            profile
        };
        let reply = broker
            .login(&login("plain", external_id, profile.clone()))
            .await;
        if last {
            *outcomes
                .entry(reply.outcome.as_str().to_owned())
                .or_insert(0) += 1;
        }
    }
    outcomes
}

/// `from -> count` or `to -> count` of a simulation's rows.
fn column(result: &Value, side: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for row in result["rows"].as_array().unwrap() {
        *counts
            .entry(row[side].as_str().unwrap().to_owned())
            .or_insert(0) += row["count"].as_u64().unwrap();
    }
    counts
}

/// Every table's row count and a digest of its contents.
async fn row_counts(db: &sqlx::PgPool) -> BTreeMap<String, (i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for table in tables {
        // The relay refreshes its heartbeat in relay_origins on its own: counted, not digested.
        let digest = if table == "relay_origins" {
            "''"
        } else {
            "md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
        };
        let n: (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), {digest} FROM \"{table}\" t"
        )))
        .fetch_one(db)
        .await
        .unwrap();
        counts.insert(table, n);
    }
    counts
}

/// Messages published in the vhost, as the broker counts them, once the count has settled (the
/// management API refreshes it every few seconds).
async fn broker_published(services: &Services) -> u64 {
    let path = format!("/vhosts/{}", services.vhost);
    let read = || async {
        management_get(&path).await["message_stats"]["publish"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut last = read().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the broker's publish count did not settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_agrees_with_the_decisions_it_previews_and_changes_nothing() {
    let original = Services::new().await;
    let db = original.migrate().await;
    import_lines(
        &original,
        &DIRECTORY.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
    );
    let app = TestApp::spawn(&original).await;
    let first = send(&original, &logins(), false).await;
    // Association disabled: every first login made an account.
    assert_eq!(
        first,
        BTreeMap::from([
            ("existing_user".to_owned(), 1),
            ("user_created".to_owned(), 9)
        ])
    );
    outbox_drained(&db, WAIT, "the logins' events are published").await;

    let tables = row_counts(&db).await;
    let published_metric = app
        .metric("idsync_outbox_published_total{kind=\"event\"}")
        .await;
    let published = broker_published(&original).await;
    let mut watcher = Broker::connect(&original).await;

    let (status, result) = app
        .api()
        .post(
            "/v1/connections/pool-1/plain/simulate",
            json!({"connection": proposed(), "since": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["since"], "1h");
    assert_eq!(result["logins"], 10, "one per identity: {result}");
    let rows: Vec<(String, String, u64)> = result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_owned(),
                r["to"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let pair = |from: &str, to: &str, n| (from.to_owned(), to.to_owned(), n);
    assert_eq!(
        rows,
        [
            // sim-7's latest email and sim-9's unverified one match nobody.
            pair("user_created", "user_created", 2),
            // sim-1 and sim-4 find their accounts, sim-10 the one its first login made.
            pair("user_created", "user_linked", 3),
            // Protected, unverified on the account, already linked, ambiguous, lookalike.
            pair("user_created", "binding_pending", 5),
        ],
        "{result}"
    );
    let linked = result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to"] == "user_linked")
        .unwrap();
    assert_eq!(linked["examples"], json!(["sim-1", "sim-10", "sim-4"]));

    // The same from the command line, through the API.
    let mut command = app.admin_command(&original);
    command.args([
        "policy",
        "simulate",
        "--pool",
        "pool-1",
        "--connection",
        "plain",
        "--set",
        "association=field_matching",
        "--set",
        "match_fields=email,phone,username",
        "--since",
        "1h",
    ]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(
            "10 logins since 1h (latest per identity), 8 would be decided otherwise\n"
        ),
        "{stdout}"
    );
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table[0], ["CURRENT", "PROPOSED", "COUNT", "EXAMPLES"]);
    assert_eq!(
        table[2],
        [
            "user_created",
            "user_linked",
            "3",
            "sim-1,",
            "sim-10,",
            "sim-4"
        ]
    );
    command.arg("--json");
    let (code, stdout, _) = run(&mut command);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), result);

    // Nothing was written, published or audited.
    assert_eq!(row_counts(&db).await, tables);
    assert_eq!(
        app.metric("idsync_outbox_published_total{kind=\"event\"}")
            .await,
        published_metric
    );
    assert_eq!(broker_published(&original).await, published);
    assert!(
        watcher
            .next_event_within(Duration::from_millis(500))
            .await
            .is_none()
    );

    // The copies: today's accounts, with the simulated identities not linked yet.
    let mut export = original.command();
    export.args(["users", "export"]);
    let (code, accounts, stderr) = run(&mut export);
    assert_eq!(code, 0, "{stderr}");
    let simulated: Vec<&str> = logins().iter().map(|(id, _)| *id).collect();
    let accounts: Vec<String> = accounts
        .lines()
        .map(|line| {
            let mut account: Value = serde_json::from_str(line).unwrap();
            account["identities"]
                .as_array_mut()
                .unwrap()
                .retain(|i| !simulated.contains(&i["external_id"].as_str().unwrap()));
            account.to_string()
        })
        .collect();
    app.stop().await;

    for (side, settings) in [("from", None), ("to", Some(proposed()))] {
        let copy = Services::new().await;
        copy.migrate().await;
        import_lines(&copy, &accounts);
        let replay = TestApp::spawn(&copy).await;
        if let Some(settings) = settings {
            let (status, body) = replay
                .api()
                .put("/v1/connections/pool-1/plain", settings)
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let decided = send(&copy, &logins(), true).await;
        assert_eq!(decided, column(&result, side), "the {side} column");
        replay.stop().await;
    }
}

#[tokio::test]
async fn a_preview_is_refused_with_reasons() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let path = "/v1/connections/pool-1/plain/simulate";
    let cases = [
        (
            json!({"connection": {"association": "sometimes"}}),
            422,
            "association",
        ),
        (json!({"connection": {}, "since": "forever"}), 422, "since"),
        (json!({"connection": {}, "since": "0s"}), 422, "since"),
        (
            json!({"connection": {"identifier": "other"}}),
            422,
            "identifier",
        ),
        (json!({"connection": {}, "colour": "red"}), 422, ""),
        (json!({"since": "1d"}), 422, ""),
    ];
    for (body, status, field) in cases {
        let (got, answer) = app.api().post(path, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        }
    }
    let (status, answer) = app
        .api()
        .post(
            "/v1/connections/pool-1/nobody/simulate",
            json!({"connection": {}}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    // A viewer may preview (it changes nothing), but not save.
    let viewer = app.api_as(Some(VIEWER_TOKEN));
    let (status, answer) = viewer.post(path, json!({"connection": {}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["logins"], 0);
    assert_eq!(answer["rows"], json!([]));
    let (status, _) = viewer.put("/v1/connections/pool-1/plain", json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = app_without_token(&app).await;
    assert_eq!(status, 401);
}

async fn app_without_token(app: &TestApp) -> (u16, Value) {
    app.api_as(None)
        .post(
            "/v1/connections/pool-1/plain/simulate",
            json!({"connection": {}}),
        )
        .await
}

#[tokio::test]
async fn only_the_latest_login_of_the_window_counts() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login("only", "old", json!({"username": "nobody-old"})))
        .await;
    assert_eq!(reply.outcome, Outcome::Rejected);
    let reply = broker
        .login(&login("only", "new", json!({"username": "nobody-new"})))
        .await;
    assert_eq!(reply.outcome, Outcome::Rejected);
    // The first login is older than the window.
    sqlx::query(
        "UPDATE processed_events SET processed_at = now() - interval '2 days' \
         WHERE external_id = 'old'",
    )
    .execute(&db)
    .await
    .unwrap();
    let (status, result) = app
        .api()
        .post(
            "/v1/connections/pool-1/only/simulate",
            json!({"connection": {"association": "field_matching",
                                  "match_fields": ["email", "username"]}, "since": "1d"}),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    // Login only off: the unknown person gets an account instead of a rejection.
    assert_eq!(
        result,
        json!({"since": "1d", "logins": 1,
               "rows": [{"from": "rejected", "to": "user_created", "count": 1,
                         "examples": ["new"]}]})
    );
}

#[tokio::test]
async fn viewers_see_email_like_external_ids_masked() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "plain",
            "ann.lee@corp.example",
            json!({"username": "ann"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let body = json!({"connection": {"association": "field_matching",
                                     "match_fields": ["username"]}});
    let path = "/v1/connections/pool-1/plain/simulate";
    let (_, admin) = app.api().post(path, body.clone()).await;
    assert_eq!(
        admin["rows"][0]["examples"],
        json!(["ann.lee@corp.example"])
    );
    let (status, viewer) = app.api_as(Some(VIEWER_TOKEN)).post(path, body).await;
    assert_eq!(status, 200, "{viewer}");
    assert_eq!(viewer["rows"][0]["examples"], json!(["a***@corp.example"]));
    assert_eq!(viewer["rows"][0]["count"], 1);
}

#[tokio::test]
async fn a_preview_is_bounded_in_time() {
    let services = Services::with_keys("", &[("admin", "request_timeout = \"1s\"")]).await;
    let db = services.migrate().await;
    // A history too large to decide within 90% of a second here.
    sqlx::query(
        "INSERT INTO processed_events (source, event_id, outcome, user_pool_id, connection,
                                       settings_version, external_id, profile)
         SELECT 'urn:test', 'h-' || n, 'user_created', 'pool-1', 'plain', 1, 'h-' || n,
                jsonb_build_object('email', 'h' || n || '@corp.example', 'email_verified', true)
         FROM generate_series(1, 300000) AS n",
    )
    .execute(&db)
    .await
    .unwrap();
    let app = TestApp::spawn(&services).await;
    let (status, body) = app
        .api()
        .post(
            "/v1/connections/pool-1/plain/simulate",
            json!({"connection": {"association": "field_matching"}, "since": "30d"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "simulation_too_long");
    assert_eq!(body["error"]["field"], "since");
}

#[tokio::test]
async fn a_preview_meeting_too_many_accounts_is_refused() {
    let services = Services::new().await;
    let db = services.migrate().await;
    // A value 20,001 accounts share, and a login carrying it.
    sqlx::query(
        "INSERT INTO users (id, user_pool_id, username, attributes)
         SELECT gen_random_uuid(), 'pool-1', 'd' || n, '{\"dept\": \"sales\"}'
         FROM generate_series(1, 20001) AS n",
    )
    .execute(&db)
    .await
    .unwrap();
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "asking",
            "dept-1",
            json!({"attributes": {"userid": "x", "dept": "sales"}}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let (status, body) = app
        .api()
        .post(
            "/v1/connections/pool-1/asking/simulate",
            json!({"connection": {"provider": "wecom", "association": "field_matching",
                                  "match_fields": ["attributes.dept"],
                                  "mapping": {"attributes.dept": "{attributes.dept}"},
                                  "verified_fields": ["attributes.dept"]},
                   "since": "1h"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(error_code(&body), "simulation_too_large");
    assert_eq!(body["error"]["field"], "match_fields");
    // Matching on what tells people apart is decided.
    let (status, body) = app
        .api()
        .post(
            "/v1/connections/pool-1/asking/simulate",
            json!({"connection": {"provider": "wecom", "association": "field_matching"},
                   "since": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["logins"], 1);
}

/// A viewer's preview held up (here by a lock on the logins it reads) takes only the viewers'
/// slot: another viewer waits (503), an admin's preview runs (answered once the lock goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_long_preview_does_not_lock_admins_out() {
    // A viewer's preview ends at 30% of this: 18 s, far longer than it waits here.
    let services = Services::with_keys("", &[("admin", "request_timeout = \"60s\"")]).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker.login(&login("plain", "p-1", json!({}))).await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let db = services.db().await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let path = "/v1/connections/pool-1/plain/simulate";
    let body = json!({"connection": {"association": "field_matching"}});
    let viewer = app.api_as(Some(VIEWER_TOKEN));
    let first_viewer = tokio::spawn({
        let (viewer, body) = (viewer.clone(), body.clone());
        async move { viewer.post(path, body).await }
    });
    // Its preview waits on the lock.
    wait_until(WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'identity-sync admin'
               AND wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await
    .expect("the viewer's preview waits on the lock");
    let (status, second) = viewer.post(path, body.clone()).await;
    assert_eq!(
        (status, error_code(&second)),
        (503, "overloaded"),
        "{second}"
    );
    let admin = tokio::spawn({
        let (api, body) = (app.api(), body.clone());
        async move { api.post(path, body).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();
    let (status, admin) = admin.await.unwrap();
    assert_eq!(status, 200, "the admin's preview ran: {admin}");
    let (status, first) = first_viewer.await.unwrap();
    assert_eq!(status, 200, "{first}");
}
