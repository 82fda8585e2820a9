//! Commands over the queue (contract section 6), through the broker: the platform finishes
//! Asking-for-Binding with the person's proof, or unlinks an identity, under the admin API's rules,
//! with replies, dedupe, dead letters and trusted publishers.

use identity_sync::domain::decision::Outcome;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use uuid::Uuid;

use idsync_test_support::*;

const RESOLVE: &str = "binding.resolve";
const UNLINK: &str = "user.unlink";

/// Opens a pending binding on the `asking` connection for a login whose verified email matches;
/// returns its id.
async fn pending_binding(
    broker: &mut Broker,
    connection: &str,
    external_id: &str,
    email: &str,
) -> Uuid {
    let reply = broker
        .login(&login(
            connection,
            external_id,
            json!({"email": email, "email_verified": true, "name": "Ext"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending, "{reply:?}");
    let event = broker.next_event().await;
    assert_eq!(event.body["type"], "binding.pending");
    reply.binding_id.unwrap()
}

fn link(binding: Uuid, user: impl std::fmt::Display, proof: &str) -> Value {
    json!({"binding_id": binding, "action": "link", "user_id": user.to_string(),
           "actor": "chen", "proof": proof})
}

fn refused(reply: &Value) -> &str {
    assert_eq!(reply["outcome"], "refused", "{reply}");
    reply["code"].as_str().unwrap()
}

#[tokio::test]
async fn a_person_finishes_asking_for_binding_over_the_queue() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, Some("chen")).await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;

    // The person proved with their password that `chen` is theirs.
    let command_id = Uuid::now_v7().to_string();
    let sent = broker
        .request_command(RESOLVE, &command_id, link(binding, chen, "password"))
        .await;
    let reply = broker.reply_value(&sent).await;
    assert_eq!(reply["command_id"], command_id.as_str());
    assert_eq!(reply["outcome"], "done", "{reply}");
    assert_eq!(reply["code"], Value::Null);
    let shown = &reply["binding"];
    assert_eq!(shown["id"], binding.to_string());
    assert_eq!(shown["status"], "resolved");
    assert_eq!(shown["resolution"], "linked");
    assert_eq!(shown["user_id"], chen.to_string());
    assert_eq!(shown["resolved_by"], "chen");
    assert_eq!(shown["resolution_proof"], "password");

    let resolved = broker.next_event().await;
    assert_eq!(resolved.routing_key, "binding.resolved");
    assert_eq!(
        resolved.body["data"],
        json!({"binding_id": binding, "user_pool_id": POOL, "resolution": "linked",
               "user_id": chen, "resolved_by": "chen", "proof": "password"})
    );
    let linked = broker.next_event().await;
    assert_eq!(linked.routing_key, "user.linked");
    assert_eq!(linked.body["data"]["method"], "binding");
    assert_eq!(linked.body["data"]["user_id"], chen.to_string());

    // The audit log names the person and the proof.
    let (_, audit) = app.api().get("/v1/audit").await;
    let entry = &audit["items"][0];
    assert_eq!(entry["actor"], "chen");
    assert_eq!(entry["action"], "binding.link");
    assert_eq!(entry["target"], format!("binding/{binding}"));
    assert_eq!(entry["after"]["resolution_proof"], "password");

    // Re-sent (the platform's retry): the same reply, nothing done twice.
    let again = broker
        .request_command(RESOLVE, &command_id, link(binding, chen, "password"))
        .await;
    assert_eq!(broker.reply_value(&again).await, reply);
    broker.no_more_events().await;
    assert_eq!(count(&db, "SELECT count(*) FROM audit_log").await, 1);

    // A stored reply this program cannot read is answered as an error, never as `done`.
    sqlx::query("UPDATE processed_commands SET reply = '{\"outcome\": \"maybe\"}'")
        .execute(&db)
        .await
        .unwrap();
    let unreadable = broker
        .request_command(RESOLVE, &command_id, link(binding, chen, "password"))
        .await;
    assert_eq!(
        broker.reply_value(&unreadable).await,
        json!({"command_id": command_id, "outcome": "error", "code": "stored_reply_unreadable",
               "binding": null})
    );
    broker.no_more_events().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_commands").await,
        1
    );

    // The next login of that identity is the account's.
    let next = broker
        .login(&login(
            "asking",
            "wc-chen",
            json!({"email": "chen@example.com", "email_verified": true, "name": "Ext"}),
        ))
        .await;
    assert_eq!(next.outcome, Outcome::ExistingUser);
    assert_eq!(next.user_id, Some(chen));

    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_commands_total{command=\"binding.resolve\",outcome=\"done\"}"
        ),
        2.0,
        "the re-sent command is counted too"
    );
    app.stop().await;
}

#[tokio::test]
async fn each_refusal_is_replied_with_the_admin_apis_code() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, Some("chen")).await;
    let stranger = create_user(&db, Some("stranger@example.com"), None, None).await;
    let mut settings = services.trusting_guest();
    // Expiry happens when a resolution finds the binding overdue, not in the background.
    settings.admin.expiry_sweep_interval = std::time::Duration::from_secs(3600);
    let app = TestApp::spawn_with(settings).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;

    // No such binding.
    let reply = broker
        .command(RESOLVE, link(Uuid::now_v7(), chen, "password"))
        .await;
    assert_eq!(refused(&reply), "not_found");
    assert_eq!(reply["binding"], Value::Null);
    // A person can only prove an account the login matched.
    let reply = broker
        .command(RESOLVE, link(binding, stranger, "password"))
        .await;
    assert_eq!(refused(&reply), "not_a_candidate");
    assert_eq!(reply["binding"]["status"], "pending", "shown as it is");
    // Not an account of the pool.
    let reply = broker
        .command(RESOLVE, link(binding, Uuid::now_v7(), "admin"))
        .await;
    assert_eq!(refused(&reply), "user_not_in_pool");
    // An operator (proof `admin`) may link outside the candidates, as the admin API may.
    let reply = broker
        .command(RESOLVE, link(binding, stranger, "admin"))
        .await;
    assert_eq!(reply["outcome"], "done", "{reply}");
    assert_eq!(reply["binding"]["resolution_proof"], "admin");
    broker.next_event().await;
    broker.next_event().await;
    // Only a pending binding can be resolved.
    let reply = broker
        .command(RESOLVE, link(binding, chen, "password"))
        .await;
    assert_eq!(refused(&reply), "binding_not_pending");
    assert_eq!(reply["binding"]["user_id"], stranger.to_string());
    // `stranger` now holds an identity of `asking`.
    let second = pending_binding(&mut broker, "asking", "wc-2", "stranger@example.com").await;
    let reply = broker
        .command(RESOLVE, link(second, stranger, "session"))
        .await;
    assert_eq!(refused(&reply), "user_already_linked");

    // A login-only connection never creates accounts, whoever asks.
    let amb_name = create_user(&db, None, None, Some("amb")).await;
    let amb_mail = create_user(&db, Some("amb@example.com"), None, None).await;
    let ambiguous = broker
        .login(&login(
            "only",
            "ldap-amb",
            json!({"email": "amb@example.com", "email_verified": true, "username": "amb"}),
        ))
        .await;
    assert_eq!(ambiguous.reason.as_deref(), Some("ambiguous_match"));
    broker.next_event().await;
    let only = ambiguous.binding_id.unwrap();
    let create = json!({"binding_id": only, "action": "create", "actor": "chen", "proof": "otp"});
    assert_eq!(
        refused(&broker.command(RESOLVE, create).await),
        "login_only_connection"
    );

    // An overdue binding expires when a command finds it (binding.expired is published).
    let brief = pending_binding(&mut broker, "brief", "fs-1", "amb@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let reply = broker.command(RESOLVE, link(brief, amb_mail, "sso")).await;
    assert_eq!(refused(&reply), "binding_expired");
    assert_eq!(reply["binding"]["status"], "expired");
    assert_eq!(broker.next_event().await.routing_key, "binding.expired");

    // Nothing a refusal touched was linked or resolved.
    broker.no_more_events().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities").await,
        1,
        "only the operator's link"
    );
    let _ = amb_name;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_commands_total{command=\"binding.resolve\",outcome=\"refused\"}"
        ),
        7.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_command_unlinks_an_identity() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let created = broker
        .login(&login(
            "plain",
            "oidc-1",
            json!({"email": "one@example.com"}),
        ))
        .await;
    assert_eq!(created.outcome, Outcome::UserCreated);
    broker.next_event().await;
    let user = created.user_id.unwrap();

    let unlink = |pool: &str, external_id: &str| {
        json!({"user_pool_id": pool, "user_id": user, "connection": "plain",
               "external_id": external_id, "actor": "hr-sync", "reason": "left the company"})
    };
    // A user of another pool is not found; neither is an identity it does not hold.
    assert_eq!(
        refused(&broker.command(UNLINK, unlink("pool-2", "oidc-1")).await),
        "not_found"
    );
    assert_eq!(
        refused(&broker.command(UNLINK, unlink(POOL, "oidc-2")).await),
        "not_found"
    );
    let reply = broker.command(UNLINK, unlink(POOL, "oidc-1")).await;
    assert_eq!(reply["outcome"], "done", "{reply}");
    assert_eq!(reply["binding"], Value::Null);
    let event = broker.next_event().await;
    assert_eq!(event.routing_key, "user.unlinked");
    assert_eq!(
        event.body["data"],
        json!({"user_pool_id": POOL, "user_id": user,
               "identity": {"connection": "plain", "external_id": "oidc-1"},
               "actor": "hr-sync", "reason": "left the company"})
    );
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 0);
    let (_, audit) = app.api().get("/v1/audit").await;
    assert_eq!(audit["items"][0]["actor"], "hr-sync");
    assert_eq!(audit["items"][0]["action"], "identity.unlink");
    app.stop().await;
}

#[tokio::test]
async fn a_command_that_cannot_be_read_is_dead_lettered_with_its_reason() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, None).await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;

    let cases = [
        (
            "no actor",
            json!({"binding_id": binding, "action": "link", "user_id": chen, "proof": "password"}),
            "invalid_event",
            "data.actor",
        ),
        (
            "unknown proof",
            json!({"binding_id": binding, "action": "link", "user_id": chen, "actor": "chen",
                   "proof": "trust-me"}),
            "invalid_event",
            "data.proof",
        ),
        (
            "unknown action",
            json!({"binding_id": binding, "action": "merge", "actor": "chen", "proof": "otp"}),
            "invalid_event",
            "data.action",
        ),
        (
            "binding id not a UUID",
            json!({"binding_id": "1 OR 1=1", "action": "create", "actor": "chen", "proof": "otp"}),
            "invalid_event",
            "data.binding_id",
        ),
    ];
    for (case, data, reason, names) in cases {
        let id = Uuid::now_v7().to_string();
        let sent = broker.request_command(RESOLVE, &id, data).await;
        let reply = broker.reply_value(&sent).await;
        assert_eq!(
            reply,
            json!({"command_id": id, "outcome": "error", "code": reason, "binding": null}),
            "{case}"
        );
        let dead = broker.dead_letter().await;
        let header = error_header(&dead);
        assert!(
            header.starts_with(reason) && header.contains(names),
            "{case}: {header}"
        );
    }
    // A login sent under a command's routing key is a command of the wrong type.
    let wrong = login("asking", "wc-x", json!({}));
    broker
        .publish_to(RESOLVE, &serde_json::to_vec(&wrong).unwrap(), json_props())
        .await;
    assert!(error_header(&broker.dead_letter().await).starts_with("wrong_type"));

    // Nothing was written; the binding is still pending and a good command still works.
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_commands").await,
        0
    );
    let reply = broker
        .command(RESOLVE, link(binding, chen, "password"))
        .await;
    assert_eq!(reply["outcome"], "done", "{reply}");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "idsync_commands_total{command=\"unknown\",outcome=\"error\"}"
        ),
        5.0
    );
    app.stop().await;
}

/// Publishes a command as another broker user (its `user_id` set, as RabbitMQ checks it).
async fn publish_as(user: &BrokerUser, services: &Services, body: &[u8], reply_to: &str) {
    let connection = Connection::connect(&user.url(services), ConnectionProperties::default())
        .await
        .expect("the broker user connects");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let properties = json_props()
        .with_user_id(user.name.as_str().into())
        .with_reply_to(reply_to.into())
        .with_correlation_id("from-the-queue".into());
    let confirm = channel
        .basic_publish(
            "idsync.in".into(),
            RESOLVE.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_command_from_an_untrusted_publisher_is_dead_lettered_unanswered() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, None).await;
    // The binding is opened while every publisher is heard.
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;
    app.stop().await;

    let platform = BrokerUser::create(&services, "platform", ["^$", "^idsync\\.in$", "^$"]).await;
    let intruder = BrokerUser::create(&services, "intruder", ["^$", "^idsync\\.in$", "^$"]).await;
    let mut settings = services.settings();
    settings.amqp.trusted_publishers = vec![platform.name.clone()];
    let app = TestApp::spawn_with(settings).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare(
            "idsync.reply.platform".into(),
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The intruder knows the binding id (from an event it could read) and claims the account,
    // with its reply aimed at the platform's reply queue.
    let claim = link(binding, chen, "password");
    let body = command_body(RESOLVE, "intruder-1", claim.clone());
    publish_as(&intruder, &services, &body, "idsync.reply.platform").await;
    let dead = broker.dead_letter().await;
    let reason = error_header(&dead);
    assert!(reason.starts_with("untrusted_publisher"), "{reason}");
    assert_eq!(dead.delivery.data, body, "the original body");
    let (_, shown) = app.api().get(&format!("/v1/bindings/{binding}")).await;
    assert_eq!(shown["status"], "pending");
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_commands").await,
        0
    );

    // The platform is heard (its reply comes to the test's reply queue).
    let body = command_body(RESOLVE, "platform-1", claim);
    publish_as(&platform, &services, &body, broker.reply_queue()).await;
    let reply = broker.reply_value("from-the-queue").await;
    assert_eq!(reply["outcome"], "done", "{reply}");
    // A round trip that must come after any reply to the intruder: the platform's own error
    // reply into the same queue, sent by the same consumer's error replies, in order.
    publish_as(&platform, &services, b"not json", "idsync.reply.platform").await;
    wait_until(WAIT, || async {
        broker.queue_depth("idsync.reply.platform").await >= 1
    })
    .await
    .expect("the platform's error reply arrived");
    assert_eq!(
        broker.queue_depth("idsync.reply.platform").await,
        1,
        "no reply for an untrusted publisher, only the platform's"
    );
    let only = broker
        .channel
        .basic_get(
            "idsync.reply.platform".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the platform's reply");
    let only: Value = serde_json::from_slice(&only.delivery.data).unwrap();
    assert_eq!(
        (&only["outcome"], &only["code"]),
        (&json!("error"), &json!("not_json")),
        "{only}"
    );
    app.stop().await;
}

#[tokio::test]
async fn of_a_command_and_an_admin_resolve_racing_exactly_one_wins() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;

    for round in 0..5 {
        // A candidate of its own per round: a link in one round would bar it from the next.
        let email = format!("race-{round}@example.com");
        let user = create_user(&db, Some(&email), None, None).await;
        let external_id = format!("wc-race-{round}");
        let binding = pending_binding(&mut broker, "asking", &external_id, &email).await;
        // The identity's lock (db::locks), which every resolve takes first, held by the test
        // until all of them wait for it: they race for real.
        let mut holder = db.acquire().await.unwrap();
        sqlx::query(
            "SELECT pg_advisory_lock(hashtextextended(
                 'identity' || chr(31) || $1 || chr(31) || 'asking' || chr(31) || $2, 0))",
        )
        .bind(POOL)
        .bind(&external_id)
        .execute(&mut *holder)
        .await
        .unwrap();
        // Both paths at once: three commands and three admin calls, of every action.
        let mut sent = Vec::new();
        for (n, data) in [
            link(binding, user, "password"),
            json!({"binding_id": binding, "action": "create", "actor": "p", "proof": "session"}),
            json!({"binding_id": binding, "action": "reject", "actor": "p", "proof": "otp"}),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("race-{round}-{n}");
            sent.push(broker.request_command(RESOLVE, &id, data).await);
        }
        let mut calls = Vec::new();
        for body in [
            json!({"action": "link", "user_id": user}),
            json!({"action": "create"}),
            json!({"action": "reject"}),
        ] {
            let api = app.api();
            let path = format!("/v1/bindings/{binding}/resolve");
            calls.push(tokio::spawn(async move { api.post(&path, body).await }));
        }
        // The three calls and the command consumer's first command (it decides one at a time)
        // wait for the lock.
        wait_until(WAIT, || async {
            count(
                &db,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .await
                == 4
        })
        .await
        .expect("the resolves wait for the identity's lock together");
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *holder)
            .await
            .unwrap();
        drop(holder);
        let mut wins = 0;
        for call in calls {
            let (status, body) = call.await.unwrap();
            match status {
                200 => wins += 1,
                409 => assert_eq!(error_code(&body), "binding_not_pending"),
                other => panic!("{other}: {body}"),
            }
        }
        for correlation_id in sent {
            let reply = broker.reply_value(&correlation_id).await;
            match reply["outcome"].as_str() {
                Some("done") => wins += 1,
                _ => assert_eq!(refused(&reply), "binding_not_pending"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        let resolved = broker
            .drain_events(std::time::Duration::from_millis(500))
            .await;
        assert_eq!(
            resolved
                .iter()
                .filter(|e| e.routing_key == "binding.resolved")
                .count(),
            1,
            "round {round}"
        );
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE routing_key = 'binding.resolved'"
        )
        .await,
        5
    );
    app.stop().await;
}

#[tokio::test]
async fn commands_go_to_their_own_quorum_queue() {
    let services = Services::new().await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    // As the broker has it (a passive declare would ignore the arguments).
    let queue = management_get(&format!("/queues/{}/idsync.commands", services.vhost)).await;
    assert_eq!(queue["type"], "quorum", "{queue}");
    assert_eq!(queue["durable"], true, "{queue}");
    assert_eq!(queue["arguments"]["x-delivery-limit"], 20, "{queue}");
    assert_eq!(
        queue["arguments"]["x-dead-letter-exchange"], "idsync.dlx",
        "{queue}"
    );
    let path = format!("/queues/{}/idsync.commands", services.vhost);
    wait_until(WAIT, || async {
        management_get(&path).await["consumers"] == 1
    })
    .await
    .expect("the worker consumes it (the management API counts every few seconds)");
    let bindings = management_get(&format!(
        "/queues/{}/idsync.commands/bindings",
        services.vhost
    ))
    .await;
    let mut keys: Vec<&str> = bindings
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["source"] == "idsync.in")
        .map(|b| b["routing_key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    // The source's directory events share the queue (contract section 11).
    assert_eq!(
        keys,
        [
            "binding.resolve",
            "directory.user_removed",
            "directory.user_renamed",
            "directory.user_restored",
            "user.unlink"
        ],
        "{bindings}"
    );
    // The work queue does not take commands, nor the commands queue logins.
    let work = management_get(&format!(
        "/queues/{}/idsync.login-completed/bindings",
        services.vhost
    ))
    .await;
    let work_keys: Vec<&str> = work
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["source"] == "idsync.in")
        .map(|b| b["routing_key"].as_str().unwrap())
        .collect();
    assert_eq!(work_keys, ["login.completed"], "{work}");
    let (status, ready) = app.api_as(None).get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn without_trusted_publishers_no_command_is_heard() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, None).await;
    // amqp.trusted_publishers is empty: logins are heard from anyone, commands from no one (the
    // owner of an identity could otherwise resolve its own binding to the account it was parked
    // away from).
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect_as_platform(&services).await;
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;
    let sent = broker
        .request_command(RESOLVE, "open-1", link(binding, chen, "admin"))
        .await;
    let reason = error_header(&broker.dead_letter().await);
    assert!(
        reason.starts_with(
            "untrusted_publisher: commands are heard only from amqp.trusted_publishers"
        ),
        "{reason}"
    );
    // Not answered, as any untrusted publisher; logins go on.
    let next = broker.login(&login("plain", "after", json!({}))).await;
    assert_eq!(next.outcome, Outcome::UserCreated);
    assert!(!broker.replied(&sent), "no reply to the command");
    let (_, shown) = app.api().get(&format!("/v1/bindings/{binding}")).await;
    assert_eq!(shown["status"], "pending");
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 1);
    app.stop().await;
}

/// The commands queue keeps the work queue's rules: a body over the size limit is dead-lettered
/// `too_large` (and answered); a command in binary content mode is heard like a structured one;
/// a reply is sent only to a reply queue (one aimed at another queue is processed unanswered).
#[tokio::test]
async fn commands_keep_the_size_limit_both_content_modes_and_the_reply_rules() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, None).await;
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let mut broker = Broker::connect_as_platform(&services).await;

    // Too large: 70 KiB of actor.
    let mut big = link(Uuid::now_v7(), chen, "password");
    big["actor"] = json!("x".repeat(70 * 1024));
    let sent = broker.request_command(RESOLVE, "big-1", big).await;
    let reply = broker.reply_value(&sent).await;
    assert_eq!(
        (&reply["outcome"], &reply["code"]),
        (&json!("error"), &json!("too_large")),
        "{reply}"
    );
    assert!(error_header(&broker.dead_letter().await).starts_with("too_large"));

    // Binary content mode: the attributes in ce- headers, the data alone as the body.
    let binding = pending_binding(&mut broker, "asking", "wc-chen", "chen@example.com").await;
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "binary-1"),
        ("ce-source", "urn:test:platform"),
        ("ce-type", RESOLVE),
    ] {
        headers.insert(
            name.into(),
            lapin::types::AMQPValue::LongString(value.into()),
        );
    }
    let correlation_id = "binary-command";
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers)
        .with_reply_to(broker.reply_queue().into())
        .with_correlation_id(correlation_id.into());
    let data = serde_json::to_vec(&link(binding, chen, "password")).unwrap();
    broker.publish_to(RESOLVE, &data, properties).await;
    let reply = broker.reply_value(correlation_id).await;
    assert_eq!(
        (&reply["command_id"], &reply["outcome"]),
        (&json!("binary-1"), &json!("done")),
        "{reply}"
    );

    // A reply aimed at a queue that is not a reply queue: the command is processed, and that
    // queue gets nothing.
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare("downstream.audit".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let unlink = json!({"user_pool_id": POOL, "user_id": chen, "connection": "asking",
                        "external_id": "wc-chen", "actor": "chen", "reason": "left"});
    broker
        .publish_to(
            UNLINK,
            &command_body(UNLINK, "aimed-1", unlink.clone()),
            json_props()
                .with_reply_to("downstream.audit".into())
                .with_correlation_id("aimed".into()),
        )
        .await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM identities").await == 0
    })
    .await
    .expect("the command was processed");
    // A round trip on the same path after it: the same unlink again, refused (the identity is
    // gone), its reply committed and published as the first one's would have been.
    let after = broker.request_command(UNLINK, "after-1", unlink).await;
    assert_eq!(refused(&broker.reply_value(&after).await), "not_found");
    assert_eq!(
        broker.queue_depth("downstream.audit").await,
        0,
        "no reply there"
    );
    assert_eq!(app.metric("idsync_replies_refused_total").await, 1.0);
    app.stop().await;
}
