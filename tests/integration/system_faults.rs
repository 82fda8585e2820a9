//! Faults of the system itself, met while logins flow, with the worker connected as a database
//! role of its own (as a production deployment has it): a privilege revoked, a table renamed, a
//! table locked past the statement bound, every backend terminated. None is any login's fault, so
//! none may cost one: nothing is dead-lettered, lost or doubled, every login is decided within
//! seconds of the mend, the worker is never restarted, and `/readyz` names the fault while it
//! lasts. Each touches only its own database, so they run beside the other tests.

use std::time::{Duration, Instant};

use identity_sync::domain::decision::Outcome;
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};

use idsync_test_support::*;

/// Logins a second while a fault lasts.
const RATE: u32 = 100;
/// How long each fault lasts before it is mended.
const FAULT: Duration = Duration::from_secs(5);

/// What an operator's mistake does to the worker's database, and how it is mended.
enum Fault {
    /// A statement run as the database's owner, and the one that mends it.
    Statement { apply: String, mend: String },
    /// `LOCK TABLE users IN ACCESS EXCLUSIVE MODE` held by a transaction for the fault's length.
    Lock,
    /// Every backend of the worker's role terminated, again and again, for the fault's length.
    Terminate,
}

struct Case {
    name: &'static str,
    /// `/readyz`'s name for the fault.
    reason: &'static str,
    fault: fn(&DatabaseRole) -> Fault,
}

#[tokio::test]
async fn a_revoked_privilege_costs_no_login() {
    survive(Case {
        name: "revoked-insert",
        reason: "insufficient_privilege",
        fault: |role| Fault::Statement {
            apply: format!("REVOKE INSERT ON users, identities FROM {}", role.name),
            mend: format!("GRANT INSERT ON users, identities TO {}", role.name),
        },
    })
    .await;
}

#[tokio::test]
async fn a_renamed_table_costs_no_login() {
    survive(Case {
        name: "renamed-table",
        reason: "schema_mismatch",
        fault: |_| Fault::Statement {
            apply: "ALTER TABLE identities RENAME TO identities_moved".into(),
            mend: "ALTER TABLE identities_moved RENAME TO identities".into(),
        },
    })
    .await;
}

#[tokio::test]
async fn a_table_locked_past_the_statement_bound_costs_no_login() {
    survive(Case {
        name: "locked-table",
        reason: "database_timeout",
        fault: |_| Fault::Lock,
    })
    .await;
}

/// Read-only as a standby is (`default_transaction_read_only`, for this database only, so that
/// it runs beside the other tests: its sessions are ended so that the next ones take it).
#[tokio::test]
async fn a_read_only_database_costs_no_login() {
    survive(Case {
        name: "read-only",
        reason: "database_read_only",
        fault: |role| Fault::Statement {
            apply: format!(
                "ALTER DATABASE {db} SET default_transaction_read_only = on;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
                db = role.db_name,
                role = role.name
            ),
            // The owner's own session is read-only too: its transaction says otherwise.
            mend: format!(
                "BEGIN READ WRITE;
                 ALTER DATABASE {} RESET default_transaction_read_only;
                 COMMIT",
                role.db_name
            ),
        },
    })
    .await;
}

#[tokio::test]
async fn terminated_backends_cost_no_login() {
    survive(Case {
        name: "terminated-backends",
        reason: "database_unavailable",
        fault: |_| Fault::Terminate,
    })
    .await;
}

async fn survive(case: Case) {
    let services = Services::new().await;
    let db = services.migrate().await;
    let role = DatabaseRole::create(&services).await;
    let mut settings = services.settings();
    settings.database.url = role.url().into();
    // A statement waiting on a lock gives up after this; the fault lasts longer.
    settings.database.statement_timeout = Duration::from_secs(1);
    settings.database.stall_timeout = Duration::from_secs(3);
    Broker::connect(&services).await;
    let app = TestApp::spawn_with(settings).await;
    let stream = LoginStream::start(&services, RATE, case.name).await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await >= 50
    })
    .await
    .expect("logins decided before the fault");

    let fault = (case.fault)(&role);
    let holding = apply(&services, &role, &fault).await;
    // While it lasts, /readyz says what it is.
    let named = watch_readyz(&app, case.reason, FAULT).await;
    let decided_in_fault = count(&db, "SELECT count(*) FROM processed_events").await;
    mend(&services, &fault, holding).await;
    let mended = Instant::now();
    let sent = stream.stop().await as i64;
    let named =
        named.unwrap_or_else(|| panic!("/readyz never named {} during the fault", case.reason));
    let name = format!("system-fault-{}", case.name);
    let mut figures = decided_after_mend(&services, &db, &name, sent, mended).await;
    wait_until(WAIT, || async { ready(&app).await == 200 })
        .await
        .expect("ready again after the mend");
    let metrics = app.metrics().await;
    let dead_lettered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("idsync_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let retries = metric_value(
        &metrics,
        &format!(
            "idsync_system_faults_total{{component=\"logins\",reason=\"{}\"}}",
            case.reason
        ),
    );
    figures
        .note("decided_during_fault", decided_in_fault)
        .note("fault_retries", retries)
        .note("readyz_fault", &named);
    figures.report();
    assert_eq!(dead_lettered, 0.0, "nothing dead-lettered");
    assert!(retries >= 1.0, "the metric counted the fault's retries");
    // The same process all along: it stops cleanly, and its invariants hold.
    app.stop().await;
    drop(role);
    db.close().await;
}

/// `/readyz`'s status.
async fn ready(app: &TestApp) -> u16 {
    let response = reqwest::get(app.url("/readyz"))
        .await
        .expect("/readyz answers");
    response.status().as_u16()
}

/// What holds a fault until it is mended.
enum Holding {
    None,
    /// The transaction holding the lock.
    Lock(PgConnection),
    /// The task terminating backends.
    Terminating(
        tokio::task::JoinHandle<()>,
        tokio_util::sync::CancellationToken,
    ),
}

async fn apply(services: &Services, role: &DatabaseRole, fault: &Fault) -> Holding {
    let owner = PgPool::connect(&services.db_url).await.unwrap();
    let holding = match fault {
        Fault::Statement { apply, .. } => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(apply.clone()))
                .execute(&owner)
                .await
                .expect("applying the fault");
            Holding::None
        }
        Fault::Lock => {
            let mut conn = PgConnection::connect(&services.db_url).await.unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .expect("locking users");
            Holding::Lock(conn)
        }
        Fault::Terminate => {
            let stop = tokio_util::sync::CancellationToken::new();
            let (stopped, name) = (stop.clone(), role.name.clone());
            let pool = owner.clone();
            let task = tokio::spawn(async move {
                while !stopped.is_cancelled() {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    )
                    .bind(&name)
                    .execute(&pool)
                    .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return Holding::Terminating(task, stop);
        }
    };
    owner.close().await;
    holding
}

async fn mend(services: &Services, fault: &Fault, holding: Holding) {
    match (fault, holding) {
        (Fault::Statement { mend, .. }, _) => {
            let owner = PgPool::connect(&services.db_url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(mend.clone()))
                .execute(&owner)
                .await
                .expect("mending the fault");
            owner.close().await;
        }
        (_, Holding::Lock(mut conn)) => {
            sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
            let _ = conn.close().await;
        }
        (_, Holding::Terminating(task, stop)) => {
            stop.cancel();
            task.await.unwrap();
        }
        (_, Holding::None) => {}
    }
}

/// A stored connection whose settings no longer validate (here a value a newer version might
/// write) stops only itself: the admin API lists it with its problem, its logins wait (neither
/// decided nor dead-lettered, and still answered to their publisher once decided), its bindings
/// cannot be resolved until it is mended (a refusal naming why, by the API as by a command, which
/// holds up no other command), the other connections' logins flow, and a PUT that mends it lets
/// them through. The waiting copies are the worker's own: a publisher that forges their headers
/// is not believed.
// Multi-threaded: the command line below calls this process's API while the test waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_connection_holds_only_its_own_logins_until_it_is_mended() {
    let services = Services::new().await;
    let platform = BrokerUser::create(&services, "platform", [".*", ".*", ".*"]).await;
    let mallory = BrokerUser::create(&services, "mallory", [".*", ".*", ".*"]).await;
    let mut settings = services.settings();
    settings.amqp.trusted_publishers = vec![platform.name.clone()];
    settings.worker.wait_delay = Duration::from_millis(300);
    let amqp = services.settings().amqp;
    let mut broker = Broker::connect_as(&services, &platform, services.settings()).await;
    let app = TestApp::spawn_with(settings).await;
    let db = services.db().await;
    // A binding of `asking` waits for its resolution.
    let chen = create_user(&db, Some("chen@corp.example"), None, None).await;
    let parked = broker
        .login(&login(
            "asking",
            "wc-chen",
            json!({"email": "chen@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(parked.outcome, Outcome::BindingPending);
    let binding = parked.binding_id.unwrap();
    broker.drain_events(Duration::from_millis(200)).await;
    // What a newer version's migration and write would leave during a rolling deploy.
    sqlx::raw_sql(
        "ALTER TABLE connections DROP CONSTRAINT connections_association_check;
         UPDATE connections SET association = 'smart_match', settings_version = settings_version + 1
         WHERE identifier = 'asking'",
    )
    .execute(&db)
    .await
    .unwrap();

    let person = |n: usize| json!({"email": format!("u{n}@corp.example"), "email_verified": true});
    let mut held = Vec::new();
    let mut flowing = Vec::new();
    for n in 0..10 {
        held.push(
            broker
                .request(&login("asking", &format!("m-{n}"), person(n)))
                .await,
        );
        flowing.push(
            broker
                .request(&login("plain", &format!("p-{n}"), person(100 + n)))
                .await,
        );
    }
    for correlation_id in &flowing {
        let reply = broker.reply(correlation_id).await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    }
    // The held ones went round the wait queue at least once, and nothing was decided of them.
    wait_until(WAIT, || async {
        metric_value(
            &app.metrics().await,
            "idsync_waits_total{reason=\"connection_unreadable\"}",
        ) >= 20.0
    })
    .await
    .expect("the held logins waited, and came back to wait again");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM processed_events WHERE connection = 'asking'"
        )
        .await,
        1,
        "only the login before the fault"
    );
    assert!(held.iter().all(|c| !broker.replied(c)));
    assert_eq!(broker.queue_depth(&amqp.dead_letter_queue).await, 0);
    let (status, ready) = app.api().get("/readyz").await;
    assert_eq!(
        status, 200,
        "one connection's problem is not the process's: {ready}"
    );

    // Its binding cannot be resolved meanwhile, and says why; the commands go on.
    let refused = broker
        .command(
            "binding.resolve",
            json!({"binding_id": binding, "action": "link", "user_id": chen,
                   "actor": "chen", "proof": "password"}),
        )
        .await;
    assert_eq!(
        (&refused["outcome"], &refused["code"]),
        (&json!("refused"), &json!("connection_unreadable")),
        "{refused}"
    );
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding}/resolve"),
            json!({"action": "link", "user_id": chen}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "connection_unreadable"),
        "{body}"
    );

    // The admin sees what to mend, beside the connections that are fine.
    let (status, listed) = app.api().get("/v1/connections").await;
    assert_eq!(status, 200, "{listed}");
    let items = listed["items"].as_array().unwrap();
    let asking = items.iter().find(|c| c["identifier"] == "asking").unwrap();
    let problem = asking["problem"].as_str().unwrap();
    assert!(problem.starts_with("association:"), "{problem}");
    assert_eq!(asking["association"], "smart_match");
    assert!(
        items
            .iter()
            .filter(|c| c["identifier"] != "asking")
            .all(|c| c.get("problem").is_none())
    );
    let (status, one) = app.api().get("/v1/connections/pool-1/asking").await;
    assert_eq!(
        (status, one["problem"].as_str()),
        (200, Some(problem)),
        "{one}"
    );
    let mut list = app.admin_command(&services);
    list.args(["connections", "list"]);
    let (code, stdout, stderr) = run(&mut list);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("association:"),
        "the command line shows the problem: {stdout}"
    );

    // A publisher that is not trusted cannot pass its message for one of the waiting copies.
    let mut forged = lapin::types::FieldTable::default();
    forged.insert(
        "x-idsync-waits".into(),
        lapin::types::AMQPValue::LongUInt(1),
    );
    forged.insert(
        "x-original-user-id".into(),
        lapin::types::AMQPValue::LongString(platform.name.as_str().into()),
    );
    let intruder = Broker::connect_as(&services, &mallory, services.settings()).await;
    intruder
        .publish_raw(
            &serde_json::to_vec(&login("plain", "forged", json!({}))).unwrap(),
            json_props().with_headers(forged),
        )
        .await;
    let dead = broker.dead_letter().await;
    assert!(
        error_header(&dead).starts_with("untrusted_publisher"),
        "{}",
        error_header(&dead)
    );

    // Mended: the held logins are decided, once each, and answered.
    let (status, mended) = app
        .api()
        .put(
            "/v1/connections/pool-1/asking",
            json!({"provider": "wecom", "association": "ask_binding",
                   "match_fields": ["email", "phone", "username"],
                   "default_country_code": "86", "binding_ttl": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{mended}");
    assert!(mended.get("problem").is_none(), "{mended}");
    for correlation_id in &held {
        let reply = broker.reply(correlation_id).await;
        assert_eq!(reply.outcome, Outcome::UserCreated, "{reply:?}");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM processed_events").await,
        21
    );
    assert_eq!(broker.queue_depth(&amqp.wait_queue).await, 0);
    assert_eq!(broker.queue_depth(&amqp.dead_letter_queue).await, 0);
    app.stop().await;
}

/// A message that makes the worker panic (a bug of its own, here a failure point that panics on
/// one external id) costs neither the process nor the messages beside it: it is handed back up to
/// the delivery limit, then dead-lettered with a reason that says so; the worker never restarts.
// It arms a failure point, which only the `failpoints` feature compiles in (scripts/test).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_message_that_panics_the_worker_is_dead_lettered_at_the_delivery_limit() {
    let services = Services::new().await;
    let mut settings = services.settings();
    settings.amqp.delivery_limit = 3;
    let broker = Broker::connect_with(&services, settings, true).await;
    let db = services.migrate().await;
    broker.send(&login("plain", "poison-pill", json!({}))).await;
    for n in 0..5 {
        broker
            .send(&login("plain", &format!("beside-{n}"), json!({})))
            .await;
    }
    let mut worker = WorkerProcess::start_with_env(
        &services,
        &[
            ("IDSYNC__AMQP__DELIVERY_LIMIT", "3"),
            ("IDSYNC_FAILPOINTS", "panic_on_external_id=poison-pill"),
        ],
    );
    let dead = broker.dead_letter().await;
    let reason = error_header(&dead);
    assert!(
        reason.starts_with("processing_panicked: ") && reason.contains("each of its 3 deliveries"),
        "handed back up to the limit, then dead-lettered: {reason}"
    );
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["data"]["external_id"], "poison-pill");
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await == 5
    })
    .await
    .expect("the messages beside it decided");
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker never stopped"
    );
    assert_eq!(worker.terminate().code(), Some(0));
}

/// The database stops answering altogether (a partition: every connection open, nothing
/// through, both ways), so that no server-side timeout can fire: the worker's own bound gives
/// the work up, `/readyz` names the stall, and once the path is back every login is decided
/// once, those whose commit was cut short included (the relay checks which of their rows exist).
#[tokio::test]
async fn a_database_that_stops_answering_costs_no_login() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let proxy = FreezingProxy::start("127.0.0.1:5432").await;
    let mut settings = services.settings();
    let through = services
        .db_url
        .replace("127.0.0.1:5432", &proxy.address.to_string());
    assert_ne!(
        through, services.db_url,
        "the test database is reached through the proxy"
    );
    settings.database.url = through.into();
    settings.database.statement_timeout = Duration::from_secs(1);
    settings.database.stall_timeout = Duration::from_secs(2);
    Broker::connect(&services).await;
    let app = TestApp::spawn_with(settings).await;
    let stream = LoginStream::start(&services, RATE, "partition").await;
    wait_until(WAIT, || async {
        count(&db, "SELECT count(*) FROM processed_events").await >= 50
    })
    .await
    .expect("logins decided before the partition");
    proxy.freeze();
    let named = watch_readyz(&app, "database_timeout", FAULT).await;
    proxy.thaw();
    let mended = Instant::now();
    let sent = stream.stop().await as i64;
    let named = named.expect("/readyz named the stall while it lasted");
    let mut figures =
        decided_after_mend(&services, &db, "system-fault-partition", sent, mended).await;
    figures.note("readyz_fault", &named);
    figures.report();
    let created_events = count(
        &db,
        "SELECT count(*) FROM outbox WHERE routing_key = 'user.created'",
    )
    .await;
    assert_eq!(created_events, sent, "one user.created per login");
    app.stop().await;
}
