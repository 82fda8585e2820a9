//! Events reach subscribers in commit order per worker, also when the relay falls behind or its
//! connection is cut, and every event about a user or a binding carries the next value of its
//! subject's sequence (contract 3.4).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde_json::{Value, json};
use uuid::Uuid;

use idsync_test_support::*;

/// The outbox's events in id order: the commit order of a worker deciding one batch at a time
/// (`worker.concurrent_batches = 1`; with more, only transactions that wait for one another
/// commit in id order, which the subjects' sequences check).
async fn committed_order(db: &sqlx::PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT message_id FROM outbox WHERE kind = 'event' ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

/// Every event until `expected` distinct ids have arrived (or nothing came for a while).
async fn receive(broker: &mut Broker, expected: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < expected {
        let Some(event) = broker.next_event_within(WAIT).await else {
            panic!("{} of {expected} events arrived", distinct.len());
        };
        distinct.insert(event.body["id"].as_str().unwrap().to_owned());
        all.push(event.body);
    }
    all
}

fn id_of(event: &Value) -> Uuid {
    event["id"].as_str().unwrap().parse().unwrap()
}

/// The ids in the order they first arrived, and how many copies arrived beyond one each.
fn first_arrivals(events: &[Value]) -> (Vec<Uuid>, usize) {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for event in events {
        if seen.insert(id_of(event)) {
            order.push(id_of(event));
        }
    }
    (order, events.len() - seen.len())
}

/// Fails naming where the arrival order first leaves the commit order (the whole lists would be
/// thousands of ids).
fn assert_same_order(arrived: &[Uuid], committed: &[Uuid]) {
    let Some(first) = arrived.iter().zip(committed).position(|(a, c)| a != c) else {
        assert_eq!(
            arrived.len(),
            committed.len(),
            "as many arrived as were committed"
        );
        return;
    };
    let at = |ids: &[Uuid], id: &Uuid| ids.iter().position(|x| x == id);
    panic!(
        "arrival order is not commit order from position {first} of {}: arrived {} (committed at \
         {:?}), committed {} (arrived at {:?})",
        committed.len(),
        arrived[first],
        at(committed, &arrived[first]),
        committed[first],
        at(arrived, &committed[first]),
    );
}

/// Checks the sequences: per subject, 1, 2, 3... in the order of first arrival; events about
/// neither a user nor a binding have none.
fn check_sequences(events: &[Value]) -> usize {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for event in events {
        if !seen.insert(id_of(event)) {
            continue;
        }
        if event["type"] == "login.rejected" {
            assert!(event.get("sequence").is_none(), "{event}");
            continue;
        }
        let text = event["sequence"]
            .as_str()
            .unwrap_or_else(|| panic!("no sequence: {event}"));
        assert_eq!(text.len(), 20, "{text}");
        let sequence: u64 = text.parse().unwrap();
        let subject = event["subject"].as_str().unwrap().to_owned();
        let previous = last.insert(subject.clone(), sequence).unwrap_or(0);
        assert_eq!(
            sequence,
            previous + 1,
            "subject {subject}: {previous} then {sequence}"
        );
    }
    last.len()
}

fn people(count: usize) -> Vec<Value> {
    // Per person: a login that creates an account, then one of another connection that links to
    // it by email: two events about one user, often decided in the same batch.
    (0..count)
        .flat_map(|i| {
            let profile = json!({"email": format!("p{i}@order.example"), "email_verified": true});
            [
                login("plain", &format!("plain-{i}"), profile.clone()),
                login("matching", &format!("match-{i}"), profile),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_commit_order_when_the_relay_falls_behind() {
    // Small batches: many hand-offs, more than any fixed-size queue between worker and relay.
    let services =
        Services::with_keys("", &[("worker", "batch_size = 4\nconcurrent_batches = 1")]).await;
    let mut broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    let db = services.db().await;
    wait_until(Duration::from_secs(15), || relay_connection(&services))
        .await
        .expect("the relay's connection is listed");
    // The relay loses its connection and cannot open another (the vhost takes no new
    // connections; those open stay): the worker decides on, the relay falls far behind.
    set_connection_limit(&services, Some(0)).await;
    assert!(cut_relay_connection(&services).await);
    for event in people(1500) {
        broker.send(&event).await;
    }
    count_reaches(
        &db,
        "SELECT count(*) FROM processed_events",
        3000,
        "the worker decided everything meanwhile",
    )
    .await;
    let behind = count(&db, "SELECT count(*) FROM outbox_pending").await;
    assert!(behind > 2500, "the relay fell {behind} rows behind");
    set_connection_limit(&services, None).await;

    let events = receive(&mut broker, 3000).await;
    let (order, copies) = first_arrivals(&events);
    assert_same_order(&order, &committed_order(&db).await);
    assert!(copies < 100, "{copies} copies");
    assert_eq!(check_sequences(&events), 1500, "one subject per person");
    let linked = events.iter().find(|e| e["type"] == "user.linked").unwrap();
    assert_eq!(linked["sequence"], "00000000000000000002");
    outbox_drained(&db, WAIT, "every event published").await;
    app.stop().await;
}

fn rabbit_api() -> String {
    std::env::var("IDSYNC_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".into())
}

/// Sets (or lifts) the test vhost's limit on connections; open connections are not affected.
async fn set_connection_limit(services: &Services, limit: Option<u32>) {
    let url = format!(
        "{}/vhost-limits/{}/max-connections",
        rabbit_api(),
        services.vhost
    );
    let http = reqwest::Client::new();
    let request = match limit {
        Some(value) => http.put(url).json(&json!({ "value": value })),
        None => http.delete(url),
    };
    let status = request
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

async fn relay_connection(services: &Services) -> bool {
    relay_connection_name(services).await.is_some()
}

/// The management API's view of the test vhost's connections whose client named them starting
/// with `prefix` (the worker names them `identity-sync <role> (pid N)`), once listed.
async fn connections_named(services: &Services, prefix: &str) -> Vec<Value> {
    let connections = management_get(&format!("/vhosts/{}/connections", services.vhost)).await;
    connections
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .cloned()
        .collect()
}

/// The management API's name of the relay's connection, once listed.
async fn relay_connection_name(services: &Services) -> Option<String> {
    connections_named(services, "identity-sync relay ")
        .await
        .first()
        .and_then(|c| c["name"].as_str().map(str::to_owned))
}

/// Closes the relay's broker connection through the management API.
async fn cut_relay_connection(services: &Services) -> bool {
    let Some(name) = relay_connection_name(services).await else {
        return false;
    };
    let api = rabbit_api();
    reqwest::Client::new()
        .delete(format!("{api}/connections/{}", urlencode(&name)))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_commit_order_when_the_relays_connection_is_cut() {
    let services = Services::with_keys(
        "",
        &[
            ("outbox", "batch_size = 32"),
            ("worker", "concurrent_batches = 1"),
        ],
    )
    .await;
    let mut broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    // The management API lists a connection once its statistics are in (up to 5 s).
    wait_until(Duration::from_secs(15), || relay_connection(&services))
        .await
        .expect("the relay's connection is listed");
    let sender = {
        let broker = Broker::connect(&services).await;
        tokio::spawn(async move {
            for event in people(2000) {
                broker.send(&event).await;
            }
        })
    };
    // Cut the relay's connection in the middle of the stream, twice: from the 800th and the
    // 2,400th event on, at the first event after which the management API lists the relay's
    // connection (a new connection is listed once its statistics are in).
    let mut events = Vec::new();
    let mut cuts = 0;
    let mut distinct = HashSet::new();
    while distinct.len() < 4000 {
        let Some(event) = broker.next_event_within(WAIT).await else {
            panic!("{} of 4000 events arrived", distinct.len());
        };
        distinct.insert(id_of(&event.body));
        events.push(event.body);
        let due = [800, 2400]
            .get(cuts)
            .is_some_and(|at| distinct.len() >= *at);
        if due && distinct.len() < 3800 && cut_relay_connection(&services).await {
            cuts += 1;
        }
    }
    assert_eq!(cuts, 2, "the relay's connection was cut twice mid-stream");
    sender.await.unwrap();
    let db = services.db().await;
    let (order, copies) = first_arrivals(&events);
    assert_eq!(
        order,
        committed_order(&db).await,
        "first arrivals are in commit order"
    );
    check_sequences(&events);
    // Copies come only from rows published again because their confirm had not come when the
    // connection went.
    let metrics = app.metrics().await;
    let republished = metric_value(&metrics, "idsync_outbox_republished_total");
    assert!(
        copies as f64 <= republished,
        "{copies} copies, {republished} republished"
    );
    eprintln!(
        "two cuts of the relay's connection: {copies} copies for 4000 events \
         ({republished} rows published again)"
    );
    assert!(
        metric_value(
            &metrics,
            "idsync_transient_errors_total{component=\"relay\"}"
        ) >= 2.0
    );
    // Nothing left unpublished.
    assert_eq!(count(&db, "SELECT count(*) FROM outbox_pending").await, 0);
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_decided_at_once_keep_each_subjects_events_in_order() {
    // Small batches, four at once: a person's two logins (the second links to the account the
    // first created) often land in two batches decided side by side.
    let services =
        Services::with_keys("", &[("worker", "batch_size = 8\nconcurrent_batches = 4")]).await;
    let mut broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    for event in people(1500) {
        broker.send(&event).await;
    }
    let events = receive(&mut broker, 3000).await;
    let (order, _) = first_arrivals(&events);
    let db = services.db().await;
    let mut committed = committed_order(&db).await;
    let mut arrived = order.clone();
    committed.sort();
    arrived.sort();
    assert_eq!(arrived, committed, "every event arrived");
    // Every subject's events arrive in its sequence's order (checked event by event). Which of
    // a person's two logins is decided first is not fixed when they sit in batches decided side
    // by side (as with two workers): the one through `matching` may come first and find nobody.
    let subjects = count(&db, "SELECT count(*) FROM users").await
        + count(&db, "SELECT count(*) FROM bindings").await;
    assert_eq!(check_sequences(&events) as i64, subjects);
    assert!(subjects >= 1500, "{subjects}");
    // Subjects with more than one event (created, then linked): what the order is about. Most
    // people's two logins share a batch and link; a pair split between batches side by side
    // may not.
    let linked = events
        .iter()
        .filter(|e| e["type"] == "user.linked" && e["sequence"] == "00000000000000000002")
        .map(id_of)
        .collect::<HashSet<_>>()
        .len();
    assert!(
        linked >= 750,
        "only {linked} of 1500 people had a second event in order"
    );
    outbox_drained(&db, WAIT, "every event published").await;
    app.stop().await;
}

#[tokio::test]
async fn the_workers_connections_ask_for_small_frames() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let frames = || async {
        connections_named(&services, "identity-sync ")
            .await
            .iter()
            .map(|c| c["frame_max"].as_u64())
            .collect::<Vec<_>>()
    };
    wait_until(WAIT, || async { frames().await.len() >= 2 })
        .await
        .expect("the consumer's and the relay's connections listed");
    let frames = frames().await;
    assert!(
        frames
            .iter()
            // 32 KiB, whatever the product's constant says.
            .all(|f| *f == Some(32_768)),
        "{frames:?}"
    );
    app.stop().await;
}

/// Events written outside a login batch (a resolution, an admin's change and unlink, the
/// expiry sweeper) take their subject's next `sequence` too, on users and on bindings alike.
#[tokio::test]
async fn events_outside_the_batch_path_take_their_subjects_next_sequence() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let profile = json!({"email": "seq@corp.example", "email_verified": true});
    let created = broker.login(&login("plain", "s-1", profile.clone())).await;
    let user = created.user_id.unwrap();
    let parked = broker
        .login(&login("asking", "wc-s", profile.clone()))
        .await;
    let binding = parked.binding_id.unwrap();
    let (status, body) = app
        .api()
        .post(
            &format!("/v1/bindings/{binding}/resolve"),
            json!({"action": "link", "user_id": user}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .api()
        .patch(&format!("/v1/users/{user}"), json!({"name": "Renamed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .api()
        .delete(&format!("/v1/users/{user}/identities/asking/wc-s"))
        .await;
    assert_eq!(status, 200, "{body}");
    // `brief` bindings expire after a second; the sweeper expires this one.
    let expiring = broker.login(&login("brief", "br-1", profile)).await;
    let expiring = expiring.binding_id.unwrap();

    let events = receive(&mut broker, 8).await;
    let kinds = |subject: String| -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        events
            .iter()
            .filter(|e| e["subject"] == subject.as_str() && seen.insert(id_of(e)))
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["sequence"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches('0')
                        .to_owned(),
                )
            })
            .collect()
    };
    let pair = |kind: &str, n: &str| (kind.to_owned(), n.to_owned());
    assert_eq!(
        kinds(user.to_string()),
        [
            pair("user.created", "1"),
            pair("user.linked", "2"),
            pair("user.updated", "3"),
            pair("user.unlinked", "4")
        ]
    );
    assert_eq!(
        kinds(binding.to_string()),
        [pair("binding.pending", "1"), pair("binding.resolved", "2")]
    );
    assert_eq!(
        kinds(expiring.to_string()),
        [pair("binding.pending", "1"), pair("binding.expired", "2")]
    );
    check_sequences(&events);
    app.stop().await;
}

/// With the default two batches decided side by side, events still reach subscribers in the
/// order their transactions committed. The commit order is recorded by a deferred trigger (it
/// runs inside each commit, which the worker's commits make one at a time), not taken from ids:
/// batches side by side take their ids in no particular order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_commit_order_with_two_batches_side_by_side() {
    let services = Services::with_keys("", &[("worker", "batch_size = 8")]).await;
    let db = services.migrate().await;
    sqlx::raw_sql(
        "CREATE TABLE commit_order (tx bigint PRIMARY KEY, n bigserial);
         CREATE FUNCTION note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO commit_order (tx) VALUES (pg_current_xact_id()::text::bigint)
           ON CONFLICT DO NOTHING;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER note_commit AFTER INSERT ON outbox
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_commit();",
    )
    .execute(&db)
    .await
    .unwrap();
    let mut broker = Broker::connect(&services).await;
    let app = TestApp::spawn(&services).await;
    assert_eq!(
        app.metric("idsync_batch_size_count").await,
        0.0,
        "nothing decided yet"
    );
    for event in people(1000) {
        broker.send(&event).await;
    }
    let events = receive(&mut broker, 2000).await;
    let (order, _) = first_arrivals(&events);
    let committed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT o.message_id FROM outbox o
         JOIN commit_order c ON c.tx % 4294967296 = o.xmin::text::bigint
         WHERE o.kind = 'event' ORDER BY c.n, o.id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(committed.len(), 2000, "every event's commit recorded");
    assert_same_order(&order, &committed);
    // And batches were decided side by side: the ids do not say the commit order.
    let by_id = committed_order(&db).await;
    eprintln!(
        "{} of 2000 events committed out of id order",
        order.iter().zip(&by_id).filter(|(a, b)| a != b).count()
    );
    outbox_drained(&db, WAIT, "every event published").await;
    app.stop().await;
}
