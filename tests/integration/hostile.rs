//! Hostile and careless input from outside: an HTTP client that holds connections or floods a
//! probe, odd requests, operator mistakes in the configuration and on the command line. Each
//! test names the attack it tries; none of them may stop the worker or the admin API.

use std::{io::Write, process::Stdio, time::Duration};

use identity_sync::domain::decision::Outcome;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use idsync_test_support::*;

fn run(command: &mut std::process::Command) -> (i32, String) {
    let output = command.output().expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn database_exists(name: &str) -> bool {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&admin)
        .await
        .unwrap();
    found.is_some()
}

#[tokio::test]
async fn operator_mistakes_are_usage_errors_before_anything_starts() {
    let services = Services::new().await;
    for (key, value, named) in [
        ("IDSYNC__ADMIN__LISTEN", "notanaddr", "admin.listen"),
        (
            "IDSYNC__OUTBOX__RETENTION",
            "100000000d",
            "outbox.retention",
        ),
        (
            "IDSYNC__WORKER__DEDUPE_RETENTION",
            "100000000d",
            "worker.dedupe_retention",
        ),
        (
            "IDSYNC__OUTBOX__CONFIRM_TIMEOUT",
            "0s",
            "outbox.confirm_timeout",
        ),
        (
            "IDSYNC__OUTBOX__POLL_INTERVAL",
            "0s",
            "outbox.poll_interval",
        ),
        (
            "IDSYNC__OUTBOX__PRUNE_INTERVAL",
            "0s",
            "outbox.prune_interval",
        ),
        (
            "IDSYNC__ADMIN__EXPIRY_SWEEP_INTERVAL",
            "0ms",
            "admin.expiry_sweep_interval",
        ),
    ] {
        let (code, stderr) = run(services.command().arg("run").env(key, value));
        assert_eq!(code, 2, "{key}={value}: {stderr}");
        assert!(stderr.contains(named), "{key}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    assert!(
        !database_exists(&services.db_name).await,
        "refused before the database was created or migrated"
    );

    let (code, stderr) =
        run(services
            .command()
            .args(["events", "replay", "--since", "100000000000d"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--since"), "{stderr}");

    // A path in place of an id would send the admin token to another endpoint.
    for args in [
        &["bindings", "show", "../../healthz"][..],
        &["bindings", "resolve", "../x", "--reject"],
        &[
            "bindings",
            "resolve",
            "0193a1b2-0000-7000-8000-000000000000",
            "--link",
            "../../v1/audit",
        ],
    ] {
        let (code, stderr) = run(services.command().args(args).args([
            "--api",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ]));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("invalid"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_import_file_starting_with_a_byte_order_mark_is_read() {
    let services = Services::new().await;
    let mut child = services
        .command()
        .args(["users", "import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            "\u{feff}{\"user_pool_id\": \"pool-1\", \"username\": \"bom\"}\n\
             {\"user_pool_id\": \"pool-1\", \"username\": \"second\"}\n"
                .as_bytes(),
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("added 2"), "{stdout}");
}

#[tokio::test]
async fn page_limits_out_of_range_are_refused_and_the_bearer_scheme_is_case_insensitive() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let api = app.api();
    for path in ["/v1/bindings", "/v1/audit"] {
        for limit in ["0", "-1", "100000", "201"] {
            let (status, body) = api.get(&format!("{path}?limit={limit}")).await;
            assert_eq!(status, 422, "{path} {limit}: {body}");
            assert_eq!(error_code(&body), "invalid_query");
            assert_eq!(body["error"]["field"], "limit");
        }
        for limit in ["1", "200"] {
            assert_eq!(api.get(&format!("{path}?limit={limit}")).await.0, 200);
        }
    }
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let response = reqwest::Client::new()
            .get(app.url("/v1/audit"))
            .header("Authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    app.stop().await;
}

/// Sends raw bytes on a new connection and reads the whole answer.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn json_body(answer: &str) -> Value {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn requests_the_http_parser_refuses_get_json_errors() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;

    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let answer = raw_exchange(&app, long_uri.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer:.200}");
    assert_eq!(json_body(&answer)["error"]["code"], "uri_too_long");

    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "b".repeat(500_000)
    );
    let answer = raw_exchange(&app, big_head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.200}");
    assert_eq!(json_body(&answer)["error"]["code"], "headers_too_large");

    let answer = raw_exchange(&app, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:.200}");
    assert_eq!(json_body(&answer)["error"]["code"], "bad_request");

    // The router's own errors pass through unchanged.
    let answer = raw_exchange(
        &app,
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer:.200}");
    assert_eq!(json_body(&answer)["error"]["code"], "not_found");
    app.stop().await;
}

/// Connections of the process's pools to the test database, by application name.
async fn backends(db: &sqlx::PgPool, db_name: &str, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
    )
    .bind(db_name)
    .bind(application)
    .fetch_one(db)
    .await
    .unwrap()
}

// The flood runs on other threads than the application's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_and_a_readiness_flood_leave_the_api_and_the_worker_working() {
    let services = Services::with_keys(
        "",
        &[(
            "admin",
            "header_read_timeout = \"1s\"\nmax_connections = 1000",
        )],
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;

    // 200 connections that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(app.address).await.unwrap());
    }
    // A readiness flood from 32 clients.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = Vec::new();
    for _ in 0..32 {
        let (url, stop) = (app.url("/readyz"), stop.clone());
        flood.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answered = 0u32;
            while !stop.is_cancelled() {
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    answered += 1;
                }
            }
            answered
        }));
    }

    let mut ids = Vec::new();
    for i in 0..300 {
        let event = login("plain", &format!("flood-{i}"), json!({}));
        ids.push(broker.request(&event).await);
    }
    let mut most_probes = 0;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(broker.reply(id).await.outcome, Outcome::UserCreated);
        if i % 50 == 0 {
            let (status, _) = app.api().get("/v1/audit?limit=1").await;
            assert_eq!(status, 200, "the admin API answers during the flood");
            most_probes =
                most_probes.max(backends(&db, &services.db_name, "identity-sync readiness").await);
        }
    }
    assert_eq!(
        most_probes, 1,
        "the probe asks the database on one connection of its own, never more"
    );
    stop.cancel();
    let mut answered = 0;
    for task in flood {
        answered += task.await.unwrap();
    }
    assert!(answered > 100, "the flood was served: {answered} answers");

    // The idle connections were closed by the server after the head-read timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for mut stream in idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "every idle connection was closed");
    app.stop().await;
}

// It arms a failure point, which only the `failpoints` feature compiles in (scripts/test).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_task_that_panics_stops_the_process_instead_of_leaving_it_half_alive() {
    let services = Services::new().await;
    let started = std::time::Instant::now();
    let mut worker =
        WorkerProcess::start_with_env(&services, &[("IDSYNC_FAILPOINTS", "retention.panic")]);
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < WAIT, "the process did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(1),
        "a failure exit, for the supervisor to restart it"
    );
}

#[tokio::test]
async fn viewers_see_emails_and_phones_masked_except_what_they_searched_by() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let admin = app.api();
    let viewer = app.api_as(Some(VIEWER_TOKEN));

    // An account created by an admin (an audit entry), then a login of it (an identity whose
    // profile holds the raw values) and a pending binding for another identity.
    let (status, created) = admin
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "Li.Si@Example.com", "email_verified": true,
                   "phone": "+86 139 0013 9000", "phone_verified": true, "username": "lisi"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let profile = json!({"email": "Li.Si@Example.com", "email_verified": true,
                         "phone": "13900139000", "phone_verified": true,
                         "attributes": {"org_email": "lisi@corp.example"}});
    let reply = broker
        .login(&login("matching", "dt-lisi", profile.clone()))
        .await;
    assert_eq!(reply.user_id.map(|u| u.to_string()), Some(id.clone()));
    let reply = broker.login(&login("asking", "wc-lisi", profile)).await;
    let binding = reply.binding_id.unwrap();

    let (status, found) = viewer
        .get(&format!(
            "/v1/users?user_pool_id={POOL}&email=li.si@example.com"
        ))
        .await;
    assert_eq!(status, 200);
    let user = &found["items"][0];
    assert_eq!(user["email"], "li.si@example.com", "searched by: shown");
    assert_eq!(user["phone"], "+86*******9000");
    let snapshot = &user["identities"][0]["profile"];
    assert_eq!(
        snapshot["email"], "Li.Si@Example.com",
        "the same address, searched by"
    );
    assert_eq!(snapshot["phone"], "*******9000");
    assert_eq!(snapshot["attributes"]["org_email"], "l***@corp.example");

    let (_, found) = viewer
        .get(&format!(
            "/v1/users?user_pool_id={POOL}&phone=%2B8613900139000"
        ))
        .await;
    assert_eq!(
        found["items"][0]["phone"], "+8613900139000",
        "searched by: shown"
    );
    assert_eq!(found["items"][0]["email"], "l***@example.com");

    let (_, shown) = viewer.get(&format!("/v1/users/{id}")).await;
    assert_eq!(shown["email"], "l***@example.com");
    assert_eq!(shown["phone"], "+86*******9000");
    let (_, audit) = viewer.get("/v1/audit").await;
    let after = &audit["items"][0]["after"];
    assert_eq!(after["email"], "l***@example.com", "{audit}");
    let (_, shown) = viewer.get(&format!("/v1/bindings/{binding}")).await;
    assert_eq!(shown["profile"]["email"], "L***@Example.com");
    let (_, listed) = viewer.get("/v1/bindings").await;
    assert_eq!(listed["items"][0]["profile"]["phone"], "*******9000");

    // Admins see everything.
    let (_, shown) = admin.get(&format!("/v1/users/{id}")).await;
    assert_eq!(shown["email"], "li.si@example.com");
    let (_, audit) = admin.get("/v1/audit").await;
    assert_eq!(audit["items"][0]["after"]["phone"], "+8613900139000");
    app.stop().await;
}

#[tokio::test]
async fn one_client_address_cannot_take_every_connection() {
    let services = Services::with_keys("", &[("admin", "max_connections = 8")]).await;
    let app = TestApp::spawn(&services).await;
    // A quarter of the connections per address: two here. Of four idle connections from this
    // address (the readiness checks' may still be closing), at least two are closed at once.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(tokio::net::TcpStream::connect(app.address).await.unwrap());
    }
    let mut closed = 0;
    for stream in &mut streams {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(
        closed >= 2,
        "only {closed} of 4 connections from one address were refused"
    );
    drop(streams);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        200
    );
    app.stop().await;
}

/// A `reply_to` shaped like a direct reply-to address that the broker cannot decode makes
/// RabbitMQ close the connection that publishes to it (`INTERNAL_ERROR`). Anyone who may publish
/// logins can set one, on a good login and on a malformed one (whose error reply the worker
/// sends too). Neither may cost the relay or the consumer their connection: the events and
/// replies of everyone else arrive once, on time, and the broken replies are given up.
#[tokio::test]
async fn a_reply_to_that_breaks_a_broker_connection_disturbs_nothing_else() {
    let services = Services::new().await;
    let mut broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let hostile = json_props()
        .with_reply_to("amq.rabbitmq.reply-to.AAAA.BBBB".into())
        .with_correlation_id("hostile".into());

    let mut pending = Vec::new();
    for n in 0..20 {
        if n % 5 == 2 {
            let body = serde_json::to_vec(&login("plain", &format!("h-{n}"), json!({}))).unwrap();
            broker.publish_raw(&body, hostile.clone()).await;
            // Not JSON: dead-lettered, with an error reply.
            broker.publish_raw(b"{not json", hostile.clone()).await;
        }
        pending.push(
            broker
                .request(&login("plain", &format!("ok-{n}"), json!({})))
                .await,
        );
    }
    for correlation_id in pending {
        let reply = broker.reply(&correlation_id).await;
        assert_eq!(reply.outcome.as_str(), "user_created");
    }
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 24
    })
    .await
    .expect("every good login decided");
    outbox_drained(&db, WAIT, "every event and reply settled").await;
    let events = broker.drain_events(Duration::from_secs(2)).await;
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e.body["id"].as_str().unwrap())
        .collect();
    assert_eq!((ids.len(), events.len()), (24, 24), "each event once");
    for component in ["relay", "consumer"] {
        assert_eq!(
            app.metric(&format!(
                "idsync_transient_errors_total{{component=\"{component}\"}}"
            ))
            .await,
            0.0,
            "the {component} kept its connection"
        );
    }
    assert_eq!(app.metric("idsync_replies_dropped_total").await, 8.0);
    app.stop().await;
}

/// A reply the broker refuses (its queue full, `x-overflow = reject-publish`) is not given up:
/// it waits and goes out once the queue has room.
#[tokio::test]
async fn a_refused_reply_is_sent_once_its_queue_has_room() {
    use lapin::{
        options::{BasicGetOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };
    let services = Services::new().await;
    let broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let queue = "idsync.reply.full";
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    broker
        .channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    // The queue is full.
    broker
        .channel
        .basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            b"filler",
            json_props(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let body = serde_json::to_vec(&login("plain", "refused-reply", json!({}))).unwrap();
    broker
        .publish_raw(
            &body,
            json_props()
                .with_reply_to(queue.into())
                .with_correlation_id("wanted".into()),
        )
        .await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 1
    })
    .await
    .expect("decided");
    // Refused, and waiting: not given up.
    wait_until(WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM outbox_pending WHERE attempts > 0",
        )
        .await
            == 1
    })
    .await
    .expect("the refused reply is set aside");
    // Tried again while the queue is still full: refused again, and still kept.
    wait_until(WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM outbox_pending WHERE attempts > 1",
        )
        .await
            == 1
    })
    .await
    .expect("a reply refused on its retry is kept for the next one");
    assert_eq!(app.metric("idsync_replies_dropped_total").await, 0.0);

    // Room again: the reply arrives.
    let get = || async {
        broker
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    };
    assert_eq!(get().await.unwrap().delivery.data, b"filler");
    let deadline = std::time::Instant::now() + WAIT;
    let reply = loop {
        if let Some(message) = get().await {
            break message;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reply arrived once its queue had room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reply: Value = serde_json::from_slice(&reply.delivery.data).unwrap();
    assert_eq!(reply["outcome"], "user_created");
    outbox_drained(&db, WAIT, "the reply settled").await;
    app.stop().await;
}

/// Attack: values chosen to break the JSON that carries a batch's rows to the database (quotes,
/// backslashes, escapes that look like JSON, bidirectional controls, characters outside the
/// Basic Multilingual Plane, keys like the records' own columns). Each is stored exactly as sent,
/// in the account, the identity, its refreshed profile, the binding and the dedupe record.
#[tokio::test]
async fn values_the_records_must_escape_are_stored_exactly_as_sent() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let db = services.db().await;
    let odd = "a\"b\\c\\u0041\u{202e}d😀'e\t\"},{\"user_id\":\"x";
    let profile = json!({
        "name": odd, "email": "odd@corp.example", "email_verified": true,
        "user_id": "not-a-uuid", "profile": {"k": odd}
    });

    let created = broker.login(&login("plain", odd, profile.clone())).await;
    assert_eq!(created.outcome, Outcome::UserCreated, "{created:?}");
    broker.next_event().await;
    let (external_id, stored, name): (String, Value, Option<String>) = sqlx::query_as(
        "SELECT i.external_id, i.profile, u.name FROM identities i JOIN users u ON u.id = i.user_id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((external_id.as_str(), name.as_deref()), (odd, Some(odd)));
    assert_eq!(stored, profile);

    // The same identity again: its profile is refreshed with the new odd values.
    let again = json!({"name": format!("{odd}2"), "nested": [odd]});
    let reply = broker.login(&login("plain", odd, again.clone())).await;
    assert_eq!(reply.outcome, Outcome::ExistingUser, "{reply:?}");
    let refreshed: Value = sqlx::query_scalar("SELECT profile FROM identities")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(refreshed, again);

    // A binding (the email is the account's: the person is asked) and the dedupe records keep
    // them too.
    let pending = broker.login(&login("asking", odd, profile.clone())).await;
    assert_eq!(pending.outcome, Outcome::BindingPending, "{pending:?}");
    let (binding_external, binding_profile): (String, Value) =
        sqlx::query_as("SELECT external_id, profile FROM bindings")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (binding_external.as_str(), &binding_profile),
        (odd, &profile)
    );
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT external_id FROM processed_events")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(recorded, [odd]);
    app.stop().await;
}
