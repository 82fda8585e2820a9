//! Leavers and movers (contract section 11), through the broker: the source says a person left,
//! was renamed or re-joined, and the account follows as the connection's `on_source_removal`
//! says; the guard holds mass removals for an admin.

use identity_sync::domain::decision::Outcome;
use serde_json::{Value, json};
use uuid::Uuid;

use idsync_test_support::*;

const REMOVED: &str = "directory.user_removed";
const RENAMED: &str = "directory.user_renamed";
const RESTORED: &str = "directory.user_restored";

/// Three connections of one source, one per `on_source_removal`, matching on verified emails;
/// `hr-guard` unlinks under a guard of 10% and at least 20 per hour (the defaults).
const LEAVERS: &str = r#"
[[connections]]
identifier = "hr-notify"
user_pool_id = "pool-1"
provider = "oidc"
association = "field_matching"

[[connections]]
identifier = "hr-unlink"
user_pool_id = "pool-1"
provider = "oidc"
association = "field_matching"
on_source_removal = "unlink"

[[connections]]
identifier = "hr-suspend"
user_pool_id = "pool-1"
provider = "oidc"
association = "field_matching"
on_source_removal = "suspend"

[[connections]]
identifier = "hr-guard"
user_pool_id = "pool-1"
provider = "oidc"
association = "field_matching"
on_source_removal = "unlink"
"#;

async fn services() -> Services {
    Services::with_config(LEAVERS).await
}

fn person(email: &str) -> Value {
    json!({"email": email, "email_verified": true})
}

fn change(connection: &str, external_id: &str) -> Value {
    json!({"user_pool_id": POOL, "connection": connection, "external_id": external_id})
}

/// Sends a directory event with a new id and waits for its reply.
async fn directory(broker: &mut Broker, kind: &str, data: Value) -> Value {
    let id = Uuid::now_v7().to_string();
    let sent = broker.request_command(kind, &id, data).await;
    let reply = broker.reply_value(&sent).await;
    assert_eq!(reply["event_id"], id.as_str(), "{reply}");
    reply
}

fn done(reply: &Value) {
    assert_eq!(
        (&reply["outcome"], &reply["code"]),
        (&json!("done"), &Value::Null),
        "{reply}"
    );
}

/// A first login that creates an account; returns its id.
async fn joined(broker: &mut Broker, connection: &str, external_id: &str, email: &str) -> Uuid {
    let reply = broker
        .login(&login(connection, external_id, person(email)))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    assert_eq!(broker.next_event().await.routing_key, "user.created");
    reply.user_id.unwrap()
}

/// The next events' routing keys and data, `n` of them.
async fn events(broker: &mut Broker, n: usize) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let event = broker.next_event().await;
        seen.push((event.routing_key, event.body["data"].clone()));
    }
    seen
}

#[tokio::test]
async fn each_removal_policy_does_what_it_says_and_a_suspended_account_turns_every_login_away() {
    let services = services().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let db = services.db().await;
    let ann = joined(&mut broker, "hr-notify", "ann", "ann@corp.example").await;
    let bo = joined(&mut broker, "hr-unlink", "bo", "bo@corp.example").await;
    let cy = joined(&mut broker, "hr-suspend", "cy", "cy@corp.example").await;

    // notify: told, nothing changes; the person still logs in.
    let mut removal = change("hr-notify", "ann");
    removal["source_event"] = json!("user_leave_org");
    removal["occurred_at"] = json!("2026-12-07T08:00:00+08:00");
    let reply = directory(&mut broker, REMOVED, removal).await;
    done(&reply);
    assert_eq!(
        events(&mut broker, 1).await,
        vec![(
            "identity.source_removed".into(),
            json!({"user_pool_id": POOL, "user_id": ann,
                   "identity": {"connection": "hr-notify", "external_id": "ann"},
                   "action": "notified", "cause_event_id": reply["event_id"]})
        )]
    );
    let again = broker
        .login(&login("hr-notify", "ann", person("ann@corp.example")))
        .await;
    assert_eq!(again.outcome, Outcome::ExistingUser);

    // unlink: the identity goes; the next login is a first login, under the connection's rules
    // (here: the same verified email links the same account again).
    done(&directory(&mut broker, REMOVED, change("hr-unlink", "bo")).await);
    let seen = events(&mut broker, 2).await;
    assert_eq!(seen[0].0, "identity.source_removed");
    assert_eq!(seen[0].1["action"], "unlinked");
    assert_eq!(seen[1].0, "user.unlinked");
    assert_eq!(seen[1].1["reason"], "source_removed");
    assert_eq!(seen[1].1["actor"], "urn:test:platform");
    assert_eq!(seen[1].1["user_id"], bo.to_string());
    let (_, shown) = app.api().get(&format!("/v1/users/{bo}")).await;
    assert_eq!(shown["identities"], json!([]), "{shown}");
    assert_eq!(shown["suspended_at"], Value::Null);
    let back = broker
        .login(&login("hr-unlink", "bo", person("bo@corp.example")))
        .await;
    assert_eq!(
        (back.outcome, back.user_id),
        (Outcome::UserLinked, Some(bo))
    );
    assert_eq!(broker.next_event().await.routing_key, "user.linked");

    // suspend: the last identity goes and the account is suspended.
    done(&directory(&mut broker, REMOVED, change("hr-suspend", "cy")).await);
    let seen = events(&mut broker, 3).await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["identity.source_removed", "user.unlinked", "user.suspended"]
    );
    assert_eq!(seen[0].1["action"], "suspended");
    assert_eq!(
        seen[2].1,
        json!({"user_pool_id": POOL, "user_id": cy, "reason": "source_removed",
               "cause_event_id": seen[0].1["cause_event_id"], "actor": null})
    );
    let (_, shown) = app.api().get(&format!("/v1/users/{cy}")).await;
    assert!(shown["suspended_at"].is_string(), "{shown}");

    // Whoever reaches a suspended account is turned away: the same person again, and through
    // another source with the same verified email.
    for (connection, external_id) in [("hr-suspend", "cy"), ("hr-unlink", "cy-elsewhere")] {
        let turned = broker
            .login(&login(connection, external_id, person("cy@corp.example")))
            .await;
        assert_eq!(turned.outcome, Outcome::Rejected, "{turned:?}");
        assert_eq!(turned.reason.as_deref(), Some("account_suspended"));
        assert_eq!(turned.user_id, None);
        let rejected = broker.next_event().await;
        assert_eq!(rejected.routing_key, "login.rejected");
        assert_eq!(rejected.body["data"]["reason"], "account_suspended");
        assert_eq!(
            rejected.body["data"]["candidates"][0]["suspended"], true,
            "the evidence says why"
        );
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE email = 'cy@corp.example'"
        )
        .await,
        1,
        "no second account"
    );

    // The source says the person re-joined: the account is active again, and the next login
    // links it.
    done(&directory(&mut broker, RESTORED, change("hr-suspend", "cy")).await);
    let seen = events(&mut broker, 1).await;
    assert_eq!(seen[0].0, "user.reactivated");
    assert_eq!(seen[0].1["reason"], "source_restored");
    let back = broker
        .login(&login("hr-suspend", "cy", person("cy@corp.example")))
        .await;
    assert_eq!(
        (back.outcome, back.user_id),
        (Outcome::UserLinked, Some(cy))
    );
    // A restore of someone not suspended changes nothing.
    let ignored = directory(&mut broker, RESTORED, change("hr-suspend", "cy")).await;
    assert_eq!(
        (&ignored["outcome"], &ignored["code"]),
        (&json!("ignored"), &json!("not_suspended"))
    );
    // A removal of someone never linked changes nothing either.
    let ignored = directory(&mut broker, REMOVED, change("hr-suspend", "nobody")).await;
    assert_eq!(
        (&ignored["outcome"], &ignored["code"]),
        (&json!("ignored"), &json!("not_linked"))
    );
    app.stop().await;
}

#[tokio::test]
async fn an_admin_reactivates_a_suspended_account_and_a_binding_cannot_link_to_one() {
    let services = services().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let dee = joined(&mut broker, "hr-suspend", "dee", "dee@corp.example").await;
    done(&directory(&mut broker, REMOVED, change("hr-suspend", "dee")).await);
    events(&mut broker, 3).await;

    // A binding offered to the person elsewhere cannot link to the suspended account.
    let pending = broker
        .login(&login("asking", "wc-dee", person("dee@corp.example")))
        .await;
    assert_eq!(pending.outcome, Outcome::Rejected, "{pending:?}");
    assert_eq!(pending.reason.as_deref(), Some("account_suspended"));
    events(&mut broker, 1).await;
    let ext = joined(&mut broker, "asking", "wc-ext", "ext@corp.example").await;
    let open = broker
        .login(&login("asking", "wc-ext2", person("ext@corp.example")))
        .await;
    assert_eq!(open.outcome, Outcome::BindingPending);
    events(&mut broker, 1).await;
    let binding = open.binding_id.unwrap();
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding}/resolve"),
            json!({"action": "link", "user_id": dee}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "account_suspended"),
        "{body}"
    );
    let _ = ext;

    // A viewer may not reactivate; an admin may, once.
    let path = format!("/v1/users/{dee}/reactivate");
    let (status, _) = app.api_as(Some(VIEWER_TOKEN)).post(&path, json!({})).await;
    assert_eq!(status, 403);
    let (status, body) = app
        .api()
        .post(&path, json!({"reason": "back from leave"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["suspended_at"], Value::Null);
    let seen = events(&mut broker, 1).await;
    assert_eq!(
        seen[0],
        (
            "user.reactivated".into(),
            json!({"user_pool_id": POOL, "user_id": dee, "reason": "back from leave",
                   "cause_event_id": null, "actor": "ops-alice"})
        )
    );
    let (status, body) = app.api().post(&path, json!({})).await;
    assert_eq!((status, error_code(&body)), (409, "not_suspended"));
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/users/{}/reactivate", Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (_, audit) = app.api().get("/v1/audit?action=user.reactivate").await;
    assert_eq!(audit["items"][0]["actor"], "ops-alice", "{audit}");

    // Active again: the person's next login links the account.
    let back = broker
        .login(&login("hr-suspend", "dee", person("dee@corp.example")))
        .await;
    assert_eq!(
        (back.outcome, back.user_id),
        (Outcome::UserLinked, Some(dee))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rename_keeps_the_person_and_a_rename_onto_another_account_is_refused() {
    let services = services().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let eve = joined(&mut broker, "hr-unlink", "zhangsan", "eve@corp.example").await;
    let fay = joined(&mut broker, "hr-unlink", "lisi", "fay@corp.example").await;

    let mut rename = change("hr-unlink", "zhangsan");
    rename["new_external_id"] = json!("zhangsan01");
    done(&directory(&mut broker, RENAMED, rename.clone()).await);
    assert_eq!(
        events(&mut broker, 1).await,
        vec![(
            "identity.renamed".into(),
            json!({"user_pool_id": POOL, "user_id": eve, "connection": "hr-unlink",
                   "old_external_id": "zhangsan", "new_external_id": "zhangsan01"})
        )]
    );
    // The next login under the new id is the same person, not a stranger.
    let next = broker
        .login(&login(
            "hr-unlink",
            "zhangsan01",
            person("eve@corp.example"),
        ))
        .await;
    assert_eq!(
        (next.outcome, next.user_id),
        (Outcome::ExistingUser, Some(eve))
    );

    // Onto an id another account holds: nothing moves, and the reply and an event say why.
    let mut onto = change("hr-unlink", "zhangsan01");
    onto["new_external_id"] = json!("lisi");
    let refused = directory(&mut broker, RENAMED, onto).await;
    assert_eq!(
        (&refused["outcome"], &refused["code"]),
        (&json!("refused"), &json!("identity_taken"))
    );
    let seen = events(&mut broker, 1).await;
    assert_eq!(seen[0].0, "identity.rename_refused");
    assert_eq!(seen[0].1["reason"], "identity_taken");
    assert_eq!(seen[0].1["user_id"], eve.to_string());
    for (external_id, owner) in [("zhangsan01", eve), ("lisi", fay)] {
        let again = broker
            .login(&login("hr-unlink", external_id, json!({})))
            .await;
        assert_eq!(
            (again.outcome, again.user_id),
            (Outcome::ExistingUser, Some(owner))
        );
    }

    // A binding pending for the old id follows it.
    let _gus = joined(&mut broker, "plain", "gus-plain", "gus@corp.example").await;
    let open = broker
        .login(&login("asking", "wc-gus", person("gus@corp.example")))
        .await;
    assert_eq!(open.outcome, Outcome::BindingPending);
    events(&mut broker, 1).await;
    let mut rename = change("asking", "wc-gus");
    rename["new_external_id"] = json!("wc-gus-2");
    done(&directory(&mut broker, RENAMED, rename).await);
    let (_, shown) = app
        .api()
        .get(&format!("/v1/bindings/{}", open.binding_id.unwrap()))
        .await;
    assert_eq!(shown["external_id"], "wc-gus-2", "{shown}");
    let still = broker
        .login(&login("asking", "wc-gus-2", person("gus@corp.example")))
        .await;
    assert_eq!(
        (still.outcome, still.binding_id),
        (Outcome::BindingPending, open.binding_id)
    );
    app.stop().await;
}

#[tokio::test]
async fn removals_past_the_guard_are_held_survive_a_restart_and_wait_for_an_admin() {
    let services = services().await;
    let db = services.migrate().await;
    // 100 people of `hr-guard`, each with an account: the guard allows max(20, 10% of 100).
    sqlx::raw_sql(
        "INSERT INTO users (id, user_pool_id, email, email_verified)
           SELECT gen_random_uuid(), 'pool-1', 'p' || n || '@corp.example', true
           FROM generate_series(1, 100) n;
         INSERT INTO identities (user_pool_id, connection, external_id, user_id)
           SELECT 'pool-1', 'hr-guard', split_part(email, '@', 1), id FROM users",
    )
    .execute(&db)
    .await
    .unwrap();
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;

    // 25 leave within a minute: 20 are applied, 5 held.
    let mut outcomes = Vec::new();
    for n in 1..=25 {
        let reply = directory(&mut broker, REMOVED, change("hr-guard", &format!("p{n}"))).await;
        outcomes.push((reply["outcome"].clone(), reply["code"].clone()));
    }
    let held = json!(["held", "removal_guard"]);
    assert!(outcomes[..20].iter().all(|o| o.0 == "done"), "{outcomes:?}");
    assert!(
        outcomes[20..].iter().all(|o| json!([o.0, o.1]) == held),
        "{outcomes:?}"
    );
    let mut told = Vec::new();
    while let Some(event) = broker
        .next_event_within(std::time::Duration::from_secs(3))
        .await
    {
        if event.routing_key == "connection.removals_held" {
            told.push(event.body["data"]["held"].as_i64().unwrap());
            assert_eq!(event.body["subject"], "hr-guard");
        }
    }
    assert_eq!(told, [1, 2, 3, 4, 5]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM identities WHERE connection = 'hr-guard'"
        )
        .await,
        80
    );

    // Held removals survive the worker's restart.
    app.stop().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let path = "/v1/connections/pool-1/hr-guard/held-removals";
    let (status, listed) = app.api_as(Some(VIEWER_TOKEN)).get(path).await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p21", "p22", "p23", "p24", "p25"]);

    // An admin discards one (a mistake of the source) and releases the rest.
    let (status, body) = app
        .api()
        .post(&format!("{path}/discard"), json!({"external_ids": ["p25"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .api_as(Some(VIEWER_TOKEN))
        .post(&format!("{path}/release"), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app.api().post(&format!("{path}/release"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let released: Vec<(&str, &str)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["external_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        released,
        [
            ("p21", "done"),
            ("p22", "done"),
            ("p23", "done"),
            ("p24", "done")
        ]
    );
    let (_, listed) = app.api().get(path).await;
    assert_eq!(listed["items"], json!([]));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM identities WHERE connection = 'hr-guard'"
        )
        .await,
        76,
        "p25 stays linked"
    );
    for action in ["removals.discard", "removals.release"] {
        let (_, audit) = app.api().get(&format!("/v1/audit?action={action}")).await;
        assert_eq!(
            audit["items"].as_array().unwrap().len(),
            1,
            "{action}: {audit}"
        );
    }
    let (status, body) = app
        .api()
        .get("/v1/connections/pool-1/nowhere/held-removals")
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    app.stop().await;
}

#[tokio::test]
async fn a_removal_is_heard_only_from_trusted_publishers_and_once() {
    let services = services().await;
    let db = services.migrate().await;
    // Nobody is trusted: every directory event is dead-lettered, unanswered.
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    joined(&mut broker, "hr-unlink", "hal", "hal@corp.example").await;
    let sent = broker
        .request_command(REMOVED, "from-anyone", change("hr-unlink", "hal"))
        .await;
    let dead = broker.dead_letter().await;
    assert!(
        error_header(&dead).starts_with("untrusted_publisher"),
        "{}",
        error_header(&dead)
    );
    assert!(!broker.replied(&sent));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM identities WHERE external_id = 'hal'"
        )
        .await,
        1
    );
    app.stop().await;

    // Trusted: applied once, whatever the platform re-sends; a bad one is dead-lettered with
    // an error reply in the directory's shape.
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let first = broker
        .request_command(REMOVED, "leave-1", change("hr-unlink", "hal"))
        .await;
    let reply = broker.reply_value(&first).await;
    done(&reply);
    let again = broker
        .request_command(REMOVED, "leave-1", change("hr-unlink", "hal"))
        .await;
    assert_eq!(broker.reply_value(&again).await, reply);
    let seen = events(&mut broker, 2).await;
    assert_eq!(seen[1].0, "user.unlinked");
    broker.no_more_events().await;

    let unknown = broker
        .request_command(REMOVED, "leave-2", change("nowhere", "hal"))
        .await;
    assert_eq!(
        broker.reply_value(&unknown).await,
        json!({"event_id": "leave-2", "outcome": "error", "code": "unknown_connection"})
    );
    let mut rename = change("hr-unlink", "hal");
    rename["new_external_id"] = json!("x".repeat(257));
    let long = broker.request_command(RENAMED, "rename-1", rename).await;
    assert_eq!(
        broker.reply_value(&long).await,
        json!({"event_id": "rename-1", "outcome": "error", "code": "invalid_event"})
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_commands").await,
        1,
        "dead letters leave no claim"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_and_a_login_of_one_identity_are_decided_in_one_order() {
    let services = services().await;
    let a = TestApp::spawn_with(services.trusting_guest()).await;
    let b = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let db = services.db().await;
    let mut orders = [0, 0];
    for round in 0..20 {
        let id = format!("racer-{round}");
        let email = format!("{id}@corp.example");
        let user = joined(&mut broker, "hr-suspend", &id, &email).await;
        // Both at once, each taken by whichever worker is free.
        let removal = broker
            .request_command(
                REMOVED,
                &format!("leave-{round}"),
                change("hr-suspend", &id),
            )
            .await;
        let logging_in = broker
            .request(&login("hr-suspend", &id, person(&email)))
            .await;
        let removed = broker.reply_value(&removal).await;
        done(&removed);
        let reply = broker.reply(&logging_in).await;
        match (reply.outcome, reply.reason.as_deref()) {
            // The login first: it was the person's, then they left.
            (Outcome::ExistingUser, None) => {
                assert_eq!(reply.user_id, Some(user));
                orders[0] += 1;
            }
            // The removal first: the login reached a suspended account.
            (Outcome::Rejected, Some("account_suspended")) => orders[1] += 1,
            other => panic!("round {round}: a mix of the two orders: {other:?}"),
        }
        let suspended: bool =
            sqlx::query_scalar("SELECT suspended_at IS NOT NULL FROM users WHERE id = $1")
                .bind(user)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(suspended, "round {round}: either way, the person left");
        while broker
            .next_event_within(std::time::Duration::from_millis(200))
            .await
            .is_some()
        {}
    }
    eprintln!("login first {}, removal first {}", orders[0], orders[1]);
    a.stop().await;
    b.stop().await;
}

// The binary runs while the application answers it: a runtime with threads to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_follows_a_leaver_from_the_command_line() {
    // `hr-guard` comes last: the table below is its guard, one that holds every removal.
    let services = Services::with_config(&format!(
        "{LEAVERS}[connections.removal_guard]\nmin_count = 0\nmax_fraction = 0.0\n"
    ))
    .await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let ivy = joined(&mut broker, "hr-suspend", "ivy", "ivy@corp.example").await;
    joined(&mut broker, "hr-guard", "jo", "jo@corp.example").await;
    let json =
        |stdout: &str| -> Value { serde_json::from_str(stdout.trim()).expect("one JSON object") };

    // The source's removal, sent as the platform would: the reply and the events it caused.
    let (code, stdout, stderr) = run(services.command().args([
        "send-command",
        "directory.user_removed",
        "--connection",
        "hr-suspend",
        "--external-id",
        "ivy",
        "--source-event",
        "user_leave_org",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let sent = json(&stdout);
    assert_eq!(sent["reply"]["outcome"], "done", "{sent}");
    let kinds: Vec<&str> = sent["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["identity.source_removed", "user.unlinked", "user.suspended"],
        "{sent}"
    );

    // An admin reactivates the account.
    let (code, stdout, stderr) = run(app.admin_command(&services).args([
        "users",
        "reactivate",
        &ivy.to_string(),
        "--reason",
        "rehired",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("active again"), "{stdout}");
    let (code, _, stderr) =
        run(app
            .admin_command(&services)
            .args(["users", "reactivate", &ivy.to_string()]));
    assert_eq!(code, 1);
    assert!(stderr.contains("409 not_suspended"), "{stderr}");

    // A guard of zero holds every removal: listed, then released.
    let (code, stdout, stderr) = run(services.command().args([
        "send-command",
        "directory.user_removed",
        "--connection",
        "hr-guard",
        "--external-id",
        "jo",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&stdout)["reply"]["outcome"], "held", "{stdout}");
    let held = ["--pool", POOL, "--connection", "hr-guard"];
    let (code, stdout, stderr) = run(app
        .admin_command(&services)
        .args(["directory", "held"])
        .args(held));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("jo") && stdout.contains("1 held"),
        "{stdout}"
    );
    let (code, stdout, stderr) = run(app
        .admin_command(&services)
        .args(["directory", "release", "--external-id", "jo"])
        .args(held));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 released"), "{stdout}");
    let (_, listed) = app
        .api()
        .get("/v1/connections/pool-1/hr-guard/held-removals")
        .await;
    assert_eq!(listed["items"], json!([]));
    let (_, shown) = app.api().get("/v1/connections/pool-1/hr-guard").await;
    assert_eq!(shown["on_source_removal"], "unlink");
    assert_eq!(
        shown["removal_guard"],
        json!({"max_fraction": 0.0, "min_count": 0, "window": "1h"})
    );
    app.stop().await;
}
