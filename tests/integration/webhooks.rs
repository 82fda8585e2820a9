//! Webhooks (contract section 12), through the real broker and database: the events arrive over
//! HTTP signed as Standard Webhooks say (checked by the specification's own libraries, in Rust
//! and in Python), filtered by type, retried, in order per subject, given up, disabled, replayed,
//! and never sent to an address the configuration does not allow.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};

use idsync_test_support::*;

/// Receivers here listen on loopback, which deliveries may reach only when allowed; retries come
/// quickly.
const WEBHOOKS: &str = r#"
[webhooks]
allow_private_addresses = true
retry_schedule = ["300ms", "300ms", "300ms"]
poll_interval = "100ms"
timeout = "5s"
"#;

async fn services() -> Services {
    Services::with_config(WEBHOOKS).await
}

/// Creates an endpoint of `POOL` for `types`; returns its id and secret.
async fn endpoint(app: &TestApp, url: &str, types: Value) -> (String, String) {
    let (status, body) = app
        .api()
        .post(
            "/v1/webhooks",
            json!({"user_pool_id": POOL, "url": url, "event_types": types, "description": "test"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

fn person(n: usize) -> Value {
    json!({"email": format!("person{n}@corp.example"), "email_verified": true})
}

/// Waits until no delivery is left to send.
async fn settled(db: &sqlx::PgPool) {
    wait_until(WAIT, || async {
        count(
            db,
            "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'",
        )
        .await
            == 0
    })
    .await
    .expect("every delivery settled");
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app
        .api()
        .get(&format!("/v1/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// The Python receiver of `tests/sdk/webhook_receiver.py`, verifying with the secrets it is told.
struct PythonReceiver {
    child: Child,
    url: String,
    secrets: std::path::PathBuf,
    lines: mpsc::Receiver<Value>,
}

impl PythonReceiver {
    fn start(dir: &std::path::Path) -> Self {
        let secrets = dir.join(format!("secrets-{}", uuid::Uuid::now_v7()));
        std::fs::write(&secrets, "").unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/test-venv/bin/python");
        assert!(
            python.exists(),
            "the Standard Webhooks library is not installed: run scripts/test-deps"
        );
        let mut child = Command::new(python)
            .arg(root.join("tests/sdk/webhook_receiver.py"))
            .arg(&secrets)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut port = String::new();
        stdout.read_line(&mut port).unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            url: format!("http://127.0.0.1:{}/in", port.trim()),
            secrets,
            lines,
        }
    }

    fn knows(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, secrets.join("\n")).unwrap();
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(WAIT)
            .expect("the Python receiver got a request")
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_published_and_signed_and_a_rotation_signs_with_both_secrets() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let receiver = Receiver::start().await;
    let (id, secret) = endpoint(&app, &receiver.url, json!(["#"])).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.knows(&[&secret]);
    let python = PythonReceiver::start(&services.dir);
    let (python_id, python_secret) = endpoint(&app, &python.url, json!(["user.*"])).await;
    python.knows(&[&python_secret]);

    let reply = broker.login(&login("plain", "hook-1", person(1))).await;
    assert_eq!(reply.outcome.as_str(), "user_created");
    let published = broker.next_event().await;
    assert_eq!(published.routing_key, "user.created");
    let got = receiver
        .until(WAIT, "user.created", |r| !r.is_empty())
        .await;
    let first = &got[0];
    assert_eq!(first.id, published.body["id"].as_str().unwrap());
    assert_eq!(first.content_type, "application/cloudevents+json");
    assert_eq!(
        first.body.as_ref(),
        published.raw.as_slice(),
        "the body is the event as published"
    );
    assert_eq!(
        first.verified,
        vec![true],
        "the Rust library verifies the signature"
    );
    assert!(first.signature.starts_with("v1,") && !first.signature.contains(' '));
    let sent_at: i64 = first.timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60);
    let line = python.next();
    assert_eq!(line["id"], published.body["id"]);
    assert_eq!(
        line["verified"],
        json!([true]),
        "the Python library verifies the signature"
    );

    // Rotation: the new secret is shown once; both sign until the overlap ends.
    let (status, rotated) = app
        .api()
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_until"].is_string());
    receiver.knows(&[&secret, &new_secret]);
    let (_, python_rotated) = app
        .api()
        .post(
            &format!("/v1/webhooks/{python_id}/rotate-secret"),
            json!({}),
        )
        .await;
    let python_new = python_rotated["secret"].as_str().unwrap();
    // The Python receiver still knows only the old secret, and still verifies.
    broker.login(&login("plain", "hook-2", person(2))).await;
    let got = receiver
        .until(WAIT, "the second event", |r| r.len() == 2)
        .await;
    assert_eq!(
        got[1].signature.split(' ').count(),
        2,
        "{}",
        got[1].signature
    );
    assert_eq!(
        got[1].verified,
        vec![true, true],
        "each secret verifies alone"
    );
    assert_eq!(python.next()["verified"], json!([true]));
    assert_ne!(python_new, python_secret);

    // Secrets are never read back, by admins or viewers.
    for api in [app.api(), app.api_as(Some(VIEWER_TOKEN))] {
        let (status, shown) = api.get(&format!("/v1/webhooks/{id}")).await;
        assert_eq!(status, 200);
        assert!(!shown.to_string().contains("whsec_"), "{shown}");
        let (_, listed) = api.get("/v1/webhooks").await;
        assert!(!listed.to_string().contains("whsec_"), "{listed}");
        assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    }
    app.stop().await;
}

#[tokio::test]
async fn each_endpoint_gets_the_types_its_patterns_match_in_its_own_pool() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let mut broker = Broker::connect(&services).await;
    let bindings = Receiver::start().await;
    let users = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    endpoint(&app, &bindings.url, json!(["binding.#"])).await;
    endpoint(&app, &users.url, json!(["user.*"])).await;
    let (status, body) = app
        .api()
        .post(
            "/v1/webhooks",
            json!({"user_pool_id": "pool-2", "url": elsewhere.url}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["event_types"], json!(["#"]), "every event by default");

    create_user(&db, Some("known@corp.example"), None, None).await;
    let pending = broker
        .login(&login(
            "asking",
            "ask-1",
            json!({"email": "known@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(pending.outcome.as_str(), "binding_pending");
    broker.login(&login("plain", "new-1", person(3))).await;
    broker.login(&login("only", "nobody", person(4))).await;
    outbox_drained(&db, WAIT, "events published").await;
    settled(&db).await;
    let types = |r: &Receiver| -> Vec<String> {
        r.received()
            .iter()
            .map(|x| x.event_type().to_owned())
            .collect()
    };
    assert_eq!(types(&bindings), vec!["binding.pending"]);
    assert_eq!(types(&users), vec!["user.created"]);
    assert!(
        types(&elsewhere).is_empty(),
        "another pool's endpoint got {:?}",
        types(&elsewhere)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_database_matches_patterns_as_the_topic_exchange_does() {
    use identity_sync::domain::{events::EventType, webhooks::TypeFilter};
    let services = services().await;
    let db = services.migrate().await;
    for patterns in [
        vec!["user.*"],
        vec!["binding.#"],
        vec!["#"],
        vec!["#.created", "login.rejected"],
        vec!["*.*"],
        vec!["identity.#.removed", "webhook.*"],
        vec!["user"],
    ] {
        let patterns: Vec<String> = patterns.into_iter().map(String::from).collect();
        let filter = TypeFilter::parse(&patterns).unwrap();
        for kind in EventType::ALL {
            let matched: bool = sqlx::query_scalar("SELECT ('.' || $1) ~ $2")
                .bind(kind.as_str())
                .bind(filter.regex())
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(
                matched,
                filter.matches(kind.as_str()),
                "{patterns:?} on {}",
                kind.as_str()
            );
        }
    }
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_id_and_delivered_once() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let mut broker = Broker::connect(&services).await;
    let flaky = Receiver::start().await;
    flaky.answer(|_, seen| Answer::status(if seen == 0 { 500 } else { 204 }));
    let dead = Receiver::start().await;
    dead.answer(|_, _| Answer::status(503));
    let (flaky_id, _) = endpoint(&app, &flaky.url, json!(["user.created"])).await;
    let (dead_id, _) = endpoint(&app, &dead.url, json!(["user.created"])).await;

    broker.login(&login("plain", "retry-1", person(5))).await;
    let created = broker.next_event().await;
    let got = flaky.until(WAIT, "the retry", |r| r.len() == 2).await;
    assert_eq!(got[0].id, got[1].id, "a retry has the same webhook-id");
    assert_eq!(got[1].seen_before, 1);
    settled(&db).await;
    assert_eq!(
        flaky.received().len(),
        2,
        "delivered once, then never sent again"
    );
    let log = deliveries(&app, &flaky_id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["state"], "delivered");
    assert_eq!(log[0]["attempts"], 2);
    assert_eq!(log[0]["event_id"], created.body["id"]);
    let statuses: Vec<&Value> = log[0]["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, vec![&json!(500), &json!(204)]);

    // The dead endpoint got the whole schedule (the first attempt and three retries), then the
    // delivery was given up and said so.
    assert_eq!(dead.received().len(), 4);
    let log = deliveries(&app, &dead_id).await;
    assert_eq!(log[0]["state"], "failed");
    assert_eq!(log[0]["last_status"], 503);
    let failed = loop {
        let event = broker.next_event().await;
        if event.routing_key == "webhook.delivery_failed" {
            break event;
        }
    };
    assert_eq!(failed.body["subject"], dead_id.as_str());
    assert_eq!(
        failed.body["data"],
        json!({"user_pool_id": POOL, "webhook_id": dead_id, "event_id": created.body["id"], "last_status": 503})
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "idsync_webhook_deliveries_total{{webhook=\"{flaky_id}\",result=\"delivered\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("idsync_webhook_deliveries_total{{webhook=\"{dead_id}\",result=\"failed\"}}")
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_and_hostile_answers_are_contained() {
    let services = Services::with_config(
        r#"
[webhooks]
allow_private_addresses = true
retry_schedule = ["200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms"]
poll_interval = "100ms"
disable_after = "1s"
"#,
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let elsewhere = Receiver::start().await;
    let hostile = Receiver::start().await;
    // A redirect to another address, with a body of a megabyte.
    let target = elsewhere.url.clone();
    hostile.answer(move |_, _| Answer {
        location: Some(target.clone()),
        body_bytes: 1 << 20,
        ..Answer::status(307)
    });
    let (id, _) = endpoint(&app, &hostile.url, json!(["user.created"])).await;
    broker.login(&login("plain", "failing-1", person(60))).await;
    let disabled = loop {
        let event = broker.next_event().await;
        if event.routing_key == "webhook.endpoint_disabled" {
            break event;
        }
    };
    assert_eq!(disabled.body["data"]["webhook_id"], id.as_str());
    assert_eq!(disabled.body["data"]["last_status"], 307);
    let (_, shown) = app.api().get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["disabled_reason"], "failing");
    assert!(hostile.received().len() >= 2, "it failed for a while first");
    assert!(elsewhere.received().is_empty(), "no redirect is followed");
    let log = deliveries(&app, &id).await;
    let attempt = &log[0]["log"][0];
    assert_eq!(attempt["status"], 307);
    let kept = attempt["response"].as_str().unwrap().len();
    assert!(
        (1..=256).contains(&kept),
        "only the first bytes are kept: {kept}"
    );
    app.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_says_so() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let mut broker = Broker::connect(&services).await;
    let gone = Receiver::start().await;
    gone.answer(|_, _| Answer::status(410));
    let (id, _) = endpoint(&app, &gone.url, json!(["#"])).await;
    broker.login(&login("plain", "gone-1", person(6))).await;
    let disabled = loop {
        let event = broker.next_event().await;
        if event.routing_key == "webhook.endpoint_disabled" {
            break event;
        }
    };
    assert_eq!(
        disabled.body["data"],
        json!({"user_pool_id": POOL, "webhook_id": id, "last_status": 410})
    );
    let (_, shown) = app.api().get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["disabled_reason"], "gone");
    assert_eq!(gone.received().len(), 1, "410 is not retried");
    // A disabled endpoint receives nothing more.
    broker.login(&login("plain", "gone-2", person(7))).await;
    outbox_drained(&db, WAIT, "events published").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.received().len(), 1);
    // Enabled again, it takes what follows (and its waiting delivery).
    let (status, _) = app
        .api()
        .patch(&format!("/v1/webhooks/{id}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, 200);
    gone.answer(|_, _| Answer::status(200));
    broker.login(&login("plain", "gone-3", person(8))).await;
    gone.until(WAIT, "deliveries after re-enabling", |r| {
        r.iter()
            .any(|x| x.answered == 200 && x.event["data"]["identity"]["external_id"] == "gone-3")
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_delays_no_other_endpoint_and_no_login() {
    let services = Services::with_config(
        r#"
[webhooks]
allow_private_addresses = true
poll_interval = "100ms"
timeout = "8s"
max_in_flight_per_endpoint = 2
"#,
    )
    .await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let slow = Receiver::start().await;
    slow.answer(|_, _| Answer {
        delay: Duration::from_secs(6),
        ..Answer::status(204)
    });
    let fast = Receiver::start().await;
    endpoint(&app, &slow.url, json!(["user.created"])).await;
    endpoint(&app, &fast.url, json!(["user.created"])).await;
    for n in 0..10 {
        let reply = broker
            .login(&login("plain", &format!("slow-{n}"), person(100 + n)))
            .await;
        assert_eq!(reply.outcome.as_str(), "user_created");
    }
    fast.until(WAIT, "the fast endpoint's ten events", |r| r.len() == 10)
        .await;
    // Each of the slow endpoint's requests takes 6 s, two at a time: had the fast endpoint
    // waited for it, it would have taken at least that long, and the slow one would have more.
    assert!(
        slow.received().len() <= 2,
        "slow got {}",
        slow.received().len()
    );
    assert_eq!(
        slow.most_in_flight(),
        2,
        "the slow endpoint holds its two slots"
    );
    app.stop().await;
}

#[tokio::test]
async fn private_and_link_local_addresses_are_refused_at_creation_and_at_delivery() {
    // Allowed here: loopback is reachable, link-local never.
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let receiver = Receiver::start().await;
    let (status, body) = app
        .api()
        .post(
            "/v1/webhooks",
            json!({"user_pool_id": POOL, "url": "http://169.254.169.254/latest"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "url");
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (named, _) = endpoint(&app, &by_name, json!(["#"])).await;
    let (literal, _) = endpoint(&app, &receiver.url, json!(["#"])).await;
    app.stop().await;

    // Not allowed: refused at creation, and the endpoints made while allowed get nothing.
    let mut settings = services.settings();
    settings.webhooks.allow_private_addresses = false;
    let app = TestApp::spawn_with(settings).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://[::1]:9/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://[fd00:ec2::254]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/x",
        "http://0.0.0.0:9/x",
    ] {
        let (status, body) = app
            .api()
            .post("/v1/webhooks", json!({"user_pool_id": POOL, "url": url}))
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(error_code(&body), "invalid_field");
    }
    for (url, why) in [
        ("file:///etc/passwd", "http"),
        ("http://u:p@example.com/", "user"),
    ] {
        let (status, body) = app
            .api()
            .post("/v1/webhooks", json!({"user_pool_id": POOL, "url": url}))
            .await;
        assert_eq!(status, 422, "{url}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    let mut broker = Broker::connect(&services).await;
    broker.login(&login("plain", "private-1", person(9))).await;
    let db = services.db().await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM webhook_attempts").await >= 2
    })
    .await
    .expect("both endpoints were tried");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the private address"
    );
    for id in [named, literal] {
        let log = deliveries(&app, &id).await;
        let error = log[0]["log"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("private"), "{id}: {error}");
        assert_eq!(log[0]["log"][0]["status"], Value::Null);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_replay_sends_again_what_was_published_since_a_time() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let mut broker = Broker::connect(&services).await;
    let receiver = Receiver::start().await;
    let (id, _) = endpoint(&app, &receiver.url, json!(["user.created"])).await;
    for n in 0..3 {
        broker
            .login(&login("plain", &format!("replay-{n}"), person(20 + n)))
            .await;
    }
    receiver.until(WAIT, "three events", |r| r.len() == 3).await;
    settled(&db).await;
    let (status, body) = app
        .api()
        .post(&format!("/v1/webhooks/{id}/replay"), json!({"since": "1h"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 3);
    let got = receiver.until(WAIT, "the replay", |r| r.len() == 6).await;
    let mut first: Vec<&str> = got[..3].iter().map(|r| r.id.as_str()).collect();
    let mut again: Vec<&str> = got[3..].iter().map(|r| r.id.as_str()).collect();
    first.sort();
    again.sort();
    assert_eq!(first, again, "a replay keeps each event's id");
    // Nothing since a minute in the future; and a time that is not one is refused.
    for since in ["2999-01-01T00:00:00Z", "yesterday", "-1h"] {
        let (status, body) = app
            .api()
            .post(
                &format!("/v1/webhooks/{id}/replay"),
                json!({"since": since}),
            )
            .await;
        assert_eq!(status, 422, "{since}: {body}");
    }
    // The log, a page of one at a time: each delivery once, newest event first (a replay keeps
    // each delivery's place), and a cursor of another endpoint's delivery finds nothing.
    settled(&db).await;
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = app
            .api()
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=1{cursor}"))
            .await;
        assert_eq!(status, 200, "{body}");
        paged.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
        assert!(paged.len() <= 3, "{paged:?}");
    }
    let whole = deliveries(&app, &id).await;
    assert_eq!(paged, whole, "pages of one add up to the whole log");
    let mut events: Vec<&str> = whole
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    let newest_first = events.clone();
    events.sort_by(|a, b| b.cmp(a));
    assert_eq!(newest_first, events, "newest event first");
    // One delivery again, by its id.
    let delivery = whole[0]["id"].as_i64().unwrap();
    let (status, _) = app
        .api()
        .post(
            &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    receiver
        .until(WAIT, "the retried delivery", |r| r.len() == 7)
        .await;
    let (status, _) = app
        .api()
        .post(
            &format!("/v1/webhooks/{id}/deliveries/999999/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn one_subject_s_events_arrive_in_sequence_order_across_retries() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    let mut broker = Broker::connect(&services).await;
    let receiver = Receiver::start().await;
    // The first event of the subject fails twice; the ones after it must wait for it.
    receiver.answer(|event, seen| {
        Answer::status(if event["type"] == "user.created" && seen < 2 {
            500
        } else {
            204
        })
    });
    endpoint(&app, &receiver.url, json!(["user.*"])).await;
    let reply = broker.login(&login("plain", "order-1", person(30))).await;
    let user = reply.user_id.unwrap();
    for name in ["Second", "Third", "Fourth"] {
        let (status, body) = app
            .api()
            .patch(&format!("/v1/users/{user}"), json!({"name": name}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    settled(&db).await;
    let got = receiver.received();
    let subject: Vec<(String, u16)> = got
        .iter()
        .filter(|r| r.event["subject"] == user.to_string())
        .map(|r| (r.sequence().to_owned(), r.answered))
        .collect();
    let sequences: Vec<&str> = subject.iter().map(|(s, _)| s.as_str()).collect();
    let mut sorted = sequences.clone();
    sorted.sort();
    assert_eq!(sequences, sorted, "sent in sequence order: {subject:?}");
    assert_eq!(
        subject.len(),
        6,
        "three tries of the first, one of each other: {subject:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_api_is_audited_checked_and_read_only_for_viewers() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let receiver = Receiver::start().await;
    let viewer = app.api_as(Some(VIEWER_TOKEN));
    let (status, _) = viewer
        .post(
            "/v1/webhooks",
            json!({"user_pool_id": POOL, "url": receiver.url}),
        )
        .await;
    assert_eq!(status, 403);
    let secret_url = format!("{}?token=abc123", receiver.url);
    let (id, secret) = endpoint(&app, &secret_url, json!(["user.*"])).await;
    receiver.knows(&[&secret]);
    let (_, seen) = viewer.get(&format!("/v1/webhooks/{id}")).await;
    assert!(!seen["url"].as_str().unwrap().contains("abc123"), "{seen}");
    let (_, seen) = app.api().get(&format!("/v1/webhooks/{id}")).await;
    assert!(seen["url"].as_str().unwrap().contains("abc123"));

    for (body, field) in [
        (json!({"event_types": ["user.(x)"]}), "event_types"),
        (json!({"event_types": []}), "event_types"),
        (json!({"url": "gopher://x"}), "url"),
        (json!({"description": "a\u{0}b"}), "description"),
    ] {
        let (status, answer) = app
            .api()
            .patch(&format!("/v1/webhooks/{id}"), body.clone())
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field);
    }
    let (status, _) = app
        .api()
        .patch(&format!("/v1/webhooks/{id}"), json!({"secret": "x"}))
        .await;
    assert_eq!(status, 422, "unknown fields are refused");
    let (status, changed) = app
        .api()
        .patch(
            &format!("/v1/webhooks/{id}"),
            json!({"description": "CRM", "event_types": ["user.created"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(changed["event_types"], json!(["user.created"]));

    let (status, ping) = app
        .api()
        .post(&format!("/v1/webhooks/{id}/ping"), json!({}))
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["delivered"], true);
    assert_eq!(ping["status"], 204);
    let got = receiver.until(WAIT, "the ping", |r| !r.is_empty()).await;
    assert_eq!(got[0].event_type(), "webhook.ping");
    assert_eq!(got[0].id, ping["id"].as_str().unwrap());
    assert_eq!(got[0].verified, vec![true]);

    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/webhooks/{unknown}"),
        format!("/v1/webhooks/{unknown}/deliveries"),
    ] {
        assert_eq!(app.api().get(&path).await.0, 404, "{path}");
    }
    let (status, _) = app.api().delete(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(app.api().get(&format!("/v1/webhooks/{id}")).await.0, 404);
    let (_, audit) = app.api().get("/v1/audit?limit=20").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"] == format!("webhook/{id}"))
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["webhook.delete", "webhook.update", "webhook.create"]
    );
    assert!(
        !audit.to_string().contains(&secret),
        "the audit log holds no secret"
    );
    assert!(
        !audit.to_string().contains("abc123"),
        "nor the URL's query values"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_sends_it_again_with_the_same_id() {
    let services = Services::with_config(
        r#"
[webhooks]
allow_private_addresses = true
poll_interval = "100ms"
timeout = "2s"
"#,
    )
    .await;
    let receiver = Receiver::start().await;
    // The first request is held past the kill; later ones are answered at once.
    receiver.answer(|_, seen| Answer {
        delay: if seen == 0 {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        },
        ..Answer::status(204)
    });
    let app = TestApp::spawn(&services).await;
    let (id, _) = endpoint(&app, &receiver.url, json!(["user.created"])).await;
    app.stop().await;

    let mut worker = WorkerProcess::start(&services);
    let mut broker = Broker::connect(&services).await;
    broker.login(&login("plain", "killed-1", person(40))).await;
    receiver
        .until(WAIT, "the first attempt", |r| r.len() == 1)
        .await;
    worker.kill();
    let _worker = WorkerProcess::start(&services);
    let got = receiver
        .until(WAIT, "the attempt after the restart", |r| r.len() == 2)
        .await;
    assert_eq!(got[0].id, got[1].id, "the same webhook-id");
    let db = services.db().await;
    settled(&db).await;
    let (state, attempts): (String, i32) = sqlx::query_as(
        "SELECT state, attempts FROM webhook_deliveries WHERE endpoint_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts), ("delivered", 1));
    assert_eq!(receiver.received().len(), 2, "sent again once, not more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_manages_endpoints_and_reads_their_deliveries() {
    let services = services().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let receiver = Receiver::start().await;
    let cli = |args: &[&str]| {
        let mut command = app.admin_command(&services);
        command.arg("webhooks").args(args);
        run(&mut command)
    };
    let (code, out, err) = cli(&[
        "create",
        "--pool",
        POOL,
        "--url",
        &receiver.url,
        "--types",
        "user.*,binding.#",
        "--description",
        "CRM",
    ]);
    assert_eq!(code, 0, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret is printed")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    receiver.knows(&[&secret]);
    let (code, out, _) = cli(&["list", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        listed["items"][0]["event_types"],
        json!(["user.*", "binding.#"])
    );
    assert!(!out.contains("whsec_"));

    let (code, out, err) = cli(&["ping", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("delivered: 204"), "{out}");
    broker.login(&login("plain", "cli-1", person(50))).await;
    receiver.until(WAIT, "the event", |r| r.len() == 2).await;
    let db = services.db().await;
    settled(&db).await;
    let (code, out, _) = cli(&["deliveries", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("user.created") && out.contains("delivered"),
        "{out}"
    );
    let (code, out, _) = cli(&["replay", &id, "--since", "1h"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("1 events since"), "{out}");
    receiver.until(WAIT, "the replay", |r| r.len() == 3).await;
    let (code, _, err) = cli(&["replay", &id, "--since", "tomorrow"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("422 invalid_field"), "{err}");
    let (code, out, _) = cli(&["update", &id, "--disable"]);
    assert_eq!(code, 0);
    assert!(out.contains("disabled (admin)"), "{out}");
    receiver.answer(|_, _| Answer::status(500));
    let (code, out, _) = cli(&["ping", &id]);
    assert_eq!(code, 1, "a failed ping fails: {out}");
    let (code, _, _) = cli(&["delete", &id]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&["show", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_yield_to_a_login_backlog_and_then_catch_up() {
    let services = services().await;
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(&services).await;
    endpoint(&app, &receiver.url, json!(["user.created"])).await;
    app.stop().await;
    // A backlog the worker takes in batches of 64 and more: logins queue up.
    let broker = Broker::connect(&services).await;
    for n in 0..400 {
        broker
            .send(&login("plain", &format!("wave-{n}"), person(1000 + n)))
            .await;
    }
    let app = TestApp::spawn(&services).await;
    let got = receiver
        .until(WAIT, "every event once the logins are decided", |r| {
            r.len() >= 400
        })
        .await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 400, "each event delivered, none twice");
    app.stop().await;
}
